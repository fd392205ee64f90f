"""The command line's persistent compilation cache (``experiments._compilation_cache``).

Where the cache goes (flag, ``$MCGRAD_COMPILATION_CACHE``, JAX's own setting, the user's cache
folder), that the switches turn it off, that an unusable folder warns and the run goes on, and
that a ``python -m experiments`` child fills the folder it is given. The test session's own
cache (``conftest.py``) is JAX's setting here, so the suite never writes to ``~/.cache``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from experiments import _cli
from experiments import _compilation_cache as cc

REPO = Path(__file__).resolve().parents[1]
# fig2, pathwise only, on a 3-point grid of k with 100 samples: one small program.
TINY_FIG2 = [
    "--config.num_samples=100",
    "--config.grid.quadratic.num=3",
    "--config.estimators=('pathwise',)",
    "--config.progress=false",
]


@pytest.fixture
def restore_jax_cache_config(monkeypatch: pytest.MonkeyPatch):
    """Whatever a test sets, the session's cache settings are back afterwards."""
    monkeypatch.delenv(cc.ENV, raising=False)
    with cc.compilation_cache(jax.config.jax_compilation_cache_dir or "off"):
        yield


def test_default_is_the_user_cache_folder(tmp_path, monkeypatch, restore_jax_cache_config):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    jax.config.update("jax_compilation_cache_dir", None)  # no $JAX_COMPILATION_CACHE_DIR
    path = cc.configure()
    assert path == tmp_path / "xdg" / "mcgrad" / "jax" and path.is_dir()
    assert jax.config.jax_compilation_cache_dir == str(path)
    assert jax.config.jax_enable_compilation_cache
    # Every program is kept, however quick to compile or small.
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0
    assert jax.config.jax_persistent_cache_min_entry_size_bytes == 0


def test_jax_setting_is_kept_and_the_tests_use_their_own(tmp_path, restore_jax_cache_config):
    session = jax.config.jax_compilation_cache_dir
    assert session and Path(session).resolve() != cc.default_dir().resolve()  # not ~/.cache
    assert cc.resolve() == Path(session)
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "jax"))
    assert cc.configure() == tmp_path / "jax"


def test_env_and_flag_move_it_or_turn_it_off(tmp_path, monkeypatch, restore_jax_cache_config):
    monkeypatch.setenv(cc.ENV, str(tmp_path / "env"))
    assert cc.configure() == tmp_path / "env"
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "env")
    assert cc.configure(str(tmp_path / "flag")) == tmp_path / "flag"  # the flag wins
    for off in ("0", "off", "False", "no"):
        monkeypatch.setenv(cc.ENV, off)
        jax.config.update("jax_enable_compilation_cache", True)
        assert cc.configure() is None
        assert not jax.config.jax_enable_compilation_cache
    monkeypatch.delenv(cc.ENV)
    jax.config.update("jax_enable_compilation_cache", True)
    args, _ = _cli.split_argv(["reproduce", "--outdir", "x", "--no-compilation-cache"])
    assert cc.configure(args.compilation_cache) is None
    assert not jax.config.jax_enable_compilation_cache
    args, _ = _cli.split_argv(["run", "fig2", "--workdir", "x", "--compilation-cache", "d"])
    assert args.compilation_cache == "d"
    with pytest.raises(SystemExit):  # one or the other
        _cli.split_argv(
            ["run", "fig2", "--workdir", "x", "--compilation-cache", "d", "--no-compilation-cache"]
        )


def test_context_restores_previous_settings(tmp_path, restore_jax_cache_config):
    before = jax.config.jax_compilation_cache_dir
    with cc.compilation_cache(str(tmp_path / "inner")) as path:
        assert jax.config.jax_compilation_cache_dir == str(path)
    assert jax.config.jax_compilation_cache_dir == before


def test_unusable_folder_warns_and_the_run_goes_on(tmp_path, restore_jax_cache_config):
    blocker = tmp_path / "a_file"
    blocker.write_text("")  # a folder under a file cannot be made, even by root
    bad = blocker / "cache"
    args = ["reproduce", "fig2", "--outdir", str(tmp_path / "out"), "--compilation-cache", str(bad)]
    with pytest.warns(UserWarning, match="not usable") as record:
        assert _cli.main(args + TINY_FIG2) == 0
    assert len([w for w in record if "compilation cache" in str(w.message)]) == 1
    assert (tmp_path / "out" / "fig2" / "results.json").is_file()
    assert not bad.exists()


def test_a_cli_run_fills_the_folder_it_is_given(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != cc.ENV}
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")  # where a stray default would land
    cache = tmp_path / "cache"
    command = [sys.executable, "-m", "experiments", "reproduce", "fig2"]
    out = ["--outdir", str(tmp_path / "out")]
    subprocess.run(
        [*command, *out, "--compilation-cache", str(cache), *TINY_FIG2],
        cwd=REPO, env=env, check=True, capture_output=True,
    )  # fmt: skip
    assert any(cache.iterdir())  # the compiled programs
    assert not (tmp_path / "xdg" / "mcgrad").exists()
