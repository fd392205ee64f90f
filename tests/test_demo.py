"""The demo runner: registry specs in, per-coordinate variances out (the README's first taste)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import estimators
from estimators.testing import bonferroni_z
from experiments import _config, demo

COST = lambda x: jnp.sum(jnp.square(x))  # noqa: E731
NORMAL = lambda p: estimators.Normal(p["loc"], p["scale"])  # noqa: E731


def _params(dim):
    return {"loc": jnp.full((dim,), 1.0), "scale": jnp.full((dim,), 1.0)}


def _dim_keys(config):
    """The demo's keys: one per D, split in turn from the seed's key."""
    key, out = jax.random.key(config.seed), []
    for _ in config.dims:
        key, sub = jax.random.split(key)
        out.append(sub)
    return out


def _config_for(**overrides):
    config = _config.load_config("demo")
    config.dims = (1, 3)
    config.num_samples = 2000
    for k, v in overrides.items():
        setattr(config, k, v)
    return config


def test_demo_rows_are_the_estimators_variances_on_the_same_keys(tmp_path):
    """Each row equals the variance of the functional estimator called with its D's key (one
    key per D, shared by every estimator), and the delta method makes a quadratic exact."""
    config = _config_for(estimators=("pathwise", "score_function+delta"))
    rows = demo.run(config, tmp_path)["rows"]
    keys = dict(zip(config.dims, _dim_keys(config), strict=True))
    for row in rows:
        if row["estimator"] == "score_function+delta":
            assert row["var_loc"] < 1e-8 and row["var_scale"] < 1e-8
            continue
        jac = estimators.pathwise(
            COST, _params(row["dim"]), NORMAL, keys[row["dim"]], num_samples=2000
        )
        for leaf in ("loc", "scale"):
            want = jnp.mean(jnp.var(jac[leaf], 0, ddof=1))
            np.testing.assert_allclose(row[f"var_{leaf}"], want, rtol=1e-5)
    assert (tmp_path / "results.json").is_file()


# Closed forms at loc = scale = 1, D = 1 (README, "How the tests check the estimators"):
# pathwise 4 s^2 and 4 m^2 + 8 s^2; score function m^4/s^2 + 14 m^2 + 15 s^2 and
# 2 m^4/s^2 + 60 m^2 + 74 s^2.
EXACT_D1 = {"pathwise": (4.0, 12.0), "score_function": (30.0, 136.0)}


def _within(rows, exact, z):
    return [
        abs(r[f"var_{leaf}"] - exact[r["estimator"]][i]) <= z * r[f"var_{leaf}_se"]
        for r in rows
        for i, leaf in enumerate(("loc", "scale"))
    ]


def test_demo_variances_match_closed_forms_within_their_standard_errors(tmp_path):
    """Within z = 4.2 (Bonferroni, 4 checks) standard errors; measured |err|/SE 0.1-0.4.
    Companion: the same check rejects variances 30% off (measured 30, 11, 6.2 and 2.6 SE: three
    of the four checks fail; at least the two pathwise ones must)."""
    config = _config_for(estimators=("pathwise", "score_function"), dims=(1,), num_samples=20000)
    rows = demo.run(config, tmp_path)["rows"]
    z = bonferroni_z(4)
    assert all(_within(rows, EXACT_D1, z)), rows
    wrong = {k: tuple(1.3 * v for v in vs) for k, vs in EXACT_D1.items()}
    assert sum(not ok for ok in _within(rows, wrong, z)) >= 2


@pytest.mark.parametrize(
    ("specs", "match"),
    [
        (("pathwse",), "did you mean 'pathwise'"),
        (("score_function+loo",), "not a per-sample estimator"),
        (("iwae",), "not a per-sample estimator"),
        ((), "non-empty tuple"),
    ],
)
def test_demo_names_a_bad_estimator_before_running(specs, match):
    with pytest.raises(ValueError, match=match):
        demo.validate(_config_for(estimators=specs))
