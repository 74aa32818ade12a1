"""Progress bars for long loops: rich on a terminal, silent with ``--quiet`` or when not a TTY."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

__all__ = ["set_quiet", "is_quiet", "track"]

T = TypeVar("T")
_QUIET = False


def set_quiet(quiet: bool) -> None:
    global _QUIET
    _QUIET = bool(quiet)


def is_quiet() -> bool:
    return _QUIET or not sys.stderr.isatty()


def track(iterable: Iterable[T], description: str = "working", total: int | None = None) -> Iterator[T]:
    """Iterate with a rich progress bar on stderr unless quiet."""
    if is_quiet():
        yield from iterable
        return
    from rich.console import Console
    from rich.progress import track as rich_track

    yield from rich_track(
        iterable, description=description, total=total, console=Console(stderr=True), transient=True
    )
