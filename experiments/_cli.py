"""The one command line for every experiment.

    python -m experiments run <config> --workdir <dir> [--config.<key>=<value> ...]
    python -m experiments list
    python -m experiments show <config> [--config.<key>=<value> ...]
    python -m experiments plot <workdir>
    python -m experiments reproduce [<config> ...] --outdir <dir> [--skip-existing]
    python -m experiments estimators [<spec> ...]

``<config>`` is a bundled config name (``fig2``) or a path to a config file. ``mcgrad`` is the
same command installed as a console script.

``run`` and ``reproduce`` keep JAX's compiled programs in a persistent cache, so a repeated
run pays no compile: ``$XDG_CACHE_HOME/mcgrad/jax`` (``~/.cache/mcgrad/jax``) by default, or
``--compilation-cache DIR``; ``--no-compilation-cache`` or ``MCGRAD_COMPILATION_CACHE=0`` turns
it off, ``MCGRAD_COMPILATION_CACHE=DIR`` moves it (``experiments._compilation_cache``).

SIGTERM (what a batch scheduler or ``timeout`` sends) stops a run the way Ctrl-C does: a
training run saves its checkpoint and the command prints how to resume it; a one-shot run
removes its staging folder. The exit status is 143 (128 + 15) after SIGTERM, 130 after Ctrl-C.

``reproduce`` of several one-shot configs draws each one's figures in a second process while the
next one computes (``experiments._drawing``); a run's folder is put in place once its figures
are drawn. ``MCGRAD_BACKGROUND_DRAWING=0`` draws them in turn, in the one process.

``run`` and ``reproduce`` join a multi-process JAX job (``jax.distributed``) when one is named:
``--coordinator-address HOST:PORT --num-processes N --process-id I`` on every process, or a
cluster JAX detects (SLURM under ``srun``, Open MPI, TPU pods); ``--no-distributed`` keeps a
run single-process. Process 0 writes the workdir, the others compute with it and write nothing
there (``experiments._distributed``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import platform
import shlex
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import ml_collections

from . import _compilation_cache, _config, _distributed, _drawing, _workdir


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the signal lands so that it takes Ctrl-C's path.

    A subclass of ``KeyboardInterrupt``: every ``finally`` and ``except BaseException`` that
    saves a checkpoint or removes a staging folder on Ctrl-C does the same on SIGTERM.
    """


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM raises :class:`Terminated`; the previous handler is restored after.

    Only the first SIGTERM raises: a second one, while the first is being handled (a checkpoint
    being written), is ignored. Outside the main thread (where Python cannot set handlers) this
    does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def handler(signum: int, frame: object) -> None:
        if received:
            return
        received.append(signum)
        raise Terminated(f"received signal {signum} (SIGTERM)")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


# Runners that moved, under the name a workdir written before the move has in its config.json.
MOVED_RUNNERS = {"vae_compare": "vae.compare"}

# What `reproduce` runs when no config is named: the paper's Figures 2-7, the quick ones first.
# Each run's figures are drawn by the background worker while the next run computes, so only
# the last run's drawing is left when the computing ends; in the order fig2 ... fig7 the
# drawings of fig5, fig6 and fig7 (0.6-0.8 s each) were all left (warm, 2-core CPU: 9.97 s
# against 10.36 s, medians of 5 alternating runs, each run faster this way).
DEFAULT_REPRODUCE = ("fig6", "fig7", "fig2", "fig3", "fig4", "fig5")

# The errors process 0's decisions about a workdir raise on every process of a multi-process
# run (``_distributed.agree``), so that each exits as a single-process run would (status 2).
AGREED_ERRORS: tuple[type[Exception], ...] = (
    _workdir.WorkdirError,
    _config.ConfigError,
    ValueError,
)


def runner_module(config: ml_collections.ConfigDict) -> ModuleType:
    """The module ``experiments.<config.runner>``, which has ``run(config, workdir)``."""
    name = MOVED_RUNNERS.get(config.runner, config.runner)
    try:
        module = importlib.import_module(f"experiments.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"experiments.{name}":
            raise
        raise _config.ConfigError(f"config names unknown runner {name!r}") from None
    if not hasattr(module, "run"):
        raise _config.ConfigError(f"runner experiments.{name} has no run(config, workdir)")
    return module


def _run_info(wall_time: float) -> dict[str, Any]:
    import jax

    return {
        "wall_time_s": round(wall_time, 3),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "python": platform.python_version(),
        "argv": sys.argv,
    } | ({"processes": jax.process_count()} if _distributed.is_multiprocess() else {})


def run_experiment(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
) -> dict[str, Any]:
    """Run ``config`` into ``workdir`` under the project's results layout; returns the results.

    Validates the config (the runner's ``validate``, if any) and the workdir before writing
    anything. One-shot runners compute in a staging folder that replaces ``workdir`` only on
    success. Runners with ``RESUMABLE = True`` write into ``workdir`` (atomically, file by file)
    and may be continued with ``resume=True``; their ``check_inputs(config)``, if any, loads and
    verifies the inputs (data files, downloads) before anything is written, and a run that
    fails before its first checkpoint leaves ``workdir`` as it found it. ``overwrite`` of such a
    run sets the old one aside and removes it once the new run has succeeded.

    In a multi-process run (``jax.distributed``) every process calls this with the same
    arguments; process 0 decides about ``workdir`` and writes it, the others run the runner in a
    private folder (checkpoints shared): ``experiments._distributed``.
    """
    workdir = Path(workdir).resolve()
    runner = runner_module(config)
    if hasattr(runner, "validate"):
        runner.validate(config)
    resolved = _config.config_to_dict(config)
    resumable = getattr(runner, "RESUMABLE", False)
    _distributed.agree(  # in a multi-process run, process 0 decides for all
        lambda: _workdir.check_workdir(
            workdir,
            resolved,
            overwrite=overwrite,
            resume=resume,
            resumable=resumable,
            may_raise=tuple(getattr(runner, "RESUME_MAY_RAISE", ())),
        ),
        AGREED_ERRORS,
    )
    if resumable:
        return _run_resumable(runner, config, resolved, workdir, overwrite, resume)
    if resume:
        raise _config.ConfigError(f"runner {config.runner!r} is not resumable; drop --resume")
    start = time.perf_counter()
    background = _drawing.active()
    if background is not None and _distributed.is_writer() and not _distributed.is_multiprocess():
        return _run_drawing_in_background(runner, config, resolved, workdir, background, start)
    staging = (
        _workdir.staged(workdir)
        if _distributed.is_writer()
        else _distributed.private_workdir(workdir)  # another process: computes, writes nothing
    )
    with staging as stage:
        _workdir.write_json(stage / "config.json", resolved)
        results = runner.run(config, stage)
        _workdir.write_json(stage / "run_info.json", _run_info(time.perf_counter() - start))
    return results


def _run_drawing_in_background(
    runner: ModuleType,
    config: ml_collections.ConfigDict,
    resolved: dict[str, Any],
    workdir: Path,
    background: _drawing.Background,
    start: float,
) -> dict[str, Any]:
    """A one-shot run whose figures the background worker draws (``reproduce``): computed in a
    staging folder, which ``background`` puts in place of ``workdir`` once the drawings are
    done (``run_info.json``'s wall time: computing plus drawing)."""
    stage = _workdir.new_stage(workdir)
    try:
        _workdir.write_json(stage / "config.json", resolved)
        results = runner.run(config, stage)
    except BaseException:
        background.forget(stage)
        _workdir.discard(stage)
        raise
    computed = time.perf_counter() - start

    def commit(draw_seconds: float) -> None:
        _workdir.write_json(stage / "run_info.json", _run_info(computed + draw_seconds))
        _workdir.commit_stage(stage, workdir)

    if not background.defer(stage, commit, lambda: _workdir.discard(stage), str(workdir)):
        commit(0.0)  # the runner drew nothing
    return results


def _run_resumable(
    runner: ModuleType,
    config: ml_collections.ConfigDict,
    resolved: dict[str, Any],
    workdir: Path,
    overwrite: bool,
    resume: bool,
) -> dict[str, Any]:
    if hasattr(runner, "check_inputs"):
        runner.check_inputs(config)  # a corrupt file or failed download stops here
    if not _distributed.is_writer():
        # Another process of a multi-process run: the runner reads a private copy of the
        # workdir (taken before process 0 changes it) and shares its checkpoints.
        with _distributed.private_workdir(workdir, copy=resume) as private:
            _distributed.barrier("workdir read")
            _distributed.barrier("workdir prepared")
            _workdir.write_json(private / "config.json", resolved)
            return runner.run(config, private, resume=resume)
    _distributed.barrier("workdir read")
    start = time.perf_counter()
    existed, was_empty = workdir.exists(), _workdir.is_empty(workdir)
    saved_config = workdir / "config.json"
    old_config = saved_config.read_bytes() if resume and saved_config.is_file() else None
    aside = None
    if overwrite and not was_empty and not resume:
        aside = _workdir.set_aside(workdir)
        print(f"previous run moved to {aside} until the new one succeeds", file=sys.stderr)
    before = _workdir.checkpoints(workdir)
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        _workdir.write_json(saved_config, resolved)
        _distributed.barrier("workdir prepared")
        results = runner.run(config, workdir, resume=resume)
        _workdir.write_json(workdir / "run_info.json", _run_info(time.perf_counter() - start))
    except BaseException:
        if _workdir.checkpoints(workdir) == before:  # failed before its first checkpoint: undo
            if aside is not None:
                _workdir.put_back(aside, workdir)
            elif was_empty:
                _workdir.clear(workdir, existed=existed)
            elif old_config is not None:
                _workdir.atomic_write_bytes(saved_config, old_config)
            print(
                f"the run stopped before its first checkpoint; {workdir} is as it was before",
                file=sys.stderr,
            )
        elif aside is not None:
            print(f"the previous run is kept in {aside}", file=sys.stderr)
        raise
    if aside is not None:
        _workdir.discard(aside)
    return results


def redraw(workdir: str | Path) -> list[Path]:
    """Redraw a finished run's figures from its saved results (no recomputation)."""
    workdir = Path(workdir).resolve()
    config = _config.config_from_dict(_workdir.read_json(workdir / "config.json"))
    runner = runner_module(config)
    if not hasattr(runner, "plot"):
        raise _config.ConfigError(f"runner {config.runner!r} draws no figures")
    return runner.plot(workdir)


def _describe(path: Path) -> str:
    import ast

    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _cache_flags() -> argparse.ArgumentParser:
    """``--compilation-cache DIR`` and ``--no-compilation-cache``, for the commands that compile."""
    flags = argparse.ArgumentParser(add_help=False)
    group = flags.add_mutually_exclusive_group()
    group.add_argument(
        "--compilation-cache",
        metavar="DIR",
        help="folder of JAX's persistent compilation cache (default: $"
        f"{_compilation_cache.ENV}, else $JAX_COMPILATION_CACHE_DIR, else "
        "$XDG_CACHE_HOME/mcgrad/jax, i.e. ~/.cache/mcgrad/jax); a repeated run loads its "
        f"compiled programs from there. {_compilation_cache.ENV}=0 turns it off",
    )
    group.add_argument(
        "--no-compilation-cache",
        dest="compilation_cache",
        action="store_const",
        const="off",
        help="compile everything afresh and keep nothing on disk",
    )
    return flags


def _distributed_flags() -> argparse.ArgumentParser:
    """The flags of a multi-process run (``jax.distributed``), for ``run`` and ``reproduce``."""
    flags = argparse.ArgumentParser(add_help=False)
    group = flags.add_argument_group(
        "multi-process (jax.distributed)",
        "Give all three on every process, or none: a cluster JAX detects (SLURM under srun, "
        "Open MPI under mpirun, TPU pods) is joined by itself. Process 0 writes the workdir.",
    )
    group.add_argument(
        "--coordinator-address",
        metavar="HOST:PORT",
        help=f"process 0's host and a free port on it (default: ${_distributed.COORDINATOR_ENV})",
    )
    group.add_argument(
        "--num-processes",
        type=int,
        metavar="N",
        help=f"how many processes take part (default: ${_distributed.NUM_PROCESSES_ENV})",
    )
    group.add_argument(
        "--process-id",
        type=int,
        metavar="I",
        help=f"this process's index, 0 .. N-1 (default: ${_distributed.PROCESS_ID_ENV})",
    )
    group.add_argument(
        "--no-distributed",
        action="store_true",
        help="do not join a detected cluster: a single-process run "
        f"(also ${_distributed.OFF_ENV}=0)",
    )
    return flags


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m experiments",
        description="Run the experiments of this project (Mohamed et al. 2020 and more).",
    )
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser(
        "run",
        parents=[_cache_flags(), _distributed_flags()],
        help="run one config into a workdir",
        epilog="Override any config value with --config.<key>=<value>.",
    )
    r.add_argument("config", help="config name (see `list`) or path to a config file")
    r.add_argument("--workdir", required=True, help="folder for the results")
    r.add_argument("--overwrite", action="store_true", help="replace results already there")
    r.add_argument("--resume", action="store_true", help="continue an interrupted run")
    sub.add_parser("list", help="list the bundled configs")
    sh = sub.add_parser(
        "show",
        help="print a config's keys and values",
        epilog="Overrides --config.<key>=<value> are applied (and checked) first.",
    )
    sh.add_argument("config", help="config name (see `list`) or path to a config file")
    pl = sub.add_parser("plot", help="redraw a run's figures from its saved results")
    pl.add_argument("workdir")
    rep = sub.add_parser(
        "reproduce",
        parents=[_cache_flags(), _distributed_flags()],
        help="run several configs, one workdir each",
    )
    rep.add_argument(
        "configs",
        nargs="*",
        help=f"config names (default: Figures 2-7, run as {' '.join(DEFAULT_REPRODUCE)})",
    )
    rep.add_argument(
        "--outdir", required=True, help="parent folder; each run goes in <outdir>/<name>"
    )
    rep.add_argument("--overwrite", action="store_true", help="replace results already there")
    rep.add_argument(
        "--skip-existing",
        action="store_true",
        help="skip a config whose workdir holds a finished run of the same config",
    )
    est = sub.add_parser(
        "estimators", help="print what each estimator declares, as a Markdown table"
    )
    est.add_argument(
        "specs", nargs="*", help="registry specs (default: every base and baselined REINFORCE)"
    )
    return p


def split_argv(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Parse a command line into its arguments and its ``--config.`` overrides (prefix dropped).

    Raises ``SystemExit`` (argparse's usage error, status 2) for an unknown command or flag.
    """
    overrides = [a[len("--config.") :] for a in argv if a.startswith("--config.")]
    args = _parser().parse_args([a for a in argv if not a.startswith("--config.")])
    return args, overrides


def show_lines(config: ml_collections.ConfigDict) -> list[str]:
    """``key = value`` for every (dotted) key of ``config``; values as Python literals."""
    flat = _config.flat_items(config)
    width = max(len(k) for k in flat)
    return [f"{k:<{width}} = {v!r}" for k, v in flat.items()]


def _resume_command(argv: list[str]) -> str:
    kept = [a for a in argv if a != "--overwrite"]
    if "--resume" not in kept:
        kept.append("--resume")
    return shlex.join(["python", "-m", "experiments", *kept])


def _interrupted(argv: list[str], args: argparse.Namespace, error: KeyboardInterrupt) -> int:
    """Say what an interrupted command left behind and how to go on; the exit status."""
    what = "stopped by SIGTERM" if isinstance(error, Terminated) else "interrupted"
    status = 128 + signal.SIGTERM if isinstance(error, Terminated) else 130
    if args.command == "run":
        workdir = Path(args.workdir).resolve()
        if _workdir.checkpoints(workdir) and (workdir / "config.json").is_file():
            print(
                f"{what}; the last checkpoint is kept in {workdir}. Continue with:\n"
                f"  {_resume_command(argv)}",
                file=sys.stderr,
            )
            return status
        print(f"{what}; earlier results in {workdir} are untouched", file=sys.stderr)
        return status
    if args.command == "reproduce":
        print(
            f"{what}; finished configs are kept in {Path(args.outdir).resolve()}, earlier "
            "results are untouched; the same command with --skip-existing goes on from there",
            file=sys.stderr,
        )
        return status
    print(what, file=sys.stderr)
    return status


def _reproduce(args: argparse.Namespace, overrides: list[str]) -> int:
    # A config named twice runs once (its workdir is one).
    names = list(dict.fromkeys(args.configs or DEFAULT_REPRODUCE))
    # Load and check them all first: bad input fails before any run. In a multi-process run
    # process 0 decides which to run, for all.
    chosen = _distributed.agree(lambda: _reproduce_which(args, overrides, names), AGREED_ERRORS)
    configs = []
    for name in chosen:
        config = _config.load_config(name)
        _config.apply_overrides(config, overrides)
        configs.append((name, config))
    start = time.perf_counter()
    workdirs = {str((Path(args.outdir) / name).resolve()): name for name, _ in configs}

    def report(done: list[str]) -> None:
        for workdir in done:
            print(f"{workdirs[workdir]}: results in {workdir}")

    with _background_drawing(configs) as background:
        for name, config in configs:
            workdir = Path(args.outdir) / name
            run_experiment(config, workdir, overwrite=args.overwrite)
            if background is not None:
                report(background.settle())  # the earlier runs whose figures are drawn
            elif _distributed.is_writer():
                print(f"{name}: results in {workdir.resolve()}")
        if background is not None:
            report(background.settle(block=True))
    if _distributed.is_writer():
        print(f"reproduced {len(configs)} configs in {time.perf_counter() - start:.1f} s")
    return 0


def _background_drawing(
    configs: list[tuple[str, ml_collections.ConfigDict]],
) -> contextlib.AbstractContextManager[_drawing.Background | None]:
    """Figures drawn in a second process while the next config computes (``_drawing``), for
    several configs in one process; ``MCGRAD_BACKGROUND_DRAWING=0`` draws them in turn."""
    if (
        len(configs) < 2
        or _distributed.is_multiprocess()
        or os.environ.get("MCGRAD_BACKGROUND_DRAWING", "1") == "0"
    ):
        return contextlib.nullcontext()
    modules = tuple(dict.fromkeys(runner_module(config).__name__ for _, config in configs))
    return _drawing.background(modules)


def _reproduce_which(args: argparse.Namespace, overrides: list[str], names: list[str]) -> list[str]:
    """The configs of ``names`` that ``reproduce`` runs (checked; finished ones skipped)."""
    chosen = []
    for name in names:
        config = _config.load_config(name)
        _config.apply_overrides(config, overrides)
        runner = runner_module(config)
        if hasattr(runner, "validate"):
            runner.validate(config)
        workdir = (Path(args.outdir) / name).resolve()
        resolved = _config.config_to_dict(config)
        if args.skip_existing and _workdir.is_finished(workdir, resolved):
            print(f"{name}: skipped, {workdir} holds a finished run of this config")
            continue
        _workdir.check_workdir(
            workdir,
            resolved,
            overwrite=args.overwrite,
            resume=False,
            resumable=getattr(runner, "RESUMABLE", False),
        )
        chosen.append(name)
    return chosen


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m experiments`` and the ``mcgrad`` console script."""
    argv = sys.argv[1:] if argv is None else argv
    args, overrides = split_argv(argv)
    joined = False
    try:
        if args.command in ("run", "reproduce"):
            joined = _join_cluster(args)  # before anything starts JAX's backend
        with sigterm_as_interrupt():
            if args.command == "list":
                for name, path in _config.available_configs().items():
                    print(f"{name:24s} {_describe(path)}")
                return 0
            if args.command == "show":
                config = _config.load_config(args.config)
                _config.apply_overrides(config, overrides)
                print(f"# {args.config}: {_config.resolve_config_path(args.config)}")
                print("\n".join(show_lines(config)))
                return 0
            if args.command == "plot":
                for path in redraw(args.workdir):
                    print(path)
                return 0
            if args.command == "run":
                config = _config.load_config(args.config)
                _config.apply_overrides(config, overrides)
                with _compilation_cache.compilation_cache(args.compilation_cache):
                    run_experiment(
                        config, args.workdir, overwrite=args.overwrite, resume=args.resume
                    )
                if _distributed.is_writer():
                    print(f"results in {Path(args.workdir).resolve()}")
                return 0
            if args.command == "reproduce":
                with _compilation_cache.compilation_cache(args.compilation_cache):
                    return _reproduce(args, overrides)
            if args.command == "estimators":
                import estimators

                print(estimators.registry.markdown_table(args.specs or None))
                return 0
    except (_config.ConfigError, _workdir.WorkdirError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        return _interrupted(argv, args, e)
    finally:
        if joined:
            _distributed.shutdown()
    return 1


def _join_cluster(args: argparse.Namespace) -> bool:
    """Join the multi-process job the flags or the environment name; whether there was one."""
    cluster = _distributed.detect(
        args.coordinator_address,
        args.num_processes,
        args.process_id,
        enabled=not args.no_distributed,
    )
    if cluster is None:
        return False
    # First estimators: its XLA_FLAGS workaround must precede JAX's backends, which the
    # multi-process helpers start (a plain run starts them later, in the runner).
    import estimators  # noqa: F401

    _distributed.initialize(cluster)
    print(
        f"process {cluster.process_id} of {cluster.num_processes} ({cluster.source}, "
        f"coordinator {cluster.coordinator_address})",
        file=sys.stderr,
    )
    return True
