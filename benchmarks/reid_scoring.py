"""Benchmark: scoring re-identification pairs by embedding once vs two encoder passes per pair.

    .venv/bin/python benchmarks/reid_scoring.py [--images 600] [--queries 10000] [--keys 100000]

1. Pair throughput, same model, same run: the *naive* path (the paper code's: every pair goes
   through the siamese network, two encoder passes) vs the *embedding-once* path (embed every
   image once, then the head |e1 − e2|·w + b on embeddings, ``Verifier.score_matrix``), for all
   pairs among ``--images`` images (a source against many candidates, a set against a set).
2. "Against every training image": ``retrieve_then_verify`` of ``--queries`` query embeddings
   against ``--keys`` stored embeddings (top-k by L2, then the head on those k), wall time, and
   how often it agrees with exhaustive scoring of every key (``max_score``, on a subsample of
   queries). Embeddings are realistic stand-ins: sigmoid-range, 4 scans per patient, half of
   the queries new scans of stored patients and half unseen patients; the head is a trained
   verifier's (``--verifier DIR``) or a "far apart = different" one.

Prints tables; timings are wall-clock on whatever machine runs it (CPU: torch threads as set).
"""

from __future__ import annotations

import argparse
import time

import torch

from trichotomy_lib.device import default_device
from trichotomy_lib.privacy.reid import Verifier, max_score, retrieve_then_verify


def _time(fn, repeat: int = 1):
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def pair_throughput(model: Verifier, n_images: int, naive_pairs: int, batch: int = 256) -> dict:
    g = torch.Generator().manual_seed(0)
    s = model.config["image_size"]
    images = torch.rand(n_images, 1, s, s, generator=g) * 2 - 1
    a = torch.randint(0, n_images, (naive_pairs,), generator=g)
    b = torch.randint(0, n_images, (naive_pairs,), generator=g)
    dev = model.device

    def naive():
        out = []
        with torch.no_grad():
            for i in range(0, naive_pairs, batch):
                out.append(model(images[a[i:i + batch]].to(dev), images[b[i:i + batch]].to(dev)).cpu())
        return torch.cat(out)

    def embedding_once():
        emb = model.embed(images, batch_size=batch)
        return emb, model.score_matrix(emb, emb)

    t_naive, naive_logits = _time(naive)
    t_fast, (emb, matrix) = _time(embedding_once)
    max_diff = float((matrix[a, b] - naive_logits).abs().max())
    n_fast = n_images * n_images
    return {"naive pairs/s": naive_pairs / t_naive, "embed-once pairs/s": n_fast / t_fast,
            "naive s": t_naive, "embed-once s": t_fast, "naive pairs": naive_pairs, "embed-once pairs": n_fast,
            "max |logit diff|": max_diff}


def realistic_embeddings(n_keys: int, n_queries: int, dim: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n_pat = n_keys // 4
    centers = 1.5 * torch.randn(n_pat, dim, generator=g)                       # logit space
    keys = torch.sigmoid(centers.repeat_interleave(4, 0) + 0.25 * torch.randn(n_pat * 4, dim, generator=g))
    owner = torch.randint(0, n_pat, (n_queries,), generator=g)
    queries = torch.sigmoid(centers[owner] + 0.25 * torch.randn(n_queries, dim, generator=g))
    half = n_queries // 2
    queries[half:] = torch.sigmoid(1.5 * torch.randn(n_queries - half, dim, generator=g))
    return queries, keys


def synthetic_head(queries: torch.Tensor, keys: torch.Tensor, seed: int = 1):
    """w < 0 ("far apart = different"); b halfway between same- and different-patient scores."""
    g = torch.Generator().manual_seed(seed)
    w = -(0.5 + torch.rand(keys.shape[1], generator=g))
    same = ((keys[0::4] - keys[1::4]).abs() @ w)[:2000]
    diff = ((keys[0:8000:4] - keys[4:8004:4]).abs() @ w)[:2000]
    return w, float(-(same.median() + diff.median()) / 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=600, help="images for the pair-throughput run (all pairs scored)")
    ap.add_argument("--naive-pairs", type=int, default=1024, help="pairs timed on the naive path")
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--k", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--exact-queries", type=int, default=500, help="queries checked against exhaustive scoring")
    ap.add_argument("--verifier", default=None, help="a saved verifier directory (default: a fresh default model)")
    args = ap.parse_args()

    torch.manual_seed(0)
    model = Verifier.load(args.verifier) if args.verifier else Verifier().to(default_device()).eval()
    print(f"device {model.device}, torch threads {torch.get_num_threads()}, verifier {model.config}")

    r = pair_throughput(model, args.images, args.naive_pairs)
    print("\n## 1. Pair scoring throughput (same model, same run)")
    print("| path | pairs | seconds | pairs/s |\n|---|---|---|---|")
    print(f"| naive: 2 encoder passes per pair | {r['naive pairs']:,} | {r['naive s']:.2f} | {r['naive pairs/s']:,.0f} |")
    print(f"| embed once + head on embeddings ({args.images}² pairs) | {r['embed-once pairs']:,} | "
          f"{r['embed-once s']:.2f} | {r['embed-once pairs/s']:,.0f} |")
    print(f"\nspeed-up: {r['embed-once pairs/s'] / r['naive pairs/s']:,.0f}x "
          f"(max |logit difference| between the paths on the naive pairs: {r['max |logit diff|']:.1e})")

    dim = model.config["embed_dim"]
    queries, keys = realistic_embeddings(args.keys, args.queries, dim)
    if args.verifier:
        w, b = model.head.weight.detach()[0].cpu(), float(model.head.bias.detach()[0])
    else:
        w, b = synthetic_head(queries, keys)
    print(f"\n## 2. Retrieve-then-verify: {args.queries:,} queries x {args.keys:,} stored embeddings (dim {dim})")
    print("| k | wall s | flagged | recall of exhaustive flags | exhaustive best key in top-k |\n|---|---|---|---|---|")
    n_exact = min(args.exact_queries, args.queries)
    sub = torch.cat([torch.arange(n_exact // 2), args.queries // 2 + torch.arange(n_exact - n_exact // 2)])
    t_exact, (exact_best, exact_arg) = _time(lambda: max_score(queries[sub], keys, w, b))
    exact_flag = exact_best > 0
    kmax = max(args.k)
    t, res = _time(lambda: retrieve_then_verify(queries, keys, w, b, k=kmax))
    for k in sorted(args.k):   # the top-k is sorted nearest first: a prefix is the smaller k's answer
        flagged = res.logits[:, :k].max(1).values > 0
        flags = flagged[sub]
        recall = float(flags[exact_flag].float().mean()) if exact_flag.any() else float("nan")
        in_topk = float((res.indices[sub, :k] == exact_arg[:, None]).any(1)[exact_flag].float().mean())
        wall = f"{t:.2f}" if k == kmax else f"(prefix of k={kmax})"
        print(f"| {k} | {wall} | {float(flagged.float().mean()):.3f} | {recall:.4f} | {in_topk:.4f} |")
    print(f"\nexhaustive scoring of {n_exact:,} queries x {args.keys:,} keys: {t_exact:.2f} s "
          f"({n_exact * args.keys / t_exact:,.0f} pairs/s); {int(exact_flag.sum())} of them flagged "
          f"(half the queries are new scans of stored patients, half unseen patients)")


if __name__ == "__main__":
    main()
