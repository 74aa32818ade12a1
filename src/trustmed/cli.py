"""The ``trustmed`` command line: one sub-command (group) per capability, each a thin layer over the API."""

from __future__ import annotations

import importlib
from typing import Annotated

import typer

__all__ = ["app", "main"]

app = typer.Typer(
    name="trustmed",
    help="Trustworthy medical-imaging models: audit, debias, distil, ground, discover causal order.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        from trustmed import __version__

        typer.echo(f"trustmed {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    pass


# Each module registers its commands on ``app``; listed once here.
COMMAND_MODULES = ["audit", "data", "train", "demo", "debias", "distill", "ground", "causal"]

for _name in COMMAND_MODULES:
    try:
        _module = importlib.import_module(f"trustmed.commands.{_name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"trustmed.commands.{_name}":
            raise
        continue
    _module.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
