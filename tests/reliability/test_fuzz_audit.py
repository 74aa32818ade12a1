"""``trustmed audit`` on randomly damaged predictions CSVs (hypothesis): every input ends with exit 0 and a
complete ``--out``, or exit 2, one line and no ``--out`` — never a traceback.

Damage: columns dropped, renamed or duplicated; cells replaced by NaN, inf, text, huge or negative
numbers or nothing; the file cut at a random byte; other encodings, a byte-order mark, NUL bytes,
ragged rows, Windows line ends. ``TRUSTMED_FUZZ_EXAMPLES`` sets the number of examples (default 60);
they are drawn deterministically, so that CI is repeatable, unless ``TRUSTMED_FUZZ_SEED`` is set.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _matrix import check_outcome, invoke
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.slow
FUZZ_SEED = os.environ.get("TRUSTMED_FUZZ_SEED")

COLUMNS = ["label", "score", "group", "patient"]
BAD_CELLS = [
    "",
    "nan",
    "NaN",
    "inf",
    "-inf",
    "abc",
    "1e308",
    "-5",
    "2",
    "0.5.1",
    "99999999999999999999",
    "None",
]
EXPECT = ("metrics.json", "audit.md", "figures/roc_per_group.png")


def _table(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, n)
    return pd.DataFrame(
        {
            "label": label,
            "score": np.clip(0.3 * label + 0.7 * rng.random(n), 0, 1).round(4),
            "group": rng.choice(["light", "dark", 'ünknown, "quoted"'], n),
            "patient": rng.integers(0, max(1, n // 2), n),
        }
    )


@st.composite
def damaged_csv(draw) -> bytes:
    df = _table(draw(st.integers(1, 50)), draw(st.integers(0, 2**16)))
    for op in draw(st.lists(st.sampled_from(["drop", "rename", "duplicate", "cells"]), max_size=3)):
        column = draw(st.sampled_from(list(df.columns)))
        if op == "drop":
            df = df.drop(columns=column)
        elif op == "rename":
            df = df.rename(columns={column: draw(st.sampled_from([*COLUMNS, "x", "", " label"]))})
        elif op == "duplicate":
            df = pd.concat([df, df[[column]].iloc[:, :1]], axis=1)
        elif len(df):
            rows = draw(st.lists(st.integers(0, len(df) - 1), min_size=1, max_size=5))
            df = df.astype(object)
            df.iloc[rows, list(df.columns).index(column)] = draw(st.sampled_from(BAD_CELLS))
        if df.shape[1] == 0:
            break
    text = df.to_csv(index=False)
    if draw(st.booleans()):
        text = text.replace("\n", "\r\n")
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-8", "utf-8-sig", "utf-16", "latin-1"]))
    data = text.encode(encoding, errors="replace")
    for op in draw(st.lists(st.sampled_from(["truncate", "nul", "ragged"]), max_size=2)):
        if not data:
            break
        cut = draw(st.integers(0, len(data) - 1))
        if op == "truncate":
            data = data[:cut]
        elif op == "nul":
            data = data[:cut] + b"\x00" + data[cut:]
        else:
            data = data[:cut] + b",extra" + data[cut:]
    return data


@settings(
    max_examples=int(os.environ.get("TRUSTMED_FUZZ_EXAMPLES", "60")),
    deadline=None,
    derandomize=FUZZ_SEED is None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=damaged_csv(), patients=st.booleans())
def test_audit_never_fails_with_a_traceback(data, patients):
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "predictions.csv"
        csv.write_bytes(data)
        out = Path(tmp) / "audit"
        args = [
            "audit",
            "--predictions",
            csv,
            "--group-col",
            "group",
            "--n-boot",
            "200",
            "--out",
            out,
            "--quiet",
        ]
        result = invoke(*args, *(["--patient-col", "patient"] if patients else []))
        check_outcome(
            result, out, category="fuzzed predictions CSV: audit", case=repr(data[:60]), expect=EXPECT
        )


if FUZZ_SEED is not None:
    test_audit_never_fails_with_a_traceback = seed(int(FUZZ_SEED))(test_audit_never_fails_with_a_traceback)
