"""The variance runner on 8 devices gives the 1-device results, its chunks really sharded.

One subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (this pytest process
keeps its one device) runs, on a mesh of 8 devices and on ``mesh.devices=1``:

* the runner itself (``experiments.variance.run``, a tiny Fig 2: ``score_function+optimal`` and
  ``pathwise`` at 4 values of k, 6000 samples in 12 chunks of 500: one launch, the ``+optimal``
  baseline averaged in the program after gathering the per-chunk baselines);
* ``monte_carlo.mc_statistics`` over the same 12 chunks in 3 launches of 4 (a first pass for the
  baseline, then the estimators; launches merged on the host);

and records, from inside the runner (``monte_carlo._to_host``, where every launch's output
arrives before it is gathered), the sharding of the per-chunk outputs.

Tolerance (the 8-device program is partitioned by XLA's SPMD pipeline and fused differently
from the 1-device one, so float32 results may differ in the last bits; observed: a few 1e-7
relative, while 2 and 8 devices agree bit for bit). Per chunk of n = 500 samples, with
u = 2^-24: two float32 evaluations of a sum of n terms in different orders differ by at most
2(n - 1) u sum|terms|, and the per-sample estimates themselves by a few u |g| (contractions into
FMAs, and for ``+optimal`` a baseline that is one more such average). With T = 4 n u and
s^2 = mean^2 + var the second moment of the estimates: |d mean| <= T s, and the sums of squares
(hence the variance, merged over chunks in float64) |d var| <= 3 T s^2 (reordering, plus the
perturbed mean and estimates entering each squared deviation: 2 |g - mean| T s summed). The
standard error comes from sums of h and h^2 (``monte_carlo.combine``): relative error at most
4 T (s^2 / var) (1 + 3 var^2 / (N se^2)). A wrong chunk, key or sample count changes these
numbers by about sqrt(2 / 6000) = 2%, 50 times the tolerance.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CHUNK = 500
T = 4 * CHUNK * 2.0**-24

_CHILD = r"""
import json, sys, tempfile
import jax
import numpy as np

import experiments
from experiments import _mesh, variance
from experiments.variance import monte_carlo
from experiments.variance.costs import COSTS, active_terms
from experiments.variance.problems.gaussian import PROBLEM

assert len(jax.devices()) == 8, jax.devices()
assert jax.config.jax_threefry_partitionable
monte_carlo.STEP_ELEMENTS = 2**11  # 6000 samples at 4 rows: 12 chunks of 500

seen = []
to_host = monte_carlo._to_host


def spy(tree, mesh, n):
    leaf = jax.tree.leaves(tree)[0]
    seen.append({
        "mesh": 1 if mesh is None else int(mesh.devices.size),
        "spec": str(getattr(leaf.sharding, "spec", None)),
        "split": getattr(leaf.sharding, "spec", None) == jax.sharding.PartitionSpec(_mesh.AXIS),
        "replicated": bool(leaf.sharding.is_fully_replicated),
        "shape": list(leaf.shape),
        "devices": sorted(int(s.device.id) for s in leaf.addressable_shards),
        "shard_rows": sorted({int(s.data.shape[0]) for s in leaf.addressable_shards}),
        "real": int(n),
    })
    return to_host(tree, mesh, n)


monte_carlo._to_host = spy
SPECS = ("score_function+optimal", "pathwise")
out = {"runner": {}, "streamed": {}}
for devices in (8, 1):
    config = experiments.load_config("fig2")
    experiments.apply_overrides(config, [
        f"estimators={SPECS!r}", "grid.quadratic.num=4", "mc_every=1", "num_samples=6000",
        "progress=false", f"mesh.devices={devices}",
    ])
    with tempfile.TemporaryDirectory() as workdir:
        out["runner"][devices] = variance.run(config, workdir)["points"]

    mesh = _mesh.make_mesh(devices=devices)
    plan = monte_carlo.plan(6000, 1, 1, step=2**9, launch_elements=5)
    assert (plan.size, plan.num_chunks, plan.launch, plan.num_launches) == (500, 12, 4, 3), plan
    stats = monte_carlo.mc_statistics(
        jax.random.key(7), np.asarray([COSTS["quadratic"].weight_vector()], np.float32),
        np.zeros(1, np.float32), np.zeros(1, np.float32),
        {"loc": np.float32(1.0), "scale": np.float32(1.0)}, problem=PROBLEM, specs=SPECS,
        terms=active_terms(["quadratic"]), dim=1, plan=plan, mesh=mesh,
    )
    out["streamed"][devices] = {
        s: {p: [float(v[0]) for v in (*stats[s][p].variance(), *stats[s][p].gradient())]
            for p in stats[s]} for s in SPECS
    }
out["seen"] = seen
print("RESULT" + json.dumps(out))
"""


def _child() -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
    return json.loads(line[len("RESULT") :])


def _check_close(one: tuple, eight: tuple, n: int, what: str, t: float = T) -> None:
    """``(variance, se, gradient, gradient_se)`` on 8 devices against 1: the bounds above."""
    var, se, grad, grad_se = one
    s2 = var + grad**2
    assert abs(eight[0] - var) <= 3 * t * s2, (what, "variance", one, eight)
    assert abs(eight[2] - grad) <= t * np.sqrt(s2), (what, "gradient", one, eight)
    se_rtol = 4 * t * (s2 / var) * (1 + 3 * var**2 / (n * se**2))
    assert abs(eight[1] - se) <= se_rtol * se, (what, "se", one, eight)
    assert abs(eight[3] - grad_se) <= 3 * t * (s2 / var) * grad_se, (
        what,
        "gradient se",
        one,
        eight,
    )


def test_eight_devices_give_the_one_device_results_with_the_chunks_sharded():
    out = _child()
    # The runner: every point of the 8-device run is the 1-device one, within float32 rounding.
    one, eight = out["runner"]["1"], out["runner"]["8"]
    assert len(one) == len(eight) == 2 * 2 * 4
    for a, b in zip(one, eight, strict=True):
        assert (a["estimator"], a["parameter"], a["x"]) == (b["estimator"], b["parameter"], b["x"])
        assert a["exact_variance"] == b["exact_variance"]
        fields = ("mc_variance", "mc_se", "mc_gradient", "mc_gradient_se")
        _check_close(tuple(a[f] for f in fields), tuple(b[f] for f in fields), 6000, str(a))
    # Streamed in 3 launches (baseline pass, then estimators), on 8 devices and on 1.
    for spec, by_param in out["streamed"]["1"].items():
        for param, values in by_param.items():
            _check_close(tuple(values), tuple(out["streamed"]["8"][spec][param]), 6000, spec)

    # Sharding, seen inside the runner: on 8 devices every launch's per-chunk output has its
    # chunk axis split over the 8 devices, one block of chunks each (12 chunks padded to 16:
    # 2 per device; a launch of 4 padded to 8: 1 per device); on 1 device, one whole array.
    seen = out["seen"]
    eight_seen = [s for s in seen if s["mesh"] == 8]
    assert len(eight_seen) == 1 + 3 + 3  # runner; 3 baseline launches; 3 estimator launches
    for s in eight_seen:
        assert s["split"] and not s["replicated"], s  # PartitionSpec(AXIS) on the chunk axis
        assert s["devices"] == list(range(8)), s
        assert s["shard_rows"] == [s["shape"][0] // 8], s
    assert [s["real"] for s in eight_seen] == [12, 4, 4, 4, 4, 4, 4]
    assert [s["shape"][0] for s in eight_seen] == [16] + [8] * 6
    for s in (s for s in seen if s["mesh"] == 1):
        assert s["devices"] == [0] and s["shape"][0] == s["real"], s
