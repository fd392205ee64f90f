"""Several processes, one program: ``jax.distributed`` for the command line (issue 15).

``python -m experiments run`` and ``reproduce`` join a multi-process JAX job when one is named:

* explicitly, by ``--coordinator-address HOST:PORT --num-processes N --process-id I`` on every
  process (or ``$JAX_COORDINATOR_ADDRESS``, ``$JAX_NUM_PROCESSES``, ``$JAX_PROCESS_ID``), the
  coordinator being process 0's host and a free port there;
* else by JAX's own detection of a cluster (SLURM under ``srun``, Open MPI under ``mpirun``,
  Cloud TPU pods, ...): ``jax.distributed.initialize()`` with what it detects.

A detected job of one process, no job at all, ``--no-distributed`` or ``$MCGRAD_DISTRIBUTED=0``
leaves the run a plain single-process one: nothing here is called and nothing changes.

In a multi-process job every process runs the same program over :func:`jax.devices` (every
process's devices: the ``mesh`` of :mod:`experiments._mesh`). Process 0 alone writes the
workdir (results, figures, ``config.json``, ``run_info.json``); every other process runs the
runner in a private folder of its own (:func:`private_workdir`), removed when it finishes, so
runners need no change. Decisions about the workdir (refuse, overwrite, resume, skip) are
taken by process 0 and sent to all (:func:`agree`), before process 0 writes anything.

Checkpoints (orbax, :mod:`experiments.vae.checkpoint`) are saved and restored by every process
together in the REAL workdir's ``checkpoints/`` (orbax's multi-process protocol: process 0
writes the replicated arrays and the metadata, barriers keep the processes in step):
:func:`shared_dir` maps a private folder's ``checkpoints/`` there. Runs that checkpoint
(the VAE and binary-VAE training) therefore need the workdir on a file system that every host
sees under the same path; one-shot runs (the variance figures, the BLR) do not.

On the CPU the processes' collectives go through gloo (``jax_cpu_collectives_implementation``,
JAX's default; set here only where it was unset).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

COORDINATOR_ENV = "JAX_COORDINATOR_ADDRESS"
NUM_PROCESSES_ENV = "JAX_NUM_PROCESSES"
PROCESS_ID_ENV = "JAX_PROCESS_ID"
OFF_ENV = "MCGRAD_DISTRIBUTED"
"""``$MCGRAD_DISTRIBUTED=0`` (or off/false/no): no cluster detection, as ``--no-distributed``."""
_OFF = frozenset({"0", "off", "false", "no", "none"})


class DistributedError(ValueError):
    """A multi-process setting that cannot work (some of the three flags but not all, say)."""


@dataclasses.dataclass(frozen=True)
class Cluster:
    """What ``jax.distributed.initialize`` is called with, and where it came from."""

    coordinator_address: str
    num_processes: int
    process_id: int
    local_device_ids: tuple[int, ...] | None = None
    source: str = "command line"


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or not value.strip():
        return None
    try:
        return int(value)
    except ValueError:
        raise DistributedError(f"${name} must be an integer, got {value!r}") from None


def _detected(address: str | None, n: int | None, pid: int | None) -> Cluster | None:
    """JAX's cluster auto-detection (SLURM, Open MPI, TPU pods, ...) filling what is unset."""
    try:
        from jax._src import clusters
    except ImportError:  # pragma: no cover - a JAX that moved it: explicit flags still work
        return None
    with warnings.catch_warnings():  # a Kubernetes pod without the kubernetes package: no job
        warnings.simplefilter("ignore")
        env = next(
            (
                e
                for e in clusters.ClusterEnv._cluster_types
                if not e.opt_in_only_method and e.is_env_present()
            ),
            None,
        )
        if env is None:
            return None
        address, n, pid, local = clusters.ClusterEnv.auto_detect_unset_distributed_params(
            address, n, pid, None, None, 300
        )
    if address is None or n is None or pid is None:
        return None
    return Cluster(
        str(address), int(n), int(pid), None if local is None else tuple(local), env.__name__
    )


def detect(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    enabled: bool = True,
) -> Cluster | None:
    """The multi-process job this process belongs to, or ``None`` for a single-process run.

    Command-line values win, then ``$JAX_COORDINATOR_ADDRESS`` / ``$JAX_NUM_PROCESSES`` /
    ``$JAX_PROCESS_ID``, then JAX's cluster detection (skipped when ``enabled`` is false or
    ``$MCGRAD_DISTRIBUTED=0``). A job of one process is ``None``. Raises
    :class:`DistributedError` when some of the three are given and the rest cannot be found.
    """
    address = coordinator_address or os.environ.get(COORDINATOR_ENV) or None
    n = num_processes if num_processes is not None else _env_int(NUM_PROCESSES_ENV)
    pid = process_id if process_id is not None else _env_int(PROCESS_ID_ENV)
    if os.environ.get(OFF_ENV, "").strip().lower() in _OFF:
        enabled = False
    given = {"--coordinator-address": address, "--num-processes": n, "--process-id": pid}
    cluster = None
    if None not in given.values():
        cluster = Cluster(str(address), int(n), int(pid))  # type: ignore[arg-type]
    elif enabled:
        cluster = _detected(address, n, pid)
    if cluster is None and any(v is not None for v in (n, pid)):
        missing = [k for k, v in given.items() if v is None]
        raise DistributedError(
            f"a multi-process run needs {', '.join(given)}; {', '.join(missing)} "
            "not given (nor found in the environment or a detected cluster)"
        )
    if cluster is None or cluster.num_processes == 1:
        return None
    if not 0 <= cluster.process_id < cluster.num_processes:
        raise DistributedError(
            f"--process-id must be in 0..{cluster.num_processes - 1}, got {cluster.process_id}"
        )
    return cluster


def initialize(cluster: Cluster) -> None:
    """``jax.distributed.initialize`` for ``cluster``; call before any JAX computation.

    Sets the CPU's cross-process collectives to gloo when they are unset (JAX's default)."""
    import jax

    if jax.config.jax_cpu_collectives_implementation is None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    local = cluster.local_device_ids
    jax.distributed.initialize(
        coordinator_address=cluster.coordinator_address,
        num_processes=cluster.num_processes,
        process_id=cluster.process_id,
        local_device_ids=None if local is None else list(local),
    )


def is_multiprocess() -> bool:
    """Whether ``jax.distributed`` joined this process to others (without starting JAX's
    backend when it did not)."""
    import jax

    return jax.distributed.is_initialized() and jax.process_count() > 1


def process_index() -> int:
    """This process's index (0 outside a multi-process job)."""
    import jax

    return jax.process_index() if jax.distributed.is_initialized() else 0


def is_writer() -> bool:
    """Whether this process writes the workdir: process 0, or the one process of a plain run."""
    return process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process got here (a no-op in a single-process run)."""
    if is_multiprocess():
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"mcgrad:{name}")


def _broadcast_bytes(data: bytes) -> bytes:
    """Process 0's ``data`` on every process (the others' ``data`` is ignored)."""
    import numpy as np
    from jax.experimental import multihost_utils

    source = process_index() == 0
    n = int(multihost_utils.broadcast_one_to_all(np.asarray(len(data) if source else 0, np.int32)))
    size = 1 << max(n - 1, 0).bit_length()  # padded to a power of two: few programs compiled
    buf = np.zeros(size, np.uint8)
    if source:
        buf[:n] = np.frombuffer(data, np.uint8)
    out = np.asarray(multihost_utils.broadcast_one_to_all(buf))
    return out[:n].tobytes()


def agree(fn: Callable[[], T], errors: tuple[type[Exception], ...] = ()) -> T:
    """``fn()`` as process 0 computes it, on every process: one decision for all.

    Only process 0 calls ``fn``; its value (JSON-serialisable) is sent to the others. If it
    raises, every process raises: the same class when it is one of ``errors`` (the same
    message), else ``RuntimeError`` naming it; process 0 raises its own exception. The call
    returns on no process before process 0's ``fn`` has finished, so process 0 may write the
    workdir after it while the others have finished reading it before. Single-process: ``fn()``.
    """
    if not is_multiprocess():
        return fn()
    error: BaseException | None = None
    payload: dict[str, Any] = {}
    if process_index() == 0:
        try:
            payload = {"value": fn()}
        except Exception as e:  # sent to the others, then raised here
            error = e
            payload = {"error": type(e).__name__, "message": str(e)}
    received = json.loads(_broadcast_bytes(json.dumps(payload).encode()))
    if error is not None:
        raise error
    if "error" in received:
        by_name = {cls.__name__: cls for cls in errors}
        cls = by_name.get(received["error"])
        if cls is not None:
            raise cls(received["message"])
        raise RuntimeError(f"process 0 failed: {received['error']}: {received['message']}")
    return received["value"]


# (private folder, real workdir) of the runs this process is in, innermost last.
_PRIVATE: list[tuple[Path, Path]] = []
CHECKPOINTS = "checkpoints"


@contextlib.contextmanager
def private_workdir(workdir: Path, *, copy: bool = False) -> Iterator[Path]:
    """A throwaway folder standing in for ``workdir`` on a process that does not write it.

    With ``copy``, it starts as a copy of ``workdir`` (a run being resumed reads its files),
    every ``checkpoints/`` folder in it a symbolic link to the real one (shared by all
    processes, :func:`shared_dir`). Removed on leaving (the links, not what they point to).
    """
    workdir = Path(workdir).resolve()
    root = Path(tempfile.mkdtemp(prefix=f"mcgrad-process{process_index()}-")).resolve()
    private = root / (workdir.name or "workdir")
    try:
        if copy and workdir.is_dir():
            shutil.copytree(
                workdir, private, symlinks=True, ignore=shutil.ignore_patterns(CHECKPOINTS)
            )
            for real in sorted(workdir.glob(f"**/{CHECKPOINTS}")):
                if real.is_dir():
                    link = private / real.relative_to(workdir)
                    link.parent.mkdir(parents=True, exist_ok=True)
                    link.symlink_to(real, target_is_directory=True)
        else:
            private.mkdir()
        _PRIVATE.append((private, workdir))
        try:
            yield private
        finally:
            _PRIVATE.remove((private, workdir))
    finally:
        shutil.rmtree(root, ignore_errors=True)  # does not follow the links


def shared_dir(path: Path) -> Path:
    """The folder every process uses for ``path`` (a ``checkpoints/`` folder).

    ``path`` itself, except inside a :func:`private_workdir`: there the same place in the real
    workdir, and ``path`` becomes a symbolic link to it, so that the runner's own checks
    (``(workdir / "checkpoints").exists()``) see what process 0 sees.
    """
    path = Path(path).absolute()
    for private, real in reversed(_PRIVATE):
        if path == private or private in path.parents:
            target = real / path.relative_to(private)
            if not path.is_symlink() and not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.symlink_to(target, target_is_directory=True)
            return target
    return path


def shutdown() -> None:
    """Leave the multi-process job (every process waits for the others; no-op when none)."""
    import jax

    if jax.distributed.is_initialized():
        jax.distributed.shutdown()
