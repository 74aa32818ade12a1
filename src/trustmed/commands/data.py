"""``trustmed data``: dataset utilities.

``trustmed data synth <name>`` writes a synthetic benchmark: one sub-command per entry of
:data:`trustmed.data.synth.GENERATORS`, built by :func:`synth_command`. ``trustmed data card
<dataset> --root DIR`` writes a dataset card from the dataset's CSVs alone (see
:mod:`trustmed.data.card`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from trustmed.commands.common import config_command, console
from trustmed.config import Config
from trustmed.data.synth import GENERATORS, Generator

__all__ = ["CardConfig", "card_cmd", "data_app", "register", "synth_app", "synth_command", "synth_group"]


def synth_command(name: str, generator: Generator) -> Callable[..., None]:
    """The ``trustmed data synth <name>`` command of one registered generator."""

    def command(cfg, out: Path, quiet: bool) -> None:
        from trustmed.outdir import staged_dir

        t0 = time.perf_counter()
        with staged_dir(out) as tmp:
            generator.run(tmp, **cfg.model_dump())
            written = sorted(p.name + "/" * p.is_dir() for p in tmp.iterdir())
        if not quiet:
            console().print(
                f"data synth {name}: {', '.join(written)} in {time.perf_counter() - t0:.1f}s -> {out}"
            )

    command.__name__ = f"synth_{name}_cmd"
    command.__doc__ = f"{generator.summary}\n\nExample: trustmed data synth {name} --out {generator.out}"
    return config_command(lambda given: generator.knobs(), out=generator.out)(command)


def synth_group(generators: Mapping[str, Generator]) -> typer.Typer:
    """The ``synth`` command group: one sub-command per generator."""
    group = typer.Typer(
        help="Write a deterministic synthetic benchmark in a real dataset's format.", no_args_is_help=True
    )
    for name, generator in generators.items():
        group.command(name)(synth_command(name, generator))
    return group


data_app = typer.Typer(
    help="Datasets: synthetic benchmarks and real-dataset utilities.", no_args_is_help=True
)
synth_app = synth_group(GENERATORS)
data_app.add_typer(synth_app, name="synth")


class CardConfig(Config):
    """``trustmed data card``: which dataset, where, with which loader options."""

    seed: int = 0
    dataset: str | None = None
    root: Path | None = None
    options: dict[str, Any] = {}
    attributes: list[str] | None = None


def _card_overrides(sets: list[str] | None) -> list[str]:
    # ``--set finding=Edema`` is a loader option; ``--set root=...`` etc. are the card's own keys.
    own = set(CardConfig.model_fields)
    return [
        item if item.split("=", 1)[0].split(".")[0].strip() in own else f"options.{item}"
        for item in sets or []
    ]


@config_command(
    CardConfig, out="runs/card", flags={"dataset": "dataset", "root": "root"}, sets=_card_overrides
)
def card_cmd(
    cfg,
    out: Path,
    quiet: bool,
    dataset: Annotated[str | None, typer.Argument(help="Dataset name (see trustmed.data.DATASETS).")] = None,
    root: Annotated[Path | None, typer.Option("--root", help="Dataset folder (the official files).")] = None,
) -> None:
    """Dataset card (card.md, card.json, balance figure) from a dataset's CSVs alone; images not needed.

    --set key=value sets a loader option of the dataset.

    Example: trustmed data card fitzpatrick17k --root runs/synthskin --out runs/card
    """
    from trustmed.data.card import dataset_card
    from trustmed.outdir import staged_dir

    with staged_dir(out) as tmp:
        card = dataset_card(
            cfg.dataset, cfg.root, tmp, options=cfg.options, attributes=cfg.attributes, seed=cfg.seed
        )
    if not quiet:
        console().print(
            f"{card['dataset']}: {card['n_samples']} images, {card['n_patients']} patients, "
            f"prevalence {card['prevalence']:.1%}; read in {card['load_seconds']:.2f}s, "
            f"card in {card['seconds']:.2f}s -> {out}/card.md, {out}/card.json, {out}/{card['figure']}"
        )


data_app.command("card")(card_cmd)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
