"""Scoring with a trained verifier's head, on embeddings computed once per image.

The siamese verifier (Packhäuser et al. 2022) scores a pair of images as

    logit(x1, x2) = w · |e(x1) − e(x2)| + b,        e(x) = sigmoid(fc(encoder(x))) ∈ (0, 1)^D

so the expensive part, the encoder, depends on one image only. Everything here works on
embeddings ``(N, D)`` (``Verifier.embed``) and the head's ``w`` (D,) and ``b`` (scalar):

* ``score_pairs``       N aligned pairs → N logits.
* ``score_matrix``      every query against every key → (Nq, Nk) logits, in blocks.
* ``max_score``         exact best key per query over all keys (blocks, O(Nq) memory).
* ``topk_nearest``      k nearest keys per query by L2 on the embedding (blocks, running top-k).
* ``retrieve_then_verify``  top-k nearest, then the head on those k only → max logit, flag.

The weighted L1 sum is computed without materialising (Nq, Nk, D): with P = {d: w_d > 0},
N = {d: w_d < 0},  Σ_d w_d |q_d − k_d| = ‖q_P·w_P − k_P·w_P‖₁ − ‖q_N·|w_N| − k_N·|w_N|‖₁,
two ``torch.cdist(p=1)`` calls on rescaled embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Default block sizes: a (Q_BLOCK, K_BLOCK) float32 block is 64 MiB.
Q_BLOCK = 1024
K_BLOCK = 16384


def _check_embeddings(name: str, emb: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    if not isinstance(emb, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of embeddings (N, D), got {type(emb).__name__}")
    if emb.ndim != 2:
        raise ValueError(f"{name} must be (N, D) embeddings, got shape {tuple(emb.shape)}")
    if len(emb) == 0:
        raise ValueError(f"{name} is empty (0 embeddings): nothing to score")
    if dim is not None and emb.shape[1] != dim:
        raise ValueError(f"{name} has embedding dimension {emb.shape[1]}, the verifier's head expects {dim}")
    return emb


def _head(w: torch.Tensor, b) -> tuple[torch.Tensor, float]:
    w = w.detach().reshape(-1).float()
    return w, float(b)


def score_pairs(emb_a: torch.Tensor, emb_b: torch.Tensor, w: torch.Tensor, b) -> torch.Tensor:
    """Logits of N aligned pairs: ``|a_i − b_i| · w + b`` → (N,). Embeddings (N, D) each."""
    w, b = _head(w, b)
    _check_embeddings("emb_a", emb_a, len(w))
    _check_embeddings("emb_b", emb_b, len(w))
    if emb_a.shape != emb_b.shape:
        raise ValueError(f"score_pairs needs aligned pairs: emb_a {tuple(emb_a.shape)} vs emb_b {tuple(emb_b.shape)}")
    w = w.to(emb_a.device)
    return (emb_a.float() - emb_b.float()).abs() @ w + b


def _block_logits(q: torch.Tensor, k: torch.Tensor, w: torch.Tensor, b: float) -> torch.Tensor:
    """(len(q), len(k)) logits by the sign-split cdist identity (see module docstring)."""
    pos, neg = w > 0, w < 0
    out = torch.full((len(q), len(k)), b, dtype=torch.float32, device=q.device)
    if pos.any():
        wp = w[pos]
        out += torch.cdist(q[:, pos] * wp, k[:, pos] * wp, p=1)
    if neg.any():
        wn = -w[neg]
        out -= torch.cdist(q[:, neg] * wn, k[:, neg] * wn, p=1)
    return out


def score_matrix(emb_q: torch.Tensor, emb_k: torch.Tensor, w: torch.Tensor, b,
                 chunk: int = Q_BLOCK, device: torch.device | str | None = None) -> torch.Tensor:
    """Logits of every query against every key → (Nq, Nk) float32 on the CPU.

    Computed in blocks of ``chunk`` queries × ``K_BLOCK`` keys on ``device`` (default: the
    embeddings' device); memory beyond the output is O(chunk · K_BLOCK), never (Nq, Nk, D).
    """
    w, b = _head(w, b)
    _check_embeddings("emb_q", emb_q, len(w))
    _check_embeddings("emb_k", emb_k, len(w))
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    device = torch.device(device) if device is not None else emb_q.device
    w = w.to(device)
    out = torch.empty(len(emb_q), len(emb_k), dtype=torch.float32)
    for k0 in range(0, len(emb_k), K_BLOCK):
        kb = emb_k[k0:k0 + K_BLOCK].to(device, torch.float32)
        for q0 in range(0, len(emb_q), chunk):
            qb = emb_q[q0:q0 + chunk].to(device, torch.float32)
            out[q0:q0 + chunk, k0:k0 + K_BLOCK] = _block_logits(qb, kb, w, b).cpu()
    return out


def max_score(emb_q: torch.Tensor, emb_k: torch.Tensor, w: torch.Tensor, b,
              chunk: int = Q_BLOCK, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact best key per query over ALL keys: ``(max_logit (Nq,), argmax (Nq,))``.

    The exhaustive reference for ``retrieve_then_verify`` (cost Nq·Nk head evaluations,
    memory O(chunk · K_BLOCK)).
    """
    w, b = _head(w, b)
    _check_embeddings("emb_q", emb_q, len(w))
    _check_embeddings("emb_k", emb_k, len(w))
    device = torch.device(device) if device is not None else emb_q.device
    w = w.to(device)
    best = torch.full((len(emb_q),), -float("inf"))
    arg = torch.zeros(len(emb_q), dtype=torch.long)
    for q0 in range(0, len(emb_q), chunk):
        qb = emb_q[q0:q0 + chunk].to(device, torch.float32)
        for k0 in range(0, len(emb_k), K_BLOCK):
            kb = emb_k[k0:k0 + K_BLOCK].to(device, torch.float32)
            value, index = _block_logits(qb, kb, w, b).max(dim=1)
            value, index = value.cpu(), index.cpu() + k0
            better = value > best[q0:q0 + chunk]
            best[q0:q0 + chunk] = torch.where(better, value, best[q0:q0 + chunk])
            arg[q0:q0 + chunk] = torch.where(better, index, arg[q0:q0 + chunk])
    return best, arg


def topk_nearest(emb_q: torch.Tensor, emb_k: torch.Tensor, k: int, chunk: int = Q_BLOCK,
                 device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest keys of every query by L2 distance: ``(distances, indices)``, (Nq, k).

    Blocks of ``chunk`` queries × ``K_BLOCK`` keys (``torch.cdist``), merged into a running
    top-k, so memory is O(chunk · (K_BLOCK + k)) however many keys there are. Sorted nearest
    first. ``k`` is clipped to the number of keys.
    """
    _check_embeddings("emb_q", emb_q)
    _check_embeddings("emb_k", emb_k, emb_q.shape[1])
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(int(k), len(emb_k))
    device = torch.device(device) if device is not None else emb_q.device
    dist_out = torch.empty(len(emb_q), k)
    idx_out = torch.empty(len(emb_q), k, dtype=torch.long)
    for q0 in range(0, len(emb_q), chunk):
        qb = emb_q[q0:q0 + chunk].to(device, torch.float32)
        best_d = torch.empty(len(qb), 0, device=device)
        best_i = torch.empty(len(qb), 0, dtype=torch.long, device=device)
        for k0 in range(0, len(emb_k), K_BLOCK):
            kb = emb_k[k0:k0 + K_BLOCK].to(device, torch.float32)
            d = torch.cdist(qb, kb)
            kk = min(k, d.shape[1])
            d, i = torch.topk(d, kk, dim=1, largest=False)
            best_d = torch.cat([best_d, d], 1)
            best_i = torch.cat([best_i, i + k0], 1)
            if best_d.shape[1] > k:
                best_d, pick = torch.topk(best_d, k, dim=1, largest=False)
                best_i = best_i.gather(1, pick)
        order = best_d.argsort(dim=1, stable=True)
        dist_out[q0:q0 + chunk] = best_d.gather(1, order).cpu()
        idx_out[q0:q0 + chunk] = best_i.gather(1, order).cpu()
    return dist_out, idx_out


@dataclass
class Retrieval:
    """Result of ``retrieve_then_verify`` for Nq queries.

    indices (Nq, k): the k nearest keys by embedding, nearest first.
    logits (Nq, k): the verifier's logit for (query, each of those keys).
    max_logit (Nq,): the highest of them; best (Nq,): the key index that has it.
    flagged (Nq,) bool: max_logit above the decision threshold ("same patient").
    """

    indices: torch.Tensor
    logits: torch.Tensor
    max_logit: torch.Tensor
    best: torch.Tensor
    flagged: torch.Tensor


def retrieve_then_verify(emb_q: torch.Tensor, emb_keys: torch.Tensor, w: torch.Tensor, b, k: int = 16,
                         threshold: float = 0.5, chunk: int = Q_BLOCK,
                         device: torch.device | str | None = None) -> Retrieval:
    """"Is this query the same patient as ANY key?" without scoring all Nq·Nk pairs.

    1. ``topk_nearest``: the ``k`` (default 16, >= 1) nearest keys by L2 on the sigmoid
       embedding — the head is a weighted L1 distance on the same embedding, so a key it
       calls "same patient" is near in embedding space;
    2. the head on those k pairs only; the query is ``flagged`` if the best of them has
       probability > ``threshold`` (default 0.5, the paper's; in (0, 1)).

    ``max_score`` gives the exhaustive answer; tests and ``benchmarks/reid_scoring.py``
    measure how often the two agree (recall of the top-k retrieval).
    """
    if not 0 < threshold < 1:
        raise ValueError(f"threshold is a probability in (0, 1), got {threshold}")
    w, b = _head(w, b)
    _check_embeddings("emb_q", emb_q, len(w))
    _check_embeddings("emb_keys", emb_keys, len(w))
    _, idx = topk_nearest(emb_q, emb_keys, k, chunk=chunk, device=device)
    neigh = emb_keys[idx.reshape(-1).to(emb_keys.device)].reshape(*idx.shape, -1).float()  # (Nq, k, D)
    logits = (emb_q.float().cpu()[:, None, :] - neigh.cpu()).abs() @ w.cpu() + b
    max_logit, pos = logits.max(dim=1)
    best = idx.gather(1, pos[:, None])[:, 0]
    logit_threshold = float(torch.logit(torch.tensor(threshold, dtype=torch.float64)))
    return Retrieval(idx, logits, max_logit, best, max_logit > logit_threshold)
