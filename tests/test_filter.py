"""The privacy filter (privacy/sample_filter.py) with injected stand-in models, and the shipped
sampling path (diffusion.conditional + privacy.generation) with a tiny real Denoiser.

The stand-in sampler writes the seed's parts into the image (pixel [0,0] = candidate j,
[0,1] = attempt, [0,2] = guidance·100, [0,3] = source mod 256) so rigged defenders and
classifiers can read them back after the uint8 round trip.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from trichotomy_lib.data.imageset import ImageSet
from trichotomy_lib import seeds
from trichotomy_lib.diffusion.conditional import conditional_sampler
from trichotomy_lib.privacy import filter_audit
from trichotomy_lib.privacy import sample_filter as flt
from trichotomy_lib.privacy.generation import redraw_candidates, reuse_first_candidate
from trichotomy_lib.privacy.release import load_audit_dir, load_release_dir, make_release, save_release

N_SRC, SIZE = 12, 8


def stand_in_sampler(calls: list | None = None):
    def fn(sources, seeds, guidance):
        if calls is not None:
            calls.extend(int(s) for s in sources)
        out = []
        for src, seed in zip(sources, seeds):
            g = torch.Generator().manual_seed(int(seed))
            img = torch.randint(0, 256, (SIZE, SIZE), generator=g).float()
            img[0, 0] = int(seed) & 0xFF
            img[0, 1] = (int(seed) >> 8) & 0xFF
            img[0, 2] = round(guidance * 100)
            img[0, 3] = int(src) % 256
            out.append(img / 127.5 - 1)
        return torch.stack(out).unsqueeze(1)
    return fn


def decode(images: torch.Tensor) -> dict:
    u8 = torch.round((images[:, 0] + 1) * 127.5).long()
    return {"j": u8[:, 0, 0].numpy(), "attempt": u8[:, 0, 1].numpy(), "guidance": u8[:, 0, 2].numpy() / 100,
            "noise": u8[:, 4:, 4:].float().mean((1, 2)).numpy() / 255}


def classifier_j_best(images):
    """BCE against SOURCE_PROBS grows with j: candidate 0 is always the most label-consistent."""
    d = decode(images)
    return np.clip(0.1 + 0.08 * d["j"][:, None] + 0.01 * d["noise"][:, None], 0, 1) * np.ones((1, 8))


def classifier_noise(images):
    d = decode(images)
    return np.clip(d["noise"][:, None] * np.linspace(0.5, 1.5, 8)[None], 0.01, 0.99)


SOURCE_PROBS = np.full((N_SRC, 8), 0.1)


def defender_const(p):
    return lambda sources, images: np.full(len(sources), p)


def run(params=None, sampler=None, defender=None, classifier=classifier_j_best, sources=None, **kw):
    sources = np.arange(N_SRC) if sources is None else sources
    return flt.run_filter(sources, sampler or stand_in_sampler(), defender or defender_const(0.1), classifier,
                          SOURCE_PROBS, params or {}, stream=7, progress=False, **kw)


# ----------------------------------------------------------------------------- the rule
def test_rigged_defender_flagging_the_best_candidate_never_releases_it():
    params = {"k": 4, "round_size": 4, "min_survivors": 4, "keep": 2}
    honest = run(params)
    chosen = honest.audit[honest.audit.decision == "chosen"]
    assert (chosen.candidate == 0).all()  # without the veto, candidate 0 wins everywhere

    def flag_j0(sources, images):  # flags exactly the most label-consistent candidate
        return np.where(decode(images)["j"] == 0, 0.97, 0.02)

    rigged = run(params, defender=flag_j0)
    audit = rigged.audit
    released = audit[audit.decision.isin(["chosen", "second_best"])]
    assert len(released) == len(rigged.images) == 2 * N_SRC
    assert not released.flagged.any() and (released.candidate != 0).all()
    assert (audit[audit.candidate == 0].decision == "flagged").all()
    assert (audit[audit.decision == "chosen"].candidate == 1).all()  # the best *survivor*
    assert (decode(torch.from_numpy(rigged.images).float().unsqueeze(1) / 127.5 - 1)["j"] != 0).all()


def test_choice_is_lowest_bce_survivor_then_the_kept_ranks_then_not_best():
    params = {"k": 6, "round_size": 6, "min_survivors": 6, "keep": 3}

    def flag_some(sources, images):
        return np.where(decode(images)["noise"] > 0.5, 0.8, 0.3)

    res = run(params, defender=flag_some, classifier=classifier_noise)
    n_kept = 0
    for s, rows in res.audit[res.audit.candidate >= 0].groupby("source_index"):
        surv = rows[~rows.flagged].sort_values(["bce", "candidate"])
        expected = ["chosen", "second_best", "kept", *["not_best"] * 3][:len(surv)]
        assert list(surv.decision) == expected
        n_kept += min(len(surv), 3)
        assert (rows[rows.flagged].decision == "flagged").all()
    assert (res.audit[res.audit.flagged].decision == "flagged").all()
    assert len(res.images) == n_kept and set(res.rank) <= {0, 1, 2}


def test_larger_keeps_nest_the_smaller_releases_and_add_only_worse_survivors():
    params = {"k": 8, "round_size": 2, "min_survivors": 4}
    res = {keep: run(params | {"keep": keep}) for keep in (1, 2, 4)}
    four = res[4]
    assert np.bincount(four.rank).tolist() == [N_SRC] * 4  # no flags: every source has 4 survivors
    for keep in (1, 2):  # the same draws (m fixes them), so a smaller release is the top ranks of a larger one
        images, src, rank = four.select(keep - 1)
        assert np.array_equal(images, res[keep].images) and np.array_equal(src, res[keep].source_index)
        assert np.array_equal(rank, res[keep].rank)
    a = four.audit
    assert (a.decision == "second_best").sum() == N_SRC and (a.decision == "kept").sum() == 2 * N_SRC
    assert (res[1].audit.decision.isin(["second_best", "kept"])).sum() == 0
    by_rank = [a[a.decision == d].set_index("source_index").bce.sort_index() for d in ("chosen", "second_best")]
    kept = a[a.decision == "kept"].groupby("source_index").bce.min().sort_index()
    assert (by_rank[0] <= by_rank[1]).all() and (by_rank[1] <= kept).all()
    with pytest.raises(ValueError, match="keep=4 must be <= filter.min_survivors=2"):
        flt.check_filter_params({"k": 4, "min_survivors": 2, "keep": 4})


def test_early_stop_draws_only_until_enough_survivors():
    res = run({"k": 8, "round_size": 2, "min_survivors": 2, "keep": 2})
    assert len(res.audit) == 2 * N_SRC  # one round of 2, both pass → stop
    full = run({"k": 8, "round_size": 8, "min_survivors": 8})
    assert len(full.audit) == 8 * N_SRC

    def flag_first_two(sources, images):
        return np.where(decode(images)["j"] < 2, 0.9, 0.1)

    res = run({"k": 8, "round_size": 2, "min_survivors": 2, "keep": 2}, defender=flag_first_two)
    assert len(res.audit) == 4 * N_SRC and (res.audit[res.audit.decision == "chosen"].candidate == 2).all()


# ------------------------------------------------------------------------------ retries
def test_all_flagged_retries_with_lower_guidance_down_to_floor():
    params = {"k": 3, "round_size": 3, "min_survivors": 1, "keep": 1, "guidance": 1.4, "guidance_step": 0.1,
              "guidance_floor": 1.1, "max_attempts": 6}

    def flag_above_floor(sources, images):  # passes only once guidance reached the floor
        d = decode(images)
        return np.where(d["guidance"] > 1.15, 0.9, 0.1)

    res = run(params, defender=flag_above_floor)
    a = res.audit
    assert (res.rank == 0).sum() == N_SRC and (a.source_outcome == "accepted").all()
    per = filter_audit.per_source(a)
    assert (per.attempts == 4).all() and np.allclose(per.final_guidance, 1.1)
    g_by_attempt = a.groupby("attempt").guidance.unique()
    assert [list(v) for v in g_by_attempt] == [[1.4], [1.3], [1.2], [1.1]]
    assert (a[a.attempt < 3].decision == "flagged").all()
    assert flt.guidance_at(10, params) == 1.1  # never below the floor


def test_source_that_never_passes_is_skipped_and_recorded():
    params = {"k": 2, "round_size": 1, "min_survivors": 1, "keep": 1, "guidance": 1.3, "guidance_step": 0.1,
              "guidance_floor": 1.0, "max_attempts": 5}
    bad = {3, 7}

    def flag_bad_sources(sources, images):
        return np.where(np.isin(sources, list(bad)), 0.99, 0.01)

    res = run(params, defender=flag_bad_sources)
    a = res.audit
    assert set(res.source_index) == set(range(N_SRC)) - bad  # skipped, not forced
    for s in bad:
        rows = a[a.source_index == s]
        cand = rows[rows.candidate >= 0]
        assert len(cand) == 2 * 5 and cand.flagged.all()  # cap: exactly max_attempts attempts
        assert sorted(cand.guidance.unique()) == [1.0, 1.1, 1.2, 1.3]  # floor 1.0 held for the 5th
        skip = rows[rows.decision == "skipped_source"]
        assert len(skip) == 1 and (rows.source_outcome == "skipped").all()
    summary = filter_audit.filter_summary(a)
    assert summary["n_skipped"] == 2 and summary["n_accepted"] == N_SRC - 2
    assert summary["max_attempts_used"] == 5 and summary["min_guidance"] == 1.0


# -------------------------------------------------------------------------------- seeds
def test_seeds_unique_across_sources_attempts_and_candidates():
    src, att, cand = np.meshgrid(np.arange(2000), np.arange(12), np.arange(16), indexing="ij")
    packed = seeds.sample_seeds(seeds.stream_id(42, "generate", "diadm"), src, att, cand).ravel()
    assert len(np.unique(packed)) == packed.size and packed.min() >= 0
    # a retry of source 0 must not land on a seed of source 1 (the paper's collision)
    assert seeds.sample_seeds(5, 0, 1, 0) != seeds.sample_seeds(5, 1, 0, 0)
    with pytest.raises(ValueError, match="attempt"):
        seeds.sample_seeds(5, 0, 256, 0)
    # and within a real run with retries
    def flag_most(sources, images):
        return np.where(decode(images)["attempt"] < 2, 0.9, 0.1)
    res = run({"k": 4, "round_size": 2, "min_survivors": 2, "keep": 2, "max_attempts": 4}, defender=flag_most)
    s = res.audit[res.audit.candidate >= 0].seed
    assert s.is_unique and len(s) == N_SRC * (4 + 4 + 2)


# ------------------------------------------------------------- batching independence
def tiny_models():
    from trichotomy_lib.diffusion.network import Denoiser
    from trichotomy_lib.privacy.reid_model import Verifier

    torch.manual_seed(0)
    net = Denoiser(sample_size=8, channels=(8, 8), embed_dim=4, norm_groups=2, head_dim=8).eval()
    with torch.no_grad():  # untrained nets output 0 (zero-init); give the last conv weights
        net.out.weight.normal_(0, 0.3)
    verifier = Verifier(width=4, stages=2, embed_dim=8, image_size=8).eval()
    with torch.no_grad():
        verifier.head.bias.fill_(0.3)
    return net, verifier


@pytest.fixture
def one_thread():
    """Real (tiny) networks: one thread, as oversubscribed OpenMP threads crawl on a loaded CI box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_output_independent_of_batch_and_chunk_size(one_thread):
    net, verifier = tiny_models()
    gen = torch.Generator().manual_seed(1)
    emb = torch.randn(N_SRC, 4, generator=gen)
    src_images = torch.rand(N_SRC, 1, SIZE, SIZE, generator=gen) * 2 - 1
    params = {"k": 3, "round_size": 2, "min_survivors": 2, "keep": 2, "max_attempts": 3, "guidance": 1.3}
    # calibrate the untrained verifier's bias so that about half of the first candidates are flagged
    with torch.no_grad():
        verifier.head.weight.mul_(100).clamp_(max=-1.0)
        verifier.head.bias.zero_()
        first = conditional_sampler(net, emb, "embedding", steps=3, solver="dpm")(
            np.arange(N_SRC), seeds.sample_seeds(7, np.arange(N_SRC)), 1.3)
        logits = verifier.score_pairs(verifier.embed(src_images), verifier.embed(first))
        verifier.head.bias.fill_(-float(logits.median()))
    defender = flt.verifier_defender_fn(verifier, src_images)
    results = []
    for batch_size, chunk in ((64, 12), (2, 5), (5, 1)):
        sampler = conditional_sampler(net, emb, "embedding", steps=3, solver="dpm", batch_size=batch_size)
        results.append(run(params | {"chunk_size": chunk}, sampler=sampler, defender=defender, classifier=classifier_noise))
    ref = results[0]
    a = ref.audit
    assert 0 < a[a.candidate >= 0].flagged.mean() < 1  # the decisions are not trivial
    for other in results[1:]:
        assert np.array_equal(ref.images, other.images)
        assert np.array_equal(ref.source_index, other.source_index) and np.array_equal(ref.rank, other.rank)
        cols = ["source_index", "attempt", "candidate", "seed", "guidance", "flagged", "decision"]
        pd.testing.assert_frame_equal(ref.audit[cols], other.audit[cols])
        np.testing.assert_allclose(ref.audit.defender_prob, other.audit.defender_prob, atol=1e-5)


# --------------------------------------------------------------------------------- resume
def test_resume_after_crash_gives_identical_release(tmp_path):
    params = {"k": 3, "round_size": 2, "min_survivors": 2, "keep": 2, "chunk_size": 3, "max_attempts": 3}

    def flag_some(sources, images):
        return np.where(decode(images)["noise"] > 0.52, 0.8, 0.2)

    reference = run(params, defender=flag_some, classifier=classifier_noise)

    class Crash(RuntimeError):
        pass

    def crash_after_1(i, n):
        if i == 1:
            raise Crash

    out = tmp_path / "chunks"
    with pytest.raises(Crash):
        run(params, defender=flag_some, classifier=classifier_noise, out_dir=out, on_chunk=crash_after_1)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["chunk_000000", "chunk_000001"]
    calls: list = []
    resumed = run(params, sampler=stand_in_sampler(calls), defender=flag_some, classifier=classifier_noise, out_dir=out)
    assert set(calls) == set(range(6, N_SRC))  # finished chunks were read, not recomputed
    assert np.array_equal(resumed.images, reference.images)
    assert np.array_equal(resumed.source_index, reference.source_index)
    assert np.array_equal(resumed.rank, reference.rank)
    pd.testing.assert_frame_equal(resumed.audit, reference.audit)
    pairs = list(zip(resumed.source_index, resumed.rank))
    assert len(pairs) == len(set(pairs))  # nothing released twice
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(ValueError, match="other filter arguments"):
        run(params | {"k": 4}, defender=flag_some, out_dir=out)


# -------------------------------------------------------------------------------- release
def test_release_roundtrip_and_labels_from_source(tmp_path):
    rng = np.random.default_rng(0)
    train = ImageSet(rng.integers(0, 255, (N_SRC, SIZE, SIZE), dtype=np.uint8),
                     np.eye(8, dtype=np.uint8)[rng.integers(0, 8, N_SRC)],
                     np.array([f"p{i // 2}" for i in range(N_SRC)]), np.array([f"img{i}" for i in range(N_SRC)]))
    res = run({"k": 2, "round_size": 2, "min_survivors": 2, "keep": 2})
    rel = make_release("diadm_filter_2nd", res.images, res.source_index, train, res.rank)
    assert np.array_equal(rel.labels, train.labels[res.source_index])
    assert np.array_equal(rel.patient_ids, train.patient_ids[res.source_index])
    assert rel.names[0] == "diadm_filter_2nd/img0" and rel.names[1] == "diadm_filter_2nd/img0#2"
    save_release(tmp_path / "r", rel, res.source_index, res.audit)
    loaded, idx = load_release_dir(tmp_path / "r")
    assert np.array_equal(loaded.images, rel.images) and idx.dtype == np.int64
    pd.testing.assert_frame_equal(load_audit_dir(tmp_path / "r"), res.audit)
    with pytest.raises(ValueError, match="duplicate"):
        make_release("x", np.concatenate([res.images[:1]] * 2), [0, 0], train)


def test_bad_parameters_are_named():
    with pytest.raises(ValueError, match="min_survivors"):
        flt.check_filter_params({"k": 2, "min_survivors": 3, "keep": 2})
    with pytest.raises(ValueError, match="unknown"):
        flt.check_filter_params({"K": 2})
    with pytest.raises(ValueError, match="duplicate"):
        run(sources=np.array([1, 1]))


# ------------------------------------------------------------------ the shipped path
def test_reuse_first_candidate_returns_exactly_a_fresh_sample(one_thread):
    """The filter stage reads each source's first candidate from the raw release instead of
    sampling it again; what it judges must be the image a fresh draw of that seed gives."""
    from trichotomy_lib.data.imageset import images_to_uint8

    net, _ = tiny_models()
    emb = torch.randn(N_SRC, 4, generator=torch.Generator().manual_seed(3))
    stream, guidance = 7, 1.3
    fresh = conditional_sampler(net, emb, "embedding", steps=3, solver="dpm", batch_size=4)
    sources = np.arange(N_SRC)
    raw = images_to_uint8(fresh(sources, seeds.sample_seeds(stream, sources), guidance))  # the diadm_raw release
    calls = []

    def counting(src, sample_seeds, g):
        calls.append(len(src))
        return fresh(src, sample_seeds, g)

    wrapped = reuse_first_candidate(counting, raw, sources, stream, guidance)
    # a round mixing first candidates (reused) with second candidates and a retry (sampled)
    src = np.array([0, 1, 2, 0, 1, 5])
    att, cand = np.array([0, 0, 0, 0, 1, 0]), np.array([0, 0, 0, 1, 0, 0])
    got = images_to_uint8(wrapped(src, seeds.sample_seeds(stream, src, att, cand), guidance))
    want = images_to_uint8(fresh(src, seeds.sample_seeds(stream, src, att, cand), guidance))
    assert np.array_equal(got, want)
    assert calls == [2]  # only candidate (0, 1) and the retry of source 1 were drawn; four were reused
    # at another guidance nothing is reused (the raw release was drawn at g_0 only)
    calls.clear()
    wrapped(src[:3], seeds.sample_seeds(stream, src[:3]), 1.0)
    assert calls == [3]


def test_redraw_candidates_reproduces_the_filters_judgement(one_thread):
    """Notebook 05 redraws a source's K candidates from their recorded seeds: the defender
    probabilities and decisions must be those of the audit."""
    net, verifier = tiny_models()
    gen = torch.Generator().manual_seed(1)
    emb = torch.randn(N_SRC, 4, generator=gen)
    src_images = torch.rand(N_SRC, 1, SIZE, SIZE, generator=gen) * 2 - 1
    sampler = conditional_sampler(net, emb, "embedding", steps=3, solver="dpm")
    defender = flt.verifier_defender_fn(verifier, src_images)
    params = flt.check_filter_params({"k": 3, "round_size": 3, "min_survivors": 3, "keep": 2, "max_attempts": 2, "guidance": 1.3})
    res = run(params, sampler=sampler, defender=defender, classifier=classifier_noise)
    images, table = redraw_candidates([0, 4], 0, params, 7, sampler, defender, classifier_noise, SOURCE_PROBS, res.audit)
    assert images.shape == (2, 3, SIZE, SIZE) and len(table) == 6
    audit = res.audit[(res.audit.attempt == 0) & res.audit.source_index.isin([0, 4])].set_index("seed")
    merged = table.set_index("seed").join(audit[["defender_prob", "decision"]], rsuffix="_audit")
    np.testing.assert_allclose(merged.defender_prob, merged.defender_prob_audit, atol=1e-5)
    assert (merged.decision == merged.decision_audit).all()
