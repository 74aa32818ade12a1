"""Safe file IO: atomic writes with the umask, damaged files refused by name, state files without pickles."""

import json
import math
import os
import pickle
import random
import stat

import numpy as np
import pytest
import torch

from trustmed.errors import InputError
from trustmed.io import (
    atomic_write_text,
    check_finite,
    read_csv,
    read_json,
    read_state,
    read_tensors,
    refuse_pickles,
    write_json,
    write_state,
)


def test_write_json_nan_becomes_null(tmp_path):
    path = write_json(tmp_path / "m.json", {"a": math.nan, "b": np.float64(0.5), "c": np.array([1, 2])})
    assert json.loads(path.read_text()) == {"a": None, "b": 0.5, "c": [1, 2]}


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        path = atomic_write_text(tmp_path / "report.html", "<html></html>")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # no temporary file left


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch should-not-exist",))


def test_state_round_trip_keeps_types(tmp_path):
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.randn(3))], lr=0.1)
    optimizer.param_groups[0]["params"][0].grad = torch.ones(3)
    optimizer.step()
    tree = {
        "optimizer": optimizer.state_dict(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "nested": {1: [None, True, 2.5, float("nan"), "x"], "t": (1, (2, 3))},
    }
    path = write_state(tmp_path / "state.safetensors", tree)
    back = read_state(path)
    assert back["nested"][1][:3] == [None, True, 2.5] and math.isnan(back["nested"][1][3])
    assert back["nested"]["t"] == (1, (2, 3))
    assert list(back["optimizer"]["state"]) == [0]  # integer parameter ids stay integers
    moments = optimizer.state[optimizer.param_groups[0]["params"][0]]["exp_avg"]
    torch.testing.assert_close(back["optimizer"]["state"][0]["exp_avg"], moments)
    random.setstate(back["python"])  # accepted as they are
    np.random.set_state(back["numpy"])
    torch.set_rng_state(back["torch"])
    fresh = torch.optim.Adam([torch.nn.Parameter(torch.randn(3))], lr=0.5)
    fresh.load_state_dict(back["optimizer"])
    assert fresh.param_groups[0]["lr"] == 0.1 and fresh.param_groups[0]["betas"] == (0.9, 0.999)


def test_state_refuses_objects_it_cannot_store(tmp_path):
    with pytest.raises(TypeError, match="cannot be saved"):
        write_state(tmp_path / "s.safetensors", {"f": lambda: 1})
    assert not (tmp_path / "s.safetensors").exists()


@pytest.mark.parametrize("damage", ["truncate", "random", "empty", "pickle", "plain_safetensors"])
def test_damaged_state_file_is_one_input_error(tmp_path, damage):
    path = write_state(tmp_path / "s.safetensors", {"w": torch.ones(4), "step": 3})
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "random":
        path.write_bytes(np.random.default_rng(0).bytes(len(data)))
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "pickle":
        path.write_bytes(pickle.dumps({"w": _Evil()}))
    else:
        from safetensors.torch import save_file

        save_file({"w": torch.ones(2)}, str(path))
    with pytest.raises(InputError, match=str(path)):
        read_state(path)
    assert not (tmp_path / "should-not-exist").exists()


def test_read_tensors_never_unpickles_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    payload = tmp_path / "weights.pt"
    payload.write_bytes(pickle.dumps({"w": _Evil()}))
    with pytest.raises(InputError, match="weights.pt: not a weights-only PyTorch file"):
        read_tensors(payload)
    assert not (tmp_path / "should-not-exist").exists()
    good = tmp_path / "good.pth"
    torch.save({"state_dict": {"w": torch.ones(2)}}, good)
    assert read_tensors(good)["w"].tolist() == [1.0, 1.0]


def test_read_tensors_damaged_safetensors(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file({"w": torch.ones(100)}, str(path))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(InputError, match="model.safetensors: damaged"):
        read_tensors(path)
    with pytest.raises(InputError, match="not found"):
        read_tensors(tmp_path / "missing.safetensors")


def test_check_finite_names_the_tensor():
    with pytest.raises(InputError, match="'head.weight' has NaN"):
        check_finite({"a": torch.ones(2), "head.weight": torch.tensor([1.0, float("nan")])}, "m.safetensors")
    check_finite({"n": torch.tensor([1, 2])}, "ints are fine")


def test_refuse_pickles_names_the_file(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    refuse_pickles(tmp_path)
    (tmp_path / "custom_checkpoint_0.pkl").write_bytes(b"")
    with pytest.raises(InputError, match="custom_checkpoint_0.pkl: a pickle-format file"):
        refuse_pickles(tmp_path)


def test_read_json_names_the_file(tmp_path):
    path = tmp_path / "model.json"
    path.write_text('{"spec": ')
    with pytest.raises(InputError, match="model.json: not valid JSON"):
        read_json(path)
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(InputError, match="model.json: not valid JSON"):
        read_json(path)


def test_read_csv_refuses_duplicate_header_names(tmp_path):
    path = tmp_path / "preds.csv"
    path.write_text("label,score,score,group\n1,0.2,0.9,a\n")
    with pytest.raises(InputError, match="'score' appear more than once"):
        read_csv(path)
    path.write_text("label,score,group\n1,0.2,a\n")
    assert list(read_csv(path, required=["score"]).columns) == ["label", "score", "group"]
    with pytest.raises(InputError, match="missing column.*'patient'; available: label, score, group"):
        read_csv(path, required=["patient"])


@pytest.mark.parametrize(
    "content, needle",
    [
        (b"", "file is empty"),
        (b"a,b\n", "no rows"),
        (b"a,b\n1,2\n\xff\xfe,3\n", "not UTF-8 text \\(byte 0xff"),
    ],
)
def test_read_csv_bad_files(tmp_path, content, needle):
    path = tmp_path / "x.csv"
    path.write_bytes(content)
    with pytest.raises(InputError, match=needle):
        read_csv(path)


def test_read_csv_header_only_allowed_when_asked(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("a,b\n")
    assert list(read_csv(path, allow_empty=True).columns) == ["a", "b"]
