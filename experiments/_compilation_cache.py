"""JAX's persistent compilation cache for the command line: a repeated run loads its programs.

``python -m experiments run`` and ``reproduce`` (and ``mcgrad``) keep every compiled XLA program
on disk, so running a figure again (or another figure that shares programs) skips compiling.
Where the cache goes, first match wins:

1. ``--compilation-cache DIR`` (or ``--no-compilation-cache``) on the command line;
2. ``$MCGRAD_COMPILATION_CACHE``: a folder, or ``0`` / ``off`` / ``false`` / ``no`` for none;
3. JAX's own setting, ``$JAX_COMPILATION_CACHE_DIR`` (``jax_compilation_cache_dir``);
4. ``$XDG_CACHE_HOME/mcgrad/jax``, by default ``~/.cache/mcgrad/jax``.

Every program is kept, however small or quick to compile (the variance figures' programs take
well under JAX's default threshold of one second each). A folder that cannot be created or
written is no error: the command warns once and runs without the cache. The cache is trusted
code: do not point it at a folder others can write to. Delete the folder to empty it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

ENV = "MCGRAD_COMPILATION_CACHE"
OFF = frozenset({"0", "off", "false", "no", "none"})
# The jax.config options this module sets (and restores on leaving :func:`compilation_cache`).
_OPTIONS = (
    "jax_enable_compilation_cache",
    "jax_compilation_cache_dir",
    "jax_persistent_cache_min_compile_time_secs",
    "jax_persistent_cache_min_entry_size_bytes",
)


def default_dir() -> Path:
    """``$XDG_CACHE_HOME/mcgrad/jax``, by default ``~/.cache/mcgrad/jax``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mcgrad" / "jax"


def is_off(setting: str) -> bool:
    """Whether a ``--compilation-cache`` / ``$MCGRAD_COMPILATION_CACHE`` value turns it off."""
    return setting.strip().lower() in OFF


def resolve(setting: str | None = None) -> Path | None:
    """The cache folder for ``setting`` (the command-line value, or ``None``); ``None``: off.

    Order: ``setting``, ``$MCGRAD_COMPILATION_CACHE``, JAX's ``jax_compilation_cache_dir``
    (``$JAX_COMPILATION_CACHE_DIR``), :func:`default_dir`. Creates nothing.
    """
    import jax

    if setting is None:
        setting = os.environ.get(ENV) or None
    if setting is not None:
        return None if is_off(setting) else Path(setting).expanduser()
    if jax.config.jax_compilation_cache_dir:
        return Path(jax.config.jax_compilation_cache_dir).expanduser()
    return default_dir()


def _writable(path: Path) -> str | None:
    """``None`` if ``path`` is (or could be made) a writable folder, else why not."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    return None


def configure(setting: str | None = None) -> Path | None:
    """Turn JAX's persistent compilation cache on at :func:`resolve`'s folder (or off).

    Call before the first compile. Caches every program (no minimum compile time or size).
    Returns the folder, or ``None`` when the cache is off or its folder is unusable (then
    after one ``UserWarning`` saying why; the run goes on without the cache).
    """
    import jax

    path = resolve(setting)
    if path is not None and (why := _writable(path)) is not None:
        warnings.warn(
            f"compilation cache folder {path} is not usable ({why}); running without the "
            f"persistent compilation cache (set {ENV}=0 or --no-compilation-cache to silence "
            "this, or point it at a writable folder)",
            stacklevel=2,
        )
        path = None
    if path is None:
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


@contextlib.contextmanager
def compilation_cache(setting: str | None = None) -> Iterator[Path | None]:
    """:func:`configure` while inside; JAX's previous settings are restored on leaving.

    (A caller in the same process, a test calling the CLI's ``main``, keeps its own settings.
    JAX opens the cache at the first compile after it is set; a process whose cache is
    already open keeps using that one.)
    """
    import jax

    before = {name: getattr(jax.config, name) for name in _OPTIONS}
    try:
        yield configure(setting)
    finally:
        for name, value in before.items():
            jax.config.update(name, value)
