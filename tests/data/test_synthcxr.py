"""SynthCXR: determinism, MS-CXR/VinDr formats, truthful boxes, zone masks, bilateral images."""

from __future__ import annotations

import numpy as np
import pandas as pd

from trustmed.data.mscxr import MSCXR_COLUMNS, load_mscxr, read_image
from trustmed.data.synth.cxr import ZONES, flip_laterality, generate_case, make_synthcxr, make_synthcxr_vindr
from trustmed.data.vindr import load_vindr


def test_deterministic_and_ms_cxr_format(tmp_path):
    a = make_synthcxr(tmp_path / "a", n_images=30, image_size=64, seed=3)
    b = make_synthcxr(tmp_path / "b", n_images=30, image_size=64, seed=3)
    da, db = pd.read_csv(a), pd.read_csv(b)
    pd.testing.assert_frame_equal(da, db)
    assert list(da.columns) == [*MSCXR_COLUMNS, "split"]
    assert set(da.split) == {"train", "val", "test"}
    assert da.path.str.match(r"files/p\d\d/p\d+/s\d+/synth").all()
    np.testing.assert_array_equal(
        read_image(tmp_path / "a" / da.path[0]), read_image(tmp_path / "b" / da.path[0])
    )
    c = pd.read_csv(make_synthcxr(tmp_path / "c", n_images=30, image_size=64, seed=4))
    assert not c.label_text.equals(da.label_text)
    patients = pd.read_csv(tmp_path / "a" / "patients.csv")
    assert set(patients.gender) <= {"F", "M"} and patients.anchor_age.between(18, 95).all()


def test_boxes_cover_brighter_findings_and_zone_masks(tmp_path):
    csv = make_synthcxr(tmp_path, n_images=40, image_size=64, seed=0)
    table = load_mscxr(tmp_path)
    nodules = table[table.category == "Nodule"]
    assert len(nodules) > 0
    for row in nodules.itertuples():
        image = read_image(row.path)
        x, y, w, h = (int(v) for v in row.boxes[0])
        assert image[y : y + h, x : x + w].max() > np.median(image) + 0.2
    anatomy = np.load(tmp_path / "anatomy" / f"{pd.read_csv(csv).dicom_id[0]}.npz")
    assert set(anatomy.files) == {*ZONES, "heart"}
    zones = np.stack([anatomy[z] for z in ZONES])
    assert zones.sum(0).max() == 1  # zones do not overlap
    right_cols = np.nonzero(anatomy["right_upper"].any(0))[0]
    left_cols = np.nonzero(anatomy["left_upper"].any(0))[0]
    assert right_cols.mean() < left_cols.mean()  # patient's right on the image's left


def test_sentences_name_the_side_of_the_box_and_bilateral_images_exist():
    rng = np.random.default_rng(0)
    bilateral = 0
    for _ in range(80):
        case = generate_case(rng, image_size=64)
        cats = [f.category for f in case.findings]
        bilateral += any(cats.count(c) == 2 for c in set(cats))
        for f in case.findings:
            if f.side is None:
                continue
            assert f.side in f.sentence
            cx = f.box[0] + f.box[2] / 2
            assert (cx < 32) == (f.side == "right")
            if f.zone and f.category in ("Nodule", "Consolidation"):
                assert f.zone in f.sentence
    assert 8 <= bilateral <= 35
    assert flip_laterality("right upper zone") == "left upper zone"


def test_vindr_variant_is_out_of_distribution_and_readable(tmp_path):
    make_synthcxr_vindr(tmp_path / "ood", n_images=8, image_size=64, seed=2)
    ann = pd.read_csv(tmp_path / "ood" / "annotations" / "annotations_test.csv")
    assert set(ann.rad_id) == {"R1", "R2"}
    table = load_vindr(tmp_path / "ood", classes=None, sentences="auto")
    assert len(table) > 0 and table.image_width.iloc[0] == 64
    image = read_image(table.path.iloc[0])
    assert image.shape == (64, 64) and image.min() >= 0 and image.max() <= 1
    # MONOCHROME1 files are inverted on reading: the background stays dark in every image
    for path in table.path.unique():
        assert read_image(path)[0, 0] < 0.5
