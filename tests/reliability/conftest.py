"""What the reliability matrix damages: real artefacts, each written once per session by trustmed's commands.

Every case of the matrix records its outcome; with ``TRUSTMED_RELIABILITY_REPORT=FILE`` the outcomes
are written to ``FILE`` (JSON) when the session ends, which ``benchmarks/reliability_matrix.py``
turns into the counts in ``docs/reliability.md``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))  # the test modules import _matrix

from _matrix import (  # noqa: E402
    CAUSAL_DATA,
    CAUSAL_FIT,
    OUTCOMES,
    SKIN,
    distill_args,
    invoke,
    sets,
    train_args,
)


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
    fit = [
        "causal",
        "fit",
        "--out",
        base / "model",
        "--quiet",
        *sets([f"data.path={base / 'data'}", *CAUSAL_FIT]),
    ]
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
    args = ["debias", "run", "--method", "group_thresholds", "--checkpoint", classifier, "--external", skin]
    result = invoke(*args, "--attribute", "skin_tone", "--out", out, "--quiet", *sets(["n_boot=0"]))
    assert result.exit_code == 0, result.output
    return out / "group_thresholds.json"
