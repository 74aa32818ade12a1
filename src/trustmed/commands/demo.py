"""``trustmed demo``: synthetic data → training → audit → every capability's section → report.html."""

from __future__ import annotations

from pathlib import Path

from trustmed.commands.common import config_command, console

__all__ = ["register"]


@config_command("trustmed.demo:DemoConfig", out="runs/demo")
def demo_cmd(cfg, out: Path, quiet: bool) -> None:
    """Run every capability on built-in synthetic data and write a self-contained report.html."""
    from trustmed.demo import run_demo

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
