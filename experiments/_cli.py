"""The one command line for every experiment.

    python -m experiments run <config> --workdir <dir> [--config.<key>=<value> ...]
    python -m experiments list
    python -m experiments plot <workdir>
    python -m experiments reproduce [<config> ...] --outdir <dir>

``<config>`` is a bundled config name (``fig2``) or a path to a config file. ``mcgrad`` is the
same command installed as a console script.
"""

from __future__ import annotations

import argparse
import importlib
import platform
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import ml_collections

from . import _config, _workdir


def runner_module(config: ml_collections.ConfigDict) -> ModuleType:
    """The module ``experiments.<config.runner>``, which has ``run(config, workdir)``."""
    name = config.runner
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
    }


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
    success; runners with ``RESUMABLE = True`` write into ``workdir`` (atomically, file by file)
    and may be continued with ``resume=True``.
    """
    workdir = Path(workdir).resolve()
    runner = runner_module(config)
    if hasattr(runner, "validate"):
        runner.validate(config)
    resolved = _config.config_to_dict(config)
    _workdir.check_workdir(workdir, resolved, overwrite=overwrite, resume=resume)
    start = time.perf_counter()
    if getattr(runner, "RESUMABLE", False):
        if overwrite and not _workdir.is_empty(workdir) and not resume:
            aside = _workdir.set_aside(workdir)
            print(f"previous run moved to {aside}", file=sys.stderr)
        workdir.mkdir(parents=True, exist_ok=True)
        _workdir.write_json(workdir / "config.json", resolved)
        results = runner.run(config, workdir, resume=resume)
        _workdir.write_json(workdir / "run_info.json", _run_info(time.perf_counter() - start))
        return results
    if resume:
        raise _config.ConfigError(f"runner {config.runner!r} is not resumable; drop --resume")
    with _workdir.staged(workdir) as stage:
        _workdir.write_json(stage / "config.json", resolved)
        results = runner.run(config, stage)
        _workdir.write_json(stage / "run_info.json", _run_info(time.perf_counter() - start))
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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m experiments",
        description="Run the experiments of this project (Mohamed et al. 2020 and more).",
    )
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser(
        "run",
        help="run one config into a workdir",
        epilog="Override any config value with --config.<key>=<value>.",
    )
    r.add_argument("config", help="config name (see `list`) or path to a config file")
    r.add_argument("--workdir", required=True, help="folder for the results")
    r.add_argument("--overwrite", action="store_true", help="replace results already there")
    r.add_argument("--resume", action="store_true", help="continue an interrupted run")
    sub.add_parser("list", help="list the bundled configs")
    pl = sub.add_parser("plot", help="redraw a run's figures from its saved results")
    pl.add_argument("workdir")
    rep = sub.add_parser("reproduce", help="run several configs, one workdir each")
    rep.add_argument("configs", nargs="*", help="config names (default: fig2 ... fig7)")
    rep.add_argument(
        "--outdir", required=True, help="parent folder; each run goes in <outdir>/<name>"
    )
    rep.add_argument("--overwrite", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m experiments`` and the ``mcgrad`` console script."""
    argv = sys.argv[1:] if argv is None else argv
    overrides = [a[len("--config.") :] for a in argv if a.startswith("--config.")]
    args = _parser().parse_args([a for a in argv if not a.startswith("--config.")])
    try:
        if args.command == "list":
            for name, path in _config.available_configs().items():
                print(f"{name:24s} {_describe(path)}")
            return 0
        if args.command == "plot":
            for path in redraw(args.workdir):
                print(path)
            return 0
        if args.command == "run":
            config = _config.load_config(args.config)
            _config.apply_overrides(config, overrides)
            run_experiment(config, args.workdir, overwrite=args.overwrite, resume=args.resume)
            print(f"results in {Path(args.workdir).resolve()}")
            return 0
        if args.command == "reproduce":
            names = args.configs or [f"fig{i}" for i in range(2, 8)]
            configs = []
            for name in names:  # Load and check them all first: bad input fails before any run.
                config = _config.load_config(name)
                _config.apply_overrides(config, overrides)
                runner = runner_module(config)
                if hasattr(runner, "validate"):
                    runner.validate(config)
                _workdir.check_workdir(
                    (Path(args.outdir) / name).resolve(),
                    _config.config_to_dict(config),
                    overwrite=args.overwrite,
                    resume=False,
                )
                configs.append((name, config))
            start = time.perf_counter()
            for name, config in configs:
                workdir = Path(args.outdir) / name
                run_experiment(config, workdir, overwrite=args.overwrite)
                print(f"{name}: results in {workdir.resolve()}")
            print(f"reproduced {len(configs)} configs in {time.perf_counter() - start:.1f} s")
            return 0
    except (_config.ConfigError, _workdir.WorkdirError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; earlier results are untouched", file=sys.stderr)
        return 130
    return 1
