"""The registry of named estimators and combinations (see :mod:`estimators._registry`).

``get("score_function+loo")`` builds the score-function estimator with the leave-one-out
baseline; ``get("mypkg.mymod:my_estimator")`` imports a user's estimator; ``register`` adds a
base name that then composes with every modifier.
"""

from ._registry import OPTIONS as OPTIONS
from ._registry import EstimatorInfo as EstimatorInfo
from ._registry import control_variate_estimator as control_variate_estimator
from ._registry import describe as describe
from ._registry import get as get
from ._registry import iwae_estimator as iwae_estimator
from ._registry import label as label
from ._registry import markdown_table as markdown_table
from ._registry import measure_valued_estimator as measure_valued_estimator
from ._registry import names as names
from ._registry import pathwise_estimator as pathwise_estimator
from ._registry import register as register
from ._registry import sample_costs as sample_costs
from ._registry import score_function_estimator as score_function_estimator
