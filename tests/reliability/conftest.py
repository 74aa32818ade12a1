"""What the reliability matrix damages: real artefacts, each written once per session by trustmed's commands.

Every case of the matrix records its outcome; with ``TRUSTMED_RELIABILITY_REPORT=FILE`` the outcomes
are written to ``FILE`` (JSON) when the session ends, which ``benchmarks/reliability_matrix.py``
turns into the counts in ``docs/reliability.md``.
"""

from __future__ import annotations

import json
import os
import shutil
import traceback
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from trustmed.cli import app
from trustmed.outdir import MARKER

runner = CliRunner()
OUTCOMES: list[dict] = []

SKIN = ["image_size=16", "n_train=120", "n_val=40", "n_external=24", "n_test=24", "n_ood=0"]
TRAIN = ["data.image_size=16", "model.width=4", "optim.epochs=2"]
DISTILL = ["data.format=manifest", "data.image_size=8", "train.epochs=2", "data.batch_size=16", "n_boot=0"]
CAUSAL_DATA = ["n=240", "d=3", "observed_dim=6"]
CAUSAL_FIT = ["train.epochs=2", "model.latent_dim=3", "model.hidden=8", "train.warmup_epochs=0"]
GROUND_FAST = ["grounding.num_steps=3", "grounding.batch_size=4"]


def sets(values: list[str]) -> list[str]:
    return [part for value in values for part in ("--set", value)]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def check_outcome(
    result,
    out: Path,
    *,
    category: str,
    case: str,
    names: tuple[str, ...] = (),
    expect: tuple[str, ...] = (),
    before: dict[str, bytes] | None = None,
) -> str:
    """Exit 0 with a complete ``out``, or exit 2 with one line naming one of ``names`` and no ``out``
    (or, for a folder that existed, ``out`` exactly as ``before``) — never a traceback."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    if result.exit_code == 0:
        outcome = "exit 0, complete --out"
        marker = out / MARKER
        problem = None
        if not marker.is_file() or json.loads(marker.read_text())["status"] != "complete":
            problem = "exit 0 without a complete --out"
        elif missing := [name for name in expect if not (out / name).exists()]:
            problem = f"exit 0 but {missing} not written"
    else:
        outcome = "exit 2, one line, no --out"
        problem = None
        if result.exit_code != 2:
            trace = "".join(traceback.format_exception(*result.exc_info)) if result.exc_info else ""
            problem = f"exit {result.exit_code}: {result.output[-800:]}\n{trace[-2500:]}"
        elif len(errors) != 1 or "Traceback" in result.output:
            problem = f"not one error line: {result.stderr!r}"
        elif names and not any(name in errors[0] for name in names):
            problem = f"the message does not name {names}: {errors[0]}"
        elif before is None and out.exists():
            problem = f"--out {out} left behind"
        elif before is not None and _snapshot(out) != before:
            problem = f"--out {out} changed by a failed run"
    OUTCOMES.append(
        {"category": category, "case": case, "outcome": problem and "FAILED" or outcome, "message": errors[:1]}
    )
    assert problem is None, f"{category} / {case}: {problem}"
    return outcome


def snapshot(folder: Path) -> dict[str, bytes]:
    return _snapshot(folder)


def pytest_sessionfinish(session, exitstatus):
    report = os.environ.get("TRUSTMED_RELIABILITY_REPORT")
    if report and OUTCOMES:
        Path(report).write_text(json.dumps(OUTCOMES, indent=1))


# ------------------------------------------------------------------------------------ artefacts
@pytest.fixture(scope="session")
def skin(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("skin") / "synthskin"
    result = invoke("data", "synth", "skin", "--out", out, "--quiet", *sets(SKIN))
    assert result.exit_code == 0, result.output
    return out


def train_args(skin: Path, out: Path) -> list:
    return ["train", "--out", out, "--quiet", *sets([f"data.root={skin}", *TRAIN])]


@pytest.fixture(scope="session")
def classifier(skin, tmp_path_factory) -> Path:
    """A trained checkpoint folder; its ``checkpoints/`` is the resume folder of ``train --resume``."""
    out = tmp_path_factory.mktemp("train") / "run"
    result = invoke(*train_args(skin, out))
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="session")
def groups_data(tmp_path_factory) -> Path:
    """A small manifest dataset with a spurious group cue, for ``trustmed distill``."""
    root = tmp_path_factory.mktemp("groups")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(72):
        split = ["train", "val", "test"][i % 3]
        y = int(rng.integers(0, 2))
        place = y if rng.random() < (0.85 if split == "train" else 0.5) else 1 - y
        pixels = rng.normal(0.3, 0.1, (8, 8, 3))
        pixels[..., 0] += 0.4 * y
        pixels[..., 1] += 0.5 * place
        Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8)).save(root / f"{i}.png")
        rows.append(
            {
                "sample_id": f"s{i}",
                "path": f"{i}.png",
                "label": y,
                "split": split,
                "patient_id": f"p{i}",
                "group": f"y={y}&place={place}",
            }
        )
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root


def distill_args(data: Path, out: Path, *extra) -> list:
    return ["distill", "--out", out, "--quiet", *sets([*DISTILL, f"data.root={data}"]), *extra]


@pytest.fixture(scope="session")
def distilled(groups_data, tmp_path_factory) -> Path:
    """A Group DRO student (resume folder with group weights); it also serves as a teacher."""
    out = tmp_path_factory.mktemp("distill") / "run"
    result = invoke(*distill_args(groups_data, out, "--method", "groupdro"))
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="session")
def causal(tmp_path_factory) -> tuple[Path, Path]:
    """(data folder, fitted coVAE folder)."""
    base = tmp_path_factory.mktemp("causal")
    result = invoke("causal", "synth-anm", "--out", base / "data", "--quiet", *sets(CAUSAL_DATA))
    assert result.exit_code == 0, result.output
    fit = ["causal", "fit", "--out", base / "model", "--quiet", *sets([f"data.path={base / 'data'}", *CAUSAL_FIT])]
    result = invoke(*fit)
    assert result.exit_code == 0, result.output
    return base / "data", base / "model"


@pytest.fixture(scope="session")
def ldm(tmp_path_factory) -> Path:
    from trustmed.grounding.ldm import make_random_monai_ldm

    return make_random_monai_ldm(tmp_path_factory.mktemp("ldm") / "model")


@pytest.fixture(scope="session")
def prompt(ldm, tmp_path_factory) -> Path:
    """An (untrained) tuned prompt bound to ``ldm``, saved as ``trustmed ground tune`` saves one."""
    from trustmed.grounding.ldm import load_ldm
    from trustmed.grounding.prompt_tuning import TunedPrompt, ldm_fingerprint

    model = load_ldm(ldm)
    dim = model.text_encoder.get_input_embeddings().weight.shape[1]
    folder = tmp_path_factory.mktemp("prompt") / "prompt"
    TunedPrompt(2, dim, meta={"base_fingerprint": ldm_fingerprint(model)}).save(folder)
    return folder


@pytest.fixture(scope="session")
def cxr_image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("image") / "cxr.png"
    Image.fromarray((np.random.default_rng(0).random((40, 48)) * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="session")
def thresholds(classifier, skin, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("thresholds") / "run"
    args = ["debias", "--method", "group_thresholds", "--checkpoint", classifier, "--external", skin]
    result = invoke(*args, "--attribute", "skin_tone", "--out", out, "--quiet", *sets(["n_boot=0"]))
    assert result.exit_code == 0, result.output
    return out / "group_thresholds.json"


def copy_of(src: Path, dest: Path) -> Path:
    if src.is_dir():
        shutil.copytree(src, dest)
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)
    return dest
