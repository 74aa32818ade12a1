"""``trustmed train`` killed mid-run (SIGKILL, or SIGTERM as a scheduler's pre-emption sends it), then
``--resume``: the same weights, bit for bit, as a run that was never interrupted."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from _matrix import OUTCOMES, invoke, sets
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

SKIN = ["image_size=16", "n_train=320", "n_val=40", "n_external=8", "n_test=8", "n_ood=0"]
TRAIN = ["data.image_size=16", "model.width=8", "optim.epochs=5", "data.batch_size=16"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("crash") / "synthskin"
    assert invoke("data", "synth", "skin", "--out", out, "--quiet", *sets(SKIN)).exit_code == 0
    return out


def _args(data, out):
    return ["train", "--out", str(out), "--quiet", *sets([f"data.root={data}", *TRAIN])]


def _run(args):
    """``trustmed`` in a process of its own, as a user runs it (an in-process run would inherit thread
    settings of earlier tests, and bit-for-bit equality needs the same floating-point order)."""
    return subprocess.run([sys.executable, "-m", "trustmed.cli", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("crash") / "reference"
    result = _run(_args(data, out))
    assert result.returncode == 0, result.stderr
    return load_file(out / "model.safetensors")


def _kill_after_epoch(args, out, sig, epoch):
    proc = subprocess.Popen([sys.executable, "-m", "trustmed.cli", *args], stderr=subprocess.PIPE)
    state = out / "checkpoints" / "loop_state.json"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        try:
            if json.loads(state.read_text())["epoch"] >= epoch:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.02)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    return proc.returncode, stderr.decode()


@pytest.mark.parametrize("kills", [[signal.SIGKILL], [signal.SIGTERM], [signal.SIGKILL, signal.SIGKILL]])
def test_killed_then_resumed_gives_the_same_weights(kills, data, reference, tmp_path):
    out = tmp_path / "run"
    for n, sig in enumerate(kills, start=1):
        args = _args(data, out) + (["--resume"] if n > 1 else [])
        code, stderr = _kill_after_epoch(args, out, sig, epoch=n)
        assert code == (-signal.SIGKILL if sig == signal.SIGKILL else 128 + signal.SIGTERM), stderr
        assert not (out / "model.safetensors").exists(), "the run finished before it could be killed"
        assert (out / "checkpoints" / "loop_state.json").is_file()
        assert "Traceback" not in stderr
    result = _run([*_args(data, out), "--resume"])
    assert result.returncode == 0, result.stderr
    resumed = load_file(out / "model.safetensors")
    assert resumed.keys() == reference.keys()
    for key, value in reference.items():
        assert resumed[key].equal(value), key
    leftovers = [p.name for p in out.parent.iterdir() if p.name.endswith((".staging", ".replaced", ".tmp"))]
    assert leftovers == []
    case = " then ".join(signal.Signals(sig).name for sig in kills) + ", then --resume"
    OUTCOMES.append({"category": "crash and resume", "case": case, "outcome": "exit 0, complete --out"})
