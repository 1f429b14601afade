"""The notebooks' checks: asserted on the PhantomCXR testbed at the profile's thresholds,
reported (never asserted) on a data holder's file list."""

import pytest

from trichotomy_lib import checks, config


def test_checks_assert_on_the_testbed_and_name_the_failing_check():
    cfg = {"profile": "p", "data": {"source": "phantom"}, "checks": {"reid_auroc": 0.9}}
    assert checks.expect(cfg, "reid_auroc", 0.95, ">=") is True
    with pytest.raises(AssertionError, match=r"check reid_auroc: .*0\.85.*>= 0\.9.*profile 'p'"):
        checks.expect(cfg, "reid_auroc", 0.85, ">=")
    assert checks.expect(cfg, "classifier_auroc", 0.1, ">=") is False   # null threshold: reported only


def test_a_file_list_run_never_hits_a_testbed_assertion(capsys):
    cfg = {"profile": "mine", "data": {"source": "filelist"}, "checks": {"reid_auroc": 0.99}}
    assert checks.expect(cfg, "reid_auroc", 0.51, ">=", "defender AUROC") is False
    assert "defender AUROC: 0.51 (reported, not asserted)" in capsys.readouterr().out


def test_every_profile_sets_only_known_checks_and_unknown_names_fail():
    for name in config.BUILTIN_PROFILES:
        checks.checks_config(config.resolve(name))
    with pytest.raises(config.ConfigError, match="checks"):
        checks.checks_config({"checks": {"reid_aurok": 0.9}})
    with pytest.raises(KeyError, match="unknown check"):
        checks.expect({"checks": {}}, "nope", 1.0)
