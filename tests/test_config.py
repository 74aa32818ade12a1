"""Config loading: YAML + --set overrides, unknown keys with suggestions, type errors naming the key."""

import pytest

from trustmed.config import Config, load_config, parse_overrides
from trustmed.errors import InputError


class Optim(Config):
    lr: float = 1e-3
    epochs: int = 3
    name: str = "adam"


class Run(Config):
    seed: int = 0
    optim: Optim = Optim()
    tags: list[str] = []


def test_defaults_yaml_and_overrides(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("optim:\n  lr: 0.5\n  epochs: 7\n")
    cfg = load_config(Run, cfg_file, ["optim.epochs=9", "seed=4", "tags=[a, b]"])
    assert cfg.optim.lr == 0.5
    assert cfg.optim.epochs == 9  # --set wins over the file
    assert cfg.seed == 4
    assert cfg.tags == ["a", "b"]


def test_unknown_nested_key_suggests_closest():
    with pytest.raises(InputError, match=r"unknown config key 'optim.epoch'.*did you mean 'optim.epochs'"):
        load_config(Run, None, ["optim.epoch=2"])


def test_unknown_top_level_key_in_file_names_file(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("sed: 1\n")
    with pytest.raises(InputError, match=r"unknown config key 'sed'.*c.yaml.*did you mean 'seed'"):
        load_config(Run, cfg_file)


def test_wrong_type_names_key_and_type():
    with pytest.raises(InputError, match=r"config key 'optim.epochs'.*integer.*'many'"):
        load_config(Run, None, ["optim.epochs=many"])


@pytest.mark.parametrize("bad", ["novalue", "=3", "a..b=1"])
def test_malformed_set(bad):
    with pytest.raises(InputError):
        parse_overrides([bad])


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(InputError, match="config file not found"):
        load_config(Run, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(InputError, match="mapping"):
        load_config(Run, bad)
