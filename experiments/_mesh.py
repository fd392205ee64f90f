"""The device mesh every runner places its work on (issue 15).

Every config carries a ``mesh`` block, added by :func:`experiments._config.load_config` when the
config file has none:

* ``mesh.devices``: how many devices the runner spreads over, ``0`` (the default) for all of them:
  every device of every process when ``jax.distributed`` joined several processes, else every
  local device. ``--config.mesh.devices=1`` is the single-device run.

The mesh has one axis, :data:`AXIS`. What a runner lays along it (samples, seeds, the batch) is
the runner's choice; its results do not depend on the number of devices (bitwise where the
reduction order allows, else within float32 rounding, and tested), which is why the ``mesh``
block is left out when a saved run's config is compared with a new one (``_workdir``): a run may
resume on another number of devices.

Only process 0 writes results, figures and checkpoints (:func:`is_writer`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import ml_collections

if TYPE_CHECKING:  # jax is imported where it is used: the config system loads without it
    from jax.sharding import Mesh, NamedSharding

AXIS = "devices"
"""The name of the mesh's one axis."""

DEFAULTS: dict[str, Any] = {"devices": 0}
"""The ``mesh`` block a config gets when its file sets none."""


class MeshError(ValueError):
    """A ``mesh`` setting that the devices present cannot satisfy."""


def add_defaults(config: ml_collections.ConfigDict) -> None:
    """Give ``config`` the ``mesh`` block (:data:`DEFAULTS`) where it has none, in place."""
    with config.unlocked():
        if "mesh" not in config:
            config.mesh = ml_collections.ConfigDict(dict(DEFAULTS))
        else:
            for key, value in DEFAULTS.items():
                if key not in config.mesh:
                    config.mesh[key] = value


def make_mesh(config: ml_collections.ConfigDict | None = None, devices: int | None = None) -> Mesh:
    """The one-axis mesh of ``config.mesh.devices`` devices (``devices`` overrides it).

    ``0`` or ``None`` means every device (``jax.devices()``: all processes' devices under
    ``jax.distributed``). Raises :class:`MeshError` naming ``mesh.devices`` when more devices are
    asked for than exist, or a negative number.
    """
    import jax
    import numpy as np
    from jax.sharding import Mesh

    if devices is None:
        devices = int(config.mesh.devices) if config is not None and "mesh" in config else 0
    available = jax.devices()
    if devices < 0:
        raise MeshError(f"mesh.devices must be >= 0 (0: every device), got {devices}")
    if devices > len(available):
        raise MeshError(
            f"mesh.devices={devices} but only {len(available)} device(s) are present "
            f"({available[0].platform}); set mesh.devices=0 to use every device"
        )
    chosen = available if devices == 0 else available[:devices]
    return Mesh(np.asarray(chosen), (AXIS,))


def sharded(mesh: Mesh) -> NamedSharding:
    """Leading axis split over the mesh's devices, the rest of each array whole."""
    from jax.sharding import NamedSharding, PartitionSpec

    return NamedSharding(mesh, PartitionSpec(AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    from jax.sharding import NamedSharding, PartitionSpec

    return NamedSharding(mesh, PartitionSpec())


def check_divisible(n: int, mesh: Mesh, what: str) -> None:
    """Raise :class:`MeshError` unless ``n`` (``what``: "the batch size 100") splits evenly."""
    size = mesh.devices.size
    if n % size:
        raise MeshError(
            f"{what} = {n} does not split over {size} devices; choose a multiple of {size} "
            "or set mesh.devices to a divisor of it"
        )


def is_writer() -> bool:
    """Whether this process writes results, figures and checkpoints: process 0 only."""
    import jax

    return jax.process_index() == 0


def put(tree: Any, sharding: Any) -> Any:
    """``jax.device_put(tree, sharding)`` that also works on a mesh spanning several processes.

    ``sharding``: one sharding for every leaf, or a tree of shardings that is a prefix of
    ``tree``. Every process passes the same values (the SPMD program). ``jax.device_put`` of a
    PRNG key array (``jax.random.key``) onto devices of other processes raises; such a leaf is
    placed as its raw key data (``jax.random.key_data``) and wrapped again, which is the same
    array. Single-process, the result equals ``jax.device_put``'s.
    """
    import jax
    from jax.sharding import Sharding

    def one(x: Any, s: Sharding) -> Any:
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            data = jax.device_put(jax.random.key_data(x), s)
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        return jax.device_put(x, s)

    return jax.tree.map(
        lambda s, sub: jax.tree.map(lambda x: one(x, s), sub),
        sharding,
        tree,
        is_leaf=lambda s: isinstance(s, Sharding),
    )


def seed_sharding(mesh: Mesh, num_seeds: int) -> NamedSharding:
    """How arrays with a leading seed axis ``[S, ...]`` lie on ``mesh``: split over its devices
    when ``num_seeds`` is a multiple of the mesh's size (each device trains its own seeds, no
    communication), else replicated (every device runs every seed)."""
    if num_seeds % mesh.devices.size:
        return replicated(mesh)
    return sharded(mesh)


def to_host(x: Any) -> Any:
    """The whole value of ``x`` as a NumPy array, on every process.

    An array spread over several processes' devices and not replicated on each (a seed-sharded
    state under ``jax.distributed``) is gathered from every process first; anything else is
    read from this process's copy (``np.asarray``)."""
    import jax
    import numpy as np

    if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def seed_layout(config: ml_collections.ConfigDict) -> NamedSharding:
    """The layout of the run's seed axis on its mesh (:func:`seed_sharding` of
    ``config.num_seeds`` on :func:`make_mesh`; ``.mesh`` is the mesh); says on stderr when the
    seeds do not split over several devices."""
    import sys

    mesh = make_mesh(config)
    seeds = seed_sharding(mesh, config.num_seeds)
    if mesh.devices.size > 1 and seeds.is_fully_replicated:
        print(
            f"note: {config.num_seeds} seeds do not split over {mesh.devices.size} devices: "
            "every device trains every seed (choose num_seeds a multiple of the device count, "
            "or mesh.devices a divisor of num_seeds, to spread them)",
            file=sys.stderr,
        )
    return seeds
