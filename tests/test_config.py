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


def test_duplicate_yaml_keys_are_refused_with_their_lines(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("seed: 1\noptim:\n  lr: 0.5\n  lr: 0.1\n")
    with pytest.raises(InputError, match=r"c.yaml: key 'lr' appears twice \(lines 3 and 4\)"):
        load_config(Run, cfg_file)
    cfg_file.write_text("seed: 1\noptim:\n  lr: 0.5\nseed: 2\n")
    with pytest.raises(InputError, match=r"key 'seed' appears twice \(lines 1 and 4\)"):
        load_config(Run, cfg_file)
    with pytest.raises(InputError, match=r"--set 'optim=\{lr: 1, lr: 2\}': key 'lr' appears twice"):
        load_config(Run, None, ["optim={lr: 1, lr: 2}"])
    cfg_file.write_text("base: &b {lr: 0.5}\noptim:\n  <<: *b\n  epochs: 2\n")  # a merge key is not a repeat
    assert parse_overrides(["optim.lr=0.5"]) == {"optim": {"lr": 0.5}}


@pytest.mark.parametrize("n_boot, ok", [(0, True), (1, False), (199, False), (200, True), (1000, True)])
def test_n_boot_is_zero_or_enough_for_a_95_percent_interval(n_boot, ok):
    from trustmed.config import NBoot

    class Audit(Config):
        n_boot: NBoot = 1000

    if ok:
        assert load_config(Audit, None, [f"n_boot={n_boot}"]).n_boot == n_boot
    else:
        with pytest.raises(InputError, match="must be 0 .* or at least 200"):
            load_config(Audit, None, [f"n_boot={n_boot}"])
