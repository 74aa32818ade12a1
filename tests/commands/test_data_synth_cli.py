"""`trustmed data synth <name>`: one command per registered generator, whose files the real-format
loaders read."""

import pandas as pd
from typer.testing import CliRunner

from trustmed.cli import app
from trustmed.commands.data import synth_command, synth_group
from trustmed.data import load_dataset
from trustmed.data.mscxr import load_mscxr
from trustmed.data.synth import GENERATORS, Generator

runner = CliRunner()


def test_synth_digits_is_read_by_waterbirds_loader(tmp_path):
    out = tmp_path / "digits"
    result = runner.invoke(app, ["data", "synth", "digits", "--out", str(out), "--seed", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    manifest = load_dataset("coloreddigits", out)
    assert set(manifest["split"]) == {"train", "val", "test"}
    assert manifest["label"].isin([0, 1]).all() and len(manifest) > 1000


def test_synth_cxr_is_read_by_mscxr_loader(tmp_path):
    out = tmp_path / "cxr"
    args = ["data", "synth", "cxr", "--out", str(out), "--set", "n_images=12", "--set", "image_size=64"]
    result = runner.invoke(app, [*args, "--quiet"])
    assert result.exit_code == 0, result.output
    pairs = load_mscxr(out)
    assert len(pairs) >= 12


def test_synth_bad_key_writes_nothing(tmp_path):
    out = tmp_path / "cxr"
    result = runner.invoke(app, ["data", "synth", "cxr", "--out", str(out), "--set", "n_image=3"])
    assert result.exit_code == 2 and "did you mean 'n_images'" in result.output
    assert not out.exists()


def _tally(out_dir, *, seed: int = 0, rows: int = 3, label: str = "x"):
    out_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"label": [label] * rows, "seed": seed}).to_csv(out_dir / "tally.csv", index=False)
    return out_dir


def test_a_registered_generator_becomes_a_command(tmp_path):
    generators = {**GENERATORS, "tally": Generator(f"{__name__}:_tally", "Tally: a table.", "runs/tally")}
    group = synth_group(generators)
    assert [c.name for c in group.registered_commands] == [*GENERATORS, "tally"]
    out = tmp_path / "tally"
    result = runner.invoke(group, ["tally", "--out", str(out), "--set", "rows=2", "--seed", "7"])
    assert result.exit_code == 0, result.output
    assert pd.read_csv(out / "tally.csv").to_dict("list") == {"label": ["x", "x"], "seed": [7, 7]}
    assert "tally.csv" in result.output
    help_text = runner.invoke(group, ["tally", "--help"]).output
    assert (
        "Tally: a table." in help_text and "Example: trustmed data synth tally --out runs/tally" in help_text
    )
    bad = runner.invoke(group, ["tally", "--out", str(tmp_path / "bad"), "--set", "row=2"])
    assert bad.exit_code == 2 and "did you mean 'rows'" in bad.output
    assert not (tmp_path / "bad").exists()


def test_every_synth_command_help_ends_with_its_example():
    for name, generator in GENERATORS.items():
        doc = synth_command(name, generator).__doc__.strip().splitlines()
        assert doc[-1] == f"Example: trustmed data synth {name} --out {generator.out}"
        assert sum(line.startswith("Example:") for line in doc) == 1
