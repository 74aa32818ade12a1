"""`trustmed data synth digits|cxr`: the generators' files are readable by the real-format loaders."""

from typer.testing import CliRunner

from trustmed.cli import app
from trustmed.data import load_dataset
from trustmed.data.mscxr import load_mscxr

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
