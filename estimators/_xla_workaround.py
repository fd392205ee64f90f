"""A workaround for an XLA:CPU miscompilation that silently corrupts jitted estimates.

jaxlib 0.10.x on CPU lowers a fusion of "broadcast a vector along the rows, multiply, reduce
each row, broadcast the result back" (the shape of ``jax.vmap(jax.grad(f))`` for a cost such as
``exp(-sum(a * x**2))``) to a YNNPACK ``reduce`` fusion that returns wrong values for every row
past the first 32,768 elements: a jitted pathwise estimate with 16,000 samples in 3 dimensions
had 5,057 wrong rows (errors up to 2.9), while the same function run eagerly agrees with float64
NumPy to 1e-7. Removing the reduce type from XLA's YNN fusions
(``--xla_cpu_experimental_ynn_fusion_type=-reduce``) gives the right values;
``tests/test_xla_workaround.py`` checks both the symptom and the fix.

XLA reads ``XLA_FLAGS`` once, when the first backend starts, so the flag is added when
``estimators`` is imported, before anything has run. It is added only on the jaxlib versions
where the bug was seen, only if the user's ``XLA_FLAGS`` does not already choose YNN fusion
types, and never if ``MCGRAD_KEEP_XLA_FLAGS=1``. If JAX's backends were started before this
package was imported, the flag cannot take effect and a warning says how to fix it.
"""

from __future__ import annotations

import importlib.metadata
import os
import warnings

FLAG = "--xla_cpu_experimental_ynn_fusion_type=-reduce"
# jaxlib (major, minor) versions where the miscompilation was reproduced.
AFFECTED = ((0, 10),)


def _jaxlib_version() -> tuple[int, int] | None:
    try:
        parts = importlib.metadata.version("jaxlib").split(".")
        return int(parts[0]), int(parts[1])
    except (importlib.metadata.PackageNotFoundError, ValueError, IndexError):
        return None


def needed() -> bool:
    """Whether this jaxlib is one where the miscompilation was seen."""
    return _jaxlib_version() in AFFECTED


def apply() -> bool:
    """Add :data:`FLAG` to ``XLA_FLAGS`` where needed; returns whether the flag is in effect.

    Called once when ``estimators`` is imported. Warns (``RuntimeWarning``) if the flag is
    needed but JAX's backends already started, so it can no longer take effect.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_experimental_ynn_fusion_type" in flags:
        return FLAG in flags.split()
    if os.environ.get("MCGRAD_KEEP_XLA_FLAGS") == "1" or not needed():
        return False
    try:
        from jax._src import xla_bridge

        started = xla_bridge.backends_are_initialized()
    except (ImportError, AttributeError):
        started = False
    if started:
        warnings.warn(
            "estimators: JAX's backends started before `import estimators`, so the workaround "
            f"for an XLA:CPU miscompilation in jaxlib {'.'.join(map(str, _jaxlib_version() or ()))}"
            f" cannot be applied; jitted estimates on CPU may be wrong. Import estimators first, "
            f"or set XLA_FLAGS='{FLAG}' before starting Python.",
            RuntimeWarning,
            stacklevel=3,
        )
        return False
    os.environ["XLA_FLAGS"] = f"{flags} {FLAG}".strip()
    return True


# Applied on import (the package imports this module before anything can run a computation).
ACTIVE = apply()
