"""``trustmed demo``: synthetic data → training → audit → every capability's section → report.html."""

from __future__ import annotations

from pathlib import Path

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

__all__ = ["register"]


@cli_command
def demo_cmd(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    out: OutOpt = Path("runs/demo"),
    seed: SeedOpt = None,
    quiet: QuietOpt = False,
    wait: WaitOpt = False,
) -> None:
    """Run every capability on built-in synthetic data and write a self-contained report.html."""
    from trustmed.demo import DemoConfig, run_demo

    claim(out, wait)

    cfg = load(DemoConfig, config, set_, seed)
    result = run_demo(cfg, out)
    con = console()
    con.print(f"[bold]trustmed demo[/bold] finished in {result.timings['total']:.0f} s")
    con.print(f"report: {result.report.resolve()}")


def register(app) -> None:
    app.command(
        "demo",
        help="Run the end-to-end demo on synthetic data and write report.html.\n\n"
        "Example: trustmed demo --out runs/demo",
    )(demo_cmd)
