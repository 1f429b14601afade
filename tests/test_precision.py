"""Training precision and memory layout (``device.resolve_precision``, ``autocast``, ``channels_last``)
and their use in the classifier's and the verifier's training loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trichotomy_lib import device as device_mod
from trichotomy_lib.checkpoint import save_weights
from trichotomy_lib.config import ConfigError
from trichotomy_lib.data.phantom import generate_phantom
from trichotomy_lib.evaluation.classifier import classifier_config, fit_classifier
from trichotomy_lib.evaluation.classifier.nets import SmallCNN
from trichotomy_lib.privacy.reid_train import train_verifier
from trichotomy_lib.stages.reid import reid_config

from test_classifier import blob_set

TINY = {"width": 4, "depth": 2, "epochs": 2, "batch_size": 32, "eval_batch_size": 64}


@pytest.fixture()
def flags(monkeypatch):
    """Set the CPU flags ``native_bf16`` reads."""
    def set_flags(*names):
        monkeypatch.setattr(device_mod, "_cpu_flags", lambda: frozenset(names))
    return set_flags


def test_auto_is_bf16_exactly_where_the_cpu_has_it(flags):
    flags("avx512f", "avx512_bf16")
    assert device_mod.native_bf16("cpu") and device_mod.resolve_precision("auto", "cpu") == "bf16"
    flags("amx_bf16")
    assert device_mod.resolve_precision("auto", "cpu") == "bf16"
    flags("avx2", "avx512f")
    assert not device_mod.native_bf16("cpu") and device_mod.resolve_precision("auto", "cpu") == "fp32"
    assert device_mod.resolve_precision("bf16", "cpu") == "bf16"  # asked for explicitly: emulated, but honoured
    assert device_mod.resolve_precision("fp32", "cpu") == "fp32"
    with pytest.raises(ValueError, match=r"reid\.precision='fp16'"):
        device_mod.resolve_precision("fp16", "cpu", "reid.precision")


def test_autocast_runs_convolutions_in_bf16_only_when_asked():
    conv = torch.nn.Conv2d(1, 4, 3)
    x = torch.randn(2, 1, 8, 8)
    with device_mod.autocast("cpu", "bf16"):
        assert conv(x).dtype == torch.bfloat16
    with device_mod.autocast("cpu", "fp32"):
        assert conv(x).dtype == torch.float32
    with pytest.raises(ValueError, match="resolved"):
        device_mod.autocast("cpu", "auto")


def test_channels_last_changes_the_layout_not_the_values(tmp_path):
    torch.manual_seed(0)
    net = SmallCNN(8, 2).eval()
    x = torch.randn(5, 1, 16, 16)
    with torch.no_grad():
        before = net(x)
        assert device_mod.channels_last(net) is net
        after = net(x)
    conv = net.features[3]  # 8 → 8 channels (a 1-channel weight is both layouts at once)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)
    save_weights(tmp_path / "w.safetensors", net.state_dict())  # refused by safetensors unless made contiguous
    from safetensors.torch import load_file

    fresh = SmallCNN(8, 2).eval()
    fresh.load_state_dict(load_file(str(tmp_path / "w.safetensors")))
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), after, rtol=1e-5, atol=1e-6)


def test_classifier_precision_is_checked_recorded_and_used():
    with pytest.raises(ConfigError, match=r"classifier\.precision='fp16'"):
        classifier_config({"precision": "fp16"})
    train, val = blob_set(160, 1), blob_set(64, 2)
    fp32 = fit_classifier(train, val, TINY | {"precision": "fp32"}, seed=3, progress=False)
    bf16 = fit_classifier(train, val, TINY | {"precision": "bf16"}, seed=3, progress=False)
    again = fit_classifier(train, val, TINY | {"precision": "bf16"}, seed=3, progress=False)
    assert fp32.info["precision"] == "fp32" and bf16.info["precision"] == "bf16"
    x = val.tensor()
    assert np.array_equal(bf16.predict_proba(x), again.predict_proba(x))  # deterministic in bf16 too
    assert not np.array_equal(bf16.predict_proba(x), fp32.predict_proba(x))  # the step really ran in bf16
    for clf in (fp32, bf16):  # both learn the same task
        assert clf.history[-1]["train_loss"] < clf.history[0]["train_loss"]
    auto = fit_classifier(train, val, TINY | {"epochs": 1}, seed=3, progress=False)
    assert auto.info["precision"] == device_mod.resolve_precision("auto", auto.device)


def test_verifier_precision_is_recorded_and_used():
    train = generate_phantom(24, image_size=32, seed=0)
    val = generate_phantom(8, image_size=32, seed=0, first_patient=24)
    params = {"width": 8, "epochs": 1, "patience": None, "max_pos_per_patient": 6}
    runs = {p: train_verifier(train, val, params | {"precision": p}, seed=1, progress=False) for p in ("fp32", "bf16")}
    assert {p: h["precision"] for p, (_, h) in runs.items()} == {"fp32": "fp32", "bf16": "bf16"}
    emb = {p: m.embed(val.tensor()) for p, (m, _) in runs.items()}
    assert emb["fp32"].dtype == emb["bf16"].dtype == torch.float32  # embeddings are computed in fp32
    assert not torch.equal(emb["fp32"], emb["bf16"])
    with pytest.raises(ConfigError, match=r"reid\.precision='half'"):
        reid_config({"reid": {"precision": "half"}})
    with pytest.raises(ValueError, match=r"reid\.precision"):
        train_verifier(train, val, params | {"precision": "half"}, seed=1, progress=False)
