"""The registry of named estimators and their combinations.

A spec names a base estimator and, after ``+``, modifiers applied left to right::

    "pathwise"                      "score_function+loo"         "pathwise+delta"
    "measure_valued"                "score_function+moving_average"
    "measure_valued_uncoupled"      "score_function+optimal"     "score_function+delta"
    "iwae"                          "score_function+nvil"        "mypkg.mymod:my_estimator"

A base is a registered name or an importable path ``"package.module:attribute"`` naming a
:class:`GradientEstimator`, a function with ``estimators.pathwise``'s signature, or a factory
``(**options) -> GradientEstimator``. A modifier is a baseline (``loo``, ``moving_average``,
``optimal``, ``nvil``; only for estimators that take one, such as the score function) or a
control variate (``delta``). Options tune the pieces: ``cv_coefficient`` (a float or
``"optimal"``), ``cv_coefficient_samples``, ``moving_average_decay``,
``early_training_heuristic``, ``optimal_baseline_samples``, ``nvil`` (``(apply, params,
optimizer)`` of the learned baseline's network, see :func:`estimators.nvil_baseline`), and for
the discrete family ``temperature`` (of a relaxation; REBAR's initial one),
``control_learning_rate`` (of REBAR's and RELAX's variance-minimising step) and
``relax_control`` (RELAX's control network as ``(apply, params)``; a small one by default).

>>> import estimators
>>> est = estimators.registry.get("score_function+loo")
>>> est.name, est.label, est.min_samples
('score_function+loo', 'score function + leave-one-out', 2)
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax

from . import _baselines, discrete
from ._baselines import Baseline, BaselineInputs
from ._capabilities import FactorizedMoments, HasScore, Reparameterizable, WeakDerivative
from ._common import (
    Array,
    CostFn,
    DistBuilder,
    PyTree,
    build_and_check,
    draw_samples,
    sample_from_noise,
    sample_noise,
    vmap_samples,
)
from ._control_variates import delta_method, with_control_variate
from ._interface import GradientEstimator, gradient_estimator
from ._measure_valued import measure_valued
from ._pathwise import pathwise, pathwise_surrogate
from ._score_function import score_function, score_function_surrogate

Factory = Callable[..., GradientEstimator]


def _join_references(*references: str) -> str:
    """``"A; B"`` without empty or repeated entries."""
    parts = [p.strip() for r in references for p in r.split(";")]
    return "; ".join(dict.fromkeys(p for p in parts if p))


_BASELINE_REFERENCES = {
    "loo": "Kool et al. 2019",
    "moving_average": "Williams 1992",
    "optimal": "Mohamed et al. 2020 (sec. 7.4)",
    "nvil": "Mnih & Gregor 2014",
}
Modifier = Callable[..., GradientEstimator]

# Every option a runner may pass; a name outside these is a typo, and an error.
OPTIONS: dict[str, Any] = {
    "cv_coefficient": 1.0,
    "cv_coefficient_samples": 20,
    "moving_average_decay": 0.99,
    "early_training_heuristic": False,
    "optimal_baseline_samples": None,
    "nvil": None,
    # The discrete family's settings.
    "temperature": 0.5,
    "control_learning_rate": 1e-2,
    "relax_control": None,
}


# --- The built-in estimators --------------------------------------------------------------


def _checked(est: GradientEstimator) -> GradientEstimator:
    """``est`` whose ``per_sample``/``surrogate`` first check the distribution and sample
    count against what it declares (a clear error, at trace time)."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def checked(function, params, dist_builder, key, *, num_samples, **kwargs):
            est.check(dist_builder(params), num_samples)
            return fn(function, params, dist_builder, key, num_samples=num_samples, **kwargs)

        return checked

    return est._replace(per_sample=wrap(est.per_sample), surrogate=wrap(est.surrogate))


def pathwise_estimator() -> GradientEstimator:
    """:func:`estimators.pathwise` as a :class:`GradientEstimator` (reparameterisable
    distributions; one gradient of ``f`` per sample)."""
    return gradient_estimator(
        "pathwise",
        pathwise,
        surrogate=pathwise_surrogate,
        requires=(Reparameterizable,),
        label="pathwise",
        reference="Kingma & Welling 2014; Rezende et al. 2014",
    )


def score_function_estimator(baseline: Baseline | None = None) -> GradientEstimator:
    """:func:`estimators.score_function`, optionally with a :class:`estimators.Baseline`.

    The baseline's value is formed from the state before the estimate (and, for ``optimal``,
    from independent samples); ``update`` passes the costs on to the baseline's ``update``.
    """
    if baseline is None:
        return gradient_estimator(
            "score_function",
            score_function,
            surrogate=score_function_surrogate,
            requires=(HasScore,),
            label="score function",
            with_baseline=score_function_estimator,
            reference="Williams 1992",
        )
    if not isinstance(baseline, Baseline):
        raise TypeError(
            f"score_function_estimator: baseline must be an estimators.Baseline; got "
            f"{type(baseline).__name__}"
        )

    def value(function, params, dist_builder, key, num_samples, state, context):
        inputs = BaselineInputs(function, params, dist_builder, key, num_samples, context)
        return baseline.value(state, inputs)

    def per_sample(function, params, dist_builder, key, *, num_samples, state=(), context=None):
        b = value(function, params, dist_builder, key, num_samples, state, context)
        return score_function(
            function, params, dist_builder, key, num_samples=num_samples, baseline=b
        )

    surrogate = None
    if not baseline.per_parameter:

        def surrogate(function, params, dist_builder, key, *, num_samples, state=(), context=None):
            b = value(function, params, dist_builder, key, num_samples, state, context)
            return score_function_surrogate(
                function, params, dist_builder, key, num_samples=num_samples, baseline=b
            )

    return gradient_estimator(
        f"score_function+{baseline.name}",
        per_sample,
        surrogate=surrogate,
        init=baseline.init,
        update=baseline.update,
        requires=(HasScore,),
        multi_sample=baseline.min_samples > 1,
        min_samples=baseline.min_samples,
        cost_evaluations=lambda dim: 1 + baseline.extra_evaluations,
        label=f"score function + {baseline.label}",
        reference=_join_references("Williams 1992", _BASELINE_REFERENCES.get(baseline.name, "")),
    )


def measure_valued_estimator(*, coupling: bool = True) -> GradientEstimator:
    """:func:`estimators.measure_valued` (distributions with a weak derivative; ``4 D``
    evaluations of ``f`` per sample for a ``D``-dimensional Gaussian's loc and scale)."""
    return gradient_estimator(
        "measure_valued" if coupling else "measure_valued_uncoupled",
        functools.partial(measure_valued, coupling=coupling),
        requires=(WeakDerivative,),
        cost_evaluations=lambda dim: 4 * dim,
        label="measure-valued" + ("" if coupling else " (uncoupled)"),
        reference="Pflug 1989; Mohamed et al. 2020 (sec. 6)",
    )


def _iwae_per_sample(function, params, dist_builder, key, *, num_samples):
    dist = build_and_check(function, params, dist_builder, num_samples, "iwae")
    noise = sample_noise(dist, key, num_samples)

    def cost(p: PyTree, n: Array) -> Array:
        return function(sample_from_noise(dist_builder(p), n))

    costs, grads = jax.vmap(jax.value_and_grad(cost), in_axes=(None, 0))(params, noise)
    weights = jax.lax.stop_gradient(num_samples * jax.nn.softmax(-costs))
    return jax.tree.map(lambda g: weights.reshape((-1,) + (1,) * (g.ndim - 1)) * g, grads)


def _iwae_surrogate(function, params, dist_builder, key, *, num_samples):
    dist = build_and_check(function, params, dist_builder, num_samples, "iwae")
    noise = sample_noise(dist, key, num_samples)
    costs = jax.vmap(lambda n: function(sample_from_noise(dist_builder(params), n)))(noise)
    return -(jax.nn.logsumexp(-costs) - math.log(num_samples))


def iwae_estimator() -> GradientEstimator:
    r"""The pathwise gradient of the importance-weighted bound (Burda et al. 2016).

    With ``f = -log w`` the estimand is :math:`\nabla_\theta E_{q^K}[-\log\frac1K\sum_k
    w(x_k)]`; the surrogate is :math:`-\log\frac1K\sum_k e^{-f(x_k)}` on reparameterised
    samples; ``per_sample`` row ``k`` is :math:`K\,\tilde w_k \nabla_\theta f(x_k)` with the
    normalised weights :math:`\tilde w` (rows are not independent).
    """
    return gradient_estimator(
        "iwae",
        _iwae_per_sample,
        surrogate=_iwae_surrogate,
        requires=(Reparameterizable,),
        multi_sample=True,
        objective="log_mean_exp",
        label="IWAE (pathwise)",
        reference="Burda et al. 2016",
    )


# --- Modifiers ------------------------------------------------------------------------------


def _baseline_modifier(make: Callable[[dict[str, Any]], Baseline]) -> Modifier:
    def apply(base: GradientEstimator, options: dict[str, Any]) -> GradientEstimator:
        baseline = make(options)
        if base.with_baseline is None:
            raise ValueError(
                f"the baseline {baseline.name!r} changes only estimators that take a baseline "
                f"(the score function); {base.name!r} does not (its estimate depends on "
                "differences or derivatives of f, which a constant leaves unchanged)"
            )
        est = base.with_baseline(baseline)
        return est._replace(name=f"{base.name}+{baseline.name}")

    return apply


def _nvil(options: dict[str, Any]) -> Baseline:
    network = options.get("nvil")
    if network is None:
        raise ValueError(
            "the 'nvil' baseline needs its network: pass nvil=(apply, params, optimizer) "
            "(apply(net_params, context) -> [] for one context; see estimators.nvil_baseline)"
        )
    apply, params, optimizer = network
    return _baselines.nvil_baseline(apply, params, optimizer, decay=options["moving_average_decay"])


def control_variate_estimator(
    base: GradientEstimator,
    make_control_variate: Callable[[CostFn], Any],
    *,
    name: str,
    label: str,
    reference: str = "",
    requires: tuple[type, ...] = (),
    coefficient: float | str = 1.0,
    num_coefficient_samples: int = 20,
) -> GradientEstimator:
    """``base`` with the control variate ``make_control_variate(function)`` (e.g.
    :func:`estimators.delta_method`), through :func:`estimators.with_control_variate`."""

    def per_sample(function, params, dist_builder, key, *, num_samples, state=(), context=None):
        inner = functools.partial(base.per_sample, state=state, context=context)
        return with_control_variate(
            inner,
            function,
            make_control_variate(function),
            params,
            dist_builder,
            key,
            num_samples=num_samples,
            coefficient=coefficient,
            num_coefficient_samples=num_coefficient_samples,
        )

    return gradient_estimator(
        f"{base.name}+{name}",
        per_sample,
        init=base.init,
        update=base.update,
        requires=tuple(dict.fromkeys(base.requires + requires)),
        unbiased=base.unbiased,
        bias=base.bias,
        adaptive=base.adaptive,
        multi_sample=base.multi_sample,
        min_samples=base.min_samples,
        objective=base.objective,
        cost_evaluations=base.cost_evaluations,
        label=f"{base.label} + {label}",
        reference=_join_references(base.reference, reference),
    )


def _delta(base: GradientEstimator, options: dict[str, Any]) -> GradientEstimator:
    if base.objective != "mean":
        raise ValueError(f"the delta method applies to objective 'mean'; {base.name!r} is not")
    return control_variate_estimator(
        base,
        delta_method,
        name="delta",
        label="delta method",
        reference="Mohamed et al. 2020 (sec. 7.2)",
        requires=(FactorizedMoments,),
        coefficient=options["cv_coefficient"],
        num_coefficient_samples=options["cv_coefficient_samples"],
    )


_BASES: dict[str, Factory] = {
    "pathwise": lambda **options: pathwise_estimator(),
    "score_function": lambda **options: score_function_estimator(),
    "measure_valued": lambda **options: measure_valued_estimator(coupling=True),
    "measure_valued_uncoupled": lambda **options: measure_valued_estimator(coupling=False),
    "iwae": lambda **options: iwae_estimator(),
    **discrete.BASES,
}
_MODIFIERS: dict[str, Callable[[GradientEstimator, dict[str, Any]], GradientEstimator]] = {
    "loo": _baseline_modifier(lambda o: _baselines.leave_one_out()),
    "moving_average": _baseline_modifier(
        lambda o: _baselines.moving_average(
            decay=o["moving_average_decay"],
            early_training_heuristic=o["early_training_heuristic"],
        )
    ),
    "optimal": _baseline_modifier(
        lambda o: _baselines.optimal(num_samples=o["optimal_baseline_samples"])
    ),
    "nvil": _baseline_modifier(_nvil),
    "delta": _delta,
}


# --- The public registry --------------------------------------------------------------------


def names() -> tuple[str, ...]:
    """The registered base estimators, then the modifiers (as ``"+name"``)."""
    return tuple(_BASES) + tuple(f"+{m}" for m in _MODIFIERS)


def register(
    name: str,
    estimator: GradientEstimator | Factory,
    *,
    overwrite: bool = False,
) -> None:
    """Register a base estimator under ``name`` (a :class:`GradientEstimator` or a factory
    ``(**options) -> GradientEstimator``); it then composes with every modifier."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"register: name must be an identifier such as 'my_estimator'; {name!r}")
    if name in _BASES and not overwrite:
        raise ValueError(f"register: {name!r} is already registered; pass overwrite=True")
    if isinstance(estimator, GradientEstimator):
        fixed = estimator
        _BASES[name] = lambda **options: fixed
    elif callable(estimator):
        _BASES[name] = estimator
    else:
        raise TypeError(f"register: {name!r} must be a GradientEstimator or a factory")


def _import(path: str) -> Any:
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"estimator {path!r}: cannot import module {module_name!r} ({e})") from e
    try:
        return functools.reduce(getattr, attribute.split("."), module)
    except AttributeError:
        raise ValueError(
            f"estimator {path!r}: module {module_name!r} has no attribute {attribute!r}"
        ) from None


def _from_object(path: str, obj: Any, options: dict[str, Any]) -> GradientEstimator:
    if isinstance(obj, GradientEstimator):
        return obj
    if not callable(obj):
        raise TypeError(f"estimator {path!r} is a {type(obj).__name__}, not an estimator")
    try:
        parameters = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        parameters = {}  # type: ignore[assignment]
    if "num_samples" in parameters:  # a per-sample function like estimators.pathwise
        return gradient_estimator(path, obj)
    est = obj(**{k: v for k, v in options.items() if k in parameters})
    if not isinstance(est, GradientEstimator):
        raise TypeError(
            f"estimator {path!r}: the factory returned {type(est).__name__}, not a "
            "GradientEstimator"
        )
    return est


def _base(spec: str, name: str, options: dict[str, Any]) -> GradientEstimator:
    if ":" in name:
        return _from_object(name, _import(name), options)
    factory = _BASES.get(name)
    if factory is None:
        import difflib

        close = difflib.get_close_matches(name, list(_BASES), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(
            f"unknown estimator {name!r} in {spec!r}{hint}; known: {', '.join(_BASES)}, or an "
            "importable path 'package.module:attribute'"
        )
    return factory(**options)


def get(spec: str, **options: Any) -> GradientEstimator:
    """The estimator a spec names, built and composed: see the module docstring.

    Args:
      spec: ``"base"`` or ``"base+modifier+..."``; ``base`` may be ``"pkg.mod:attr"``.
      **options: settings of the pieces (``cv_coefficient``, ``moving_average_decay``, ...);
        an unknown option name is an error.

    Returns:
      A :class:`GradientEstimator` named ``spec`` whose ``per_sample``/``surrogate`` check the
      distribution's capabilities and the number of samples first.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"estimator spec must be a non-empty str; got {spec!r}")
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise TypeError(f"unknown estimator option(s) {unknown}; known: {', '.join(OPTIONS)}")
    resolved = {**OPTIONS, **options}
    base_name, *modifiers = [part.strip() for part in spec.split("+")]
    est = _base(spec, base_name, resolved)
    for modifier in modifiers:
        apply = _MODIFIERS.get(modifier)
        if apply is None:
            raise ValueError(
                f"unknown modifier {modifier!r} in {spec!r}; known: {', '.join(_MODIFIERS)}"
            )
        est = apply(est, resolved)
    return _checked(est._replace(name=spec.replace(" ", "")))


def label(spec: str, **options: Any) -> str:
    """The legend label of ``spec`` (e.g. ``"score function + leave-one-out"``)."""
    return get(spec, **options).label


def sample_costs(
    function: CostFn, params: PyTree, dist_builder: DistBuilder, key: Array, *, num_samples: int
) -> Array:
    """``[num_samples]`` stopped costs ``f(x_i)`` of the samples every estimator draws with
    ``key`` (for an estimator's ``update``)."""
    dist = jax.lax.stop_gradient(dist_builder(params))
    return jax.lax.stop_gradient(vmap_samples(function)(draw_samples(dist, key, num_samples)))


# --- What each estimator is, for tables ----------------------------------------------------


class EstimatorInfo(NamedTuple):
    """One row of :func:`describe`: what an estimator declares, in words."""

    spec: str
    label: str
    objective: str  # "mean" or "log_mean_exp"
    unbiased: str  # "yes", or "no: <what it estimates instead>"
    evaluations: str  # of f per sample ("2", "4 D"); a value and gradient at one point is one
    samples: str  # "1" (independent rows) or "K >= k, jointly"
    state: str  # "none", "running", "learned (adaptive)"
    distributions: tuple[str, ...]
    reference: str


def _evaluations(est: GradientEstimator) -> str:
    one, two = est.cost_evaluations(1), est.cost_evaluations(2)
    if one == two:
        return str(one)
    slope, offset = two - one, 2 * one - two
    return f"{slope} D" + (f" + {offset}" if offset else "")


def describe(
    spec: str, distributions: dict[str, Any] | None = None, **options: Any
) -> EstimatorInfo:
    """What the estimator ``spec`` declares, in words: unbiased (or what it estimates
    instead), evaluations of ``f`` per sample, how it uses its samples, its state, the
    distributions it supports (of ``distributions``, name -> instance; by default one of
    each of the package's) and its reference."""
    est = get(spec, **options)
    if distributions is None:
        distributions = _example_distributions()
    state = jax.tree.leaves(est.init())
    return EstimatorInfo(
        spec=spec,
        label=est.label,
        objective=est.objective,
        unbiased="yes" if est.unbiased else f"no: {est.bias}",
        evaluations=_evaluations(est),
        samples=f"K >= {est.min_samples}, jointly" if est.multi_sample else "1",
        state="learned (adaptive)" if est.adaptive else ("running" if state else "none"),
        distributions=tuple(n for n, d in distributions.items() if est.supports(d)),
        reference=est.reference,
    )


def _example_distributions() -> dict[str, Any]:
    """One instance of each distribution the package defines (for :func:`describe`)."""
    import jax.numpy as jnp

    from . import _distributions
    from .discrete import _relaxed

    one, two = jnp.ones(()), jnp.full((), 2.0)
    out: dict[str, Any] = {
        "Normal": _distributions.Normal(one, one),
        "Gamma": _distributions.Gamma(two, one),
        "Beta": _distributions.Beta(two, two),
        "Dirichlet": _distributions.Dirichlet(jnp.ones(3)),
        "Bernoulli": _distributions.Bernoulli(jnp.zeros(())),
        "Categorical": _distributions.Categorical(jnp.zeros(3)),
    }
    out["OneHotCategorical"] = _relaxed.OneHotCategorical(jnp.zeros(3))
    return out


def markdown_table(specs: list[str] | tuple[str, ...] | None = None) -> str:
    """The :func:`describe` rows of ``specs`` (by default every base, and the score function
    with each baseline that needs no option) as a Markdown table."""
    if specs is None:
        bases = [n for n in names() if not n.startswith("+")]
        specs = [*bases, *(f"score_function+{b}" for b in ("loo", "moving_average", "optimal"))]
    head = (
        "| estimator | spec | objective | unbiased? | evaluations of f per sample | samples "
        "| state | distributions | reference |"
    )
    lines = [head, "|" + "---|" * 9]
    notes = []
    for spec in specs:
        r = describe(spec)
        if r.unbiased != "yes":
            notes.append(f"- `{r.spec}` is biased: {r.unbiased.removeprefix('no: ')}")
        cells = (
            r.label,
            f"`{r.spec}`",
            r.objective,
            "yes" if r.unbiased == "yes" else "no (below)",
            r.evaluations,
            r.samples,
            r.state,
            ", ".join(r.distributions),
            r.reference,
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join([*lines, "", *notes] if notes else lines)
