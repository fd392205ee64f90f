"""The VAE's training on 8 devices equals its training on 1 (issue 15).

One subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (this pytest process
keeps its one device) trains the ``vae_digits`` config at a tiny size (hidden 16, latent 2,
batch 40, 8 steps an epoch, 2 epochs) with the data-parallel epoch
(:func:`experiments.vae.train.make_train_epoch`) on 8 devices and on ``mesh.devices = 1``, and
2 and 8 seeds in one program (:func:`experiments.vae.train.make_seeds_epoch` on
:func:`experiments.vae.train.seeds_mesh`) on 8 devices and on 1. It reports what the partitioner
made of each step's batch (``jax.debug.inspect_array_sharding`` inside the compiled scan), the
output arrays' shardings, the compiled program's all-reduces, and the largest differences.

The tolerance, from float32 rounding (unit roundoff ``u = 2**-24``). Every random draw is the
same on 1 and 8 devices (partitionable threefry, ``jax_threefry_partitionable``, on by default
in jax 0.10.2): only the ORDER of the sums over the batch changes (each device sums its ``B / n``
examples, then the all-reduce sums the devices' partial sums). Two orders of a sum of ``B``
terms differ by at most ``2 gamma_B sum |t_b|``, ``gamma_B = B u / (1 - B u)`` (Higham, Accuracy
and Stability, 2nd ed., eq. 4.4), so

* the loss of a step, a mean of ``B`` positive per-example losses, differs by at most
  ``2 gamma_B |loss|``;
* a gradient entry differs relatively by ``2 gamma_B`` (for sums without heavy cancellation);
  Adam's update ``lr m/sqrt(v)`` then by ``lr 2 (2 gamma_B)`` (``m`` and ``sqrt v`` each; ``|m /
  sqrt v| <= 1`` here), and each step's parameter rounds by ``u |p|`` in either run: after ``T``
  steps, ``|dp| <= T (4 gamma_B lr + 2 u max|p|)``.

The 8-seed program on 8 devices has no cross-device sum (one seed a device) but the vmapped
matmuls of 1 and 8 seeds a device may still sum in another order: the same bound covers it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import json, re, sys, time
    T0 = time.process_time()
    import jax, jax.numpy as jnp, numpy as np
    from experiments import _config as cfg, _mesh, vae
    from experiments.vae import seeds, train

    assert jax.device_count() == 8 and jax.config.jax_threefry_partitionable
    OVERRIDES = ["train_examples=320", "batch_size=40", "hidden=(16,)", "latent_dim=2"]
    EPOCHS = 2
    seen = []  # what the partitioner made of each traced step's batch

    real_step = train.train_step

    def inspecting_step(setup, state, xs, key):
        jax.debug.inspect_array_sharding(xs, callback=lambda s: seen.append(
            [len(s.device_set), [str(a) for a in s.spec], dict(s.mesh.shape)]))
        return real_step(setup, state, xs, key)

    train.train_step = inspecting_step

    def all_reduce_elements(compiled):
        total = 0
        for line in compiled.as_text().splitlines():
            if " all-reduce(" in line or " all-reduce-start(" in line:
                lhs = line.split(" all-reduce")[0].split("=", 1)[1]
                for dims in re.findall(r"f32\\[([0-9,]*)\\]", lhs):
                    total += int(np.prod([int(d) for d in dims.split(",") if d]))
        return total

    def describe(sharding, shape):
        return [len(sharding.device_set), list(sharding.shard_shape(shape))]

    def run(config, setup, state, mesh, many):
        sh = train.epoch_shardings(mesh)
        make = train.make_seeds_epoch if many else train.make_train_epoch
        fn = make(setup, mesh)
        state, x = jax.device_put(state, sh[0]), jax.device_put(jnp.asarray(tr), sh[1])
        keys = lambda e: jax.device_put(
            jnp.stack([train.epoch_keys(s, e) for s in seeds.seed_list(config)])
            if many else train.epoch_keys(config.seed, e), sh[2])
        seen.clear()
        compiled = fn.lower(state, x, keys(0)).compile()
        batch = list(seen)
        losses = []
        for e in range(EPOCHS):
            state, loss = compiled(state, x, keys(e))
            losses.append(np.asarray(loss))
        leaves = jax.tree.leaves(state["params"])
        return {
            "losses": np.concatenate(losses, axis=-1).tolist(),
            "params": [np.asarray(p).ravel().tolist() for p in leaves],
            "batch": batch,
            "params_sharding": [describe(p.sharding, p.shape) for p in leaves],
            "params_replicated": all(p.sharding.is_fully_replicated for p in leaves),
            "x_sharding": describe(x.sharding, x.shape),
            "all_reduce_elements": all_reduce_elements(compiled),
            "num_params": int(sum(p.size for p in leaves)),
        }

    out = {}
    config = cfg.load_config("vae_digits")
    cfg.apply_overrides(config, OVERRIDES)
    _, tr, _ = vae.load_data(config)
    setup, state = vae.init_run(config, tr.shape[1], len(tr) // config.batch_size)
    out["config"] = {"batch_size": config.batch_size, "learning_rate": config.learning_rate,
                     "steps": EPOCHS * setup.num_batches}
    for n in (8, 1):
        out[f"one_seed_{n}"] = run(config, setup, state, _mesh.make_mesh(config, n), False)
    for extra in (["batch_size=36"], ["batch_size=42", "num_seeds=2"]):
        bad = cfg.load_config("vae_digits")
        cfg.apply_overrides(bad, extra)
        try:
            vae.validate(bad)
        except _mesh.MeshError as e:
            out[extra[0]] = str(e)
    for s in [int(a) for a in sys.argv[1].split(",")]:
        config = cfg.load_config("vae_digits")
        cfg.apply_overrides(config, [*OVERRIDES, f"num_seeds={s}"])
        _, states = seeds.init_seeds(config, tr.shape[1], setup.num_batches)
        for n in (8, 1):
            mesh = train.seeds_mesh(_mesh.make_mesh(config, n), s)
            out[f"seeds_{s}_{n}"] = run(config, setup, states, mesh, True)
    print("CPU_S", time.process_time() - T0, file=sys.stderr)
    print("RESULT " + json.dumps(out))
    """
)


def _run_on_8_devices(num_seeds: str) -> dict:
    """The script's results, training ``num_seeds`` (``"2"``, ``"2,8"``) seeds besides one.

    LLVM at optimisation level 0 halves the compile time; both sides of every comparison are
    compiled with it (it changes no HLO: the partitioning and the sums' order are XLA's)."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "")
        + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
    )
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, num_seeds],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def _tolerances(config: dict, params: list[list[float]]) -> tuple[float, float]:
    """(relative loss tolerance ``2 gamma_B``, absolute parameter tolerance) of the docstring."""
    u = 2.0**-24
    b = config["batch_size"]
    gamma = b * u / (1 - b * u)
    p_max = max(float(np.max(np.abs(p))) for p in params)
    return 2 * gamma, config["steps"] * (4 * gamma * config["learning_rate"] + 2 * u * p_max)


def _assert_close(a: dict, b: dict, config: dict, what: str) -> None:
    loss_rtol, p_atol = _tolerances(config, b["params"])
    la, lb = np.asarray(a["losses"]), np.asarray(b["losses"])
    assert la.shape == lb.shape and np.all(np.isfinite(la))
    assert np.all(np.abs(la - lb) <= loss_rtol * np.abs(lb)), (what, np.max(np.abs(la - lb)))
    worst = max(
        float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
        for x, y in zip(a["params"], b["params"], strict=True)
    )
    assert worst <= p_atol, (what, worst, p_atol)


def test_vae_training_on_8_devices_equals_1_device_and_is_really_sharded():
    out = _run_on_8_devices("2")
    config = out["config"]
    one8, one1 = out["one_seed_8"], out["one_seed_1"]
    # Data-parallel: each step's batch [40, 64] split along the batch over the 8 devices (5
    # rows each); the parameters and the images whole on every device.
    assert one8["batch"] == [[8, ["devices"], {"devices": 8}]], one8["batch"]
    assert one8["params_replicated"] and all(s[0] == 8 for s in one8["params_sharding"])
    assert one8["x_sharding"] == [8, [320, 64]]
    # The gradient's all-reduce: every parameter once a step (the loss's mean adds one scalar).
    assert one8["all_reduce_elements"] - one8["num_params"] in (0, 1), (
        one8["all_reduce_elements"],
        one8["num_params"],
    )
    assert one1["batch"] == [[1, [], {"devices": 1}]] and one1["all_reduce_elements"] == 0
    _assert_close(one8, one1, config, "one seed")
    # Refused before anything is written (vae.validate), naming the key.
    assert "config.batch_size = 36 does not split over 8 devices" in out["batch_size=36"]
    assert "config.batch_size = 42 does not split over the 4 devices" in out["batch_size=42"]

    # 2 seeds on 8 devices: 2 seed groups of 4, each seed's batch split over its group's 4
    # devices (10 rows each); the states split along the seeds (one a group), and the
    # all-reduce is each seed's gradient within its group.
    two8 = out["seeds_2_8"]
    assert two8["batch"] == [[8, ["seeds", "devices"], {"seeds": 2, "devices": 4}]]
    assert all(s[0] == 8 and s[1][0] == 1 for s in two8["params_sharding"])
    assert two8["all_reduce_elements"] - two8["num_params"] // 2 in (0, 1)
    _assert_close(two8, out["seeds_2_1"], config, "2 seeds")


@pytest.mark.slow  # 8 seeds: two more compilations, about 20 s of CPU
def test_8_seeds_on_8_devices_one_seed_a_device_equal_1_device():
    out = _run_on_8_devices("8")
    eight8 = out["seeds_8_8"]
    # One seed a device, its batch whole there: no communication at all.
    assert eight8["batch"] == [[8, ["seeds"], {"seeds": 8, "devices": 1}]], eight8["batch"]
    assert all(s[0] == 8 and s[1][0] == 1 for s in eight8["params_sharding"])
    assert eight8["all_reduce_elements"] == 0
    _assert_close(eight8, out["seeds_8_1"], out["config"], "8 seeds")


RUNNERS = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import jax, numpy as np
    from experiments import _config as cfg, run_experiment, vae
    from experiments.vae import compare

    root = Path(sys.argv[1])
    TINY = ["num_epochs=2", "train_examples=320", "test_examples=24", "batch_size=40",
            "hidden=(16,)", "latent_dim=2", "ll_num_samples=20", "ll_chunk_size=10",
            "grad_var_num_estimates=3", "grad_var_batch_size=16", "checkpoint_every_steps=8",
            "progress=false", "figures=false"]
    out = {}
    for n in (8, 1):
        for key, name, extra in [
                ("vae_digits", "vae_digits", ["estimator=score_function+nvil"]),
                ("vae_digits_seeds", "vae_digits", ["num_seeds=2"]),
                ("vae_compare_digits", "vae_compare_digits",
                 ["num_seeds=2", "estimators=('pathwise', 'score_function')",
                  "grad_var_checkpoint_epochs=(1,)", "grad_var_warmup_steps=2"])]:
            config = cfg.load_config(name)
            cfg.apply_overrides(config, [*TINY, *extra, f"mesh.devices={n}"])
            key = f"{key}_{n}"
            r = run_experiment(config, root / key)
            out[key] = json.loads(json.dumps(r, default=str))
    config = cfg.load_config("vae_digits")
    cfg.apply_overrides(config, [*TINY, "batch_size=36"])
    try:
        vae.validate(config)
    except ValueError as e:
        out["refused"] = str(e)
    print("RESULT " + json.dumps(out))
    """
)


@pytest.mark.slow  # three runners twice, about 90 s of CPU
def test_runners_on_8_devices_match_1_device(tmp_path):
    """``vae``, ``vae`` with 2 seeds and ``vae.compare`` with 2 seeds end to end with
    ``mesh.devices = 8`` and ``= 1``: the same results within the tolerance, and the
    comparison's replay of its reference run (the run's own 2-seed program on its own mesh)
    bit for bit equal to the run's checkpoint."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, "-c", RUNNERS, str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))[7:])
    # Each step's loss is within 2 gamma_B of its 1-device value (module docstring); so is the
    # last epoch's mean of them, and the mean of it over the seeds. The evaluations are at
    # parameters that differ by float32 rounding only (the test above): finite, same count.
    rtol = 2 * 40 * 2.0**-24 / (1 - 40 * 2.0**-24)
    for run in ("vae_digits", "vae_digits_seeds"):
        a, b = out[f"{run}_8"], out[f"{run}_1"]
        loss_a, loss_b = a["final_train_loss"], b["final_train_loss"]
        assert abs(loss_a - loss_b) <= rtol * abs(loss_b), (run, loss_a, loss_b)
        assert a["steps"] == b["steps"] == 16 and np.isfinite(a["test_log_likelihood"])
    for n in (8, 1):
        assert out[f"vae_compare_digits_{n}"]["grad_variance"]["replay_matches_reference_run"]
    assert "does not split over 8 devices" in out["refused"]
