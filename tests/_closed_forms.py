"""Closed-form expectations and the statistics the estimator tests share.

Everything here is independent of ``estimators/``: the expectations are written from the
mathematics (Gaussian integrals, moments of Gamma/Beta/Dirichlet, enumeration of small discrete
events), and the exact gradients the tests compare against are ``jax.grad`` of these closed
forms, a computation that shares no code with the Monte Carlo estimators.

Statistics are computed in float64 numpy from the float32 per-sample estimates, so the only
float32 error left is the per-sample rounding, far below the standard errors used as tolerances.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np

from estimators.testing import ALPHA as ALPHA
from estimators.testing import FLOAT_RTOL as FLOAT_RTOL
from estimators.testing import bonferroni_z as bonferroni_z

# Family-wise false-alarm probability of ONE battery (one test function, one seed). Every test
# that makes m statistical checks uses z = Phi^{-1}(1 - ALPHA / (2 m)) (two-sided Bonferroni,
# valid whatever the dependence between checks). With ALPHA = 1e-4, m = 100 gives z = 5.3 and
# m = 3000 gives z = 5.9. Over the 20-seed sweep (20 seeds x ~6 batteries) the chance that a
# correct estimator fails anywhere is then <= 1.2%; with a fixed key the default run is
# deterministic, so a pass never turns into a flake.
# ALPHA and bonferroni_z are the public ones of estimators.testing, which users' checks use too.
# Float32 rounding of one per-sample estimate is ~1e-7 relative; where an estimator has zero
# variance (pathwise gradient of a linear cost w.r.t. loc) the check reduces to equality up to
# FLOAT_RTOL, which is 100x the rounding error.


# --------------------------------------------------------------------------------------------
# Normal: one generic cost covering the constant, linear, quadratic, cos and Gaussian-bump costs.
#   f(x) = const + lin.x + x^T quad x + cos_amp cos(cos_k.x) + gauss_amp exp(-sum_d a_d x_d^2)
# Each cost of the battery is this with the other terms' coefficients zero, so a batch of costs
# is a pytree with a leading axis that jax.vmap maps over.
# --------------------------------------------------------------------------------------------

COST_FIELDS = ("const", "lin", "quad", "cos_amp", "cos_k", "gauss_amp", "gauss_a")


def generic_cost(c: dict, x: jax.Array) -> jax.Array:
    """The cost above for one sample ``x: [D]``; returns ``[]``."""
    return (
        c["const"]
        + c["lin"] @ x
        + x @ c["quad"] @ x
        + c["cos_amp"] * jnp.cos(c["cos_k"] @ x)
        + c["gauss_amp"] * jnp.exp(-(c["gauss_a"] @ jnp.square(x)))
    )


def normal_expectation(c: dict, mu: jax.Array, sigma: jax.Array) -> jax.Array:
    """E f(x) for x ~ N(mu, diag(sigma^2)), in closed form.

    E x^T Q x = mu^T Q mu + sum_d Q_dd sigma_d^2;  E cos(k.x) = cos(k.mu) exp(-sum k_d^2 s_d^2 / 2);
    E exp(-a x^2) = (1 + 2 a s^2)^(-1/2) exp(-a mu^2 / (1 + 2 a s^2)) per coordinate (product).
    """
    var = jnp.square(sigma)
    quad = mu @ c["quad"] @ mu + jnp.diagonal(c["quad"]) @ var
    cos = jnp.cos(c["cos_k"] @ mu) * jnp.exp(-0.5 * (jnp.square(c["cos_k"]) @ var))
    denom = 1 + 2 * c["gauss_a"] * var
    gauss = jnp.prod(denom**-0.5 * jnp.exp(-c["gauss_a"] * jnp.square(mu) / denom))
    return c["const"] + c["lin"] @ mu + quad + c["cos_amp"] * cos + c["gauss_amp"] * gauss


def normal_costs(dim: int, rng: np.random.Generator) -> tuple[list[str], dict]:
    """The battery's six costs in ``dim`` dimensions, stacked: names and a pytree [6, ...].

    constant, linear, quadratic (full form plus linear), square (sum_d x_d^2), cos, Gaussian bump.

    Costs mix coordinates (full random quadratic form, cos of a random projection, a product of
    Gaussian bumps) so a per-coordinate bug cannot hide.
    """
    zero = {
        "const": np.float32(0),
        "lin": np.zeros(dim, np.float32),
        "quad": np.zeros((dim, dim), np.float32),
        "cos_amp": np.float32(0),
        "cos_k": np.zeros(dim, np.float32),
        "gauss_amp": np.float32(0),
        "gauss_a": np.zeros(dim, np.float32),
    }
    m = rng.normal(size=(dim, dim)) / math.sqrt(dim)
    rows = {
        "constant": {"const": 1.7},
        "linear": {"const": 0.3, "lin": rng.normal(size=dim)},
        "quadratic": {"quad": (m + m.T) / 2 + np.eye(dim), "lin": 0.5 * rng.normal(size=dim)},
        "square": {"quad": np.eye(dim)},
        "cos": {"cos_amp": 2.0, "cos_k": rng.uniform(0.5, 1.5, dim) / math.sqrt(dim) * 1.5},
        "gauss_bump": {"gauss_amp": 3.0, "gauss_a": rng.uniform(0.2, 1.0, dim) / dim},
    }
    stacked = {
        f: np.stack([np.asarray(r.get(f, zero[f]), np.float32) for r in rows.values()])
        for f in COST_FIELDS
    }
    return list(rows), stacked


# --------------------------------------------------------------------------------------------
# Gamma, Beta, Dirichlet: first and second moments, and E[const + lin.x + x^T quad x].
# --------------------------------------------------------------------------------------------


def moments(family: str, params: dict) -> tuple[jax.Array, jax.Array]:
    """(E x, E x x^T) of the flattened event, for independent coordinates / simplices."""
    if family == "Gamma":
        a, b = params["concentration"], params["rate"]
        mean, var = a / b, a / jnp.square(b)
        cov = jnp.diag(var.reshape(-1))
    elif family == "Beta":
        a, b = params["a"], params["b"]
        s = a + b
        mean, var = a / s, a * b / (jnp.square(s) * (s + 1))
        cov = jnp.diag(var.reshape(-1))
    elif family == "Dirichlet":
        k = params["concentration"].shape[-1]
        alpha = params["concentration"].reshape(-1, k)  # [B, K], independent simplices
        a0 = jnp.sum(alpha, axis=-1, keepdims=True)
        m = alpha / a0
        nb = alpha.shape[0]
        # Cov within simplex b: (diag(m_b) - m_b m_b^T) / (a0_b + 1); zero across simplices.
        within = (jnp.eye(k)[None] * m[:, :, None] - m[:, :, None] * m[:, None, :]) / (
            a0[:, :, None] + 1
        )
        cov = jnp.einsum("bkl,bc->bkcl", within, jnp.eye(nb)).reshape(nb * k, nb * k)
        mean = m
    else:
        raise ValueError(family)
    mean = mean.reshape(-1)
    return mean, cov + jnp.outer(mean, mean)


def quadratic_expectation(c: dict, family: str, params: dict) -> jax.Array:
    """E[const + lin.x + x^T quad x] with x the flattened event of ``family(params)``."""
    m, second = moments(family, params)
    return c["const"] + c["lin"] @ m + jnp.sum(c["quad"] * second)


def quadratic_cost(c: dict, x: jax.Array) -> jax.Array:
    """const + lin.x + x^T quad x of the flattened sample ``x``; returns ``[]``."""
    x = x.reshape(-1)
    return c["const"] + c["lin"] @ x + x @ c["quad"] @ x


def quadratic_costs(n: int, rng: np.random.Generator) -> tuple[list[str], dict]:
    """Costs of an ``n``-coordinate event, stacked [3 + n, ...]: constant, linear, quadratic,
    then ``x_i`` for each coordinate i (whose gradients are the rows of d E[x] / d params)."""
    m = rng.normal(size=(n, n)) / math.sqrt(n)
    rows = {
        "constant": (1.3, np.zeros(n), np.zeros((n, n))),
        "linear": (0.2, rng.normal(size=n), np.zeros((n, n))),
        "quadratic": (0.0, 0.5 * rng.normal(size=n), (m + m.T) / 2 + np.eye(n)),
        **{f"x_{i}": (0.0, np.eye(n)[i], np.zeros((n, n))) for i in range(n)},
    }
    stacked = {
        f: np.stack([np.asarray(r[i], np.float32) for r in rows.values()])
        for i, f in enumerate(("const", "lin", "quad"))
    }
    return list(rows), stacked


# --------------------------------------------------------------------------------------------
# Bernoulli, Categorical: exact expectations by enumerating every outcome.
# --------------------------------------------------------------------------------------------


def bernoulli_outcomes(dim: int) -> np.ndarray:
    """All 2^dim outcomes, ``[2^dim, dim]`` float32 0/1."""
    return np.array(list(itertools.product([0.0, 1.0], repeat=dim)), np.float32)


def bernoulli_expectation(f, logits: jax.Array) -> jax.Array:
    """sum_x p(x) f(x) over all outcomes of independent Bernoulli(sigmoid(logits))."""
    xs = jnp.asarray(bernoulli_outcomes(logits.shape[0]))
    p = jax.nn.sigmoid(logits)
    probs = jnp.prod(jnp.where(xs == 1, p, 1 - p), axis=1)
    return probs @ jax.vmap(f)(xs)


def categorical_outcomes(batch: int, k: int) -> np.ndarray:
    """All k^batch outcomes of ``batch`` independent categoricals, ``[k^batch, batch]`` int32."""
    return np.array(list(itertools.product(range(k), repeat=batch)), np.int32)


def categorical_expectation(f, logits: jax.Array) -> jax.Array:
    """sum_x p(x) f(x) for independent Categorical(softmax(logits[b])), logits [B, K]."""
    nb, k = logits.shape
    xs = jnp.asarray(categorical_outcomes(nb, k))
    logp = jax.nn.log_softmax(logits, axis=-1)  # [B, K]
    lp = jnp.sum(logp[jnp.arange(nb), xs], axis=1)  # [k^B]
    return jnp.exp(lp) @ jax.vmap(f)(xs)


# --------------------------------------------------------------------------------------------
# Statistical checks with a Bonferroni-corrected z.
# --------------------------------------------------------------------------------------------


def as64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def mean_se(samples, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sample mean and its standard error along ``axis`` (float64)."""
    s = as64(samples)
    n = s.shape[axis]
    return s.mean(axis), s.std(axis, ddof=1) / math.sqrt(n)


def variance_se(samples, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unbiased sample variance and its standard error along ``axis`` (float64).

    Var(s^2) = (mu_4 - sigma^4 (n - 3) / (n - 1)) / n, with mu_4, sigma^2 estimated from the
    sample (fourth central moment).
    """
    s = as64(samples)
    n = s.shape[axis]
    d = s - s.mean(axis, keepdims=True)
    var = np.sum(d**2, axis) / (n - 1)
    m4 = np.mean(d**4, axis)
    return var, np.sqrt(np.maximum(m4 - var**2 * (n - 3) / (n - 1), 0.0) / n)


def summarize(samples, axis: int = 0) -> dict[str, np.ndarray]:
    """Mean, its standard error and the mean absolute value along ``axis`` (float64)."""
    s = as64(samples)
    mean, se = mean_se(s, axis)
    return {"mean": mean, "se": se, "mean_abs": np.abs(s).mean(axis)}


@dataclasses.dataclass
class _Check:
    label: str
    estimate: np.ndarray
    se: np.ndarray
    exact: np.ndarray
    slack: np.ndarray  # deterministic error allowance added to z * se


@dataclasses.dataclass
class Checks:
    """Collects many statistical checks, then asserts them all with one Bonferroni z.

    ``add_mean`` checks |mean - exact| <= z SE + FLOAT_RTOL (|exact| + mean |sample|) + slack
    element-wise; ``add_variance`` checks a sample variance the same way. Every array element is
    one check for the Bonferroni count.
    """

    items: list[_Check] = dataclasses.field(default_factory=list)

    def add_mean(self, label: str, samples, exact, *, axis: int = 0, slack=0.0) -> None:
        self.add_summary(label, summarize(samples, axis), exact, slack=slack)

    def add_summary(self, label: str, summary: dict, exact, *, scale=1.0, slack=0.0) -> None:
        """A mean check from ``summarize`` output; ``scale`` multiplies the estimates."""
        mean, se = scale * summary["mean"], abs(scale) * summary["se"]
        exact = np.broadcast_to(as64(exact), mean.shape)
        float_tol = FLOAT_RTOL * (np.abs(exact) + abs(scale) * summary["mean_abs"])
        self.items.append(_Check(label, mean, se, exact, float_tol + slack))

    def add_variance(self, label: str, samples, exact, *, axis: int = 0) -> None:
        var, se = variance_se(samples, axis)
        exact = np.broadcast_to(as64(exact), var.shape)
        self.items.append(_Check(label, var, se, exact, FLOAT_RTOL * np.abs(exact)))

    @property
    def num_checks(self) -> int:
        return sum(int(np.size(c.estimate)) for c in self.items)

    def z(self, alpha: float = ALPHA) -> float:
        return bonferroni_z(self.num_checks, alpha)

    def failures(self, z: float | None = None) -> list[str]:
        z = self.z() if z is None else z
        out = []
        for c in self.items:
            err = np.abs(c.estimate - c.exact)
            bad = ~(err <= z * c.se + c.slack)  # NaN fails
            for idx in zip(*np.nonzero(np.atleast_1d(bad)), strict=True):
                e, ex, se = (np.atleast_1d(a)[idx] for a in (c.estimate, c.exact, c.se))
                out.append(
                    f"{c.label}{list(idx)}: estimate {e:.6g}, exact {ex:.6g}, "
                    f"|err|/se = {abs(e - ex) / se if se > 0 else float('inf'):.2f}"
                )
        return out

    def assert_ok(self, alpha: float = ALPHA) -> None:
        z = self.z(alpha)
        bad = self.failures(z)
        assert not bad, (
            f"{len(bad)} of {self.num_checks} checks exceed z = {z:.2f} (Bonferroni, "
            f"alpha = {alpha}):\n" + "\n".join(bad[:30])
        )
