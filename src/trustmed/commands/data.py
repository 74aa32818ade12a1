"""``trustmed data``: dataset utilities; ``trustmed data synth <name>`` writes a synthetic benchmark.

Other modules add generators to the ``synth`` sub-group with ``synth_app.command("name")(fn)``.
``trustmed data card <dataset> --root DIR`` writes a dataset card from the dataset's CSVs alone
(see :mod:`trustmed.data.card`).
"""

from __future__ import annotations

import inspect
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import Field

from trustmed.commands.common import (
    ConfigOpt,
    OutOpt,
    QuietOpt,
    SeedOpt,
    SetOpt,
    WaitOpt,
    claim,
    cli_command,
    console,
    load,
)
from trustmed.config import Config
from trustmed.errors import InputError

__all__ = [
    "CardConfig",
    "card_cmd",
    "data_app",
    "register",
    "synth_app",
    "synth_cxr_cmd",
    "synth_digits_cmd",
    "synth_skin_cmd",
]

data_app = typer.Typer(
    help="Datasets: synthetic benchmarks and real-dataset utilities.", no_args_is_help=True
)
synth_app = typer.Typer(
    help="Write a deterministic synthetic benchmark in a real dataset's format.", no_args_is_help=True
)
data_app.add_typer(synth_app, name="synth")


@cli_command
def synth_skin_cmd(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    out: OutOpt = Path("runs/synthskin"),
    seed: SeedOpt = None,
    quiet: QuietOpt = False,
    wait: WaitOpt = False,
) -> None:
    """SynthSkin: biased skin-lesion images in the Fitzpatrick17k format (see docs/data.md)."""
    from trustmed.data.synth.skin import SynthSkinConfig, generate_synthskin
    from trustmed.outdir import staged_dir

    claim(out, wait)

    cfg = load(SynthSkinConfig, config, set_, seed)
    t0 = time.perf_counter()
    with staged_dir(out) as tmp:
        generate_synthskin(tmp, **cfg.model_dump())
    n = cfg.n_train + cfg.n_val + cfg.n_external + cfg.n_test + cfg.n_ood
    if not quiet:
        console().print(
            f"SynthSkin: {n} images ({cfg.image_size}x{cfg.image_size}) "
            f"in {time.perf_counter() - t0:.1f}s -> "
            f"{out}/fitzpatrick17k.csv, {out}/synthskin_meta.csv, {out}/images/"
        )


synth_app.command("skin", help="SynthSkin: biased skin-lesion images in the Fitzpatrick17k format.")(
    synth_skin_cmd
)


class DigitsConfig(Config):
    """Knobs of ColoredDigits (see docs/distill.md)."""

    seed: int = 0
    spurious_correlation: float = Field(0.95, ge=0, le=1)
    image_size: int = Field(28, ge=8)


@cli_command
def synth_digits_cmd(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    out: OutOpt = Path("runs/coloreddigits"),
    seed: SeedOpt = None,
    quiet: QuietOpt = False,
    wait: WaitOpt = False,
) -> None:
    """ColoredDigits: real handwritten digits with a spurious background colour, Waterbirds format."""
    from trustmed.data.synth.digits import make_colored_digits
    from trustmed.outdir import staged_dir

    claim(out, wait)

    cfg = load(DigitsConfig, config, set_, seed)
    with staged_dir(out) as tmp:
        make_colored_digits(tmp, **cfg.model_dump())
    if not quiet:
        console().print(f"ColoredDigits -> {out}/metadata.csv and images")


class CXRConfig(Config):
    """Sizes of SynthCXR (see docs/grounding.md); ``vindr: true`` writes the out-of-distribution variant."""

    seed: int = 0
    n_images: int = Field(600, ge=4)
    image_size: int = Field(128, ge=32)
    vindr: bool = False


@cli_command
def synth_cxr_cmd(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    out: OutOpt = Path("runs/synthcxr"),
    seed: SeedOpt = None,
    quiet: QuietOpt = False,
    wait: WaitOpt = False,
) -> None:
    """SynthCXR: chest phantoms with findings, report sentences and boxes (MS-CXR or VinDr format)."""
    from trustmed.data.synth.cxr import make_synthcxr, make_synthcxr_vindr
    from trustmed.outdir import staged_dir

    claim(out, wait)

    cfg = load(CXRConfig, config, set_, seed)
    make = make_synthcxr_vindr if cfg.vindr else make_synthcxr
    with staged_dir(out) as tmp:
        make(tmp, n_images=cfg.n_images, image_size=cfg.image_size, seed=cfg.seed)
    if not quiet:
        console().print(f"SynthCXR ({'VinDr' if cfg.vindr else 'MS-CXR'} format) -> {out}")


synth_app.command("digits", help="ColoredDigits: spurious-colour digits in the Waterbirds format.")(
    synth_digits_cmd
)
synth_app.command("cxr", help="SynthCXR: chest phantoms with phrases and boxes (MS-CXR / VinDr format).")(
    synth_cxr_cmd
)


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


@cli_command
def card_cmd(
    dataset: Annotated[str | None, typer.Argument(help="Dataset name (see trustmed.data.DATASETS).")] = None,
    root: Annotated[Path | None, typer.Option("--root", help="Dataset folder (the official files).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    out: OutOpt = Path("runs/card"),
    seed: SeedOpt = None,
    quiet: QuietOpt = False,
    wait: WaitOpt = False,
) -> None:
    """Dataset card from the CSVs alone: counts per split, group and label, prevalence by group,
    missing attributes, images per patient and a group × label figure (card.md, card.json)."""
    from trustmed.data import dataset_loader, load_dataset
    from trustmed.data.card import write_card
    from trustmed.outdir import staged_dir

    claim(out, wait)

    sets = _card_overrides(set_)
    sets += [f"dataset={dataset}"] if dataset is not None else []
    sets += [f"root={root}"] if root is not None else []
    cfg = load(CardConfig, config, sets, seed)
    if cfg.dataset is None or cfg.root is None:
        raise InputError("trustmed data card: give a dataset name and --root (or dataset/root in --config)")
    options = dict(cfg.options)
    if "seed" in inspect.signature(dataset_loader(cfg.dataset)).parameters:
        options.setdefault("seed", cfg.seed)
    t0 = time.perf_counter()
    manifest = load_dataset(cfg.dataset, cfg.root, **options)
    load_s = time.perf_counter() - t0
    extra = {"root": str(cfg.root), "options": options, "load_seconds": round(load_s, 3)}
    with staged_dir(out) as tmp:
        card = write_card(manifest, tmp, attributes=cfg.attributes, name=cfg.dataset, extra=extra)
    if not quiet:
        console().print(
            f"{cfg.dataset}: {card['n_samples']} images, {card['n_patients']} patients, "
            f"prevalence {card['prevalence']:.1%}; read in {load_s:.2f}s, card in {card['seconds']:.2f}s "
            f"-> {out}/card.md, {out}/card.json, {out}/{card['figure']}"
        )


data_app.command(
    "card", help="Dataset card (card.md, card.json, balance figure) from a dataset's CSVs; images not needed."
)(card_cmd)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
