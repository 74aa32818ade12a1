"""DICOM reading (MONOCHROME1/2, 16-bit, Modality and VOI LUT), one reader for every capability, and
skip_bad_images."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from trustmed.data import mscxr
from trustmed.data.images import ImageDataset, make_loader, read_grayscale, read_image
from trustmed.errors import InputError

pydicom = pytest.importorskip("pydicom")


def write_dicom(
    path, pixels, *, photometric="MONOCHROME2", bits=16, window=None, rescale=None, pixel_data=True
):
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if pixel_data:
        ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def ramp(high=4000):
    return np.linspace(0, high, 16 * 16).round().reshape(16, 16).astype(np.uint16)


def test_monochrome1_is_inverted_and_16_bit_kept(tmp_path):
    pixels = ramp(65535)
    two = read_image(write_dicom(tmp_path / "m2.dcm", pixels), channels=1)
    one = read_image(write_dicom(tmp_path / "m1.dcm", pixels, photometric="MONOCHROME1"), channels=1)
    assert two.shape == (1, 16, 16) and two.dtype == np.float32
    np.testing.assert_allclose(two[0], pixels / 65535.0, atol=1e-6)  # full 16-bit precision, not 8-bit
    np.testing.assert_allclose(one, 1.0 - two, atol=1e-6)
    assert len(np.unique(two)) == 256
    assert read_image(tmp_path / "m2.dcm", channels=3).shape == (3, 16, 16)


def test_modality_and_voi_window_applied(tmp_path):
    pixels = ramp(4000)
    slope, intercept, centre, width = 2.0, -1024.0, 3000.0, 2000.0
    image = read_image(
        write_dicom(tmp_path / "w.dcm", pixels, bits=12, window=(centre, width), rescale=(slope, intercept)),
        channels=1,
    )[0]
    value = pixels * slope + intercept  # Modality LUT
    # DICOM PS3.3 C.11.2.1.2 linear window, then min-max scaling.
    expected = np.clip((value - (centre - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
    np.testing.assert_allclose(image, expected, atol=2e-3)
    assert (image[value <= centre - width / 2] == 0).all() and (image[value >= centre + width / 2] == 1).all()


def _scaled_by_bits_stored(path):
    """How grounding used to read a DICOM: stored value / (2**BitsStored - 1), no Modality or VOI LUT."""
    ds = pydicom.dcmread(path)
    return ds.pixel_array.astype(np.float32) / float(2 ** int(ds.BitsStored) - 1)


def test_classification_and_grounding_see_the_same_pixels_of_a_narrow_window_dicom(tmp_path):
    pixels = ramp(4000)  # 16 bits stored, a narrow window over the low values
    path = write_dicom(tmp_path / "narrow.dcm", pixels, window=(2000.0, 1000.0), rescale=(1.0, 0.0))
    classification = ImageDataset(
        pd.DataFrame(
            {"sample_id": ["a"], "path": [path.name], "label": [1], "split": "test", "patient_id": "a"}
        ),
        tmp_path,
        image_size=16,
        channels=1,
        cache=False,
    )[0]["image"][0].numpy()
    grounding = mscxr.read_image(path)
    assert grounding.shape == (16, 16) and grounding.dtype == np.float32
    np.testing.assert_allclose(grounding, read_image(path, channels=1)[0], atol=0)
    np.testing.assert_allclose(grounding, classification, atol=1e-5)  # the 16→16 resize keeps the pixels
    assert grounding.min() == 0.0 and grounding.max() == 1.0  # the window spans [0, 1]
    assert mscxr.read_image is read_grayscale
    # the former grounding reader saw the same file in [0, 0.06]: this test tells the two apart
    old = _scaled_by_bits_stored(path)
    assert old.max() < 0.07 and not np.allclose(old, grounding, atol=0.1)


def test_16_bit_png_is_scaled_by_its_maximum_for_every_capability(tmp_path):
    pixels = ramp(4000)
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    gray = mscxr.read_image(tmp_path / "wide.png")
    np.testing.assert_allclose(
        gray, pixels / 4000.0, atol=1e-6
    )  # 12 bits used of 16: not dimmed, not clipped
    np.testing.assert_array_equal(read_image(tmp_path / "wide.png", channels=3), np.repeat(gray[None], 3, 0))
    item = ImageDataset(
        pd.DataFrame(
            {"sample_id": ["w"], "path": ["wide.png"], "label": [0], "split": "test", "patient_id": "w"}
        ),
        tmp_path,
        image_size=16,
        channels=1,
        cache=False,
    )[0]["image"][0].numpy()
    np.testing.assert_allclose(item, gray, atol=1e-5)


def test_dicom_without_pixel_data_and_garbage(tmp_path):
    path = write_dicom(tmp_path / "empty.dcm", ramp(), pixel_data=False)
    with pytest.raises(InputError, match=r"empty.dcm: the DICOM has no pixel data"):
        read_image(path)
    (tmp_path / "junk.dcm").write_bytes(b"not a dicom at all")
    with pytest.raises(InputError, match=r"cannot read image .*junk.dcm"):
        read_image(tmp_path / "junk.dcm")


def _manifest(tmp_path):
    write_dicom(tmp_path / "0.dcm", ramp(), photometric="MONOCHROME1")
    Image.fromarray(np.full((10, 10), 200, np.uint8)).save(tmp_path / "1.png")
    (tmp_path / "2.png").write_bytes(b"corrupt")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "4.png")
    paths = ["0.dcm", "1.png", "2.png", "3.png", "4.png"]  # 3.png is missing
    return pd.DataFrame(
        {"sample_id": paths, "path": paths, "label": [0, 1, 0, 1, 1], "split": "train", "patient_id": paths}
    )


def test_bad_images_are_errors_by_default(tmp_path):
    df = _manifest(tmp_path)
    # found when the dataset is built, before any training: the first bad file, and a count of the rest
    with pytest.raises(InputError, match=r"cannot read image .*2.png: not a PNG file .*; 1 other image"):
        ImageDataset(df, tmp_path, image_size=8, channels=1)
    with pytest.raises(InputError, match=r"image not found: .*3.png"):
        ImageDataset(df.drop(index=2), tmp_path, image_size=8, channels=1)
    # damage inside a file whose start and end look right is found when it is decoded
    data = bytearray((tmp_path / "1.png").read_bytes())
    data[40:60] = bytes(20)
    (tmp_path / "2.png").write_bytes(bytes(data))
    ds = ImageDataset(df.drop(index=3), tmp_path, image_size=8, channels=1, cache=False)
    with pytest.raises(InputError, match=r"cannot read image .*2.png"):
        ds[2]


def test_skip_bad_images_skips_and_counts(tmp_path):
    df = _manifest(tmp_path)
    data = bytearray((tmp_path / "1.png").read_bytes())
    data[40:60] = bytes(20)  # damaged inside: passes the up-front check, fails to decode
    (tmp_path / "5.png").write_bytes(bytes(data))
    df = pd.concat([df, df.iloc[[4]].assign(sample_id="5.png", path="5.png", patient_id="5.png")])
    loader = make_loader(
        df, tmp_path, image_size=8, batch_size=2, shuffle=False, channels=1, skip_bad_images=True
    )
    assert loader.dataset.n_skipped == 2 and len(loader.dataset) == 4  # two found up front
    batches = list(loader)
    index = torch.cat([b["index"] for b in batches]).tolist()
    assert index == [0, 1, 4]  # manifest rows of the readable images
    assert sum(int(b["n_skipped"]) for b in batches) == 1
    reasons = [reason for _, reason in loader.dataset.skipped]
    assert reasons[:2] == ["not a PNG file (wrong signature)", "not found"] and "5.png" in reasons[2]
    images = torch.cat([b["image"] for b in batches])
    assert float(images[0, 0, 0, 0]) > 0.75 > 0.25 > float(images[0, 0, -1, -1])  # MONOCHROME1: low = white
    assert float(images[1].mean()) == pytest.approx(200 / 255, abs=1e-4)
