"""The command line and the results layout: failure paths, signals, resume, overwrite, umask.

Training runs are the VAE on the 8x8 digits or on MNIST-format files of random images that the
test writes (``small_idx_dir``), at a tiny size; one-shot runs are the variance figures. Two
tests send a real SIGTERM to a ``python -m experiments`` subprocess; a hook in the child (a
patched function that writes a marker file, then sleeps) makes the signal land mid-run.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import experiments
from experiments import _cli, vae
from experiments import _config as cfg
from experiments.vae import data
from experiments.vae import train as vae_train

REPO = Path(__file__).resolve().parents[1]

TINY_VAE = [
    "num_epochs=2",
    "train_examples=200",
    "test_examples=20",
    "batch_size=50",
    "hidden=(8,)",
    "latent_dim=2",
    "ll_num_samples=10",
    "ll_chunk_size=10",
    "grad_var_num_estimates=3",
    "grad_var_batch_size=8",
    "grad_var_every_epochs=10",
    "checkpoint_every_steps=1000",
    "progress=false",
    "figures=false",
]
TINY_FIG7 = [
    "grid.quadratic.num=4",
    "grid.exp_quadratic.num=4",
    "num_samples=2000",
    "num_nodes=64",
    "progress=false",
]


def _config(name: str, *overrides: str):
    config = cfg.load_config(name)
    cfg.apply_overrides(config, list(overrides))
    return config


def _digits(*extra: str):
    return _config("vae_digits", *TINY_VAE, *extra)


def _small_mnist(folder: Path, *extra: str):
    return _config("vae_mnist", *TINY_VAE, f"data_dir={folder}", "verify_checksums=false", *extra)


def _tree(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` with its bytes (``None`` for a folder): a snapshot."""
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): (None if p.is_dir() else p.read_bytes())
        for p in sorted(folder.rglob("*"))
    }


@pytest.fixture(autouse=True)
def _no_download(monkeypatch):
    def refuse(url, *args, **kwargs):
        raise OSError(f"no network in the tests ({url})")

    monkeypatch.setattr(data.urllib.request, "urlopen", refuse)


# ------------------------------------------------------------------------------------------
# A failed run leaves its workdir as it found it (item 11)
# ------------------------------------------------------------------------------------------


def test_bad_data_or_an_early_stop_leave_the_workdir_as_it_was(
    tmp_path, small_idx_dir, monkeypatch, capsys
):
    """No data (download=false), a failed download, a truncated file, a checksum mismatch, and
    Ctrl-C before the first checkpoint: an absent workdir stays absent, an empty one empty, and
    the same run into the same workdir goes through once the data is fixed."""
    monkeypatch.delenv("MNIST_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    absent, empty = tmp_path / "absent", tmp_path / "empty"
    empty.mkdir()

    def refused(match: str, *overrides: str) -> None:
        for workdir in (absent, empty):
            with pytest.raises(data.DataError, match=match):
                experiments.run_experiment(_config("vae_mnist", *TINY_VAE, *overrides), workdir)
            assert _tree(workdir) == {}

    unchecked = "verify_checksums=false"
    refused(r"not found in .*\(download=False\)", unchecked, "download=false")
    refused("could not download", unchecked)  # the network is refused in these tests
    labels = small_idx_dir / "t10k-labels-idx1-ubyte"
    good = labels.read_bytes()
    labels.write_bytes(good[:-7])
    refused("truncated or corrupt", unchecked, f"data_dir={small_idx_dir}")
    # Through the command line too, with checking on (random pixels are not MNIST).
    args = ["run", "vae_mnist", "--workdir", str(empty)]
    args += [f"--config.{o}" for o in TINY_VAE] + [f"--config.data_dir={small_idx_dir}"]
    assert _cli.main(args) == 2
    assert "checksum mismatch" in capsys.readouterr().err
    assert not absent.exists() and list(empty.iterdir()) == []

    labels.write_bytes(good)  # fixed; Ctrl-C during the first epoch still leaves no trace
    with monkeypatch.context() as m:
        _interrupt_at(m, 0)
        with pytest.raises(KeyboardInterrupt):
            experiments.run_experiment(_small_mnist(small_idx_dir), empty)
    assert list(empty.iterdir()) == []
    assert "as it was before" in capsys.readouterr().err
    results = experiments.run_experiment(_small_mnist(small_idx_dir), empty)
    assert results["epochs"] == 2 and (empty / "results.json").is_file()


def _interrupt_at(monkeypatch, epoch: int) -> None:
    """Ctrl-C when the loop asks for the keys of ``epoch`` (compiling asks for epoch 0 first)."""
    real, calls = vae_train.epoch_keys, []

    def interrupting(seed, e):
        calls.append(e)
        if e == epoch and len(calls) > 1:
            raise KeyboardInterrupt
        return real(seed, e)

    monkeypatch.setattr(vae_train, "epoch_keys", interrupting)


def test_overwrite_sets_aside_then_removes_or_puts_back(tmp_path, monkeypatch, capsys):
    """--overwrite of a training run: the old run comes back if the new one stops before its
    first checkpoint, stays aside (and is named) if it stops after, and is removed on success."""
    workdir = tmp_path / "run"
    (workdir / "checkpoints" / "8").mkdir(parents=True)  # an earlier run's files
    (workdir / "config.json").write_text(json.dumps(cfg.config_to_dict(_digits())))
    (workdir / "results.json").write_text("earlier")
    before = _tree(workdir)
    with monkeypatch.context() as m:
        _interrupt_at(m, 0)
        with pytest.raises(KeyboardInterrupt):
            experiments.run_experiment(_digits("seed=1"), workdir, overwrite=True)
    assert _tree(workdir) == before and os.listdir(tmp_path) == ["run"]
    assert "as it was before" in capsys.readouterr().err

    with monkeypatch.context() as m:
        _interrupt_at(m, 1)  # after epoch 0: the exit checkpoint is written
        with pytest.raises(KeyboardInterrupt):
            experiments.run_experiment(_digits("seed=1"), workdir, overwrite=True)
    (aside,) = (p for p in tmp_path.iterdir() if ".replaced-" in p.name)
    assert f"the previous run is kept in {aside}" in capsys.readouterr().err
    assert _tree(aside) == before and vae.checkpoint.latest_step(workdir) == 4

    # Success: the copy this run set aside (the interrupted seed-1 run) is removed; the
    # earlier one, kept by the failure above, stays.
    experiments.run_experiment(_digits("seed=2"), workdir, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == sorted(["run", aside.name])
    assert json.loads((workdir / "config.json").read_text())["seed"] == 2


# ------------------------------------------------------------------------------------------
# --resume: changed keys named, num_epochs may grow (item 13)
# ------------------------------------------------------------------------------------------


def test_resume_names_changed_keys_and_may_train_longer(tmp_path):
    workdir = tmp_path / "run"
    experiments.run_experiment(_digits(), workdir)
    first = (workdir / "metrics.jsonl").read_text().splitlines()
    with pytest.raises(experiments.WorkdirError) as e:
        experiments.run_experiment(_digits("learning_rate=0.01", "seed=3"), workdir, resume=True)
    msg = str(e.value)
    assert "learning_rate: 0.001 saved, 0.01 now" in msg and "seed: 0 saved, 3 now" in msg
    assert "only num_epochs may be raised" in msg
    with pytest.raises(experiments.WorkdirError, match="num_epochs: 2 saved, 1 now"):
        experiments.run_experiment(_digits("num_epochs=1"), workdir, resume=True)
    # A display key may change; raising num_epochs trains on from the last checkpoint (the
    # first two epochs' rows are kept as they were: nothing is retrained).
    results = experiments.run_experiment(
        _digits("num_epochs=3", "progress=true"), workdir, resume=True
    )
    assert results["epochs"] == 3 and results["steps"] == 3 * 4
    rows = (workdir / "metrics.jsonl").read_text().splitlines()
    assert rows[:2] == first and json.loads(rows[2])["step"] == 12
    assert vae.checkpoint.latest_step(workdir) == 12
    assert json.loads((workdir / "config.json").read_text())["num_epochs"] == 3


def test_already_holds_results_suggests_resume_only_for_resumable_runners(tmp_path, capsys):
    for name, resumable in (("fig2", False), ("vae_digits", True)):
        workdir = tmp_path / name
        workdir.mkdir()
        (workdir / "config.json").write_text("{}")
        assert _cli.main(["run", name, "--workdir", str(workdir)]) == 2
        err = capsys.readouterr().err
        assert "already holds results" in err and ("--resume" in err) == resumable, err


# ------------------------------------------------------------------------------------------
# reproduce --skip-existing, show, the umask (item 13)
# ------------------------------------------------------------------------------------------


def test_reproduce_skips_finished_runs_of_the_same_config(tmp_path, capsys):
    outdir = tmp_path / "out"
    args = ["reproduce", "fig7", "--outdir", str(outdir)] + [f"--config.{o}" for o in TINY_FIG7]
    assert _cli.main(args) == 0
    assert "Monte Carlo" not in capsys.readouterr().err  # progress=false: no bar
    done = _tree(outdir / "fig7")
    assert "run_info.json" in done
    assert _cli.main([*args, "--skip-existing"]) == 0
    assert "fig7: skipped" in capsys.readouterr().out and _tree(outdir / "fig7") == done
    assert _cli.main(args) == 2  # without the flag, a used workdir is still refused
    assert "already holds results" in capsys.readouterr().err
    # Another config is not the same run: not skipped, so refused without --overwrite.
    assert _cli.main([*args, "--skip-existing", "--config.seed=1"]) == 2
    assert "fig7 already holds results" in capsys.readouterr().err
    assert os.listdir(outdir) == ["fig7"]  # no staging or replaced copies left


def test_show_prints_every_key_with_overrides(capsys):
    assert (
        _cli.main(["show", "fig2", "--config.num_samples=7", "--config.grid.quadratic.num=5"]) == 0
    )
    out = capsys.readouterr().out.splitlines()
    values = dict(line.split(" = ", 1) for line in out if not line.startswith("#"))
    values = {k.strip(): v for k, v in values.items()}
    config = _config("fig2", "num_samples=7", "grid.quadratic.num=5")
    assert values.keys() == set(cfg.flat_items(config))
    assert values["num_samples"] == "7" and values["grid.quadratic.num"] == "5"
    assert values["runner"] == "'variance'" and values["progress"] == "True"
    assert _cli.main(["show", "fig2", "--config.nope=1"]) == 2
    assert "unknown config key 'nope'" in capsys.readouterr().err


def test_results_follow_the_umask(tmp_path, capsys):
    """Not mkstemp's 0600 / mkdtemp's 0700: with umask 027, files 0640 and the workdir 0750."""
    umask = 0o027
    old = os.umask(umask)
    try:
        workdir = tmp_path / "fig7"
        experiments.run_experiment(_config("fig7", *TINY_FIG7, "progress=true"), workdir)
    finally:
        os.umask(old)
    assert "fig7 Monte Carlo" in capsys.readouterr().err  # the bar the other runs turn off
    assert workdir.stat().st_mode & 0o777 == 0o777 & ~umask
    files = [p for p in workdir.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"config.json", "results.json", "fig7.png", "fig7.pdf"}
    assert {p.stat().st_mode & 0o777 for p in files} == {0o666 & ~umask}


# ------------------------------------------------------------------------------------------
# SIGTERM, a real signal to a subprocess (item 12)
# ------------------------------------------------------------------------------------------

_CHILD = """
import sys, time, pathlib, importlib
marker, module, name, at = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
mod = importlib.import_module(module)
real, calls = getattr(mod, name), []

def hook(*args, **kwargs):
    calls.append(1)
    if len(calls) == at:
        marker.write_text("ready")
        time.sleep(60)
    return real(*args, **kwargs)

setattr(mod, name, hook)
from experiments._cli import main
sys.argv = ["python -m experiments", *sys.argv[5:]]
sys.exit(main(sys.argv[1:]))
"""


def _terminate_mid_run(tmp_path: Path, hook: tuple[str, str, int], argv: list[str]):
    """Run ``python -m experiments <argv>``; SIGTERM it once the hook is reached; (rc, stderr)."""
    marker = tmp_path / "hook_reached"
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    module, name, at = hook
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(marker), module, name, str(at), *argv],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"the hook was never reached:\n{proc.communicate()[1]}")
            time.sleep(0.05)
        staging = list(tmp_path.rglob(".*.partial-*"))
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, err, staging


def test_sigterm_saves_the_checkpoint_and_names_the_resume_command(tmp_path):
    workdir = tmp_path / "run"
    argv = ["run", "vae_digits", "--workdir", str(workdir)] + [f"--config.{o}" for o in TINY_VAE]
    argv[argv.index("--config.num_epochs=2")] = "--config.num_epochs=4"
    # SIGTERM while the keys of epoch 2 are drawn: epochs 0 and 1 (4 steps each) are done.
    rc, err, _ = _terminate_mid_run(tmp_path, ("experiments.vae.train", "epoch_keys", 4), argv)
    assert rc == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM; the last checkpoint is kept in" in err
    assert vae.checkpoint.latest_step(workdir) == 2 * 4
    command = err.strip().splitlines()[-1].strip()
    assert command == shlex.join(["python", "-m", "experiments", *argv, "--resume"])
    assert _cli.main(shlex.split(command)[3:]) == 0  # the named command finishes the run
    assert json.loads((workdir / "results.json").read_text())["epochs"] == 4


def test_sigterm_removes_the_staging_folder_and_keeps_earlier_results(tmp_path):
    workdir = tmp_path / "fig7"
    workdir.mkdir()
    (workdir / "results.json").write_text("earlier")
    argv = ["run", "fig7", "--workdir", str(workdir), "--overwrite"]
    argv += [f"--config.{o}" for o in TINY_FIG7]
    rc, err, staging = _terminate_mid_run(tmp_path, ("experiments.variance", "_run_mc", 1), argv)
    assert rc == 128 + signal.SIGTERM, err
    assert len(staging) == 1 and staging[0].name.startswith(".fig7.partial-")  # it was there
    assert "stopped by SIGTERM; earlier results" in err
    assert not staging[0].exists() and sorted(os.listdir(tmp_path)) == ["fig7", "hook_reached"]
    assert _tree(workdir) == {"results.json": b"earlier"}


def test_sigterm_handler_is_restored(tmp_path):
    previous = signal.getsignal(signal.SIGTERM)
    assert _cli.main(["show", "fig2"]) == 0
    assert signal.getsignal(signal.SIGTERM) is previous
    with _cli.sigterm_as_interrupt(), pytest.raises(_cli.Terminated):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises here, at once
    assert signal.getsignal(signal.SIGTERM) is previous


def test_estimators_prints_the_registry_table_and_names_an_unknown_spec(capsys):
    assert _cli.main(["estimators", "pathwise", "score_function+loo"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("| estimator | spec |") and len(out) == 4
    assert "`score_function+loo`" in out[3] and "Kool et al. 2019" in out[3]
    assert _cli.main(["estimators", "pathwize"]) == 2
    assert "did you mean 'pathwise'" in capsys.readouterr().err
