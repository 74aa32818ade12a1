"""``trustmed ground run`` on a real chest radiograph: pydicom-data's CR image ``RG1_UNCR.dcm``
(MONOCHROME1, 15 bits stored, 1955 × 1841), read through the reader classification uses."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from trustmed.cli import app

pytest.importorskip("pydicom")


def _radiograph():
    from pydicom.data import get_testdata_file

    try:
        path = get_testdata_file("RG1_UNCR.dcm", download=False)
    except TypeError:  # older pydicom without the download argument
        path = get_testdata_file("RG1_UNCR.dcm")
    if path is None:
        pytest.skip("RG1_UNCR.dcm not available: install the optional test dependency pydicom-data")
    return path


def test_ground_run_on_a_real_cr_chest_radiograph(tmp_path):
    import pydicom

    from trustmed.data.mscxr import read_image

    path = _radiograph()
    ds = pydicom.dcmread(path)
    assert ds.Modality == "CR" and ds.PhotometricInterpretation == "MONOCHROME1"
    pixels = read_image(path)
    # MONOCHROME1 is inverted on reading: the lungs (air) are dark, as in every other input
    h, w = pixels.shape
    lung = pixels[h // 3 : 2 * h // 3, w // 5 : 2 * w // 5].mean()
    assert pixels.min() == 0.0 and pixels.max() == 1.0 and lung < np.median(pixels) + 0.2
    out = tmp_path / "g"
    result = CliRunner().invoke(
        app,
        [
            "ground", "run", "--model", "tiny", "--image", str(path), "--text", "right pleural effusion",
            "--set", "grounding.num_steps=30", "--out", str(out), "--quiet",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    heat = np.load(out / "heatmap.npy")
    assert heat.shape == (h, w)
    inside = heat[np.isfinite(heat)]
    # the model sees the centre square (1841²): 57 rows above and below are outside its field of view
    assert inside.size == pytest.approx(w * w, rel=0.01) and np.isnan(heat[:50]).all()
    assert inside.min() == 0.0 and inside.max() == pytest.approx(1.0, abs=0.01)  # resized from 64²
    record = json.loads((out / "run.json").read_text())
    assert record["config"]["grounding"]["token_set"] == "end_and_padding"
