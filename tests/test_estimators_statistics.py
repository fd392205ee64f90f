"""Statistical battery: every estimator x distribution pair against closed-form mathematics.

* Unbiasedness. For each estimator x distribution pair, cost and parameter setting, ONE call
  gives per-sample estimates, hence the mean and its standard error; the exact gradient is
  ``jax.grad`` of the closed-form expectation (tests/_closed_forms.py), an independent
  computation. Every gradient coordinate is one check; each test asserts all its checks with one
  Bonferroni-corrected z (``_closed_forms.ALPHA``).
* Power. Every battery has companions that run the SAME checks (same z, samples and keys) on
  biased estimates: ``test_battery_detects_rescale`` (a uniform rescale, power computed from
  the measured SEs) and ``test_battery_rejects_realistic_bug`` (the estimator with a realistic
  bug: the implicit-reparameterisation term dropped, the score of an unnormalised density;
  power measured over the 20 seeds).
* Single-sample variances for f = x^2 under N(mu, sigma^2) against their closed forms.
* Implicit reparameterisation (Gamma, Beta, Dirichlet): pathwise d E[x] / d params against
  central finite differences of the closed-form means.

The default run holds the Normal batteries and the single-sample variances (seed 0); the
other families, the realistic-bug companions and the finite differences run with ``-m slow``
(every estimator x family pair of the registry is checked by default, on one problem each, in
tests/test_conformance.py), which also repeats everything for 20 seeds.
Each estimator x family is ONE jitted program (settings and costs are vmapped), compiled once
and shared by the tests through a small cache, to keep the default run short.
"""

from __future__ import annotations

import dataclasses
import functools
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import estimators
from tests import _closed_forms as cf

ESTIMATORS = {"pathwise": estimators.pathwise, "score_function": estimators.score_function}
SEEDS = list(range(20))

# --------------------------------------------------------------------------------------------
# Realistic bugs, for the companion tests: the same battery (same costs, settings, keys, sample
# sizes, hence the same checks and Bonferroni z) run with a wrongly built estimator.
#   "no_implicit":  pathwise with the sample treated as constant in one parameter, i.e. the
#                   implicit-reparameterisation term dropped (Normal: the scale; Gamma: the
#                   concentration; Beta: a; Dirichlet: the first concentration of each simplex).
#   "unnormalised": score function of the unnormalised log-density, i.e. the gradient of the
#                   log-normaliser A(theta) dropped from the score; biased by E[f] grad A.
# (A baseline that includes its own sample is biased by -g / N only, sqrt(N) times below one
# SE, so no statistical battery can see it: tests/test_baselines.py checks it exactly.)
# --------------------------------------------------------------------------------------------

BUGS = {"pathwise": "no_implicit", "score_function": "unnormalised"}


def log_normaliser(family: str, p) -> jax.Array:
    """A(theta) with log p(x) = (terms in x) - A(theta), summed over the event; ``[]``."""
    if family == "Normal":
        return jnp.sum(jnp.log(p["scale"])) if "scale" in p else jnp.sum(p["log_scale"])
    if family == "Gamma":
        a, b = p["concentration"], p["rate"]
        return jnp.sum(jax.scipy.special.gammaln(a) - a * jnp.log(b))
    if family == "Beta":
        a, b = p["a"], p["b"]
        gl = jax.scipy.special.gammaln
        return jnp.sum(gl(a) + gl(b) - gl(a + b))
    if family == "Dirichlet":
        a = p["concentration"]
        gl = jax.scipy.special.gammaln
        return jnp.sum(gl(a)) - jnp.sum(gl(jnp.sum(a, axis=-1)))
    if family == "Bernoulli":
        return jnp.sum(jax.nn.softplus(p))
    if family == "Categorical":
        return jnp.sum(jax.nn.logsumexp(p, axis=-1))
    raise ValueError(family)


class _Unnormalised:
    """The distribution with log_prob + A - sg(A): same values and samples, score minus grad A."""

    def __init__(self, dist, log_norm: jax.Array):
        self.dist, self.log_norm = dist, log_norm

    def log_prob(self, x: jax.Array) -> jax.Array:
        return self.dist.log_prob(x) + self.log_norm - jax.lax.stop_gradient(self.log_norm)

    def __getattr__(self, name: str):  # sample, standard_noise, from_noise, event_shape, ...
        return getattr(self.dist, name)


def _constant_in(family: str, p: dict) -> dict:
    """The parameters with the one the sample is treated as constant in stopped."""
    sg = jax.lax.stop_gradient
    if family == "Normal":
        return {k: (v if k == "loc" else sg(v)) for k, v in p.items()}
    if family == "Gamma":
        return {**p, "concentration": sg(p["concentration"])}
    if family == "Beta":
        return {**p, "a": sg(p["a"])}
    c = p["concentration"]
    first = jnp.broadcast_to(jnp.arange(c.shape[-1]) == 0, c.shape)
    return {"concentration": jnp.where(first, sg(c), c)}


def bugged(build, family: str, bug: str | None):
    """``build`` (params -> distribution) with ``bug`` applied; ``None`` leaves it correct."""
    if bug is None:
        return build
    if bug == "no_implicit":
        return lambda p: build(_constant_in(family, p))
    if bug == "unnormalised":
        return lambda p: _Unnormalised(build(p), log_normaliser(family, p))
    raise ValueError(bug)


# The battery programs are large (several samplers, vmapped over costs and settings) and run
# once, so compile time dominates: LLVM optimisation level 1 compiles them ~30% faster than the
# default level 2 with the same run time. It changes no semantics (jit == eager is tested with
# the defaults in test_estimators_api.py).
battery_jit = partial(jax.jit, compiler_options={"xla_backend_optimization_level": 1})


def _summaries(jac, axis: int) -> dict:
    return {leaf: cf.summarize(v, axis) for leaf, v in jac.items()}


# --------------------------------------------------------------------------------------------
# Normal: 6 costs x dimensions {1, 3, 10} x (mu, sigma) settings x {loc, scale} and
# {loc, log_scale} parameters, for both estimators.
# --------------------------------------------------------------------------------------------

NORMAL_FORMS = {
    "scale": (
        lambda loc, scale: {"loc": loc, "scale": scale},
        lambda p: estimators.Normal(p["loc"], p["scale"]),
        lambda p: (p["loc"], p["scale"]),
    ),
    "log_scale": (
        lambda loc, scale: {"loc": loc, "log_scale": jnp.log(scale)},
        lambda p: estimators.Normal.from_log_scale(p["loc"], p["log_scale"]),
        lambda p: (p["loc"], jnp.exp(p["log_scale"])),
    ),
}
NORMAL_DIMS = (1, 3, 10)
# Samples per (cost, setting); the score function's variance is 10-100x the pathwise one's.
NORMAL_NUM_SAMPLES = {"pathwise": 20_000, "score_function": 50_000}
# (mu, sigma) for D = 1, also used by the variance test.
NORMAL_SETTINGS_1D = ((0.0, 1.0), (1.0, 1.0), (2.0, 0.5), (-1.5, 2.0), (0.5, 0.3))


def normal_problem(dim: int):
    """Fixed costs and settings: names, costs [6], locs [S, D], scales [S, D]."""
    rng = np.random.default_rng(1000 + dim)
    names, costs = cf.normal_costs(dim, rng)
    if dim == 1:
        locs, scales = np.array(NORMAL_SETTINGS_1D, np.float32).T[:, :, None]
    else:
        locs = np.stack(
            [np.zeros(dim), rng.normal(0.5, 1.0, dim), rng.choice([-1.0, 1.0], dim) * 1.5]
        ).astype(np.float32)
        scales = np.stack(
            [np.ones(dim), rng.uniform(0.5, 1.5, dim), rng.uniform(0.3, 0.6, dim)]
        ).astype(np.float32)
    return names, costs, locs, scales


def _normal_one_dim(key, costs, locs, scales, estimator, form, num_samples, bug=None):
    """Per-sample estimates [S, R, N, D] and exact gradients [S, R, D] for settings x costs."""
    to_params, build, loc_scale = NORMAL_FORMS[form]
    build = bugged(build, "Normal", bug)

    def one(k, c, loc, scale):
        params = to_params(loc, scale)
        jac = ESTIMATORS[estimator](
            partial(cf.generic_cost, c), params, build, k, num_samples=num_samples
        )
        exact = jax.grad(lambda p: cf.normal_expectation(c, *loc_scale(p)))(params)
        return jac, exact

    keys = jax.random.split(key, (locs.shape[0], costs["const"].shape[0]))
    over_costs = jax.vmap(one, in_axes=(0, 0, None, None))
    return jax.vmap(over_costs, in_axes=(0, None, 0, 0))(keys, costs, locs, scales)


@partial(battery_jit, static_argnames=("estimator", "num_samples", "bug"))
def normal_jacobians(key, problems, *, estimator, num_samples, bug=None):
    """All dimensions and parameterisations in one program (one compilation per estimator)."""
    out = {}
    for dim, (costs, locs, scales) in problems.items():
        for form in NORMAL_FORMS:
            key, sub = jax.random.split(key)
            out[dim, form] = _normal_one_dim(
                sub, costs, locs, scales, estimator, form, num_samples, bug
            )
    return out


@functools.lru_cache(maxsize=4)
def normal_results(seed: int, estimator: str, bug: str | None = None) -> dict:
    """Summaries {(dim, form): (names, {leaf: summary [S, R, D]}, {leaf: exact [S, R, D]})} and,
    under "square_1d", the per-sample estimates {leaf: [S, N]} for f = x^2, D = 1, (loc, scale)."""
    problems = {dim: normal_problem(dim) for dim in NORMAL_DIMS}
    key = jax.random.fold_in(jax.random.key(seed), list(ESTIMATORS).index(estimator))
    out = normal_jacobians(
        key,
        {dim: p[1:] for dim, p in problems.items()},
        estimator=estimator,
        num_samples=NORMAL_NUM_SAMPLES[estimator],
        bug=bug,
    )
    results = {}
    for (dim, form), (jac, exact) in out.items():
        names = problems[dim][0]
        results[dim, form] = (names, _summaries(jac, axis=2), jax.device_get(exact))
        if dim == 1 and form == "scale":
            r = names.index("square")
            results["square_1d"] = {k: np.asarray(v[:, r, :, 0]) for k, v in jac.items()}
    return results


def normal_battery(
    seed: int, estimator: str, scale: float = 1.0, bug: str | None = None
) -> cf.Checks:
    checks = cf.Checks()
    for key, value in normal_results(seed, estimator, bug).items():
        if key == "square_1d":
            continue
        (dim, form), (names, summary, exact) = key, value
        _add_settings(checks, f"{estimator} Normal D={dim} {form}", names, summary, exact, scale)
    return checks


def _add_settings(checks: cf.Checks, label: str, names, summary, exact, scale: float) -> None:
    """One check per (parameter leaf, setting i, cost r): ``summary[leaf][stat][i, r]``."""
    for leaf, s in summary.items():
        for i in range(s["mean"].shape[0]):
            for r, name in enumerate(names):
                checks.add_summary(
                    f"{label} setting={i} {name} d/d{leaf}",
                    {k: v[i, r] for k, v in s.items()},
                    exact[leaf][i, r],
                    scale=scale,
                )


# --------------------------------------------------------------------------------------------
# Gamma, Beta, Dirichlet (implicitly reparameterised): constant, linear, quadratic and
# coordinate costs x_i, exact gradients from the closed-form first and second moments.
# --------------------------------------------------------------------------------------------

CONTINUOUS = {
    "Gamma": lambda p: estimators.Gamma(p["concentration"], p["rate"]),
    "Beta": lambda p: estimators.Beta(p["a"], p["b"]),
    "Dirichlet": lambda p: estimators.Dirichlet(p["concentration"]),
}
CONTINUOUS_SHAPE = {"Gamma": (3,), "Beta": (3,), "Dirichlet": (2, 3)}
CONTINUOUS_NUM_SAMPLES = {"pathwise": 10_000, "score_function": 30_000}
# The coordinate costs x_i (for the finite-difference test) only for the pathwise estimator.
CONTINUOUS_NUM_COSTS = {"pathwise": None, "score_function": 3}


def continuous_problem(family: str):
    """Fixed costs [3 + n] and three parameter settings (dict of [3, *shape]).

    Beta's b >= 1.2: for b < 1 a float32 Beta sample rounds to exactly 1.0 with probability
    ~1e-4 and its score is then infinite (see test_beta_score_function_near_one).
    """
    shape = CONTINUOUS_SHAPE[family]
    rng = np.random.default_rng(2000 + list(CONTINUOUS).index(family))
    names, costs = cf.quadratic_costs(int(np.prod(shape)), rng)

    def u(lo, hi):
        return rng.uniform(lo, hi, (3, *shape)).astype(np.float32)

    if family == "Gamma":
        params = {"concentration": u(0.5, 5.0), "rate": u(0.5, 3.0)}
    elif family == "Beta":
        params = {"a": u(0.5, 5.0), "b": u(1.2, 5.0)}
    else:
        params = {"concentration": u(0.5, 4.0)}
    return names, costs, params


@partial(battery_jit, static_argnames=("family", "estimator", "num_samples", "bug"))
def continuous_jacobians(key, costs, params, *, family, estimator, num_samples, bug=None):
    """Per-sample estimates [S, R, N, *shape] and exact gradients [S, R, *shape]."""
    build = bugged(CONTINUOUS[family], family, bug)

    def one(k, c, p):
        jac = ESTIMATORS[estimator](
            partial(cf.quadratic_cost, c), p, build, k, num_samples=num_samples
        )
        exact = jax.grad(lambda q: cf.quadratic_expectation(c, family, q))(p)
        return jac, exact

    num_settings = jax.tree.leaves(params)[0].shape[0]
    keys = jax.random.split(key, (num_settings, costs["const"].shape[0]))
    over_costs = jax.vmap(one, in_axes=(0, 0, None))
    return jax.vmap(over_costs, in_axes=(0, None, 0))(keys, costs, params)


@functools.lru_cache(maxsize=12)
def continuous_results(seed: int, family: str, estimator: str, bug: str | None = None):
    """(names, params, {leaf: summary [S, R, *shape]}, {leaf: exact [S, R, *shape]})."""
    names, costs, params = continuous_problem(family)
    names = names[: CONTINUOUS_NUM_COSTS[estimator]]
    costs = {k: v[: len(names)] for k, v in costs.items()}
    key = jax.random.fold_in(
        jax.random.key(seed),
        10 + 10 * list(CONTINUOUS).index(family) + list(ESTIMATORS).index(estimator),
    )
    jac, exact = continuous_jacobians(
        key,
        costs,
        params,
        family=family,
        estimator=estimator,
        num_samples=CONTINUOUS_NUM_SAMPLES[estimator],
        bug=bug,
    )
    return names, params, _summaries(jac, axis=2), jax.device_get(exact)


def continuous_battery(
    seed: int, family: str, estimator: str, scale: float = 1.0, bug: str | None = None
):
    names, _, summary, exact = continuous_results(seed, family, estimator, bug)
    checks = cf.Checks()
    _add_settings(checks, f"{estimator} {family}", names, summary, exact, scale)
    return checks


# --------------------------------------------------------------------------------------------
# Bernoulli and Categorical (score function only): exact expectations by enumeration.
# --------------------------------------------------------------------------------------------

DISCRETE_NUM_SAMPLES = 50_000
BERNOULLI_DIMS = (1, 8)
CATEGORICAL_SHAPES = ((4,), (3, 4))  # logits; event shapes () and (3,)


def bernoulli_problem(dim: int):
    rng = np.random.default_rng(3000 + dim)
    names, costs = cf.normal_costs(dim, rng)
    logits = rng.normal(0.0, 1.5, (3, dim)).astype(np.float32)
    return names, costs, logits


def categorical_cost(c: dict, x: jax.Array) -> jax.Array:
    """const + sum_b table[b, x_b] + cos_amp cos(u.x) for one int sample x (flattened)."""
    x = x.reshape(-1)
    table = jnp.take_along_axis(c["table"], x[:, None], axis=1)[:, 0]
    return c["const"] + jnp.sum(table) + c["cos_amp"] * jnp.cos(c["cos_u"] @ x.astype(jnp.float32))


def categorical_problem(logits_shape: tuple[int, ...]):
    rng = np.random.default_rng(4000 + len(logits_shape))
    nb, k = (1, *logits_shape)[-2:]
    rows = {
        "constant": (1.1, np.zeros((nb, k)), 0.0, np.zeros(nb)),
        "table": (0.0, rng.normal(size=(nb, k)), 0.0, np.zeros(nb)),
        "cos": (0.0, np.zeros((nb, k)), 2.0, rng.uniform(0.3, 1.0, nb)),
    }
    costs = {
        f: np.stack([np.asarray(r[i], np.float32) for r in rows.values()])
        for i, f in enumerate(("const", "table", "cos_amp", "cos_u"))
    }
    logits = rng.normal(0.0, 1.0, (3, *logits_shape)).astype(np.float32)
    return list(rows), costs, logits


def _categorical_expectation(f, logits):
    flat = logits.reshape(-1, logits.shape[-1])
    return cf.categorical_expectation(lambda x: f(x.reshape(logits.shape[:-1])), flat)


@partial(battery_jit, static_argnames=("num_samples", "bug"))
def discrete_jacobians(key, bernoulli, categorical, *, num_samples, bug=None):
    def run(k, cost, expectation, build, costs, logits):
        family = "Bernoulli" if build is estimators.Bernoulli else "Categorical"
        build = bugged(build, family, bug)

        def one(k, c, lg):
            f = partial(cost, c)
            jac = estimators.score_function(f, lg, build, k, num_samples=num_samples)
            return jac, jax.grad(partial(expectation, f))(lg)

        keys = jax.random.split(k, (logits.shape[0], costs["const"].shape[0]))
        over_costs = jax.vmap(one, in_axes=(0, 0, None))
        return jax.vmap(over_costs, in_axes=(0, None, 0))(keys, costs, logits)

    out = {}
    for i, (costs, logits) in enumerate(bernoulli):
        k = jax.random.fold_in(key, i)
        out["Bernoulli", i] = run(
            k, cf.generic_cost, cf.bernoulli_expectation, estimators.Bernoulli, costs, logits
        )
    for i, (costs, logits) in enumerate(categorical):
        k = jax.random.fold_in(key, 100 + i)
        out["Categorical", i] = run(
            k, categorical_cost, _categorical_expectation, estimators.Categorical, costs, logits
        )
    return out


@functools.lru_cache(maxsize=4)
def discrete_results(seed: int, bug: str | None = None):
    bern = [bernoulli_problem(d) for d in BERNOULLI_DIMS]
    cat = [categorical_problem(s) for s in CATEGORICAL_SHAPES]
    out = discrete_jacobians(
        jax.random.fold_in(jax.random.key(seed), 77),
        [p[1:] for p in bern],
        [p[1:] for p in cat],
        num_samples=DISCRETE_NUM_SAMPLES,
        bug=bug,
    )
    results = {}
    for (family, i), (jac, exact) in out.items():
        names, _, logits = (bern if family == "Bernoulli" else cat)[i]
        label = f"{family} logits{list(logits.shape[1:])}"
        results[label] = (names, cf.summarize(jac, axis=2), np.asarray(exact))
    return results


def discrete_battery(seed: int, scale: float = 1.0, bug: str | None = None) -> cf.Checks:
    checks = cf.Checks()
    for label, (names, s, exact) in discrete_results(seed, bug).items():
        for i in range(s["mean"].shape[0]):
            for r, name in enumerate(names):
                checks.add_summary(
                    f"score_function {label} setting={i} {name} d/dlogits",
                    {k: v[i, r] for k, v in s.items()},
                    exact[i, r],
                    scale=scale,
                )
    return checks


# --------------------------------------------------------------------------------------------
# Unbiasedness tests.
# --------------------------------------------------------------------------------------------

BATTERIES = {
    **{f"{e}-Normal": partial(normal_battery, estimator=e) for e in ESTIMATORS},
    **{
        f"{e}-{f}": partial(continuous_battery, family=f, estimator=e)
        for e in ESTIMATORS
        for f in CONTINUOUS
    },
    "score_function-Bernoulli-Categorical": discrete_battery,
}


# By default only the Normal batteries run here (3 dimensions x 2 parameterisations x 6 costs x
# several settings, beyond the conformance battery's one problem per family); every family and
# every estimator of the registry is checked by default in tests/test_conformance.py, so the
# other batteries of this file (and their realistic-bug companions, the finite-difference test)
# are a deeper opt-in sweep: python -m pytest -m slow tests/test_estimators_statistics.py.
DEFAULT_BATTERIES = [
    b if b.endswith("Normal") else pytest.param(b, marks=pytest.mark.slow) for b in BATTERIES
]


@pytest.mark.parametrize("battery", DEFAULT_BATTERIES)
def test_unbiased(battery):
    checks = BATTERIES[battery](0)
    assert checks.num_checks >= 50
    checks.assert_ok()


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("battery", list(BATTERIES))
def test_unbiased_seeds(battery, seed):
    BATTERIES[battery](seed).assert_ok()


def rescale_power(checks: cf.Checks, factor: float, z: float) -> float:
    """Lower bound on the probability that the checks reject the estimates scaled by ``factor``.

    Check j passes when |factor m_j - g_j| <= z factor se_j + slack_j, with m_j ~ N(g_j, se_j^2):
    it rejects with probability p_j = P(|N(0, 1) + delta_j| > z + slack_j / (factor se_j)),
    delta_j = (factor - 1) g_j / (factor se_j) (1 or 0 where se_j = 0, deterministically).
    The battery rejects if any check does, so its power is >= max_j p_j whatever the dependence
    between checks. ``se_j`` is the standard error measured with seed 0.
    """
    best = 0.0
    for c in checks.items:
        g, se, slack = (
            np.broadcast_to(cf.as64(v), np.shape(c.estimate)) for v in (c.exact, c.se, c.slack)
        )
        bias = np.abs(factor - 1) * np.abs(g)
        certain = (se == 0) & (bias > slack)
        with np.errstate(divide="ignore", invalid="ignore"):
            delta = np.where(se > 0, bias / (abs(factor) * se), 0.0)
            thr = np.where(se > 0, z + slack / (abs(factor) * se), np.inf)
        p = stats.norm.sf(thr - delta) + stats.norm.sf(thr + delta)
        best = max(best, float(np.max(np.where(certain, 1.0, p), initial=0.0)))
    return best


# battery: (the smallest bias factor among 1.01, 1.02, 1.05, 1.1, 1.2, 1.5 that the battery
# rejects with power >= 0.99 by ``rescale_power``, that power from the seed-0 SEs rounded down).
# Measured with seed 0, power at the factor below in brackets, and the checks failing:
#   pathwise Normal        1.01: 1.0 (deterministic: zero-variance loc gradients), 114 of 1056
#   score function Normal  1.05: 0.9999 [1.02: 0.06], 21 of 1056
#   pathwise Gamma         1.02: 0.9992 [1.01: 0.20], 14 of 108
#   pathwise Beta          1.02: 0.9994 [1.01: 0.21], 23 of 108
#   pathwise Dirichlet     1.02: 1.0 [1.01: 0.52], 29 of 162
#   score function Gamma   1.10: 0.9952 [1.05: 0.18], 8 of 54
#   score function Beta    1.20: 1.0 [1.10: 0.989], 10 of 54
#   score function Dirichlet 1.10: 1.0 [1.05: 0.41], 6 of 54
#   score function Bernoulli + Categorical 1.01: 1.0, 2 of 306
# The score function on Gamma/Beta/Dirichlet has the least power for its 30k samples (its
# variance is large for these costs): it misses a uniform 5% bias. Structured bugs are caught
# far more easily (``test_battery_rejects_realistic_bug``).
RESCALE_POWER = {
    "pathwise-Normal": (1.01, 0.999),
    "score_function-Normal": (1.05, 0.999),
    "pathwise-Gamma": (1.02, 0.999),
    "pathwise-Beta": (1.02, 0.999),
    "pathwise-Dirichlet": (1.02, 0.999),
    "score_function-Gamma": (1.10, 0.995),
    "score_function-Beta": (1.20, 0.999),
    "score_function-Dirichlet": (1.10, 0.999),
    "score_function-Bernoulli-Categorical": (1.01, 0.999),
}


@pytest.mark.parametrize("battery", DEFAULT_BATTERIES)
def test_battery_detects_rescale(battery):
    """The same checks reject the seed-0 estimates scaled by ``RESCALE_POWER[battery][0]``, and
    the analytic power (``rescale_power``, from the measured SEs) is at least the stated one.

    Factors and powers: see ``RESCALE_POWER``. Realistic, non-uniform biases: see
    ``test_battery_rejects_realistic_bug``.
    """
    factor, power = RESCALE_POWER[battery]
    checks = BATTERIES[battery](0)
    assert rescale_power(checks, factor, checks.z()) >= power
    assert BATTERIES[battery](0, scale=factor).failures()


# battery: (seeds out of 20 on which the bugged battery fails, the fewest checks failing on any
# of the 20 seeds). Measured with ``test_realistic_bug_power`` (``-m slow``); of the battery's
# checks that is 352 of 1056 (pathwise Normal), 526 of 1056 (score function Normal), 27 of 108
# (pathwise Gamma and Beta: every check of d/dconcentration, d/da with a nonzero exact value),
# 30 of 162 (pathwise Dirichlet), 51 of 54 (score function Gamma), 54 of 54 (score function
# Beta, Dirichlet), 302 of 306 (score function Bernoulli + Categorical). The dropped implicit
# term gives an estimate of exactly 0 where the gradient is not, so it fails on every seed.
BUG_POWER = {
    "pathwise-Normal": (20, 352),
    "score_function-Normal": (20, 526),
    "pathwise-Gamma": (20, 27),
    "pathwise-Beta": (20, 27),
    "pathwise-Dirichlet": (20, 30),
    "score_function-Gamma": (20, 51),
    "score_function-Beta": (20, 54),
    "score_function-Dirichlet": (20, 54),
    "score_function-Bernoulli-Categorical": (20, 302),
}


def _bug(battery: str) -> str:
    return BUGS[battery.split("-")[0]]


@pytest.mark.slow  # the battery's own programs again, with the bug: see DEFAULT_BATTERIES
@pytest.mark.parametrize("battery", list(BATTERIES))
def test_battery_rejects_realistic_bug(battery):
    """The same battery (same checks, z, samples and keys) run with a buggy estimator fails.

    The bugs (see ``BUGS``): pathwise with the implicit-reparameterisation term dropped, score
    function of the unnormalised log-density. Measured power (rejections over the 20 seeds of
    ``test_realistic_bug_power``) and the fewest checks failing on any of them: ``BUG_POWER``.
    """
    correct = BATTERIES[battery](0)
    wrong = BATTERIES[battery](0, bug=_bug(battery))
    assert wrong.num_checks == correct.num_checks  # hence the same Bonferroni z
    failures = wrong.failures(correct.z())
    assert len(failures) >= BUG_POWER[battery][1], failures[:5]


@pytest.mark.slow
@pytest.mark.parametrize("battery", list(BATTERIES))
def test_realistic_bug_power(battery):
    """Power of the battery against its realistic bug: rejections over the 20 seeds."""
    rejected = sum(bool(BATTERIES[battery](s, bug=_bug(battery)).failures()) for s in SEEDS)
    assert rejected >= BUG_POWER[battery][0], rejected


# --------------------------------------------------------------------------------------------
# Single-sample variances, f(x) = x^2, x ~ N(mu, sigma^2), parameters (loc, scale).
# --------------------------------------------------------------------------------------------


def exact_variances(estimator: str, mu: float, sigma: float) -> dict[str, float]:
    if estimator == "pathwise":  # d/dmu = 2x, d/dsigma = 2 x eps
        return {"loc": 4 * sigma**2, "scale": 4 * mu**2 + 8 * sigma**2}
    # (x^2) score: d/dmu = x^2 eps / sigma, d/dsigma = x^2 (eps^2 - 1) / sigma.
    return {
        "loc": mu**4 / sigma**2 + 14 * mu**2 + 15 * sigma**2,
        "scale": 2 * mu**4 / sigma**2 + 60 * mu**2 + 74 * sigma**2,
    }


def variance_checks(seed: int) -> cf.Checks:
    checks = cf.Checks()
    for estimator in ESTIMATORS:
        samples = normal_results(seed, estimator)["square_1d"]
        for i, (mu, sigma) in enumerate(NORMAL_SETTINGS_1D):
            exact = exact_variances(estimator, mu, sigma)
            for leaf in ("loc", "scale"):
                checks.add_variance(
                    f"{estimator} Var d/d{leaf} mu={mu} sigma={sigma}",
                    samples[leaf][i],
                    exact[leaf],
                )
                # The means too: d/dmu E x^2 = 2 mu, d/dsigma = 2 sigma.
                checks.add_mean(
                    f"{estimator} mean d/d{leaf} mu={mu} sigma={sigma}",
                    samples[leaf][i],
                    2 * (mu if leaf == "loc" else sigma),
                )
    return checks


def test_single_sample_variances():
    checks = variance_checks(0)
    checks.assert_ok()
    # Power: a 10% error in the closed forms would be caught.
    wrong = cf.Checks(
        [
            dataclasses.replace(c, exact=1.10 * c.exact)
            for c in checks.items
            if "Var" in c.label and "pathwise" in c.label
        ]
    )
    assert wrong.failures()


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_single_sample_variances_seeds(seed):
    variance_checks(seed).assert_ok()


# --------------------------------------------------------------------------------------------
# Implicit reparameterisation: pathwise d E[x_i] / d params vs central finite differences of
# the closed-form means, computed in float64.
# --------------------------------------------------------------------------------------------

FD_STEP = 1e-4


def closed_form_mean(family: str, params: dict) -> np.ndarray:
    """E[x] in float64 numpy (shape of the event)."""
    if family == "Gamma":
        return params["concentration"] / params["rate"]
    if family == "Beta":
        return params["a"] / (params["a"] + params["b"])
    alpha = params["concentration"]
    return alpha / alpha.sum(-1, keepdims=True)


def fd_error_bound(family: str, params: dict, h: float) -> float:
    """Bound on |central FD - derivative| = h^2/6 sup|m'''| (+ float64 rounding).

    Along one parameter every mean is a ratio (a t + b) / (c t + d) with c in {0, 1}, whose
    third derivative is 6 c^2 (ad - bc) / (c t + d)^4: Gamma |d^3/d rate^3| = 6 conc / rate^4;
    Beta and Dirichlet |m'''| <= 6 / (sum of concentrations)^3. Sup over [t - h, t + h].
    """
    if family == "Gamma":
        third = np.max(6 * params["concentration"] / (params["rate"] - h) ** 4)
    elif family == "Beta":
        third = np.max(6 / (params["a"] + params["b"] - h) ** 3)
    else:
        third = np.max(6 / (params["concentration"].sum(-1) - h) ** 3)
    rounding = 4 * np.finfo(np.float64).eps * np.max(closed_form_mean(family, params)) / h
    return h**2 / 6 * third + rounding


def finite_difference_jacobian(family: str, params: dict, h: float) -> dict[str, np.ndarray]:
    """{leaf: [*event_shape, *leaf_shape]} central differences of E[x] w.r.t. each parameter."""
    params = {k: np.asarray(v, np.float64) for k, v in params.items()}
    out = {}
    for leaf, value in params.items():
        cols = []
        for j in np.ndindex(value.shape):
            step = np.zeros_like(value)
            step[j] = h
            plus = closed_form_mean(family, {**params, leaf: value + step})
            minus = closed_form_mean(family, {**params, leaf: value - step})
            cols.append((plus - minus) / (2 * h))
        out[leaf] = np.stack(cols, axis=-1).reshape(*value.shape, *value.shape)
    return out


def implicit_gradient_checks(seed: int) -> cf.Checks:
    checks = cf.Checks()
    for family in CONTINUOUS:
        names, params, summary, _ = continuous_results(seed, family, "pathwise")
        shape = CONTINUOUS_SHAPE[family]
        rows = [r for r, name in enumerate(names) if name.startswith("x_")]
        for i in range(jax.tree.leaves(params)[0].shape[0]):
            p = {k: np.asarray(v[i], np.float64) for k, v in params.items()}
            fd = finite_difference_jacobian(family, p, FD_STEP)
            slack = fd_error_bound(family, p, FD_STEP)
            for leaf, s in summary.items():
                for n, r in enumerate(rows):
                    coord = np.unravel_index(n, shape)
                    checks.add_summary(
                        f"pathwise {family} setting={i} d E[x{list(coord)}] / d{leaf}",
                        {k: v[i, r] for k, v in s.items()},
                        fd[leaf][coord],
                        slack=slack,
                    )
    return checks


@pytest.mark.slow  # the Gamma/Beta/Dirichlet programs: see DEFAULT_BATTERIES
def test_implicit_reparameterisation_vs_finite_differences():
    checks = implicit_gradient_checks(0)
    assert checks.num_checks == 3 * (3 * 6 + 3 * 6 + 6 * 6)
    checks.assert_ok()


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_implicit_reparameterisation_seeds(seed):
    implicit_gradient_checks(seed).assert_ok()
