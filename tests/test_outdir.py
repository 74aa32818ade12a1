"""``--out``: checked before any work, one run at a time, replaced whole, no leftovers after bad input."""

import json
import logging
import os
import stat
import subprocess
import sys
import textwrap

import pytest
from typer.testing import CliRunner

from trustmed.cli import app
from trustmed.errors import InputError
from trustmed.outdir import MARKER, OutputClaim, check_out, staged_dir, state_dir

runner = CliRunner()
HOLDER = textwrap.dedent(
    """
    import sys, time
    from trustmed.outdir import OutputClaim
    with OutputClaim(sys.argv[1]):
        print("holding", flush=True)
        time.sleep(float(sys.argv[2]))
    print("released", flush=True)
    """
)


def _entries(folder):
    return sorted(p.name for p in folder.iterdir())


def test_failure_leaves_nothing(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError), staged_dir(out) as stage:
        (stage / "partial.csv").write_text("x")
        raise RuntimeError("boom")
    assert not out.exists()
    assert _entries(tmp_path) == [".run.lock"]


def test_success_replaces_out_as_a_whole_and_says_so(tmp_path, caplog):
    out = tmp_path / "run"
    with staged_dir(out) as stage:
        (stage / "figures").mkdir()
        (stage / "figures" / "old.png").write_text("old")
        (stage / "only_in_first_run.txt").write_text("stale")
    assert json.loads((out / MARKER).read_text())["status"] == "complete"
    with caplog.at_level(logging.WARNING, logger="trustmed.outdir"), staged_dir(out) as stage:
        (stage / "figures").mkdir()
        (stage / "figures" / "new.png").write_text("new")
    assert _entries(out) == [MARKER, "figures"]  # nothing of the first run survives
    assert _entries(out / "figures") == ["new.png"]
    assert "replaced the outputs of an earlier run" in caplog.text
    assert _entries(tmp_path) == [".run.lock", "run"]


def test_a_folder_trustmed_did_not_write_is_never_replaced(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    with pytest.raises(InputError, match="was not written by trustmed"), staged_dir(home):
        pass
    assert (home / "thesis.tex").read_text() == "years of work"
    empty = tmp_path / "empty"
    empty.mkdir()
    with staged_dir(empty) as stage:
        (stage / "a.txt").write_text("a")
    assert _entries(empty) == [MARKER, "a.txt"]


def test_bad_out_paths_are_refused_before_anything_is_made(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(InputError, match="is an existing file"):
        check_out(a_file)
    with pytest.raises(InputError, match="a_file is a file, so no folder can be made under it"):
        check_out(a_file / "sub" / "out")
    with pytest.raises(InputError, match="is a folder; this command writes one file"):
        check_out(tmp_path, kind="file")
    with pytest.raises(InputError, match="is a file, so no folder"):
        OutputClaim(a_file / "out")
    assert _entries(tmp_path) == ["a_file"]


def test_a_second_run_stops_naming_the_holder_or_waits(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out), "2"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(
            InputError, match=rf"in use by another trustmed run \(pid {holder.pid} on .*--wait"
        ):
            OutputClaim(out).__enter__()
        with OutputClaim(out, wait=True):
            assert holder.stdout.readline().strip() == "released"  # got the lock only after the holder
    finally:
        holder.kill()
        holder.wait()


def test_stale_staging_of_a_killed_run_is_removed(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out), "60"], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "holding"
    stale = tmp_path / ".run.dead0001.staging"
    (stale / "figures").mkdir(parents=True)
    (tmp_path / ".run.dead0002.replaced").mkdir()
    holder.kill()  # SIGKILL: no clean-up of its own
    holder.wait()
    with staged_dir(out) as stage:
        (stage / "x").write_text("x")
    assert _entries(tmp_path) == [".run.lock", "run"]


def test_published_folder_follows_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with staged_dir(tmp_path / "run") as stage:
            (stage / "metrics.json").write_text("{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "run" / MARKER).stat().st_mode) == 0o644


def test_state_is_kept_on_success_and_removed_after_bad_input(tmp_path):
    out = tmp_path / "run"
    with OutputClaim(out) as claim:
        (claim.state_dir("checkpoints") / "loop_state.json").write_text("{}")
        with claim.staged() as stage:
            (stage / "model.safetensors").write_text("w")
    assert _entries(out) == [MARKER, "checkpoints", "model.safetensors"]
    fresh = tmp_path / "fresh"
    with pytest.raises(InputError), OutputClaim(fresh) as claim:
        (claim.state_dir() / "loop_state.json").write_text("{}")
        raise InputError("corrupt image found in epoch 2")
    assert not fresh.exists()


def test_state_survives_a_crash(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt), OutputClaim(out) as claim:
        (claim.state_dir() / "loop_state.json").write_text("{}")
        raise KeyboardInterrupt
    assert (out / "checkpoints" / "loop_state.json").is_file()  # for --resume
    assert json.loads((out / MARKER).read_text())["status"] == "running"


def test_only_the_main_process_writes(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    out = tmp_path / "run"
    with staged_dir(out) as stage:
        (stage / "x").write_text("x")
    assert not out.exists() and _entries(tmp_path) == []
    assert state_dir(out) == out / "checkpoints"


def test_failed_run_under_a_new_parent_removes_the_parent(tmp_path):
    with pytest.raises(InputError), staged_dir(tmp_path / "a" / "b" / "run"):
        raise InputError("bad input")
    assert _entries(tmp_path) == []


def test_the_command_line_stops_or_waits_for_a_held_out(tmp_path):
    csv = tmp_path / "p.csv"
    csv.write_text("label,score,group\n1,0.9,a\n0,0.2,b\n1,0.7,a\n0,0.4,b\n")
    out = tmp_path / "audit"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out), "3"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        args = ["audit", "--predictions", csv, "--group-col", "group", "--n-boot", "0", "--out", out]
        busy = runner.invoke(app, [str(a) for a in args])
        assert busy.exit_code == 2 and f"is in use by another trustmed run (pid {holder.pid}" in busy.stderr
        assert not out.exists()
        waited = runner.invoke(app, [*map(str, args), "--wait"])
        assert waited.exit_code == 0, waited.output
        assert holder.stdout.readline().strip() == "released"  # before the waiting run could start
    finally:
        holder.kill()
        holder.wait()
