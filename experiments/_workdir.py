"""The one results layout, and how a run writes it without ever damaging an earlier run.

A workdir holds ``config.json`` (the resolved config), ``run_info.json`` (versions, backend,
wall time), the runner's raw results (JSON/CSV) and its figures (PNG and PDF).

One-shot runs are computed in a hidden staging folder beside the workdir and moved into place
only when they succeed, so a crash or Ctrl-C leaves no half-written workdir and never touches
an existing one. Resumable runs (training with checkpoints) write into the workdir itself,
every file atomically (write to a temporary name, then ``os.replace``).
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


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
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
    """Save a matplotlib figure as ``stem.png`` and ``stem.pdf``, atomically; returns the paths."""
    import io

    paths = []
    for ext, kwargs in (("png", {"dpi": 150}), ("pdf", {})):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, bbox_inches="tight", **kwargs)
        path = Path(f"{stem}.{ext}")
        atomic_write_bytes(path, buf.getvalue())
        paths.append(path)
    return paths


def is_empty(workdir: Path) -> bool:
    return not workdir.exists() or (workdir.is_dir() and not any(workdir.iterdir()))


def check_workdir(workdir: Path, config: dict, *, overwrite: bool, resume: bool) -> None:
    """Refuse a workdir that holds another run, unless told to overwrite or to resume it.

    Raises ``WorkdirError`` naming the problem; writes nothing.
    """
    if workdir.exists() and not workdir.is_dir():
        raise WorkdirError(f"workdir {workdir} exists and is not a directory")
    if is_empty(workdir) or overwrite:
        return
    saved = workdir / "config.json"
    if resume:
        if not saved.exists():
            raise WorkdirError(f"--resume: {workdir} holds no config.json, so no run to resume")
        if read_json(saved) != config:
            raise WorkdirError(
                f"--resume: the config differs from the one saved in {saved}; resume with the "
                "same config and overrides, or choose another workdir"
            )
        return
    raise WorkdirError(
        f"workdir {workdir} already holds results; choose another workdir, pass --overwrite "
        "to replace them (the old results are removed only after the new run succeeds)"
        + (", or --resume to continue it" if saved.exists() else "")
    )


@contextlib.contextmanager
def staged(workdir: Path) -> Iterator[Path]:
    """Yield a fresh staging folder; on success it replaces ``workdir``, on failure it vanishes.

    The previous content of ``workdir`` (if any) is deleted only after the new one is in place.
    """
    workdir = Path(workdir).resolve()
    workdir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{workdir.name}.partial-", dir=workdir.parent))
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    old = None
    if workdir.exists():
        old = workdir.with_name(f".{workdir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(workdir, old)
    os.replace(stage, workdir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def set_aside(workdir: Path) -> Path:
    """Move an existing workdir aside (for ``--overwrite`` of a resumable run); returns the path."""
    aside = workdir.with_name(f"{workdir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(workdir, aside)
    return aside
