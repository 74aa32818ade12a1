"""One run at a time per output folder, and outputs that appear whole or not at all.

Every command that writes ``--out`` goes through this module:

1. ``--out`` is checked before any work (:func:`check_out`): it is not a file, the nearest folder
   above it that exists can be written, and, if it already exists with content, trustmed wrote it
   (it holds ``.trustmed-run.json``), because a run replaces it as a whole.
2. A lock beside it (``.<name>.lock``, taken with the ``filelock`` package) is held for the whole
   run. A second run into the same ``--out`` stops at once, naming the holder, or waits for it with
   ``--wait``.
3. Outputs are written into a staging folder beside ``--out`` (``.<name>.<random>.staging``). When
   the command succeeds, that folder replaces ``--out`` as a whole, so no file of an earlier run
   survives; the command says so. On failure the staging folder is removed, and a run that stopped
   on bad input (exit 2) leaves no ``--out`` if there was none before. Staging folders of a killed
   run are removed by the next run into the same ``--out``.
4. A resumable run's state (``checkpoints/``) is written straight into ``--out`` as it goes, so that
   a killed run can be resumed; it is carried into the new ``--out`` at the end.

Under ``torchrun`` / ``accelerate launch`` only the main process (``RANK`` 0) locks and publishes;
the other processes write into private temporary folders that are discarded.

>>> import tempfile, pathlib
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> with staged_dir(root / "run") as stage:
...     _ = (stage / "a.txt").write_text("x")
>>> sorted(p.name for p in (root / "run").iterdir())
['.trustmed-run.json', 'a.txt']
"""

from __future__ import annotations

import glob
import json
import logging
import os
import secrets
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Literal

from trustmed import __version__
from trustmed.errors import InputError
from trustmed.io import atomic_write_text

__all__ = [
    "MARKER",
    "OutputClaim",
    "check_out",
    "claim_output",
    "command_scope",
    "is_main_process",
    "staged_dir",
    "state_dir",
]

log = logging.getLogger(__name__)

MARKER = ".trustmed-run.json"
"""Written into every ``--out``: the command, the trustmed version, when it ran and whether it finished."""

Kind = Literal["dir", "file"]

_ACTIVE: dict[str, OutputClaim] = {}
_SCOPE: ContextVar[ExitStack | None] = ContextVar("trustmed_command_scope", default=None)


def is_main_process() -> bool:
    """Whether this is the process that writes outputs (``RANK`` 0, or not a distributed launch)."""
    return os.environ.get("RANK", "0").strip() in ("", "0")


def _resolved(out: str | os.PathLike) -> Path:
    return Path(out).expanduser().resolve()


def check_out(out: str | os.PathLike, *, kind: Kind = "dir") -> Path:
    """Check that ``out`` can be written, before any work; return its resolved path.

    Refused with an :class:`InputError` naming ``out``: an existing file where a folder is wanted
    (or the reverse), a non-empty folder trustmed did not write, a file among its parents, and a
    parent folder that cannot be written. Nothing is created.
    """
    given = Path(out)
    path = _resolved(out)
    if path.exists():
        if kind == "dir" and not path.is_dir():
            raise InputError(f"--out {given}: is an existing file; give a folder")
        if kind == "file" and path.is_dir():
            raise InputError(f"--out {given}: is a folder; this command writes one file, give its path")
        if kind == "dir" and not (path / MARKER).is_file() and any(path.iterdir()):
            raise InputError(
                f"--out {given}: the folder exists, is not empty and was not written by trustmed (it has "
                f"no {MARKER}); a run replaces --out as a whole, so give a new or empty folder"
            )
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(f"--out {given}: {ancestor} is a file, so no folder can be made under it")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError(f"--out {given}: cannot write in {ancestor} (permission denied)")
    if path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
        raise InputError(f"--out {given}: the folder is not writable (permission denied)")
    return path


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class OutputClaim:
    """This run's hold on ``--out``: the check, the lock, the staging folders and the publishing.

    Use it as a context manager (or through :func:`claim_output` inside a command). On exit the
    lock is released and unpublished staging folders are removed; when the run stopped on bad
    input and ``--out`` did not exist before, whatever the run put there is removed too.
    """

    def __init__(self, out: str | os.PathLike, *, wait: bool = False, kind: Kind = "dir"):
        self.given = Path(out)
        self.kind = kind
        self.wait = wait
        self.path = check_out(out, kind=kind)
        self.existed = self.path.exists()
        self.main = is_main_process()
        self.keep: set[str] = set()
        self.started = _now()
        self._stages: list[Path] = []
        self._made: list[Path] = []
        self._lock = None
        self._published = False

    # -- paths -----------------------------------------------------------------------------
    @property
    def parent(self) -> Path:
        return self.path.parent

    def _sibling(self, suffix: str) -> Path:
        return self.parent / f".{self.path.name}.{suffix}"

    def _make_parent(self) -> None:
        missing = []
        folder = self.parent
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        for folder in reversed(missing):
            try:
                folder.mkdir(mode=0o777)
            except FileExistsError:
                continue
            except OSError as exc:
                raise InputError(f"--out {self.given}: cannot create {folder} ({exc.strerror})") from None
            self._made.append(folder)

    # -- lock ------------------------------------------------------------------------------
    def _holder(self) -> str:
        try:
            info = json.loads(self._sibling("lock.holder").read_text())
            return f"pid {info['pid']} on {info['host']} since {info['started']}: {' '.join(info['command'])}"
        except (OSError, ValueError, KeyError, TypeError):
            return "holder unknown"

    def __enter__(self) -> OutputClaim:
        key = str(self.path)
        if key in _ACTIVE:
            raise RuntimeError(f"--out {self.given} is already claimed by this process")
        if self.main:
            from filelock import FileLock, Timeout

            self._make_parent()
            self._lock = FileLock(str(self._sibling("lock")), timeout=0)
            try:
                try:
                    self._lock.acquire(timeout=0)
                except Timeout:
                    if not self.wait:
                        raise InputError(
                            f"--out {self.given} is in use by another trustmed run ({self._holder()}); "
                            "wait for it to finish, or pass --wait"
                        ) from None
                    log.warning(
                        "--out %s is in use (%s); waiting for it (--wait)", self.given, self._holder()
                    )
                    self._lock.acquire(timeout=-1)
                holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": self.started}
                atomic_write_text(self._sibling("lock.holder"), json.dumps({**holder, "command": sys.argv}))
            except OSError as exc:
                self._release()
                self._undo_parents()
                raise InputError(
                    f"--out {self.given}: cannot write in {self.parent} ({exc.strerror or exc})"
                ) from None
            except BaseException:
                self._release()
                self._undo_parents()
                raise
            self._remove_stale()
        _ACTIVE[key] = self
        return self

    def _remove_stale(self) -> None:
        """Staging folders and temporary files of earlier runs that were killed (we hold the lock)."""
        pattern = glob.escape(str(self.parent / f".{self.path.name}")) + ".*."
        for suffix in ("staging", "replaced"):
            for path in glob.glob(pattern + suffix):
                shutil.rmtree(path, ignore_errors=True)
        for path in glob.glob(pattern + "tmp"):
            Path(path).unlink(missing_ok=True)

    def __exit__(self, exc_type, exc, tb) -> None:
        _ACTIVE.pop(str(self.path), None)
        try:
            for stage in self._stages:
                shutil.rmtree(stage, ignore_errors=True)
            bad_input = exc_type is not None and issubclass(exc_type, InputError)
            if bad_input and self.main and not self.existed and not self._published and self.path.is_dir():
                shutil.rmtree(self.path, ignore_errors=True)
        finally:
            if self._lock is not None:
                self._sibling("lock.holder").unlink(missing_ok=True)
                self._release()
                if exc_type is not None and not self.path.exists():
                    self._undo_parents()

    def _release(self) -> None:
        if self._lock is not None and self._lock.is_locked:
            self._lock.release()

    def _undo_parents(self) -> None:
        """Remove the folders this run created above ``--out`` (and the lock in them), if empty."""
        if not self._made:
            return
        self._sibling("lock").unlink(missing_ok=True)
        for folder in reversed(self._made):
            try:
                folder.rmdir()
            except OSError:
                break
        self._made = []

    # -- outputs ---------------------------------------------------------------------------
    def _write_marker(self, folder: Path, status: str) -> None:
        marker = {
            "trustmed": __version__,
            "command": sys.argv,
            "status": status,
            "started": self.started,
            "finished": _now() if status == "complete" else None,
            "pid": os.getpid(),
            "host": socket.gethostname(),
        }
        atomic_write_text(folder / MARKER, json.dumps(marker, indent=2) + "\n")

    def state_dir(self, name: str = "checkpoints") -> Path:
        """``--out/name``, for state written during the run (kept when the outputs are published)."""
        folder = self.path / name
        self.keep.add(name)
        if self.main:
            if not self.path.exists():
                self._make_parent()
                self.path.mkdir(mode=0o777)
                self._write_marker(self.path, "running")
            folder.mkdir(mode=0o777, exist_ok=True)
        return folder

    @contextmanager
    def staged(self, keep: Iterable[str] = ()) -> Iterator[Path]:
        """A staging folder that replaces ``--out`` on success; ``keep`` names entries carried over."""
        if self.kind != "dir":
            raise RuntimeError("a file output is written with atomic_write_*, not staged")
        if self._published:
            raise RuntimeError(f"--out {self.given} was already published by this run")
        if not self.main:
            stage = Path(tempfile.mkdtemp(prefix="trustmed-rank-"))
            try:
                yield stage
            finally:
                shutil.rmtree(stage, ignore_errors=True)
            return
        self._make_parent()
        stage = self._sibling(f"{secrets.token_hex(4)}.staging")
        stage.mkdir(mode=0o777)
        self._stages.append(stage)
        try:
            yield stage
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            self._stages.remove(stage)
            raise
        self._publish(stage, self.keep | set(keep))

    def _publish(self, stage: Path, keep: set[str]) -> None:
        self._write_marker(stage, "complete")
        replaced = None
        if self.path.exists():
            for name in sorted(keep):
                if (self.path / name).exists() and not (stage / name).exists():
                    os.replace(self.path / name, stage / name)
            earlier = [p.name for p in self.path.iterdir() if p.name != MARKER]
            replaced = self._sibling(f"{secrets.token_hex(4)}.replaced")
            os.replace(self.path, replaced)
            if earlier:
                log.warning(
                    "--out %s: replaced the outputs of an earlier run (%d entries) with this run's",
                    self.given,
                    len(earlier),
                )
        os.replace(stage, self.path)
        self._stages.remove(stage)
        self._published = True
        if replaced is not None:
            shutil.rmtree(replaced, ignore_errors=True)


@contextmanager
def command_scope() -> Iterator[None]:
    """The lifetime of one command: claims made with :func:`claim_output` end with it."""
    with ExitStack() as stack:
        token = _SCOPE.set(stack)
        try:
            yield
        finally:
            _SCOPE.reset(token)


def claim_output(out: str | os.PathLike, *, wait: bool = False, kind: Kind = "dir") -> OutputClaim:
    """Check and lock ``--out`` for the rest of the running command (see :func:`command_scope`)."""
    existing = _ACTIVE.get(str(_resolved(out)))
    if existing is not None:
        return existing
    stack = _SCOPE.get()
    if stack is None:
        raise RuntimeError("claim_output() is for commands; elsewhere use `with OutputClaim(out):`")
    return stack.enter_context(OutputClaim(out, wait=wait, kind=kind))


@contextmanager
def staged_dir(out: str | os.PathLike, *, keep: Iterable[str] = ()) -> Iterator[Path]:
    """Yield a staging folder whose content replaces ``out`` as a whole when the block succeeds.

    Inside a command that has claimed ``out`` the claim's lock is used; otherwise ``out`` is
    claimed for the block. On an exception the staging folder is removed and ``out`` is left as it was.
    """
    claim = _ACTIVE.get(str(_resolved(out)))
    if claim is not None:
        with claim.staged(keep) as stage:
            yield stage
        return
    with OutputClaim(out) as claim, claim.staged(keep) as stage:
        yield stage


def state_dir(out: str | os.PathLike, name: str = "checkpoints") -> Path:
    """``out/name`` for a run's resumable state; registered with the claim on ``out`` if there is one."""
    claim = _ACTIVE.get(str(_resolved(out)))
    if claim is not None:
        return claim.state_dir(name)
    folder = Path(out) / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder
