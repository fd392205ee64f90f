"""Several processes under ``jax.distributed`` on this machine (issue 15, multi-host).

Each test starts 2 local processes of ``python -m experiments run``, each with 2 CPU devices
(``--xla_force_host_platform_device_count=2``: a mesh of 4 devices over 2 processes, their
collectives through gloo), coordinated on 127.0.0.1 at a free port, and checks what the issue
asks: the same results as a single-process run, and a single writer (process 0). The
processes are time-boxed, so a hang fails with both processes' output instead of stalling CI.

The cluster detection (``experiments._distributed.detect``) is checked without processes,
against a SLURM step's environment as ``srun`` sets it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments import _distributed

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 120  # per launch; a normal one takes ~5 s (fig2) or ~60 s (VAE) on 2 busy cores
# A small Fig 2 (two estimators, 4 values of k, 2000 samples): compiling is most of its time.
FIG2 = [
    "--config.estimators=('pathwise', 'score_function')",
    "--config.grid.quadratic.num=4",
    "--config.num_samples=2000",
    "--config.mc_every=1",
    "--config.progress=false",
]
CLUSTER_ENV = (
    "SLURM_JOB_ID",
    "SLURM_STEP_NODELIST",
    "SLURM_NTASKS",
    "SLURM_PROCID",
    "SLURM_LOCALID",
    "JAX_COORDINATOR_PORT",
    "OMPI_MCA_orte_hnp_uri",
    _distributed.COORDINATOR_ENV,
    _distributed.NUM_PROCESSES_ENV,
    _distributed.PROCESS_ID_ENV,
    _distributed.OFF_ENV,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(
    args: list[str], tmp: Path, *, how: str = "flags", n: int = 2, devices: int = 2
) -> list[subprocess.CompletedProcess]:
    """``python -m experiments <args>`` as ``n`` processes of one job; each process's TMPDIR is
    ``tmp/tmp<i>`` (to see what it leaves there). The job is named by ``how``: ``"flags"``
    (``--coordinator-address 127.0.0.1:<port> --num-processes n --process-id i``), ``"env"``
    (``$JAX_COORDINATOR_ADDRESS``, ``$JAX_NUM_PROCESSES``, ``$JAX_PROCESS_ID``) or ``"slurm"``
    (the variables ``srun`` sets for the tasks of a one-node step, and ``$JAX_COORDINATOR_PORT``:
    JAX's own cluster detection, no flags) or ``"none"`` (a plain run). Each process has
    ``devices`` CPU devices."""
    port = _free_port()
    address = f"127.0.0.1:{port}"
    procs = []
    for i in range(n):
        env = {k: v for k, v in os.environ.items() if k not in CLUSTER_ENV}
        env |= {
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
            "JAX_PLATFORMS": "cpu",
            "TMPDIR": str(tmp / f"tmp{i}"),
            "PYTHONPATH": str(REPO),
        }
        (tmp / f"tmp{i}").mkdir(parents=True, exist_ok=True)
        job: list[str] = []
        if how == "flags":
            job = ["--coordinator-address", address, "--num-processes", str(n)]
            job += ["--process-id", str(i)]
        elif how == "env":
            env |= {
                _distributed.COORDINATOR_ENV: address,
                _distributed.NUM_PROCESSES_ENV: str(n),
                _distributed.PROCESS_ID_ENV: str(i),
            }
        elif how == "slurm":
            env |= {
                "SLURM_JOB_ID": "4242",
                "SLURM_STEP_NODELIST": "127.0.0.1",
                "SLURM_NTASKS": str(n),
                "SLURM_PROCID": str(i),
                "SLURM_LOCALID": str(i),
                "JAX_COORDINATOR_PORT": str(port),
            }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "experiments", *args, *job],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    done = []
    for i, p in enumerate(procs):
        try:
            out, err = p.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            outputs = [q.communicate() for q in procs]
            pytest.fail(
                f"process {i} of {n} did not finish within {TIMEOUT_S} s (a hang?):\n"
                + "\n".join(
                    f"--- process {j}:\n{o}\n{e[-3000:]}" for j, (o, e) in enumerate(outputs)
                )
            )
        done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return done


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_two_processes_give_the_one_process_results_and_only_process_0_writes(tmp_path):
    one, two = tmp_path / "ref" / "fig2", tmp_path / "out" / "fig2"
    # The reference: one process with as many devices (4) as the job has, so that the programs
    # are partitioned alike and only the processes differ (the number of devices is
    # tests/test_sharding_variance.py's business: float32 rounding there).
    (ref,) = _launch(
        ["run", "fig2", "--workdir", str(one), *FIG2], tmp_path, how="none", n=1, devices=4
    )
    assert ref.returncode == 0, ref.stderr[-3000:]

    procs = _launch(["run", "fig2", "--workdir", str(two), *FIG2], tmp_path)
    for i, p in enumerate(procs):
        assert p.returncode == 0, f"process {i}:\n{p.stdout}\n{p.stderr[-3000:]}"
        assert f"process {i} of 2 (command line, coordinator 127.0.0.1:" in p.stderr
        assert "backends started before" not in p.stderr  # estimators' XLA workaround applied

    # The same results, bit for bit: the same program, its per-chunk outputs gathered across
    # the processes (no arithmetic) and combined on the host in the same order.
    assert json.loads((two / "results.json").read_text()) == json.loads(
        (one / "results.json").read_text()
    )
    assert (two / "results.csv").read_bytes() == (one / "results.csv").read_bytes()
    # One writer: one set of files, run_info.json written by process 0 of a 2-process job of
    # 4 devices; nothing else beside the workdir (no second staging folder), nothing left in
    # process 1's TMPDIR (its private folder removed), only process 0 reports the results.
    assert sorted(_tree(two)) == sorted(_tree(one))
    info = json.loads((two / "run_info.json").read_text())
    assert info["processes"] == 2 and len(info["devices"]) == 4
    assert info["argv"][info["argv"].index("--process-id") + 1] == "0"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["fig2"]
    assert not any((tmp_path / "tmp1").iterdir())
    assert "results in" in procs[0].stdout and "results in" not in procs[1].stdout

    # The workdir decision is process 0's, for both: `reproduce` into the used outdir, the job
    # as srun would start it (JAX's detection, no flags), is refused by both processes alike
    # (status 2, the same message); nothing changes.
    before = _tree(two)
    args = ["reproduce", "fig2", "--outdir", str(two.parent), *FIG2]
    procs = _launch(args, tmp_path, how="slurm")
    for i, p in enumerate(procs):
        assert f"process {i} of 2 (SlurmCluster, coordinator 127.0.0.1:" in p.stderr, p.stderr
        assert "backends started before" not in p.stderr
    errors = [p.stderr.strip().splitlines()[-1] for p in procs]
    assert [p.returncode for p in procs] == [2, 2], errors
    assert errors[0] == errors[1] and "already holds results" in errors[0]
    assert _tree(two) == before


@pytest.fixture
def no_cluster(monkeypatch):
    for name in CLUSTER_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


SLURM_STEP = {  # what srun sets for task 1 of a 2-task step on nodes gpu[017-018]
    "SLURM_JOB_ID": "4242",
    "SLURM_STEP_NODELIST": "gpu[017-018]",
    "SLURM_NTASKS": "2",
    "SLURM_PROCID": "1",
    "SLURM_LOCALID": "0",
}


def test_cluster_detection_flags_environment_and_slurm(no_cluster):
    detect = _distributed.detect
    assert detect() is None  # a plain run: no job, nothing initialised
    job = detect("10.0.0.1:1234", 2, 1)
    assert job == _distributed.Cluster("10.0.0.1:1234", 2, 1, None, "command line")
    assert detect("10.0.0.1:1234", 1, 0) is None  # a job of one process is a plain run
    with pytest.raises(_distributed.DistributedError, match="--coordinator-address"):
        detect(None, 2, 1)
    with pytest.raises(_distributed.DistributedError, match=r"0\.\.1"):
        detect("10.0.0.1:1234", 2, 2)
    no_cluster.setenv(_distributed.COORDINATOR_ENV, "10.0.0.1:1234")
    no_cluster.setenv(_distributed.NUM_PROCESSES_ENV, "2")
    no_cluster.setenv(_distributed.PROCESS_ID_ENV, "0")
    assert detect() == _distributed.Cluster("10.0.0.1:1234", 2, 0, None, "command line")
    assert detect(process_id=1).process_id == 1  # the flag wins over the environment
    for name in (_distributed.NUM_PROCESSES_ENV, _distributed.PROCESS_ID_ENV):
        no_cluster.delenv(name)

    # A SLURM step: JAX's detection; the coordinator is the step's first node, at the port
    # JAX derives from the job id (the same on every task); one local device per task.
    no_cluster.delenv(_distributed.COORDINATOR_ENV)
    for name, value in SLURM_STEP.items():
        no_cluster.setenv(name, value)
    port = 4242 % 2**12 + 65535 - 2**12 + 1
    assert detect() == _distributed.Cluster(f"gpu017:{port}", 2, 1, (0,), "SlurmCluster")
    assert detect("head:1234").coordinator_address == "head:1234"
    assert detect(enabled=False) is None  # --no-distributed
    no_cluster.setenv(_distributed.OFF_ENV, "0")
    assert detect() is None
    no_cluster.delenv(_distributed.OFF_ENV)
    no_cluster.setenv("SLURM_NTASKS", "1")  # a one-task job step: a plain run
    assert detect() is None


def test_single_process_helpers_change_nothing(tmp_path):
    """Outside a job: ``agree`` is the call, ``barrier`` nothing, ``shared_dir`` the path."""
    assert not _distributed.is_multiprocess() and _distributed.is_writer()
    assert _distributed.agree(lambda: [1, "a"]) == [1, "a"]
    _distributed.barrier("nothing")
    assert _distributed.shared_dir(tmp_path / "checkpoints") == tmp_path / "checkpoints"
    assert not any(tmp_path.iterdir())


def test_put_places_arrays_and_prng_keys_as_device_put():
    """``_mesh.put``: what ``jax.device_put`` gives, key arrays included (placed as their key
    data, which a multi-process mesh needs: the slow VAE test), for one sharding or a prefix
    tree of them."""
    import jax
    import jax.numpy as jnp

    from experiments import _mesh

    s = _mesh.replicated(_mesh.make_mesh(devices=1))
    tree = {"keys": jax.random.split(jax.random.key(3), 2), "x": jnp.arange(3.0)}
    for sharding in (s, {"keys": s, "x": s}):
        out = _mesh.put(tree, sharding)
        assert out["keys"].dtype == tree["keys"].dtype and out["keys"].sharding == s
        assert np.array_equal(jax.random.key_data(out["keys"]), jax.random.key_data(tree["keys"]))
        assert out["x"].sharding == s and np.array_equal(out["x"], tree["x"])


def test_private_workdir_copies_and_links_the_checkpoints(tmp_path):
    """A non-writing process's stand-in workdir: the files copied, ``checkpoints/`` linked to
    the real ones (in sub-workdirs too, and made on demand); removing it spares the real ones."""
    real = tmp_path / "run"
    (real / "checkpoints" / "5").mkdir(parents=True)
    (real / "checkpoints" / "5" / "x").write_bytes(b"saved")
    (real / "sub").mkdir()
    (real / "metrics.jsonl").write_text("{}\n")
    with _distributed.private_workdir(real, copy=True) as private:
        assert private != real and (private / "metrics.jsonl").read_text() == "{}\n"
        assert (private / "checkpoints").is_symlink()
        assert (private / "checkpoints" / "5" / "x").read_bytes() == b"saved"
        assert _distributed.shared_dir(private / "checkpoints") == real / "checkpoints"
        later = _distributed.shared_dir(private / "sub" / "checkpoints")
        assert (
            later == real / "sub" / "checkpoints" and (private / "sub" / "checkpoints").is_symlink()
        )
        (private / "results.json").write_text("{}")
    assert not private.exists()
    assert _tree(real) == {"checkpoints/5/x": b"saved", "metrics.jsonl": b"{}\n"}


VAE_TINY = [
    "--config.train_examples=300",
    "--config.test_examples=24",
    "--config.batch_size=60",
    "--config.hidden=(16,)",
    "--config.latent_dim=2",
    "--config.ll_num_samples=20",
    "--config.ll_chunk_size=10",
    "--config.grad_var_num_estimates=3",
    "--config.grad_var_batch_size=16",
    "--config.grad_var_every_epochs=2",
    "--config.checkpoint_every_steps=5",
    "--config.progress=false",
    "--config.figures=false",
]


@pytest.mark.slow
def test_two_processes_checkpoint_and_resume_a_vae_run(tmp_path):
    """The VAE's orbax checkpoints with 2 processes: saved once (process 0 writes the arrays),
    restored by both; a run stopped after 2 epochs and resumed to 3 ends bit for bit where the
    uninterrupted 3-epoch run ends, with the same test ELBO."""
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    runs = [  # the job named by flags, then by $JAX_COORDINATOR_ADDRESS and the like
        (whole, ["--config.num_epochs=3"], "flags"),
        (resumed, ["--config.num_epochs=2"], "flags"),
        (resumed, ["--config.num_epochs=3", "--resume"], "env"),
    ]
    for workdir, extra, how in runs:
        args = ["run", "vae_digits", "--workdir", str(workdir), *VAE_TINY, *extra]
        for i, p in enumerate(_launch(args, tmp_path, how=how)):
            assert p.returncode == 0, f"process {i}:\n{p.stdout}\n{p.stderr[-3000:]}"
    assert "resuming after epoch 2" in p.stderr  # both processes resumed (the last one shown)
    for workdir in (whole, resumed):
        data = {p.name for p in workdir.glob("checkpoints/*/default/ocdbt.process_*")}
        assert data == {"ocdbt.process_0"}  # process 1 wrote no array data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resumed", "tmp0", "tmp1", "whole"]
    assert not any((tmp_path / "tmp1").iterdir())

    from experiments import vae

    def final(workdir: Path) -> dict[str, np.ndarray]:
        manager = vae.checkpoint.manager(workdir)
        tree = manager.restore(manager.latest_step())
        return {name: np.asarray(v) for name, v in tree["state"].items()}

    a, b = final(whole), final(resumed)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)

    ra, rb = (json.loads((w / "results.json").read_text()) for w in (whole, resumed))
    assert ra["test_elbo"] == rb["test_elbo"] and ra["steps"] == rb["steps"] == 3 * 5
