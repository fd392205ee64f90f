"""The variance figures (Figs 2-7): exact side against closed forms, MC side against exact, runs.

Exact side: closed forms at mu = sigma = 1, k = 0, f = x^2 (derived by hand from the moments of
the Gaussian, Weibull = Rayleigh(1) and double-sided Maxwell), closed forms in D dimensions,
the quadrature rules themselves, and convergence (two node counts agree).
Monte Carlo side: the chunk merge; and every config run at a small size through
``run_experiment`` (the smoke test of each config), whose saved Monte Carlo points must lie
within a Bonferroni-corrected number of standard errors of the exact values, with the configs'
fixed seed; the same check rejects a curve 25% off. Then redrawing, and bad input.
"""

from __future__ import annotations

import functools
import itertools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import estimators
import experiments
from experiments import _cli, variance
from experiments.variance import exact as quadrature
from experiments.variance import monte_carlo, problems
from experiments.variance.costs import COSTS, Rows, term
from experiments.variance.problems.bernoulli import PROBLEM as BERNOULLI
from experiments.variance.problems.gaussian import PROBLEM as GAUSSIAN

# A user's own estimator, outside the registry, found by its importable path: the pathwise
# estimator under another name (so its exact variance is pathwise's, which the runner does not
# know under this name).
MY_PATHWISE = estimators.gradient_estimator(
    "my_pathwise",
    estimators.pathwise,
    requires=(estimators.Reparameterizable,),
    label="my pathwise",
)
ALPHA = 1e-4  # family-wise false-alarm probability of one statistical test
NODES = 512


def _exact(est, param, cost, k, *, dim=1.0, loc=1.0, scale=1.0, num_nodes=NODES):
    k = np.atleast_1d(np.asarray(k, np.float64))
    n = k.shape[0]
    c = COSTS[cost]
    return quadrature.exact_variance(
        est,
        param,
        np.tile(c.weight_vector(), (n, 1)),
        k,
        np.full(n, c.constant),
        np.full(n, dim),
        loc,
        scale,
        num_nodes=num_nodes,
    )


# ------------------------------------------------------------------------------------------
# Exact side
# ------------------------------------------------------------------------------------------

# f(x) = x^2 under N(1, 1). W ~ Rayleigh(1): E W = sqrt(pi/2), E W^2 = 2, E W^3 = 3 sqrt(pi/2),
# E W^4 = 8. M double-sided Maxwell: E M^2 = 3, E M^4 = 15, odd moments 0.
#   coupled d/dmu: (1+W)^2 - (1-W)^2 = 4W, Var = 16 (2 - pi/2) / (2 pi) = 4 (4 - pi) / pi;
#   uncoupled d/dmu: (Var (1+W)^2 + Var (1-W)^2) / (2 pi) = (24 - 4 pi) / (2 pi) = 12/pi - 2;
#   uncoupled d/dsigma: Var (1+M)^2 + Var (1+eps)^2 = 18 + 6 = 24.
CLOSED_FORMS = {
    "score_function": (30.0, 136.0),
    "score_function+optimal": (14.0, 64.0),
    "pathwise": (4.0, 12.0),
    "measure_valued": (4 * (4 - math.pi) / math.pi, 8.0),
    "measure_valued_uncoupled": (12 / math.pi - 2, 24.0),
}


@pytest.mark.parametrize("estimator", sorted(CLOSED_FORMS))
def test_exact_closed_forms_at_k0(estimator):
    for param, expected in zip(("loc", "scale"), CLOSED_FORMS[estimator], strict=True):
        got = _exact(estimator, param, "quadratic", 0.0)[0]
        assert got == pytest.approx(expected, rel=1e-12), (estimator, param)


def test_exact_closed_forms_in_d_dimensions():
    """Score function, N(mu 1, sigma^2 I_D), first coordinate (derivation in the comments)."""
    dims = np.array([1.0, 2.0, 7.0, 100.0, 1000.0])
    mu, sigma = 0.5, 1.3
    for param, const_var, lin_var in (
        # f = 100: g = 100 s, Var = 1e4 E[s^2]; f = sum x_d, E[g^2] from E[f^2 s^2] with f
        # split into x_1 and an independent N((D-1) mu, (D-1) sigma^2) rest:
        ("loc", 1e4 / sigma**2, dims**2 * mu**2 / sigma**2 + dims + 1),
        ("scale", 2e4 / sigma**2, 2 * dims**2 * mu**2 / sigma**2 + 2 * dims + 8),
    ):
        for cost, expected in (("constant", const_var), ("linear", lin_var)):
            got = [
                _exact("score_function", param, cost, 0.0, dim=d, loc=mu, scale=sigma)[0]
                for d in dims
            ]
            np.testing.assert_allclose(got, np.broadcast_to(expected, dims.shape), rtol=1e-11)
    # The other coordinates cancel in the measure-valued estimator: the same at every D.
    # Linear cost: coupled d/dmu = c 2 sigma W, Var = (4 - pi) / pi; d/dsigma = M (1 - U),
    # Var = E M^2 E (1 - U)^2 = 1.
    for d in dims:
        got = [
            _exact("measure_valued", p, "linear", 0.0, dim=d, loc=10.0)[0] for p in ("loc", "scale")
        ]
        np.testing.assert_allclose(got, [(4 - math.pi) / math.pi, 1.0], rtol=1e-12)


def test_quadrature_rules_integrate_known_moments():
    q = quadrature.rules(NODES)
    z, wz = q.normal_nodes, q.normal_weights
    r, wr = q.weibull_nodes, q.weibull_weights
    for w in (wz, q.maxwell_weights, wr, q.uniform_weights):
        assert np.sum(w) == pytest.approx(1.0, abs=1e-13)
    np.testing.assert_allclose([wz @ z**2, wz @ z**4, wz @ np.cos(3 * z)], [1, 3, np.exp(-4.5)])
    np.testing.assert_allclose(q.maxwell_weights @ z**2, 3.0)
    np.testing.assert_allclose(q.maxwell_weights @ z**4, 15.0)
    np.testing.assert_allclose([wr @ r, wr @ r**2, wr @ r**4], [math.sqrt(math.pi / 2), 2, 8])


def test_maxwell_times_uniform_is_standard_normal():
    """The coupling eps = M U: E h(M U) = E h(eps) for moments and a characteristic function."""
    q = quadrature.rules(NODES)
    mu = q.normal_nodes[:, None] * q.uniform_nodes[None, :]
    w2 = q.maxwell_weights[:, None] * q.uniform_weights[None, :]
    for t in (0.5, 1.0, 2.5):
        assert np.sum(w2 * np.cos(t * mu)) == pytest.approx(math.exp(-t * t / 2), abs=1e-12)
    for power, moment in ((1, 0.0), (2, 1.0), (3, 0.0), (4, 3.0), (6, 15.0)):
        assert np.sum(w2 * mu**power) == pytest.approx(moment, abs=1e-11)


def _figure_rows():
    """Every cost of the k-figures on a subsample of its grid (k=10 bump included)."""
    return {
        "quadratic": np.linspace(-3, 3, 13),
        "exp_quadratic": np.geomspace(0.1, 10, 13),
        "cosine": np.geomspace(0.5, 5, 13),
    }


def test_exact_converges_in_the_number_of_nodes():
    for cost, ks in _figure_rows().items():
        for est in quadrature.ESTIMATORS:
            for p in quadrature.PARAMETERS:
                a = _exact(est, p, cost, ks, num_nodes=NODES)
                b = _exact(est, p, cost, ks, num_nodes=2 * NODES)
                # Relative, except where the variance is 0 (coupled d/dmu of (x-1)^2).
                np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-14 * np.abs(b).max())


def _rows(cost, k, dim=1.0):
    k = np.atleast_1d(np.asarray(k, np.float64))
    c = COSTS[cost]
    n = k.shape[0]
    return Rows(np.tile(c.weight_vector(), (n, 1)), k, np.full(n, c.constant), np.full(n, dim))


def test_gaussian_exact_gradient_matches_closed_forms():
    """d/dmu, d/dsigma of E f under N(mu, sigma^2), from the closed-form expectations
    E (x-k)^2 = (mu-k)^2 + sigma^2, E cos(kx) = cos(k mu) e^{-k^2 sigma^2 / 2} and
    E e^{-k x^2} = a^{-1/2} e^{-k mu^2 / a}, a = 1 + 2 k sigma^2, differentiated by hand."""
    mu, sigma = 0.7, 1.2
    values = {"loc": mu, "scale": sigma}
    k = np.geomspace(0.1, 10.0, 9)
    a = 1 + 2 * k * sigma**2
    e_exp = a**-0.5 * np.exp(-k * mu**2 / a)
    e_cos = np.cos(k * mu) * np.exp(-(k**2) * sigma**2 / 2)
    expected = {
        ("quadratic", "loc"): 2 * (mu - k),
        ("quadratic", "scale"): np.full_like(k, 2 * sigma),
        ("cosine", "loc"): -k * np.sin(k * mu) * np.exp(-(k**2) * sigma**2 / 2),
        ("cosine", "scale"): -(k**2) * sigma * e_cos,
        ("exp_quadratic", "loc"): -2 * k * mu / a * e_exp,
        ("exp_quadratic", "scale"): 4 * k * sigma * e_exp * (k * mu**2 / a**2 - 0.5 / a),
    }
    for (cost, param), want in expected.items():
        got = GAUSSIAN.exact_gradient(param, _rows(cost, k), values, NODES)
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13, err_msg=f"{cost} {param}")


def _enumerate_bernoulli(cost, k, logit, dim, *, optimal):
    """Gradient and score-function variance of the first coordinate by summing over all 2^D
    outcomes of the joint law (no separability used): g(x) = (f(x) - b) (x_1 - p)."""
    c = COSTS[cost]
    xs = np.array(list(itertools.product([0.0, 1.0], repeat=dim)))  # [2^D, D]
    f = np.full(len(xs), c.constant)
    f = f + sum(w * term(t, np, xs, k).sum(1) for t, w in c.weights.items())

    def prob(eta):
        p = 1 / (1 + np.exp(-eta))
        return np.prod(np.where(xs == 1, p, 1 - p), axis=1)

    pr = prob(np.full(dim, logit))
    s = xs[:, 0] - 1 / (1 + math.exp(-logit))
    b = (pr @ (f * s**2)) / (pr @ s**2) if optimal else 0.0
    g = (f - b) * s
    h = 1e-5 * np.eye(dim)[0]  # central difference of E f in eta_1
    grad = (prob(logit + h) @ f - prob(logit - h) @ f) / 2e-5
    # Rounding in the difference: about 1e-16 max|f| / 1e-5; the h^2 term is smaller still.
    return grad, 1e-9 * (1 + np.abs(f).max()), pr @ g**2 - (pr @ g) ** 2


@pytest.mark.parametrize("cost", ["quadratic", "cosine", "exp_quadratic", "constant", "quartic"])
def test_bernoulli_exact_values_match_enumeration_of_every_outcome(cost):
    for logit, dim, kk in ((0.0, 1, 0.3), (-1.3, 3, 2.0), (2.2, 4, -0.7)):
        values = {"logit": logit}
        rows = _rows(cost, [kk], dim=dim)
        for est, optimal in (("score_function", False), ("score_function+optimal", True)):
            grad, grad_tol, var = _enumerate_bernoulli(cost, kk, logit, dim, optimal=optimal)
            got = BERNOULLI.exact_variance(est, "logits", rows, values, NODES)[0]
            assert got == pytest.approx(var, rel=1e-12, abs=1e-12), (cost, logit, dim, est)
        got = BERNOULLI.exact_gradient("logits", rows, values, NODES)[0]
        assert got == pytest.approx(grad, rel=0, abs=grad_tol), (cost, logit, dim)
    assert BERNOULLI.exact_variance("pathwise", "logits", rows, values, NODES) is None


def test_problems_are_found_by_name_or_path_and_bad_ones_named():
    assert problems.load("gaussian") is GAUSSIAN
    assert problems.load("bernoulli") is BERNOULLI
    assert problems.load("experiments.variance.problems.bernoulli:PROBLEM") is BERNOULLI
    assert {"gaussian", "bernoulli"} <= set(problems.available())
    for spec, match in (
        ("poisson", "config.problem 'poisson' is unknown; known: .*gaussian"),
        ("experiments.variance.costs:COSTS", "is a dict, not a Problem"),
        ("no.such.module:PROBLEM", "cannot be imported"),
    ):
        with pytest.raises(ValueError, match=match):
            problems.load(spec)


# ------------------------------------------------------------------------------------------
# Monte Carlo side
# ------------------------------------------------------------------------------------------


def test_combine_merges_chunks_exactly():
    rng = np.random.default_rng(0)
    g = rng.standard_t(df=8, size=(1, 3 * 400, 3)) * [1.0, 2.0, 5.0] + 3.0
    chunks = (400, 400, 400)
    parts = [g[:, i * 400 : (i + 1) * 400] for i in range(3)]
    moments = {
        "mean": np.stack([p.mean(1) for p in parts], 1),
        "m2": np.stack([((p - p.mean(1, keepdims=True)) ** 2).sum(1) for p in parts], 1),
        "h1": np.stack([((p - p.mean(1, keepdims=True)) ** 2).mean(2).sum(1) for p in parts], 1),
        "h2": np.stack(
            [(((p - p.mean(1, keepdims=True)) ** 2).mean(2) ** 2).sum(1) for p in parts], 1
        ),
    }
    var, se = monte_carlo.combine(moments, chunks)
    np.testing.assert_allclose(var, np.var(g[0], axis=0, ddof=1).mean(), rtol=1e-12)
    # D = 1, one chunk: the textbook standard error sqrt((m4 - m2^2) / N).
    x = g[0, :, :1]
    dev = x - x.mean()
    one = {"mean": x.mean(0)[None, None], "m2": (dev**2).sum(0)[None, None]}
    one |= {"h1": np.array([[np.sum(dev**2)]]), "h2": np.array([[np.sum(dev**4)]])}
    _, se1 = monte_carlo.combine(one, (x.shape[0],))
    m2, m4 = np.mean(dev**2), np.mean(dev**4)
    assert se1[0] == pytest.approx(math.sqrt((m4 - m2**2) / x.shape[0]), rel=1e-12)


def _score_rule(problem, param):
    """Nodes x, weights w and squared score s^2 of one coordinate: quadrature for the Gaussian
    of the figures (mu = sigma = 1), the two atoms for the Bernoulli (logit 0.4)."""
    if problem == "bernoulli":
        p = 1 / (1 + math.exp(-0.4))
        x = np.array([0.0, 1.0])
        return x, np.array([1 - p, p]), (x - p) ** 2
    q = quadrature.rules(NODES)
    z, w = q.normal_nodes, q.normal_weights
    return 1.0 + z, w, z**2 if param == "loc" else (z**2 - 1) ** 2


def _baseline_noise(param, cost, ks, num_samples, problem="gaussian"):
    """Expected extra variance E[s^2] Var(b_hat) of the score function with an estimated
    baseline.

    b_hat is a ratio estimator of b* = E[f s^2] / E[s^2] from ``num_samples`` samples of its
    own; by the delta method Var(b_hat) = Var((f - b*) s^2) / (N E[s^2]^2). One call's extra
    variance is E[s^2] (b_hat - b*)^2, ONE draw of Var(b_hat) chi^2_1 (the whole call shares
    b_hat), so :func:`_check_points` allows the chi^2_1 quantile at its Bonferroni level times
    this expectation. One dimension only.
    """
    x, w, s2 = _score_rule(problem, param)
    weights = np.tile(COSTS[cost].weight_vector(), (len(ks), 1))
    phi = quadrature.term_sum(x, weights, np.asarray(ks, np.float64))
    es2 = w @ s2
    b = (phi * s2) @ w / es2
    resid = (phi - b[:, None]) * s2
    var_b = (resid**2 @ w - (resid @ w) ** 2) / (num_samples * es2**2)
    return es2 * var_b


# ------------------------------------------------------------------------------------------
# Runs through the command line's machinery
# ------------------------------------------------------------------------------------------

SMALL = {
    # Small grids, 20,000 samples; the estimators, costs and parameters are the configs' own.
    # 14 rows each for the k-figures, so they share compiled programs (as the full ones do).
    "fig2": ["grid.quadratic.num=14"],
    "fig3": ["grid.exp_quadratic.num=7", "grid.cosine.num=7"],
    "fig4": ["dims=(1, 4)"],
    "fig5": ["dims=(1, 3, 20)"],  # 20: the O(1) replaced evaluations (COORDINATE_COSTS_FROM_DIM)
    "fig6": ["grid.quadratic.num=7", "grid.exp_quadratic.num=7"],
    "fig7": ["grid.quadratic.num=7", "grid.exp_quadratic.num=7"],
}
NUM_SAMPLES = 20_000


def _small(name: str):
    config = experiments.load_config(name)
    overrides = SMALL[name] + [f"num_samples={NUM_SAMPLES}"]
    if "dims" not in config:
        overrides.append("mc_every=1")
    experiments.apply_overrides(config, overrides)
    return config


@pytest.mark.parametrize("name", sorted(SMALL))
def test_every_config_runs_and_its_points_match_the_exact_curves(name, tmp_path):
    """A small run of each config: its files, and every MC point within its error bars of the
    exact variance and gradient (``_check_points``)."""
    config = _small(name)
    workdir = tmp_path / name
    results = experiments.run_experiment(config, workdir)
    for f in ("config.json", "run_info.json", "results.json", "results.csv"):
        assert (workdir / f).is_file(), f
    for ext in ("png", "pdf"):
        assert (workdir / f"{name}.{ext}").stat().st_size > 1000
    saved = json.loads((workdir / "results.json").read_text())
    assert saved["points"] == json.loads(json.dumps(results["points"]))
    header = (workdir / "results.csv").read_text().splitlines()[0]
    assert header == (
        "cost,estimator,parameter,x,exact_variance,mc_variance,mc_se,"
        "exact_gradient,mc_gradient,mc_gradient_se"
    )
    if "dims" in config:
        per_cost = [len(config.dims)] * len(config.costs)
    else:
        per_cost = [config.grid[c].num for c in config.costs]
    points = saved["points"]
    assert len(points) == len(config.estimators) * len(config.parameters) * sum(per_cost)

    _check_points(points, NUM_SAMPLES)


_FIELDS = ("mc_variance", "mc_se", "exact_variance", "exact_variance")


def _check_points(points, num_samples, problem="gaussian"):
    """Every MC point within its error bars of the exact values, and the check's power.

    Variance: |MC - exact| <= z SE + allowance, z Bonferroni-corrected over the points, with
    allowances for float32 rounding (a variance floor of (1e-5 relative)^2 of the curve) and,
    for the optimal baseline, for its estimation noise (``_baseline_noise``). Gradient (the
    first coordinate's mean): |MC - exact| <= z SE. The same checks reject a variance curve
    25% off, and a gradient 25% off, at more than half the points where that is detectable
    (the gradient is 0 at some k).
    """
    var, se, exact, allowance = (np.array([r[f] for r in points]) for f in _FIELDS)
    assert np.isfinite(var).all() and np.isfinite(se).all() and np.isfinite(exact).all()
    level = ALPHA / (2 * 2 * len(points))  # variance and gradient checks, Bonferroni
    for i, r in enumerate(points):
        curve = [q["exact_variance"] for q in points if q["cost"] == r["cost"]]
        allowance[i] = 1e-10 * max(curve)
        if r["estimator"] == "score_function+optimal":
            noise = _baseline_noise(r["parameter"], r["cost"], [r["x"]], num_samples, problem)
            allowance[i] += stats.chi2.isf(level, 1) * noise[0]
    z = stats.norm.isf(level)
    bad = np.abs(var - exact) > z * se + allowance
    assert not bad.any(), [p for p, b in zip(points, bad, strict=True) if b]
    # The same check rejects a curve 25% off at most points, so it can fail (where the curve
    # is not 0: one-dimensional Bernoulli, optimal baseline: (f(x) - b*)(x - p) is constant).
    positive = exact > 1e-9 * exact.max()
    assert positive.mean() >= 0.5
    assert (np.abs(var - 1.25 * exact) > z * se + allowance)[positive].mean() > 0.5
    grad, grad_se, grad_exact = (
        np.array([r[f] for r in points])
        for f in ("mc_gradient", "mc_gradient_se", "exact_gradient")
    )
    assert np.isfinite(grad).all() and (grad_se > 0).all()
    bad = np.abs(grad - grad_exact) > z * grad_se
    assert not bad.any(), [p for p, b in zip(points, bad, strict=True) if b]
    detectable = np.abs(0.25 * grad_exact) > 2 * z * grad_se
    if detectable.any():
        rejected = np.abs(grad - 1.25 * grad_exact) > z * grad_se
        assert rejected[detectable].mean() > 0.5


def _bernoulli_config(estimators=("score_function", "score_function+optimal")):
    """fig2's settings on the Bernoulli problem: logit 0.4, f = (x - k)^2 on 7 k's."""
    config = _small("fig2")
    with config.unlocked():
        del config["loc"], config["scale"]
        config.problem = "bernoulli"
        config.logit = 0.4
        config.parameters = ("logits",)
    experiments.apply_overrides(config, ["grid.quadratic.num=7"])
    config.estimators = estimators
    return config


def test_bernoulli_problem_runs_and_its_points_match_enumeration(tmp_path):
    """The discrete problem through the runner: points against the enumeration's exact values."""
    config = _bernoulli_config()
    results = experiments.run_experiment(config, tmp_path / "bernoulli")
    assert results["problem"] == "bernoulli" and results["exact_method"] == "enumeration"
    assert {c["estimator"] for c in results["exact"]} == set(config.estimators)
    assert len(results["points"]) == 2 * 7
    _check_points(results["points"], NUM_SAMPLES, "bernoulli")


def test_an_estimator_given_by_importable_path_runs_through_the_runner(tmp_path):
    """``config.estimators`` takes ``"module:attribute"``: Monte Carlo points, no exact curve
    (the problem does not know it), its label in the legend; its points match the exact
    pathwise variance and the exact gradient (it is the pathwise estimator)."""
    config = _small("fig7")
    path = f"{__name__}:MY_PATHWISE"
    experiments.apply_overrides(config, [f"estimators=('pathwise', '{path}')"])
    config.parameters = ("loc", "scale")
    results = experiments.run_experiment(config, tmp_path / "mine")
    assert results["estimators"] == {"pathwise": "pathwise", path: "my pathwise"}
    assert {c["estimator"] for c in results["exact"]} == {"pathwise"}
    mine = [r for r in results["points"] if r["estimator"] == path]
    assert len(mine) == len(results["points"]) // 2 == 2 * 2 * 7
    assert all(r["exact_variance"] is None for r in mine)
    exact = {
        (r["cost"], r["parameter"], r["x"]): r["exact_variance"]
        for r in results["points"]
        if r["estimator"] == "pathwise"
    }
    for r in mine:
        r["exact_variance"] = exact[r["cost"], r["parameter"], r["x"]]
    _check_points(mine, NUM_SAMPLES)
    # One key for all of a config's estimators (monte_carlo.mc_moments): the same function of
    # the same samples gives the registry's pathwise points, to float32 rounding.
    theirs = [r for r in results["points"] if r["estimator"] == "pathwise"]
    np.testing.assert_allclose(
        [r["mc_variance"] for r in mine], [r["mc_variance"] for r in theirs], rtol=1e-5
    )
    assert (tmp_path / "mine" / "fig7.png").stat().st_size > 1000


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("estimators=('pathwise', 'reinforce')", "'reinforce', which the registry cannot build"),
        ("estimators=('iwae',)", "objective is 'log_mean_exp'"),
        ("estimators=('pathwise+loo',)", "the baseline 'loo' changes only estimators"),
        ("estimators=('no_module_here:est',)", "cannot import module"),
        ("estimators=('pathwise', 'pathwise')", "distinct"),
    ],
)
def test_unusable_estimators_are_named(override, message):
    config = experiments.load_config("fig2")
    experiments.apply_overrides(config, [override])
    with pytest.raises(ValueError, match=r"config\.estimators") as error:
        variance.validate(config)
    assert message in str(error.value)


def test_an_estimator_the_problem_does_not_support_is_named():
    config = _bernoulli_config(("score_function", "pathwise"))
    with pytest.raises(ValueError, match=r"config\.estimators has 'pathwise'.*bernoulli problem"):
        variance.validate(config)


def test_plot_redraws_from_saved_results_alone(tmp_path, monkeypatch):
    workdir = tmp_path / "run"
    experiments.run_experiment(_small("fig7"), workdir)
    for ext in ("png", "pdf"):
        (workdir / f"fig7.{ext}").unlink()

    def no_computing(*args, **kwargs):
        raise AssertionError("plot must not recompute")

    monkeypatch.setattr(monte_carlo, "mc_moments", no_computing)
    monkeypatch.setattr(quadrature, "exact_variance", no_computing)
    paths = experiments.redraw(workdir)
    assert sorted(p.name for p in paths) == ["fig7.pdf", "fig7.png"]
    assert all(p.is_file() for p in paths)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("scale=0.0", "scale"),
        ("scale=-1.0", "scale"),
        ("num_samples=0", "num_samples"),
        ("num_samples=1", "num_samples"),
        ("estimators=('pathwise', 'reinforce')", "estimators"),
        ("grid.quadratic.start=4.0", "grid.quadratic"),
        ("num_nodes=4", "num_nodes"),
    ],
)
def test_bad_values_are_named_and_nothing_is_written(override, key, tmp_path, capsys):
    config = experiments.load_config("fig2")
    experiments.apply_overrides(config, [override])
    with pytest.raises(ValueError, match=rf"config\.{key}"):
        variance.validate(config)
    workdir = tmp_path / "out"
    code = _cli.main(["run", "fig2", "--workdir", str(workdir), f"--config.{override}"])
    assert code == 2
    assert f"config.{key}" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_unknown_key_and_used_workdir_are_refused(tmp_path, capsys):
    code = _cli.main(["run", "fig2", "--workdir", str(tmp_path / "a"), "--config.sigma=2.0"])
    assert code == 2
    assert "unknown config key 'sigma'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
    config = experiments.load_config("fig2")
    with config.unlocked():
        config.extra = 1
    with pytest.raises(ValueError, match="unknown config key"):
        variance.validate(config)
    # A workdir holding other results is refused before anything runs; it stays as it was.
    used = tmp_path / "used"
    used.mkdir()
    (used / "results.json").write_text("{}")
    args = ["run", "fig2", "--workdir", str(used), "--config.num_samples=500"]
    assert _cli.main(args) == 2
    assert "already holds results" in capsys.readouterr().err
    assert [p.name for p in used.iterdir()] == ["results.json"]
    assert (used / "results.json").read_text() == "{}"


def test_unused_terms_stay_finite_for_negative_k():
    """The k-figures evaluate every term; exp(-k x^2) with k < 0 must not leak inf/NaN."""
    from experiments.variance.costs import K_TERMS, separable_cost

    w = jnp.asarray(COSTS["quadratic"].weight_vector(), jnp.float32)

    def f(x):
        return separable_cost(x, w, jnp.float32(-3.0), jnp.float32(0.0), terms=K_TERMS)

    x = jnp.asarray([9.0], jnp.float32)
    assert float(f(x)) == pytest.approx(144.0)
    assert float(jax.grad(f)(x)[0]) == pytest.approx(24.0)


def _replaced_errors(replaced) -> np.ndarray:
    """``replaced(x, values, w, k, a)`` in float32 against ``f(x with x_d = values[p, d])``
    in float64, every term at once, D = 40, P = 4, over 20 random draws: the errors divided by
    (D + 8) float32 ulps of ``S = |a| + sum_d |phi(x_d)| + max_p |phi(values[p, d])|``. The
    float32 sums over D coordinates (and the subtraction of phi(x_d)) round at most D + 2
    times to within S's ulp, and each phi(term) carries a few ulps of its own terms (exp, cos:
    about 1 ulp each, weights and powers 1-4 more): an error within (D + 8) u S is rounding."""
    from experiments.variance.costs import TERMS

    rng = np.random.default_rng(5)
    worst = []
    for _ in range(20):
        x = rng.normal(2.0, 1.5, 40).astype(np.float32)
        values = rng.normal(2.0, 1.5, (4, 40)).astype(np.float32)
        w = rng.normal(0.0, 1.0, len(TERMS)).astype(np.float32)
        k, a = np.float32(rng.uniform(0.2, 2.0)), np.float32(rng.normal(0.0, 50.0))

        def phi(v, w=w, k=k):  # float64
            return sum(w[i] * term(t, np, v, np.float64(k)) for i, t in enumerate(TERMS))

        x64, v64 = x.astype(np.float64), values.astype(np.float64)
        phi_x = phi(x64)
        exact = a + phi_x.sum() - phi_x[None] + phi(v64)
        got = np.asarray(replaced(*map(jnp.asarray, (x, values, w, k, a))), np.float64)
        scale = abs(float(a)) + np.abs(phi_x).sum() + np.abs(phi(v64)).max(0)
        worst.append(np.max(np.abs(got - exact) / ((40 + 8) * 2.0**-24 * scale)))
    return np.asarray(worst)


def test_replaced_coordinate_costs_are_the_cost_at_each_replaced_sample():
    """``costs.separable_coordinate_costs`` (the O(1) evaluation at a replaced coordinate that
    the runner gives the measure-valued estimator from COORDINATE_COSTS_FROM_DIM) against the
    float64 cost evaluated at every replaced sample, within its rounding bound
    (``_replaced_errors``); the plain float32 evaluation of ``separable_cost`` at each replaced
    sample meets the same bound. Companion: an evaluator that forgets to remove the replaced
    coordinate's own term is off by |phi(x_d)|, far outside it."""
    from experiments.variance.costs import TERMS, separable_coordinate_costs, separable_cost

    def fast(x, values, w, k, a):
        return jax.jit(separable_coordinate_costs, static_argnames="terms")(
            x, values, w, k, a, terms=TERMS
        )

    def plain(x, values, w, k, a):
        eye = jnp.eye(x.shape[0], dtype=bool)
        moved = jnp.where(eye[None], values[:, :, None], x[None, None])  # [P, D, D]
        cost = functools.partial(separable_cost, weights=w, k=k, constant=a, terms=TERMS)
        return jax.vmap(jax.vmap(cost))(moved)

    def forgetful(x, values, w, k, a):
        from experiments.variance.costs import separable_phi

        return separable_cost(x, w, k, a, terms=TERMS) + separable_phi(values, w, k, terms=TERMS)

    assert _replaced_errors(fast).max() <= 1.0
    assert _replaced_errors(plain).max() <= 1.0
    assert _replaced_errors(forgetful).min() > 100.0


def test_reproduce_checks_every_config_and_workdir_before_running_any(tmp_path, capsys):
    (tmp_path / "fig7").mkdir()
    (tmp_path / "fig7" / "results.json").write_text("{}")
    assert _cli.main(["reproduce", "fig6", "fig7", "--outdir", str(tmp_path)]) == 2
    assert "fig7 already holds results" in capsys.readouterr().err
    assert not (tmp_path / "fig6").exists()
    args = ["reproduce", "fig2", "fig3", "--outdir", str(tmp_path / "new"), "--config.scale=0"]
    assert _cli.main(args) == 2
    assert "config.scale must be > 0" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
