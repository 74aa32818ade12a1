"""The command line's promises, tried as a user would: a bad ``--out`` is refused before any work by every
command; bad images stop a run before it trains and leave nothing; small groups are flagged; outputs
follow the umask; one run at a time per ``--out``; a rerun replaces ``--out`` whole."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
import typer
from _matrix import check_outcome, copy_of, invoke, read_only_folder, sets, snapshot, train_args

from trustmed.cli import app
from trustmed.outdir import MARKER

COMMANDS = [
    ["audit"],
    ["train"],
    ["debias", "run"],
    ["debias", "compare"],
    ["distill"],
    ["demo"],
    ["data", "synth", "skin"],
    ["data", "synth", "digits"],
    ["data", "synth", "cxr"],
    ["data", "card"],
    ["causal", "fit"],
    ["causal", "eval"],
    ["causal", "synth-anm"],
    ["causal", "synth-pendulum"],
    ["ground", "run"],
    ["ground", "eval"],
    ["ground", "tune"],
    ["ground", "train-ldm"],
]


def _commands_with_out(command, prefix=()):
    """Every command of the CLI (groups that act on their own included) that takes ``--out``."""
    found = [prefix] if any(p.name == "out" for p in command.params) else []
    for name, sub in getattr(command, "commands", {}).items():
        found += _commands_with_out(sub, (*prefix, name))
    return found


def test_every_command_with_out_is_tried():
    listed = {tuple(c) for c in COMMANDS} | {("debias", "apply-thresholds")}
    assert set(_commands_with_out(typer.main.get_command(app))) == listed


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_out_that_is_a_file_is_refused_before_any_work(command, tmp_path):
    a_file = tmp_path / "taken"
    a_file.write_text("not a folder")
    for out, needle in ((a_file, "is an existing file"), (a_file / "sub", "is a file, so no folder")):
        before = snapshot(out) if out.exists() else None
        result = invoke(*command, "--out", out)
        case = f"{' '.join(command)}: {needle}"
        check_outcome(result, out, category="bad --out", case=case, names=(needle,), before=before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_apply_thresholds_out_that_is_a_folder(thresholds, classifier, tmp_path):
    folder = tmp_path / "decisions"
    folder.mkdir()
    args = ["debias", "apply-thresholds", thresholds, "--predictions", classifier / "predictions_test.csv"]
    result = invoke(*args, "--out", folder)
    assert result.exit_code == 2 and "is a folder; this command writes one file" in result.stderr
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize(
    "command", [["audit"], ["data", "synth", "skin"], ["train"], ["ground", "eval"]], ids=" ".join
)
def test_out_in_a_read_only_folder(command, tmp_path):
    with read_only_folder(tmp_path / "ro") as ro:
        for out in (ro / "out", ro / "new" / "out"):
            result = invoke(*command, "--out", out)
            check_outcome(result, out, category="bad --out", case=f"{' '.join(command)}: read-only",
                          names=("cannot write in",))  # fmt: skip
            assert result.exit_code == 2


def _corrupt(path, how):
    data = bytearray(path.read_bytes())
    if how == "header":
        path.write_bytes(b"garbage" + bytes(data[7:]))
    elif how == "truncated":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:  # inside: the start and end look right, the compressed data do not
        data[60:100] = bytes(40)
        path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["header", "truncated", "inside"])
def test_a_corrupt_image_stops_train_and_leaves_nothing(how, skin, tmp_path):
    data = copy_of(skin, tmp_path / "data")
    image = sorted((data / "images").glob("*"))[5]
    _corrupt(image, how)
    out = tmp_path / "run"
    result = invoke(*train_args(data, out))
    check_outcome(result, out, category="corrupt image", case=f"train: {how}", names=(image.name,))
    assert result.exit_code == 2


@pytest.mark.parametrize("how", ["header", "truncated"])
def test_a_corrupt_image_stops_distill_before_training(how, groups_data, tmp_path):
    from _matrix import distill_args

    data = copy_of(groups_data, tmp_path / "data")
    _corrupt(data / "40.png", how)
    out = tmp_path / "run"
    result = invoke(*distill_args(data, out, "--method", "erm"))
    check_outcome(result, out, category="corrupt image", case=f"distill: {how}", names=("40.png",))
    assert result.exit_code == 2 and "cannot read image" in result.stderr


def test_small_groups_are_flagged_with_their_cis(tmp_path):
    rng = np.random.default_rng(0)
    labels, scores = rng.integers(0, 2, 80), rng.random(80)
    rows = [f"{y},{s:.3f},{g}" for y, s, g in zip(labels, scores, ["a", "b"] * 40, strict=True)]
    rows.append("1,0.9,rare")
    csv = tmp_path / "p.csv"
    csv.write_text("label,score,group\n" + "\n".join(rows) + "\n")
    out = tmp_path / "audit"
    result = invoke("audit", "--predictions", csv, "--group-col", "group", "--n-boot", "200", "--out", out)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["groups"]["rare"]["small"] is True and metrics["groups"]["a"]["small"] is False
    assert metrics["groups"]["rare"]["accuracy"]["ci"] == [1.0, 1.0]  # still computed
    assert metrics["min_group_size"] == 30
    small = "small group(s) with fewer than 30 predictions: 'rare' (1); their numbers and CIs rest on few"
    assert [w for w in metrics["warnings"] if "small group" in w] == [f"{small} predictions"]
    assert result.stdout.count("small group(s)") == 1 and "rare (small)" in (out / "audit.md").read_text()
    again = invoke("audit", "--predictions", csv, "--group-col", "group", "--n-boot", "0", "--out", out,
                   "--min-group-size", "50")  # fmt: skip
    assert again.exit_code == 0
    assert all(g["small"] for g in json.loads((out / "metrics.json").read_text())["groups"].values())


@pytest.mark.parametrize("n_boot", ["1", "199"])
def test_too_few_bootstrap_replicates_are_refused(n_boot, tmp_path):
    csv = tmp_path / "p.csv"
    csv.write_text("label,score,group\n1,0.9,a\n0,0.2,b\n")
    out = tmp_path / "audit"
    result = invoke("audit", "--predictions", csv, "--group-col", "group", "--n-boot", n_boot, "--out", out)
    check_outcome(result, out, category="bad option", case=f"--n-boot {n_boot}", names=("at least 200",))
    assert result.exit_code == 2


def test_bad_threshold_method_names_the_flag_and_choices(tmp_path):
    csv = tmp_path / "p.csv"
    csv.write_text("label,score,group\n1,0.9,a\n0,0.2,b\n")
    out = tmp_path / "audit"
    result = invoke("audit", "--predictions", csv, "--group-col", "group", "--threshold-method", "bogus",
                    "--out", out)  # fmt: skip
    choices = "--threshold-method: input should be 'youden', 'f1' or 'specificity', got 'bogus'"
    check_outcome(result, out, category="bad option", case="--threshold-method bogus", names=(choices,))


def test_nan_weights_are_named(classifier, skin, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    ckpt = copy_of(classifier, tmp_path / "ckpt")
    state = load_file(ckpt / "model.safetensors")
    save_file({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()},
              ckpt / "model.safetensors")  # fmt: skip
    out = tmp_path / "audit"
    result = invoke("audit", "--checkpoint", ckpt, "--dataset", "fitzpatrick17k", "--root", skin,
                    "--group-col", "skin_tone", "--out", out)  # fmt: skip
    check_outcome(result, out, category="bad weights", case="all NaN", names=("has NaN or infinite values",))
    assert "model.safetensors: tensor" in result.stderr


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_outputs_follow_the_umask(umask, file_mode, dir_mode, classifier, skin, tmp_path):
    out = tmp_path / "debias"
    old = os.umask(umask)
    try:
        args = ["debias", "run", "--method", "finetune", "--checkpoint", classifier, "--external", skin]
        result = invoke(*args, "--attribute", "skin_tone", "--out", out, *sets(["epochs=1", "n_boot=0"]))
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    names = {p.name for p in out.rglob("*")}
    assert {"model.safetensors", "model.json", "debias.json", MARKER, "predictions_test.csv"} <= names
    for path in [out, *out.rglob("*")]:
        assert stat.S_IMODE(path.stat().st_mode) == (dir_mode if path.is_dir() else file_mode), path


def test_a_rerun_replaces_out_whole_and_says_so(classifier, skin, tmp_path):
    out = tmp_path / "audit"
    base = ["audit", "--group-col", "skin_tone", "--n-boot", "0", "--out", out]
    first = invoke(*base, "--checkpoint", classifier, "--dataset", "fitzpatrick17k", "--root", skin)
    assert first.exit_code == 0 and (out / "predictions.csv").is_file()
    second = invoke(*base, "--predictions", classifier / "predictions_test.csv")
    assert second.exit_code == 0, second.output
    assert not (out / "predictions.csv").exists()  # written by the first run only
    assert "replaced the outputs of an earlier run" in second.stderr
