"""Helpers of the reliability matrix: running a command in-process and judging its outcome.

Every case records its outcome in :data:`OUTCOMES` (written out by ``conftest.py``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import traceback
from pathlib import Path

import pytest
from typer.testing import CliRunner

from trustmed.cli import app
from trustmed.outdir import MARKER

runner = CliRunner()
OUTCOMES: list[dict] = []

SKIN = ["image_size=16", "n_train=120", "n_val=40", "n_external=24", "n_test=24", "n_ood=0"]
TRAIN = ["data.image_size=16", "model.width=4", "optim.epochs=2"]
DISTILL = ["data.format=manifest", "data.image_size=8", "train.epochs=2", "data.batch_size=16", "n_boot=0"]
CAUSAL_DATA = ["n=240", "d=3", "observed_dim=6"]
CAUSAL_FIT = ["train.epochs=2", "model.latent_dim=3", "model.hidden=8", "train.warmup_epochs=0"]
GROUND_FAST = ["grounding.num_steps=3", "grounding.batch_size=4"]


def sets(values: list[str]) -> list[str]:
    return [part for value in values for part in ("--set", value)]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (or ``path`` itself, a file) and its bytes."""
    if path.is_file():
        return {".": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def check_outcome(
    result,
    out: Path,
    *,
    category: str,
    case: str,
    names: tuple[str, ...] = (),
    expect: tuple[str, ...] = (),
    before: dict[str, bytes] | None = None,
) -> str:
    """Exit 0 with a complete ``out``, or exit 2 with one line naming one of ``names`` and no ``out``
    (or, for a folder that existed, ``out`` exactly as ``before``) — never a traceback."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    if result.exit_code == 0:
        outcome = "exit 0, complete --out"
        marker = out / MARKER
        problem = None
        if out.suffix == ".csv":  # a command whose --out is one file
            problem = None if out.is_file() else "exit 0 without its output file"
        elif not marker.is_file() or json.loads(marker.read_text())["status"] != "complete":
            problem = "exit 0 without a complete --out"
        elif missing := [name for name in expect if not (out / name).exists()]:
            problem = f"exit 0 but {missing} not written"
    else:
        outcome = "exit 2, one line, --out untouched"
        problem = None
        if result.exit_code != 2:
            trace = "".join(traceback.format_exception(*result.exc_info)) if result.exc_info else ""
            problem = f"exit {result.exit_code}: {result.output[-800:]}\n{trace[-2500:]}"
        elif len(errors) != 1 or "Traceback" in result.output:
            problem = f"not one error line: {result.stderr!r}"
        elif names and not any(name in errors[0] for name in names):
            problem = f"the message does not name {names}: {errors[0]}"
        elif before is None and out.exists():
            problem = f"--out {out} left behind"
        elif before is not None and snapshot(out) != before:
            problem = f"--out {out} changed by a failed run"
    OUTCOMES.append(
        {
            "category": category,
            "case": case,
            "outcome": problem and "FAILED" or outcome,
            "message": errors[:1],
        }
    )
    assert problem is None, f"{category} / {case}: {problem}"
    return outcome


def train_args(skin: Path, out: Path) -> list:
    return ["train", "--out", out, "--quiet", *sets([f"data.root={skin}", *TRAIN])]


def distill_args(data: Path, out: Path, *extra) -> list:
    return ["distill", "--out", out, "--quiet", *sets([*DISTILL, f"data.root={data}"]), *extra]


def copy_of(src: Path, dest: Path) -> Path:
    if src.is_dir():
        shutil.copytree(src, dest)
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)
    return dest


@contextlib.contextmanager
def read_only_folder(path):
    """A folder this process cannot write: a read-only tmpfs as root, or mode 0555 otherwise."""
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)
        return
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"running as root without permission to mount a read-only folder: {mounted.stderr!r}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


CHECKPOINT_COMMANDS = ("audit", "debias", "compare", "teacher")


def checkpoint_command(command: str, ckpt: Path, skin: Path, groups: Path, out: Path) -> list:
    """The arguments of a command that reads the classifier checkpoint ``ckpt`` (one of
    :data:`CHECKPOINT_COMMANDS`; ``teacher`` is ``distill --teacher``), writing ``out``."""
    args = {
        "audit": ["audit", "--checkpoint", ckpt, "--dataset", "fitzpatrick17k", "--root", skin,
                  "--group-col", "skin_tone", "--n-boot", "0"],
        "debias": ["debias", "run", "--method", "swift", "--checkpoint", ckpt, "--external", skin,
                   "--attribute", "skin_tone", *sets(["epochs=1", "n_boot=0"])],
        "compare": ["debias", "compare", "--checkpoint", ckpt, "--external", skin, "--attribute", "skin_tone",
                    *sets(["quick=true", "epochs=1", "n_boot=0", "methods=[swift]"])],
        "teacher": distill_args(groups, out, "--method", "kd", "--teacher", ckpt),
    }[command]  # fmt: skip
    return [*args, "--out", out, "--quiet"]


def ground_run(model: Path, image: Path, out: Path, *extra) -> list:
    """``trustmed ground run`` of one phrase on ``image`` with the LDM folder ``model``."""
    args = ["ground", "run", "--model", model, "--image", image, "--text", "left effusion", *extra]
    return [*args, *sets(GROUND_FAST), "--out", out, "--quiet"]
