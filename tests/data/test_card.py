"""Dataset cards: contents checked against direct counts, and speed on a CheXpert-sized table."""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import pandas as pd

from trustmed.data import load_dataset
from trustmed.data.card import build_card, write_card
from trustmed.data.chexpert import CSV_COLUMNS, FINDINGS

log = logging.getLogger(__name__)


def _manifest(n=400, seed=0):
    rng = np.random.default_rng(seed)
    patients = rng.integers(0, 150, n)
    return pd.DataFrame(
        {
            "sample_id": [f"s{i}" for i in range(n)],
            "path": [f"s{i}.png" for i in range(n)],
            "label": rng.integers(0, 2, n),
            "split": np.where(patients % 5 == 0, "test", "train"),
            "patient_id": [f"p{p}" for p in patients],
            "sex": rng.choice(["male", "female", "unknown"], n),
            "age_bin": rng.choice(["<40", "40-59", "60-74", "75+", "unknown"], n),
        }
    )


def test_card_counts_match_the_table(tmp_path):
    df = _manifest()
    card = write_card(df, tmp_path, name="toy")
    on_disk = json.loads((tmp_path / "card.json").read_text())
    assert next(iter(on_disk)) == "n_samples" and on_disk["n_samples"] == len(df)
    assert on_disk["attributes"] == ["sex", "age_bin"]
    for sex, part in df.groupby("sex"):
        entry = card["groups"]["sex"][sex]
        assert entry["n"] == len(part) and entry["n_positive"] == part["label"].sum()
        assert entry["prevalence"] == part["label"].mean()
        assert entry["by_split"]["test"] == (part["split"] == "test").sum()
    assert card["missing"] == {
        "sex": (df["sex"] == "unknown").sum(),
        "age_bin": (df["age_bin"] == "unknown").sum(),
    }
    assert card["splits"]["train"]["n_patients"] == df.loc[df["split"] == "train", "patient_id"].nunique()
    per = df.groupby("patient_id").size()
    assert card["images_per_patient"]["max"] == per.max() and sum(
        card["images_per_patient"]["histogram"].values()
    ) == len(per)
    assert card["patients_in_several_splits"] == 0
    assert (tmp_path / "group_label_balance.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (tmp_path / "card.md").read_text()
    assert "## Groups: sex" in text and f"| female | {card['groups']['sex']['female']['n']} |" in text


def test_card_flags_patients_in_two_splits():
    df = _manifest()
    df.loc[0, "split"], df.loc[1, "split"], df.loc[1, "patient_id"] = "train", "test", df.loc[0, "patient_id"]
    assert build_card(df, attributes=["sex"])["patients_in_several_splits"] >= 1


def write_big_chexpert(folder, n_rows, seed=0):
    """A CheXpert-format train.csv with n_rows rows (vectorised), plus a small valid.csv."""
    rng = np.random.default_rng(seed)
    patient = rng.integers(1, 64541, n_rows)
    view = rng.random(n_rows) < 0.85
    frame = pd.DataFrame(
        {
            "Path": [
                f"CheXpert-v1.0-small/train/patient{p:05d}/study1/view{i}_{'frontal' if v else 'lateral'}.jpg"
                for i, (p, v) in enumerate(zip(patient, view, strict=True))
            ],
            "Sex": rng.choice(["Male", "Female", "Unknown"], n_rows, p=[0.59, 0.40, 0.01]),
            "Age": rng.integers(18, 91, n_rows),
            "Frontal/Lateral": np.where(view, "Frontal", "Lateral"),
            "AP/PA": np.where(view, rng.choice(["AP", "PA"], n_rows), ""),
        }
    )
    for f in FINDINGS:
        frame[f] = rng.choice([1.0, 0.0, -1.0, np.nan], n_rows, p=[0.15, 0.1, 0.05, 0.7])
    frame = frame[list(CSV_COLUMNS)]
    frame.to_csv(folder / "train.csv", index=False)
    frame.iloc[:234].assign(Path=frame["Path"][:234].str.replace("/train/", "/valid/")).to_csv(
        folder / "valid.csv", index=False
    )


def test_card_on_200k_chexpert_rows_is_fast(tmp_path):
    folder = tmp_path / "CheXpert-v1.0-small"
    folder.mkdir()
    write_big_chexpert(folder, 200_000)
    t0 = time.perf_counter()
    df = load_dataset("chexpert", folder, uncertainty="u_ones")
    t_load = time.perf_counter() - t0
    card = write_card(df, tmp_path / "card", name="chexpert")
    t_total = time.perf_counter() - t0
    log.warning(
        "200k-row CheXpert card: load %.2fs, card %.2fs, total %.2fs", t_load, card["seconds"], t_total
    )
    assert card["n_samples"] == 200_234
    assert card["label_codes"]["-1"] == card["n_positive"] - (df["label_code"] == "1").sum()
    assert set(card["groups"]["sex"]) == {"male", "female", "unknown"}
    assert (tmp_path / "card" / "card.md").is_file()
