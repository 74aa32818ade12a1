"""docs/own-model.md runs as written: its model file, its spec file and every command in it, on a
CheXpert-format fixture (the image size scaled to 32 px and the bootstrap / epochs scaled down for
the CI budget)."""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from trustmed.cli import app

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.fixtures import real_formats  # noqa: E402

DOC = Path(__file__).resolve().parents[1] / "docs" / "own-model.md"
SCALE_DOWN = {"audit": ["--n-boot", "0"], "debias": ["--set", "epochs=1", "--set", "n_boot=0"]}


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


@pytest.mark.slow
def test_the_own_model_guide_runs_as_written(tmp_path, monkeypatch):
    text = DOC.read_text()
    (python,) = _blocks(text, "python")
    (spec,) = _blocks(text, "yaml")
    commands = [
        line for block in _blocks(text, "bash") for line in block.splitlines() if line.startswith("trustmed ")
    ]
    assert len(commands) == 4
    monkeypatch.chdir(tmp_path)
    real_formats.make_chexpert(tmp_path / "data" / "CheXpert-v1.0-small")
    Path("my_net.py").write_text(python)
    Path("model.yaml").write_text(spec.replace("image_size: 224", "image_size: 32"))
    monkeypatch.syspath_prepend(str(tmp_path))
    import my_net

    torch.manual_seed(0)
    torch.save(my_net.build().state_dict(), "my_net.pt")
    for command in commands:
        args = shlex.split(command)[1:]
        result = CliRunner().invoke(app, args + SCALE_DOWN.get(args[0], []))
        assert result.exit_code == 0, f"{command}\n{result.output}"
    audit = json.loads(Path("runs/own_audit_sex/metrics.json").read_text())
    assert {"female", "male"} <= set(audit["groups"])
    summary = json.loads(Path("runs/own_swift/debias.json").read_text())
    assert summary["fit_split"] == "external" and "test" in summary["splits"]
    from trustmed.models import load_checkpoint

    debiased, spec_out, _ = load_checkpoint("runs/own_swift")
    original, _, _ = load_checkpoint("model.yaml")
    x = torch.rand(4, 1, 32, 32)
    keep = [i for i in range(14) if i != 10]
    assert spec_out.output_index == 10
    assert torch.allclose(
        debiased.eval().all_logits(x)[:, keep], original.eval().all_logits(x)[:, keep], atol=1e-5
    )
    assert Path("runs/own_compare/comparison.csv").is_file()
