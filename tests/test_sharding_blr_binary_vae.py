"""The BLR and binary-VAE runners on 8 devices: the seeds really sharded, and the results those
of the 1-device run (``mesh.devices=1``) within float32 rounding.

One subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (this process keeps
its one device) runs each runner at a tiny size twice, on every device and on one, and reports
the sharding of every seed-axis array the runners bring to the host. Both runs compile at LLVM
``-O0`` (the same flags for both: what is tested is the placement, not the code generator), to
keep the test near 25 s of CPU.

Why not bitwise: every seed's draws come from its own key (the same bits on any number of
devices), so the two runs compute the same float32 expressions; but XLA compiles a program
vmapped over ``S / 8`` seeds per device with other fusions and another association of its sums
than one vmapped over ``S`` (two 1-device programs over different numbers of seeds differ the
same way), so sums may be reassociated. A reassociated float32 sum of ``n`` terms moves by at
most ``(n - 1) u sum |x_i|`` (Higham, *Accuracy and Stability*, 4.2; ``u = 2^-24``), which is
``(n - 1) u |sum x_i|`` for terms of one sign (log-likelihoods, a loss's pixels). The tolerance
is that bound, relative, for the largest sum behind any result: BLR, the ELBO over
``eval_samples x 569`` terms (5.4e-4); the binary VAE, the batch loss over ``batch_size x 64``
pixels (9.5e-5). Measured: at most 7e-6 relative (the variances, sums of squared deviations
after a mean), 2e-7 for the ELBOs and bounds. Seeds differ from one another by more than ten
times the tolerance (asserted), so a seed run with another's key, or the seeds mixed up, fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

U = 2.0**-24  # float32 unit roundoff
NUM_SEEDS = 8
BLR_EVAL_SAMPLES = 16
BLR_RTOL = BLR_EVAL_SAMPLES * 569 * U  # the ELBO's sum: eval_samples x 569 data points
BVAE_BATCH = 25
BVAE_RTOL = BVAE_BATCH * 64 * U  # the batch loss's sum: batch_size x 64 pixels (8 x 8 digits)

SCRIPT = r"""
import json, sys
from pathlib import Path

import jax
import numpy as np
import pytest

import experiments
from experiments import _cli, _config, _mesh, blr
from experiments import binary_vae as bvae

out = Path(sys.argv[1])
num_seeds, eval_samples, batch = (int(a) for a in sys.argv[2:5])
seen = []  # (runner, devices, shape, spec, number of shards, shard shape) of seed-axis arrays


def recorder(name, host):
    def wrapped(array):
        seen.append((name, out_devices[0], list(array.shape), str(array.sharding.spec),
                     len(array.addressable_shards), list(array.addressable_shards[0].data.shape)))
        return host(array)
    return wrapped


blr._to_host = recorder("blr", blr._to_host)
bvae._host = recorder("binary_vae", bvae._host)
out_devices = [0]
report = {"device_count": jax.device_count()}
for devices in (0, 1):
    out_devices[0] = devices
    config = experiments.load_config("fig9")
    experiments.apply_overrides(config, [
        "steps=4", "eval_every=2", f"num_seeds={num_seeds}", f"eval_samples={eval_samples}",
        "num_samples=8", "variance_samples=8", "variants=('pathwise',)", "figures=()",
        "progress=false", f"mesh.devices={devices}",
    ])
    _cli.run_experiment(config, out / f"blr{devices}")
    c = _config.load_config("binary_vae_digits")
    c.models = ("linear",)
    c.estimators = ("disarm",)
    c.train_examples = 4 * batch
    c.batch_size = batch
    c.num_steps = 4  # one epoch
    c.num_seeds = num_seeds
    c.latent_dim = 8
    c.eval_examples = 50
    c.eval_num_samples = 1  # the bound program is then the ELBO's: compiled once
    c.train_elbo_examples = 100
    c.grad_var_epochs = (0,)
    c.grad_var_num_estimates = 3
    c.grad_var_run_estimates = 3
    c.grad_var_warmup_steps = 0
    c.progress = False
    c.figures = False
    c.mesh.devices = devices
    _cli.run_experiment(c, out / f"bvae{devices}")
report["seen"] = seen
# The rule when the seeds do not split: replicated (every device trains every seed).
mesh = _mesh.make_mesh(None)
report["split"] = [
    [not m.seed_sharding(mesh, n).is_fully_replicated for n in (5, 8, 16)]
    for m in (blr.train, bvae.train)
]
(out / "report.json").write_text(json.dumps(report))
"""


def _blr_results(workdir: Path) -> dict[str, np.ndarray]:
    with np.load(workdir / "results.npz") as z:
        return {k: z[k] for k in z.files if z[k].dtype.kind == "f"}


def _bvae_results(workdir: Path) -> dict[str, np.ndarray]:
    run = workdir / "linear" / "disarm"
    res = json.loads((run / "results.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    out = {k: np.asarray(res[k]) for k in ("train_elbo", "validation_bound", "test_bound")}
    for key in ("train_elbo", "per_eval_variance", "train_loss"):
        out[f"epochs/{key}"] = np.asarray([r[key] for r in rows if key in r])
    return out


def _assert_close(a: dict, b: dict, rtol: float, what: str) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=rtol, atol=0, err_msg=f"{what} {key}")


def test_blr_and_binary_vae_on_8_devices_equal_one_device(tmp_path):
    flags = [
        "--xla_force_host_platform_device_count=8",
        "--xla_backend_optimization_level=0",  # -O0 for both runs: compiling is most of the cost
        "--xla_llvm_disable_expensive_passes=true",
    ]
    env = dict(os.environ, XLA_FLAGS=" ".join(flags))
    args = [str(tmp_path), str(NUM_SEEDS), str(BLR_EVAL_SAMPLES), str(BVAE_BATCH)]
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, *args],
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["device_count"] == 8
    assert report["split"] == [[False, True, True]] * 2  # 5 seeds replicated, 8 and 16 split

    # Really sharded: on 8 devices every seed-axis result lies 1 seed per device; on 1, whole.
    seen = report["seen"]
    for runner in ("blr", "binary_vae"):
        eight = [s for s in seen if s[0] == runner and s[1] == 0 and s[2][0] == NUM_SEEDS]
        one = [s for s in seen if s[0] == runner and s[1] == 1 and s[2][0] == NUM_SEEDS]
        assert eight and len(eight) == len(one), (runner, seen)
        for _, _, shape, spec, shards, shard_shape in eight:
            assert spec in ("P('devices',)", "PartitionSpec('devices',)") and shards == 8, (
                runner,
                shape,
                spec,
            )
            assert shard_shape == [1, *shape[1:]], (runner, shape, shard_shape)
        for _, _, shape, _, shards, shard_shape in one:
            assert shards == 1 and shard_shape == shape

    blr8, blr1 = _blr_results(tmp_path / "blr0"), _blr_results(tmp_path / "blr1")
    _assert_close(blr1, blr8, BLR_RTOL, "blr")
    bvae8, bvae1 = _bvae_results(tmp_path / "bvae0"), _bvae_results(tmp_path / "bvae1")
    _assert_close(bvae1, bvae8, BVAE_RTOL, "binary_vae")
    # ... and the tolerance is far below what tells seeds apart (a mixed-up key would fail).
    for results, rtol in (
        (blr1["pathwise/elbo"][:, -1], BLR_RTOL),
        (bvae1["test_bound"], BVAE_RTOL),
    ):
        spread = np.abs(results[1:] - results[0]) / np.abs(results[0])
        assert spread.min() > 10 * rtol, (spread, rtol)


RESUME_SCRIPT = r"""
import json, sys
from pathlib import Path

from experiments import _cli, _config

out = Path(sys.argv[1])


def config(steps, devices):
    c = _config.load_config("binary_vae_digits")
    c.models, c.estimators, c.train_examples, c.batch_size = ("linear",), ("disarm",), 100, 25
    c.num_steps, c.num_seeds, c.latent_dim, c.eval_examples = steps, 8, 8, 50
    c.eval_num_samples, c.train_elbo_examples, c.grad_var_epochs = 1, 100, (0,)
    c.grad_var_num_estimates = c.grad_var_run_estimates = 3
    c.grad_var_warmup_steps, c.progress, c.figures = 0, False, False
    c.mesh.devices = devices
    return c


_cli.run_experiment(config(4, 0), out / "a")  # one epoch on 8 devices ...
_cli.run_experiment(config(8, 0), out / "a", resume=True)  # ... resumed for a second
_cli.run_experiment(config(8, 0), out / "b")  # two epochs on 8
_cli.run_experiment(config(4, 1), out / "c")  # one epoch on one device ...
_cli.run_experiment(config(8, 0), out / "c", resume=True)  # ... resumed on 8
"""


@pytest.mark.slow  # 35 s of CPU; the sharded programs are tested by default above
def test_binary_vae_resumes_on_8_devices_where_an_8_device_run_ends(tmp_path):
    """A 1-epoch run on 8 devices resumed for a second epoch ends with the results of a 2-epoch
    run on 8 devices, bit for bit (the checkpoint's host arrays laid out on the mesh again); one
    whose first epoch ran on one device ends there within float32 rounding (module docstring)."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    proc = subprocess.run(
        [sys.executable, "-c", RESUME_SCRIPT, str(tmp_path)],
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    a, b, c = (
        json.loads((tmp_path / w / "linear" / "disarm" / "results.json").read_text())
        for w in ("a", "b", "c")
    )
    assert a["steps"] == b["steps"] == c["steps"] == 8
    for key in ("train_elbo", "validation_bound", "test_bound"):
        assert a[key] == b[key], key
        np.testing.assert_allclose(c[key], b[key], rtol=BVAE_RTOL, atol=0, err_msg=key)
