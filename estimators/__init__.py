"""Monte Carlo gradient estimators as pure JAX functions (Mohamed et al., JMLR 2020).

Every estimator takes a cost ``f`` written for one sample, the parameters of a distribution
(any pytree), a ``dist_builder`` mapping them to a distribution, a key and a static number of
samples, and returns one gradient estimate per sample: a pytree like the parameters whose leaves
have a leading ``num_samples`` axis. The ``*_surrogate`` forms return a scalar objective whose
``jax.grad`` is the same estimator, for training.

Every estimator is also a :class:`GradientEstimator` (per-sample form, surrogate, optional
state, declared capabilities) in :mod:`estimators.registry`, which composes estimators with
baselines and control variates by name: ``estimators.registry.get("score_function+loo")``.
"""

from . import _xla_workaround as _xla_workaround  # first: XLA_FLAGS before any computation
from . import registry as registry
from ._baselines import Baseline as Baseline
from ._baselines import BaselineInputs as BaselineInputs
from ._baselines import MovingAverage as MovingAverage
from ._baselines import NVILState as NVILState
from ._baselines import leave_one_out_baseline as leave_one_out_baseline
from ._baselines import moving_average_baseline as moving_average_baseline
from ._baselines import moving_average_init as moving_average_init
from ._baselines import moving_average_update as moving_average_update
from ._baselines import nvil_baseline as nvil_baseline
from ._baselines import optimal_baseline as optimal_baseline
from ._capabilities import Binary as Binary
from ._capabilities import Capability as Capability
from ._capabilities import Discrete as Discrete
from ._capabilities import FactorizedMoments as FactorizedMoments
from ._capabilities import HasScore as HasScore
from ._capabilities import Relaxable as Relaxable
from ._capabilities import Reparameterizable as Reparameterizable
from ._capabilities import StandardNoise as StandardNoise
from ._capabilities import WeakDerivative as WeakDerivative
from ._common import StructuredCost as StructuredCost
from ._common import draw_samples as draw_samples
from ._common import ignores_baselines as ignores_baselines
from ._common import invariant_to_baselines as invariant_to_baselines
from ._common import pull_back as pull_back
from ._common import with_coordinate_costs as with_coordinate_costs
from ._control_variates import ControlVariate as ControlVariate
from ._control_variates import baseline_control_variate as baseline_control_variate
from ._control_variates import delta_method as delta_method
from ._control_variates import with_control_variate as with_control_variate
from ._distributions import Bernoulli as Bernoulli
from ._distributions import Beta as Beta
from ._distributions import Categorical as Categorical
from ._distributions import Dirichlet as Dirichlet
from ._distributions import Distribution as Distribution
from ._distributions import Gamma as Gamma
from ._distributions import Normal as Normal
from ._distributions import WeakDerivativeTerm as WeakDerivativeTerm
from ._distributions import softplus as softplus
from ._interface import EstimateBatch as EstimateBatch
from ._interface import EstimateInputs as EstimateInputs
from ._interface import GradientEstimator as GradientEstimator
from ._interface import gradient_estimator as gradient_estimator
from ._interface import sum_over_examples as sum_over_examples
from ._interface import surrogate_from_per_sample as surrogate_from_per_sample
from ._measure_valued import CoordinateCostFn as CoordinateCostFn
from ._measure_valued import measure_valued as measure_valued
from ._optax_compat import MultiNormalDiagFromLogScale as MultiNormalDiagFromLogScale
from ._optax_compat import control_delta_method as control_delta_method
from ._optax_compat import control_variates_jacobians as control_variates_jacobians
from ._optax_compat import measure_valued_jacobians as measure_valued_jacobians
from ._optax_compat import moving_avg_baseline as moving_avg_baseline
from ._optax_compat import multi_normal as multi_normal
from ._optax_compat import pathwise_jacobians as pathwise_jacobians
from ._optax_compat import score_function_jacobians as score_function_jacobians
from ._pathwise import pathwise as pathwise
from ._pathwise import pathwise_surrogate as pathwise_surrogate
from ._score_function import score_function as score_function
from ._score_function import score_function_surrogate as score_function_surrogate
from .discrete._arm import arm as arm
from .discrete._arm import arms as arms
from .discrete._arm import disarm as disarm
from .discrete._double_cv import double_cv as double_cv
from .discrete._relax import rebar_estimator as rebar_estimator
from .discrete._relax import relax_estimator as relax_estimator
from .discrete._relaxations import gumbel_softmax as gumbel_softmax
from .discrete._relaxations import (
    gumbel_softmax_straight_through as gumbel_softmax_straight_through,
)
from .discrete._relaxations import straight_through as straight_through
from .discrete._relaxed import OneHotCategorical as OneHotCategorical
from .discrete._relaxed import RelaxedBernoulli as RelaxedBernoulli
from .discrete._relaxed import RelaxedOneHotCategorical as RelaxedOneHotCategorical
from .discrete._rodeo import rodeo as rodeo
from .discrete._vimco import vimco as vimco
from .discrete._vimco import vimco_baselines as vimco_baselines
from .discrete._vimco import vimco_surrogate as vimco_surrogate
