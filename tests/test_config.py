"""Profiles: every parameter a notebook reads, checked on load."""

import pytest
import yaml

from trichotomy_lib import config
from trichotomy_lib.config import ConfigError


@pytest.mark.parametrize("name", config.BUILTIN_PROFILES)
def test_builtin_profiles_load_and_hold_every_parameter(name):
    cfg = config.load_profile(name)
    assert cfg["profile"] == name
    assert set(cfg) == set(config.TOP_LEVEL_KEYS)


def test_unknown_parameter_in_profile_names_file_and_key(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"seed": 1, "run_root": "runs", "data": {}, "dta": {}}))
    with pytest.raises(ConfigError, match=r"mine\.yaml.*'dta'"):
        config.load_profile(path)


def test_invalid_yaml_and_missing_profile_are_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1,\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        config.load_profile(bad)
    with pytest.raises(ConfigError, match="profile not found"):
        config.load_profile("no_such_profile")


def test_overrides_merge_into_sections_and_none_means_profile_value():
    cfg = config.resolve("smoke", {"seed": None, "data": {"image_size": 48}})
    smoke = config.load_profile("smoke")
    assert cfg["seed"] == smoke["seed"]
    assert cfg["data"]["image_size"] == 48
    assert {k: v for k, v in cfg["data"].items() if k != "image_size"} == {
        k: v for k, v in smoke["data"].items() if k != "image_size"
    }


def test_from_notebook_reads_parameters_from_namespace():
    namespace = {"profile": "smoke", "seed": 7, "data": None, "unrelated": 1}
    cfg = config.from_notebook(namespace)
    assert cfg["seed"] == 7 and cfg["profile"] == "smoke"


def test_section_rejects_typos_with_the_field_name():
    with pytest.raises(ConfigError, match=r"reid\.epochz"):
        config.section({"reid": {"epochz": 3}}, "reid", {"epochs": 1})
    assert config.section({"reid": {"epochs": 3}}, "reid", {"epochs": 1, "lr": 0.1}) == {"epochs": 3, "lr": 0.1}


def test_run_and_figures_dirs(tmp_path):
    cfg = {"profile": "p", "run_root": str(tmp_path), "figures_dir": None}
    assert config.run_dir(cfg) == tmp_path / "p"
    assert config.figures_dir(cfg) == tmp_path / "p" / "figures"
    assert config.figures_dir(cfg | {"figures_dir": str(tmp_path / "f")}) == tmp_path / "f"


def test_dotted_settings_parse_as_yaml_and_set_one_leaf():
    assert config.parse_setting("reid.auditor_patients=2000") == ("reid.auditor_patients", 2000)
    assert config.parse_setting("diffusion.network.channels=[48, 96]") == ("diffusion.network.channels", [48, 96])
    assert config.parse_setting("generate.filter.guidance=1.7") == ("generate.filter.guidance", 1.7)
    for bad in ("reid.width", "width=3", "reid..width=3", "=3", "reid.width=[1,"):
        with pytest.raises(ConfigError, match=r"SECTION\.KEY=VALUE|not YAML"):
            config.parse_setting(bad)
    base = config.resolve("smoke")
    cfg = config.with_settings(base, ("reid.width", 24), ("generate.filter.k", 5))
    assert cfg["reid"]["width"] == 24 and cfg["generate"]["filter"]["k"] == 5
    # every other leaf is untouched, and the base is not mutated
    assert {k: v for k, v in cfg["reid"].items() if k != "width"} == {
        k: v for k, v in base["reid"].items() if k != "width"}
    assert cfg["generate"]["filter"]["round_size"] == base["generate"]["filter"]["round_size"]
    assert base["reid"]["width"] != 24
    assert config.with_settings(base) == base and config.with_settings(base) is not base
