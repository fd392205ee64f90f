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

Any number of samples (:func:`mc_statistics`, :func:`plan`): the chunk size follows the
device (:func:`step_elements`: cache-sized on a CPU, from the memory on an accelerator), and
more chunks than one program call should return (:data:`LAUNCH_ELEMENTS`) are several calls
("launches"), each merged on the host in float64 as it arrives (:class:`Statistics`, Chan et
al.'s pairwise formula): float32 sums never run over more than one chunk, so no digits are lost
to ``num_samples``, and memory stays bounded. Chunk ``c``'s key is
``jax.random.split(k, num_chunks)[c]`` whatever launch it is in (the partitionable threefry
hashes ``c`` alone: :func:`_keys_at`), so one launch and several see the same samples.

Devices (issue 15): with a mesh of several devices (``experiments._mesh``), the chunks of a
launch are split over them (``shard_map``; the sample axis in blocks of a chunk), each chunk
computed whole on one device by the one-device code, padded to a multiple of the device count
with chunks that are computed and dropped; the per-chunk outputs are gathered to every device
(replicated: every process can read them). Results equal the one-device ones within float32
rounding (the SPMD-partitioned program is fused differently; 2 and 8 devices agreed bit for
bit with each other where checked; ``tests/test_sharding_variance.py`` derives the
tolerance); on one device the program is the one-device program, whose numbers are the
figures'.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.random import threefry_2x32
from jax.sharding import NamedSharding, PartitionSpec
from jax.typing import ArrayLike

import estimators
from estimators import registry

from .._mesh import AXIS
from .costs import separable_coordinate_costs, separable_cost
from .problems import Problem

if TYPE_CHECKING:
    from jax.sharding import Mesh

# One vectorised step handles about this many scalar per-sample estimates: small enough to stay
# in cache (2**21 ran 2-4x slower on a 2-core CPU), large enough to amortise the loop.
STEP_ELEMENTS = 2**18
# An estimator evaluating f several times per sample (estimators.measure_valued: 4 D) handles
# about this many perturbed-sample elements per step.
MULTI_EVALUATION_STEP = 2**24
# On an accelerator (step_elements): a step from its memory, bytes_limit / this many bytes per
# scalar estimate (an estimate is a few dozen float32 temporaries across the estimators and
# their vmaps, with room to spare: an H100's 80 GB gives 2**26), capped at MAX_STEP_ELEMENTS;
# ACCELERATOR_STEP_ELEMENTS where the device reports no memory.
ACCELERATOR_BYTES_PER_ELEMENT = 1024
MAX_STEP_ELEMENTS = 2**26
ACCELERATOR_STEP_ELEMENTS = 2**24
# One program call (a launch) returns per-chunk moments for at most about this many
# (chunk, row, coordinate, estimator-parameter pair) elements, 16 MB per moment, 64 MB in all:
# more samples are more launches, merged on the host, so memory does not grow with num_samples.
LAUNCH_ELEMENTS = 2**22
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


def _search_sizes(num_samples: int, target: int) -> tuple[int, int, int]:
    """``(size, num_chunks, last)``: :func:`chunk_sizes` without listing every chunk."""
    if num_samples <= target:
        return num_samples, 1, num_samples
    # A divisor near the target (at most 2**17 candidates: all of them for the CPU's targets).
    for size in range(target, max((target - 1) // 2, target - 2**17), -1):
        if num_samples % size == 0:
            return size, num_samples // size, size
    num_chunks = -(-num_samples // target)
    size = -(-num_samples // num_chunks)
    full, rem = divmod(num_samples, size)
    return size, full + (1 if rem else 0), rem or size


def _target(rows: int, dim: int, evaluations: int, step_elements: int) -> int:
    target = max(256, step_elements // (rows * dim))
    if evaluations > 1:
        target = max(1, min(target, MULTI_EVALUATION_STEP // (evaluations * dim)))
    return target


def chunk_sizes(
    num_samples: int, rows: int, dim: int, evaluations: int = 1, step_elements: int = STEP_ELEMENTS
) -> list[int]:
    """Sizes of the chunks ``num_samples`` is split into: equal ones, then maybe a remainder.

    About ``step_elements / (rows * dim)`` samples per chunk (:func:`step_elements`: the CPU's
    :data:`STEP_ELEMENTS` by default); a divisor of ``num_samples`` near that is preferred,
    since a remainder chunk is a second traced copy of the estimator (twice the compile time).
    For an estimator that evaluates ``f`` ``evaluations > 1`` times per sample
    (``est.cost_evaluations(D)``; the measure-valued one, ``4 D``), at most
    ``MULTI_EVALUATION_STEP / (evaluations D)`` samples, the ones ``estimators.measure_valued``
    processes in one step of its own, for the same reason. A list of every chunk: for very
    many samples use :func:`plan`, which does not list them.
    """
    size, num_chunks, last = _search_sizes(
        num_samples, _target(rows, dim, evaluations, step_elements)
    )
    return [size] * (num_chunks - 1) + [last]


def step_elements(device: Any | None = None) -> int:
    """Scalar per-sample estimates one vectorised step handles on ``device`` (default: the first).

    The CPU: :data:`STEP_ELEMENTS` (a cache-sized step; bigger ones ran slower). An accelerator:
    from its memory, ``memory_stats()["bytes_limit"] / ACCELERATOR_BYTES_PER_ELEMENT`` rounded
    down to a power of two, between :data:`STEP_ELEMENTS` and :data:`MAX_STEP_ELEMENTS`
    (:data:`ACCELERATOR_STEP_ELEMENTS` where the device reports no memory): every step is at
    least one kernel launch, and CPU-sized steps left an H100 mostly idle (0.23x a one-shot
    program). The chunks, and so the random numbers, follow this number: results on one
    kind of device do not depend on how many of them the mesh has.
    """
    device = device if device is not None else jax.devices()[0]
    if device.platform == "cpu":
        return STEP_ELEMENTS
    stats = device.memory_stats() or {}
    limit = stats.get("bytes_limit")
    if not limit:
        return ACCELERATOR_STEP_ELEMENTS
    elements = 1 << max(0, int(limit // ACCELERATOR_BYTES_PER_ELEMENT).bit_length() - 1)
    return int(min(MAX_STEP_ELEMENTS, max(STEP_ELEMENTS, elements)))


@dataclasses.dataclass(frozen=True)
class Plan:
    """How ``num_samples`` samples are processed: chunks of ``size`` (the last ``last``),
    ``launch`` chunks per program call (the last call maybe fewer, padded).

    A chunk is the unit of the random numbers (chunk ``c`` has the key
    ``jax.random.split(key, num_chunks)[c]``, whatever the launch it falls in) and of the
    per-chunk moments, which are computed on one device. A launch is one call of the jitted
    program: its outputs are ``O(launch * rows * D)``, whatever ``num_samples`` is.
    """

    size: int
    num_chunks: int
    last: int
    launch: int

    @property
    def num_samples(self) -> int:
        return self.size * (self.num_chunks - 1) + self.last

    @property
    def num_launches(self) -> int:
        return -(-self.num_chunks // self.launch)

    @property
    def masked(self) -> bool:
        return self.last != self.size

    def chunks(self, j: int) -> tuple[int, ...]:
        """The sizes of launch ``j``'s chunks (without padding)."""
        first = j * self.launch
        n = min(self.launch, self.num_chunks - first)
        return (self.size,) * (n - 1) + (
            (self.last,) if first + n == self.num_chunks else (self.size,)
        )


def plan(
    num_samples: int,
    rows: int,
    dim: int,
    evaluations: int = 1,
    step: int = STEP_ELEMENTS,
    launch_elements: int | None = None,
    outputs: int = 1,
) -> Plan:
    """The chunks of :func:`chunk_sizes` (``step``: :func:`step_elements`), grouped into
    launches of at most ``launch_elements / (rows * dim * outputs)`` chunks each (default
    :data:`LAUNCH_ELEMENTS`; ``outputs``: the number of (estimator, parameter) pairs, each
    returning per-chunk moments), as equal as possible.

    Every bundled figure at its configured size is one launch (what it always was).
    """
    size, num_chunks, last = _search_sizes(num_samples, _target(rows, dim, evaluations, step))
    if launch_elements is None:
        launch_elements = LAUNCH_ELEMENTS
    most = max(1, launch_elements // (rows * dim * outputs))
    launches = -(-num_chunks // most)
    return Plan(size, num_chunks, last, -(-num_chunks // launches))


def _counters(start: int, count: int, rows: int | None) -> tuple[np.ndarray, np.ndarray]:
    """High and low 32-bit words of the flat indices of chunks ``start .. start + count``
    (times ``rows`` + row, ``[count, rows]``, with ``rows``): what ``jax.random.split``
    hashes under the partitionable threefry."""
    index = np.arange(count, dtype=np.uint64) + np.uint64(start)
    if rows is not None:
        index = index[:, None] * np.uint64(rows) + np.arange(rows, dtype=np.uint64)[None, :]
    return (index >> np.uint64(32)).astype(np.uint32), (index & np.uint64(0xFFFFFFFF)).astype(
        np.uint32
    )


def _keys_at(key_data: Any, hi: Any, lo: Any) -> jax.Array:
    """Keys ``jax.random.split(key, n)[i]`` (any ``n > i``) for the indices ``i = hi:lo``.

    Under the partitionable threefry (``jax_threefry_partitionable``, the default since
    jax 0.5), key ``i`` of a split hashes only ``i``: the keys of any range of chunks come
    without the others' (``tests/test_variance_monte_carlo.py`` checks this against
    ``jax.random.split``).
    """
    shape = hi.shape
    bits = threefry_2x32((key_data[0], key_data[1]), jnp.concatenate([hi.ravel(), lo.ravel()]))
    n = hi.size
    data = jnp.stack([bits[:n].reshape(shape), bits[n:].reshape(shape)], axis=-1)
    return jax.random.wrap_key_data(data, impl="threefry2x32")


# From this dimension on, the measure-valued estimator's 4 D evaluations per sample (each at
# one replaced coordinate) go through `costs.separable_coordinate_costs`, O(D) each instead of
# O(D^2): the same values up to rounding. Below it the plain evaluations are faster (steady
# state, 1e5 samples, 2-core CPU: D = 10, 15: 130, 231 ms plain against 156, 285 ms; D = 20,
# 30, 100: 795, 972, 7585 ms against 301, 344, 1277 ms).
COORDINATE_COSTS_FROM_DIM = 16


def _check_prng(key: jax.Array) -> None:
    if not jax.config.jax_threefry_partitionable:  # type: ignore[attr-defined]
        raise RuntimeError(
            "the variance runner needs jax_threefry_partitionable=True (the default): its "
            "chunks' keys, and so its results, must not depend on how chunks are laid out"
        )
    if str(jax.random.key_impl(key)) != "threefry2x32":
        raise ValueError(
            f"the variance runner needs threefry2x32 keys; got {jax.random.key_impl(key)}"
        )


def _padded(n: int, mesh: Mesh | None) -> int:
    """``n`` rounded up to a multiple of the mesh's device count."""
    devices = 1 if mesh is None else mesh.devices.size
    return -(-n // devices) * devices


def _launch(
    key_data: np.ndarray,
    hi: np.ndarray | None,
    lo: np.ndarray | None,
    counts: np.ndarray | None,
    base_key_data: np.ndarray | None,
    base_hi: np.ndarray | None,
    base_lo: np.ndarray | None,
    baseline: Any,
    weights: ArrayLike,
    ks: ArrayLike,
    constants: ArrayLike,
    values: dict[str, jax.Array],
    *,
    problem: Problem,
    specs: tuple[str, ...],
    terms: tuple[str, ...],
    dim: int,
    size: int,
    masked: bool,
    shared_rows: bool,
    num_base: int | None,
    mesh: Mesh | None,
) -> Any:
    """One program call over a launch's chunks (jitted below; see :func:`mc_moments`).

    Chunk ``i`` of the launch has the key ``_keys_at(key_data, hi[i], lo[i])`` (``hi, lo:
    [L]``, or ``[L, R]`` without ``shared_rows``) and ``counts[i]`` samples (``[L]``, used
    when ``masked``). The ``+optimal`` row baseline is either computed here from the
    ``num_base`` chunks ``base_hi, base_lo`` (``[Lb]``, the first ``num_base`` of them real)
    and averaged in float32, or given (``baseline``, per leaf ``[R, D]``). With ``hi`` None,
    the program returns the per-chunk baselines of ``base_hi, base_lo`` instead (``[Lb, R, D]``
    per leaf), for a caller that averages them over several launches.

    With a ``mesh`` of several devices, the chunks (the leading axis of ``hi, lo, counts``,
    ``base_hi, base_lo``; a multiple of the device count) are split over its devices
    (``shard_map``): each chunk is computed whole on one device, by the same code as on one
    device, and the outputs are per-chunk, with the chunk axis sharded; the in-program
    baseline average gathers the per-chunk baselines first and averages them on every device
    in the one-device order.

    Returns the per-chunk moments ``{spec: {leaf: m}}``, ``m`` as :func:`_chunk_moments`'s
    with a leading chunk axis: ``mean, m2: [L, R, D]``, ``h1, h2: [L, R]``.
    """
    params = problem.params(values, dim)
    dist_builder = problem.dist_builder
    row_axis = None if shared_rows else 0
    samplers = {spec: _sampler(spec) for spec in specs}
    several = mesh is not None and mesh.devices.size > 1

    def cost_of(w: jax.Array, k: jax.Array, a: jax.Array):
        def f(x: jax.Array) -> jax.Array:
            return separable_cost(x, w, k, a, terms=terms)

        if dim < COORDINATE_COSTS_FROM_DIM:
            return f

        def replaced(x: jax.Array, values: jax.Array) -> jax.Array:
            return separable_coordinate_costs(x, values, w, k, a, terms=terms)

        return estimators.with_coordinate_costs(f, replaced)

    def baselines(counters: tuple, grid: tuple) -> dict:  # one chunk, all rows
        w_, k_s, c_ = grid
        chunk_key = _keys_at(base_key_data, *counters)

        def one(k_: jax.Array, w: jax.Array, k: jax.Array, a: jax.Array) -> dict:
            cost = cost_of(w, k, a)
            return estimators.optimal_baseline(cost, params, dist_builder, k_, num_samples=size)

        return jax.vmap(one, in_axes=(row_axis, 0, 0, 0))(chunk_key, w_, k_s, c_)

    def chunk(xs: tuple, shared: tuple) -> dict:  # all specs, all rows, one chunk
        (c_hi, c_lo), count = xs
        w_, k_s, c_, b_ = shared
        chunk_key = _keys_at(key_data, c_hi, c_lo)
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

            b_axis = None if b_ is None else 0
            in_axes = (row_axis, 0, 0, 0, b_axis)
            out[spec] = jax.vmap(one, in_axes=in_axes)(chunk_key, w_, k_s, c_, b_)
        return out

    def over_chunks(fn, xs: Any, shared: Any, reduce=None) -> Any:
        """``fn(x, shared)`` for every chunk ``x`` of ``xs`` (leading axis), then ``reduce``."""

        def local(xs_: Any, shared_: Any) -> Any:
            return _map(lambda x: fn(x, shared_), xs_)

        if not several:
            out = local(xs, shared)
            return out if reduce is None else reduce(out)
        spec = PartitionSpec(AXIS)
        if reduce is None:
            return jax.shard_map(
                local, mesh=mesh, in_specs=(spec, PartitionSpec()), out_specs=spec
            )(xs, shared)

        def gathered(xs_: Any, shared_: Any) -> Any:  # every device: all chunks, one-device order
            full = jax.lax.all_gather(local(xs_, shared_), AXIS, tiled=True)
            return reduce(full)

        # check_vma off: every device reduces the same gathered array, so the result is
        # replicated, which the checker cannot infer through all_gather's tiling.
        return jax.shard_map(
            gathered,
            mesh=mesh,
            in_specs=(spec, PartitionSpec()),
            out_specs=PartitionSpec(),
            check_vma=False,
        )(xs, shared)

    grid = (weights, ks, constants)
    if hi is None:  # the per-chunk baselines only
        return over_chunks(baselines, (base_hi, base_lo), grid)
    if base_hi is not None:  # b* per row from as many samples again, before the estimators
        baseline = over_chunks(
            baselines,
            (base_hi, base_lo),
            grid,
            reduce=lambda b: jax.tree.map(lambda x: jnp.mean(x[:num_base], axis=0), b),
        )
    return over_chunks(chunk, ((hi, lo), counts), (*grid, baseline))


_STATIC = (
    "problem", "specs", "terms", "dim", "size", "masked", "shared_rows", "num_base", "mesh",
)  # fmt: skip
_launch_jit = jax.jit(_launch, static_argnames=_STATIC)
# On the CPU, LLVM optimisation level 1 instead of XLA's default 2: the runner's programs run
# once or a few times, and level 1 compiles them faster at the same speed (Figs 2-7 from cold,
# cache off: 25.6 and 29.5 s against 32.5 and 32.5 s, alternating; Fig 2's grid steady state
# within noise; `python benchmarks/bench_variance_figures.py`). Level 0 is 20x slower to run.
CPU_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}
_launch_cpu = jax.jit(_launch, static_argnames=_STATIC, compiler_options=CPU_COMPILER_OPTIONS)


def _map(fn, xs: Any):
    """``jax.lax.map`` over the leading axis of the pytree ``xs``; a plain call (no loop to
    compile) for length 1."""
    if jax.tree.leaves(xs)[0].shape[0] == 1:
        return jax.tree.map(lambda a: a[None], fn(jax.tree.map(lambda a: a[0], xs)))
    return jax.lax.map(fn, xs)


def _split_key(key: jax.Array) -> tuple[np.ndarray, np.ndarray]:
    """The estimators' and the row baseline's key data (``uint32 [2]`` each, on the host: the
    same on every process)."""
    _check_prng(key)
    estimator_key, baseline_key = jax.random.split(key)
    return np.asarray(jax.random.key_data(estimator_key)), np.asarray(
        jax.random.key_data(baseline_key)
    )


def _to_host(tree: Any, mesh: Mesh | None, n: int) -> Any:
    """The first ``n`` entries of the leading (chunk) axis of every leaf, as numpy arrays, via
    a replicated copy (every process of a multi-process run can read it)."""
    if mesh is not None and mesh.devices.size > 1:
        tree = jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))
    return jax.tree.map(lambda a: np.asarray(a)[:n], tree)


def _call(*args: Any, **kwargs: Any) -> Any:
    jitted = _launch_cpu if jax.default_backend() == "cpu" else _launch_jit
    return jitted(*args, **kwargs)


def mc_moments(
    key: jax.Array,
    weights: ArrayLike,
    ks: ArrayLike,
    constants: ArrayLike,
    values: dict[str, jax.Array],
    *,
    problem: Problem,
    specs: tuple[str, ...],
    terms: tuple[str, ...],
    dim: int,
    chunks: tuple[int, ...],
    shared_rows: bool = True,
    mesh: Mesh | None = None,
    sharded_output: bool = False,
) -> dict[str, dict]:
    """Per-chunk moments of each estimator's per-sample estimates for every row of a grid.

    Row ``r`` is the cost ``constants[r] + sum_d sum_t weights[r, t] term_t(x_d; ks[r])``
    (``costs.separable_cost``) under ``problem.dist_builder(params)`` with
    ``params = problem.params(values, dim)`` (leaves ``[D]``), the gradient taken with respect
    to ``params``. All of ``specs`` run in this ONE program (one compile, one dispatch).

    Random numbers: chunk ``c`` has one key, ``jax.random.split(k_e, C)[c]`` with ``k_e`` the
    first key of ``jax.random.split(key)``, and every estimator is called with it: an
    estimator is a deterministic function of its key, so estimators that draw the same way
    (pathwise and score function both draw ``x = mu + sigma * eps``) see the same samples,
    which XLA draws once. With ``shared_rows`` (the default) every row uses that key too:
    common random numbers over the grid, the samples drawn once per chunk rather than once
    per row and chunk. Each point is still an unbiased estimate with the same standard error
    as from samples of its own; the points (rows, and estimators) are then correlated with
    each other. ``shared_rows=False`` gives row ``r`` its own keys,
    ``jax.random.split(k_e, (C, R))[c, r]``.

    Devices: with a ``mesh`` (``experiments._mesh.make_mesh``) of several devices, the chunks
    (the sample axis, in blocks of a chunk) are spread over its devices, each computed whole
    on one device by the one-device code; the number of chunks is padded to a multiple of the
    device count with chunks that are computed and dropped. The per-chunk moments are then the
    one-device ones bit for bit (tested), and so is everything :func:`combine` makes of them.

    Args:
      key: PRNG key (threefry); chunks use independent keys split from it, and a ``+optimal``
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
      mesh: the devices to spread the chunks over; ``None``: the default device.
      sharded_output: return the program's own output (chunk axis first, sharded over the
        mesh's devices, padding included) instead of numpy arrays ``[R, C, ...]``: for tests.

    Returns:
      ``{spec: {leaf: m}}`` for each leaf of ``problem.parameters``, ``m`` the moments of
      :func:`_chunk_moments` stacked over chunks: ``mean, m2: [R, C, D]``, ``h1, h2: [R, C]``.
    """
    size = chunks[0]
    if any(c > size or c < 1 for c in chunks[1:]):
        raise ValueError(f"chunks must be one size and a last one no larger; got {chunks}")
    num_chunks = len(chunks)
    num_rows = np.shape(ks)[0]
    padded = _padded(num_chunks, mesh)
    key_data, base_key_data = _split_key(key)
    rows = None if shared_rows else num_rows
    hi, lo = _counters(0, padded, rows)
    counts = np.asarray(chunks + (size,) * (padded - num_chunks), np.int32)
    with_baseline = any(_sampler(spec)[1] for spec in specs)
    base_hi, base_lo = _counters(0, padded, rows) if with_baseline else (None, None)
    out = _call(
        key_data, hi, lo, counts, base_key_data, base_hi, base_lo, None,
        weights, ks, constants, values, problem=problem, specs=tuple(specs), terms=tuple(terms),
        dim=dim, size=size, masked=chunks[-1] != size, shared_rows=shared_rows,
        num_base=num_chunks if with_baseline else None, mesh=_program_mesh(mesh),
    )  # fmt: skip
    if sharded_output:
        return out
    out = _to_host(out, mesh, num_chunks)
    # [R, C, ...], contiguous: numpy's sums (combine) follow the memory order
    return jax.tree.map(lambda a: np.ascontiguousarray(np.swapaxes(a, 0, 1)), out)


def _program_mesh(mesh: Mesh | None) -> Mesh | None:
    """The mesh the program is specialised on: none for one device (the one-device program)."""
    return mesh if mesh is not None and mesh.devices.size > 1 else None


class Statistics:
    """Float64 moments of one estimator's per-sample estimates for one leaf, over launches.

    One launch's per-chunk moments are kept as they are and merged by :func:`combine` and
    :func:`first_coordinate_mean` (what the runner always did: the figures' numbers); from a
    second launch on, each launch is merged over its chunks in float64 the same way and the
    launches are merged into a running ``(n, mean [R, D], m2 [R, D], sum h, sum h^2 [R])``
    with Chan et al.'s pairwise formula, in float64: the float32 per-chunk sums are over at
    most a chunk's samples, and no float32 sum runs over chunks, so no digits are lost to the
    number of samples. Memory: one launch's moments.
    """

    def __init__(self) -> None:
        self.first: tuple[dict, tuple[int, ...]] | None = None
        self.running: dict[str, Any] | None = None

    def add(self, moments: dict, chunks: tuple[int, ...]) -> None:
        """Merge one launch's per-chunk moments (``[R, C, ...]`` numpy, ``chunks`` its sizes)."""
        if self.first is None and self.running is None:
            self.first = (moments, chunks)
            return
        if self.running is None:
            assert self.first is not None
            self.running, self.first = _merged_chunks(*self.first), None
        a, b = self.running, _merged_chunks(moments, chunks)
        n = a["n"] + b["n"]
        delta = b["mean"] - a["mean"]
        self.running = {
            "n": n,
            "mean": a["mean"] + delta * (b["n"] / n),
            "m2": a["m2"] + b["m2"] + np.square(delta) * (a["n"] * b["n"] / n),
            "h1": a["h1"] + b["h1"],
            "h2": a["h2"] + b["h2"],
        }

    def variance(self) -> tuple[np.ndarray, np.ndarray]:
        """:func:`combine`'s ``(variance [R], standard_error [R])`` over everything added."""
        if self.first is not None:
            return combine(*self.first)
        assert self.running is not None
        return _variance_and_se(self.running)

    def gradient(self) -> tuple[np.ndarray, np.ndarray]:
        """:func:`first_coordinate_mean`'s ``(mean [R], standard_error [R])``."""
        if self.first is not None:
            return first_coordinate_mean(*self.first)
        s = self.running
        assert s is not None
        n = s["n"]
        return s["mean"][:, 0], np.sqrt(s["m2"][:, 0] / (n - 1) / n)


def mc_statistics(
    key: jax.Array,
    weights: ArrayLike,
    ks: ArrayLike,
    constants: ArrayLike,
    values: dict[str, jax.Array],
    *,
    problem: Problem,
    specs: tuple[str, ...],
    terms: tuple[str, ...],
    dim: int,
    plan: Plan,
    shared_rows: bool = True,
    mesh: Mesh | None = None,
    progress: Any = None,
) -> dict[str, dict[str, Statistics]]:
    """:func:`mc_moments` for any number of samples: ``plan.num_launches`` program calls of
    ``plan.launch`` chunks each, merged on the host as they come (:class:`Statistics`).

    The chunks and their keys are those of ``mc_moments(..., chunks=every chunk of plan)``:
    one launch is exactly that call. With several launches a ``+optimal`` row baseline is a
    first pass over the launches (per-chunk baselines averaged in float64, then rounded to
    float32) rather than an in-program float32 mean; the estimates then differ from one
    launch's by float rounding only. The number of launches depends on ``num_samples``, the
    grid and the chunk size (the device kind), never on the mesh's device count.

    Args: as :func:`mc_moments`, with ``plan`` (:func:`plan`) for ``chunks``, and
      ``progress``: called with the number of samples done after each launch, or ``None``.

    Returns:
      ``{spec: {leaf: Statistics}}``.
    """
    specs = tuple(specs)
    leaves = tuple(problem.parameters)
    stats = {s: {p: Statistics() for p in leaves} for s in specs}
    if plan.num_launches == 1:
        chunks = plan.chunks(0)
        moments = mc_moments(
            key, weights, ks, constants, values, problem=problem, specs=specs, terms=terms,
            dim=dim, chunks=chunks, shared_rows=shared_rows, mesh=mesh,
        )  # fmt: skip
        for s in specs:
            for p in leaves:
                stats[s][p].add(moments[s][p], chunks)
        if progress is not None:
            progress(plan.num_samples)
        return stats
    num_rows = np.shape(ks)[0]
    rows = None if shared_rows else num_rows
    key_data, base_key_data = _split_key(key)
    padded = _padded(plan.launch, mesh)
    common = dict(
        problem=problem, specs=specs, terms=tuple(terms), dim=dim, size=plan.size,
        masked=plan.masked, shared_rows=shared_rows, mesh=_program_mesh(mesh),
    )  # fmt: skip
    baseline = None
    if any(_sampler(spec)[1] for spec in specs):  # first pass: b* per row over all chunks
        total: Any = None
        for j in range(plan.num_launches):
            n = len(plan.chunks(j))
            base_hi, base_lo = _counters(j * plan.launch, padded, rows)
            b = _call(
                key_data, None, None, None, base_key_data, base_hi, base_lo, None,
                weights, ks, constants, values, num_base=None, **common,
            )  # fmt: skip
            b = jax.tree.map(lambda a: np.asarray(a, np.float64).sum(axis=0), _to_host(b, mesh, n))
            total = b if total is None else jax.tree.map(np.add, total, b)
        baseline = jax.tree.map(lambda t: (t / plan.num_chunks).astype(np.float32), total)
    done = 0
    for j in range(plan.num_launches):
        chunks = plan.chunks(j)
        n = len(chunks)
        hi, lo = _counters(j * plan.launch, padded, rows)
        counts = np.asarray(chunks + (plan.size,) * (padded - n), np.int32)
        out = _call(
            key_data, hi, lo, counts, None, None, None, baseline,
            weights, ks, constants, values, num_base=None, **common,
        )  # fmt: skip
        out = _to_host(out, mesh, n)
        for s in specs:
            for p in leaves:
                moments = jax.tree.map(
                    lambda a: np.ascontiguousarray(np.swapaxes(a, 0, 1)), out[s][p]
                )
                stats[s][p].add(moments, chunks)
        done += sum(chunks)
        if progress is not None:
            progress(done)
    return stats


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
    return _variance_and_se(_merged_chunks(moments, chunks))


def _merged_chunks(moments: dict, chunks: tuple[int, ...]) -> dict[str, Any]:
    """Per-chunk moments ``[R, C, ...]`` merged over the chunks in float64 (Chan et al.):
    ``{"n", "mean" [R, D], "m2" [R, D], "h1" [R], "h2" [R]}`` (``h1``, ``h2``: sums of ``h_i``
    and ``h_i^2``)."""
    n_c = np.asarray(chunks, np.float64)  # [C]
    n = n_c.sum()
    mean_c = np.asarray(moments["mean"], np.float64)  # [R, C, D]
    mean = np.einsum("c,rcd->rd", n_c, mean_c) / n
    m2 = np.asarray(moments["m2"], np.float64).sum(axis=1) + np.einsum(
        "c,rcd->rd", n_c, np.square(mean_c - mean[:, None, :])
    )
    h1 = np.asarray(moments["h1"], np.float64).sum(axis=1)
    h2 = np.asarray(moments["h2"], np.float64).sum(axis=1)
    return {"n": n, "mean": mean, "m2": m2, "h1": h1, "h2": h2}


def _variance_and_se(merged: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """``(variance [R], standard_error [R])`` of merged moments (see :func:`combine`)."""
    n = merged["n"]
    variance = np.mean(merged["m2"] / (n - 1), axis=1)
    h1, h2 = merged["h1"] / n, merged["h2"] / n
    return variance, np.sqrt(np.maximum(h2 - np.square(h1), 0.0) / n)


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
