"""Independent jobs side by side: the round layout, process isolation, and a row that resumes by seed."""

import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from trichotomy_lib import device
from trichotomy_lib.data.imageset import N_LABELS, ImageSet
from trichotomy_lib.jobs import run_jobs
from trichotomy_lib.stages import utility as utility_stages


def where(value, progress):
    """A job that reports where it ran."""
    return value, os.getpid(), torch.get_num_threads(), progress


@pytest.fixture
def cpu_with(monkeypatch):
    def set_cores(n, kind="cpu"):
        monkeypatch.delenv("TRICHOTOMY_WORKERS", raising=False)
        monkeypatch.setattr(device, "cpu_cores", lambda: n)
        monkeypatch.setattr(device, "default_device", lambda: torch.device(kind))
    return set_cores


def test_rounds_fill_the_cores_then_give_the_rest_every_thread(cpu_with, monkeypatch):
    cpu_with(2)
    assert device.job_rounds(0) == []
    assert device.job_rounds(1) == [(1, 0)]
    assert device.job_rounds(3) == [(2, 1), (1, 0)]
    assert device.job_rounds(4) == [(2, 1), (2, 1)]
    cpu_with(8)
    assert device.job_rounds(3) == [(3, 2)]
    assert device.job_rounds(10) == [(8, 1), (2, 4)]
    cpu_with(8, "cuda")
    assert device.job_rounds(3) == [(1, 0)] * 3
    cpu_with(2)
    monkeypatch.setenv("TRICHOTOMY_WORKERS", "1")
    assert device.job_rounds(3) == [(1, 0)] * 3
    monkeypatch.setenv("TRICHOTOMY_WORKERS", "two")
    with pytest.raises(ValueError, match="TRICHOTOMY_WORKERS"):
        device.job_rounds(3)


def test_jobs_keep_their_order_and_run_in_processes_of_their_own(cpu_with):
    cpu_with(2)
    results = run_jobs(where, [(10,), (11,), (12,)], desc="test")
    assert [r[0] for r in results] == [10, 11, 12]
    paired, alone = results[:2], results[2]
    assert len({r[1] for r in paired}) == 2 and os.getpid() not in {r[1] for r in paired}
    assert all(r[2] == 1 and r[3] is False for r in paired)  # one thread each, no progress bar
    assert alone[1] == os.getpid() and alone[3] is True
    assert run_jobs(where, [], desc="none") == []


def tiny_set(n, seed):
    rng = np.random.default_rng(seed)
    return ImageSet(rng.integers(0, 255, (n, 8, 8), dtype=np.uint8), rng.integers(0, 2, (n, N_LABELS), dtype=np.uint8),
                    np.array([f"p{i}" for i in range(n)]), np.array([f"s{i}" for i in range(n)]))


def test_an_interrupted_row_trains_only_the_seeds_it_lacks(tmp_path, monkeypatch):
    monkeypatch.setenv("TRICHOTOMY_WORKERS", "1")  # in this process, so the fake job below is used
    splits = {"val": tiny_set(6, 1), "test": tiny_set(5, 2)}
    monkeypatch.setattr(utility_stages, "load_splits", lambda pipe, mmap=True: splits)
    trained = []

    def fake_fit(train, val, test, recipe, seed, done: Path, progress=True):
        trained.append(seed)
        done.mkdir(parents=True)
        for name in ("classifier.safetensors", "classifier.json"):
            (done / name).write_text(str(seed))
        np.save(done / "test_probs.npy", np.full((len(test), N_LABELS), seed % 97 / 97, np.float32))
        (done / "info.json").write_text(json.dumps({"seed": seed, "best_epoch": 1, "epochs_run": 2,
                                                    "train_seconds": 0.1}))

    monkeypatch.setattr(utility_stages, "fit_seed", fake_fit)
    monkeypatch.setattr(utility_stages, "classifier_recipe", lambda cfg: {})
    ctx = SimpleNamespace(config={"seed": 7, "utility.seeds": 3}, out=tmp_path, pipeline=None)
    fake_fit(None, None, splits["test"], None, utility_stages.row_seed(7, 1), tmp_path / "seeds" / "1")
    trained.clear()  # seed 1 finished before an "interruption"
    utility_stages._train_into(ctx, tiny_set(4, 3), "row")
    assert trained == [utility_stages.row_seed(7, 0), utility_stages.row_seed(7, 2)]
    probs = np.load(tmp_path / "test_probs.npy")
    assert probs.shape == (3, 5, N_LABELS)
    expected = [utility_stages.row_seed(7, i) % 97 / 97 for i in range(3)]
    assert probs[:, 0, 0] == pytest.approx(expected)
    info = json.loads((tmp_path / "info.json").read_text())
    assert info["seeds"] == [utility_stages.row_seed(7, i) for i in range(3)]
    assert (tmp_path / "classifier.json").read_text() == str(utility_stages.row_seed(7, 0))
    assert not (tmp_path / "seeds").exists()
