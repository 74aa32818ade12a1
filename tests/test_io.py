"""Atomic outputs: a failed command leaves nothing behind; a successful one replaces old files."""

import json
import math

import numpy as np
import pytest

from trustmed.io import staged_dir, write_json


def test_staged_dir_failure_leaves_nothing(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError), staged_dir(out) as tmp:
        (tmp / "partial.csv").write_text("x")
        raise RuntimeError("boom")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_staged_dir_success_replaces_existing(tmp_path):
    out = tmp_path / "run"
    (out / "figures").mkdir(parents=True)
    (out / "figures" / "old.png").write_text("old")
    (out / "keep.txt").write_text("keep")
    with staged_dir(out) as tmp:
        (tmp / "figures").mkdir()
        (tmp / "figures" / "new.png").write_text("new")
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["new.png"]
    assert (out / "keep.txt").read_text() == "keep"
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_write_json_nan_becomes_null(tmp_path):
    path = write_json(tmp_path / "m.json", {"a": math.nan, "b": np.float64(0.5), "c": np.array([1, 2])})
    assert json.loads(path.read_text()) == {"a": None, "b": 0.5, "c": [1, 2]}
