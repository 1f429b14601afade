"""Utility rows: train-on-X / test-on-real logic with tiny stand-ins (no pipeline, no data stage)."""

import numpy as np
import pandas as pd
import pytest

from trichotomy_lib.config import ConfigError
from trichotomy_lib.data.imageset import LABELS, ImageSet
from trichotomy_lib.evaluation.sweep import pareto_front, sweep_config
from trichotomy_lib.evaluation.utility import (UTILITY_DEFAULTS, cross_table, train_and_predict, training_config,
                                               utility_config, utility_row, utility_table)

TINY = {"width": 4, "depth": 2, "epochs": 3, "batch_size": 32, "lr": 0.01, "n_boot": 50}


def blob_set(n: int, seed: int, noise: float = 20.0) -> ImageSet:
    """16×16 images; finding k = a bright 4×4 square at a position of its own (learnable)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((n, 8), np.uint8)
    labels[np.arange(n), rng.integers(0, 8, n)] = 1
    images = rng.normal(60, noise, (n, 16, 16))
    for i, k in enumerate(labels.argmax(1)):
        r, c = divmod(int(k), 4)
        images[i, 2 + 6 * (r % 2): 6 + 6 * (r % 2), 4 * c: 4 * c + 4] += 150
    images = np.clip(images, 0, 255).astype(np.uint8)
    pids = np.array([f"p{i // 2:04d}" for i in range(n)])
    return ImageSet(images, labels, pids, np.array([f"{p}/s{i}" for i, p in enumerate(pids)]))


def test_train_and_predict_learns_and_beats_noise():
    train, val, test = blob_set(160, 0), blob_set(48, 1), blob_set(96, 2)
    clf, probs = train_and_predict(train, val, test, training_config(TINY, {}), seed=3, progress=False)
    assert probs.shape == (96, 8) and probs.dtype == np.float32
    row = utility_row(test.labels, probs, None, n_boot=50, seed=0)
    assert row["auroc"]["mean"] > 0.7                      # the task is learnable from 160 images
    # a "release" of pure noise with the same labels is worse than real data: Δ < 0
    noise = ImageSet(np.random.default_rng(5).integers(0, 255, train.images.shape, dtype=np.uint8),
                     train.labels, train.patient_ids, train.names)
    _, noise_probs = train_and_predict(noise, val, test, training_config(TINY, {}), seed=3, progress=False)
    bad = utility_row(test.labels, noise_probs, probs, n_boot=200, seed=0)
    assert bad["diff_points"] < 0 and bad["diff_hi"] < 0


def test_difference_ci_sign_and_real_row():
    rng = np.random.default_rng(0)
    y = np.zeros((300, 8), np.uint8)
    y[np.arange(300), rng.integers(0, 8, 300)] = 1
    good = y + rng.normal(0, 0.3, y.shape)
    poor = y + rng.normal(0, 1.5, y.shape)
    up = utility_row(y, good, poor, n_boot=300, seed=1)
    down = utility_row(y, poor, good, n_boot=300, seed=1)
    assert up["diff_lo"] > 0 and down["diff_hi"] < 0       # CI sign follows which is better
    assert up["diff_points"] == pytest.approx(-down["diff_points"])
    assert up["diff_points"] == pytest.approx(100 * (up["auroc"]["mean"] - down["auroc"]["mean"]))
    real = utility_row(y, poor, None, n_boot=50, seed=1)
    assert (real["diff_points"], real["diff_lo"], real["diff_hi"]) == (0.0, 0.0, 0.0)
    assert set(real["auroc"]) == set(LABELS) | {"mean"}
    table = utility_table({"real": real, "syn": up}, {"real": "real data"}, {"real": 300, "syn": 300})
    assert list(table.index) == ["real data", "syn"]
    assert table.loc["real data", "Δ to real (points)"] == "0 (reference)"
    assert table.loc["syn", "Δ to real (points)"].startswith("+")
    with pytest.raises(ValueError, match="on the same"):
        utility_row(y, good[:, :7])


def test_configs_reject_typos_and_merge_overrides():
    cfg = {"classifier": {"width": 8, "augment": {"rotate": 2.0}}, "utility": {"classifier": {"epochs": 2}}}
    u = utility_config(cfg)
    assert u["releases"] == UTILITY_DEFAULTS["releases"] and u["readme"] is False
    merged = training_config(cfg["classifier"], u["classifier"])
    assert (merged["width"], merged["epochs"], merged["augment"]["rotate"]) == (8, 2, 2.0)
    assert merged["augment"]["translate"] == 0.06          # augment merged key by key
    with pytest.raises(ConfigError, match="utility.relases"):
        utility_config({"utility": {"relases": []}})
    with pytest.raises(ConfigError, match="utility.releases"):
        utility_config({"utility": {"releases": ["nope"]}})
    with pytest.raises(ConfigError, match="classifier"):
        utility_config({"utility": {"classifier": {"epoch": 2}}})
    with pytest.raises(ConfigError, match="sweep.guidances"):
        sweep_config({"sweep": {"guidances": []}})
    assert sweep_config({"sweep": {"guidances": [1, 1.4]}})["guidances"] == [1.0, 1.4]


def test_cross_table_layout_and_pareto():
    t = cross_table({"a": {"a": 0.9, "b": 0.8}, "b": {"a": 0.7, "b": 0.85}})
    assert t.loc["a", "b"] == pytest.approx(80.0) and t.loc["b", "a"] == pytest.approx(70.0)
    df = pd.DataFrame({"fd": [1.0, 2.0, 3.0], "auroc": [0.8, 0.9, 0.85]}, index=[0.7, 1.0, 1.4])
    front = pareto_front(df, minimise=("fd",), maximise=("auroc",))
    assert front.tolist() == [True, True, False]            # 1.4 is dominated by 1.0


def test_cross_site_mapping_replaces_default():
    u = utility_config({"utility": {"cross_site": {"x": {"site": "b"}}}})
    assert u["cross_site"] == {"x": {"site": "b"}}
    assert utility_config({"utility": {"cross_site": {}}})["cross_site"] == {}


def test_budget_fit_extrapolates_the_measured_line_and_refuses_a_flat_one(tmp_path):
    import pandas as pd

    from trichotomy_lib.analysis.utility import budget_fit, load_generator_budget

    steps = np.array([1000, 2000, 4000, 8000])
    rising = pd.DataFrame({"lever": "steps", "value": steps.astype(str), "steps": steps, "release": "A",
                           "mean_auroc": 70.0, "real_auroc": 80.0, "delta": -10 + 2 * np.log2(steps / 1000),
                           "delta_lo": -12.0, "delta_hi": 0.0, "diffusion_seconds": steps * 0.5})
    falling = rising.assign(release="B", delta=-10 - np.log2(steps / 1000))
    guidance = rising.iloc[:1].assign(lever="guidance", release="A", delta=50.0)  # not a budget point
    fit = budget_fit(pd.concat([rising, falling, guidance])).set_index("release")
    assert fit.loc["A", "Δ per doubling of steps (points)"] == pytest.approx(2.0)
    reach = fit.loc["A", "steps where the line reaches Δ = −1 (extrapolated)"]
    assert reach == pytest.approx(1000 * 2 ** 4.5, rel=1e-3)
    assert fit.loc["A", "denoiser hours at the measured s/step"] == pytest.approx(reach * 0.5 / 3600, abs=0.05)
    assert pd.isna(fit.loc["B", "steps where the line reaches Δ = −1 (extrapolated)"])
    assert fit.loc["A", "budget points"] == 4
    assert fit.loc["A", "Δ per doubling over the last two points"] == pytest.approx(2.0)
    flattening = rising.assign(release="C", delta=[-20.0, -14.0, -13.0, -12.5])
    last = budget_fit(flattening).set_index("release").loc["C"]
    assert last["Δ per doubling over the last two points"] == pytest.approx(0.5)
    assert last["Δ per doubling of steps (points)"] > 2

    cfg = {"figures_dir": str(tmp_path), "profile": "x"}
    assert load_generator_budget(cfg) is None
    rising.drop(columns="delta").to_csv(tmp_path / "generator_budget.csv", index=False)
    with pytest.raises(ValueError, match=r"generator_budget.csv: missing column\(s\) \['delta'\]"):
        load_generator_budget(cfg)


def test_data_fit_extrapolates_over_patients_unsorted_and_reads_the_real_rows_own_gain(tmp_path):
    import pandas as pd

    from trichotomy_lib.analysis.utility import data_fit, load_data_scale

    patients = np.array([1000, 250, 500])   # the fit must not depend on the rows' order
    closing = pd.DataFrame({"series": "steps", "patients": patients, "train_images": 2 * patients, "steps": 3000,
                            "release": "A", "seeds": 2,
                            "mean_auroc": 70.0, "real_auroc": 80 + 1.5 * np.log2(patients / 250),
                            "delta": -12 + 3 * np.log2(patients / 250), "delta_lo": -14.0, "delta_hi": -1.0})
    widening = closing.assign(release="B", delta=[-12.0, -10.0, -11.0])   # 250: -10, 500: -11, 1000: -12
    # the same release in another series is another line: here a flat one
    other_series = closing.assign(series="epochs", delta=-12.0)
    fit = data_fit(pd.concat([closing, widening, other_series, closing.iloc[:1].assign(release="one point")]))
    assert fit.loc[fit["series"] == "epochs", "Δ per doubling of patients (points)"].tolist() == [pytest.approx(0.0, abs=1e-9)]
    fit = fit[fit["series"] == "steps"].set_index("release")
    assert "one point" not in fit.index
    assert fit.loc["A", "Δ per doubling of patients (points)"] == pytest.approx(3.0)
    assert fit.loc["A", "Δ per doubling over the last two points"] == pytest.approx(3.0)
    assert fit.loc["A", "patients where the line reaches Δ = −1 (extrapolated)"] == pytest.approx(250 * 2 ** (11 / 3), rel=1e-3)
    assert fit.loc["A", "real row per doubling (points)"] == pytest.approx(1.5)
    assert fit.loc["B", "Δ per doubling of patients (points)"] == pytest.approx(-1.0)
    assert fit.loc["B", "Δ per doubling over the last two points"] == pytest.approx(-1.0)
    assert pd.isna(fit.loc["B", "patients where the line reaches Δ = −1 (extrapolated)"])

    cfg = {"figures_dir": str(tmp_path), "profile": "x"}
    assert load_data_scale(cfg) is None
    closing.to_csv(tmp_path / "data_scale.csv", index=False)
    assert load_data_scale(cfg)["patients"].tolist() == [1000, 250, 500]
    closing.drop(columns="real_auroc").to_csv(tmp_path / "data_scale.csv", index=False)
    with pytest.raises(ValueError, match=r"data_scale.csv: missing column\(s\) \['real_auroc'\]"):
        load_data_scale(cfg)


def test_gap_decomposition_splits_the_gap_into_images_and_label_noise(tmp_path):
    """gap = real − release with the carried labels; images = real − release when both learn the
    teacher's outputs; label noise = the rest. Round trip through the benchmark's CSV."""
    from trichotomy_lib.analysis.utility import gap_decomposition, load_utility_gap

    table = pd.DataFrame({"training set": ["real data", "A", "B"], "labels": [86.0, 70.0, 74.0],
                          "teacher": [85.0, 82.0, 80.0], "seeds": 2,
                          "teacher reads the labels (AUROC)": [97.0, 75.0, 80.0]}).set_index("training set")
    parts = gap_decomposition(table)
    assert list(parts.index) == ["A", "B"]
    assert parts.loc["A"].tolist() == pytest.approx([16.0, 3.0, 13.0])
    assert parts.loc["B"].tolist() == pytest.approx([12.0, 5.0, 7.0])
    with pytest.raises(ValueError, match="no 'real data' row"):
        gap_decomposition(table.drop(index="real data"))

    cfg = {"figures_dir": str(tmp_path), "profile": "x"}
    assert load_utility_gap(cfg) is None
    table.to_csv(tmp_path / "utility_gap.csv")
    assert load_utility_gap(cfg).equals(table)
    table.drop(columns="teacher").to_csv(tmp_path / "utility_gap.csv")
    with pytest.raises(ValueError, match=r"utility_gap.csv: missing column\(s\) \['teacher'\]"):
        load_utility_gap(cfg)


def test_load_label_guidance_round_trips_the_benchmark_csv(tmp_path):
    from trichotomy_lib.analysis.utility import load_label_guidance

    cfg = {"figures_dir": str(tmp_path), "profile": "x"}
    assert load_label_guidance(cfg) is None
    table = pd.DataFrame({"generator": ["DiADM", "DiADM", "EDM class-conditional"], "guidance": ["w_y=w", "w_y=8", "w=4"],
                          "scale": [1.4, 8.0, 4.0], "teacher reads the labels": [67.6, 90.1, 93.0],
                          "val mean AUROC": [70.3, 76.2, 73.3]})
    table.to_csv(tmp_path / "label_guidance.csv", index=False)
    loaded = load_label_guidance(cfg)
    assert loaded.index.names == ["generator", "guidance"]
    assert loaded.loc[("DiADM", "w_y=8"), "val mean AUROC"] == 76.2 and len(loaded) == 3
    table.drop(columns="scale").to_csv(tmp_path / "label_guidance.csv", index=False)
    with pytest.raises(ValueError, match=r"label_guidance.csv: missing column\(s\) \['scale'\]"):
        load_label_guidance(cfg)


def test_equal_steps_scales_a_release_rows_epochs_to_the_real_splits_steps(tmp_path):
    from trichotomy_lib import config, pipeline
    from trichotomy_lib.evaluation.utility import equal_step_epochs
    from trichotomy_lib.stages.utility import row_recipe

    # 20 epochs of the 1,063 real images: a 4x release trains 5, a 2x one 10, an equal one 20
    assert [equal_step_epochs(20, 1063, n) for n in (4153, 2105, 1061, 300)] == [5, 10, 20, 71]
    assert equal_step_epochs(3, 10, 1000) == 1                      # never below one epoch
    with pytest.raises(ValueError, match="n_train"):
        equal_step_epochs(20, 1063, 0)
    with pytest.raises(ConfigError, match="utility.equal_steps"):
        utility_config({"utility": {"equal_steps": "yes"}})
    assert UTILITY_DEFAULTS["equal_steps"] is False                 # the paper's: every row the same epochs

    cfg = {"classifier": {"epochs": 20}, "utility": utility_config({"utility": {"equal_steps": True}})}
    assert row_recipe(cfg, 4153, 1063)["epochs"] == 5
    assert row_recipe(cfg, 4153, 1063)["lr"] == row_recipe(cfg, 1063, 1063)["lr"]   # only the epochs change
    cfg["utility"]["equal_steps"] = False
    assert row_recipe(cfg, 4153, 1063)["epochs"] == 20

    # the setting is part of every release row's cache key, not of the real row's
    base = config.resolve("smoke")
    one, other = (pipeline.Pipeline({**base, "utility": {**base["utility"], "equal_steps": flag}}, run_dir=tmp_path)
                  for flag in (False, True))
    assert one.key("utility_diadm_filter_4") != other.key("utility_diadm_filter_4")
    assert one.key("utility_real") == other.key("utility_real")
