"""The demo runner: registry specs in, per-coordinate variances out (the README's first taste)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import estimators
from experiments import _config, demo


def _config_for(**overrides):
    config = _config.load_config("demo")
    config.dims = (1, 3)
    config.num_samples = 2000
    for k, v in overrides.items():
        setattr(config, k, v)
    return config


def test_demo_rows_are_the_estimators_variances_on_the_same_keys(tmp_path):
    """Each row equals the variance of the functional estimator called with the row's key."""
    config = _config_for(estimators=("pathwise", "score_function+delta"))
    rows = demo.run(config, tmp_path)["rows"]
    key = jax.random.key(config.seed)
    calls = {"pathwise": estimators.pathwise, "score_function+delta": None}
    for row in rows:
        key, sub = jax.random.split(key)
        dim = row["dim"]
        params = {"loc": jnp.full((dim,), 1.0), "scale": jnp.full((dim,), 1.0)}
        normal = lambda p: estimators.Normal(p["loc"], p["scale"])  # noqa: E731
        cost = lambda x: jnp.sum(jnp.square(x))  # noqa: E731
        if calls[row["estimator"]] is None:  # the delta method makes a quadratic exact
            assert row["var_loc"] < 1e-8 and row["var_scale"] < 1e-8
            continue
        jac = calls[row["estimator"]](cost, params, normal, sub, num_samples=2000)
        np.testing.assert_allclose(row["var_loc"], jnp.mean(jnp.var(jac["loc"], 0)), rtol=1e-5)
        np.testing.assert_allclose(row["var_scale"], jnp.mean(jnp.var(jac["scale"], 0)), rtol=1e-5)
    assert (tmp_path / "results.json").is_file()


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
