"""The toy of REBAR and RELAX (experiments/discrete_toy): exact side, Monte Carlo side, runs.

Exact side (experiments.discrete_toy.exact) against independent computations: the score
function's closed form (derived by hand below), brute-force enumeration of every coordinate of
f in D dimensions (all 2^D or 2^(K D) outcomes), a brute-force midpoint integral over the
uniform noise (ARM, DisARM, REBAR on a fine grid), quadrature against enumeration, and
properties the papers prove (REBAR with eta = 0 is REINFORCE; DisARM's variance never exceeds
ARM's; every unbiased estimator's mean is the exact gradient).
Monte Carlo side: tiny configs run through ``run_experiment`` write every file, and their points
lie within Bonferroni-corrected standard errors of the exact values (fixed seeds); the same check
rejects values 10% off. The per-cost normalisation of a multi-sample estimator on a case with a
known answer, and bad configs.
"""

from __future__ import annotations

import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import estimators
import experiments
from estimators.testing import bonferroni_z
from experiments import _cli
from experiments.discrete_toy import exact, measure

THETAS = np.array([0.03, 0.2, 0.45, 0.5, 0.7, 0.97])
T = 0.45


def _enumerate_dims(theta: float, t: float, dim: int, estimate) -> tuple[float, float]:
    """Mean and variance of ``estimate(b, s) -> g`` over all 2^D outcomes ``b`` (score
    ``s = b - theta``)."""
    total_mean = total_second = 0.0
    for b in itertools.product((0.0, 1.0), repeat=dim):
        b = np.array(b)
        prob = np.prod(np.where(b == 1, theta, 1 - theta))
        g = estimate(b, b - theta)
        total_mean += prob * g
        total_second += prob * g**2
    return total_mean, total_second - total_mean**2


def _f(b: np.ndarray, t: float) -> float:
    return float(np.sum((b - t) ** 2))


# --- Exact side ----------------------------------------------------------------------------


def test_score_function_closed_form():
    """D = 1: g = f(b)(b - p) is (1-t)^2 (1-p) w.p. p and -t^2 p w.p. 1-p, so
    Var = p (1-p) [(1-p) (1-t)^4 + p t^4] - p^2 (1-p)^2 (1 - 2t)^2 (by hand)."""
    p = THETAS
    closed = p * (1 - p) * ((1 - p) * (1 - T) ** 4 + p * T**4) - (p * (1 - p) * (1 - 2 * T)) ** 2
    m = exact.moments("score_function", p, T)
    np.testing.assert_allclose(m.variance, closed, rtol=1e-12)
    np.testing.assert_allclose(m.mean, p * (1 - p) * (1 - 2 * T), rtol=1e-12)
    # The optimal constant baseline makes one Bernoulli's estimate constant: variance 0.
    optimal = exact.moments("score_function+optimal", p, T)
    np.testing.assert_allclose(optimal.variance, 0, atol=1e-15)


@pytest.mark.parametrize("dim", [2, 4])
def test_score_functions_against_enumeration_in_d_dimensions(dim):
    for theta in (0.2, 0.6):
        e_s2 = theta * (1 - theta)
        # b* = E[f s^2] / E[s^2], by enumeration of all coordinates.
        num, _ = _enumerate_dims(theta, T, dim, lambda b, s: _f(b, T) * s[0] ** 2)
        c = num / e_s2
        cases = {
            "score_function": lambda b, s: _f(b, T) * s[0],
            "score_function+optimal": lambda b, s, c=c: (_f(b, T) - c) * s[0],
            "straight_through": lambda b, s, p=theta: 2 * (b[0] - T) * p * (1 - p),
        }
        for name, estimate in cases.items():
            mean, var = _enumerate_dims(theta, T, dim, estimate)
            m = exact.moments(name, np.array([theta]), T, dim=dim)
            np.testing.assert_allclose(m.mean, mean, rtol=1e-12, atol=1e-15)
            np.testing.assert_allclose(m.variance, var, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize(("k", "dim"), [(2, 1), (3, 2), (4, 2)])
def test_leave_one_out_against_enumeration_of_all_samples(k, dim):
    """REINFORCE-LOO's K-sample estimate (1/K) sum_i (f_i - mean_{j != i} f_j) s_i, over all
    2^(K D) outcomes of the K samples of D coordinates."""
    for theta in (0.15, 0.5, 0.8):
        mean = second = 0.0
        for bits in itertools.product((0.0, 1.0), repeat=k * dim):
            b = np.array(bits).reshape(k, dim)
            prob = np.prod(np.where(b == 1, theta, 1 - theta))
            f = np.array([_f(row, T) for row in b])
            loo = (f.sum() - f) / (k - 1)
            g = np.mean((f - loo) * (b[:, 0] - theta))
            mean += prob * g
            second += prob * g**2
        m = exact.moments("score_function+loo", np.array([theta]), T, dim=dim, num_samples=k)
        np.testing.assert_allclose(m.mean, mean, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(m.variance, second - mean**2, rtol=1e-10)
        assert m.evaluations == k


def _midpoint(n: int) -> np.ndarray:
    return (np.arange(n) + 0.5) / n


def _arm(u: np.ndarray, theta: float, disarm: bool) -> np.ndarray:
    """ARM / DisARM estimates of d/dalpha_1 for u: [..., D] (the papers' formulas)."""
    b, bt = (u > 1 - theta).astype(float), (u < theta).astype(float)
    diff = np.sum((b - T) ** 2 - (bt - T) ** 2, axis=-1)
    if disarm:
        weight = max(theta, 1 - theta)  # sigma(|alpha|)
        sign = np.where(bt[..., 0] == 1, -1.0, 1.0)
        return 0.5 * diff * sign * (b[..., 0] != bt[..., 0]) * weight
    return diff * (u[..., 0] - 0.5)


@pytest.mark.parametrize("name", ["arm", "disarm"])
def test_arm_and_disarm_against_a_fine_grid_integral(name):
    """The exact piecewise integration against midpoint sums on 2e5 points (D = 1) and on a
    600 x 600 grid (D = 2); the midpoint error of a piecewise constant/linear integrand with
    two jumps is O(1/n)."""
    disarm = name == "disarm"
    for theta in (0.13, 0.5, 0.77):
        u = _midpoint(200_000)[:, None]
        g = _arm(u, theta, disarm)
        m = exact.moments(name, np.array([theta]), T)
        np.testing.assert_allclose(m.mean, g.mean(), atol=1e-6)
        np.testing.assert_allclose(m.variance, g.var(), rtol=1e-4, atol=1e-9)
        grid = _midpoint(600)
        u2 = np.stack(np.meshgrid(grid, grid, indexing="ij"), axis=-1).reshape(-1, 2)
        g2 = _arm(u2, theta, disarm)
        m2 = exact.moments(name, np.array([theta]), T, dim=2)
        np.testing.assert_allclose(m2.mean, g2.mean(), atol=1e-4)
        np.testing.assert_allclose(m2.variance, g2.var(), rtol=1e-2)
        assert m.evaluations == 2


def test_disarm_never_exceeds_arm_and_unbiased_means_are_the_gradient():
    theta = np.linspace(0.01, 0.99, 25)
    for dim in (1, 3, 50):
        arm = exact.moments("arm", theta, T, dim=dim)
        disarm = exact.moments("disarm", theta, T, dim=dim)
        assert np.all(disarm.variance <= arm.variance * (1 + 1e-12))
        for name in ("score_function", "score_function+optimal", "arm", "disarm", "rebar"):
            m = exact.moments(name, theta, T, dim=dim, num_samples=3)
            # REBAR's 2-D quadrature: 1e-6 relative at theta = 0.01 (steep near the edges).
            rtol = 1e-5 if name == "rebar" else 1e-10
            np.testing.assert_allclose(m.mean, exact.exact_gradient(theta, T), rtol=rtol)


def test_quadrature_against_enumeration():
    """The noise rule integrates the score function (piecewise constant in u, b = 1[u > 1-p])
    to its enumerated moments, and the Concrete estimators converge (two panel counts)."""
    u, w = exact.uniform_rule(THETAS)
    b = (u > 1 - THETAS[:, None]).astype(float)
    g = (b - T) ** 2 * (b - THETAS[:, None])
    mean, second = np.sum(w * g, axis=1), np.sum(w * g**2, axis=1)
    m = exact.moments("score_function", THETAS, T)
    np.testing.assert_allclose(mean, m.mean, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(second - mean**2, m.variance, rtol=1e-12)
    fine, coarse = exact.PANELS, exact.PANELS // 4
    for name in ("gumbel_softmax", "gumbel_softmax_st"):
        a = exact.moments(name, THETAS, T, temperature=0.5)
        exact.PANELS = coarse
        try:
            c = exact.moments(name, THETAS, T, temperature=0.5)
        finally:
            exact.PANELS = fine
        np.testing.assert_allclose(a.variance, c.variance, rtol=1e-9)
        np.testing.assert_allclose(a.mean, c.mean, rtol=1e-9, atol=1e-14)


def test_concrete_against_a_fine_grid_integral_and_its_limit():
    """Gumbel-softmax against midpoint sums over u; as the temperature goes to 0 its bias
    (exact) shrinks: the relaxed gradient tends to the true one."""
    u = _midpoint(400_000)
    for theta in (0.2, 0.6):
        alpha = np.log(theta / (1 - theta))
        z = 1 / (1 + np.exp(-(alpha + np.log(u / (1 - u))) / 0.5))
        g = 2 * (z - T) * z * (1 - z) / 0.5
        m = exact.moments("gumbel_softmax", np.array([theta]), T, temperature=0.5)
        np.testing.assert_allclose(m.mean, g.mean(), rtol=1e-5)
        np.testing.assert_allclose(m.variance, g.var(), rtol=1e-4)
    bias = [
        abs(exact.moments("gumbel_softmax", np.array([0.3]), T, temperature=tau).mean[0]
            - exact.exact_gradient(0.3, T))
        for tau in (1.0, 0.3, 0.1)
    ]  # fmt: skip
    assert bias[0] > bias[1] > bias[2]


def test_rebar_with_eta_zero_is_reinforce_and_matches_a_grid_integral():
    for dim in (1, 4):
        reinforce = exact.moments("score_function", THETAS, T, dim=dim)
        zero = exact.moments("rebar", THETAS, T, dim=dim, eta=0.0)
        np.testing.assert_allclose(zero.variance, reinforce.variance, rtol=1e-10)
    theta = 0.35
    n = 1500
    uu, vv = np.meshgrid(_midpoint(n), _midpoint(n), indexing="ij")
    a, _, _ = exact.rebar_terms(uu, vv, theta, T, 1.0, 0.5)
    m = exact.moments("rebar", np.array([theta]), T, eta=1.0, temperature=0.5)
    np.testing.assert_allclose(m.mean, a.mean(), atol=2e-4)
    np.testing.assert_allclose(m.variance, a.var(), rtol=2e-3)


# --- Monte Carlo side and the runner ------------------------------------------------------


def _registered(names: tuple[str, ...] = exact.EXACT) -> tuple[str, ...]:
    """Those of ``names`` that the registry has now (others land later)."""
    bases = set(estimators.registry.names())
    return tuple(s for s in names if s.split("+")[0] in bases)


# One of each kind of exact computation in the default run; all of them with -m slow.
SOME = ("score_function", "score_function+loo", "gumbel_softmax_st", "disarm", "rebar")


def _small(name: str, *overrides: str):
    config = experiments.load_config(name)
    experiments.apply_overrides(config, ["progress=false", *overrides])
    return config


def _check_points(points, scale: float = 1.0) -> int:
    """Every point with an exact value: variance within z SE (Bonferroni over all checks);
    unbiased estimators' means within z SE of the exact gradient, biased ones' of their exact
    mean. Returns the number of points that failed."""
    checked = [p for p in points if p["exact_variance"] is not None and p["exact_variance"] > 0]
    z = bonferroni_z(2 * len(checked))
    failures = 0
    for p in checked:
        if abs(p["mc_variance"] - scale * p["exact_variance"]) > z * p["mc_variance_se"]:
            failures += 1
        if abs(p["mc_mean"] - scale * p["exact_mean"]) > z * p["mc_mean_se"] + 1e-6:
            failures += 1
    return failures


@pytest.mark.parametrize(
    "names", [pytest.param(SOME, id="some"), pytest.param(exact.EXACT, marks=pytest.mark.slow)]
)
def test_theta_config_runs_and_its_points_match_the_exact_lines(tmp_path, names):
    """Every file; each point within Bonferroni z SE of the exact value (REBAR in its initial
    state: adapt_steps=0), and the same check rejects values 10% off."""
    config = _small(
        "rebar_toy",
        f"estimators={_registered(names)!r}",
        "num_estimates=4000",
        "theta_grid.num=8",
        "mc_every=2",
        "adapt_steps=0",
    )
    results = experiments.run_experiment(config, tmp_path / "toy")
    for name in ("results.json", "results.csv", "rebar_toy.png", "rebar_toy.pdf", "config.json"):
        assert (tmp_path / "toy" / name).is_file(), name
    specs = set(results["estimators"])
    assert specs == set(_registered(names))
    assert len(results["points"]) == 4 * len(specs)
    assert _check_points(results["points"]) == 0
    # The same check has power: values 10% off are rejected at most points.
    checked = [p for p in results["points"] if p["exact_variance"]]
    assert _check_points(results["points"], scale=1.1) >= len(checked) // 2
    lines = (tmp_path / "toy" / "results.csv").read_text().splitlines()
    assert lines[0].startswith("estimator,theta,dim,evaluations,mc_variance")
    assert len(lines) == 1 + len(results["points"])
    assert experiments.redraw(tmp_path / "toy")[0].name == "rebar_toy.png"


def test_dims_config_runs_and_its_points_match(tmp_path):
    """D = 1 and 7 against the exact values; a stateful estimator (no exact value) is updated
    adapt_steps times at each point first."""
    specs = (*_registered(("score_function+optimal", "arm")), "score_function+moving_average")
    config = _small(
        "discrete_dims",
        "num_estimates=3000",
        "dims=(1, 7)",
        "adapt_steps=3",
        f"estimators={specs!r}",
    )
    results = experiments.run_experiment(config, tmp_path / "dims")
    assert (tmp_path / "dims" / "discrete_dims.png").is_file()
    assert {p["dim"] for p in results["points"]} == {1, 7}
    assert _check_points(results["points"]) == 0


# A multi-sample estimator with a known answer: the mean of K independent REINFORCE rows,
# every row of a call set to that mean (so the rows are not independent: multi_sample).
def _mean_of_k(function, params, dist_builder, key, *, num_samples):
    g = estimators.score_function(function, params, dist_builder, key, num_samples=num_samples)
    return jax.tree.map(lambda x: jnp.broadcast_to(jnp.mean(x, 0), x.shape), g)


MEAN_OF_K = estimators.gradient_estimator(
    "mean_of_k",
    _mean_of_k,
    requires=(estimators.HasScore,),
    multi_sample=True,
    min_samples=2,
    label="mean of K REINFORCE",
)


def test_multi_sample_variance_is_per_call_and_per_cost():
    """Averaging K independent REINFORCE samples divides the variance by K and costs K: the
    variance per cost is REINFORCE's single-sample variance, for K = 2 and 5."""
    theta = np.array([0.3, 0.6])
    single = exact.moments("score_function", theta, T)
    path = f"{__name__}:MEAN_OF_K"
    est = measure.estimator(path, 0.5)
    z = bonferroni_z(4)
    for k in (2, 5):
        assert measure.samples_per_estimate(est, k) == k
        assert measure.evaluations(est, k, 1) == k
        mc = measure.measure(path, theta, T, seed=3, num_samples=k, num_estimates=20_000)
        per_cost = mc["variance"] * k
        assert np.all(np.abs(per_cost - single.variance) <= z * k * mc["variance_se"])
        # ... and is not the per-call variance (K times smaller).
        assert np.all(np.abs(mc["variance"] - single.variance) > z * mc["variance_se"])


def test_bad_configs_are_refused_before_anything_runs(tmp_path, capsys):
    for override, match in (
        ("estimators=('no_such_estimator',)", "no_such_estimator"),
        ("estimators=('pathwise',)", "cannot run on a Bernoulli"),
        ("estimators=('iwae',)", "objective"),
        ("target=nan", "target"),
        ("theta_grid.start=0.0", "theta_grid.start"),
    ):
        with pytest.raises(ValueError, match=match):
            experiments.run_experiment(_small("rebar_toy", override), tmp_path / "bad")
        assert not (tmp_path / "bad").exists()
    argv = ["run", "rebar_toy", "--workdir", str(tmp_path / "bad"), "--config.progress=false"]
    assert _cli.main([*argv, "--config.estimators=('no_such_estimator',)"]) == 2
    assert "no_such_estimator" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_all_expands_to_the_registry():
    specs = experiments.load_config("rebar_toy")
    from experiments.discrete_toy import _common

    expanded = _common.expand(specs.estimators, 0.5)
    for name in estimators.registry.names():
        if name.startswith("+"):
            continue
        est = estimators.registry.get(name)
        fits = est.objective == "mean" and est.supports(estimators.Bernoulli(jnp.zeros(1)))
        assert (name in expanded) == fits, name
    assert "score_function+loo" in expanded and "score_function+optimal" in expanded
    json.dumps(expanded)


# --- Trajectories ---------------------------------------------------------------------------


def _adam_reference(theta0: float, t: float, steps: int, lr: float) -> np.ndarray:
    """Adam (Kingma & Ba 2015, beta 0.9/0.999, eps 1e-8) on the logit with the exact gradient
    theta (1 - theta)(1 - 2t), written out in NumPy."""
    alpha, m, v = np.log(theta0 / (1 - theta0)), 0.0, 0.0
    out = [alpha]
    for i in range(1, steps + 1):
        p = 1 / (1 + np.exp(-alpha))
        g = p * (1 - p) * (1 - 2 * t)
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g**2
        alpha -= lr * (m / (1 - 0.9**i)) / (np.sqrt(v / (1 - 0.999**i)) + 1e-8)
        out.append(alpha)
    return 1 / (1 + np.exp(-np.array(out)))


ADAPTIVE = pytest.param(
    ("rebar", "relax"), marks=pytest.mark.slow, id="adaptive"
)  # their compiles take ~40 s on the loaded 2-core CPU


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param(("score_function+loo", "score_function+moving_average"), id="stateful"),
        ADAPTIVE,
    ],
)
def test_trajectories_config_runs(tmp_path, extra):
    """A tiny run writes every file; the exact gradient's trajectory is Adam's written out in
    NumPy; a stateful estimator is updated every step (the adaptive ones: -m slow)."""
    specs = ("score_function", *_registered(extra))
    config = _small(
        "relax_fig1",
        f"estimators={specs!r}",
        "steps=60",
        "record_every=20",
        "num_seeds=2",
        "variance_estimates=50",
    )
    results = experiments.run_experiment(config, tmp_path / "traj")
    for name in ("results.json", "results.csv", "relax_fig1.png", "relax_fig1.pdf"):
        assert (tmp_path / "traj" / name).is_file(), name
    assert results["steps"] == [0, 20, 40, 60]
    reference = _adam_reference(0.5, 0.499, 60, 0.01)[::20]
    np.testing.assert_allclose(results["runs"]["exact gradient"]["theta"][0], reference, rtol=1e-5)
    for spec in specs:
        run = results["runs"][spec]
        assert run["seeds"] == 2 and len(run["theta"]) == 2 and len(run["theta"][0]) == 4
        assert run["diverged_seeds"] == [] and 0 <= run["reached_optimum_side"] <= 2
        assert run["final_theta_mean"] == pytest.approx(np.mean(run["final_theta"]))
        assert all(v is None or v >= 0 for row in run["variance"] for v in row)
    # At theta = 0.5 (step 0) the recorded variance is the exact one within its SE (50 calls).
    v0 = np.array([row[0] for row in results["runs"]["score_function"]["variance"]])
    exact_v0 = exact.moments("score_function", np.array([0.5]), 0.499).variance[0]
    assert np.all(np.abs(v0 - exact_v0) < 6 * exact_v0 * np.sqrt(2 / 49))
    paper = results["paper"]  # RELAX's Figure 1 beside ours, for the estimators run
    assert set(paper["ours_final_theta"]) == set(paper["final_theta"]) & set(specs)
    for spec, (mean, se) in paper["ours_final_theta"].items():  # SE over the seeds
        assert (mean, se) == (
            results["runs"][spec]["final_theta_mean"],
            results["runs"][spec]["final_theta_se"],
        )
    with config.unlocked():
        config.paper.final_theta = {"rebar": 1.5}
    with pytest.raises(ValueError, match="paper"):
        experiments.run_experiment(config, tmp_path / "bad")
    rows = (tmp_path / "traj" / "results.csv").read_text().splitlines()
    assert rows[0] == "estimator,seed,step,theta,variance,variance_per_cost"
    assert len(rows) == 1 + 4 * (1 + 2 * len(specs))


def test_diverged_runs_are_named_and_not_averaged():
    from experiments.discrete_toy.trajectories import _summary

    theta = np.array([[0.5, 0.3, 0.1], [0.5, np.nan, np.nan], [0.5, 0.6, 0.7]])
    s = _summary(theta)
    assert s["diverged_seeds"] == [1]
    assert s["final_theta"] == [0.1, None, 0.7]
    assert s["final_theta_mean"] == pytest.approx(0.4)
    assert s["final_theta_se"] == pytest.approx(np.std([0.1, 0.7], ddof=1) / np.sqrt(2))
    assert s["reached_optimum_side"] == 1


def test_the_variance_runner_measures_multi_sample_estimators_per_sample(tmp_path):
    """Figs 2-7's runner takes a multi-sample estimator: REINFORCE-LOO on its Bernoulli problem
    (f = (x - k)^2), measured over independent calls of K = min_samples = 2 samples, its point
    the call's variance times K, against the enumeration of all pairs (exact.moments)."""
    config = experiments.load_config("fig2")
    with config.unlocked():
        del config["loc"], config["scale"]
        config.problem, config.logit, config.parameters = "bernoulli", 0.4, ("logits",)
    experiments.apply_overrides(
        config,
        [
            "grid.quadratic.num=4",
            "mc_every=1",
            "num_samples=20000",
            "progress=false",
            "estimators=('score_function+loo',)",
        ],
    )
    results = experiments.run_experiment(config, tmp_path / "loo")
    theta = 1 / (1 + np.exp(-0.4))
    z = bonferroni_z(2 * len(results["points"]))
    for p in results["points"]:
        m = exact.moments("score_function+loo", np.array([theta]), p["x"], num_samples=2)
        assert abs(p["mc_variance"] - 2 * m.variance[0]) <= z * p["mc_se"]
        assert abs(p["mc_gradient"] - p["exact_gradient"]) <= z * p["mc_gradient_se"]
        np.testing.assert_allclose(m.mean[0], p["exact_gradient"], rtol=1e-6)
