"""Many stages at once: independent stages side by side, each after its upstream, the same results
as one after another, and a failing stage named with its log."""

import json
import os
import time
from pathlib import Path

import pytest
import torch

from trichotomy_lib import schedule
from trichotomy_lib.pipeline import Pipeline, stage
from trichotomy_lib.schedule import StageFailed, compute_stages, log_path, stage_order


def _record(ctx, value, start: float) -> None:
    """The stage's value, where it ran (the process, its torch threads, the worker cap), and one
    line "<stage> <start> <end>" per call in ``calls.txt`` beside the rendezvous files."""
    (ctx.out / "value.json").write_text(json.dumps(value))
    (ctx.out / "where.json").write_text(json.dumps({"pid": os.getpid(), "threads": torch.get_num_threads(),
                                                    "workers_env": os.environ.get("TRICHOTOMY_WORKERS")}))
    with open(Path(ctx.config["rendezvous"]) / "calls.txt", "a") as calls:
        calls.write(f"{ctx.name} {start!r} {time.time()!r}\n")


def _calls(rendezvous: Path) -> dict[str, list[tuple[float, float]]]:
    out: dict = {}
    for line in (rendezvous / "calls.txt").read_text().splitlines():
        name, start, end = line.split()
        out.setdefault(name, []).append((float(start), float(end)))
    return out


def _meet(ctx, me: str, other: str) -> None:
    """Wait (60 s at most) until the sibling stage has started: only stages run side by side meet."""
    rendezvous = Path(ctx.config["rendezvous"])
    (rendezvous / f"{me}.started").write_text("")
    if ctx.config["meet"]:
        deadline = time.time() + 60
        while not (rendezvous / f"{other}.started").exists():
            if time.time() > deadline:
                raise TimeoutError(f"{me}: {other} did not start beside it")
            time.sleep(0.05)


@stage("test_sched_root", keys=("seed", "rendezvous"))
def _root(ctx):
    start = time.time()
    time.sleep(0.2)  # long enough that a stage started before its upstream finished would show it
    _record(ctx, int(ctx.config["seed"]), start)


@stage("test_sched_left", keys=("rendezvous", "meet"), deps=("test_sched_root",))
def _left(ctx):
    start = time.time()
    _meet(ctx, "left", "right")
    _record(ctx, 2 * json.loads((ctx.inputs["test_sched_root"] / "value.json").read_text()), start)


@stage("test_sched_right", keys=("rendezvous", "meet"), deps=("test_sched_root",))
def _right(ctx):
    start = time.time()
    _meet(ctx, "right", "left")
    _record(ctx, 3 * json.loads((ctx.inputs["test_sched_root"] / "value.json").read_text()), start)


@stage("test_sched_join", keys=("rendezvous",), deps=("test_sched_left", "test_sched_right"))
def _join(ctx):
    start = time.time()
    _record(ctx, sum(json.loads((ctx.inputs[d] / "value.json").read_text())
                     for d in ("test_sched_left", "test_sched_right")), start)


@stage("test_sched_boom", keys=("seed",), deps=("test_sched_root",))
def _boom(ctx):
    print("about to fail")
    raise ValueError("the boom stage always fails")


def _pipe(path, rendezvous, meet=True):
    rendezvous.mkdir(parents=True, exist_ok=True)
    cfg = {"profile": "t", "seed": 7, "run_root": "unused", "rendezvous": str(rendezvous), "meet": meet}
    return Pipeline(cfg, run_dir=path, verbose=False)


def _where(pipe, name):
    return json.loads((pipe.path(name) / "where.json").read_text())


def _value(pipe, name):
    return json.loads((pipe.path(name) / "value.json").read_text())


@pytest.fixture
def cores(monkeypatch):
    def set_cores(n):
        monkeypatch.delenv("TRICHOTOMY_WORKERS", raising=False)
        monkeypatch.setattr(schedule, "job_workers", lambda: n)
        monkeypatch.setattr(schedule, "cpu_cores", lambda: n)
    return set_cores


def test_order_puts_every_stage_after_its_upstream_and_skips_cached_ones(tmp_path):
    pipe = _pipe(tmp_path / "run", tmp_path / "meet", meet=False)
    order = stage_order(pipe, ["test_sched_join"])
    assert sorted(order) == ["test_sched_join", "test_sched_left", "test_sched_right", "test_sched_root"]
    assert order[0] == "test_sched_root" and order[-1] == "test_sched_join"
    pipe.get("test_sched_left")
    assert stage_order(pipe, ["test_sched_join"]) == ["test_sched_right", "test_sched_join"]
    with pytest.raises(KeyError, match="test_sched_nope"):
        stage_order(pipe, ["test_sched_nope"])


def test_independent_stages_run_side_by_side_in_single_threaded_workers(tmp_path, cores):
    cores(2)
    pipe = _pipe(tmp_path / "run", tmp_path / "meet")
    paths = compute_stages(pipe, ["test_sched_join"])
    assert paths == {"test_sched_join": pipe.path("test_sched_join")}
    left, right, join = (_where(pipe, n) for n in ("test_sched_left", "test_sched_right", "test_sched_join"))
    assert left["pid"] != right["pid"] and os.getpid() not in (left["pid"], right["pid"])  # met: side by side
    assert left["threads"] == right["threads"] == join["threads"] == 1  # cores // workers, even for the last one
    assert left["workers_env"] == "1"                                # a stage's own jobs run one after another
    calls = _calls(tmp_path / "meet")
    assert {name: len(c) for name, c in calls.items()} == dict.fromkeys(calls, 1) and len(calls) == 4  # once each
    for name in ("test_sched_left", "test_sched_right", "test_sched_join"):
        for dep in pipe.stage(name).deps:
            assert calls[name][0][0] >= calls[dep][0][1]  # started after its upstream finished
    assert _value(pipe, "test_sched_join") == 2 * 7 + 3 * 7
    assert log_path(pipe, "test_sched_left").exists()

    # one worker (a GPU, one core, TRICHOTOMY_WORKERS=1): one after another in this process
    cores(1)
    alone = _pipe(tmp_path / "alone", tmp_path / "meet_alone", meet=False)
    compute_stages(alone, ["test_sched_join"])
    assert {_where(alone, n)["pid"] for n in ("test_sched_root", "test_sched_left", "test_sched_join")} == {os.getpid()}
    for name in ("test_sched_root", "test_sched_left", "test_sched_right", "test_sched_join"):
        assert _value(alone, name) == _value(pipe, name)


def test_a_failing_stage_is_named_with_its_log_and_finished_stages_stay_cached(tmp_path, cores):
    cores(2)
    pipe = _pipe(tmp_path / "run", tmp_path / "meet", meet=False)
    with pytest.raises(StageFailed, match="'test_sched_boom' raised ValueError: the boom stage always fails") as err:
        compute_stages(pipe, ["test_sched_boom", "test_sched_join"])
    assert str(log_path(pipe, "test_sched_boom")) in str(err.value)
    log = log_path(pipe, "test_sched_boom").read_text()
    assert "about to fail" in log and "Traceback" in log and "ValueError: the boom stage always fails" in log
    assert pipe.is_cached("test_sched_root") and not pipe.is_cached("test_sched_boom")
    assert compute_stages(pipe, ["test_sched_join"])["test_sched_join"] == pipe.path("test_sched_join")  # the rest still computes


def test_reproduction_stages_are_the_projects_own_and_the_profiles_rows(tmp_path):
    from trichotomy_lib import config, stages
    from trichotomy_lib.releases import RELEASES

    cfg = Pipeline(config.resolve("smoke", config.load_profile("smoke")), run_dir=tmp_path, verbose=False).cfg
    names = stages.reproduction_stages(cfg)
    assert not [n for n in names if n.startswith(("test_sched_", "test_"))]  # stages registered outside the package
    assert {"data", "diffusion", "release_diadm_filter", "privacy_eval", "utility_real", "sweep"} <= set(names)
    rows = set(cfg["utility"]["releases"])
    for name in RELEASES:
        assert (f"utility_{name}" in names) == (name in rows) == (f"fidelity_{name}" in names)
    fewer = stages.reproduction_stages({**cfg, "utility": {**cfg["utility"], "releases": ["diadm_filter"]}})
    assert [n for n in fewer if n.startswith("utility_")] == ["utility_real", "utility_diadm_filter", "utility_cross_site"]


def test_a_failing_stage_in_this_process_is_named_too(tmp_path, cores):
    cores(1)
    pipe = _pipe(tmp_path / "run", tmp_path / "meet", meet=False)
    with pytest.raises(StageFailed, match="'test_sched_boom' raised ValueError"):
        compute_stages(pipe, ["test_sched_boom"])
    assert pipe.is_cached("test_sched_root")
