"""Reference classifier: training, model selection, files, label consistency, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trichotomy_lib.checkpoint import load_training_state
from trichotomy_lib.config import ConfigError
from trichotomy_lib.data.imageset import LABELS, ImageSet
from trichotomy_lib.device import resolve_precision
from trichotomy_lib.evaluation.classifier import (
    classifier_config,
    TRAINING_STATE_FILE,
    Classifier,
    consistency_matrix,
    evaluate_classifier,
    fit_classifier,
    label_consistency,
    mean_bce,
    pair_consistency,
    summarize_pair_consistency,
)

TINY = {"width": 4, "depth": 2, "epochs": 2, "batch_size": 32, "eval_batch_size": 64}


def blob_set(n: int, seed: int, size: int = 16, multi: bool = False, noise: float = 25.0) -> ImageSet:
    """Class k ↔ a bright blob in cell k of a 2×4 grid (visible labels); 4 images per patient."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((n, 8), np.uint8)
    labels[np.arange(n), rng.integers(0, 8, n)] = 1
    if multi:  # some images with a second finding, as in the test split
        extra = rng.random(n) < 0.3
        labels[np.nonzero(extra)[0], rng.integers(1, 8, extra.sum())] = 1
    yy, xx = np.mgrid[:size, :size]
    images = rng.normal(100, noise, (n, size, size))
    for i in range(n):
        for k in np.nonzero(labels[i])[0]:
            cy, cx = (k // 4 + 0.5) * size / 2, (k % 4 + 0.5) * size / 4
            images[i] += 90 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 3)
    pids = np.array([f"p{i // 4:04d}" for i in range(n)])
    return ImageSet(np.clip(images, 0, 255).astype(np.uint8), labels, pids, np.array([f"img{i}" for i in range(n)]))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny networks: one thread avoids spin-waiting on a shared 2-core machine; results are
    # bit-identical for a given thread count.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data():
    return {"train": blob_set(320, 0), "val": blob_set(96, 1), "test": blob_set(160, 2, multi=True)}


@pytest.fixture(scope="module")
def tiny(data):
    return fit_classifier(data["train"], data["val"], TINY, seed=3, progress=False)


# ----------------------------------------------------------------------------- training
def test_learns_visible_labels(data):
    clf = fit_classifier(data["train"], data["val"], TINY | {"width": 8, "epochs": 10, "lr": 1e-2}, seed=0, progress=False)
    table = evaluate_classifier(clf, data["test"], n_boot=50, seed=0)
    assert list(table.index) == [*LABELS, "mean"]
    assert table.loc["mean", "auroc"] > 0.85, table  # chance is 0.5
    assert (table.loc[list(LABELS), "auroc"] > 0.8).all(), table
    assert clf.history[-1]["train_loss"] < clf.history[0]["train_loss"]


def test_best_epoch_is_min_val_loss(data):
    # Validation labels all 1 contradict what training teaches (7 of 8 findings absent), so
    # the val loss rises while the training loss falls: the returned weights must be an early
    # epoch's, not the last's — checked against the weights the callback saw after each epoch.
    val = data["val"]
    val_bad = ImageSet(val.images, np.ones_like(val.labels), val.patient_ids, val.names)
    seen = []
    precision = resolve_precision("auto", "cpu")  # the val loss is computed in the training's precision

    def callback(record, net):
        seen.append((record, {k: v.clone() for k, v in net.state_dict().items()},
                     mean_bce(net, val_bad, 64, "cpu", precision)))
        net.train()

    clf = fit_classifier(data["train"], val_bad, TINY | {"epochs": 4, "lr": 1e-2}, seed=1, callback=callback, progress=False)
    val_losses = [h["val_loss"] for h in clf.history]
    assert [r["val_loss"] for r, _, _ in seen] == val_losses
    assert np.allclose([v for _, _, v in seen], val_losses, rtol=1e-5)  # the record is the real val loss
    assert clf.best_epoch == int(np.argmin(val_losses))
    assert clf.best_epoch != len(val_losses) - 1, val_losses  # the scenario really tests selection
    best_state = seen[clf.best_epoch][1]
    for key, value in clf.net.state_dict().items():
        assert torch.equal(value, best_state[key]), key
    assert clf.info["precision"] == precision
    assert mean_bce(clf.net, val_bad, 64, "cpu", precision) == pytest.approx(min(val_losses), rel=1e-5)
    assert [h["best"] for h in clf.history] == [i == 0 or v < min(val_losses[:i]) for i, v in enumerate(val_losses)]


def test_patience_stops_early(data):
    val = data["val"]
    val_bad = ImageSet(val.images, np.ones_like(val.labels), val.patient_ids, val.names)
    clf = fit_classifier(data["train"], val_bad, TINY | {"epochs": 8, "lr": 1e-2, "patience": 1}, seed=1, progress=False)
    assert len(clf.history) == clf.best_epoch + 2 < 8


def test_cosine_schedule_reaches_zero():
    from trichotomy_lib.evaluation.classifier import classifier_config, learning_rate

    cfg = classifier_config({"lr": 1e-3})
    assert [learning_rate(cfg, s, 100) for s in (0, 50, 100)] == pytest.approx([1e-3, 5e-4, 0.0])
    const = classifier_config({"lr": 1e-3, "lr_schedule": "constant"})
    assert learning_rate(const, 99, 100) == 1e-3


def test_deterministic_given_seed(data, tiny):
    again = fit_classifier(data["train"], data["val"], TINY, seed=3, progress=False)
    other = fit_classifier(data["train"], data["val"], TINY, seed=4, progress=False)
    x = data["test"].tensor()
    assert np.array_equal(tiny.predict_proba(x), again.predict_proba(x))
    assert not np.array_equal(tiny.predict_proba(x), other.predict_proba(x))
    assert tiny.history == again.history


def test_soft_targets_replace_the_labels(data, tiny):
    """targets: the labels as floats reproduce label training exactly; a teacher's probabilities
    are what is learnt (here: targets that swap two findings teach the swap); bad targets are named."""
    train, val, x = data["train"], data["val"], data["test"].tensor()
    same = fit_classifier(train, val, TINY, seed=3, progress=False, targets=train.labels.astype(np.float32))
    assert np.array_equal(same.predict_proba(x), tiny.predict_proba(x))
    swap = [7, 1, 2, 3, 4, 5, 6, 0]  # two blobs far apart (augmentation shifts and flips the image)
    swapped_val = ImageSet(val.images, val.labels[:, swap], val.patient_ids, val.names)  # picks the epoch
    taught = fit_classifier(train, swapped_val, TINY | {"width": 8, "epochs": 10, "lr": 1e-2}, seed=0, progress=False,
                            targets=train.labels[:, swap].astype(np.float32))
    auroc = evaluate_classifier(taught, data["test"], n_boot=0, seed=0)["auroc"]
    assert auroc.iloc[0] < 0.4 and auroc.iloc[7] < 0.4 and auroc.iloc[2] > 0.8, auroc  # findings 0 and 7 swapped
    with pytest.raises(ValueError, match=r"targets must be \(320, 8\)"):
        fit_classifier(train, val, TINY, seed=0, targets=np.zeros((3, 8)))
    with pytest.raises(ValueError, match="probabilities in"):
        fit_classifier(train, val, TINY, seed=0, targets=np.full((320, 8), 1.5))


def test_resumes_from_checkpoint(data, tmp_path):
    cfg = TINY | {"epochs": 3}
    full = fit_classifier(data["train"], data["val"], cfg, seed=5, progress=False)

    class Interrupt(Exception):
        pass

    def stop_after_first(record, net):
        if record["epoch"] == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        fit_classifier(data["train"], data["val"], cfg, seed=5, checkpoint_dir=tmp_path, callback=stop_after_first, progress=False)
    assert load_training_state(tmp_path / TRAINING_STATE_FILE).meta["epoch"] == 1
    epochs_run = []
    resumed = fit_classifier(data["train"], data["val"], cfg, seed=5, checkpoint_dir=tmp_path,
                             callback=lambda r, n: epochs_run.append(r["epoch"]), progress=False)
    assert epochs_run == [2]
    assert resumed.history == full.history and resumed.best_epoch == full.best_epoch
    x = data["test"].tensor()
    assert np.array_equal(resumed.predict_proba(x), full.predict_proba(x))
    with pytest.raises(ValueError, match="different training run"):
        fit_classifier(data["train"], data["val"], cfg, seed=6, checkpoint_dir=tmp_path, progress=False)


def test_save_load_round_trip(tiny, data, tmp_path):
    tiny.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classifier.json", "classifier.safetensors"]
    loaded = Classifier.load(tmp_path)
    x = data["test"].tensor()
    p_ref = loaded.predict_proba(x)
    assert np.array_equal(tiny.predict_proba(x), p_ref)
    # ImageSet input, batching: the same numbers up to float rounding (oneDNN's fp32 convolutions on
    # AVX-512 CPUs sum in an order that depends on the batch size)
    batched = tiny.predict_proba(data["test"], batch_size=7)
    assert batched.shape == p_ref.shape and np.abs(batched - p_ref).max() < 1e-5, np.abs(batched - p_ref).max()
    assert loaded.history == tiny.history and loaded.best_epoch == tiny.best_epoch
    assert loaded.hparams["image_shape"] == [16, 16] and loaded.hparams["labels"] == list(LABELS)
    p = loaded.predict_proba(x)
    assert p.shape == (len(x), 8) and p.dtype == np.float32 and ((p > 0) & (p < 1)).all()


def test_densenet_option():
    try:
        import torchvision  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="torchvision"):
            fit_classifier(blob_set(8, 0, size=32), blob_set(4, 1, size=32), {"arch": "densenet121", "epochs": 1}, seed=0, progress=False)
        return
    from trichotomy_lib.evaluation.classifier.nets import build_densenet121

    net = build_densenet121().eval()
    assert net(torch.zeros(2, 1, 32, 32)).shape == (2, 8)


# ----------------------------------------------------------------------------- label consistency
def test_label_consistency_by_hand():
    s, c = np.full((1, 8), 0.2), np.full((1, 8), 0.7)
    expected = -(0.2 * np.log(0.7) + 0.8 * np.log(0.3))
    assert label_consistency(s, c) == pytest.approx([expected], rel=1e-12)
    # mixed classes: the mean over the 8 per-class BCEs, source as the target
    s = np.array([[0.9, 0.1, 0.5, 0.0, 1.0, 0.3, 0.6, 0.05]])
    c = np.array([[0.8, 0.2, 0.5, 0.1, 0.9, 0.3, 0.4, 0.5]])
    per_class = [-(a * np.log(b) + (1 - a) * np.log(1 - b)) for a, b in zip(s[0], c[0])]
    assert label_consistency(s, c)[0] == pytest.approx(np.mean(per_class), rel=1e-12)
    torch_bce = F.binary_cross_entropy(torch.tensor(c), torch.tensor(s), reduction="none").mean(1)
    assert label_consistency(s, c) == pytest.approx(torch_bce.numpy(), rel=1e-9)
    # identical predictions: the mean binary entropy, not 0
    p = np.array([[0.5] * 8])
    assert label_consistency(p, p)[0] == pytest.approx(np.log(2), rel=1e-12)
    assert label_consistency(np.eye(8)[:1], np.eye(8)[:1])[0] == pytest.approx(0.0, abs=1e-6)
    # confident wrong predictions are finite (clipped at eps = 1e-7)
    assert label_consistency(np.ones((1, 8)), np.zeros((1, 8)))[0] == pytest.approx(-np.log(1e-7), rel=1e-6)


def test_label_consistency_shapes_and_matrix():
    rng = np.random.default_rng(0)
    s, c = rng.random((5, 8)), rng.random((7, 8))
    m = consistency_matrix(s, c)
    assert m.shape == (5, 7)
    for i in range(5):
        assert m[i] == pytest.approx(label_consistency(s[i], c), rel=1e-10)  # (8,) vs (M, 8) broadcasts
    assert label_consistency(torch.tensor(s), torch.tensor(s)).shape == (5,)
    with pytest.raises(ValueError, match="last axis"):
        label_consistency(np.zeros((3, 7)), np.zeros((3, 7)))
    with pytest.raises(ValueError, match="probabilities"):
        label_consistency(np.full((1, 8), 2.0), np.full((1, 8), 0.5))
    with pytest.raises(ValueError, match=r"\(N, 8\)"):
        consistency_matrix(np.zeros(8), np.zeros((2, 8)))


def test_pair_consistency():
    rng = np.random.default_rng(1)
    probs = rng.random((9, 8))
    pids = np.array(list("aaabbcdde"))
    pairs = pair_consistency(probs, pids, seed=0)
    same = pairs[pairs.same_patient]
    assert len(same) == 3 * 2 + 2 * 1 + 2 * 1  # ordered pairs within a, b, d
    assert (pids[same.source] == pids[same.candidate]).all() and (same.source != same.candidate).all()
    diff = pairs[~pairs.same_patient]
    assert len(diff) == len(same) and (pids[diff.source] != pids[diff.candidate]).all()
    assert pairs.bce.to_numpy() == pytest.approx(label_consistency(probs[pairs.source], probs[pairs.candidate]))
    summary = summarize_pair_consistency(pairs)
    assert list(summary.index) == ["same patient", "different patients"]
    assert summary.loc["same patient", "mean"] == pytest.approx(same.bce.mean())
    assert summary.loc["different patients", "paper"] == 0.213
    assert len(pair_consistency(probs, pids, n_pairs=4, seed=0)) == 8
    with pytest.raises(ValueError, match="two patients"):
        pair_consistency(probs, np.array(["a"] * 9))


# ----------------------------------------------------------------------------- errors
def test_prediction_errors(tiny):
    with pytest.raises(ValueError, match=r"trained on \(16, 16\)"):
        tiny.predict_proba(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="grayscale"):
        tiny.predict_proba(torch.zeros(2, 3, 16, 16))
    with pytest.raises(ValueError, match="grayscale"):
        tiny.predict_proba(torch.zeros(2, 16, 16))
    with pytest.raises(ValueError, match="n = 0"):
        tiny.predict_proba(torch.zeros(0, 1, 16, 16))
    with pytest.raises(ValueError, match="dtype"):
        tiny.predict_proba(torch.zeros(2, 1, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        tiny.predict_proba(torch.full((2, 1, 16, 16), 255.0))
    with pytest.raises(TypeError, match="ImageSet"):
        tiny.predict_proba(np.zeros((2, 1, 16, 16), np.float32))
    with pytest.raises(ValueError, match=r"trained on \(16, 16\)"):
        tiny.predict_proba(blob_set(4, 0, size=32))
    with pytest.raises(ValueError, match=r"probs must be"):
        evaluate_classifier(tiny, blob_set(8, 0), probs=np.zeros((8, 7)))


def test_training_errors(data):
    train, val = data["train"], data["val"]
    with pytest.raises(ValueError, match="train_set is empty"):
        fit_classifier(train.subset(np.array([], int)), val, TINY, seed=0)
    with pytest.raises(ValueError, match="val_set is empty"):
        fit_classifier(train, val.subset(np.array([], int)), TINY, seed=0)
    with pytest.raises(ValueError, match="val_set images are"):
        fit_classifier(train, blob_set(8, 0, size=32), TINY, seed=0)
    bad = ImageSet(train.images, train.labels * 2, train.patient_ids, train.names)
    with pytest.raises(ValueError, match="labels must be 0/1"):
        fit_classifier(bad, val, TINY, seed=0)
    with pytest.raises(ValueError, match=r"labels must be \(4, 8\)"):
        ImageSet(train.images[:4], train.labels[:4, :7], train.patient_ids[:4], train.names[:4])
    with pytest.raises(ConfigError, match="classifier.widht"):
        fit_classifier(train, val, {"widht": 8}, seed=0)
    with pytest.raises(ConfigError, match="classifier.arch"):
        fit_classifier(train, val, {"arch": "resnet"}, seed=0)
    with pytest.raises(ConfigError, match="lr_schedule"):
        fit_classifier(train, val, {"lr_schedule": "step"}, seed=0)
    with pytest.raises(ConfigError, match="augment"):
        fit_classifier(train, val, {"augment": {"flip": True}}, seed=0)
    with pytest.raises(ConfigError, match="classifier.augment.noise"):
        fit_classifier(train, val, {"augment": {"noise": -0.1}}, seed=0)
    with pytest.raises(ValueError, match="depth"):
        fit_classifier(train, val, TINY | {"depth": 5}, seed=0)
    with pytest.raises(TypeError, match="ImageSet"):
        fit_classifier(train.images, val, TINY, seed=0)
    with pytest.raises(FileNotFoundError, match="classifier.json"):
        Classifier.load("/nonexistent-dir")


# ----------------------------------------------------------------------------- stage
def test_stage_trains_on_real_splits_and_caches(data, tmp_path):
    from trichotomy_lib.io import atomic_write_json
    from trichotomy_lib.pipeline import Pipeline
    from trichotomy_lib.stages.classifier import load_classifier, load_test_probs

    cfg = {"profile": "t", "seed": 3, "run_root": str(tmp_path), "data": {}, "data_root": None, "classifier": TINY}
    pipe = Pipeline(cfg, run_dir=tmp_path, verbose=False)
    data_dir = pipe.path("data")  # a finished data artifact, written by hand
    for name in ("train", "val", "test"):
        data[name].save(data_dir / name)
    atomic_write_json(data_dir / "config.json", {"stage": "data"})

    clf = load_classifier(pipe)
    out = pipe.path("classifier")
    assert sorted(p.name for p in out.iterdir()) == ["classifier.json", "classifier.safetensors", "config.json", "test_probs.npy"]
    direct = fit_classifier(data["train"], data["val"], TINY, seed=3, progress=False)  # the stage is this call
    assert np.array_equal(load_test_probs(pipe), direct.predict_proba(data["test"]))
    assert np.array_equal(clf.predict_proba(data["test"]), load_test_probs(pipe))
    assert pipe.params("classifier") == {"seed": 3, "classifier": classifier_config(TINY)}  # resolved: defaults filled in
    other = Pipeline(cfg | {"reid": {"lr": 0.5}}, run_dir=tmp_path, verbose=False)
    assert other.path("classifier") == out  # unrelated sections do not invalidate it


def test_augment_noise_adds_pixel_noise_and_leaves_the_other_draws_alone():
    from trichotomy_lib.evaluation.classifier import CLASSIFIER_DEFAULTS
    from trichotomy_lib.evaluation.classifier.training import augment

    x = torch.rand(6, 1, 16, 16) * 2 - 1
    off = dict(CLASSIFIER_DEFAULTS["augment"])
    base = augment(x, torch.Generator().manual_seed(3), off)
    assert torch.equal(base, augment(x, torch.Generator().manual_seed(3), {k: v for k, v in off.items() if k != "noise"}))
    noisy = augment(x, torch.Generator().manual_seed(3), off | {"noise": 0.2})
    residual = noisy - base                      # the same affine and intensity draws, plus N(0, 0.2²) per pixel
    assert residual.std().item() == pytest.approx(0.2, rel=0.15)
    assert abs(residual.mean().item()) < 0.05
