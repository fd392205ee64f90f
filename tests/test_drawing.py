"""Figures drawn in a second process while the next run computes (``experiments._drawing``).

``reproduce`` of several configs commits each run's folder only once its figures are drawn,
with the same files as drawing in turn; a failed drawing fails its run (folder removed, error
raised, earlier runs kept), and an interrupt discards what is not committed.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from experiments import _cli, _drawing, _workdir

TINY = [  # fig6 and fig7 share these keys (their costs)
    "--config.grid.quadratic.num=4",
    "--config.grid.exp_quadratic.num=4",
    "--config.num_samples=2000",
    "--config.num_nodes=64",
    "--config.progress=false",
]

PLOTS = """
import os
import time
from pathlib import Path


def plot(workdir):
    (Path(workdir) / "drawn_by.txt").write_text(str(os.getpid()))


def broken(workdir):
    raise RuntimeError("the drawing broke")


def slow(workdir):  # as save_figure does, it makes the folder it writes into
    time.sleep(0.5)
    Path(workdir).mkdir(parents=True, exist_ok=True)
    (Path(workdir) / "late.txt").write_text("late")
"""


@pytest.fixture
def user_plots(tmp_path, monkeypatch):
    """A module of plot functions the spawned worker imports (it inherits ``sys.path``)."""
    (tmp_path / "user_plots.py").write_text(PLOTS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "user_plots", raising=False)
    import user_plots

    return user_plots


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_reproduce_draws_in_the_background_with_the_same_files(tmp_path, monkeypatch, capsys):
    out_bg, out_seq = tmp_path / "bg", tmp_path / "seq"
    assert _cli.main(["reproduce", "fig6", "fig7", "--outdir", str(out_bg), *TINY]) == 0
    printed = capsys.readouterr().out
    assert printed.index("fig6: results in") < printed.index("fig7: results in")
    monkeypatch.setenv("MCGRAD_BACKGROUND_DRAWING", "0")
    assert _cli.main(["reproduce", "fig6", "fig7", "--outdir", str(out_seq), *TINY]) == 0
    for name in ("fig6", "fig7"):
        for file in ("results.json", "results.csv", "config.json", f"{name}.png"):
            assert (out_bg / name / file).read_bytes() == (out_seq / name / file).read_bytes()
        assert (out_bg / name / f"{name}.pdf").stat().st_size > 0
        info = _workdir.read_json(out_bg / name / "run_info.json")
        assert info["wall_time_s"] > 0
    assert _leftovers(out_bg) == [] and _leftovers(out_seq) == []


def test_a_run_is_committed_after_its_drawing_which_is_another_process(tmp_path, user_plots):
    committed = []
    with _drawing.background() as background:
        stage = _workdir.new_stage(tmp_path / "run")
        _drawing.draw(user_plots.plot, stage)
        assert background.defer(
            stage,
            lambda s: (committed.append(s), _workdir.commit_stage(stage, tmp_path / "run")),
            lambda: _workdir.discard(stage),
            "run",
        )
        assert not (tmp_path / "run").exists()  # held until settled
        assert background.settle(block=True) == ["run"]
    assert (tmp_path / "run" / "drawn_by.txt").read_text() != str(os.getpid())
    assert committed[0] > 0  # the drawing's seconds
    assert _drawing.active() is None
    _drawing.draw(user_plots.plot, tmp_path / "run")  # no background: drawn here
    assert (tmp_path / "run" / "drawn_by.txt").read_text() == str(os.getpid())


def _deferred_run(background, tmp_path: Path, name: str, plot) -> Path:
    stage = _workdir.new_stage(tmp_path / name)
    _drawing.draw(plot, stage)
    background.defer(
        stage,
        lambda s: _workdir.commit_stage(stage, tmp_path / name),
        lambda: _workdir.discard(stage),
        name,
    )
    return stage


def test_a_failed_drawing_fails_its_run_and_keeps_the_earlier_ones(tmp_path, user_plots):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(RuntimeError, match="the drawing broke"):
        with _drawing.background() as background:
            _deferred_run(background, out, "first", user_plots.plot)
            _deferred_run(background, out, "second", user_plots.broken)
            _deferred_run(background, out, "third", user_plots.plot)
            background.settle(block=True)
    assert (out / "first" / "drawn_by.txt").is_file()
    assert not (out / "second").exists() and not (out / "third").exists()
    assert _leftovers(out) == []
    assert _drawing.active() is None


def test_an_interrupt_discards_the_runs_not_yet_committed(tmp_path, user_plots):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(KeyboardInterrupt):
        with _drawing.background() as background:
            _deferred_run(background, out, "first", user_plots.plot)
            assert background.settle(block=True) == ["first"]
            _deferred_run(background, out, "second", user_plots.plot)
            raise KeyboardInterrupt
    assert (out / "first" / "drawn_by.txt").is_file()
    assert not (out / "second").exists()
    assert _leftovers(out) == []


def test_a_failed_run_waits_for_its_running_drawing_before_its_folder_goes(tmp_path, user_plots):
    with _drawing.background() as background:
        _deferred_run(background, tmp_path, "warm", user_plots.plot)  # the worker is up
        assert background.settle(block=True) == ["warm"]
        stage = _workdir.new_stage(tmp_path / "failed")
        _drawing.draw(user_plots.slow, stage)
        time.sleep(0.2)  # handed to the worker: no longer cancellable
        background.forget(stage)
        _workdir.discard(stage)
        time.sleep(0.6)
        assert not stage.exists()  # the drawing finished before the folder was removed
    assert _leftovers(tmp_path) == []


def test_only_module_level_functions_are_drawn_in_the_background(tmp_path):
    with _drawing.background() as background:
        with pytest.raises(ValueError, match="module-level"):
            background.submit(lambda w: None, tmp_path)
