"""Anatomy vocabulary: report sentences → regions → masks; zones from lung masks and boxes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from trustmed.data.mscxr import boxes_to_mask, load_mscxr
from trustmed.data.synth.cxr import flip_laterality, make_synthcxr
from trustmed.errors import InputError
from trustmed.grounding.anatomy import (
    anatomy_from_boxes,
    load_anatomy,
    location_mask,
    parse_locations,
    region_mask,
    zones_from_lung_mask,
)


@pytest.mark.parametrize(
    ("sentence", "regions"),
    [
        ("Small left apical pneumothorax.", ("left_apex",)),
        ("Patchy opacity at the right lung base, likely atelectasis.", ("right_base",)),
        ("Moderate bilateral pleural effusions.", ("left_lung", "right_lung")),
        ("Right middle lobe consolidation.", ("right_middle",)),
        ("Opacities in both upper lobes.", ("left_upper", "right_upper")),
        ("Right perihilar fullness.", ("right_hilum",)),
        ("Blunting of the left costophrenic angle.", ("left_costophrenic",)),
        ("Retrocardiac opacity, possibly atelectasis.", ("retrocardiac",)),
        ("Mild cardiomegaly.", ("heart",)),
        ("The cardiac silhouette is enlarged.", ("heart",)),
        ("No acute cardiopulmonary process.", ()),
        ("There is no pneumothorax.", ()),
        ("Lower zone opacities.", ("left_lower", "right_lower")),
    ],
)
def test_report_sentences_parse_to_regions(sentence, regions):
    assert parse_locations(sentence).regions == regions


def test_unmapped_anatomical_word_is_reported_and_gives_no_mask():
    anatomy = {"heart": np.ones((4, 4), bool)}
    mask, parse = location_mask("Left lingula opacity.", anatomy)
    assert mask is None and parse.unknown == ("lingula",) and not parse.has_location


def _zones(shape=(12, 12)):
    out = {}
    for i, side in enumerate(("right", "left")):
        for j, zone in enumerate(("upper", "middle", "lower")):
            m = np.zeros(shape, bool)
            m[4 * j : 4 * j + 4, 6 * i : 6 * i + 6] = True
            out[f"{side}_{zone}"] = m
    out["heart"] = np.zeros(shape, bool)
    out["heart"][6:10, 4:8] = True
    return out


def test_fallbacks_and_unions():
    anat = _zones()
    assert np.array_equal(region_mask("left_apex", anat), anat["left_upper"])
    assert np.array_equal(region_mask("right_costophrenic", anat), anat["right_lower"])
    assert np.array_equal(region_mask("retrocardiac", anat), anat["left_lower"])
    lung = region_mask("right_lung", anat)
    assert lung.sum() == 72 and not (lung & anat["left_upper"]).any()
    mask, _ = location_mask("bilateral effusions and cardiomegaly", anat)
    both = region_mask("right_lung", anat) | region_mask("left_lung", anat)
    assert np.array_equal(mask, both | anat["heart"])
    with pytest.raises(InputError, match="no mask"):
        region_mask("mediastinum", anat)


def test_zones_from_lung_mask_partition_each_lung_and_respect_patient_side():
    lung = np.zeros((60, 60), bool)
    lung[5:55, 5:25] = True  # image left = patient's right
    lung[10:50, 35:55] = True
    zones = zones_from_lung_mask(lung)
    right = zones["right_upper"] | zones["right_middle"] | zones["right_lower"]
    left = zones["left_upper"] | zones["left_middle"] | zones["left_lower"]
    assert np.array_equal(right, lung & (np.arange(60) < 30)[None])
    assert np.array_equal(right | left, lung) and not (right & left).any()
    assert zones["left_upper"][:, :30].sum() == 0
    rows = np.nonzero(zones["left_upper"].any(1))[0]
    assert rows.min() == 10 and rows.max() < 24  # top third of the left lung's own extent
    with pytest.raises(InputError, match="two lungs"):
        zones_from_lung_mask(lung[:, :30])


def test_anatomy_from_imagenome_boxes():
    masks = anatomy_from_boxes(
        {"right upper lung zone": (0, 0, 5, 4), "cardiac silhouette": (3, 5, 4, 3), "trachea": (4, 0, 1, 3)},
        10,
        10,
    )
    assert set(masks) == {"right_upper", "heart"}
    assert masks["right_upper"].sum() == 20
    with pytest.raises(InputError, match="known region"):
        anatomy_from_boxes({"trachea": (0, 0, 1, 1)}, 4, 4)


def test_load_anatomy_checks_size(tmp_path):
    np.savez_compressed(tmp_path / "a.npz", right_upper=np.ones((8, 8), bool))
    assert load_anatomy(tmp_path / "a.npz", shape=(8, 8))["right_upper"].all()
    with pytest.raises(InputError, match="expected the image's"):
        load_anatomy(tmp_path / "a.npz", shape=(16, 16))
    with pytest.raises(InputError, match="not found"):
        load_anatomy(tmp_path / "b.npz")


def test_synthcxr_sentences_map_to_regions_that_contain_their_findings(tmp_path):
    """On SynthCXR every sentence maps, to the side of its (unused) finding box, not the other side."""
    make_synthcxr(tmp_path, n_images=40, image_size=64, seed=3)
    table = pd.concat([load_mscxr(tmp_path, split=s) for s in ("train", "val", "test")])
    inside = []
    for row in table.itertuples():
        anatomy = load_anatomy(tmp_path / "anatomy" / f"{row.image_id}.npz", shape=(64, 64))
        mask, parse = location_mask(row.text, anatomy)
        assert mask is not None, row.text
        box = boxes_to_mask(row.boxes, 64, 64)
        mirror, _ = location_mask(flip_laterality(row.text), anatomy)
        if {"right", "left"} & set(row.text.split()):
            inside.append((mask & box).sum() > (mirror & box).sum())
    assert len(inside) > 20 and np.mean(inside) > 0.95
