"""The one results layout, and how a run writes it without ever damaging an earlier run.

A workdir holds ``config.json`` (the resolved config), ``run_info.json`` (versions, backend,
wall time), the runner's raw results (JSON/CSV) and its figures (PNG and PDF).

One-shot runs are computed in a hidden staging folder beside the workdir and moved into place
only when they succeed, so a crash or Ctrl-C leaves no half-written workdir and never touches
an existing one. Resumable runs (training with checkpoints) write into the workdir itself,
every file atomically (write to a temporary name, then ``os.replace``); their checkpoints are
the step folders ``checkpoints/<step>/`` (orbax's layout), in the workdir or a sub-workdir.

Files and folders are created with the permissions the umask allows (``0666 & ~umask``,
``0777 & ~umask``), as ``open`` and ``mkdir`` would, not the private ``0600`` of ``mkstemp``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class WorkdirError(RuntimeError):
    """A workdir that cannot be used as asked (it holds another run, say)."""


# Keys that change only what a run shows while it runs, never its results: a finished run or a
# resumed one is the same run whatever their values.
DISPLAY_KEYS = ("progress",)
# Keys that say where a run computes, not what: a run resumes and counts as finished whatever
# they hold, and runs saved before they existed match (the device mesh, issue 15: results do
# not depend on the number of devices).
PLACEMENT_PREFIXES = ("mesh.",)
# Keys added to a runner's config after runs were saved without them, with the value that gives
# the behaviour those runs had: a saved config lacking one reads as holding that value, so such
# a run still resumes and still counts as finished (the VAE's num_seeds, issue 14).
ADDED_KEYS: dict[str, Any] = {
    "num_seeds": 1,
    # The VAE's optimiser and sample averaging (issue 16, Burda et al.'s settings).
    "lr_schedule": "constant",
    "adam_eps": 1e-8,
    "average_samples": False,
    # The BLR's step-size decay: the runs before issue 16 used optax's half cosine.
    "lr_decay": "cosine",
}


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes it 0600
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Atomic text write (UTF-8)."""
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, data: Any) -> None:
    """Atomic, indented JSON write."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    """Read a JSON file, with an error naming the file if it is missing or corrupt."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise WorkdirError(f"{path} not found: is this the workdir of a finished run?") from None
    except json.JSONDecodeError as e:
        raise WorkdirError(f"{path} is not valid JSON ({e}); the file is corrupt") from None


def save_figure(fig, stem: Path) -> list[Path]:
    """Save a matplotlib figure as ``stem.png`` and ``stem.pdf``, atomically; returns the paths.

    Both are cropped to the figure's tight bounding box (``bbox_inches="tight"``), measured
    once for the two files rather than once per file.
    """
    import io

    import matplotlib

    bbox: Any = "tight"  # a canvas without a renderer of its own (not Agg) measures per file
    if hasattr(fig.canvas, "get_renderer"):
        bbox = fig.get_tightbbox(fig.canvas.get_renderer())
        bbox = bbox.padded(matplotlib.rcParams["savefig.pad_inches"])
    paths = []
    for ext, kwargs in (("png", {"dpi": 150}), ("pdf", {})):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, bbox_inches=bbox, **kwargs)
        path = Path(f"{stem}.{ext}")
        atomic_write_bytes(path, buf.getvalue())
        paths.append(path)
    return paths


def is_empty(workdir: Path) -> bool:
    return not workdir.exists() or (workdir.is_dir() and not any(workdir.iterdir()))


def checkpoints(workdir: Path) -> frozenset[Path]:
    """The checkpoint step folders (``.../checkpoints/<step>/``) under ``workdir``, at any depth."""
    workdir = Path(workdir)
    if not workdir.is_dir():
        return frozenset()
    return frozenset(p for p in workdir.glob("**/checkpoints/*") if p.is_dir() and p.name.isdigit())


def _flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for k, v in data.items():
        if isinstance(v, dict):
            flat |= _flatten(v, f"{prefix}{k}.")
        else:
            flat[f"{prefix}{k}"] = v
    return flat


_ABSENT = "<absent>"


def config_differences(saved: dict, config: dict) -> dict[str, tuple[Any, Any]]:
    """``{key: (saved value, new value)}`` for every dotted key whose value differs.

    A key present on one side only has ``"<absent>"`` on the other, except a key of
    ``ADDED_KEYS`` absent from ``saved``, which reads as its value there; ``DISPLAY_KEYS`` and
    the ``PLACEMENT_PREFIXES`` keys (the device mesh) are ignored.
    """
    a, b = _flatten(saved), _flatten(config)
    a = {**{k: v for k, v in ADDED_KEYS.items() if k in b}, **a}
    return {
        k: (a.get(k, _ABSENT), b.get(k, _ABSENT))
        for k in sorted(a.keys() | b.keys())
        if k not in DISPLAY_KEYS
        and not k.startswith(PLACEMENT_PREFIXES)
        and a.get(k, _ABSENT) != b.get(k, _ABSENT)
    }


def _describe_differences(diff: dict[str, tuple[Any, Any]]) -> str:
    return "; ".join(f"{k}: {old!r} saved, {new!r} now" for k, (old, new) in diff.items())


def is_finished(workdir: Path, config: dict) -> bool:
    """Whether ``workdir`` holds a finished run (``run_info.json``) of this very config."""
    workdir = Path(workdir)
    if not (workdir / "run_info.json").is_file() or not (workdir / "config.json").is_file():
        return False
    try:
        saved = read_json(workdir / "config.json")
    except WorkdirError:
        return False
    return isinstance(saved, dict) and not config_differences(saved, config)


def check_workdir(
    workdir: Path,
    config: dict,
    *,
    overwrite: bool,
    resume: bool,
    resumable: bool = False,
    may_raise: tuple[str, ...] = (),
) -> None:
    """Refuse a workdir that holds another run, unless told to overwrite or to resume it.

    ``resumable`` says whether the runner can continue a run (only then is ``--resume``
    suggested). With ``resume``, the config must equal the saved one, except for
    ``DISPLAY_KEYS`` and the keys of ``may_raise`` (such as ``num_epochs``), which may grow.
    Raises ``WorkdirError`` naming the problem (and, for a changed config, the keys); writes
    nothing.
    """
    if workdir.exists() and not workdir.is_dir():
        raise WorkdirError(f"workdir {workdir} exists and is not a directory")
    if is_empty(workdir) or overwrite:
        return
    saved = workdir / "config.json"
    if resume:
        if not saved.exists():
            raise WorkdirError(f"--resume: {workdir} holds no config.json, so no run to resume")
        diff = config_differences(read_json(saved), config)
        refused = {
            k: (old, new)
            for k, (old, new) in diff.items()
            if not (
                k in may_raise
                and isinstance(old, int | float)
                and isinstance(new, int | float)
                and new >= old
            )
        }
        if refused:
            allowed = f" (only {', '.join(may_raise)} may be raised)" if may_raise else ""
            raise WorkdirError(
                f"--resume: the config differs from the one saved in {saved}: "
                f"{_describe_differences(refused)}. Resume with the same config and "
                f"overrides{allowed}, or choose another workdir"
            )
        return
    raise WorkdirError(
        f"workdir {workdir} already holds results; choose another workdir, pass --overwrite "
        "to replace them (the old results are removed only after the new run succeeds)"
        + (", or --resume to continue it" if resumable and saved.exists() else "")
    )


@contextlib.contextmanager
def staged(workdir: Path) -> Iterator[Path]:
    """Yield a fresh staging folder; on success it replaces ``workdir``, on failure it vanishes.

    The previous content of ``workdir`` (if any) is deleted only after the new one is in place.
    """
    stage = new_stage(workdir)
    try:
        yield stage
    except BaseException:
        discard(stage)
        raise
    commit_stage(stage, workdir)


def new_stage(workdir: Path) -> Path:
    """A fresh, empty staging folder beside ``workdir`` (``.<name>.partial-*``)."""
    workdir = Path(workdir).resolve()
    workdir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{workdir.name}.partial-", dir=workdir.parent))
    try:
        os.chmod(stage, 0o777 & ~_umask())  # mkdtemp makes it 0700; it becomes the workdir
    except BaseException:
        discard(stage)
        raise
    return stage


def commit_stage(stage: Path, workdir: Path) -> None:
    """Put the staging folder ``stage`` in place of ``workdir``; the old one is deleted after."""
    workdir = Path(workdir).resolve()
    old = None
    if workdir.exists():
        old = _unused(
            workdir.with_name(f".{workdir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
        )
        os.replace(workdir, old)
    try:
        os.replace(stage, workdir)
    except BaseException:
        if old is not None:
            os.replace(old, workdir)
        discard(stage)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _unused(path: Path) -> Path:
    candidate, n = path, 1
    while candidate.exists():
        candidate, n = path.with_name(f"{path.name}-{n}"), n + 1
    return candidate


def set_aside(workdir: Path) -> Path:
    """Move an existing workdir aside (for ``--overwrite`` of a resumable run); returns the path.

    The caller removes it once the new run has succeeded (:func:`discard`), or puts it back with
    :func:`put_back` if the new run failed before its first checkpoint.
    """
    aside = _unused(workdir.with_name(f"{workdir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"))
    os.replace(workdir, aside)
    return aside


def discard(path: Path) -> None:
    """Remove a set-aside workdir or a staging folder."""
    shutil.rmtree(path, ignore_errors=True)


def put_back(aside: Path, workdir: Path) -> None:
    """Remove what a failed run wrote into ``workdir`` and move the set-aside copy back."""
    if workdir.exists():
        shutil.rmtree(workdir)
    os.replace(aside, workdir)


def clear(workdir: Path, *, existed: bool) -> None:
    """Undo a failed run in a workdir that was empty (``existed``) or absent before it."""
    if not workdir.exists():
        return
    if not existed:
        shutil.rmtree(workdir)
        return
    for child in workdir.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
