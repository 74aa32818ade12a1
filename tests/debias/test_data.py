"""The external set: reading grouped splits from a manifest, and a model's scores on a set."""

import numpy as np
import pandas as pd
import pytest
import torch

from trustmed.debias.data import (
    GroupedSet,
    attribute_rows,
    known_attribute_rows,
    known_only,
    load_grouped_sets,
    predict_proba,
)
from trustmed.errors import InputError
from trustmed.models import ModelSpec, build_model


def _manifest(tmp_path) -> pd.DataFrame:
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = []
    for i in range(24):
        name = f"img{i}.png"
        Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).save(tmp_path / name)
        split = ("external", "val", "test")[i % 3]
        tone = "unknown" if i in (1, 2) else ("light", "dark")[(i // 3) % 2]
        rows.append(
            {"sample_id": f"s{i}", "path": name, "label": (i // 6) % 2, "split": split, "skin_tone": tone}
        )
    return pd.DataFrame(rows).assign(patient_id=lambda d: d["sample_id"])


def test_splits_share_the_group_order_and_lose_unknown_rows(tmp_path, caplog):
    manifest = _manifest(tmp_path)
    sets = load_grouped_sets(
        manifest,
        tmp_path,
        attribute="skin_tone",
        image_size=8,
        splits=["external", "val", "train"],
        what="toy",
    )
    assert set(sets) == {"external", "val"}  # train is absent: skipped
    assert len(sets["external"]) == 8 and len(sets["val"]) == 7  # one val row has an unknown tone
    assert sets["external"].group_names == sets["val"].group_names == ("dark", "light")
    assert "1 rows with unknown skin_tone dropped" in caplog.text
    with pytest.raises(InputError, match="toy: split 'train' not found; splits: external, test, val"):
        load_grouped_sets(
            manifest,
            tmp_path,
            attribute="skin_tone",
            image_size=8,
            splits=["train"],
            required=["train"],
            what="toy",
        )


def test_evaluated_splits_keep_unknown_rows_as_their_own_last_group(tmp_path, caplog):
    manifest = _manifest(tmp_path)
    manifest.loc[0, "skin_tone"] = None  # an external row; a missing value reads as unknown
    sets = load_grouped_sets(
        manifest, tmp_path, attribute="skin_tone", image_size=8, splits=["external", "val"], keep_unknown=True
    )
    assert len(sets["external"]) == len(sets["val"]) == 8
    assert sets["external"].group_names == ("dark", "light", "unknown")  # unknown after the known groups
    assert sets["val"].groups.tolist().count("unknown") == 1  # row 1 ("unknown")
    assert sets["external"].groups[0] == "unknown" and sets["external"].groups.tolist().count("unknown") == 1
    fit = known_only(sets["external"], "external")
    assert len(fit) == 7 and fit.group_names == ("dark", "light") and "unknown" not in fit.groups
    assert "external: 1 rows with unknown skin_tone left out of fitting" in caplog.text
    assert known_only(fit) is fit  # nothing unknown: the same set
    rows = attribute_rows(manifest, "skin_tone", keep_unknown=True)
    assert rows["skin_tone"].tolist().count("unknown") == 3 and len(rows) == len(manifest)
    all_unknown = GroupedSet(torch.zeros(2, 3, 2, 2), [0, 1], ["unknown", "unknown"], attribute="tone")
    with pytest.raises(InputError, match="no rows with a known 'tone'"):
        known_only(all_unknown)


def test_a_missing_attribute_column_or_no_known_row_is_an_error():
    rows = pd.DataFrame({"skin_tone": ["unknown", None]})
    with pytest.raises(InputError, match="no rows with a known 'skin_tone'"):
        known_attribute_rows(rows, "skin_tone")
    with pytest.raises(InputError, match="attribute column 'sex' not found; available: skin_tone"):
        known_attribute_rows(rows, "sex")


def test_scores_that_are_not_numbers_are_an_error():
    torch.manual_seed(0)
    model = build_model(ModelSpec(arch="tiny_cnn", image_size=8, width=2))
    data = GroupedSet(
        torch.randn(6, 3, 8, 8), [0, 1] * 3, ["a", "b"] * 3, sample_ids=np.array(list("uvwxyz"))
    )
    assert predict_proba(model, data).shape == (6,)
    images = data.images.clone()
    images[2] = float("nan")
    with pytest.raises(InputError, match="not a number for 1 of 6 samples \\(first: w\\)"):
        predict_proba(model, GroupedSet(images, data.labels, data.groups, sample_ids=data.sample_ids))
