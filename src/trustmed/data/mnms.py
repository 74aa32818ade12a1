"""M&Ms, the multi-centre, multi-vendor cardiac MRI challenge (Campello et al., "Multi-Centre,
Multi-Vendor and Multi-Disease Cardiac Segmentation: The M&Ms Challenge", IEEE TMI 2021), read from
its published files.

The information CSV (``211230_M&Ms_Dataset_information_diagnosis_opendataset.csv``) has one row per
subject: ``External code``, ``VendorName`` (Siemens, Philips, GE, Canon), ``Vendor`` (A-D),
``Centre`` (1-5), ``ED`` and ``ES`` (0-based frame indices of end-diastole and end-systole) and
``Pathology`` (``NOR`` = normal; ``DCM``, ``HCM``, ``ARV``, ``HHD``, ...), plus optional ``Sex``,
``Age``, ``Height``, ``Weight``. Volumes are 3D+t short-axis cines ``<code>_sa.nii.gz`` under
``Training/Labeled``, ``Training/Unlabeled``, ``Validation`` and ``Testing`` (one folder per
subject); the folder gives the split. The scanner vendor (or centre) is the group for robustness.

:func:`load_mnms` gives one row per subject (metadata-only mode works without the volumes);
:func:`extract_slices` writes 2D PNG slices at ED/ES for image classifiers and returns their manifest.

>>> import tempfile, pathlib
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> _ = (root / INFO_CSV).write_text(
...     "External code,VendorName,Vendor,Centre,ED,ES,Pathology\\nA1B2C3,Siemens,A,1,0,9,NOR\\n")
>>> load_mnms(root)[["sample_id", "label", "split", "group"]].values.tolist()
[['A1B2C3', 0, 'unknown', 'Siemens']]
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from trustmed.data.manifest import age_bins, validate_manifest
from trustmed.errors import InputError
from trustmed.io import atomic_write_bytes, read_csv

__all__ = ["INFO_CSV", "MNMS_COLUMNS", "SPLIT_FOLDERS", "extract_slices", "load_mnms", "read_volume"]

log = logging.getLogger(__name__)

INFO_CSV = "211230_M&Ms_Dataset_information_diagnosis_opendataset.csv"
MNMS_COLUMNS: tuple[str, ...] = ("External code", "VendorName", "Vendor", "Centre", "ED", "ES", "Pathology")
#: Folder (relative to the dataset root) → split.
SPLIT_FOLDERS: dict[str, str] = {
    "Training/Labeled": "train",
    "Training/Unlabeled": "train",
    "Validation": "val",
    "Testing": "test",
}
_GROUP_BY = ("vendor", "centre")


def _find_csv(root: Path) -> Path:
    if root.suffix == ".csv":
        return root
    exact = root / INFO_CSV
    if exact.is_file():
        return exact
    candidates = sorted(root.glob("*M&Ms_Dataset_information*.csv"))
    if not candidates:
        raise InputError(f"M&Ms information CSV not found in {root} (expected {INFO_CSV})")
    return candidates[-1]


def _volume_path(root: Path, code: str) -> tuple[str, str]:
    """The volume's path relative to ``root`` and its split; ``unknown`` when it is not on disk."""
    for folder, split in SPLIT_FOLDERS.items():
        rel = f"{folder}/{code}/{code}_sa.nii.gz"
        if (root / rel).is_file():
            return rel, split
    return f"{code}/{code}_sa.nii.gz", "unknown"


def load_mnms(root: str | Path, *, group_by: str = "vendor", require_images: bool = False) -> pd.DataFrame:
    """Read the M&Ms information CSV into a per-subject manifest.

    Parameters
    ----------
    root : dataset folder (holding the CSV and the split folders) or the CSV itself.
    group_by : ``"vendor"`` (group = VendorName) or ``"centre"`` (group = ``centre=<n>``).
    require_images : fail, naming the first one, when a subject's volume is missing.

    Returns
    -------
    DataFrame with ``sample_id`` (External code), ``path`` (the ``_sa.nii.gz`` volume), ``label``
    (1 = any pathology, 0 = ``NOR``), ``split``, ``patient_id``, ``vendor``, ``vendor_code``,
    ``centre``, ``pathology``, ``ed``, ``es``, ``group`` (+ ``sex``, ``age``, ``age_bin`` if present).
    """
    if group_by not in _GROUP_BY:
        raise InputError(f"group_by must be one of {', '.join(_GROUP_BY)}, got {group_by!r}")
    root = Path(root)
    csv = _find_csv(root)
    base = csv.parent
    info = read_csv(csv, allow_empty=True)
    info.columns = [str(c).strip() for c in info.columns]
    missing = [c for c in MNMS_COLUMNS if c not in info.columns]
    if missing:
        raise InputError(
            f"{csv}: missing column(s) {', '.join(missing)}; found {', '.join(map(str, info.columns))}"
        )
    info = info.dropna(subset=["External code"])
    for col in ("Centre", "ED", "ES"):
        values = pd.to_numeric(info[col], errors="coerce")
        if values.isna().any():
            raise InputError(
                f"{csv}: column {col!r} must be integers, got {info.loc[values.isna(), col].iloc[0]!r}"
            )
        info[col] = values.astype(int)
    codes = info["External code"].astype(str).str.strip()
    located = [_volume_path(base, code) for code in codes]
    pathology = info["Pathology"].astype(str).str.strip()
    manifest = pd.DataFrame(
        {
            "sample_id": codes.to_numpy(),
            "path": [p for p, _ in located],
            "label": (pathology.str.upper() != "NOR").astype(int).to_numpy(),
            "split": [s for _, s in located],
            "patient_id": codes.to_numpy(),
            "vendor": info["VendorName"].astype(str).str.strip().to_numpy(),
            "vendor_code": info["Vendor"].astype(str).str.strip().to_numpy(),
            "centre": info["Centre"].to_numpy(),
            "pathology": pathology.to_numpy(),
            "ed": info["ED"].to_numpy(),
            "es": info["ES"].to_numpy(),
        }
    )
    if "Sex" in info.columns:
        manifest["sex"] = info["Sex"].astype(str).str.strip().to_numpy()
    if "Age" in info.columns:
        manifest["age"] = pd.to_numeric(info["Age"], errors="coerce").to_numpy()
        manifest["age_bin"] = age_bins(manifest["age"]).to_numpy()
    manifest["group"] = (
        manifest["vendor"] if group_by == "vendor" else "centre=" + manifest["centre"].astype(str)
    )
    manifest = validate_manifest(manifest, attributes=["group"], where=str(csv))
    if require_images:
        absent = manifest["split"] == "unknown"
        if absent.any():
            code = manifest.loc[absent, "sample_id"].iloc[0]
            raise InputError(
                f"M&Ms volume not found for subject {code!r}: looked for {code}_sa.nii.gz under "
                f"{', '.join(str(base / f) for f in SPLIT_FOLDERS)}"
            )
    return manifest


def read_volume(path: str | Path) -> np.ndarray:
    """Read a NIfTI volume as a float32 array (nibabel; axes as stored, e.g. ``x, y, z, t``)."""
    try:
        import nibabel as nib
    except ModuleNotFoundError:
        raise InputError("reading NIfTI volumes needs nibabel: pip install nibabel") from None
    path = Path(path)
    if not path.is_file():
        raise InputError(f"volume not found: {path}")
    try:
        return np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel raises several unrelated types for corrupt files
        raise InputError(f"cannot read NIfTI volume {path}: {str(exc).splitlines()[0]}") from None


def _to_png(slice2d: np.ndarray) -> bytes:
    from PIL import Image

    lo, hi = np.percentile(slice2d, [1, 99])
    scaled = np.clip((slice2d - lo) / max(hi - lo, 1e-6), 0, 1)
    buffer = io.BytesIO()
    Image.fromarray((scaled * 255).round().astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def extract_slices(
    manifest: pd.DataFrame,
    root: str | Path,
    out_dir: str | Path,
    *,
    phases: tuple[str, ...] = ("ED", "ES"),
    n_slices: int = 1,
) -> pd.DataFrame:
    """Write the central short-axis slices at the given cardiac phases as PNGs; return their manifest.

    Parameters
    ----------
    manifest : output of :func:`load_mnms` (subjects whose volume is missing are an error).
    root : the dataset folder that ``manifest['path']`` is relative to.
    out_dir : where ``<code>/<code>_<phase>_z<k>.png`` files are written.
    phases : any of ``"ED"``, ``"ES"`` (frame indices from the CSV).
    n_slices : number of central slices per phase.

    Returns
    -------
    A slice-level manifest (paths relative to ``out_dir``; ``patient_id`` = subject, so bootstrap
    and splits keep a subject's slices together) with the subject's attributes and ``phase``, ``slice``.
    """
    bad = [p for p in phases if p not in ("ED", "ES")]
    if bad or not phases:
        raise InputError(f"phases must be a non-empty subset of ED, ES; got {list(phases)}")
    if n_slices < 1:
        raise InputError(f"n_slices must be >= 1, got {n_slices}")
    root, out_dir = Path(root), Path(out_dir)
    rows = []
    for subject in manifest.to_dict("records"):
        volume = read_volume(root / subject["path"])
        if volume.ndim == 3:
            volume = volume[..., None]
        if volume.ndim != 4:
            raise InputError(f"{root / subject['path']}: expected a 3D+t volume, got shape {volume.shape}")
        depth = volume.shape[2]
        first = max(0, depth // 2 - n_slices // 2)
        for phase in phases:
            frame = int(subject[phase.lower()])
            if not 0 <= frame < volume.shape[3]:
                raise InputError(
                    f"subject {subject['sample_id']!r}: {phase} frame {frame} outside the volume's "
                    f"{volume.shape[3]} frames"
                )
            for z in range(first, min(depth, first + n_slices)):
                rel = f"{subject['sample_id']}/{subject['sample_id']}_{phase}_z{z}.png"
                atomic_write_bytes(out_dir / rel, _to_png(volume[:, :, z, frame]))
                rows.append(
                    {**subject, "sample_id": rel[:-4].split("/")[1], "path": rel, "phase": phase, "slice": z}
                )
    log.info("wrote %d M&Ms slices to %s", len(rows), out_dir)
    return validate_manifest(pd.DataFrame(rows), attributes=["group"], where="M&Ms slices")
