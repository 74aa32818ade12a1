"""MS-CXR, VinDr-CXR and NIH BBox loaders on fixtures that copy each official schema's quirks."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from trustmed.data.mscxr import boxes_to_mask, load_mscxr, read_image
from trustmed.data.nih import load_nih_bbox
from trustmed.data.synth.cxr import _write_dicom
from trustmed.data.vindr import load_vindr
from trustmed.errors import InputError

MSCXR_V11 = """dicom_id,category_name,label_text,path,x,y,w,h,image_width,image_height,split
f2b1-1,Pneumonia,Left lower lobe pneumonia,files/p10/p10000032/s504/f2b1-1.jpg,10,20,5,6,64,48,test
f2b1-1,Pneumonia,Left lower lobe pneumonia,files/p10/p10000032/s504/f2b1-1.jpg,30,5,4,4,64,48,test
f2b1-1,Cardiomegaly,Cardiomegaly,files/p10/p10000032/s504/f2b1-1.jpg,20,20,20,10,64,48,test
a9c3-2,Pneumothorax,small right apical pneumothorax,files/p11/p11000011/s510/a9c3-2.jpg,1,2,3,4,64,48,train
"""


def _jpg(path, h=48, w=64):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.random.default_rng(0).random((h, w)) * 255).astype(np.uint8)).save(path)


def test_mscxr_merges_boxes_by_path_and_text(tmp_path):
    (tmp_path / "MS_CXR_Local_Alignment_v1.1.0.csv").write_text(MSCXR_V11)
    _jpg(tmp_path / "files/p10/p10000032/s504/f2b1-1.jpg")
    table = load_mscxr(tmp_path)
    assert len(table) == 3
    pneu = table[table.text == "Left lower lobe pneumonia"].iloc[0]
    assert pneu.boxes == [(10.0, 20.0, 5.0, 6.0), (30.0, 5.0, 4.0, 4.0)]
    assert read_image(pneu.path).shape == (48, 64)
    assert len(load_mscxr(tmp_path, split="train")) == 1
    mask = boxes_to_mask(pneu.boxes, 48, 64)
    assert mask.sum() == 5 * 6 + 4 * 4


def test_mscxr_v1_0_without_split_and_bad_schema(tmp_path):
    v10 = "\n".join(",".join(line.split(",")[:-1]) for line in MSCXR_V11.strip().splitlines()) + "\n"
    (tmp_path / "MS_CXR_Local_Alignment_v1.0.0.csv").write_text(v10)
    assert set(load_mscxr(tmp_path).split) == {"test"}
    with pytest.raises(InputError, match="no 'split' column"):
        load_mscxr(tmp_path, split="train")
    (tmp_path / "MS_CXR_Local_Alignment_v1.0.0.csv").write_text("dicom_id,foo\n1,2\n")
    with pytest.raises(InputError, match="label_text"):
        load_mscxr(tmp_path)
    with pytest.raises(InputError, match="not found"):
        read_image(tmp_path / "nope.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(InputError, match="unreadable"):
        read_image(tmp_path / "broken.jpg")


VINDR = """image_id,rad_id,class_name,x_min,y_min,x_max,y_max
img1,R8,No finding,,,,
img2,R9,Cardiomegaly,10.0,20.0,40.0,35.0
img2,R10,Cardiomegaly,12.0,21.0,41.0,36.0
img2,R9,Nodule/Mass,5.0,5.0,9.0,9.0
img2,R10,Aortic enlargement,30.0,5.0,40.0,15.0
"""


def test_vindr_merges_readers_prompts_and_inverts_monochrome1(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "annotations_test.csv").write_text(VINDR)
    image = np.zeros((48, 64), np.float32)
    image[:, :10] = 1.0
    _write_dicom(tmp_path / "test" / "img2.dicom", image, "img2", monochrome1=True)
    table = load_vindr(tmp_path)
    assert sorted(table.category) == ["Aortic enlargement", "Cardiomegaly", "Nodule/Mass"]
    cardio = table[table.category == "Cardiomegaly"].iloc[0]
    assert cardio.text == "The patient has cardiomegaly"
    assert cardio.boxes == [(10.0, 20.0, 30.0, 15.0), (12.0, 21.0, 29.0, 15.0)]
    assert (cardio.image_width, cardio.image_height) == (64, 48)
    pixels = read_image(cardio.path)
    assert pixels[0, 0] == pytest.approx(1.0, abs=1e-3) and pixels[0, 20] == pytest.approx(0.0, abs=1e-3)
    assert len(load_vindr(tmp_path, classes=["Nodule/Mass"])) == 1
    with pytest.raises(InputError, match="none of the classes"):
        load_vindr(tmp_path, classes=["Pneumothorax"])


NIH = """Image Index,Finding Label,Bbox [x,y,w,h],,,
00013118_008.png,Atelectasis,225.084745762712,547.019216763771,86.7796610169491,79.1864406779661,,,
00014716_007.png,Atelectasis,686.101694915254,131.543050847458,185.491525423729,313.491525423729,,,
00014716_007.png,Atelectasis,10,10,20,20,,,
00029817_009.png,Effusion,302.08,419.84,225.28,157.012,,,
"""


def test_nih_bbox_header_quirk_and_image_folders(tmp_path):
    (tmp_path / "BBox_List_2017.csv").write_text(NIH)
    _jpg(tmp_path / "images_002" / "images" / "00014716_007.png", 32, 32)
    table = load_nih_bbox(tmp_path)
    assert len(table) == 3
    row = table[table.image_id == "00014716_007.png"].iloc[0]
    assert len(row.boxes) == 2 and row.boxes[0][0] == pytest.approx(686.101694915254)
    assert (
        row.path.endswith("images_002/images/00014716_007.png") and row.text == "The patient has atelectasis"
    )
    (tmp_path / "BBox_List_2017.csv").write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="Image Index"):
        load_nih_bbox(tmp_path)
