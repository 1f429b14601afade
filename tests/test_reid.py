"""Re-identification verifiers: model files, scoring math, retrieval, pairs, training, stages."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from trichotomy_lib.data.imageset import ImageSet
from trichotomy_lib.privacy import reid_score
from trichotomy_lib.privacy.reid import (
    Verifier,
    evaluate_pixels,
    evaluate_verifier,
    hardest_pairs,
    max_score,
    precision_at_1,
    retrieve_then_verify,
    sample_pairs,
    score_matrix,
    score_pairs,
    topk_nearest,
    train_verifier,
)

SIZE = 16
TINY = {"width": 8, "stages": 2, "embed_dim": 16, "epochs": 5, "batch_size": 32, "lr": 1e-2, "patience": None,
        "augment_noise": 0.0, "augment_rotate": 0.0}


def identity_set(n_patients: int, scans: int | list, seed: int, first: int = 0, size: int = SIZE) -> ImageSet:
    """A tiny identity task: each patient a fixed random 4x4 pattern (upsampled); each scan a
    one-pixel shift of it under a strong exposure change (contrast 0.5-1, brightness +0-0.5)
    and noise — so raw pixel distance is a weak identity cue and the network must learn one."""
    rng = np.random.default_rng(seed)
    images, pids = [], []
    for p in range(n_patients):
        pattern = np.kron(rng.uniform(0, 1, (4, 4)), np.ones((size // 4, size // 4)))
        for _ in range(scans if isinstance(scans, int) else scans[p]):
            img = np.roll(pattern, rng.integers(-1, 2, 2), axis=(0, 1)) * rng.uniform(0.5, 1.0) + rng.uniform(0, 0.5)
            img = img + rng.normal(0, 0.05, img.shape)
            images.append(np.clip(img * 200 + 20, 0, 255).astype(np.uint8))
            pids.append(f"p{first + p:04d}")
    n = len(images)
    return ImageSet(np.stack(images), np.zeros((n, 8), np.uint8), np.array(pids),
                    np.array([f"{pid}/s{i}" for i, pid in enumerate(pids)]))


def random_verifier(seed: int = 0, **kw) -> Verifier:
    torch.manual_seed(seed)
    model = Verifier(**{"width": 8, "stages": 2, "embed_dim": 16, "image_size": SIZE, **kw})
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a lost buffer would show
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def clustered_embeddings(n_keys: int, n_queries: int, dim: int, seed: int):
    """Sigmoid-range embeddings in patient clusters; queries are new scans of key patients
    (or of unseen patients), like a release against its training set."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.rand(n_keys // 4, dim, generator=g)
    keys = (centers.repeat_interleave(4, 0) + 0.03 * torch.randn(n_keys // 4 * 4, dim, generator=g)).clamp(0, 1)
    owner = torch.randint(0, len(centers), (n_queries,), generator=g)
    queries = (centers[owner] + 0.03 * torch.randn(n_queries, dim, generator=g)).clamp(0, 1)
    queries[n_queries // 2:] = torch.rand(n_queries - n_queries // 2, dim, generator=g)   # unseen patients
    return queries, keys


# ------------------------------------------------------------------------------ model files
def test_save_load_round_trip(tmp_path):
    model = random_verifier()
    x = identity_set(3, 2, seed=0).tensor()
    model.save(tmp_path, extra={"role": "defender"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "verifier.json"]
    meta = json.loads((tmp_path / "verifier.json").read_text())
    assert meta["role"] == "defender" and meta["config"]["image_size"] == SIZE
    loaded = Verifier.load(tmp_path, device="cpu")
    assert loaded.config == model.config
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    assert torch.equal(model.embed(x), loaded.embed(x))


def test_load_rejects_bad_directories(tmp_path):
    with pytest.raises(FileNotFoundError, match="verifier.json"):
        Verifier.load(tmp_path)
    random_verifier().save(tmp_path)
    meta = json.loads((tmp_path / "verifier.json").read_text())
    meta["config"]["widht"] = 3
    (tmp_path / "verifier.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="widht"):
        Verifier.load(tmp_path)
    meta["config"].pop("widht")
    meta["config"]["embed_dim"] = 32               # weights no longer fit the config
    (tmp_path / "verifier.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="do not match"):
        Verifier.load(tmp_path)


def test_resnet50_weights_must_be_safetensors(tmp_path):
    with pytest.raises((ImportError, ValueError), match="torchvision|safetensors"):
        Verifier(backbone="resnet50", image_size=64, backbone_weights=str(tmp_path / "w.pth"))
    with pytest.raises(ValueError, match="backbone"):
        Verifier(backbone="vgg")


# ------------------------------------------------------------------------------ scoring math
def test_head_on_embeddings_equals_naive_pair_forward():
    model = random_verifier(1)
    data = identity_set(5, 3, seed=1)
    x = data.tensor()
    a, b = torch.tensor([0, 1, 2, 3, 4, 7]), torch.tensor([5, 9, 2, 14, 0, 8])
    with torch.no_grad():
        naive = model(x[a], x[b])                  # two encoder passes per pair
    emb = model.embed(x, batch_size=4)
    fast = model.score_pairs(emb[a], emb[b])
    torch.testing.assert_close(fast, naive, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.embed(data), emb)  # ImageSet input = tensor input (other batch size)
    full = model.score_matrix(emb, emb)
    torch.testing.assert_close(full[a, b], naive, rtol=1e-5, atol=1e-5)
    w, bias = model.head.weight[0].detach(), float(model.head.bias.detach()[0])
    torch.testing.assert_close(full, (emb[:, None] - emb[None]).abs() @ w + bias, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("signs", ["mixed", "negative", "positive"])
def test_score_matrix_chunking_equals_unchunked(monkeypatch, signs):
    g = torch.Generator().manual_seed(2)
    q, k = torch.rand(37, 24, generator=g), torch.rand(53, 24, generator=g)
    w = torch.randn(24, generator=g)
    w = {"mixed": w, "negative": -w.abs(), "positive": w.abs()}[signs]
    reference = (q[:, None] - k[None]).abs() @ w + 0.7        # naive (Nq, Nk, D) broadcast
    whole = score_matrix(q, k, w, 0.7, chunk=10_000)
    monkeypatch.setattr(reid_score, "K_BLOCK", 7)
    chunked = score_matrix(q, k, w, 0.7, chunk=5)
    torch.testing.assert_close(whole, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)
    best, arg = max_score(q, k, w, 0.7, chunk=4)
    torch.testing.assert_close(best, reference.max(1).values, rtol=1e-5, atol=1e-5)
    assert torch.equal(reference[torch.arange(len(q)), arg], reference.max(1).values) or \
        torch.allclose(reference[torch.arange(len(q)), arg], reference.max(1).values, atol=1e-5)
    torch.testing.assert_close(score_pairs(q[:20], k[:20], w, 0.7), reference[torch.arange(20), torch.arange(20)])


def test_topk_nearest_blocks_equal_bruteforce(monkeypatch):
    q, k = clustered_embeddings(200, 50, 16, seed=3)
    monkeypatch.setattr(reid_score, "K_BLOCK", 17)
    dist, idx = topk_nearest(q, k, 5, chunk=7)
    ref_d, ref_i = torch.cdist(q, k).topk(5, dim=1, largest=False)
    torch.testing.assert_close(dist, ref_d, rtol=1e-4, atol=1e-4)
    assert (idx == ref_i).float().mean() > 0.99     # ties aside, the same neighbours
    assert (dist[:, 1:] >= dist[:, :-1] - 1e-6).all()


def test_retrieve_then_verify_recall_against_exact_scoring(monkeypatch):
    q, k = clustered_embeddings(2000, 400, 32, seed=4)
    g = torch.Generator().manual_seed(5)
    w, b = -(0.5 + torch.rand(32, generator=g)), 4.0     # a trained head: far apart = different
    monkeypatch.setattr(reid_score, "K_BLOCK", 300)
    result = retrieve_then_verify(q, k, w, b, k=8, chunk=64)
    exact_best, exact_arg = max_score(q, k, w, b)
    assert result.indices.shape == (400, 8) and result.logits.shape == (400, 8)
    torch.testing.assert_close(result.logits, score_matrix(q, k, w, b).gather(1, result.indices))
    exact_flag = exact_best > 0
    assert exact_flag[:200].float().mean() > 0.9 and exact_flag[200:].float().mean() < 0.1  # task is sane
    assert result.flagged[exact_flag].float().mean() > 0.99          # recall of "same patient as a key"
    assert (result.flagged == exact_flag).float().mean() > 0.99
    found_best = (result.max_logit >= exact_best - 1e-4)[exact_flag].float().mean()
    assert found_best > 0.95, found_best                              # the exact best key is in the top-k
    assert (result.best == exact_arg)[exact_flag].float().mean() > 0.95
    assert (result.max_logit <= exact_best + 1e-5).all()      # a subset can never beat the exact max
    # k = all keys is exhaustive scoring
    full = retrieve_then_verify(q[:20], k[:300], w, b, k=300)
    torch.testing.assert_close(full.max_logit, max_score(q[:20], k[:300], w, b)[0])


# ------------------------------------------------------------------------------ bad input
def test_bad_images_name_the_problem():
    model = random_verifier()
    with pytest.raises(ValueError, match="32x32 px.*16x16"):
        model.embed(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="3 channel"):
        model.embed(torch.zeros(2, 3, SIZE, SIZE))
    with pytest.raises(ValueError, match="empty"):
        model.embed(torch.zeros(0, 1, SIZE, SIZE))
    with pytest.raises(ValueError, match="shape"):
        model.embed(torch.zeros(2, SIZE, SIZE))
    with pytest.raises(ValueError, match="dtype"):
        model.embed(torch.zeros(2, 1, SIZE, SIZE, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        model.embed(torch.full((2, 1, SIZE, SIZE), 200.0))
    with pytest.raises(ValueError, match="32x32 px"):
        model.embed(identity_set(2, 2, seed=0, size=32))
    with pytest.raises(ValueError, match="image_size"):
        Verifier(image_size=4, stages=3)


def test_bad_embeddings_and_pairs_name_the_problem():
    w = torch.ones(8)
    with pytest.raises(ValueError, match="emb_k is empty"):
        score_matrix(torch.rand(3, 8), torch.rand(0, 8), w, 0.0)
    with pytest.raises(ValueError, match="dimension 4"):
        score_matrix(torch.rand(3, 8), torch.rand(5, 4), w, 0.0)
    with pytest.raises(ValueError, match="aligned"):
        score_pairs(torch.rand(3, 8), torch.rand(4, 8), w, 0.0)
    with pytest.raises(ValueError, match="threshold"):
        retrieve_then_verify(torch.rand(3, 8), torch.rand(4, 8), w, 0.0, threshold=2.0)
    singles = identity_set(6, 1, seed=0)
    with pytest.raises(ValueError, match="'train'.*no patient has two"):
        sample_pairs(singles.patient_ids, seed=0, split="train")
    with pytest.raises(ValueError, match="only one patient"):
        sample_pairs(identity_set(1, 3, seed=0).patient_ids, seed=0)
    with pytest.raises(ValueError, match="empty"):
        sample_pairs(np.array([], dtype=str), seed=0)
    with pytest.raises(ValueError, match="'train'.*no patient has two"):
        train_verifier(singles, identity_set(3, 2, seed=1, first=50), TINY, seed=0, progress=False)
    with pytest.raises(ValueError, match="widht"):
        train_verifier(singles, singles, {"widht": 3}, seed=0, progress=False)


# ------------------------------------------------------------------------------ pairs
def test_pairs_balanced_within_split_and_complete():
    scans = [1, 2, 3, 5, 4, 1, 2, 6]
    data = identity_set(8, scans, seed=0)
    pairs = sample_pairs(data.patient_ids, seed=1)
    pid = data.patient_ids
    n_pos_expected = sum(s * (s - 1) // 2 for s in scans)
    assert pairs.n_pos == n_pos_expected and len(pairs) == 2 * n_pos_expected       # balanced, all positives
    assert ((pid[pairs.a] == pid[pairs.b]) == (pairs.label == 1)).all()              # labels are right
    assert (pairs.a != pairs.b).all() and pairs.a.max() < len(data) and pairs.b.max() < len(data)
    keys = {tuple(sorted(p)) for p in zip(pairs.a.tolist(), pairs.b.tolist())}
    assert len(keys) == len(pairs)                                                  # no duplicates
    capped = sample_pairs(pid, seed=1, max_pos_per_patient=3)
    per_patient = np.unique(pid[capped.a[capped.label == 1]], return_counts=True)[1]
    assert per_patient.max() == 3 and capped.n_pos == len(capped) // 2
    again = sample_pairs(pid, seed=1)
    assert all(np.array_equal(x, y) for x, y in zip((pairs.a, pairs.b, pairs.label), (again.a, again.b, again.label)))


def test_the_auditor_is_a_third_party_and_the_defender_sees_the_training_patients():
    from trichotomy_lib.data import generate_phantom
    from trichotomy_lib.privacy.controls import control_population
    from trichotomy_lib.privacy.roles import auditor_population, auditor_split, defender_train_set

    data_cfg = {"source": "phantom", "image_size": 16, "n_patients": 12}
    train = generate_phantom(12, image_size=16, seed=42)
    defender = defender_train_set(train, 42, data_cfg, extra_patients=5)
    assert set(train.patient_ids) <= set(defender.patient_ids)           # every training patient
    extra = set(defender.patient_ids) - set(train.patient_ids)
    assert len(extra) == 5                                               # + 5 fresh ones
    pool = auditor_population(data_cfg, 20, 42)
    a_train, a_val = auditor_split(pool, 42)
    others = {name: set(control_population(data_cfg, 12, 42, name, prefix).patient_ids)
              for name, prefix in (("control", "ctrl"), ("weight", "wt"))}
    auditor = set(pool.patient_ids)
    assert len(auditor) == 20 and not auditor & set(train.patient_ids) and not auditor & set(defender.patient_ids)
    assert not auditor & others["control"] and not auditor & others["weight"]
    assert not set(a_train.patient_ids) & set(a_val.patient_ids) and len(set(a_val.patient_ids)) == 4
    with pytest.raises(ValueError, match="extra_patients generates PhantomCXR"):
        defender_train_set(train, 42, {"source": "filelist"}, extra_patients=5)
    with pytest.raises(ValueError, match="integer >= 0"):
        defender_train_set(train, 42, data_cfg, extra_patients=-1)
    with pytest.raises(ValueError, match="auditor_patients"):
        auditor_population(data_cfg, 1, 42)


# ------------------------------------------------------------------------------ training
def test_training_beats_chance_and_is_deterministic():
    train, val, test = identity_set(40, 3, seed=0), identity_set(12, 3, seed=1, first=100), identity_set(15, 3, seed=2, first=200)
    model, history = train_verifier(train, val, TINY, seed=7, progress=False)
    assert len(history["val_auroc"]) == TINY["epochs"] and history["best_epoch"] >= 0
    pairs = sample_pairs(test.patient_ids, seed=3)
    ev = evaluate_verifier(model, test, pairs, n_boot=50)
    pix = evaluate_pixels(test, pairs, val, sample_pairs(val.patient_ids, seed=4), n_boot=50)
    with torch.random.fork_rng():
        untrained = evaluate_verifier(Verifier(width=8, stages=2, embed_dim=16, image_size=SIZE), test, pairs, n_boot=0)
    assert ev.metrics["auroc"][0] > 0.85, ev.metrics                       # clearly above chance (0.5)
    assert ev.metrics["auroc"][0] > pix.metrics["auroc"][0] + 0.05         # learned more than pixel distance
    assert ev.metrics["auroc"][0] > untrained.metrics["auroc"][0] + 0.1    # and it was the training
    assert ev.metrics["auroc"][1] <= ev.metrics["auroc"][0] <= ev.metrics["auroc"][2]
    assert ev.metrics["precision_at_1"]["n"] == len(test)
    assert 0 <= pix.metrics["auroc"][0] <= 1 and pix.metrics["n_pairs"] == len(pairs)
    hard = hardest_pairs(ev, n=3)
    assert (pairs.label[hard["different"]] == 0).all() and (pairs.label[hard["same"]] == 1).all()
    again, _ = train_verifier(train, val, TINY, seed=7, progress=False)
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("recipe", [{}, {"lr_schedule": "cosine", "select": "precision_at_1"}],
                         ids=["constant-auroc", "cosine-precision_at_1"])
def test_resume_from_checkpoint_equals_uninterrupted(tmp_path, monkeypatch, recipe):
    from trichotomy_lib.privacy import reid_train

    train, val = identity_set(12, 3, seed=0), identity_set(6, 3, seed=1, first=100)
    params = {**TINY, "epochs": 3, **recipe}
    reference, ref_hist = train_verifier(train, val, params, seed=1, progress=False)
    real, calls = reid_train.validation_scores, {"n": 0}

    def crash_on_second_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(reid_train, "validation_scores", crash_on_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_verifier(train, val, params, seed=1, checkpoint_dir=tmp_path, progress=False)
    assert (tmp_path / reid_train.TRAINING_STATE_FILE).exists()
    monkeypatch.setattr(reid_train, "validation_scores", real)
    resumed, hist = train_verifier(train, val, params, seed=1, checkpoint_dir=tmp_path, progress=False)
    for key in ("loss", "val_auroc", "val_precision_at_1", "lr", "best_epoch", "best_val_auroc"):
        assert hist[key] == ref_hist[key], key
    assert tuple(hist["best_score"]) == tuple(ref_hist["best_score"])
    for (k, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    assert not (tmp_path / reid_train.TRAINING_STATE_FILE).exists()


def test_precision_at_1_excludes_the_query_itself():
    feats = torch.tensor([[0.0], [0.1], [5.0], [5.1], [9.0]])
    pids = np.array(["a", "a", "b", "c", "d"])   # "d" has one image: not a query
    out = precision_at_1(feats, pids)
    assert out["n"] == 2 and out["k"] == 2      # only a's two images are queries; both find each other


# ------------------------------------------------------------------------------ stages
def test_stages_train_independent_verifiers(tmp_path, monkeypatch):
    from trichotomy_lib import pipeline
    from trichotomy_lib.analysis import reid as reid_tables
    from trichotomy_lib.stages import reid as reid_stages

    import trichotomy_lib.stages  # noqa: F401  (registers the real stages first)

    def fake_data(ctx):
        for name, (n, seed, first) in {"train": (40, 0, 0), "val": (10, 1, 100), "test": (12, 2, 200)}.items():
            identity_set(n, 3, seed=seed, first=first).save(ctx.out / name)

    def fake_populations(ctx):
        identity_set(20, 3, seed=5, first=300).save(ctx.out / "auditor")   # the auditor's own patients

    monkeypatch.setitem(pipeline.STAGES, "data", pipeline.Stage("data", fake_data, ("seed", "data")))
    monkeypatch.setitem(pipeline.STAGES, "control_population",
                        pipeline.Stage("control_population", fake_populations, ("seed",), ("data",)))
    cfg = {"profile": "test", "seed": 3, "run_root": str(tmp_path), "data": {},
           "reid": {**TINY, "epochs": 2, "n_boot": 20}}
    pipe = pipeline.Pipeline(cfg, run_dir=tmp_path, verbose=False)
    defender = reid_stages.load_verifier(pipe, "defender")
    auditor = reid_stages.load_verifier(pipe, "auditor")
    assert isinstance(defender, Verifier) and defender.config["image_size"] == SIZE
    assert not torch.equal(defender.head.weight, auditor.head.weight)
    info = reid_tables.independence(pipe)
    assert info["shared_patients"] == info["shared_images"] == info["shared_pairs"] == 0
    assert info["defender"]["n_patients"] == 40 and info["auditor"]["n_patients"] == 16   # 4 of its 20 choose the epoch
    assert info["defender"]["seed"] != info["auditor"]["seed"]
    report = reid_tables.evaluate(pipe)
    assert set(report) == {"defender", "auditor", "raw pixels"}
    assert report["defender"].pairs.label.tolist() == report["raw pixels"].pairs.label.tolist()
    with pytest.raises(ValueError, match="role"):
        reid_stages.load_verifier(pipe, "attacker")
    # n_boot is not a training parameter: changing it keeps the trained verifiers
    key = pipe.key("reid_defender")
    assert pipeline.Pipeline({**cfg, "reid": {**cfg["reid"], "n_boot": 5}}, run_dir=tmp_path).key("reid_defender") == key
    assert pipeline.Pipeline({**cfg, "reid": {**cfg["reid"], "lr": 0.05}}, run_dir=tmp_path).key("reid_defender") != key


# ------------------------------------------------------------------------------ retrieval loss
def test_retrieval_loss_is_supervised_contrastive_on_the_head():
    from trichotomy_lib.privacy.reid_train import retrieval_loss

    model = random_verifier(3)
    e = torch.rand(5, 16, generator=torch.Generator().manual_seed(0), requires_grad=True)
    who = np.array(["a", "b", "a", "c", "a"])
    got = retrieval_loss(model, e, who)
    w, b = model.head.weight.detach()[0], float(model.head.bias.detach()[0])
    d = e.detach()
    s = [[float((d[i] - d[j]).abs() @ w + b) for j in range(5)] for i in range(5)]
    want = []
    for i in (0, 2, 4):                                   # the images whose patient has another image here
        others = [j for j in range(5) if j != i]
        pos = [j for j in others if who[j] == who[i]]
        want.append(-np.log(sum(np.exp(s[i][j]) for j in pos) / sum(np.exp(s[i][j]) for j in others)))
    assert float(got.detach()) == pytest.approx(float(np.mean(want)), rel=1e-5)
    got.backward()
    assert e.grad.abs().sum() > 0
    # ranking the own patient first lowers it: pull the positives together
    close = e.detach().clone()
    close[[2, 4]] = close[0].clone()
    assert float(retrieval_loss(model, close, who).detach()) < float(got.detach())
    # a batch of singletons has no positive: 0, still differentiable
    lone = torch.rand(3, 16, requires_grad=True)
    zero = retrieval_loss(model, lone, ["a", "b", "c"])
    assert float(zero.detach()) == 0.0 and zero.requires_grad
    with pytest.raises(ValueError, match="3 embeddings for 2 patient ids"):
        retrieval_loss(model, lone, ["a", "b"])


def test_retrieval_loss_trains_retrieval_and_is_validated():
    from trichotomy_lib.config import ConfigError
    from trichotomy_lib.stages.reid import reid_config

    train, val = identity_set(40, 3, seed=0), identity_set(12, 3, seed=1, first=100)
    test = identity_set(60, 3, seed=2, first=200)
    params = {**TINY, "epochs": 4}
    plain, _ = train_verifier(train, val, params, seed=7, progress=False)
    ranked, hist = train_verifier(train, val, {**params, "retrieval_loss": 1.0}, seed=7, progress=False)
    again, _ = train_verifier(train, val, {**params, "retrieval_loss": 1.0}, seed=7, progress=False)
    for (k, a), b in zip(ranked.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k                                      # deterministic given the seed
    p_plain = precision_at_1(plain.embed(test), test.patient_ids)["value"]
    p_ranked = precision_at_1(ranked.embed(test), test.patient_ids)["value"]
    assert p_ranked > p_plain, (p_ranked, p_plain)                      # the term is what trains retrieval
    for bad in (-0.5, "1", True):
        with pytest.raises(ValueError, match="retrieval_loss"):
            train_verifier(train, val, {**params, "retrieval_loss": bad}, seed=7, progress=False)
        with pytest.raises(ConfigError, match="reid.retrieval_loss"):
            reid_config({"reid": {"retrieval_loss": bad}})


def test_lr_schedule_and_epoch_selection(monkeypatch):
    from trichotomy_lib.config import ConfigError
    from trichotomy_lib.privacy import reid_train
    from trichotomy_lib.privacy.reid_train import learning_rate
    from trichotomy_lib.stages.reid import reid_config

    cosine = {"lr": 0.002, "lr_schedule": "cosine"}
    assert learning_rate(cosine, 0, 100) == 0.002
    assert learning_rate(cosine, 50, 100) == pytest.approx(0.001)
    assert learning_rate(cosine, 100, 100) == pytest.approx(0.0)
    assert learning_rate({**cosine, "lr_schedule": "constant"}, 70, 100) == 0.002

    train, val = identity_set(20, 3, seed=0), identity_set(8, 3, seed=1, first=100)
    params = {**TINY, "epochs": 4, "patience": None}
    _, flat = train_verifier(train, val, params, seed=3, progress=False)
    model, hist = train_verifier(train, val, {**params, "lr_schedule": "cosine"}, seed=3, progress=False)
    assert flat["lr"] == [TINY["lr"]] * 4                                  # the paper's constant rate
    assert hist["lr"][0] < TINY["lr"] and all(a > b for a, b in zip(hist["lr"], hist["lr"][1:]))
    assert hist["val_auroc"] != flat["val_auroc"]                          # the schedule changes training
    # "auroc" keeps the best val AUROC; "precision_at_1" the best precision@1, ties broken by AUROC
    scripted = [(0.90, 0.50), (0.95, 0.60), (0.93, 0.80), (0.94, 0.80), (0.92, 0.80)]
    for select, want in (("auroc", 1), ("precision_at_1", 3)):
        calls = iter(scripted)
        monkeypatch.setattr(reid_train, "validation_scores",
                            lambda *a, **k: dict(zip(("auroc", "precision_at_1"), next(calls))))
        _, h = train_verifier(train, val, {**params, "epochs": 5, "select": select}, seed=3, progress=False)
        assert h["best_epoch"] == want, select
        assert h["best_val_auroc"] == scripted[want][0]
    monkeypatch.undo()
    for key, bad in (("lr_schedule", "linear"), ("select", "loss")):
        with pytest.raises(ValueError, match=f"reid.{key}"):
            train_verifier(train, val, {**params, key: bad}, seed=3, progress=False)
        with pytest.raises(ConfigError, match=f"reid.{key}"):
            reid_config({"reid": {key: bad}})
        with pytest.raises(ConfigError, match=f"reid.auditor.{key}"):
            reid_config({"reid": {"auditor": {key: bad}}})


def test_in_batch_negatives_pair_each_a_with_the_next_b_of_another_patient(monkeypatch):
    from trichotomy_lib.config import ConfigError
    from trichotomy_lib.privacy import reid_train
    from trichotomy_lib.privacy.reid_train import in_batch_pairs
    from trichotomy_lib.stages.reid import reid_config

    # a's then b's of 4 positive pairs; pairs 1 and 2 are both patient "q", so (a_1, b_2) is no negative
    i, j = in_batch_pairs(4, ["p", "q", "q", "r", "p", "q", "q", "r"])
    assert list(zip(i, j)) == [(0, 1), (2, 3), (3, 0)]
    assert len(in_batch_pairs(1, ["p", "p"])[0]) == 0
    with pytest.raises(ValueError, match="patient ids"):
        in_batch_pairs(3, ["p"] * 5)

    train, val = identity_set(20, 3, seed=0), identity_set(8, 3, seed=1, first=100)
    params = {**TINY, "epochs": 3, "batch_size": 8, "retrieval_loss": 1.0, "negatives": "in_batch"}
    pairs = sample_pairs(train.patient_ids, seed=5)
    seen = []                                  # every training batch's BCE labels
    real_bce = reid_train.F.binary_cross_entropy_with_logits
    monkeypatch.setattr(reid_train.F, "binary_cross_entropy_with_logits",
                        lambda logits, y: seen.append(y.clone()) or real_bce(logits, y))
    train_verifier(train, val, params, seed=2, pairs=pairs, progress=False)
    monkeypatch.undo()
    steps = -(-pairs.n_pos // 8)
    assert len(seen) == 3 * steps              # an epoch is the positives alone, in batches of 8 pairs
    positives = torch.cat([y[y == 1] for y in seen])
    assert len(positives) == 3 * pairs.n_pos
    negatives = sum(int((y == 0).sum()) for y in seen)
    assert 3 * pairs.n_pos - 3 * steps * 2 <= negatives <= 3 * pairs.n_pos   # about one per positive

    model, _ = train_verifier(train, val, {**params, "epochs": 5}, seed=2, progress=False)
    again, _ = train_verifier(train, val, {**params, "epochs": 5}, seed=2, progress=False)
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k
    test = identity_set(30, 3, seed=2, first=200)
    ev = evaluate_verifier(model, test, sample_pairs(test.patient_ids, seed=3), n_boot=0)
    assert ev.metrics["auroc"][0] > 0.85, ev.metrics                     # it learns identity
    with pytest.raises(ValueError, match="reid.negatives"):
        train_verifier(train, val, {**params, "negatives": "hard"}, seed=2, progress=False)
    with pytest.raises(ConfigError, match="reid.negatives"):
        reid_config({"reid": {"negatives": "hard"}})


def test_retrieval_against_target_reports_the_shortfall():
    from trichotomy_lib.analysis.reid import retrieval_against_target
    from trichotomy_lib.privacy.reid_eval import Evaluation

    def ev(value, lo, hi):
        e = Evaluation("x", None, np.zeros(1), np.zeros(1))
        e.metrics = {"precision_at_1": {"value": value, "lo": lo, "hi": hi, "n": 100}}
        return e

    table = retrieval_against_target({"defender": ev(0.90, 0.88, 0.92), "auditor": ev(0.97, 0.96, 0.98),
                                      "raw pixels": ev(0.1, 0.05, 0.15)})
    assert list(table.index) == ["defender", "auditor"]
    assert table.loc["defender", "short by (points)"] == pytest.approx(3.0)
    assert not table.loc["defender", "met"]
    assert table.loc["auditor", "short by (points)"] == 0.0 and table.loc["auditor", "met"]
    with pytest.raises(ValueError, match="target"):
        retrieval_against_target({}, target=1.5)


def test_auditor_settings_override_only_the_auditor():
    """``reid.auditor`` changes the auditor's recipe, its stage key and nothing of the defender's."""
    from trichotomy_lib import config
    from trichotomy_lib.config import ConfigError, ConfigView
    from trichotomy_lib.pipeline import Pipeline
    from trichotomy_lib.stages.reid import reid_config, role_params

    import trichotomy_lib.stages  # noqa: F401  (registers the stages and the reid section)

    base = config.validate(config.resolve("smoke"))
    wide = config.validate(config.with_settings(base, ("reid.auditor", {"width": 32, "epochs": 3})))
    assert wide["reid"]["width"] == base["reid"]["width"] != 32
    assert reid_config({"reid": wide["reid"]}) == wide["reid"]              # idempotent
    pipes = {name: Pipeline(c, verbose=False) for name, c in (("base", base), ("wide", wide))}
    for name, want_width, want_epochs in (("reid_auditor", 32, 3),
                                          ("reid_defender", base["reid"]["width"], base["reid"]["epochs"]),
                                          ("reid_defender_replicas", base["reid"]["width"], base["reid"]["epochs"])):
        role = "auditor" if name == "reid_auditor" else "defender"
        view = ConfigView(wide, pipes["wide"].stage(name).keys, name)       # what the stage itself reads
        params = role_params(view["reid"], role)
        assert (params["width"], params["epochs"]) == (want_width, want_epochs), name
        assert "auditor" not in params
        moved = pipes["wide"].key(name) != pipes["base"].key(name)
        assert moved == (role == "auditor"), name                          # only the auditor retrains
    assert role_params(wide["reid"], "defender") == role_params(base["reid"], "defender")
    for bad, field in (({"widht": 3}, "reid.auditor.widht"), ({"extra_patients": 5}, "reid.auditor.extra_patients"),
                       (3, "reid.auditor must be a mapping"), ({"retrieval_loss": -1}, "reid.auditor.retrieval_loss"),
                       ({"precision": "half"}, "reid.auditor.precision")):
        with pytest.raises(ConfigError, match=field):
            reid_config({"reid": {"auditor": bad}})
