"""Training-state checkpoints: exact round trip, atomic writes, clear errors, no pickle."""

from __future__ import annotations

import io
import math
import tokenize
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import trichotomy_lib
from trichotomy_lib import checkpoint
from trichotomy_lib.checkpoint import (CheckpointError, load_training_state, remove_training_state,
                                       save_training_state)


def make_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def train_steps(net, opt, gen, n: int) -> None:
    net.train()
    for _ in range(n):
        x, y = torch.randn(16, 6, generator=gen), torch.randn(16, 3, generator=gen)
        loss = nn.functional.mse_loss(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def assert_same(a, b, where="state"):
    """Nested equality that also checks types (tuple stays tuple) and tensors bit for bit."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{where}: keys {list(a)} != {list(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}/{i}")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), where
    else:
        assert a == b, where


def test_resume_continues_bit_for_bit(tmp_path):
    net = make_net(0)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2, betas=(0.8, 0.95), weight_decay=1e-4)
    gen = torch.Generator().manual_seed(7)
    train_steps(net, opt, gen, 3)
    path = save_training_state(tmp_path / "state.safetensors", modules={"net": net}, optimizers={"adam": opt},
                               generators={"data": gen}, meta={"step": 3})
    train_steps(net, opt, gen, 2)  # the uninterrupted run

    net2 = make_net(1)  # a fresh process: other init, fresh optimizer and generator
    opt2 = torch.optim.Adam(net2.parameters(), lr=1e-2, betas=(0.8, 0.95), weight_decay=1e-4)
    gen2 = torch.Generator().manual_seed(99)
    state = load_training_state(path, modules={"net": net2}, optimizers={"adam": opt2}, generators={"data": gen2})
    assert state.meta == {"step": 3}
    assert_same(opt2.state_dict()["param_groups"], state.optimizer_state("adam")["param_groups"])
    assert float(opt2.state_dict()["state"][0]["step"]) == 3.0  # the step counter came back
    train_steps(net2, opt2, gen2, 2)

    assert_same(net.state_dict(), net2.state_dict(), "net")
    assert_same(opt.state_dict(), opt2.state_dict(), "optimizer")
    assert torch.equal(gen.get_state(), gen2.get_state())


def test_optimizer_state_with_several_param_groups_round_trips_exactly(tmp_path):
    net = make_net(0)

    def groups():
        return [{"params": net[0].parameters(), "lr": 1e-3},
                {"params": net[3].parameters(), "lr": 5e-3, "betas": (0.5, 0.6)},
                {"params": net[1].parameters(), "weight_decay": 0.1}]

    for opt in (torch.optim.AdamW(groups(), amsgrad=True), torch.optim.SGD(groups(), lr=0.1, momentum=0.9)):
        train_steps(net, opt, torch.Generator().manual_seed(0), 2)
        save_training_state(tmp_path / "s.safetensors", optimizers={"opt": opt})
        assert_same(load_training_state(tmp_path / "s.safetensors").optimizer_state("opt"), opt.state_dict())


def test_state_dicts_meta_and_global_rng_round_trip(tmp_path):
    net = make_net(0)
    best = {k: v.clone() + 1 for k, v in net.state_dict().items()}
    meta = {"history": [{"epoch": 0, "loss": 0.1 + 0.2, "best": True}], "best": -math.inf, "nan": float("nan"),
            "shape": (3, 4), 7: "int key", "stats": {"mean": torch.arange(3.0)}, "none": None,
            "big": 2**62, "text": "résumé"}
    torch.manual_seed(5)
    path = save_training_state(tmp_path / "s.safetensors", modules={"best": best},
                               generators={"torch_global": torch.default_generator}, meta=meta)
    expected = torch.rand(4)
    torch.manual_seed(0)
    state = load_training_state(path, generators={"torch_global": torch.default_generator})
    assert torch.equal(torch.rand(4), expected)
    assert_same(state.meta, meta, "meta")
    assert_same(state.state_dict("best"), best, "best")
    assert state.names("modules") == ["best"] and state.has("generators", "torch_global")
    assert not state.has("modules", "net")


def test_failed_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    net = make_net(0)
    path = save_training_state(tmp_path / "s.safetensors", modules={"net": net}, meta={"epoch": 1})
    before = path.read_bytes()

    def crash_mid_write(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", crash_mid_write)
    with pytest.raises(OSError, match="disk full"):
        save_training_state(path, modules={"net": make_net(1)}, meta={"epoch": 2})
    monkeypatch.undo()
    with pytest.raises(TypeError, match="meta/bad"):  # not storable: nothing is written
        save_training_state(path, meta={"bad": object()})

    assert path.read_bytes() == before
    assert load_training_state(path, modules={"net": make_net(2)}).meta == {"epoch": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.safetensors"]  # no temporary files left


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    weights = tmp_path / "classifier.safetensors"
    save_file({"w": torch.zeros(2)}, str(weights))  # a final-model file, not a training state
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other), metadata={"format": checkpoint.FORMAT, "version": "999"})
    for path, why in ((junk, "not a safetensors file"), (weights, "format tag None"), (other, "version '999'")):
        with pytest.raises(CheckpointError, match=why) as err:
            load_training_state(path)
        assert str(path) in str(err.value)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_training_state(tmp_path / "missing.safetensors")


def test_wrong_names_and_shapes_are_clear_errors(tmp_path):
    net = make_net(0)
    path = save_training_state(tmp_path / "s.safetensors", modules={"net": net})
    with pytest.raises(CheckpointError, match=r"no module named 'ema'.*\['net'\]"):
        load_training_state(path, modules={"ema": net})
    with pytest.raises(CheckpointError, match="does not fit"):
        load_training_state(path, modules={"net": nn.Linear(2, 2)})
    with pytest.raises(ValueError, match="without '/'"):
        save_training_state(path, modules={"a/b": net})


def test_remove_deletes_the_checkpoint_and_stale_temporaries(tmp_path):
    path = save_training_state(tmp_path / "s.safetensors", meta={"x": 1})
    (tmp_path / ".s.safetensors.abc123.tmp").write_bytes(b"left by a killed save")
    (tmp_path / "keep.txt").write_text("unrelated")
    assert remove_training_state(path) is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
    assert remove_training_state(path) is False


def test_no_pickle_in_the_library():
    """No ``pickle``/``dill``/``torch.load`` and no ``allow_pickle=True`` in code (comments and strings are fine)."""
    offenders = []
    for source in sorted(Path(trichotomy_lib.__file__).parent.rglob("*.py")):
        tokens = [t for t in tokenize.generate_tokens(io.StringIO(source.read_text()).readline)
                  if t.type in (tokenize.NAME, tokenize.OP)]
        for i, tok in enumerate(tokens):
            text = tok.string
            after = "".join(t.string for t in tokens[i + 1 : i + 3])
            if (text in ("pickle", "cPickle", "dill", "cloudpickle", "joblib")
                    or (text == "torch" and after == ".load")
                    or (text == "allow_pickle" and after == "=True")):
                offenders.append(f"{source.relative_to(source.parents[1])}:{tok.start[0]}: {text}{after}")
    assert not offenders, offenders
