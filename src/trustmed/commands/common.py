"""Options every command shares, and the handler that turns bad input into exit code 2."""

from __future__ import annotations

import functools
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from trustmed.errors import InputError
from trustmed.outdir import claim_output, command_scope
from trustmed.progress import set_quiet

__all__ = [
    "ConfigOpt",
    "SetOpt",
    "OutOpt",
    "SeedOpt",
    "QuietOpt",
    "WaitOpt",
    "claim",
    "cli_command",
    "console",
    "load",
]

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file.")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="Override a config key: --set key.sub=value (repeatable).")
]
OutOpt = Annotated[
    Path, typer.Option("--out", "-o", help="Output directory, replaced as a whole when the run succeeds.")
]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Random seed (overrides the config's seed).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
WaitOpt = Annotated[
    bool,
    typer.Option("--wait", help="If another run is writing the same --out, wait for it instead of stopping."),
]

F = TypeVar("F", bound=Callable[..., Any])


def console():
    from rich.console import Console

    return Console(stderr=False, soft_wrap=True)


def load(
    config_cls,
    config: Path | None,
    overrides: list[str] | None,
    seed: int | None = None,
    flags: dict[str, Any] | None = None,
    flag_names: dict[str, str] | None = None,
):
    """Load a command's config: the YAML file, then ``--set`` overrides, then the typed flags.

    ``flags`` maps config keys (dotted for nested ones, e.g. ``"student.width"``) to the values of
    the command's own options; ``None`` means the option was not given. The flags win over the file
    and ``--set``; ``--seed`` wins over the file's ``seed``. A bad flag value is an
    :class:`InputError` naming the flag (``flag_names`` maps a key to its flag where they differ).
    """
    from trustmed.config import apply_values, load_config

    sets = list(overrides or [])
    if seed is not None:
        sets.append(f"seed={seed}")
    cfg = load_config(config_cls, config, sets)
    given = {key: value for key, value in (flags or {}).items() if value is not None}
    return apply_values(cfg, given, source="flag", flag_names=flag_names) if given else cfg


def claim(out: Path, wait: bool = False, kind: str = "dir"):
    """Check and lock ``--out`` for the rest of the command, before any work (see :mod:`trustmed.outdir`)."""
    return claim_output(out, wait=wait, kind=kind)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is logged (a caller may have replaced it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _log_to_stderr() -> None:
    """Warnings (and worse) of every module go to stderr, once per process."""
    root = logging.getLogger()
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler.setLevel(logging.WARNING)
        root.addHandler(handler)
        if root.level > logging.WARNING or root.level == logging.NOTSET:
            root.setLevel(logging.WARNING)


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)


def cli_command(func: F) -> F:
    """Run a command body: ``InputError`` becomes one line on stderr and exit code 2.

    Outputs claimed with :func:`claim` are released (and, after bad input, removed) on the way out.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        if kwargs.get("quiet"):
            set_quiet(True)
        _log_to_stderr()
        # SIGTERM unwinds like Ctrl-C, so staged (temporary) outputs are removed on the way out.
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        try:
            with command_scope():
                return func(*args, **kwargs)
        except InputError as exc:
            sys.stderr.write(f"error: {exc}\n")
            raise typer.Exit(code=2) from None

    return wrapper  # type: ignore[return-value]
