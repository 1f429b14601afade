"""The attacker suite, the near-copy veto, graded leaks and the filter's reliability test."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from test_pso import OracleVerifier, make_population
from trichotomy_lib.analysis import privacy as privacy_tables
from trichotomy_lib.evaluation.stats import paired_singling_out_risk
from trichotomy_lib.privacy import sample_filter as flt
from trichotomy_lib.privacy.attack import attack_release, strongest_attacker
from trichotomy_lib.privacy.audit import pixel_features
from trichotomy_lib.privacy.controls import negative_control_release, positive_control_release
from trichotomy_lib.privacy.copy_veto import CopyVeto, VerdictSpace, leave_patient_out_distances
from trichotomy_lib.privacy.leaks import blurred, noised, random_sources, shifted
from trichotomy_lib.privacy.reliability import planted_candidates, veto_reliability


@pytest.fixture(scope="module")
def world():
    train, control = make_population("tr", 60, 1), make_population("ct", 60, 2)
    weight, heldout = make_population("wt", 60, 3), make_population("ho", 30, 4)
    auditor = OracleVerifier([train, control, weight, heldout])
    return dict(train=train, control=control, weight=weight, heldout=heldout, auditor=auditor,
                cfg={"seed": 7, "privacy": {"n_attacks": None}})


def _attack(world, release, source_index, spaces, name):
    return attack_release(release, source_index, world["train"], world["control"], world["auditor"], world["cfg"],
                          heldout=world["weight"], name=name, spaces=spaces)


def test_every_attacker_fires_on_copies_and_stays_at_baseline_on_unseen_patients(world):
    spaces = {"pixels": lambda s: pixel_features(s)}
    pos = _attack(world, *positive_control_release(world["train"], 0.02, seed=0), spaces, "positive_control")
    neg = _attack(world, *negative_control_release(world["heldout"]), spaces, "negative_control")
    for prefix in ("ball", "verifier", "pixels_ball"):
        assert pos[f"{prefix}_risk"] >= 0.4, (prefix, pos[f"{prefix}_attack_rate"], pos[f"{prefix}_control_rate"])
        assert neg[f"{prefix}_risk_lo"] == 0.0, prefix
        assert neg[f"{prefix}_n_predicates"] == len(world["heldout"])           # every released image a predicate
    assert pos["n_attackers"] == neg["n_attackers"] == 3
    assert pos["strongest_attacker"] in ("ball", "verifier", "pixels_ball") and neg["strongest_risk_lo"] == 0.0
    assert pos["ball_risk_unclipped"] >= pos["ball_risk"] - 1e-12 and neg["ball_risk_unclipped"] <= 1


def test_a_measured_risk_needs_a_corrected_lower_bound_above_zero(world):
    """measurable_risk (notebook 06's "is the suite blind?" table): copies give a corrected lower
    bound above 0, unseen patients do not; the bound read is the one corrected for the number of
    attackers, not the nominal 95 % one."""
    from trichotomy_lib.analysis.privacy import measurable_risk

    spaces = {"pixels": lambda s: pixel_features(s)}
    rows = {"copies": _attack(world, *positive_control_release(world["train"], 0.02, seed=0), spaces, "copies"),
            "unseen": _attack(world, *negative_control_release(world["heldout"]), spaces, "unseen")}
    df = pd.DataFrame.from_dict(rows, orient="index").assign(label=["copies (label)", "unseen (label)"])
    table = measurable_risk(df, ["copies", "unseen", "not evaluated"])
    assert list(table.index) == ["copies (label)", "unseen (label)"]
    assert table.loc["copies (label)", "measured (lower bound > 0)"]
    assert not table.loc["unseen (label)", "measured (lower bound > 0)"]
    best = max(("ball", "verifier", "pixels_ball"), key=lambda p: rows["copies"][f"{p}_risk_lo_corrected"])
    assert table.loc["copies (label)", "lower bound"] == rows["copies"][f"{best}_risk_lo_corrected"]
    assert table.loc["copies (label)", "lower bound"] <= rows["copies"][f"{best}_risk_lo"]  # corrected: wider
    with pytest.raises(ValueError, match="no attacker"):
        measurable_risk(df.drop(columns=[c for c in df.columns if c.endswith("_corrected")]), ["copies"])


def test_the_pixel_attacker_sees_what_the_auditor_is_blind_to(world):
    """An auditor that ignores the image (a constant embedding) cannot single anyone out; the
    pixel ball still catches the copies — the reason the headline is the strongest attacker."""
    class Blind(OracleVerifier):
        def embed(self, images, batch_size=256, progress=False):
            n = len(images) if isinstance(images, torch.Tensor) else len(images.images)
            return torch.full((n, 16), 0.5)

    blind = Blind([world["train"]])
    release, src = positive_control_release(world["train"], 0.02, seed=0)
    row = attack_release(release, src, world["train"], world["control"], blind, world["cfg"], heldout=world["weight"],
                         spaces={"pixels": lambda s: pixel_features(s)}, name="copies")
    assert row["ball_risk"] < 0.1 and row["pixels_ball_risk"] >= 0.4
    assert row["strongest_attacker"] == "pixels_ball"


def test_strongest_attacker_widens_the_interval_for_the_number_tried():
    rng = np.random.default_rng(0)
    hits = {name: {"attack": rng.random(300) < a, "control": rng.random(300) < 0.05, "groups": np.arange(300) // 2}
            for name, a in (("x", 0.3), ("y", 0.2))}
    best = strongest_attacker(hits, n_boot=2000, seed=1)
    x = hits["x"]
    nominal = paired_singling_out_risk(x["attack"], x["control"], x["groups"], 0.95, 2000, 1)
    assert best["strongest_attacker"] == "x" and best["strongest_level"] == pytest.approx(0.975)
    assert best["n_attackers"] == 2 and best["strongest_risk"] == pytest.approx(nominal["risk"])
    assert best["strongest_risk_hi"] > nominal["risk_hi"] and best["strongest_risk_lo"] < nominal["risk_lo"]
    assert (best["x_risk_lo_corrected"], best["x_risk_hi_corrected"]) == (best["strongest_risk_lo"],
                                                                        best["strongest_risk_hi"])
    y = hits["y"]
    y_nominal = paired_singling_out_risk(y["attack"], y["control"], y["groups"], 0.95, 2000, 1)
    assert best["y_risk_hi_corrected"] > y_nominal["risk_hi"]     # every attacker's corrected interval
    with pytest.raises(ValueError, match="no attacker"):
        strongest_attacker({})


def test_attack_rows_carry_no_per_predicate_arrays(world):
    """The outcomes behind the bootstrap stay out of the row (a table, written as JSON)."""
    row = _attack(world, *positive_control_release(world["train"], 0.02, seed=0), {}, "positive_control")
    assert not any(isinstance(v, (np.ndarray, dict, list)) for v in row.values())
    assert row["ball_interval"] == "paired cluster bootstrap"
    assert row["ball_n_groups"] == len(np.unique(world["train"].patient_ids))


def test_bad_attack_input_is_named(world):
    release, src = positive_control_release(world["train"], 0.02, seed=0)
    with pytest.raises(ValueError, match="NaN"):
        _attack(world, release, src, {"broken": lambda s: torch.full((len(s.images), 3), float("nan"))}, "nan")
    small = negative_control_release(make_population("sm", 5, 9))[0]
    small = type(small)(small.images[:, :8, :8].copy(), small.labels, small.patient_ids, small.names)
    with pytest.raises(ValueError, match="images are"):
        _attack(world, small, None, {}, "size")
    with pytest.raises(ValueError, match="shares"):
        attack_release(release, src, world["train"], world["train"], world["auditor"], world["cfg"], name="overlap")


def test_the_weight_sweep_plays_each_factor_and_its_table_reads_every_one(world):
    """attack_at_weights (what stage privacy_weight_sweep plays per release) and its table: the
    factor reaches the calibration (the target weight scales with it, the ball does not shrink),
    the profile's own factor replays the headline game exactly, one table column per factor."""
    from trichotomy_lib.privacy.attack import attack_at_weights

    release, src = positive_control_release(world["train"], 0.02, seed=0)
    cfg = {"seed": 7, "privacy": {"n_attacks": None, "weight_factor": 0.1}}
    rows = attack_at_weights(release, src, world["train"], world["control"], world["auditor"], cfg, [0.03, 0.1, 0.3],
                             heldout=world["weight"], name="positive_control")
    tight, same, loose = rows
    assert [r["weight_factor"] for r in rows] == [0.03, 0.1, 0.3]
    assert loose["ball_target_weight"] == pytest.approx(10 * tight["ball_target_weight"])
    assert loose["ball_radius"] >= tight["ball_radius"] and loose["ball_weight"] >= tight["ball_weight"]
    headline = attack_release(release, src, world["train"], world["control"], world["auditor"], cfg,
                              heldout=world["weight"], name="positive_control")
    assert {k: same[k] for k in headline} == headline
    table = privacy_tables.privacy_weight_sweep(pd.DataFrame(rows).assign(label="copies"))
    assert list(table.index) == ["copies"] and list(table.columns) == ["w·n = 0.03", "w·n = 0.1", "w·n = 0.3"]
    assert table.loc["copies", "w·n = 0.3"].startswith(
        f"{loose['strongest_risk']:.2f} [{loose['strongest_risk_lo']:.2f}, {loose['strongest_risk_hi']:.2f}]")
    assert "not run" in privacy_tables.privacy_weight_sweep(pd.DataFrame()).iloc[0, 0]
    with pytest.raises(ValueError, match="rerun stage privacy_weight_sweep"):
        privacy_tables.privacy_weight_sweep(pd.DataFrame(rows).assign(label="x").drop(columns=["strongest_risk_hi"]))


def test_leave_patient_out_distances_skip_the_patients_own_scans():
    feats = np.array([[0.0], [0.1], [5.0], [5.2], [9.0]])
    pids = np.array(["a", "a", "b", "b", "c"])
    d = leave_patient_out_distances(feats, pids, k=2)
    np.testing.assert_allclose(d, [5.0, 4.9, 4.0, 3.8, 3.8], atol=1e-5)   # never the own patient's other scan


def test_copy_veto_flags_near_copies_and_passes_other_patients(world):
    train, heldout = world["train"], world["heldout"]
    veto = CopyVeto({"pixels": lambda x: x.flatten(1)}, train.tensor(), train.patient_ids, quantile=0.05)
    assert veto.thresholds["pixels"] > 0
    copies = veto.ratio(noised(train, 0.01, 0)[0].tensor())
    others = veto.ratio(heldout.tensor())
    assert (copies < 1).mean() > 0.95 and (others >= 1).mean() > 0.8
    with pytest.raises(ValueError, match="quantile"):
        CopyVeto({"pixels": lambda x: x.flatten(1)}, train.tensor(), train.patient_ids, quantile=0.7)


def test_the_filter_never_releases_a_near_copy():
    sources = np.arange(6)

    def sampler(src, seeds, guidance):   # candidate 0 of every attempt is a "copy" (all zeros)
        x = torch.rand(len(src), 1, 8, 8, generator=torch.Generator().manual_seed(int(seeds.sum()) % 2**31)) * 2 - 1
        x[(seeds & 0xFF) == 0] = 0.0
        return x

    copy_fn = lambda x: np.where(x.abs().flatten(1).max(1).values.numpy() < 0.01, 0.2, 3.0)  # noqa: E731  (uint8 grey)
    res = flt.run_filter(sources, sampler, lambda s, x: np.full(len(s), 0.1), lambda x: np.full((len(x), 8), 0.5),
                         np.full((6, 8), 0.5), {"k": 3, "round_size": 3, "min_survivors": 1, "keep": 1, "threshold": 0.5},
                         stream=3, progress=False, copy_fn=copy_fn)
    cand = res.audit[res.audit.candidate >= 0]
    first = cand[cand.candidate == 0]
    assert first.flagged.all() and first.reason.str.contains("near-copy").all()
    assert (cand[cand.decision.isin(["chosen", "second_best"])].copy_ratio >= 1).all()
    best, _, _ = res.select(0)
    assert len(best) == 6 and (np.abs(best.astype(int) - 128).max(axis=(1, 2)) > 1).all()


def test_the_defender_compares_with_every_scan_of_the_source_patient(world):
    train = world["train"]
    v = world["auditor"]
    one = flt.verifier_defender_fn(v, train.tensor())
    every = flt.verifier_defender_fn(v, train.tensor(), patient_ids=train.patient_ids)
    src = np.arange(len(train))
    other = np.array([np.flatnonzero(train.patient_ids == p)[-1] for p in train.patient_ids])
    cand = train.tensor(other)                       # the patient's last scan offered for each source
    assert (every(src, cand) >= one(src, cand) - 1e-6).all()
    assert (every(src, cand) > 0.5).all()


def test_leak_ladders_move_away_from_the_source_and_keep_it():
    train = make_population("tr", 10, 1)
    for make in (lambda t: noised(t, 0.1, 0), lambda t: blurred(t, 1.0), lambda t: shifted(t, 2, 0)):
        release, src = make(train)
        assert release.images.shape == train.images.shape and np.array_equal(src, np.arange(len(train)))
        assert (release.patient_ids == train.patient_ids).all() and not np.array_equal(release.images, train.images)
    d = [np.abs(noised(train, s, 0)[0].images.astype(float) - train.images).mean() for s in (0.05, 0.1, 0.2, 0.4)]
    assert d == sorted(d)
    r = random_sources(train, 50, 3)
    assert r.shape == (len(train),) and r.min() >= 0 and r.max() < 50


def test_reliability_counts_vetoes_per_candidate_kind(world):
    train, heldout = world["train"], world["heldout"]
    cand = planted_candidates(train, heldout, seed=1, n=40)
    assert set(cand) >= {"copy of the source", "noised copy (σ = 0.05)", "unseen patient, random source"}
    v = world["auditor"]
    perfect = flt.verifier_defender_fn(v, train.tensor(), patient_ids=train.patient_ids)
    never = lambda s, x: np.zeros(len(s))  # noqa: E731
    table = veto_reliability(cand, {"oracle": (perfect, 0.5), "never": (never, 0.5)})
    assert table.loc["copy of the source", "vetoed (oracle)"] == 1.0
    assert table.loc["unseen patient, random source", "vetoed (oracle)"] < 0.1
    assert (table["vetoed (never)"] == 0).all()
    assert table.loc["copy of the source", "all defenders agree"] == 0.0
    assert isinstance(table, pd.DataFrame) and table["should veto"].sum() == len(table) - 1
    assert "identity rule alone" not in table
    # the identity rule in its own column, and in every defender's veto
    identity = CopyVeto({"defender": VerdictSpace(v)}, train.tensor(), train.patient_ids, quantile=0.05).ratio
    both = veto_reliability(cand, {"oracle": (perfect, 0.5), "never": (never, 0.5)}, identity_fn=identity)
    assert both.loc["copy of the source", "identity rule alone"] == 1.0
    assert both.loc["unseen patient, random source", "identity rule alone"] <= 0.5   # 30 unseen patients: noisy
    assert (both["vetoed (never)"] == both["identity rule alone"]).all()


def test_a_committee_veto_flags_what_any_member_flags_at_its_own_threshold():
    rng = np.random.default_rng(0)
    p = rng.uniform(size=(3, 500))
    p[:, :6] = [[0.30, 0.29, 0.10, 0.0, 1.0, 0.05],   # member 1, threshold 0.3
                [0.05, 0.10, 0.12, 0.0, 0.0, 0.119],  # member 2, threshold 0.12
                [0.05, 0.10, 0.01, 0.6, 0.0, 0.0]]    # member 3, threshold 0.6
    t = [0.3, 0.12, 0.6]
    members = [((lambda i: lambda s, x: p[i][s])(i), t[i]) for i in range(3)]
    fn, threshold = flt.committee_defender_fn(members)
    s = np.arange(p.shape[1])
    score = fn(s, None)
    assert threshold == 0.3 and ((score >= threshold) == (p >= np.array(t)[:, None]).any(0)).all()
    assert list(score[:6] >= threshold) == [True, False, True, True, True, False]
    assert ((score >= 0) & (score <= 1)).all()
    bumped = p.copy()
    bumped[1] = np.minimum(bumped[1] + 0.05, 1.0)      # a member more confident: the score never falls
    assert (flt.committee_defender_fn([((lambda i: lambda s, x: bumped[i][s])(i), t[i]) for i in range(3)])[0](s, None)
            >= score - 1e-12).all()
    one, t1 = flt.committee_defender_fn(members[:1])
    assert t1 == 0.3 and np.array_equal(one(s, None), p[0])   # a committee of one is that defender
    with pytest.raises(ValueError, match="at least one"):
        flt.committee_defender_fn([])
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        flt.committee_defender_fn([(members[0][0], 1.0)])
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="filter.defenders"):
            flt.check_filter_params({"defenders": bad})


def test_the_filter_committee_and_the_agreement_test_share_replicas_but_not_keys():
    from trichotomy_lib import config
    from trichotomy_lib.pipeline import Pipeline

    import trichotomy_lib.stages  # noqa: F401  (registers the stages)

    base = config.validate(config.resolve("smoke"))

    def pipe(**settings):
        cfg = base
        for key, value in settings.items():
            cfg = config.with_settings(cfg, (key.replace("__", "."), value))
        return Pipeline(config.validate(cfg), verbose=False)

    one, three = pipe(generate__filter__defenders=1), pipe(generate__filter__defenders=3)
    more_seeds = pipe(generate__filter__defenders=1, privacy__reliability_seeds=5)
    assert "reid_defender_committee" in one.stage("release_diadm_filter").deps
    assert "reid_defender_replicas" not in one.upstream("release_diadm_filter")
    for stage in ("reid_defender_committee", "release_diadm_filter", "reid_defender_replicas"):
        assert three.key(stage) != one.key(stage), stage          # the committee's replicas feed the test's
    assert three.key("reid_defender") == one.key("reid_defender")
    assert more_seeds.key("reid_defender_replicas") != one.key("reid_defender_replicas")
    for stage in ("reid_defender_committee", "release_diadm_filter", "utility_diadm_filter"):
        assert more_seeds.key(stage) == one.key(stage), stage     # the agreement test's size re-keys no release


def test_replicas_are_listed_by_number_across_the_committee_and_the_test(tmp_path):
    from trichotomy_lib.stages.reid import replica_dirs

    for where, i in (("test", 10), ("test", 2), ("committee", 1), ("committee", 2), ("test", 3)):
        (tmp_path / where / f"replica_{i}").mkdir(parents=True)
        if i != 3:                                                  # replica 3 never finished
            (tmp_path / where / f"replica_{i}" / "verifier.json").write_text("{}")
    dirs = replica_dirs(tmp_path / "test", tmp_path / "committee")
    assert [(p.parent.name, p.name) for p in dirs] == [("committee", "replica_1"), ("test", "replica_2"),
                                                       ("test", "replica_10")]


def test_the_veto_rule_table_is_read_from_figures_or_named_when_broken(tmp_path):
    cfg = {"figures_dir": str(tmp_path), "profile": "x"}
    assert privacy_tables.load_veto_rule(cfg) is None
    table = pd.DataFrame({"recall r": [0.99, 0.99], "rule": ["defender", "committee of 3"], "pass rate": [0.93, 0.84],
                          "gap (points)": [1.2, 0.4], "gap lo": [0.5, -0.1], "gap hi": [2.0, 1.0]})
    table.to_csv(tmp_path / "veto_rule.csv", index=False)
    read = privacy_tables.load_veto_rule(cfg)
    assert read.loc[(0.99, "committee of 3"), "gap hi"] == 1.0 and read.index.names == ["recall r", "rule"]
    table.drop(columns="gap hi").to_csv(tmp_path / "veto_rule.csv", index=False)
    with pytest.raises(ValueError, match=r"veto_rule.csv: missing column\(s\) \['gap hi'\]; rerun benchmarks/veto_rule.py"):
        privacy_tables.load_veto_rule(cfg)


def test_reliability_reports_the_committee_as_the_filter_veto(world):
    train, heldout = world["train"], world["heldout"]
    cand = planted_candidates(train, heldout, seed=1, n=40)
    perfect = flt.verifier_defender_fn(world["auditor"], train.tensor(), patient_ids=train.patient_ids)
    never = lambda s, x: np.zeros(len(s))  # noqa: E731
    members = {"never": (never, 0.5), "oracle": (perfect, 0.5)}
    table = veto_reliability(cand, members, committee=flt.committee_defender_fn(list(members.values())))
    assert (table["vetoed (never)"] == 0).all()
    assert table.loc["copy of the source", "vetoed (the filter: committee)"] == 1.0   # the oracle's flags count
    assert (table["vetoed (the filter: committee)"] == table["vetoed (oracle)"]).all()
    assert privacy_tables.filter_veto_column(table) == "vetoed (the filter: committee)"
    assert privacy_tables.filter_veto_column(table.drop(columns="vetoed (the filter: committee)")) == "vetoed (never)"


def test_the_audit_keeps_its_copy_ratio_through_the_release_directory(tmp_path):
    from trichotomy_lib.privacy.release import load_audit_dir, make_release, save_release

    train = make_population("tr", 6, 1)
    res = flt.run_filter(np.arange(4), lambda s, seeds, g: torch.zeros(len(s), 1, 16, 16),
                         lambda s, x: np.full(len(s), 0.9), lambda x: np.full((len(x), 8), 0.5), np.full((6, 8), 0.5),
                         {"k": 2, "round_size": 2, "min_survivors": 1, "keep": 1, "max_attempts": 1}, stream=1, progress=False,
                         copy_fn=lambda x: np.full(len(x), 2.0))
    assert (res.audit.decision == "skipped_source").sum() == 4     # every candidate vetoed by the defender
    images, src, rank = res.select(0)
    save_release(tmp_path / "r", make_release("r", images, src, train, rank), src, res.audit)
    audit = load_audit_dir(tmp_path / "r")
    assert audit["copy_ratio"].dtype == float and audit["copy_ratio"].isna().sum() == 4   # skipped rows: NaN
    assert (audit.loc[audit.candidate >= 0, "copy_ratio"] == 2.0).all()


def test_noisy_conditions_keep_the_norm_and_blur_with_sigma():
    from trichotomy_lib.privacy.generation import noisy_conditions

    e = np.random.default_rng(0).normal(size=(20, 16)).astype(np.float32)
    e = e / np.linalg.norm(e, axis=1, keepdims=True) * 4.0
    assert noisy_conditions(e, 0.0, 1) is not None and np.array_equal(noisy_conditions(e, 0.0, 1), e)
    cos = []
    for sigma in (0.5, 1.0, 2.0):
        c = noisy_conditions(e, sigma, 1)
        np.testing.assert_allclose(np.linalg.norm(c, axis=1), 4.0, rtol=1e-5)
        assert np.array_equal(c[:5], noisy_conditions(e[:5], sigma, 1))   # one stream per source: subset-stable
        cos.append(float(np.mean(np.sum(c * e, axis=1)) / 16))
    assert cos[0] > cos[1] > cos[2] > 0


def test_identity_veto_flags_any_training_patient_the_verifier_recognises_and_passes_unseen_patients(world):
    """Rule (1) in the verdict space (2): −log P(same) to the best-matching training image."""
    train, heldout = world["train"], make_population("un", 200, 9)
    verifier = OracleVerifier([train, heldout])
    space = VerdictSpace(verifier)
    veto = CopyVeto({"defender": space}, train.tensor(), train.patient_ids, quantile=0.05)
    own = float(torch.nn.functional.softplus(-torch.tensor(1.0)))  # a scan of the same patient: logit = bias 1
    lpo = veto.leave_patient_out["defender"]
    assert lpo.shape == (len(train),) and lpo.min() > own + 1       # never the own patient's other scans
    assert (veto.ratio(noised(train, 0.01, 0)[0].tensor()) < 1).mean() > 0.95   # new scans of training patients
    assert (veto.ratio(heldout.tensor()) >= 1).mean() > 0.75                   # patients never trained on
    e = space.features(heldout.tensor())
    exact = torch.nn.functional.softplus(-verifier.score_matrix(e, veto.train["defender"]).max(1).values.double())
    np.testing.assert_allclose(veto.distances(heldout.tensor())["defender"], exact.numpy(), rtol=1e-6)


def test_copy_veto_quantiles_per_space():
    train = make_population("tr", 30, 5)
    pixels = lambda x: x.flatten(1)  # noqa: E731
    both = CopyVeto({"pixels": pixels, "defender": VerdictSpace(OracleVerifier([train]))}, train.tensor(),
                    train.patient_ids, quantile={"pixels": 0.05, "defender": 0.2})
    for name, q in (("pixels", 0.05), ("defender", 0.2)):
        assert both.thresholds[name] == pytest.approx(np.quantile(both.leave_patient_out[name], q))
    with pytest.raises(ValueError, match="quantiles given"):
        CopyVeto({"pixels": pixels}, train.tensor(), train.patient_ids, quantile={"defender": 0.1})
    with pytest.raises(ValueError, match="'defender' must be in"):
        CopyVeto({"defender": VerdictSpace(OracleVerifier([train]))}, train.tensor(), train.patient_ids, quantile=0.6)
    with pytest.raises(ValueError, match="identity_quantile"):
        flt.check_filter_params({"identity_quantile": 0.7})


def test_the_filters_copy_veto_has_a_verdict_space_per_defender(monkeypatch):
    """``stages.generate.copy_veto``: the near-copy spaces at ``copy_quantile``, one identity space per
    defender of the committee at ``identity_quantile``; each rule can be left out; None when both are off."""
    from types import SimpleNamespace

    from trichotomy_lib.stages import generate

    train = make_population("tr", 30, 5)
    members = [OracleVerifier([train]), OracleVerifier([train], bias=0.5)]
    monkeypatch.setattr(generate, "committee", lambda pipe: members)
    monkeypatch.setattr(generate, "load_encoder", lambda pipe: SimpleNamespace(embed=lambda x: x.flatten(1)[:, :8]))

    def pipe(copy_q, identity_q):
        return SimpleNamespace(cfg={"generate": {"filter": {"copy_quantile": copy_q, "identity_quantile": identity_q,
                                                            "copy_spaces": ["pixels", "encoder"]}}})

    both = generate.copy_veto(pipe(0.05, 0.1), train)
    assert both.quantile == {"pixels": 0.05, "encoder": 0.05, "defender": 0.1, "defender_2": 0.1}
    assert isinstance(both.spaces["defender_2"], VerdictSpace) and both.spaces["defender_2"].verifier is members[1]
    assert set(generate.copy_veto(pipe(0.05, 0.1), train, identity=False).spaces) == {"pixels", "encoder"}
    assert set(generate.copy_veto(pipe(0.05, 0.1), train, near_copy=False).spaces) == {"defender", "defender_2"}
    assert set(generate.copy_veto(pipe(None, 0.1), train).spaces) == {"defender", "defender_2"}
    assert generate.copy_veto(pipe(None, None), train) is None
    assert generate.copy_veto(pipe(0.05, 0.1), train, identity=False, near_copy=False) is None


def test_attack_summary_names_the_strongest_and_every_attacker():
    from trichotomy_lib.privacy.attack import attack_summary

    r = {"strongest_attacker": "pixels_ball", "strongest_risk": 0.1, "strongest_risk_hi": 0.2, "ball_risk": 0.05,
         "pixels_ball_risk": 0.1, "unrelated": 1.0}
    assert attack_summary(r) == {"strongest": "pixels_ball", "strongest risk": 0.1, "strongest upper bound": 0.2,
                                 "ball risk": 0.05, "pixels_ball risk": 0.1}
