"""The top-level API: ``import trustmed`` is light, and the main entry points are importable from it."""

import importlib
import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

import trustmed
from trustmed.cli import app

HOMES = {
    "run_audit": "trustmed.audit",
    "fairness_report": "trustmed.metrics.fairness",
    "SWiFT": "trustmed.debias",
    "GroupDistiller": "trustmed.distill",
    "ZeroShotGrounder": "trustmed.grounding",
    "TunedPrompt": "trustmed.grounding",
    "train_prompt": "trustmed.grounding",
    "load_ldm": "trustmed.grounding",
    "CoVAE": "trustmed.causal",
    "fit_covae": "trustmed.causal",
    "score_order": "trustmed.causal",
    "load_dataset": "trustmed.data",
    "train_classifier": "trustmed.train.classifier",
    "load_checkpoint": "trustmed.models",
}

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _python(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return proc.stdout.strip()


def test_import_does_not_load_torch():
    assert _python("import trustmed, sys; print('torch' in sys.modules)") == "False"


def test_first_use_imports_the_owning_package():
    code = (
        "import sys, trustmed; before = 'trustmed.causal' in sys.modules; trustmed.CoVAE; "
        "print(before, 'trustmed.causal' in sys.modules)"
    )
    assert _python(code) == "False True"


@pytest.mark.parametrize("name", sorted(HOMES))
def test_every_public_name_is_its_home_object(name):
    home = importlib.import_module(HOMES[name])
    assert getattr(trustmed, name) is getattr(home, name)


def test_from_import_of_every_name():
    namespace: dict = {}
    exec(f"from trustmed import {', '.join(HOMES)}", namespace)
    assert all(callable(namespace[name]) for name in HOMES)


def test_dir_and_all_list_the_api():
    assert set(HOMES) <= set(dir(trustmed))
    assert set(HOMES) | {"InputError", "__version__"} == set(trustmed.__all__)


def test_unknown_name_is_attribute_error():
    with pytest.raises(AttributeError, match="no_such_thing"):
        trustmed.no_such_thing  # noqa: B018
    with pytest.raises(ImportError):
        exec("from trustmed import no_such_thing", {})


def test_version_is_the_installed_one():
    assert trustmed.__version__ == importlib.metadata.version("trustmed")


def test_version_falls_back_to_pyproject(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    expected = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]["version"]
    assert trustmed._version() == expected


def test_cli_version_option():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"trustmed {trustmed.__version__}"
