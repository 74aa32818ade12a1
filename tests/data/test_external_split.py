"""The external split carved by patient (ensure_external) and the saved split table."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from trustmed.data.manifest import apply_split_table, ensure_external, split_table
from trustmed.errors import InputError

SHARED = [f"p{i:03d}" for i in range(0, 200, 4)]  # patients with rows in train and in test


def manifest(n_patients: int = 200, seed: int = 0) -> pd.DataFrame:
    """1–3 rows per patient; train / val / test by patient, except SHARED patients (train + test)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_patients):
        pid = f"p{i:03d}"
        home = "val" if i % 10 == 1 else "test" if i % 10 == 2 else "train"
        positive = rng.random() < 0.3
        for k in range(1 + i % 3):
            split = "test" if pid in SHARED and k == 0 else home
            rows.append(
                {
                    "sample_id": f"{pid}_{k}",
                    "path": f"img/{pid}_{k}.png",
                    "label": int(positive) if k == 0 else int(rng.random() < 0.2),
                    "split": split,
                    "patient_id": pid,
                    "sex": ["female", "male"][i % 2],
                }
            )
    return pd.DataFrame(rows)


def external_patients(df: pd.DataFrame) -> set[str]:
    return set(df.loc[df["split"] == "external", "patient_id"])


def test_carve_is_seeded_and_takes_the_fraction_of_patients():
    df = manifest()
    a, b = ensure_external(df, seed=1), ensure_external(df, seed=1)
    assert a.equals(b)
    assert external_patients(a) != external_patients(ensure_external(df, seed=2))
    assert (df["split"] != "external").all()  # the input is left as it was
    source = df.loc[df["split"] == "train", "patient_id"].nunique()
    for fraction in (0.05, 0.2, 0.5):
        out = ensure_external(df, fraction=fraction, seed=0)
        assert len(external_patients(out)) == round(fraction * source)
        assert set(out["split"]) == {"train", "val", "test", "external"}


def test_carved_patients_move_whole_and_never_come_from_another_split():
    df = manifest()
    elsewhere = set(df.loc[df["split"] != "train", "patient_id"])
    seen = set()
    for seed in range(25):
        out = ensure_external(df, fraction=0.2, seed=seed)
        carved = external_patients(out)
        seen |= carved
        assert not carved & elsewhere
        assert not carved & set(out.loc[out["split"] != "external", "patient_id"])  # all rows moved
        moved = out["split"] != df["split"]
        assert (df.loc[moved, "split"] == "train").all() and (out.loc[moved, "split"] == "external").all()
    train_only = set(df.loc[df["split"] == "train", "patient_id"]) - elsewhere
    assert not seen & set(SHARED) and len(seen) > len(train_only) // 2


def test_the_label_strata_are_kept():
    df = manifest()
    source = df[(df["split"] == "train") & ~df["patient_id"].isin(SHARED)]
    positive_share = source.groupby("patient_id")["label"].max().mean()
    out = ensure_external(df, fraction=0.5, seed=0)
    carved = out[out["split"] == "external"].groupby("patient_id")["label"].max()
    assert abs(carved.sum() - positive_share * len(carved)) <= 1
    by_sex = ensure_external(df, fraction=0.1, seed=0, stratify=("label", "sex"))
    ext = by_sex[by_sex["split"] == "external"].groupby("patient_id").first()
    female_share = source.groupby("patient_id")["sex"].first().eq("female").mean()
    assert set(ext["sex"]) == {"female", "male"}
    assert abs((ext["sex"] == "female").sum() - female_share * len(ext)) <= 1


def test_an_existing_external_split_is_left_alone():
    df = manifest()
    df.loc[df["patient_id"] == "p003", "split"] = "external"
    assert ensure_external(df, fraction=0.5, seed=3) is df
    assert ensure_external(df, fraction=0.9) is df  # nothing to carve, nothing checked


@pytest.mark.parametrize("fraction", [0, -0.1, 0.51, 1.0, True, "0.1"])
def test_bad_fraction(fraction):
    with pytest.raises(InputError, match=r"my data: external fraction must be in \(0, 0.5\]"):
        ensure_external(manifest(), fraction=fraction, what="my data")


def test_missing_source_and_impossible_carves_name_the_dataset_and_numbers():
    df = manifest()
    with pytest.raises(InputError, match=r"cxr: no 'train' rows .*splits: .*test \d+"):
        ensure_external(df[df["split"] != "train"], what="cxr")
    with pytest.raises(InputError, match=r"cxr: no 'dev' rows"):
        ensure_external(df, source="dev", what="cxr")
    one_class = df.assign(label=0)
    with pytest.raises(InputError, match=r"cxr: carving \d+ of \d+ 'train' patients .*label\(s\) \[0\]"):
        ensure_external(one_class, what="cxr")
    rare = df.assign(label=0)
    rare.loc[rare["sample_id"] == "p005_0", "label"] = 1  # one positive patient in train
    with pytest.raises(InputError, match=r"leaves '(external|train)' with label\(s\) \[0\]"):
        ensure_external(rare, fraction=0.05, what="cxr")
    everyone_in_test = df.assign(split="test", sample_id=df["sample_id"] + "_t")
    shared = pd.concat([df.assign(split="train"), everyone_in_test], ignore_index=True)
    with pytest.raises(InputError, match=r"cxr: cannot carve \d+ external patient\(s\) .*only 0 of them"):
        ensure_external(shared, what="cxr")
    with pytest.raises(InputError, match="missing column"):
        ensure_external(df.drop(columns="patient_id"), what="cxr")


def test_the_carve_is_logged(caplog):
    df = manifest()
    with caplog.at_level(logging.INFO, logger="trustmed.data.manifest"):
        out = ensure_external(df, fraction=0.1, what="demo set")
    n_rows = int((out["split"] == "external").sum())
    n_patients = len(external_patients(out))
    assert f"demo set: carved an external split of {n_rows} rows ({n_patients} of" in caplog.text


def test_split_table_round_trip_and_errors():
    df = manifest()
    carved = ensure_external(df, fraction=0.1, seed=4)
    table = split_table(carved)
    assert list(table.columns) == ["sample_id", "split"] and len(table) == len(df)
    again = apply_split_table(df, table, "cxr")
    assert again["split"].tolist() == carved["split"].tolist()
    partial = table[table["split"] == "external"]
    kept = apply_split_table(df, partial, "cxr")
    assert kept["split"].tolist() == carved["split"].tolist()  # rows not in the table keep theirs
    assert (df["split"] != "external").all()
    unknown = pd.concat([partial, pd.DataFrame({"sample_id": ["zz_1", "zz_2"], "split": ["test", "test"]})])
    with pytest.raises(
        InputError, match=r"cxr: split table names 2 sample_id\(s\) not in the manifest \(first: 'zz_1'\)"
    ):
        apply_split_table(df, unknown, "cxr")
    with pytest.raises(InputError, match=r"cxr: split table lacks column\(s\) split"):
        apply_split_table(df, table[["sample_id"]], "cxr")
    with pytest.raises(InputError, match="lists sample_id 'p000_0' twice"):
        apply_split_table(df, pd.concat([table.head(1), table.head(1)]), "cxr")
