"""The BLR configs (fig8, fig9, fig11, fig12) at a tiny size, redrawing, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

import experiments
from experiments import blr

# N = 50 as in the paper: with a handful of samples the score function diverges in 20 steps.
TINY = ["steps=20", "eval_every=10", "num_seeds=2", "eval_samples=16", "num_samples=50"]
# The cheapest variants to compile (one compile per variant and sweep value); every variant's
# gradient is tested in test_blr_model.py and runs through the runner in the slow test below.
CASES = {
    "fig8": TINY + ["variance_samples=8"],
    "fig9": TINY
    + [
        "variance_samples=8",
        "variants=('score_function_moving_average',)",
        "figures=('fig9',)",  # fig8 (drawn from the fig9 run too) needs two more variants
    ],
    "fig11": TINY + ["variants=('score_function',)", "sweep_values=(3,)"],
    "fig12": TINY + ["variants=('pathwise',)", "sweep_values=(8, 569)"],
}


def tiny_config(name: str, extra: list[str] = ()):
    config = experiments.load_config(name)
    experiments.apply_overrides(config, CASES[name] + list(extra))
    return config


@pytest.mark.parametrize("name", sorted(CASES))
def test_config_smoke(name, tmp_path):
    config = tiny_config(name)
    workdir = tmp_path / name
    summary = experiments.run_experiment(config, workdir)
    assert {"config.json", "run_info.json", "results.npz", "summary.json"} <= {
        p.name for p in workdir.iterdir()
    }
    for fig in config.figures:
        assert (workdir / f"{fig}.png").stat().st_size > 0
        assert (workdir / f"{fig}.pdf").stat().st_size > 0
    _, arrays = blr.load_results(workdir)
    values = config.sweep_values if config.sweep else [None]
    for variant in config.variants:
        for value in values:
            tag = variant if value is None else f"{variant}/{config.sweep}={value}"
            assert arrays[f"{tag}/elbo"].shape == (2, 2)
            finite = np.isfinite(arrays[f"{tag}/elbo"]).all(axis=1)
            if not config.allow_divergence:
                assert finite.all()
            if config.variance_samples:
                assert arrays[f"{tag}/var_log_scale"].shape == (2, 2, 31)
                assert (arrays[f"{tag}/var_log_scale"] > 0).all()
    assert set(json.loads((workdir / "summary.json").read_text())["variants"]) == set(
        config.variants
    )
    assert summary["timings"]["total_s"] > 0
    if name == "fig8":  # plot() redraws from the saved numbers alone
        for fig in config.figures:
            (workdir / f"{fig}.png").unlink()
        paths = experiments.redraw(workdir)
        assert {p.name for p in paths} == {"fig8.png", "fig8.pdf"}


@pytest.mark.slow
def test_all_variants_through_runner(tmp_path):
    """All six variants, tiny, through the fig9 config (six compiles: opt in with -m slow)."""
    config = experiments.load_config("fig9")
    experiments.apply_overrides(
        config, TINY + ["variance_samples=8", "measure_valued_variance_samples=4"]
    )
    experiments.run_experiment(config, tmp_path / "run")
    _, arrays = blr.load_results(tmp_path / "run")
    for variant in config.variants:
        assert np.isfinite(arrays[f"{variant}/elbo"]).all()
        assert (arrays[f"{variant}/var_loc"] > 0).all()
    assert (tmp_path / "run" / "fig8.png").exists() and (tmp_path / "run" / "fig9.png").exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ("variants=('pathwise', 'reinforce')", "unknown variant"),
        ("learning_rate=0.0", "learning_rate"),
        ("learning_rate=-1e-3", "learning_rate"),
        ("batch_size=570", "batch_size"),
        ("batch_size=0", "batch_size"),
        ("num_samples=0", "num_samples"),
        ("eval_every=7", "eval_every"),
        ("variance_samples=1", "variance_samples"),
        ("moving_average_decay=1.0", "moving_average_decay"),
        ("figures=('fig10',)", "unknown figure"),
        ("figures=('fig11',)", "needs config.sweep"),
        ("variants=('pathwise',)", "fig8 needs"),
    ],
)
def test_bad_values_rejected_before_writing(override, message, tmp_path):
    config = experiments.load_config("fig9")
    experiments.apply_overrides(config, [override])
    with pytest.raises(ValueError, match=message):
        experiments.run_experiment(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    assert list(tmp_path.iterdir()) == []


def test_bad_sweep_values_rejected():
    config = experiments.load_config("fig12")
    experiments.apply_overrides(config, ["sweep_values=(32, 1000)"])
    with pytest.raises(ValueError, match="sweep_values"):
        blr.validate(config)


def test_unknown_key_rejected():
    config = experiments.load_config("fig9")
    with pytest.raises(experiments.ConfigError, match="unknown config key"):
        experiments.apply_overrides(config, ["num_sample=10"])


def test_divergence_is_a_clear_error_and_leaves_earlier_results(tmp_path):
    """A run whose training diverges (absurd learning rate) names the problem, writes nothing."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "keep.txt").write_text("earlier results")
    config = tiny_config(
        "fig8",
        ["variants=('pathwise',)", "figures=()", "learning_rate=1e30", "allow_divergence=False"],
    )
    with pytest.raises(ValueError, match="NaN or inf"):
        experiments.run_experiment(config, workdir, overwrite=True)
    assert (workdir / "keep.txt").read_text() == "earlier results"
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_corrupt_results_clear_error(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    config = tiny_config("fig8")
    (workdir / "config.json").write_text(json.dumps(json.loads(config.to_json())))
    (workdir / "results.npz").write_bytes(b"not a zip file")
    with pytest.raises(experiments.WorkdirError, match="corrupt"):
        experiments.redraw(workdir)


def test_allowed_divergence_is_recorded_and_drawn(tmp_path):
    """With allow_divergence (fig9's default), diverged seeds are NaN, named, and the figure is
    still drawn from the seeds that remain."""
    config = tiny_config("fig9", ["variants=('pathwise',)", "learning_rate=1e30"])
    assert config.allow_divergence
    workdir = tmp_path / "run"
    experiments.run_experiment(config, workdir)
    _, arrays = blr.load_results(workdir)
    assert not np.isfinite(arrays["pathwise/elbo"]).any()
    summary = json.loads((workdir / "summary.json").read_text())
    assert "[0, 1]" in json.dumps(summary)  # both seeds named as diverged
    assert (workdir / "fig9.png").stat().st_size > 0
