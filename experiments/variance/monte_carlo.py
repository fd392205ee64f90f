"""Monte Carlo single-sample variances of any registered estimator, a whole grid per compile.

One call of :func:`mc_moments` runs several estimators on every row of a grid in one jitted
program (a row is one cost and one ``k``, both traced, so the rows are a ``jax.vmap``) and
returns per-chunk moments of the per-sample estimates; :func:`combine` merges the chunks in
float64 into the variance per coordinate, averaged over the ``D`` coordinates, and its
standard error.

An estimator is a spec of ``estimators.registry`` (``"pathwise"``, ``"score_function+loo"``,
``"mypkg.mymod:my_estimator"``): the runner calls its ``per_sample`` with the estimator's
initial state (``init()``) and never asks which estimator it holds, with one exception made
for the statistic: a trailing ``+optimal`` baseline is estimated once per grid row from
``num_samples`` samples of its own (:data:`ROW_BASELINE`), so the points measure the variance
at :math:`b \approx b^*`, the value the exact curve assumes, rather than with a baseline
re-estimated from each chunk of samples.

Samples are processed ``chunk_size`` at a time (``jax.lax.map``), so memory is
``O(estimators * rows * chunk_size * D)`` whatever ``num_samples`` is. By default the rows and
the estimators share their samples (common random numbers, drawn once per chunk): every point
stays unbiased with its own standard error, and the points are correlated.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import estimators
from estimators import registry

from .costs import separable_cost
from .problems import Problem

# One vectorised step handles about this many scalar per-sample estimates: small enough to stay
# in cache (2**21 ran 2-4x slower on a 2-core CPU), large enough to amortise the loop.
STEP_ELEMENTS = 2**18
# An estimator evaluating f several times per sample (estimators.measure_valued: 4 D) handles
# about this many perturbed-sample elements per step.
MULTI_EVALUATION_STEP = 2**24
# The modifier whose baseline the runner estimates once per grid row (see the module docstring).
ROW_BASELINE = "optimal"


@functools.lru_cache(maxsize=64)
def estimator(spec: str) -> estimators.GradientEstimator:
    """``estimators.registry.get(spec)``, once per spec (the jit cache is keyed by the spec)."""
    return registry.get(spec)


def _row_baseline() -> estimators.Baseline:
    """A baseline whose value is the state it is given: the per-row ``b`` the runner made."""
    return estimators.Baseline(
        name=ROW_BASELINE,
        label="optimal baseline",
        value=lambda state, inputs: state,
        per_parameter=True,
    )


@functools.lru_cache(maxsize=64)
def _sampler(spec: str) -> tuple[estimators.GradientEstimator, bool]:
    """The estimator whose ``per_sample`` runs, and whether its state is a per-row baseline."""
    base_spec, plus, last = spec.rpartition("+")
    if plus and last.strip() == ROW_BASELINE:
        base = estimator(base_spec)
        if base.with_baseline is not None:
            return base.with_baseline(_row_baseline()), True
    return estimator(spec), False


def samples_per_estimate(est: estimators.GradientEstimator) -> int:
    """``K``: ``min_samples`` for an estimator that uses its samples jointly (``multi_sample``:
    its rows are not independent), measured over independent calls of ``K`` samples; 1 else."""
    return est.min_samples if est.multi_sample else 1


def _chunk_moments(g: jax.Array, count: jax.Array | None = None) -> dict:
    """Moments of one chunk of per-sample estimates ``g: [n, D]``.

    ``mean [D]``, ``m2 [D]`` (sum of squared deviations from the chunk mean), and the sums
    ``h1``, ``h2`` of ``h_i = mean_d (g_id - mean_d)^2`` and of its square, whose spread gives
    the standard error of the coordinate-averaged variance (correlations between coordinates
    included). With ``count`` (an int ``[]``, ``1 <= count <= n``), only the first ``count``
    rows of ``g`` enter: a short last chunk padded to the others' size, so that every chunk
    is the same traced program.
    """
    if count is None:
        mean = jnp.mean(g, axis=0, keepdims=True)
        dev2 = jnp.square(g - mean)
        h = jnp.mean(dev2, axis=1)
    else:
        keep = (jnp.arange(g.shape[0]) < count)[:, None]  # [n, 1]
        mean = jnp.sum(jnp.where(keep, g, 0.0), axis=0, keepdims=True) / count
        dev2 = jnp.where(keep, jnp.square(g - mean), 0.0)
        h = jnp.mean(dev2, axis=1)
    return {
        "mean": mean[0],
        "m2": jnp.sum(dev2, axis=0),
        "h1": jnp.sum(h),
        "h2": jnp.sum(jnp.square(h)),
    }


def chunk_sizes(num_samples: int, rows: int, dim: int, evaluations: int = 1) -> list[int]:
    """Sizes of the chunks ``num_samples`` is split into: equal ones, then maybe a remainder.

    About ``STEP_ELEMENTS / (rows * dim)`` samples per chunk; a divisor of ``num_samples`` near
    that is preferred, since a remainder chunk is a second traced copy of the estimator (twice
    the compile time). For an estimator that evaluates ``f`` ``evaluations > 1`` times per
    sample (``est.cost_evaluations(D)``; the measure-valued one, ``4 D``), at most
    ``MULTI_EVALUATION_STEP / (evaluations D)`` samples, the ones ``estimators.measure_valued``
    processes in one step of its own, for the same reason.
    """
    target = max(256, STEP_ELEMENTS // (rows * dim))
    if evaluations > 1:
        target = max(1, min(target, MULTI_EVALUATION_STEP // (evaluations * dim)))
    if num_samples <= target:
        return [num_samples]
    for size in range(target, (target - 1) // 2, -1):
        if num_samples % size == 0:
            return [size] * (num_samples // size)
    num_chunks = -(-num_samples // target)
    size = -(-num_samples // num_chunks)
    full, rem = divmod(num_samples, size)
    return [size] * full + ([rem] if rem else [])


def mc_moments(
    key: jax.Array,
    weights: jax.Array,
    ks: jax.Array,
    constants: jax.Array,
    values: dict[str, jax.Array],
    *,
    problem: Problem,
    specs: tuple[str, ...],
    terms: tuple[str, ...],
    dim: int,
    chunks: tuple[int, ...],
    shared_rows: bool = True,
) -> dict[str, dict]:
    """Per-chunk moments of each estimator's per-sample estimates for every row of a grid.

    Row ``r`` is the cost ``constants[r] + sum_d sum_t weights[r, t] term_t(x_d; ks[r])``
    (``costs.separable_cost``) under ``problem.dist_builder(params)`` with
    ``params = problem.params(values, dim)`` (leaves ``[D]``), the gradient taken with respect
    to ``params``. All of ``specs`` run in this ONE program (one compile, one dispatch).

    Random numbers: chunk ``c`` has one key, and every estimator is called with it: an
    estimator is a deterministic function of its key, so estimators that draw the same way
    (pathwise and score function both draw ``x = mu + sigma * eps``) see the same samples,
    which XLA draws once. With ``shared_rows`` (the default) every row uses that key too:
    common random numbers over the grid, the samples drawn once per chunk rather than once
    per row and chunk. Each point is still an unbiased estimate with the same standard error
    as from samples of its own; the points (rows, and estimators) are then correlated with
    each other. ``shared_rows=False`` gives row ``r`` its own keys, split from the chunk's.

    Args:
      key: PRNG key; chunks use independent keys split from it, and a ``+optimal``
        baseline (see the module docstring) keys independent of the estimators'.
      weights: ``[R, len(TERMS)]``; ks, constants: ``[R]``.
      values: the problem's parameter values (``problem.values``' keys), each ``[]``.
      problem: the :class:`problems.Problem` (static).
      specs: ``estimators.registry`` specs (static); see the module docstring.
      terms: the cost terms with nonzero weights (static).
      dim: ``D`` (static).
      chunks: the chunk sizes, summing to the number of samples (static; see
        :func:`chunk_sizes`): all but the last of one size, the last no larger. Every chunk
        runs the same traced body (``lax.map``): a shorter last one is padded and masked.
      shared_rows: whether the rows share their samples (static; see above).

    Returns:
      ``{spec: {leaf: m}}`` for each leaf of ``problem.parameters``, ``m`` the moments of
      :func:`_chunk_moments` stacked over chunks: ``mean, m2: [R, C, D]``, ``h1, h2: [R, C]``.
    """
    jitted = _mc_moments_cpu if jax.default_backend() == "cpu" else _mc_moments_jit
    return jitted(
        key, weights, ks, constants, values, problem=problem, specs=specs, terms=terms, dim=dim,
        chunks=chunks, shared_rows=shared_rows,
    )  # fmt: skip


def _mc_moments(
    key: jax.Array,
    weights: jax.Array,
    ks: jax.Array,
    constants: jax.Array,
    values: dict[str, jax.Array],
    *,
    problem: Problem,
    specs: tuple[str, ...],
    terms: tuple[str, ...],
    dim: int,
    chunks: tuple[int, ...],
    shared_rows: bool = True,
) -> dict[str, dict]:
    """:func:`mc_moments` itself (jitted twice below, per backend)."""
    size = chunks[0]
    if any(c > size or c < 1 for c in chunks[1:]):
        raise ValueError(f"chunks must be one size and a last one no larger; got {chunks}")
    masked = chunks[-1] != size
    num_rows, num_chunks = ks.shape[0], len(chunks)
    params = problem.params(values, dim)
    dist_builder = problem.dist_builder

    def cost_of(w: jax.Array, k: jax.Array, a: jax.Array):
        return lambda x: separable_cost(x, w, k, a, terms=terms)

    def row_keys(k_: jax.Array) -> jax.Array:  # [C] or [C, R]: one key per chunk (and row)
        if shared_rows:
            return jax.random.split(k_, num_chunks)
        return jax.random.split(k_, (num_chunks, num_rows))

    row_axis = None if shared_rows else 0
    estimator_key, baseline_key = jax.random.split(key)
    keys = row_keys(estimator_key)
    counts = jnp.asarray(chunks, jnp.int32)
    samplers = {spec: _sampler(spec) for spec in specs}
    baseline: Any = None
    if any(row_baseline for _, row_baseline in samplers.values()):
        # b* estimated per row from as many samples again, independent of the estimators'
        # (the full chunk size for every chunk: a few more samples in a padded last one).
        def baselines(chunk_key: jax.Array) -> dict:
            def one(k_: jax.Array, w: jax.Array, k: jax.Array, a: jax.Array) -> dict:
                cost = cost_of(w, k, a)
                return estimators.optimal_baseline(cost, params, dist_builder, k_, num_samples=size)

            return jax.vmap(one, in_axes=(row_axis, 0, 0, 0))(chunk_key, weights, ks, constants)

        baseline = jax.tree.map(
            lambda b: jnp.mean(b, axis=0), _map(baselines, row_keys(baseline_key))
        )

    def chunk(args: tuple[jax.Array, jax.Array]) -> dict:  # all specs, all rows, one chunk
        chunk_key, count = args
        out = {}
        for spec, (est, row_baseline) in samplers.items():
            joint = samples_per_estimate(est)

            def one(k_, w, k, a, b, est=est, row_baseline=row_baseline, joint=joint) -> dict:
                state = b if row_baseline else est.init()
                cost = cost_of(w, k, a)
                if joint > 1:  # n independent calls of K samples, each call's mean estimate

                    def call(key: jax.Array) -> dict:
                        g = est.per_sample(
                            cost, params, dist_builder, key, num_samples=joint, state=state
                        )
                        return jax.tree.map(lambda x: jnp.mean(x, axis=0), g)

                    jac = jax.vmap(call)(jax.random.split(k_, size))
                else:
                    jac = est.per_sample(
                        cost, params, dist_builder, k_, num_samples=size, state=state
                    )
                n = count if masked else None
                return {p: _chunk_moments(jac[p], n) for p in problem.parameters}

            b_axis = None if baseline is None else 0
            in_axes = (row_axis, 0, 0, 0, b_axis)
            out[spec] = jax.vmap(one, in_axes=in_axes)(chunk_key, weights, ks, constants, baseline)
        return out

    out = _map(chunk, (keys, counts))  # [C, R, ...]
    return jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), out)  # [R, C, ...]


_STATIC = ("problem", "specs", "terms", "dim", "chunks", "shared_rows")
_mc_moments_jit = jax.jit(_mc_moments, static_argnames=_STATIC)
# On the CPU, LLVM optimisation level 1 instead of XLA's default 2: the runner's programs run
# once or a few times, and level 1 compiles them faster at the same speed (Figs 2-7 from cold,
# cache off: 25.6 and 29.5 s against 32.5 and 32.5 s, alternating; Fig 2's grid steady state
# within noise; `python benchmarks/bench_variance_figures.py`). Level 0 is 20x slower to run.
CPU_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}
_mc_moments_cpu = jax.jit(
    _mc_moments, static_argnames=_STATIC, compiler_options=CPU_COMPILER_OPTIONS
)


def _map(fn, xs: Any):
    """``jax.lax.map`` over the leading axis of the pytree ``xs``; a plain call (no loop to
    compile) for length 1."""
    if jax.tree.leaves(xs)[0].shape[0] == 1:
        return jax.tree.map(lambda a: a[None], fn(jax.tree.map(lambda a: a[0], xs)))
    return jax.lax.map(fn, xs)


def combine(moments: dict, chunks: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Variance per coordinate averaged over coordinates, and its standard error, per row.

    Merges the chunks in float64 (Chan et al.'s pairwise formula), with the unbiased
    ``1/(N-1)`` normalisation. The standard error is that of a mean of the ``N`` values
    ``h_i`` (for ``D = 1``, ``sqrt((m4 - m2^2) / N)``, the usual standard error of a sample
    variance from the fourth central moment).

    Args:
      moments: one parameter's entry of :func:`mc_moments`'s result.
      chunks: the chunk sizes it was computed with.

    Returns:
      ``(variance [R], standard_error [R])``.
    """
    n_c = np.asarray(chunks, np.float64)  # [C]
    n = n_c.sum()
    mean_c = np.asarray(moments["mean"], np.float64)  # [R, C, D]
    mean = np.einsum("c,rcd->rd", n_c, mean_c) / n
    m2 = np.asarray(moments["m2"], np.float64).sum(axis=1) + np.einsum(
        "c,rcd->rd", n_c, np.square(mean_c - mean[:, None, :])
    )
    variance = np.mean(m2 / (n - 1), axis=1)
    h1 = np.asarray(moments["h1"], np.float64).sum(axis=1) / n
    h2 = np.asarray(moments["h2"], np.float64).sum(axis=1) / n
    se = np.sqrt(np.maximum(h2 - np.square(h1), 0.0) / n)
    return variance, se


def first_coordinate_mean(moments: dict, chunks: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Mean of the first coordinate's per-sample estimates, and its standard error, per row.

    The Monte Carlo estimate of the gradient that the problem's exact gradient is compared
    with: ``sqrt(s^2 / N)`` with ``s^2`` the unbiased variance of the first coordinate (the
    chunks merged as in :func:`combine`).

    Returns:
      ``(mean [R], standard_error [R])``.
    """
    n_c = np.asarray(chunks, np.float64)  # [C]
    n = n_c.sum()
    mean_c = np.asarray(moments["mean"], np.float64)[:, :, 0]  # [R, C]
    mean = mean_c @ n_c / n
    m2 = np.asarray(moments["m2"], np.float64)[:, :, 0].sum(axis=1)
    m2 = m2 + np.square(mean_c - mean[:, None]) @ n_c
    return mean, np.sqrt(m2 / (n - 1) / n)
