"""The examples in the public docstrings run, as doctests, and every public estimator has one.

(The README's snippets run in tests/test_readme.py.)
"""

from __future__ import annotations

import doctest
import importlib
import inspect

import pytest

import estimators

MODULES = [
    "estimators._baselines",
    "estimators._common",
    "estimators._control_variates",
    "estimators._distributions",
    "estimators._interface",
    "estimators._measure_valued",
    "estimators._optax_compat",
    "estimators._pathwise",
    "estimators._registry",
    "estimators._score_function",
    "estimators.discrete._arm",
    "estimators.discrete._double_cv",
    "estimators.discrete._relax",
    "estimators.discrete._relaxations",
    "estimators.discrete._relaxed",
    "estimators.discrete._rodeo",
    "estimators.discrete._vimco",
    "estimators.testing",
]
# The estimators and their pieces: each docstring must carry a runnable example.
MUST_HAVE_EXAMPLE = [
    "double_cv",
    "rodeo",
    "pathwise",
    "pathwise_surrogate",
    "score_function",
    "score_function_surrogate",
    "measure_valued",
    "with_control_variate",
    "delta_method",
    "leave_one_out_baseline",
    "moving_average_update",
    "optimal_baseline",
    "nvil_baseline",
    "gradient_estimator",
    "arm",
    "disarm",
    "arms",
    "gumbel_softmax",
    "gumbel_softmax_straight_through",
    "straight_through",
    "vimco",
    "vimco_baselines",
    "vimco_surrogate",
    "rebar_estimator",
    "relax_estimator",
]


def _finder_tests(module_name: str) -> list[doctest.DocTest]:
    module = importlib.import_module(module_name)
    tests = doctest.DocTestFinder(exclude_empty=True).find(module, module_name)
    return [t for t in tests if t.examples]


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples_run(module_name):
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in _finder_tests(module_name):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} doctest example(s) failed in {module_name}"


@pytest.mark.parametrize("name", MUST_HAVE_EXAMPLE)
def test_every_public_estimator_has_an_example(name):
    doc = inspect.getdoc(getattr(estimators, name)) or ""
    assert ">>> " in doc, f"estimators.{name} has no example in its docstring"


def test_the_doctest_check_catches_a_wrong_example():
    """Companion: a docstring whose output is wrong fails the runner used above."""

    def wrong():
        """>>> 1 + 1
        3
        """

    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in doctest.DocTestFinder().find(wrong, "wrong", globs={}):
        runner.run(test, out=lambda s: None)
    assert runner.summarize(verbose=False).failed == 1
