"""The cache: a changed parameter invalidates exactly the stages that read it, and downstream."""

import json

import pytest

from trichotomy_lib import pipeline
from trichotomy_lib.pipeline import Pipeline, stage

CALLS: list[str] = []


@stage("test_a", keys=("seed", "alpha"))
def _stage_a(ctx):
    CALLS.append("a")
    (ctx.out / "value.json").write_text(json.dumps(ctx.params["seed"] + ctx.params["alpha"]["x"]))


@stage("test_b", keys=("beta.y",), deps=("test_a",))
def _stage_b(ctx):
    CALLS.append("b")
    upstream = json.loads((ctx.inputs["test_a"] / "value.json").read_text())
    (ctx.out / "value.json").write_text(json.dumps(upstream * ctx.params["beta.y"]))


@stage("test_c", keys=("gamma",), deps=("test_a",))
def _stage_c(ctx):
    CALLS.append("c")
    (ctx.out / "value.json").write_text("0")


@stage("test_flaky", keys=("seed",))
def _stage_flaky(ctx):
    CALLS.append("flaky")
    (ctx.out / "checkpoint").write_text("half done")
    if not (ctx.out / "resume-ok").exists():
        (ctx.out / "resume-ok").write_text("")
        raise KeyboardInterrupt  # interrupted mid-run


def _cfg(**changes):
    cfg = {"profile": "t", "seed": 1, "run_root": "unused", "alpha": {"x": 2}, "beta": {"y": 3, "z": 0}, "gamma": 5}
    cfg.update(changes)
    return cfg


def _value(pipe, name):
    return json.loads((pipe.get(name) / "value.json").read_text())


@pytest.fixture(autouse=True)
def _reset_calls():
    CALLS.clear()


def test_stages_compute_once_then_come_from_cache(tmp_path):
    pipe = Pipeline(_cfg(), run_dir=tmp_path, verbose=False)
    assert _value(pipe, "test_b") == (1 + 2) * 3
    assert CALLS == ["a", "b"]
    again = Pipeline(_cfg(), run_dir=tmp_path, verbose=False)
    assert _value(again, "test_b") == 9 and _value(again, "test_c") == 0
    assert CALLS == ["a", "b", "c"]  # only c was new
    saved = json.loads((again.path("test_b") / "config.json").read_text())
    assert saved["params"] == {"beta.y": 3} and saved["deps"]["test_a"] == str(again.path("test_a"))


def test_changing_a_parameter_invalidates_exactly_its_readers_and_downstream(tmp_path):
    base = Pipeline(_cfg(), run_dir=tmp_path, verbose=False)
    for name in ("test_b", "test_c"):
        base.get(name)
    CALLS.clear()

    # beta.y is read by b only
    changed_b = Pipeline(_cfg(beta={"y": 4, "z": 0}), run_dir=tmp_path, verbose=False)
    assert _value(changed_b, "test_b") == 12 and _value(changed_b, "test_c") == 0
    assert CALLS == ["b"]
    CALLS.clear()

    # beta.z is read by nobody: nothing recomputes
    unrelated = Pipeline(_cfg(beta={"y": 3, "z": 99}), run_dir=tmp_path, verbose=False)
    unrelated.get("test_b"), unrelated.get("test_c")
    assert CALLS == []

    # seed is read by a: a and everything downstream recompute
    changed_a = Pipeline(_cfg(seed=10), run_dir=tmp_path, verbose=False)
    assert _value(changed_a, "test_b") == 36
    changed_a.get("test_c")
    assert sorted(CALLS) == ["a", "b", "c"]


def test_stage_keys_differ_by_parameter_and_are_stable(tmp_path):
    one = Pipeline(_cfg(), run_dir=tmp_path, verbose=False)
    two = Pipeline(_cfg(), run_dir=tmp_path, verbose=False)
    other = Pipeline(_cfg(gamma=6), run_dir=tmp_path, verbose=False)
    assert one.key("test_c") == two.key("test_c") != other.key("test_c")
    assert one.key("test_b") == other.key("test_b")


def test_interrupted_stage_leaves_no_finished_directory_and_resumes(tmp_path):
    pipe = Pipeline(_cfg(), run_dir=tmp_path, verbose=False)
    with pytest.raises(KeyboardInterrupt):
        pipe.get("test_flaky")
    assert not pipe.is_cached("test_flaky") and not pipe.path("test_flaky").exists()
    partial = tmp_path / f".{pipe.path('test_flaky').name}.partial"
    assert (partial / "checkpoint").exists()  # work kept for the resume
    pipe.get("test_flaky")
    assert pipe.is_cached("test_flaky") and not partial.exists()
    assert CALLS == ["flaky", "flaky"]


def test_unknown_stage_is_named():
    with pytest.raises(KeyError, match="no_such_stage"):
        Pipeline(_cfg(), verbose=False).get("no_such_stage")


def test_every_registered_stage_declares_known_config_keys():
    from trichotomy_lib.config import TOP_LEVEL_KEYS

    import trichotomy_lib.stages  # noqa: F401

    for name, st in pipeline._registry().items():
        if name.startswith("test_"):
            continue
        for key in st.keys:
            assert key.split(".")[0] in TOP_LEVEL_KEYS, f"stage {name} reads unknown key {key}"
        for dep in st.deps:
            assert dep in pipeline.STAGES, f"stage {name} depends on unknown stage {dep}"


@stage("test_slow", keys=("seed",))
def _stage_slow(ctx):
    import time

    with open(ctx.out.parent / "slow-calls.txt", "a") as log:
        log.write("x")
    time.sleep(1.0)
    (ctx.out / "value.json").write_text("1")


def _get_slow(run_dir):
    Pipeline(_cfg(), run_dir=run_dir, verbose=False).get("test_slow")


def test_two_processes_asking_for_one_stage_compute_it_once(tmp_path):
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_get_slow, args=(tmp_path,)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    assert [w.exitcode for w in workers] == [0, 0]
    assert (tmp_path / "slow-calls.txt").read_text() == "x"
    assert Pipeline(_cfg(), run_dir=tmp_path, verbose=False).is_cached("test_slow")
