import pytest

from polyfuse.config import Config, available_sizes
from polyfuse.errors import ConfigError


def test_named_sizes_are_data_and_keys_next_to_them_win():
    assert {"tiny", "small", "base"} <= set(available_sizes())
    small = Config.from_dict({"model": {"size": "small"}}).model
    assert (small.d_model, small.n_layers) == (128, 4)
    custom = Config.from_dict({"model": {"size": "small", "n_layers": 1}}).model
    assert (custom.d_model, custom.n_layers) == (128, 1)


def test_a_newly_named_size_replaces_width_and_depth():
    cfg = Config.from_dict({"model": {"size": "tiny"}}).merged({"model": {"size": "base"}})
    assert (cfg.model.d_model, cfg.model.n_layers, cfg.model.n_heads) == (256, 6, 8)


@pytest.mark.parametrize("bad, message", [
    ({"model": {"dmodel": 3}}, "did you mean 'd_model'"),
    ({"model": {"d_model": 30, "n_heads": 4}}, "divisible"),
    ({"model": {"fusion": "mix"}}, "fusion"),
    ({"model": {"size": "huge"}}, "unknown model size"),
    ({"image": {"size": 30, "patch": 8}}, "multiple"),
    ({"train": {"epochs": "ten"}}, "must be int"),
    ({"train": {"on_bad_row": "ignore"}}, "on_bad_row"),
    ({"schema": {"text": ["a"], "image": ["a"]}}, "both"),
    ({"nonsense": {}}, "unknown config key"),
])
def test_bad_configs_are_refused_at_load(bad, message):
    with pytest.raises(ConfigError, match=message):
        Config.from_dict(bad)


def test_config_round_trips_through_json(tmp_path):
    cfg = Config.from_dict({"model": {"size": "tiny", "fusion": "late"}, "schema": {"text": "caption"}})
    cfg.save(tmp_path / "c.json")
    again = Config.load(tmp_path / "c.json")
    assert again == cfg and again.schema.text == ["caption"]
