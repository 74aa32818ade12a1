"""Scale and crash safety of the shared loop: two gloo processes match one; SIGKILL + --resume matches
an uninterrupted run; weights never load through an unrestricted pickle."""

import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

SCRIPT = Path(__file__).with_name("toy_training_script.py")


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    env.pop("WORLD_SIZE", None)
    return env


def _run(args, **kw):
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        env=_env(),
        check=True,
        capture_output=True,
        text=True,
        timeout=240,
        **kw,
    )


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# A gloo worker can abort in C++ teardown after its Python code has finished: std::terminate (likely a
# thread still joinable) with no Python frame on the stack (seen with PYTHONFAULTHANDLER=1). It hit
# 5 of 163 two-process runs of the toy script on a 2-core CPU (3 of the 100 that destroyed the process
# group at exit first). The run's work is complete, so such a run is simply repeated.
TEARDOWN_ABORT = "terminate called without an active exception"


def _run_two_processes(args, attempts=3):
    """torchrun with 2 gloo processes on a free port; a port taken between the probe and the bind, or
    a worker's abort in teardown (``TEARDOWN_ABORT``), is retried; any other failure shows the
    workers' stderr."""
    for attempt in range(attempts):
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nproc_per_node",
                "2",
                "--master_addr",
                "127.0.0.1",
                "--master_port",
                str(_free_port()),
                str(SCRIPT),
                *map(str, args),
            ],
            env=_env(),
            capture_output=True,
            text=True,
            timeout=240,
        )
        if proc.returncode == 0:
            return proc
        clash_marks = ("EADDRINUSE", "DistNetworkError", "address already in use")
        port_clash = any(mark in proc.stderr for mark in clash_marks)
        if not (port_clash or TEARDOWN_ABORT in proc.stderr) or attempt == attempts - 1:
            raise AssertionError(f"torchrun failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def _result(out):
    return json.loads((out / "result.json").read_text())


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    single, multi = tmp_path / "single", tmp_path / "multi"
    _run([single, 3, 32])
    _run_two_processes([multi, 3, 16])
    one, two = _result(single), _result(multi)
    assert two["world_size"] == 2 and one["world_size"] == 1
    # every validation sample exactly once, despite the sampler padding 101 to 102
    assert sorted(two["ids"]) == list(range(101))
    s1 = np.array(one["scores"])[np.argsort(one["ids"])]
    s2 = np.array(two["scores"])[np.argsort(two["ids"])]
    # 2 processes x batch 16 with averaged gradients == 1 process x batch 32 (float tolerance)
    np.testing.assert_allclose(s1, s2, atol=1e-4)


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    reference, crashed = tmp_path / "ref", tmp_path / "crash"
    _run([reference, 6, 32])
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), str(crashed), "6", "32", "--sleep", "0.05"],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    state = crashed / "ckpt" / "loop_state.json"
    deadline = time.time() + 180
    while time.time() < deadline:
        if state.is_file() and json.loads(state.read_text())["epoch"] >= 2:
            break
        time.sleep(0.05)
    time.sleep(0.2)  # now mid-epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (crashed / "result.json").exists(), "the run finished before it could be killed"
    _run([crashed, 6, 32, "--resume"])
    ref, res = _result(reference)["weights"], _result(crashed)["weights"]
    for key in ref:
        np.testing.assert_allclose(np.array(ref[key]), np.array(res[key]), atol=1e-6, err_msg=key)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_malicious_pickle_is_refused(tmp_path):
    path = tmp_path / "best.pt"
    path.write_bytes(pickle.dumps({"weight": _Evil()}))
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
