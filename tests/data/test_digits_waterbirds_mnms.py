import numpy as np
import pandas as pd
import pytest
from PIL import Image

from trustmed.data.mnms import INFO_CSV, extract_slices, load_mnms
from trustmed.data.synth.digits import BACKGROUNDS, make_colored_digits
from trustmed.data.waterbirds import load_waterbirds
from trustmed.errors import InputError


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory):
    return make_colored_digits(tmp_path_factory.mktemp("cd"), seed=1, spurious_correlation=0.9, image_size=8)


def test_colored_digits_schema_correlation_and_balance(digits_root):
    meta = pd.read_csv(digits_root / "metadata.csv")
    assert list(meta.columns) == ["img_id", "img_filename", "y", "split", "place"]
    assert set(meta["split"]) == {0, 1, 2}
    train = meta[meta["split"] == 0]
    assert (train["place"] == train["y"]).mean() == pytest.approx(0.9, abs=0.01)
    for split in (1, 2):
        part = meta[meta["split"] == split]
        for label in (0, 1):
            places = part.loc[part["y"] == label, "place"]
            assert abs(int((places == 0).sum()) - int((places == 1).sum())) <= 1
    # The label is the real digit class: the file folder names the digit.
    digit = meta["img_filename"].str.extract(r"digit_(\d)/")[0].astype(int)
    np.testing.assert_array_equal(meta["y"], (digit >= 5).astype(int))


def test_colored_digits_images_show_the_background(digits_root):
    meta = pd.read_csv(digits_root / "metadata.csv").head(40)
    for row in meta.itertuples():
        pixels = np.asarray(Image.open(digits_root / row.img_filename), dtype=float) / 255
        assert pixels.shape == (8, 8, 3)
        corner = pixels[0, 0]  # digits leave the corners blank
        assert np.argmin(np.abs(BACKGROUNDS - corner).sum(axis=1)) == row.place


def test_colored_digits_deterministic(tmp_path, digits_root):
    again = make_colored_digits(tmp_path / "again", seed=1, spurious_correlation=0.9, image_size=8)
    pd.testing.assert_frame_equal(
        pd.read_csv(again / "metadata.csv"), pd.read_csv(digits_root / "metadata.csv")
    )
    name = pd.read_csv(again / "metadata.csv")["img_filename"][0]
    assert (again / name).read_bytes() == (digits_root / name).read_bytes()


def test_waterbirds_reads_colored_digits(digits_root):
    manifest = load_waterbirds(digits_root, require_images=True)
    assert list(manifest.columns[:5]) == ["sample_id", "path", "label", "split", "patient_id"]
    assert set(manifest["group"]) == {"y=0&place=0", "y=0&place=1", "y=1&place=0", "y=1&place=1"}
    assert set(manifest["split"]) == {"train", "val", "test"}


WATERBIRDS_FIXTURE = """img_id,img_filename,y,split,place,place_filename
1,001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg,1,0,1,/o/ocean/00002178.jpg
2,001.Black_footed_Albatross/Black_Footed_Albatross_0009_34.jpg,1,1,0,/b/bamboo_forest/00000310.jpg
3,002.Laysan_Albatross/Laysan_Albatross_0002_1027.jpg,1,2,1,/l/lake/natural/00000009.jpg
4,013.Bobolink/Bobolink_0001_9261.jpg,0,0,0,/f/forest/broadleaf/00003215.jpg
"""


def test_waterbirds_official_layout(tmp_path):
    (tmp_path / "metadata.csv").write_text(WATERBIRDS_FIXTURE)
    manifest = load_waterbirds(tmp_path)
    assert manifest["split"].tolist() == ["train", "val", "test", "train"]
    assert manifest["group"].tolist() == ["y=1&place=1", "y=1&place=0", "y=1&place=1", "y=0&place=0"]
    assert manifest["place_filename"][0] == "/o/ocean/00002178.jpg"
    assert manifest["path"][3] == "013.Bobolink/Bobolink_0001_9261.jpg"
    with pytest.raises(InputError, match="image not found: .*Black_Footed_Albatross_0046_18.jpg"):
        load_waterbirds(tmp_path, require_images=True)


def test_waterbirds_bad_input(tmp_path):
    with pytest.raises(InputError, match="metadata not found"):
        load_waterbirds(tmp_path)
    (tmp_path / "metadata.csv").write_text(WATERBIRDS_FIXTURE.replace(",1,0,1,/o", ",1,3,1,/o"))
    with pytest.raises(InputError, match="'split' has value 3"):
        load_waterbirds(tmp_path)
    (tmp_path / "metadata.csv").write_text("img_id,img_filename,y,split\n1,a.jpg,1,0\n")
    with pytest.raises(InputError, match="missing column.*place"):
        load_waterbirds(tmp_path)


MNMS_FIXTURE = """,External code,VendorName,Vendor,Centre,ED,ES,Age,Pathology,Sex,Height,Weight
0,A0S9V9,Siemens,A,1,0,2,58,NOR,M,178,80
1,A1D0Q7,Philips,B,2,1,3,41,DCM,F,160,55
2,A1D9Z7,GE,C,4,0,3,67,HCM,M,,
3,A1E9Q1,Canon,D,5,2,0,35,HHD,F,170,70
"""


def _write_volume(path, frames=4, depth=5):
    import nibabel as nib

    volume = np.zeros((12, 10, depth, frames), dtype=np.float32)
    for z in range(depth):
        for t in range(frames):
            volume[:, :, z, t] = z
            volume[2 * t : 2 * t + 3, 2:8, z, t] += 100  # a bright band whose position codes the frame
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), str(path))


@pytest.fixture()
def mnms_root(tmp_path):
    (tmp_path / INFO_CSV).write_text(MNMS_FIXTURE)
    for folder, code in (
        ("Training/Labeled", "A0S9V9"),
        ("Training/Unlabeled", "A1D0Q7"),
        ("Validation", "A1D9Z7"),
        ("Testing", "A1E9Q1"),
    ):
        _write_volume(tmp_path / folder / code / f"{code}_sa.nii.gz")
    return tmp_path


def test_mnms_information_csv(mnms_root):
    m = load_mnms(mnms_root, require_images=True)
    assert m["sample_id"].tolist() == ["A0S9V9", "A1D0Q7", "A1D9Z7", "A1E9Q1"]
    assert m["split"].tolist() == ["train", "train", "val", "test"]
    assert m["group"].tolist() == ["Siemens", "Philips", "GE", "Canon"]
    assert m["label"].tolist() == [0, 1, 1, 1]
    assert m["age_bin"].tolist() == ["40-59", "40-59", "60-74", "<40"]
    by_centre = load_mnms(mnms_root, group_by="centre")
    assert by_centre["group"].tolist() == ["centre=1", "centre=2", "centre=4", "centre=5"]


def test_mnms_slices_take_the_right_frames(mnms_root, tmp_path):
    m = load_mnms(mnms_root, require_images=True)
    slices = extract_slices(m.head(2), mnms_root, tmp_path / "slices", phases=("ED", "ES"), n_slices=1)
    assert len(slices) == 4
    assert set(slices["patient_id"]) == {"A0S9V9", "A1D0Q7"}
    assert slices["slice"].tolist() == [2, 2, 2, 2]
    for row in slices.itertuples():
        image = np.asarray(Image.open(tmp_path / "slices" / row.path))
        assert image.shape == (12, 10)
        frame = {"A0S9V9": {"ED": 0, "ES": 2}, "A1D0Q7": {"ED": 1, "ES": 3}}[row.patient_id][row.phase]
        assert int(np.argmax(image[:, 5])) == 2 * frame
    assert slices["sample_id"].iloc[0] == "A0S9V9_ED_z2"


def test_mnms_bad_input(mnms_root, tmp_path):
    (mnms_root / "Testing" / "A1E9Q1" / "A1E9Q1_sa.nii.gz").unlink()
    assert load_mnms(mnms_root)["split"].tolist()[-1] == "unknown"  # metadata-only mode
    with pytest.raises(InputError, match="A1E9Q1"):
        load_mnms(mnms_root, require_images=True)
    with pytest.raises(InputError, match="group_by"):
        load_mnms(mnms_root, group_by="scanner")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="information CSV not found"):
        load_mnms(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / INFO_CSV).write_text("External code,Vendor\nX,A\n")
    with pytest.raises(InputError, match="missing column"):
        load_mnms(bad)
