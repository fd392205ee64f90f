"""Orbax checkpoints of the VAE's training state, saved entry by entry under their names.

A checkpoint holds ``{"state": {name: array}, "epoch": []}``: every leaf of the training state
under its key path joined by ``/`` (``"params/encoder/layers/0/kernel/value"``,
``"opt/0/count"``, ``"step"``; see :func:`flatten`), and the last finished epoch (0-based).

Restoring matches entries by NAME against a template (the initial state of the code that
resumes), so the state may grow:

- an entry the template has and the checkpoint lacks (state added after the run was written)
  is taken from the template, that is from its initial value, and listed in
  :attr:`Restored.missing`; the runner prints that list, since such a resume is no longer the
  bit-for-bit continuation of the old run for that entry;
- an entry the checkpoint has and the template lacks (state renamed or removed since), or an
  entry whose shape or dtype differs, raises :class:`CheckpointMismatch` naming it: the state
  it held would be dropped or misread.

In a multi-process run (``jax.distributed``, :mod:`experiments._distributed`) every process
calls :func:`manager`, :func:`save` and :func:`restore` alike, on the same folder: the real
workdir's ``checkpoints/`` (a process that does not write the workdir runs in a private copy of
it, and :func:`manager` maps its ``checkpoints/`` back to the shared one). Orbax's multi-process
protocol does the rest (``MultiprocessingOptions(primary_host=0)``, its default): process 0
creates the folders and writes the arrays (host copies of the state, which every process holds
whole) and the metadata, the others wait at its barriers; every process reads the restored
arrays. The workdir must lie on a file system every host sees under the same path.

Checkpoints written before this module (``{"leaves": {"0000": ...}, "epoch"}``, the state's
leaves by position) are still read when the template has as many leaves with the same shapes
and dtypes, in order (the state they were written from); otherwise :class:`CheckpointMismatch`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._mesh import to_host as _host  # gathers a state split across processes

PyTree = Any

DIRECTORY = "checkpoints"
MAX_TO_KEEP = 2


class CheckpointMismatch(ValueError):
    """A checkpoint's entries do not fit the state of the code that restores it."""


@dataclasses.dataclass(frozen=True)
class Restored:
    """A restored checkpoint: the state, the last finished epoch (0-based), and the names of
    the template's entries the checkpoint did not hold (taken from the template)."""

    state: PyTree
    epoch: int
    missing: tuple[str, ...]


def _name(path: tuple[Any, ...]) -> str:
    parts = []
    for k in path:
        if isinstance(k, jax.tree_util.DictKey):
            parts.append(str(k.key))
        elif isinstance(k, jax.tree_util.SequenceKey):
            parts.append(str(k.idx))
        elif isinstance(k, jax.tree_util.GetAttrKey):
            parts.append(k.name)
        elif isinstance(k, jax.tree_util.FlattenedIndexKey):
            parts.append(str(k.key))
        else:  # pragma: no cover - a key type jax adds later
            parts.append(str(k))
    return "/".join(parts)


def flatten(state: PyTree) -> dict[str, Any]:
    """``{name: leaf}`` in the state's leaf order, ``name`` its key path joined by ``/``.

    Raises ``ValueError`` if two leaves get the same name (a dict key containing ``/``).
    """
    pairs = jax.tree_util.tree_flatten_with_path(state)[0]
    out = {_name(path): leaf for path, leaf in pairs}
    if len(out) != len(pairs):
        names = [_name(p) for p, _ in pairs]
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"state entries share a checkpoint name: {twice}")
    return out


def manager(workdir: Path):
    """The orbax ``CheckpointManager`` of ``<workdir>/checkpoints`` (synchronous, keeps 2).

    In a multi-process run every process calls it (orbax synchronises them); a private
    workdir's ``checkpoints/`` is the real workdir's (:func:`experiments._distributed.shared_dir`).
    """
    import orbax.checkpoint as ocp

    from .. import _distributed

    return ocp.CheckpointManager(
        _distributed.shared_dir(Path(workdir) / DIRECTORY).resolve(),
        item_handlers=ocp.StandardCheckpointHandler(),  # so a new process reads the metadata
        options=ocp.CheckpointManagerOptions(
            max_to_keep=MAX_TO_KEEP,
            create=True,
            enable_async_checkpointing=False,
            multiprocessing_options=ocp.options.MultiprocessingOptions(primary_host=0),
        ),
    )


def latest_step(workdir: Path) -> int | None:
    """The training step of the newest checkpoint in ``workdir``, or ``None`` if there is none."""
    if not (Path(workdir) / DIRECTORY).exists():
        return None
    return manager(workdir).latest_step()


def save(mgr, state: PyTree, epoch: int) -> None:
    """Save ``state`` (a dict with a scalar ``"step"``) after epoch ``epoch`` (0-based) under
    its step; nothing is written if the newest checkpoint is already of that step."""
    import orbax.checkpoint as ocp

    step = int(state["step"])
    if mgr.latest_step() == step:
        return
    tree = {
        "state": {k: _host(v) for k, v in flatten(state).items()},
        "epoch": np.asarray(epoch, np.int64),
    }
    mgr.save(step, args=ocp.args.StandardSave(tree))
    mgr.wait_until_finished()


def _spec(leaf: Any) -> tuple[tuple[int, ...], np.dtype]:
    return tuple(np.shape(leaf)), np.dtype(getattr(leaf, "dtype", np.asarray(leaf).dtype))


def _mismatches(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """The problems that stop the by-name checkpoint ``saved`` (metadata) restoring ``wanted``."""
    specs = {n: (tuple(m.shape), np.dtype(m.dtype)) for n, m in saved.items()}
    problems = [
        f"{n!r} is in the checkpoint but not in this code's state (renamed or removed)"
        for n in specs
        if n not in wanted
    ]
    problems += [
        f"{n!r} has shape {specs[n][0]} and dtype {specs[n][1]} in the checkpoint, "
        f"{_spec(v)[0]} and {_spec(v)[1]} here"
        for n, v in wanted.items()
        if n in specs and specs[n] != _spec(v)
    ]
    return problems


def _positional_fits(saved: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Whether the old by-position checkpoint ``saved`` (metadata) has ``wanted``'s leaves."""
    if len(saved) != len(wanted):
        return False
    return all(
        (tuple(saved[f"{i:04d}"].shape), np.dtype(saved[f"{i:04d}"].dtype)) == _spec(v)
        for i, v in enumerate(wanted.values())
    )


def restore(mgr, template: PyTree) -> Restored | None:
    """The newest checkpoint matched by name against ``template`` (module docstring), or
    ``None`` if there is none. Raises :class:`CheckpointMismatch` naming every entry that
    cannot be restored (renamed or removed, other shape or dtype)."""
    import orbax.checkpoint as ocp

    step = mgr.latest_step()
    if step is None:
        return None
    where = Path(mgr.directory) / str(step)
    saved = mgr.item_metadata(step).tree
    wanted = flatten(template)
    if "state" in saved:
        problems = _mismatches(saved["state"], wanted)
        if problems:
            raise CheckpointMismatch(
                f"{where} does not fit this code's training state: " + "; ".join(problems)
            )
        tree = mgr.restore(step, args=ocp.args.StandardRestore())
        values = tree["state"]
    else:  # written before the state was saved by name
        if not _positional_fits(saved["leaves"], wanted):
            raise CheckpointMismatch(
                f"{where} was written by an earlier version that saved the state by position; "
                f"its {len(saved['leaves'])} entries do not match this code's {len(wanted)} "
                "(or their shapes differ): resume it with the version that wrote it, or start "
                "a new run"
            )
        tree = mgr.restore(step, args=ocp.args.StandardRestore())
        values = {n: tree["leaves"][f"{i:04d}"] for i, n in enumerate(wanted)}
    missing = tuple(n for n in wanted if n not in values)
    leaves = [jnp.asarray(values[n]) if n in values else wanted[n] for n in wanted]
    state = jax.tree.unflatten(jax.tree.structure(template), leaves)
    return Restored(state=state, epoch=int(tree["epoch"]), missing=missing)
