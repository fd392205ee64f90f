"""Every snippet of the README works as written.

Each ```python block runs on its own, in a fresh namespace (so none leans on an earlier one).
Each ```bash line that calls ``python -m experiments`` (or ``mcgrad``) is parsed by the command
line's own parser, its configs loaded, its ``--config.`` overrides applied and the resulting
configs validated by their runners, without running the experiments (the runs themselves are
covered at a tiny size by the runners' tests). A command that fails any of this fails here.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from experiments import _cli, _config

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(language: str) -> list[tuple[int, str]]:
    """``(line number, code)`` of every fenced block of ``language`` in the README."""
    text = README.read_text()
    pattern = re.compile(rf"^```{language}\n(.*?)^```$", re.DOTALL | re.MULTILINE)
    return [(text[: m.start()].count("\n") + 1, m.group(1)) for m in pattern.finditer(text)]


def _commands() -> list[tuple[int, list[str]]]:
    """Each ``python -m experiments ...`` / ``mcgrad ...`` command of the bash blocks: its
    line and its arguments (comments dropped, ``&&`` chains split)."""
    found = []
    for start, code in _blocks("bash"):
        for offset, line in enumerate(code.splitlines()):
            words = shlex.split(line, comments=True)
            chains, current = [], []
            for w in [*words, "&&"]:
                if w in ("&&", "||", ";"):
                    chains.append(current)
                    current = []
                else:
                    current.append(w)
            for cmd in chains:
                if cmd[:3] == ["python", "-m", "experiments"]:
                    found.append((start + 1 + offset, cmd[3:]))
                elif cmd[:1] == ["mcgrad"]:
                    found.append((start + 1 + offset, cmd[1:]))
    return found


PYTHON_BLOCKS = _blocks("python")
COMMANDS = _commands()


def test_the_readme_has_snippets_to_check():
    assert len(PYTHON_BLOCKS) >= 2 and len(COMMANDS) >= 10
    assert any(args[0] == "reproduce" for _, args in COMMANDS)  # the first command


@pytest.mark.parametrize(("line", "code"), PYTHON_BLOCKS, ids=[f"L{n}" for n, _ in PYTHON_BLOCKS])
def test_python_snippet_runs_on_its_own(line, code):
    exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "__readme__"})


@pytest.mark.parametrize(
    ("line", "argv"),
    COMMANDS,
    ids=[f"L{n}-{a[0]}-{a[1] if len(a) > 1 else ''}" for n, a in COMMANDS],
)
def test_command_parses_and_its_configs_validate(line, argv):
    where = f"README.md:{line}: python -m experiments {shlex.join(argv)}"
    try:
        args, overrides = _cli.split_argv(argv)
    except SystemExit:
        pytest.fail(f"{where}: the command line refuses it (see the usage message above)")
    if args.command in ("run", "show"):
        names = [args.config]
    elif args.command == "reproduce":
        names = args.configs or list(_cli.DEFAULT_REPRODUCE)
    else:
        assert not overrides, f"{where}: {args.command} takes no --config. overrides"
        return
    for name in names:
        try:
            config = _config.load_config(name)
            _config.apply_overrides(config, overrides)
            runner = _cli.runner_module(config)
            if hasattr(runner, "validate"):
                runner.validate(config)
        except ValueError as e:
            pytest.fail(f"{where}: {e}")


def test_a_bad_command_would_fail_here():
    """The checks above reject an unknown config, key, value type and flag."""
    for argv in (
        ["run", "fig2", "--workdir", "w", "--config.num_sample=5"],
        ["run", "fig2", "--workdir", "w", "--config.num_samples=many"],
        ["run", "fig99", "--workdir", "w"],
    ):
        args, overrides = _cli.split_argv(argv)
        with pytest.raises(ValueError):
            config = _config.load_config(args.config)
            _config.apply_overrides(config, overrides)
    with pytest.raises(SystemExit):
        _cli.split_argv(["reproduce", "--outdir", "o", "--skip-exisiting"])
