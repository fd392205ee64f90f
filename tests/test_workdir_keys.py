"""A config key added after runs were saved: those runs still resume and still count as finished."""

import json

from experiments import _workdir


def _saved(tmp_path, config: dict) -> None:
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "run_info.json").write_text("{}")


def test_an_added_key_at_its_earlier_value_is_no_difference(tmp_path):
    before = {"runner": "vae", "seed": 0, "model": {"latent_dim": 20}}
    now = {**before, "num_seeds": 1}
    assert _workdir.config_differences(before, now) == {}
    _saved(tmp_path, before)
    assert _workdir.is_finished(tmp_path, now)


def test_an_added_key_at_another_value_or_any_other_new_key_is_a_difference(tmp_path):
    before = {"runner": "vae", "seed": 0}
    assert _workdir.config_differences(before, {**before, "num_seeds": 3}) == {"num_seeds": (1, 3)}
    assert _workdir.config_differences(before, {**before, "new_key": 1}) == {
        "new_key": ("<absent>", 1)
    }
    _saved(tmp_path, before)
    assert not _workdir.is_finished(tmp_path, {**before, "num_seeds": 3})
    # A key saved but gone from the new config stays a difference.
    assert _workdir.config_differences({**before, "num_seeds": 1}, before) == {
        "num_seeds": (1, "<absent>")
    }
