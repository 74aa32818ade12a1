"""Options every command shares, and the handler that turns bad input into exit code 2."""

from __future__ import annotations

import functools
import inspect
import logging
import signal
import sys
from collections.abc import Callable, Mapping
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
    "config_command",
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


ConfigSource = str | type | Callable[[dict[str, Any]], "str | type"]


def _config_class(source: ConfigSource, given: dict[str, Any]) -> type:
    """The config class: a class, ``"module:Class"`` (imported when the command runs, so that
    ``trustmed --help`` stays light), or a function of the given flags that returns one of those."""
    if callable(source) and not isinstance(source, type):
        source = source(given)
    if isinstance(source, str):
        from trustmed.utils import import_object

        source = import_object(source)
    return source


def config_command(
    config: ConfigSource,
    *,
    out: str,
    flags: Mapping[str, str] | None = None,
    seed: bool = True,
    sets: Callable[[list[str]], list[str]] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Make ``func(cfg, out, quiet, **own_options)`` a command whose settings are one config.

    The decorated function declares only its own options. The command gets the shared ones
    (``--config``, ``--set``, ``--out`` with default ``out``, ``--seed`` unless ``seed=False``,
    ``--quiet``, ``--wait``); when it runs it claims ``--out`` before any work, loads the config
    (the file, ``--set`` — passed through ``sets`` first when given —, ``--seed``, then the own
    options named in ``flags``: option name → config key, ``None`` or an empty list meaning "not
    given") and calls ``func`` with it; the other own options are passed on as they are.

    >>> from trustmed.config import Config
    >>> class Greeting(Config):
    ...     name: str = "world"
    ...     seed: int = 0
    >>> @config_command(Greeting, out="runs/hello", flags={"name": "name"})
    ... def hello(cfg, out, quiet, name: str | None = None):
    ...     "Say hello."
    >>> list(inspect.signature(hello).parameters)
    ['name', 'config', 'set_', 'out', 'seed', 'quiet', 'wait']
    """
    flags = dict(flags or {})
    names = {key: "--" + option.replace("_", "-") for option, key in flags.items()}
    shared = [
        inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=ConfigOpt),
        inspect.Parameter("set_", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=SetOpt),
        inspect.Parameter("out", inspect.Parameter.KEYWORD_ONLY, default=Path(out), annotation=OutOpt),
        *(
            [inspect.Parameter("seed", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=SeedOpt)]
            * seed
        ),
        inspect.Parameter("quiet", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=QuietOpt),
        inspect.Parameter("wait", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=WaitOpt),
    ]

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        own = list(inspect.signature(func, eval_str=True).parameters.values())[3:]

        @functools.wraps(func)
        def command(**kwargs: Any) -> Any:
            out_dir = kwargs.pop("out")
            claim(out_dir, kwargs.pop("wait"))
            quiet = kwargs.pop("quiet")
            config_file, overrides, seed_value = (
                kwargs.pop("config"),
                kwargs.pop("set_"),
                kwargs.pop("seed", None),
            )
            given = {key: kwargs.pop(option) for option, key in flags.items()}
            given = {key: value for key, value in given.items() if value is not None and value != []}
            cfg = load(
                _config_class(config, given),
                config_file,
                sets(list(overrides or [])) if sets else overrides,
                seed_value,
                flags=given,
                flag_names=names,
            )
            return func(cfg, out_dir, quiet, **kwargs)

        # typer reads this signature and these (evaluated) annotations, not the function's own
        del command.__wrapped__
        command.__signature__ = inspect.Signature([*own, *shared])
        command.__annotations__ = {p.name: p.annotation for p in [*own, *shared]}
        return cli_command(command)

    return decorate


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
