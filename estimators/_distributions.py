"""Small pytree distributions with ``sample(key, sample_shape)`` and ``log_prob(x)``.

Every distribution here is a *joint* distribution over one event whose shape is the shape of
its parameters (independent coordinates; for the Dirichlet and Categorical the last axis is the
simplex or the category axis). ``sample(key, sample_shape)`` returns
``[*sample_shape, *event_shape]`` and ``log_prob(x)`` sums over the event, returning
``[*sample_shape]``. A cost ``f`` written for one sample therefore sees one whole event.

What a distribution can do is said by the capability markers it inherits
(``estimators._capabilities``): :class:`Normal` is ``HasScore``, ``StandardNoise`` (hence
``Reparameterizable``: ``loc + scale * eps``), ``WeakDerivative`` and ``FactorizedMoments``;
:class:`Gamma` and :class:`Beta` are ``HasScore``, ``Reparameterizable`` (JAX's implicit
reparameterisation gradients) and ``FactorizedMoments``; :class:`Dirichlet` is ``HasScore`` and
``Reparameterizable``; :class:`Bernoulli` and :class:`Categorical` are ``HasScore`` and
``Discrete``. The class attribute ``reparameterizable`` is derived from the markers
(``issubclass(cls, Reparameterizable)``).

Invalid parameters. Built from concrete values, a distribution checks its constraints and raises
a ``ValueError`` naming the parameter (``Normal`` scale > 0, ``Gamma`` concentration and rate > 0,
``Beta`` a, b > 0, ``Dirichlet`` concentration > 0, ``Bernoulli``/``Categorical`` logits not
NaN). Built from traced values (inside ``jit``, ``vmap`` or ``grad``) the values are unknown, so
an invalid parameter instead turns EVERY parameter of the distribution into NaN, and with them
its samples, log-densities and every gradient estimate: a run's NaN check then stops it instead
of training on a finite, wrong gradient. Valid parameters are multiplied by exactly 1, so their
values and gradients are bitwise unchanged. (A NaN logit alone would make only its own
coordinate's estimate NaN; the mask makes all of them NaN, like the other families. Infinite
logits are valid: probability 0 or 1.)
A distribution rebuilt by ``jax.tree_util`` (``tree_map``, unflattening inside a
transformation) is not checked again.

The boundary of the support in floating point. Gamma(a < 1), Beta(a < 1) and Dirichlet(a_k < 1)
put a sizeable mass below the smallest normal float ``tiny = finfo(dtype).tiny`` (Gamma(0.05):
1.3% in float32), where a float32 sample is exactly 0 and the log-density infinite. ``sample``
therefore returns ``max(x, tiny)``, with the gradient of the unclipped ``x`` (straight-through),
so a sample is an atom at ``tiny`` carrying the mass ``P(X <= tiny)``; ``log_prob`` at
``x <= tiny`` is the log of that mass (in closed form), so the score function is the score of
the law actually sampled and stays unbiased, and pathwise gradients are those of the unclipped
sample (unbiased too: the clip moves a sample by less than ``tiny``).

The upper end of the Beta. Below 1 the floats are ``epsneg`` apart (6e-8 in float32), and
Beta(a, b < 1) puts a large mass within a few of these steps of 1 (Beta(1, 0.05): 44% within
``1.5 epsneg``, all drawn as ``1 - epsneg``), where the density at the grid value is not the
probability of drawing it. ``Beta.sample`` computes ``1 - x`` without cancellation so that a
draw is the nearest float to the exact one, and ``Beta.log_prob`` at the top 4096 grid values
(:data:`UPPER_CELLS`) is the log of the mass that rounds there (see :class:`Beta`); the
pathwise gradient is that of the unrounded draw.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar, NamedTuple, dataclass_transform

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy import special
from jax.typing import ArrayLike

from ._capabilities import (
    Binary,
    Discrete,
    FactorizedMoments,
    HasScore,
    Relaxable,
    Reparameterizable,
    StandardNoise,
    WeakDerivative,
)

if TYPE_CHECKING:
    from .discrete._relaxed import RelaxedBernoulli

Array = jax.Array
Shape = Sequence[int]


@dataclass_transform(frozen_default=True)
def _pytree_dataclass(cls):
    """Frozen dataclass whose fields are pytree leaves (so it passes through jit and vmap).

    Unflattening bypasses ``__init__``: the checks in ``__post_init__`` guard what a user
    builds, not the tracers, cotangents or ``None`` placeholders that JAX transformations put in
    the leaves.
    """
    cls = dataclasses.dataclass(frozen=True)(cls)
    names = tuple(f.name for f in dataclasses.fields(cls))

    def flatten(d):
        return tuple(getattr(d, n) for n in names), None

    def unflatten(_, leaves):
        obj = object.__new__(cls)
        for n, v in zip(names, leaves, strict=True):
            object.__setattr__(obj, n, v)
        return obj

    jax.tree_util.register_pytree_node(cls, flatten, unflatten)
    return cls


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_positive(name: str, dist: str, value: Array) -> None:
    """Raise if a concrete parameter is not strictly positive (a no-op on a tracer)."""
    if _is_concrete(value):
        v = np.asarray(value)
        if not np.all(v > 0):
            smallest = np.nanmin(v) if not np.isnan(v).all() else float("nan")
            raise ValueError(
                f"{dist}: {name} must be > 0 everywhere; got min {smallest!r}"
                + (" (NaN present)" if np.isnan(v).any() else "")
            )


def _check_not_nan(name: str, dist: str, value: Array) -> None:
    """Raise if a concrete parameter holds a NaN (a no-op on a tracer)."""
    if _is_concrete(value) and np.isnan(np.asarray(value)).any():
        raise ValueError(f"{dist}: {name} must not be NaN; got {int(np.isnan(value).sum())} NaN")


def _validate(dist: Distribution, positive: Sequence[str] = (), not_nan: Sequence[str] = ()):
    """Check the constraints of ``dist``'s fields: raise if concrete, poison with NaN if traced.

    ``positive`` fields must be > 0, ``not_nan`` fields must hold no NaN. Under tracing, every
    floating-point field of ``dist`` is multiplied by ``where(all constraints hold, 1, NaN)``:
    exactly 1 (values and gradients bitwise unchanged) for a valid distribution, NaN in every
    value and every gradient through it otherwise. ``dist`` is being built (``__post_init__``),
    so replacing its fields is safe.
    """
    cls = type(dist).__name__
    traced_ok = []
    for name in positive:
        value = getattr(dist, name)
        if _is_concrete(value):
            _check_positive(name, cls, value)
        else:
            traced_ok.append(jnp.all(value > 0))
    for name in not_nan:
        value = getattr(dist, name)
        if _is_concrete(value):
            _check_not_nan(name, cls, value)
        else:
            traced_ok.append(~jnp.any(jnp.isnan(value)))
    if not traced_ok:
        return
    ok = traced_ok[0]
    for more in traced_ok[1:]:
        ok = ok & more
    for field in dataclasses.fields(dist):  # type: ignore[arg-type]
        value = getattr(dist, field.name)
        dtype = jnp.result_type(value)
        if jnp.issubdtype(dtype, jnp.inexact):
            mask = jnp.where(ok, 1.0, jnp.nan).astype(dtype)
            object.__setattr__(dist, field.name, value * mask)


def _clip_to_support(x: Array, upper: bool = False) -> Array:
    """``max(x, tiny)`` (and ``min(x, 1 - epsneg)`` if ``upper``), with the gradient of ``x``.

    ``tiny`` is the smallest normal float of ``x.dtype``: every draw below it (an exact 0 or a
    flushed subnormal in float32) becomes an atom at ``tiny``, which ``log_prob`` gives the mass
    of ``[0, tiny]``. The straight-through gradient is the implicit reparameterisation gradient
    of the unclipped draw (0 for a draw that underflowed, whose true value is below ``tiny``).
    """
    finfo = jnp.finfo(x.dtype)
    hi = 1 - finfo.epsneg if upper else None
    return x + jax.lax.stop_gradient(jnp.clip(x, finfo.tiny, hi) - x)


def _lower_atom(x: Array) -> tuple[Array, Array, Array]:
    """``(at_atom, x_safe, log_tiny)``: where ``x`` is in ``[0, tiny]`` (the atom of
    :func:`_clip_to_support`), ``x`` with those entries set to 1 (so the density branch of a
    ``where`` has finite gradients), and ``log(tiny)``."""
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):  # integer points: the default float's tiny
        dtype = jnp.result_type(float)
    finfo = jnp.finfo(dtype)
    at_atom = (x >= 0) & (x <= finfo.tiny)
    return at_atom, jnp.where(at_atom, 1.0, x).astype(dtype), jnp.log(finfo.tiny)


def softplus(x: ArrayLike) -> Array:
    r""":math:`\log(1 + e^x)`, elementwise (any shape), as ``max(x, 0) + log1p(exp(-|x|))``.

    The same values as ``jax.nn.softplus`` (equal at 2 x 10^5 points of [-100, 100], within
    2.5 float32 ulps of the exact value; ``+inf -> inf``, ``-inf -> 0``, NaN stays NaN); the
    gradient is the sigmoid, 1/2 at ``x = 0``.
    ``jax.nn.softplus`` goes through ``jnp.logaddexp``, whose handling of infinities XLA:CPU
    does not fuse away: a Bernoulli log-likelihood and its gradient over a ``[128, 784]`` batch
    took 0.055 ms this way against 0.20 ms on the 2-core CPU, and the VAE's training step is
    measurably faster (``python benchmarks/bench_vae.py --compare`` times the Flax step with
    each).
    """
    x = jnp.asarray(x)
    # -|x| as min(x, -x): JAX splits the derivative of a min or max at a tie, so the gradient
    # at 0 is 1/2 + 0 (abs's derivative at 0 is 1, which would give 1/2 - 1/2).
    return jnp.maximum(x, 0) + jnp.log1p(jnp.exp(jnp.minimum(x, -x)))


def _expand(shape: Shape, *params: Array) -> list[Array]:
    """Broadcast parameters of event shape to ``[*sample_shape, *event_shape]`` explicitly.

    Written out so that ``sample`` and ``log_prob`` with a ``sample_shape`` also work under
    ``jax_numpy_rank_promotion="raise"`` (the setting of the tests).
    """
    return [jnp.broadcast_to(p, tuple(shape)) for p in params]


def _check_same_shape(dist: str, **params: Array) -> tuple[int, ...]:
    shapes = {k: tuple(jnp.shape(v)) for k, v in params.items()}
    if len(set(shapes.values())) != 1:
        detail = ", ".join(f"{k}{list(s)}" for k, s in shapes.items())
        raise ValueError(f"{dist}: parameter shapes must match; got {detail}")
    return next(iter(shapes.values()))


class Distribution:
    """Interface shared by the distributions of this module.

    A subclass states what it can do by inheriting capability markers (``HasScore``,
    ``Reparameterizable``, ``StandardNoise``, ``WeakDerivative``, ``FactorizedMoments``,
    ``Discrete``); estimators check ``isinstance(dist, marker)``. ``reparameterizable`` is
    derived from them. A subclass written before the markers that sets
    ``reparameterizable = True`` is registered as ``Reparameterizable`` (so it keeps working
    with the pathwise estimator); one that sets ``reparameterizable = False`` while inheriting
    ``Reparameterizable`` is an error.
    """

    reparameterizable: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        declared = cls.__dict__.get("reparameterizable")
        if declared is True and not issubclass(cls, Reparameterizable):
            Reparameterizable.register(cls)
        elif declared is False and issubclass(cls, Reparameterizable):
            raise TypeError(
                f"{cls.__name__}: reparameterizable = False contradicts its Reparameterizable "
                "capability marker; drop the attribute (it is derived from the markers)"
            )
        cls.reparameterizable = issubclass(cls, Reparameterizable)

    @property
    def event_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def sample(self, key: Array, sample_shape: Shape = ()) -> Array:
        """Draw samples. Returns ``[*sample_shape, *event_shape]``."""
        raise NotImplementedError

    def log_prob(self, x: Array) -> Array:
        """Log density or mass of ``x: [*sample_shape, *event_shape]``; ``[*sample_shape]``."""
        raise NotImplementedError

    @property
    def mean(self) -> Array:
        """``[*event_shape]`` mean, where it exists in closed form."""
        raise NotImplementedError(f"{type(self).__name__} has no closed-form mean here")

    @property
    def variance(self) -> Array:
        """``[*event_shape]`` per-coordinate variance, where it exists in closed form."""
        raise NotImplementedError(f"{type(self).__name__} has no closed-form variance here")

    def _sum_event(self, per_coordinate: Array, event_ndim: int | None = None) -> Array:
        n = len(self.event_shape) if event_ndim is None else event_ndim
        return jnp.sum(
            per_coordinate, axis=tuple(range(per_coordinate.ndim - n, per_coordinate.ndim))
        )


class WeakDerivativeTerm(NamedTuple):
    r"""The weak derivative of a distribution with respect to one statistic, for one draw.

    For a distribution with independent coordinates and a statistic :math:`\theta` of its event
    shape whose coordinate :math:`\theta_d` enters only the law :math:`p_d` of :math:`x_d`,

    .. math:: \partial_{\theta_d} p_d(x_d) = c_d\,(p^+_d(x_d) - p^-_d(x_d)),
              \qquad \partial_{\theta_d} E_p[f(x)] = c_d\,(E[f(x^{+d})] - E[f(x^{-d})]),

    where :math:`x^{\pm d}` is a sample of :math:`p` with coordinate :math:`d` replaced by a draw
    of :math:`p^\pm_d` (Mohamed et al. 2020, eq. 39). One term of
    ``WeakDerivative.weak_derivative(key, coupling)``.

    Fields, each ``[*event_shape]``:
      statistic: :math:`\theta`, differentiable in the distribution's parameters (the
        measure-valued estimator pulls its gradients back to the parameters through it).
      inverse_constant: :math:`1 / c_d`; the estimate is
        :math:`(f(x^{+d}) - f(x^{-d})) / \mathrm{inverse\_constant}_d`.
      positive: one draw of :math:`p^+_d` for every coordinate :math:`d`.
      negative: one draw of :math:`p^-_d` for every coordinate :math:`d` (coupled with
        ``positive`` when the caller asks for coupling).
    """

    statistic: Array
    inverse_constant: Array
    positive: Array
    negative: Array


@_pytree_dataclass
class Normal(Distribution, HasScore, StandardNoise, WeakDerivative, FactorizedMoments):
    """Diagonal Gaussian N(loc, diag(scale²)). Event shape = ``loc.shape``.

    Construct from the log-scale (the convention of the paper's code and of
    ``optax.monte_carlo``) with :meth:`from_log_scale`.
    """

    loc: Array
    scale: Array

    def __post_init__(self):
        _check_same_shape("Normal", loc=self.loc, scale=self.scale)
        _validate(self, positive=("scale",))

    @classmethod
    def from_log_scale(cls, loc: Array, log_scale: Array) -> Normal:
        """``N(loc, exp(log_scale)²)``; loc and log_scale share one shape."""
        _check_same_shape("Normal", loc=loc, log_scale=log_scale)
        return cls(jnp.asarray(loc), jnp.exp(log_scale))

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(jnp.shape(self.loc))

    @property
    def mean(self) -> Array:
        return self.loc

    @property
    def variance(self) -> Array:
        return jnp.square(self.scale)

    def sample(self, key: Array, sample_shape: Shape = ()) -> Array:
        return self.from_noise(self.standard_noise(key, sample_shape))

    def standard_noise(self, key: Array, sample_shape: Shape = ()) -> Array:
        """Standard normal draws ``[*sample_shape, *event_shape]``, the randomness of ``sample``."""
        shape = (*sample_shape, *self.event_shape)
        return jax.random.normal(key, shape, jnp.result_type(self.loc))

    def from_noise(self, eps: Array) -> Array:
        """The reparameterisation ``loc + scale * eps``; ``eps: [*sample_shape, *event_shape]``."""
        loc, scale = _expand(jnp.shape(eps), self.loc, self.scale)
        return loc + scale * eps

    def log_prob(self, x: Array) -> Array:
        loc, scale = _expand(jnp.shape(x), self.loc, self.scale)
        z = (x - loc) / scale
        lp = -0.5 * jnp.square(z) - jnp.log(scale) - 0.5 * math.log(2 * math.pi)
        return self._sum_event(lp)

    def weak_derivative(self, key: Array, coupling: bool = True) -> dict[str, WeakDerivativeTerm]:
        r"""The weak derivatives with respect to ``loc`` and ``scale``, one draw per coordinate.

        Per coordinate (Mohamed et al. 2020, table 1), with :math:`W \sim
        \mathrm{Weibull}(\sqrt 2, 2)`, :math:`M` double-sided Maxwell and
        :math:`\epsilon \sim N(0, 1)`:

        - ``loc``: :math:`c = 1/(\sigma\sqrt{2\pi})`, :math:`p^+ = \mu + \sigma W`,
          :math:`p^- = \mu - \sigma W'`;
        - ``scale``: :math:`c = 1/\sigma`, :math:`p^+ = \mu + \sigma M`,
          :math:`p^- = \mu + \sigma \epsilon`.

        Coupled, the positive and negative parts share their randomness: :math:`W' = W`, and
        :math:`\epsilon = M U` with :math:`U \sim U(0, 1)` (exactly N(0, 1)); otherwise
        :math:`W'` and :math:`\epsilon` are independent draws. Two draws of ``[4, size]``
        from ``key`` (uniforms and normals), transformed exactly: the Weibull by its inverse
        CDF :math:`\sqrt{-2\log(1 - u)}`, the Maxwell as a random sign times the norm of three
        standard normals.

        Returns:
          ``{"loc": WeakDerivativeTerm, "scale": WeakDerivativeTerm}``, fields
          ``[*event_shape]``.

        Example (coupled, the mean's parts are ``mu + sigma W`` and ``mu - sigma W``):
          >>> import jax, jax.numpy as jnp, estimators
          >>> d = estimators.Normal(jnp.zeros(3), jnp.ones(3))
          >>> terms = d.weak_derivative(jax.random.key(0), coupling=True)
          >>> list(terms), terms["loc"].positive.shape
          (['loc', 'scale'], (3,))
          >>> bool(jnp.all(terms["loc"].positive == -terms["loc"].negative))
          True
        """
        shape = self.event_shape
        dim, dtype = math.prod(shape), jnp.result_type(self.loc)
        loc, scale = jnp.reshape(self.loc, (dim,)), jnp.reshape(self.scale, (dim,))
        k_uniform, k_normal = jax.random.split(key)
        u = jax.random.uniform(k_uniform, (4, dim), dtype)
        z = jax.random.normal(k_normal, (4, dim), dtype)
        weibull = jnp.sqrt(-2.0 * jnp.log1p(-u[:2]))  # [2, D]
        w_pos = weibull[0]
        w_neg = w_pos if coupling else weibull[1]
        sign = jnp.where(u[2] < 0.5, -1.0, 1.0).astype(dtype)
        maxwell = sign * jnp.sqrt(jnp.sum(jnp.square(z[:3]), axis=0))
        eps = maxwell * u[3] if coupling else z[3]

        def event(flat: Array) -> Array:
            return jnp.reshape(flat, shape)

        return {
            "loc": WeakDerivativeTerm(
                self.loc,
                event(scale * math.sqrt(2 * math.pi)),
                event(loc + scale * w_pos),
                event(loc - scale * w_neg),
            ),
            "scale": WeakDerivativeTerm(
                self.scale, event(scale), event(loc + scale * maxwell), event(loc + scale * eps)
            ),
        }


@_pytree_dataclass
class Gamma(Distribution, HasScore, Reparameterizable, FactorizedMoments):
    r"""Gamma(concentration, rate), independent coordinates; implicit reparameterisation.

    Samples are at least ``tiny`` (see the module docstring): ``log_prob`` at ``x <= tiny`` is
    :math:`\log P(X \le \mathrm{tiny}) = a \log(b\,\mathrm{tiny}) - \log\Gamma(a + 1)`
    (relative error below ``rate * tiny``, far below float resolution for any usable rate).
    """

    concentration: Array
    rate: Array

    def __post_init__(self):
        _check_same_shape("Gamma", concentration=self.concentration, rate=self.rate)
        _validate(self, positive=("concentration", "rate"))

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(jnp.shape(self.concentration))

    @property
    def mean(self) -> Array:
        return self.concentration / self.rate

    @property
    def variance(self) -> Array:
        return self.concentration / jnp.square(self.rate)

    def sample(self, key: Array, sample_shape: Shape = ()) -> Array:
        shape = (*sample_shape, *self.event_shape)
        concentration, rate = _expand(shape, self.concentration, self.rate)
        # Drawn in log space: exp then underflows exactly when X < tiny (no intermediate
        # underflow of Gamma(a + 1) U^(1/a)), so the atom of the clip is exactly {X <= tiny}.
        log_x = jax.random.loggamma(key, concentration, shape) - jnp.log(rate)
        return _clip_to_support(jnp.exp(log_x))

    def log_prob(self, x: Array) -> Array:
        a, b = _expand(jnp.shape(x), self.concentration, self.rate)
        at_atom, x_safe, log_tiny = _lower_atom(x)
        density = a * jnp.log(b) + (a - 1) * jnp.log(x_safe) - b * x - special.gammaln(a)
        atom = a * (jnp.log(b) + log_tiny) - special.gammaln(a + 1)
        return self._sum_event(jnp.where(at_atom, atom, density))


# Beta near 1: the top UPPER_CELLS float values below 1 are atoms (see Beta).
UPPER_CELLS = 4096


def _upper_cell(x: Array) -> tuple[Array, Array]:
    """``(near, k)``: whether ``x`` is one of the top :data:`UPPER_CELLS` floats below 1 (or 1
    itself), and its index ``k >= 1`` (``x = 1 - k epsneg``; 1.0 counts as ``k = 1``, the value
    the sampler's clip gives it). ``1 - x`` is exact for ``x >= 1/2`` (Sterbenz), so ``k`` is an
    exact integer. Integer points use the default float's ``epsneg``."""
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(float)
    x = jnp.asarray(x, dtype)
    eps = jnp.finfo(dtype).epsneg
    k = jnp.round((1 - x) / eps)
    near = (x >= 0.5) & (x <= 1) & (k <= UPPER_CELLS)
    return near, jnp.clip(k, 1, UPPER_CELLS)


@_pytree_dataclass
class Beta(Distribution, HasScore, Reparameterizable, FactorizedMoments):
    r"""Beta(a, b), independent coordinates; implicit reparameterisation.

    Samples lie in ``[tiny, 1 - epsneg]``. At the lower end (see the module docstring)
    ``log_prob`` at ``x <= tiny`` is
    :math:`\log P(X \le \mathrm{tiny}) = a \log \mathrm{tiny} - \log a - \log B(a, b)`
    (relative error below ``tiny``).

    The upper end. Below 1 the floats are spaced ``e = epsneg`` apart (6e-8 in float32), and
    with ``b < 1`` a large mass lies within a few ``e`` of 1 (Beta(1, 0.05): 44% within
    ``1.5 e``), so the law actually sampled there is discrete and the density at a grid value
    is not its probability. ``sample`` computes ``y = 1 - x = G_b / (G_a + G_b)`` from
    log-gamma draws (no cancellation) and returns ``x = 1 - y`` rounded to nearest, then
    clipped to ``1 - e``: the float ``1 - k e`` (``k >= 1``) is drawn exactly when ``y`` lies
    in the cell ``[(k - 1/2) e, (k + 1/2) e]`` (``[0, 3e/2]`` for ``k = 1``, which also takes
    the draws that round to 1.0). ``log_prob`` at the top :data:`UPPER_CELLS` (4096) values
    ``x = 1 - k e`` (and at 1.0, counted as ``k = 1``) is the log of that cell's mass,
    :math:`\log \int_{cell} t^{b-1} (1-t)^{a-1} dt - \log B(a, b)`, computed as
    :math:`\log\frac{hi^b - lo^b}{b} + (a - 1)\log(1 - \bar t) - \log B(a, b)` with
    :math:`\bar t` the mean of ``t`` under the weight :math:`t^{b-1}` on the cell (relative
    error below :math:`a^2 e^2`, from the curvature of :math:`(1-t)^{a-1}` across one cell).
    Beyond those cells the log-density is used: across one cell the density then differs from
    the cell's mass over ``e`` by a relative :math:`(b-1)(b-2) / (24 k^2) < 10^{-8}`
    (midpoint rule), below float resolution. So the score function is that of the law actually
    sampled, and the pathwise gradient is the implicit reparameterisation gradient of the
    unrounded, unclipped draw (straight-through).

    Draws with ``y >= 2 UPPER_CELLS e`` are bitwise those of ``jax.random.beta`` with the same
    key (same key split, log-gamma draws and quotient); only draws closer to 1 take the value
    ``1 - y`` (a few ``e`` from before), and every gradient is bitwise that of before.
    """

    a: Array
    b: Array

    def __post_init__(self):
        _check_same_shape("Beta", a=self.a, b=self.b)
        _validate(self, positive=("a", "b"))

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(jnp.shape(self.a))

    @property
    def mean(self) -> Array:
        return self.a / (self.a + self.b)

    @property
    def variance(self) -> Array:
        s = self.a + self.b
        return self.a * self.b / (jnp.square(s) * (s + 1))

    def sample(self, key: Array, sample_shape: Shape = ()) -> Array:
        shape = (*sample_shape, *self.event_shape)
        dtype = jnp.result_type(float)  # jax.random.beta's default dtype
        a, b = _expand(shape, jnp.asarray(self.a, dtype), jnp.asarray(self.b, dtype))
        # jax.random.beta's own steps (same key split, same log-gamma draws, same quotient), so
        # that draws away from 1 are bitwise unchanged; both log-gamma draws carry JAX's
        # implicit reparameterisation gradient.
        key_a, key_b = jax.random.split(key)
        log_ga = jax.random.loggamma(key_a, a, shape, dtype)
        log_gb = jax.random.loggamma(key_b, b, shape, dtype)
        log_max = jnp.maximum(log_ga, log_gb)
        ga, gb = jnp.exp(log_ga - log_max), jnp.exp(log_gb - log_max)
        x = ga / (ga + gb)
        # Near 1 the quotient rounds 1 + G_b/G_a to the grid above 1 (spacing 2e) before
        # dividing; 1 - y with y = G_b / (G_a + G_b) taken in log space rounds once, to the
        # nearest float below 1 (the cells that log_prob gives masses to). Only the value
        # changes: the gradient stays that of the quotient (the same function of the draws), so
        # every gradient is bitwise unchanged.
        y = jax.lax.stop_gradient(jnp.exp(log_gb - (log_max + jnp.log(ga + gb))))
        eps = jnp.finfo(dtype).epsneg
        x = x + jax.lax.stop_gradient(jnp.where(y < 2 * UPPER_CELLS * eps, 1 - y, x) - x)
        # Clip to [tiny, 1 - e] with the gradient of the unclipped draw: exact zeros (a < 1)
        # become the lower atom, draws rounding to 1.0 the top cell.
        return _clip_to_support(x, upper=True)

    def log_prob(self, x: Array) -> Array:
        a, b = _expand(jnp.shape(x), self.a, self.b)
        at_atom, x_safe, log_tiny = _lower_atom(x)
        near, k = _upper_cell(x)
        # Both atoms' entries at 1/2 in the density branch (finite values and gradients there).
        x_mid = jnp.where(at_atom | near, 0.5, x_safe).astype(x_safe.dtype)
        density = (a - 1) * jnp.log(x_mid) + (b - 1) * jnp.log1p(-x_mid) - special.betaln(a, b)
        atom = a * log_tiny - jnp.log(a) - special.betaln(a, b)
        top = self._upper_log_mass(a, b, k.astype(x_safe.dtype))
        return self._sum_event(jnp.where(at_atom, atom, jnp.where(near, top, density)))

    @staticmethod
    def _upper_log_mass(a: Array, b: Array, k: Array) -> Array:
        """Log mass of the cell of ``y = 1 - x`` that rounds to ``x = 1 - k e`` (``k >= 1``)."""
        eps = jnp.finfo(k.dtype).epsneg
        hi = (k + 0.5) * eps
        lo = jnp.maximum(k - 0.5, 1.5) * eps  # k = 1 (lo = 0) is its own branch below
        span = jnp.log1p(1.0 / jnp.maximum(k - 0.5, 1.5))  # log(hi / lo) for k >= 2
        first = k < 1.5
        # log(hi^b - lo^b), and the mean of t under t^(b-1) on [lo, hi].
        log_diff = jnp.where(first, b * jnp.log(hi), b * jnp.log(lo) + jnp.log(jnp.expm1(b * span)))
        t_bar = (b / (b + 1)) * jnp.where(
            first, hi, lo * jnp.expm1((b + 1) * span) / jnp.expm1(b * span)
        )
        return log_diff - jnp.log(b) + (a - 1) * jnp.log1p(-t_bar) - special.betaln(a, b)


@_pytree_dataclass
class Dirichlet(Distribution, HasScore, Reparameterizable):
    r"""Dirichlet(concentration) over the last axis; implicit reparameterisation.

    ``concentration: [*batch, K]``; the event is the whole array (independent simplices).

    Every coordinate of a sample is at least ``tiny`` (see the module docstring). ``log_prob``
    treats a coordinate ``x_k <= tiny`` as the atom ``X_k in [0, tiny]``: its factor
    :math:`x_k^{a_k - 1}` becomes :math:`\int_0^{\mathrm{tiny}} t^{a_k - 1} dt =
    \mathrm{tiny}^{a_k} / a_k` (the density of the other coordinates on their face of the
    simplex times the mass of the atom; relative error below ``K * tiny``).
    """

    concentration: Array

    def __post_init__(self):
        if jnp.ndim(self.concentration) < 1 or jnp.shape(self.concentration)[-1] < 2:
            raise ValueError(
                "Dirichlet: concentration needs a last axis of at least 2 categories; "
                f"got shape {list(jnp.shape(self.concentration))}"
            )
        _validate(self, positive=("concentration",))

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(jnp.shape(self.concentration))

    @property
    def mean(self) -> Array:
        return self.concentration / jnp.sum(self.concentration, axis=-1, keepdims=True)

    @property
    def variance(self) -> Array:
        a0 = jnp.sum(self.concentration, axis=-1, keepdims=True)
        m = self.concentration / a0
        return m * (1 - m) / (a0 + 1)

    def sample(self, key: Array, sample_shape: Shape = ()) -> Array:
        batch = self.event_shape[:-1]
        # jax.random.dirichlet is a softmax of log-gamma draws: a coordinate underflows to 0
        # exactly when it is below tiny (Dirichlet(0.05, 0.05, 1): 2.6% of rows in float32).
        # The clip raises those coordinates to tiny, so a row sums to 1 + m * tiny for m
        # clipped coordinates: exactly the float sum of before (tiny is far below the rounding
        # of 1), and within m * tiny of the simplex in exact arithmetic. The straight-through
        # gradient is the softmax's, whose rows sum to 0: it stays tangent to the simplex.
        x = jax.random.dirichlet(key, self.concentration, (*sample_shape, *batch))
        return _clip_to_support(x)

    def log_prob(self, x: Array) -> Array:
        a = self.concentration
        log_norm = special.gammaln(jnp.sum(a, axis=-1)) - jnp.sum(special.gammaln(a), axis=-1)
        (a,) = _expand(jnp.shape(x), a)
        at_atom, x_safe, log_tiny = _lower_atom(x)
        per_coordinate = jnp.where(at_atom, a * log_tiny - jnp.log(a), (a - 1) * jnp.log(x_safe))
        per_simplex = jnp.sum(per_coordinate, axis=-1)
        (log_norm,) = _expand(per_simplex.shape, log_norm)
        per_simplex = per_simplex + log_norm
        return self._sum_event(per_simplex, len(self.event_shape) - 1)


@_pytree_dataclass
class Bernoulli(Distribution, HasScore, Binary, Relaxable):
    """Bernoulli(sigmoid(logits)), independent coordinates; samples are float 0/1.

    ``relaxed(temperature)`` is its Binary Concrete relaxation,
    :class:`estimators.RelaxedBernoulli` (a cost must then be defined on ``[0, 1]^D``).
    """

    logits: Array

    def __post_init__(self):
        _validate(self, not_nan=("logits",))

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(jnp.shape(self.logits))

    @property
    def probs(self) -> Array:
        return jax.nn.sigmoid(self.logits)

    @property
    def mean(self) -> Array:
        return self.probs

    def sample(self, key: Array, sample_shape: Shape = ()) -> Array:
        shape = (*sample_shape, *self.event_shape)
        (probs,) = _expand(shape, self.probs)
        x = jax.random.bernoulli(key, probs, shape)
        return x.astype(jnp.result_type(self.logits))

    def log_prob(self, x: Array) -> Array:
        # log p = x * logits - softplus(logits), stable for large |logits|.
        (logits,) = _expand(jnp.shape(x), self.logits)
        lp = x * logits - softplus(logits)
        return self._sum_event(lp)

    def relaxed(self, temperature: Array | float) -> RelaxedBernoulli:
        """The Binary Concrete relaxation at ``temperature``: ``RelaxedBernoulli(logits,
        temperature)`` (``estimators.discrete._relaxed``)."""
        from .discrete._relaxed import RelaxedBernoulli  # here: that module imports this one

        return RelaxedBernoulli(self.logits, temperature)  # type: ignore[arg-type]


@_pytree_dataclass
class Categorical(Distribution, HasScore, Discrete):
    """Categorical(softmax(logits)) over the last axis; samples are int32 category indices.

    ``logits: [*batch, K]``; a sample has shape ``[*batch]`` (``event_shape``).
    """

    logits: Array

    def __post_init__(self):
        if jnp.ndim(self.logits) < 1:
            raise ValueError("Categorical: logits need a last axis of categories; got a scalar")
        _validate(self, not_nan=("logits",))

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(jnp.shape(self.logits))[:-1]

    @property
    def probs(self) -> Array:
        return jax.nn.softmax(self.logits, axis=-1)

    def sample(self, key: Array, sample_shape: Shape = ()) -> Array:
        shape = (*sample_shape, *self.event_shape)
        return jax.random.categorical(key, self.logits, axis=-1, shape=shape)

    def log_prob(self, x: Array) -> Array:
        log_p = jax.nn.log_softmax(self.logits, axis=-1)
        log_p = jnp.broadcast_to(log_p, (*jnp.shape(x), log_p.shape[-1]))
        lp = jnp.take_along_axis(log_p, x[..., None].astype(jnp.int32), axis=-1)[..., 0]
        return self._sum_event(lp)
