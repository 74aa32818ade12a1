"""The command line as a whole: every capability is listed, and common options behave the same."""

import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from trustmed.cli import COMMAND_MODULES, app

runner = CliRunner()


def test_help_lists_every_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in ["audit", "data", "train", "demo", "debias", "distill", "ground", "causal"]:
        assert name in result.output, name
    assert set(COMMAND_MODULES) == {"audit", "data", "train", "demo", "debias", "distill", "ground", "causal"}


def test_console_script_runs():
    proc = subprocess.run([sys.executable, "-m", "trustmed.cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "audit" in proc.stdout


@pytest.mark.parametrize("command", [["train"], ["demo"]])
def test_unknown_config_key_is_exit_2_with_suggestion(tmp_path, command):
    out = tmp_path / "out"
    result = runner.invoke(app, [*command, "--set", "sed=3", "--out", str(out)])
    assert result.exit_code == 2
    assert "unknown config key 'sed'" in result.output and "did you mean 'seed'" in result.output
    assert not out.exists()


def test_missing_config_file_is_exit_2(tmp_path):
    result = runner.invoke(
        app, ["train", "--config", str(tmp_path / "none.yaml"), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2
    assert "config file not found" in result.output


def _leaf_commands(command, path=()):
    children = getattr(command, "commands", {})
    if not children:
        yield path, command
    for name, sub in children.items():
        yield from _leaf_commands(sub, (*path, name))


LEAVES = dict(_leaf_commands(typer.main.get_command(app)))


def _option_help(command, flag: str) -> str | None:
    return next((param.help for param in command.params if flag in getattr(param, "opts", [])), None)


@pytest.mark.parametrize("path", sorted(LEAVES), ids=" ".join)
def test_shared_option_help_holds_for_every_command(path):
    command = LEAVES[path]
    set_help = _option_help(command, "--set")
    if set_help is not None:
        # A placeholder, not a real key: no key exists in every command's config.
        assert "--set key.sub=value" in set_help
    out_help = _option_help(command, "--out")
    if out_help is not None and "directory" in out_help:
        assert "replaced as a whole" in out_help


def test_console_script_prints_version():
    import trustmed

    proc = subprocess.run([sys.executable, "-m", "trustmed.cli", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == f"trustmed {trustmed.__version__}"
