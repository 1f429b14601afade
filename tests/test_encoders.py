"""Pseudo-conditioning encoder (DESIGN step 4): normalisation, SimCLR parts, storage, backbone loading."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from trichotomy_lib.data.imageset import N_LABELS, ImageSet
from trichotomy_lib.encoders import Encoder, load_encoder_dir, normalize_embeddings, save_encoder
from trichotomy_lib.encoders import analysis
from trichotomy_lib.evaluation.retrieval import precision_at_1
from trichotomy_lib.encoders.backbone import backbone_encoder, load_weights, torchvision_encoder
from trichotomy_lib.encoders.ssl import SSLNet, augment, nt_xent, train_ssl
from trichotomy_lib.encoders.store import Checkpoint

TINY = {"dim": 16, "channels": [8, 16], "proj_dim": 8, "batch_size": 16, "steps": 4, "lr": 3e-3, "checkpoint_every": 0}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest single-threaded (and the machine is shared); restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def synthetic_images(n_patients: int = 8, scans: int = 3, size: int = 16, seed: int = 0) -> ImageSet:
    """Per-patient random smooth pattern, each scan shifted by up to a pixel and noised."""
    rng = np.random.default_rng(seed)
    images, pids = [], []
    for p in range(n_patients):
        base = rng.normal(size=(size // 4, size // 4)).repeat(4, 0).repeat(4, 1)
        for _ in range(scans):
            img = np.roll(base, rng.integers(-1, 2, size=2), axis=(0, 1)) + 0.2 * rng.normal(size=(size, size))
            images.append(np.clip(127.5 + 50 * img, 0, 255).astype(np.uint8))
            pids.append(f"p{p:03d}")
    n = len(images)
    labels = np.zeros((n, N_LABELS), np.uint8)
    labels[np.arange(n), rng.integers(0, N_LABELS, n)] = 1
    return ImageSet(np.stack(images), labels, np.array(pids), np.array([f"img{i}" for i in range(n)]))


# ----------------------------------------------------------------------------- normalisation
def test_normalize_embeddings_exact_norm_and_direction():
    x = torch.randn(50, 37, dtype=torch.float64) * torch.logspace(-3, 3, 50, dtype=torch.float64)[:, None]
    e = normalize_embeddings(x)
    assert torch.allclose(e.norm(dim=1), torch.full((50,), math.sqrt(37), dtype=torch.float64), rtol=0, atol=1e-12)
    assert torch.allclose(torch.nn.functional.cosine_similarity(e, x), torch.ones(50, dtype=torch.float64))
    with pytest.raises(ValueError, match="exactly zero"):
        normalize_embeddings(torch.cat([x[:2], torch.zeros(1, 37, dtype=torch.float64)]))
    with pytest.raises(ValueError, match=r"\(n, D\)"):
        normalize_embeddings(torch.ones(3))


def test_encoder_embed_norms_batch_independent_and_input_checks():
    torch.manual_seed(0)
    enc = Encoder(SSLNet(16, [8, 16], dim=12, proj_dim=4), 12, 16, {"kind": "ssl"}, device="cpu")
    x = synthetic_images().tensor()
    e_all = enc.embed(x, batch_size=1000)
    assert e_all.shape == (len(x), 12) and e_all.dtype == torch.float32
    assert torch.allclose(e_all.norm(dim=1), torch.full((len(x),), math.sqrt(12)), atol=1e-5)
    assert torch.allclose(enc.embed(x, batch_size=5), e_all, atol=1e-6)  # no batch statistics
    with pytest.raises(ValueError, match=r"\(n, 1, H, W\)"):
        enc.embed(x[:, 0])
    with pytest.raises(ValueError, match="dtype"):
        enc.embed(torch.zeros(2, 1, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        enc.embed(x * 255)
    with pytest.raises(ValueError, match="16x16"):
        enc.embed(torch.zeros(2, 1, 32, 32))
    with pytest.raises(TypeError, match="torch.Tensor"):
        enc.embed(x.numpy())


# ----------------------------------------------------------------------------- views
def test_augment_keeps_shape_range_and_laterality():
    x = synthetic_images(size=32).tensor()
    g = torch.Generator().manual_seed(0)
    v = augment(x, g)
    assert v.shape == x.shape and v.dtype == x.dtype
    assert float(v.min()) >= -1 and float(v.max()) <= 1
    assert not torch.allclose(v, x, atol=1e-2)
    assert torch.equal(augment(x, torch.Generator().manual_seed(3)), augment(x, torch.Generator().manual_seed(3)))
    # zero magnitudes: the identity
    zero = {k: 0.0 for k in ("shift", "rotate", "scale", "brightness", "contrast", "gamma", "noise", "collimate")}
    assert torch.allclose(augment(x, g, zero), x, atol=1e-5)
    # no flips: a bright block on the image's right stays on the right in every view
    block = -torch.ones(64, 1, 32, 32)
    block[..., 10:22, 22:30] = 1.0
    brightest_column = augment(block, g).mean(dim=(1, 2)).argmax(dim=1)
    assert bool((brightest_column >= 18).all()), brightest_column
    with pytest.raises(ValueError, match="encoder.augment"):
        augment(x, g, {"flip": 0.5})


# ----------------------------------------------------------------------------- loss
def test_nt_xent_hand_computed_case():
    # identical views of n orthonormal vectors: positive logit 1/τ, 2(n-1) negatives at 0,
    # so every anchor's loss is log(1 + 2(n-1) e^{-1/τ}).
    n, tau = 4, 0.5
    z = torch.eye(n) * 3.0
    expected = math.log(1 + 2 * (n - 1) * math.exp(-1 / tau))
    assert float(nt_xent(z, z.clone(), tau)) == pytest.approx(expected, rel=1e-6)


def test_nt_xent_matches_loop_reference():
    torch.manual_seed(1)
    z1, z2, tau = torch.randn(5, 7, dtype=torch.float64), torch.randn(5, 7, dtype=torch.float64), 0.3
    z = torch.cat([z1, z2])
    z = z / z.norm(dim=1, keepdim=True)
    total = 0.0
    for i in range(10):
        j = (i + 5) % 10
        denom = sum(math.exp(float(z[i] @ z[k]) / tau) for k in range(10) if k != i)
        total += -math.log(math.exp(float(z[i] @ z[j]) / tau) / denom)
    assert float(nt_xent(z1, z2, tau)) == pytest.approx(total / 10, rel=1e-9)
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(z1, z2, 0.0)
    with pytest.raises(ValueError, match="n >= 2"):
        nt_xent(z1[:1], z2[:1], tau)


# ----------------------------------------------------------------------------- training
def test_training_is_deterministic_and_seed_dependent():
    x = synthetic_images().tensor()
    a, la = train_ssl(x, TINY, seed=7, device="cpu", progress=False)
    b, lb = train_ssl(x, TINY, seed=7, device="cpu", progress=False)
    c, _ = train_ssl(x, TINY, seed=8, device="cpu", progress=False)
    assert la == lb
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_training_reduces_the_loss():
    x = synthetic_images(n_patients=16, scans=2).tensor()
    _, losses = train_ssl(x, {**TINY, "steps": 40, "batch_size": 32}, seed=0, device="cpu", progress=False)
    assert np.mean(losses[-10:]) < np.mean(losses[:5]) - 0.3


def test_checkpoint_resume_is_bit_identical(tmp_path):
    x = synthetic_images().tensor()
    hp = {**TINY, "steps": 6, "checkpoint_every": 3}
    straight, l_straight = train_ssl(x, hp, seed=1, device="cpu", progress=False)
    ckpt = Checkpoint(tmp_path / "ckpt.safetensors")
    train_ssl(x, {**hp, "steps": 6}, seed=1, device="cpu", checkpoint=ckpt, progress=False)
    assert ckpt.exists()  # saved at step 3
    resumed, l_resumed = train_ssl(x, hp, seed=1, device="cpu", checkpoint=ckpt, progress=False)
    assert l_resumed == l_straight
    s1, s2 = straight.state_dict(), resumed.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)


def test_training_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 2"):
        train_ssl(torch.zeros(1, 1, 16, 16), TINY, seed=0, device="cpu", progress=False)
    with pytest.raises(ValueError, match="dtype"):
        train_ssl(torch.zeros(4, 1, 16, 16, dtype=torch.uint8), TINY, seed=0, device="cpu", progress=False)
    with pytest.raises(ValueError, match="too small"):
        SSLNet(16, [8, 16, 32, 64])


# ----------------------------------------------------------------------------- storage
def test_save_load_round_trip_identical_embeddings(tmp_path):
    x = synthetic_images().tensor()
    net, _ = train_ssl(x, TINY, seed=0, device="cpu", progress=False)
    enc = Encoder(net, TINY["dim"], 16, {"kind": "ssl", "hyperparameters": {**TINY}}, device="cpu")
    save_encoder(enc, tmp_path / "enc")
    back = load_encoder_dir(tmp_path / "enc", device="cpu")
    assert torch.equal(back.embed(x), enc.embed(x))
    assert back.dim == 16 and back.image_size == 16
    (tmp_path / "enc" / "encoder.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="encoder.safetensors"):
        load_encoder_dir(tmp_path / "enc")
    with pytest.raises(FileNotFoundError, match="encoder.json"):
        load_encoder_dir(tmp_path / "nowhere")


# ----------------------------------------------------------------------------- backbone option
class TinyClassifier(nn.Module):
    """Stands in for a torchvision classifier: body → pooled feature (6-d) → ``fc`` head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 10)

    def forward(self, x):
        return self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))


def test_backbone_loads_local_safetensors_and_gives_penultimate_features(tmp_path):
    torch.manual_seed(0)
    source = TinyClassifier()
    path = tmp_path / "tiny.safetensors"
    save_file(source.state_dict(), str(path))
    enc = backbone_encoder(TinyClassifier(), path, head="fc", dim=6, input_size=20, device="cpu")
    assert enc.info["ignored_keys"] == ["fc.bias", "fc.weight"] and enc.info["kind"] == "backbone"
    x = synthetic_images().tensor()
    # reference: the source network's pooled feature on the same preprocessing (3 channels, resize, ImageNet norm)
    rgb = ((x + 1) / 2).expand(-1, 3, -1, -1)
    rgb = torch.nn.functional.interpolate(rgb, size=(20, 20), mode="bilinear", align_corners=False, antialias=True)
    rgb = (rgb - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = source.pool(torch.relu(source.conv(rgb))).flatten(1)
    assert torch.allclose(enc.embed(x), normalize_embeddings(ref), atol=1e-5)
    # the hash pins the file
    with pytest.raises(ValueError, match="changed"):
        backbone_encoder(TinyClassifier(), path, "fc", 6, 20, expected_sha256="0" * 64)


def test_backbone_loader_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        backbone_encoder(TinyClassifier(), missing, "fc", 6, 20)
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        torchvision_encoder("resnet50", missing)  # reported before torchvision is needed
    with pytest.raises(ValueError, match="unknown backbone"):
        torchvision_encoder("vgg_from_mars", missing)
    pickle_like = tmp_path / "model.pt"
    pickle_like.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="model.pt.*safetensors"):
        backbone_encoder(TinyClassifier(), pickle_like, "fc", 6, 20)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt.safetensors"):
        load_weights(TinyClassifier(), corrupt)
    wrong = tmp_path / "wrong.safetensors"
    state = TinyClassifier().state_dict()
    state["conv.weight"] = torch.zeros(6, 1, 3, 3)  # a 1-channel stem
    del state["conv.bias"]
    save_file(state, str(wrong))
    with pytest.raises(ValueError, match=r"wrong.safetensors.*missing key.*conv.bias.*shape mismatch"):
        backbone_encoder(TinyClassifier(), wrong, "fc", 6, 20)
    with pytest.raises(ValueError, match="no classifier module 'head'"):
        backbone_encoder(TinyClassifier(), wrong, "head", 6, 20)


# ----------------------------------------------------------------------------- analysis
def test_identity_precision_and_neighbours():
    pids = np.array(["a", "a", "b", "b", "c"])
    feats = np.array([[0.0, 0], [0.1, 0], [5, 5], [5, 5.1], [0.05, 0.3]])
    r = precision_at_1(feats, pids)
    assert r["n"] == 4 and r["value"] == 1.0 and r["chance"] == pytest.approx(0.25)
    dup = np.zeros((4, 2))  # exact duplicates: a row is still never its own neighbour
    _, idx = analysis.nearest_others(dup, k=3)
    assert all(i not in row for i, row in enumerate(idx))
    swapped = feats[[0, 2, 1, 3, 4]]  # neighbours now cross patients
    assert precision_at_1(swapped, pids)["value"] == 0.0


def test_linear_probe_separable_features_give_auroc_one():
    rng = np.random.default_rng(0)
    y = np.zeros((80, N_LABELS), np.uint8)
    y[np.arange(80), np.arange(80) % N_LABELS] = 1
    x = y.astype(np.float32) * 3 + 0.1 * rng.normal(size=y.shape)
    table = analysis.linear_probe(x[:40], y[:40], x[40:], y[40:])
    assert table.loc["mean", "auroc"] == pytest.approx(1.0)
    shuffled = analysis.linear_probe(x[:40], y[:40], x[40:][rng.permutation(40)], y[40:])
    assert shuffled.loc["mean", "auroc"] < 0.8


# ----------------------------------------------------------------------------- stage
def test_encoder_stage_writes_loadable_embeddings(tmp_path, monkeypatch):
    from trichotomy_lib import pipeline
    from trichotomy_lib.config import ConfigError
    from trichotomy_lib.stages import encoder as enc_stage

    def fake_data(ctx):  # synthetic splits instead of PhantomCXR: this test is about the encoder
        for i, name in enumerate(("train", "val", "test")):
            synthetic_images(n_patients=6, scans=2, seed=i).save(ctx.out / name)

    import trichotomy_lib.stages  # noqa: F401  (registers the real stages)
    monkeypatch.setitem(pipeline.STAGES, "data", pipeline.Stage("data", fake_data, ("seed", "data")))
    cfg = {"profile": "t", "seed": 3, "run_root": str(tmp_path), "data": {}, "encoder": {**TINY, "steps": 3}}
    pipe = pipeline.Pipeline(cfg, run_dir=tmp_path, verbose=False)
    train = enc_stage.load_splits(pipe)["train"]
    e = enc_stage.load_embeddings(pipe, "train")
    assert e.dtype == np.float32 and e.shape == (len(train), 16)
    assert np.allclose(np.linalg.norm(e, axis=1), 4.0, atol=1e-5)
    assert enc_stage.load_embeddings(pipe, "test").shape == (12, 16)
    assert np.allclose(enc_stage.load_encoder(pipe, device="cpu").embed(train.tensor()).numpy(), e, atol=1e-5)
    assert len(enc_stage.load_train_log(pipe)["loss"]) == 3
    assert not (pipe.path("encoder") / "checkpoint.safetensors").exists()
    # a parameter the stage does not read leaves it cached; one it reads does not
    other = pipeline.Pipeline({**cfg, "reid": {"lr": 0.5}}, run_dir=tmp_path, verbose=False)
    assert other.is_cached("encoder")
    assert not pipeline.Pipeline({**cfg, "encoder": {**TINY, "steps": 4}}, run_dir=tmp_path).is_cached("encoder")
    with pytest.raises(ValueError, match="split must be one of"):
        enc_stage.load_embeddings(pipe, "training")
    with pytest.raises(ConfigError, match="encoder.stepz"):
        enc_stage.encoder_config({"encoder": {"stepz": 3}})
    with pytest.raises(ValueError, match="encoder.weights is set"):
        enc_stage.encoder_config({"encoder": {"weights": "w.safetensors"}})


def test_attacker_encoder_trains_only_on_the_public_patients(tmp_path, monkeypatch):
    """The attacker's encoder: the conditioning encoder's recipe on the auditor's public
    population, with its own seed — none of the patients it trains on is audited."""
    from trichotomy_lib import pipeline
    from trichotomy_lib.stages import encoder as enc_stage

    def fake_data(ctx):
        for i, name in enumerate(("train", "val", "test")):
            synthetic_images(n_patients=6, scans=2, seed=i).save(ctx.out / name)

    def fake_populations(ctx):  # the auditor's population: other patients (ids "q…"), other images
        public = synthetic_images(n_patients=5, scans=2, seed=9)
        ImageSet(public.images, public.labels, np.char.replace(public.patient_ids, "p", "q"),
                 np.char.replace(public.names, "p", "q")).save(ctx.out / "auditor")

    import trichotomy_lib.stages  # noqa: F401
    monkeypatch.setitem(pipeline.STAGES, "data", pipeline.Stage("data", fake_data, ("seed", "data")))
    monkeypatch.setitem(pipeline.STAGES, "control_population",
                        pipeline.Stage("control_population", fake_populations, ("seed",), deps=("data",)))
    cfg = {"profile": "t", "seed": 3, "run_root": str(tmp_path), "data": {}, "encoder": {**TINY, "steps": 3}}
    pipe = pipeline.Pipeline(cfg, run_dir=tmp_path, verbose=False)
    attacker, own = enc_stage.load_attacker_encoder(pipe, device="cpu"), enc_stage.load_encoder(pipe, device="cpu")
    assert set(enc_stage.attacker_encoder_patients(pipe)) == {f"q{p:03d}" for p in range(5)}
    assert attacker.info["n_train_images"] == 10 and own.info["n_train_images"] == 12
    assert attacker.info["seed"] != own.info["seed"]
    x = enc_stage.load_splits(pipe)["train"].tensor()
    assert not np.allclose(attacker.embed(x).numpy(), own.embed(x).numpy(), atol=1e-3)  # a different network
    assert pipe.is_cached("attacker_encoder")
    assert not pipeline.Pipeline({**cfg, "encoder": {**TINY, "steps": 4}}, run_dir=tmp_path).is_cached("attacker_encoder")
    # a findings head on the conditioning encoder leaves the attacker's recipe SimCLR alone
    told = pipeline.Pipeline({**cfg, "encoder": {**TINY, "steps": 3, "label_weight": 1.0}}, run_dir=tmp_path,
                             verbose=False)
    own_told, attacker_told = enc_stage.load_encoder(told, device="cpu"), enc_stage.load_attacker_encoder(told, device="cpu")
    assert own_told.net.n_labels == 8 and own_told.info["hyperparameters"]["n_labels"] == 8
    assert attacker_told.net.n_labels == 0 and attacker_told.info["hyperparameters"]["label_weight"] == 0.0
    assert torch.equal(attacker_told.embed(x), attacker.embed(x))  # the same network as without the head


# ----------------------------------------------------------------------------- findings head (eq. 3)
def spotted_images(n_patients: int = 24, scans: int = 4, size: int = 16, seed: int = 0) -> ImageSet:
    """``synthetic_images``' strong per-patient patterns, plus a small bright spot (label 0) on a random
    half of the scans, independent of the patient: identity dominates, the finding is small."""
    base = synthetic_images(n_patients, scans, size, seed)
    rng = np.random.default_rng(seed + 1)
    y = (rng.random(len(base)) < 0.5).astype(np.uint8)
    images = base.images.astype(np.int16)
    images[y == 1, 6:10, 6:10] += 60
    labels = np.zeros_like(base.labels)
    labels[:, 0] = y
    return ImageSet(np.clip(images, 0, 255).astype(np.uint8), labels, base.patient_ids, base.names)


def test_findings_head_makes_the_finding_a_large_direction_of_the_embedding(tmp_path):
    data = spotted_images()
    x, y = data.tensor(), data.labels[:, 0].astype(bool)
    hp = {**TINY, "steps": 100, "batch_size": 32, "lr": 1e-2}

    def separation(net):  # the finding's class-mean gap in e, against the within-class spread (Fisher ratio)
        e = Encoder(net, TINY["dim"], 16, {}, device="cpu").embed(x).numpy()
        gap = e[y].mean(0) - e[~y].mean(0)
        spread = np.concatenate([e[y] - e[y].mean(0), e[~y] - e[~y].mean(0)]).var(0).sum()
        return float(gap @ gap / spread)

    plain, _ = train_ssl(x, hp, seed=3, device="cpu", progress=False, labels=data.labels)  # λ = 0: labels unused
    alone, _ = train_ssl(x, hp, seed=3, device="cpu", progress=False)
    assert plain.findings is None and plain.n_labels == 0
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), alone.state_dict().values()))
    told, losses = train_ssl(x, {**hp, "label_weight": 4.0}, seed=3, device="cpu", progress=False, labels=data.labels)
    assert told.n_labels == N_LABELS
    assert separation(told) > 1.3 * separation(plain)  # 0.66 against 0.41 when written
    # the head reads the finding from the saved encoder's own embeddings, and it survives a round trip
    enc = Encoder(told, TINY["dim"], 16, {"kind": "ssl", "hyperparameters": {**hp, "n_labels": told.n_labels}}, device="cpu")
    save_encoder(enc, tmp_path / "enc")
    back = load_encoder_dir(tmp_path / "enc", device="cpu")
    assert torch.equal(back.embed(x), enc.embed(x))
    with torch.no_grad():
        logits = back.net.findings(back.embed(x))[:, 0].numpy()
    assert logits[y].mean() > logits[~y].mean() + 1.0


def test_findings_head_rejects_bad_labels():
    x = synthetic_images().tensor()
    hp = {**TINY, "label_weight": 1.0}
    with pytest.raises(ValueError, match="needs the images' labels"):
        train_ssl(x, hp, seed=0, device="cpu", progress=False)
    with pytest.raises(ValueError, match=r"labels must be \(N=24"):
        train_ssl(x, hp, seed=0, device="cpu", progress=False, labels=np.zeros((5, 8)))
    with pytest.raises(ValueError, match="0/1"):
        train_ssl(x, hp, seed=0, device="cpu", progress=False, labels=np.full((24, 8), 0.5))
    with pytest.raises(ValueError, match="label_weight must be a number >= 0"):
        train_ssl(x, {**TINY, "label_weight": -1}, seed=0, device="cpu", progress=False)
