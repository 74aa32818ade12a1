"""``trustmed data``: dataset utilities; ``trustmed data synth <name>`` writes a synthetic benchmark.

Other modules add generators to the ``synth`` sub-group with ``synth_app.command("name")(fn)``.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

from trustmed.commands.common import ConfigOpt, OutOpt, QuietOpt, SeedOpt, SetOpt, cli_command, console, load

__all__ = ["data_app", "register", "synth_app", "synth_skin_cmd"]

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
) -> None:
    """SynthSkin: biased skin-lesion images in the Fitzpatrick17k format (see docs/data.md)."""
    from trustmed.data.synth.skin import SynthSkinConfig, generate_synthskin
    from trustmed.io import staged_dir

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


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
