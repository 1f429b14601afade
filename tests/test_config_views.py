"""Config validated once, read through views: a stage sees exactly the keys it declared."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import trichotomy_lib.stages  # noqa: F401  (registers the real stages and config sections)
from trichotomy_lib import config, pipeline
from trichotomy_lib.config import ConfigError, ConfigView, UndeclaredConfigKey
from trichotomy_lib.data.imageset import ImageSet
from trichotomy_lib.pipeline import Pipeline, Stage
from trichotomy_lib.stages import generate as gen_stage


def test_view_reads_declared_keys_and_below_and_nothing_else():
    cfg = {"seed": 1, "generate": {"steps": 10, "filter": {"k": 4, "guidance": 1.4}}, "data": {"a": {"b": 2}}}
    view = ConfigView(cfg, ("seed", "generate.filter.k", "data"), "probe")
    assert view["seed"] == 1 and view["generate.filter.k"] == 4 and view["generate"]["filter"]["k"] == 4
    assert view["data.a.b"] == 2 and view["data"] == {"a": {"b": 2}}
    assert dict(view["generate"]["filter"]) == {"k": 4}          # a branch shows only what is declared
    assert view.to_dict() == {"seed": 1, "generate": {"filter": {"k": 4}}, "data": {"a": {"b": 2}}}
    for undeclared in ("generate.steps", "generate.filter.guidance", "privacy"):
        with pytest.raises(UndeclaredConfigKey, match=f"stage 'probe' read config key '{undeclared}'"):
            view[undeclared]
    with pytest.raises(UndeclaredConfigKey):
        view["generate"].get("steps")                            # .get does not swallow it either
    value = view["data"]
    value["a"]["b"] = 99                                         # a copy: the config is not changed
    assert cfg["data"]["a"]["b"] == 2


def test_every_profile_validates_once_and_idempotently():
    for name in config.BUILTIN_PROFILES:
        resolved = config.validate(config.resolve(name))
        assert config.validate(resolved) == resolved, name
        assert resolved["generate"]["filter"]["k"] >= 1 and "chunk_size" in resolved["generate"]["filter"]


def test_bad_values_fail_when_the_pipeline_is_built(tmp_path):
    base = config.resolve("smoke")
    with pytest.raises(ConfigError, match="generate.filter"):
        Pipeline({**base, "generate": {"filter": {"guidance": 0.9, "guidance_floor": 1.2}}}, run_dir=tmp_path)
    with pytest.raises(ConfigError, match="encoder"):
        Pipeline({**base, "encoder": {"stepz": 3}}, run_dir=tmp_path)


def _stand_in_sampler(pipe, mode, conditions, progress=False, solver=None, steps=None, guide=None,
                      condition_noise=None, condition_labels=None):
    """A sampler that writes (source, guidance, guide, clean condition) into the image, so the test
    can read them back."""
    g = pipe.cfg["generate"]
    clean = ((g["condition_noise"] if condition_noise is None else condition_noise) == 0
             and not (g["condition_labels"] if condition_labels is None else condition_labels))

    def fn(sources, sample_seeds, guidance):
        x = torch.zeros(len(sources), 1, 8, 8)
        x[:, 0, 0, 0] = torch.as_tensor(np.asarray(sources), dtype=torch.float32) / 100
        x[:, 0, 0, 1] = guidance / 10
        x[:, 0, 0, 2] = 0.5 if guide == "early" else 0.0
        x[:, 0, 0, 3] = 0.5 if mode == "pseudo" and clean else 0.0
        return x
    return fn


@pytest.fixture
def fake_upstream(tmp_path, monkeypatch):
    """Data, encoder and diffusion stages replaced by stand-ins (the release stages are real)."""
    def fake_data(ctx):
        n = 10
        ImageSet(np.zeros((n, 8, 8), np.uint8), np.eye(8, dtype=np.uint8)[np.arange(n) % 8],
                 np.array([f"p{i // 2}" for i in range(n)]), np.array([f"s{i}" for i in range(n)])).save(ctx.out / "train")

    def fake_encoder(ctx):
        np.save(ctx.out / "embeddings_train.npy", np.ones((10, 4), np.float32))

    for name, fn, deps in (("data", fake_data, ()), ("encoder", fake_encoder, ("data",)),
                           ("diffusion", lambda ctx: None, ("data",))):
        monkeypatch.setitem(pipeline.STAGES, name, Stage(name, fn, ("seed",), deps))
    monkeypatch.setattr(gen_stage, "make_sample_fn", _stand_in_sampler)
    return tmp_path


def test_a_valid_guidance_schedule_runs_every_release_stage_that_reads_part_of_it(fake_upstream):
    """generate.filter {guidance 0.9, floor 0.7} is valid; stages that declare only
    generate.filter.guidance must read the resolved value, not rebuild the section from it."""
    cfg = {**config.resolve("smoke"), "generate": {"filter": {"guidance": 0.9, "guidance_floor": 0.7},
                                                   "condition_noise": 2.0, "condition_labels": True}}
    pipe = Pipeline(cfg, run_dir=fake_upstream, verbose=False)
    for name, guidance in (("edm_class", 0.9), ("diadm_raw", 0.9), ("edm_class_autoguide", 0.9),
                           ("diadm_raw_autoguide", 0.9), ("diadm_raw_paper", 0.9)):
        release, source_index = gen_stage.load_release(pipe, name)
        assert len(release) == 10 and np.array_equal(source_index, np.arange(10))
        assert np.allclose(release.images[:, 0, 1] / 255 * 2 - 1, guidance / 10, atol=0.01), name
        assert gen_stage.release_info(pipe, name)["guidance"] == guidance
        autoguided = name.endswith("_autoguide")  # the twins sample with the early checkpoint as the guide
        assert np.allclose(release.images[:, 0, 2] / 255 * 2 - 1, 0.5 if autoguided else 0.0, atol=0.01), name
        assert gen_stage.release_info(pipe, name)["guide"] == ("early" if autoguided else "uncond")
        paper = name == "diadm_raw_paper"  # the paper's condition: the clean embedding alone, whatever the profile's
        assert np.allclose(release.images[:, 0, 3] / 255 * 2 - 1, 0.5 if paper else 0.0, atol=0.01), name
    # the paper-condition release does not depend on the profile's condition: its cache key ignores it
    other = Pipeline({**cfg, "generate": {**cfg["generate"], "condition_noise": 1.0, "condition_labels": False}},
                     run_dir=fake_upstream, verbose=False)
    assert other.is_cached("release_diadm_paper") and not other.is_cached("release_diadm_raw")


def test_a_stage_that_reads_an_undeclared_key_or_stage_fails(fake_upstream, monkeypatch):
    def sneaky(ctx):
        ctx.config["generate"]["steps"]          # declared: generate.filter.k only

    def greedy(ctx):
        ctx.pipeline.get("encoder")              # not upstream of it

    monkeypatch.setitem(pipeline.STAGES, "probe_keys", Stage("probe_keys", sneaky, ("generate.filter.k",), ("data",)))
    monkeypatch.setitem(pipeline.STAGES, "probe_deps", Stage("probe_deps", greedy, ("seed",), ("data",)))
    pipe = Pipeline(config.resolve("smoke"), run_dir=fake_upstream, verbose=False)
    with pytest.raises(UndeclaredConfigKey, match="'generate.steps'"):
        pipe.get("probe_keys")
    with pytest.raises(KeyError, match="not upstream"):
        pipe.get("probe_deps")
    assert not pipe.is_cached("probe_keys") and not pipe.is_cached("probe_deps")
