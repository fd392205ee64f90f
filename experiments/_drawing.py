"""Figures drawn in a second process while the next run computes (``reproduce``).

A runner draws its figures with :func:`draw` ``(plot, workdir)``: a plain call of ``plot``,
unless a :class:`Background` is active (:func:`background`, which ``python -m experiments
reproduce`` opens around several one-shot runs), where ``plot(workdir)`` is queued to one
worker process and the runner returns at once. The run's staging folder is then committed
later, by :meth:`Background.settle`, once its drawings are done, in the order the runs
finished computing: a run is never in place without its figures, and a failed drawing fails
its run as a failed in-process drawing would (staging folder removed, error raised).

Why: on the 2-core CPU, drawing Figures 2-7 (matplotlib, PNG and PDF) took 5.5 s of their
16 s warm ``reproduce``, one core's work while the other sat idle. The worker is started with
``spawn`` (never ``fork``: the parent runs JAX's threads) and imports matplotlib and the runners
while the first run computes. ``plot`` must be a module-level function that reads the workdir
alone (every runner's ``plot`` is: it redraws from saved results).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import importlib
import multiprocessing
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_ACTIVE: Background | None = None


def _ignore_interrupts() -> None:
    """Worker: Ctrl-C reaches the whole process group; the parent handles it (it cancels the
    queue and waits for the drawing in progress), so the worker does not print a traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _warm(modules: tuple[str, ...]) -> None:
    """Worker: import matplotlib's Agg backend and ``modules`` before the first drawing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401

    for name in modules:
        importlib.import_module(name)


def _draw_job(module: str, name: str, workdir: str) -> float:
    """Worker: ``module.name(workdir)``; returns the seconds it took."""
    start = time.perf_counter()
    getattr(importlib.import_module(module), name)(Path(workdir))
    return time.perf_counter() - start


@dataclass
class _Deferred:
    """A computed run waiting for its drawings before ``commit(draw_seconds)``."""

    drawings: list[Future]
    commit: Callable[[float], Any]
    discard: Callable[[], None]
    label: str


@dataclass
class Background:
    """One worker process drawing queued figures; runs committed once their drawings are done."""

    pool: ProcessPoolExecutor
    queued: dict[Path, list[Future]] = field(default_factory=dict)
    waiting: list[_Deferred] = field(default_factory=list)

    def submit(self, plot: Callable[[Path], Any], workdir: Path) -> None:
        """Queue ``plot(workdir)`` (``plot`` a module-level function) to the worker."""
        if "<" in plot.__qualname__:
            raise ValueError(f"{plot.__qualname__} is not a module-level function")
        future = self.pool.submit(_draw_job, plot.__module__, plot.__qualname__, str(workdir))
        self.queued.setdefault(Path(workdir).resolve(), []).append(future)

    def forget(self, workdir: Path) -> None:
        """Cancel the drawings queued for ``workdir`` (its run failed), and wait for one already
        running, so that it cannot write into the folder after the caller removed it."""
        running = [f for f in self.queued.pop(Path(workdir).resolve(), []) if not f.cancel()]
        concurrent.futures.wait(running)

    def defer(
        self,
        workdir: Path,
        commit: Callable[[float], Any],
        discard: Callable[[], None],
        label: str,
    ) -> bool:
        """If drawings of ``workdir`` are queued, hold ``commit`` until they are done (True);
        else leave the caller to commit now (False)."""
        drawings = self.queued.pop(Path(workdir).resolve(), [])
        if drawings:
            self.waiting.append(_Deferred(drawings, commit, discard, label))
        return bool(drawings)

    def settle(self, block: bool = False) -> list[str]:
        """Commit the waiting runs whose drawings are done, in order (all of them with
        ``block``); returns their labels. A failed drawing discards its run and raises."""
        done = []
        while self.waiting:
            if not block and not all(f.done() for f in self.waiting[0].drawings):
                break
            first = self.waiting.pop(0)
            try:  # a failed drawing raises here, a failed commit below: either way, discard
                first.commit(sum(f.result() for f in first.drawings))
            except BaseException:
                first.discard()
                raise
            done.append(first.label)
        return done

    def abandon(self) -> None:
        """Cancel the queued drawings and discard every run not yet committed."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        for deferred in self.waiting:
            deferred.discard()
        self.waiting.clear()


@contextlib.contextmanager
def background(modules: tuple[str, ...] = ()) -> Iterator[Background]:
    """Within: :func:`draw` queues to one worker process (importing ``modules`` first).

    On leaving normally, every waiting run is committed (:meth:`Background.settle`); on an
    error or an interrupt, queued drawings are cancelled and uncommitted runs discarded.
    """
    global _ACTIVE
    if _ACTIVE is not None:
        raise RuntimeError("background drawing is already active")
    pool = ProcessPoolExecutor(
        max_workers=1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_ignore_interrupts,
    )
    pool.submit(_warm, modules)
    _ACTIVE = active = Background(pool)
    try:
        yield active
        active.settle(block=True)
    except BaseException:
        active.abandon()
        raise
    finally:
        _ACTIVE = None
        pool.shutdown(wait=True)


def active() -> Background | None:
    """The background drawing in effect, if any."""
    return _ACTIVE


def draw(plot: Callable[[Path], Any], workdir: Path) -> None:
    """``plot(workdir)`` now, or queued to the background worker when one is active."""
    if _ACTIVE is None:
        plot(workdir)
    else:
        _ACTIVE.submit(plot, workdir)
