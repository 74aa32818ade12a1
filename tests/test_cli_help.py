"""Every command's help ends with one runnable example, and the examples run, in order, as a tour.

The tour takes each example from the help text itself, so help and code cannot drift apart; the
extra ``--set`` overrides below only make each step small enough for a CPU test.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from trustmed.cli import app

EXAMPLE_PREFIX = "Example: trustmed "


def _sets(**values: object) -> list[str]:
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


def _walk(command, path: tuple[str, ...] = ()):
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _walk(sub, (*path, name))


COMMANDS = dict(_walk(typer.main.get_command(app)))
# Leaf commands, and groups that do something on their own (not only list their commands).
RUNNABLE = {
    path: command
    for path, command in COMMANDS.items()
    if not hasattr(command, "commands") or command.invoke_without_command
}

# The tour, in order: each command's help example, plus overrides that make it small.
TOUR: list[tuple[tuple[str, ...], list[str]]] = [
    (
        ("data", "synth", "skin"),
        _sets(n_train=240, n_val=120, n_external=80, n_test=120, n_ood=40),
    ),
    (("data", "synth", "digits"), []),
    (("data", "synth", "cxr"), _sets(n_images=12, image_size=64)),
    (("data", "card"), []),
    (("train",), _sets(**{"optim.epochs": 1})),
    (("audit",), ["--n-boot", "200"]),
    (("debias", "run"), _sets(epochs=1, n_boot=200)),
    (("debias", "compare"), _sets(epochs=1, n_boot=200)),
    (("debias", "apply-thresholds"), []),
    (("distill",), _sets(**{"train.epochs": 1, "n_boot": 200})),
    (("causal", "synth-anm"), _sets(n=400)),
    (("causal", "fit"), _sets(**{"train.epochs": 2, "train.warmup_epochs": 1, "train.ramp_epochs": 1})),
    (("causal", "eval"), []),
    (("causal", "synth-pendulum"), _sets(n=64)),
    (("ground", "run"), _sets(**{"grounding.num_steps": 5})),
    (("ground", "describe"), []),
    (
        ("ground", "eval"),
        _sets(**{"data.n_images": 8, "grounding.num_steps": 5, "n_boot": 200, "n_cases": 2}),
    ),
    (("ground", "tune"), _sets(**{"data.n_images": 12, "prompt.epochs": 1})),
    (
        ("ground", "train-ldm"),
        _sets(
            n_images=12,
            ae_epochs=1,
            unet_epochs=1,
            ae_channels="[8,8,8]",
            unet_channels="[16,32]",
            unet_attention_levels="[true,true]",
        ),
    ),
    (
        ("demo",),
        _sets(
            sections="[audit]",
            n_boot=200,
            **{"synthskin.n_train": 240, "synthskin.n_test": 120, "train.optim.epochs": 1},
        ),
    ),
]

# Commands without an example of their own that a later example needs first.
PREPARE: dict[tuple[str, ...], list[str]] = {
    ("debias", "apply-thresholds"): [
        *("debias", "run", "--method", "group_thresholds", "--checkpoint", "runs/train"),
        *("--external", "runs/synthskin", "--attribute", "skin_tone", "--out", "runs/thresholds"),
        *_sets(n_boot=200),
    ],
    ("distill",): [
        *("distill", "--method", "erm", "--student-width", "24", "--out", "runs/teacher"),
        *_sets(**{"train.epochs": 1, "n_boot": 200}),
    ],
}


def _example(path: tuple[str, ...]) -> str:
    lines = [line.strip() for line in (COMMANDS[path].help or "").splitlines() if line.strip()]
    examples = [line for line in lines if line.startswith(EXAMPLE_PREFIX)]
    assert len(examples) == 1, f"trustmed {' '.join(path)}: {len(examples)} example lines"
    assert lines[-1] == examples[0], f"trustmed {' '.join(path)}: the example is not the last line"
    return examples[0].removeprefix("Example: ")


# Commands that print their result instead of writing an output folder.
PRINTS = {("ground", "describe")}


def _run(args: list[str]) -> None:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, f"trustmed {shlex.join(args)}\n{result.output}"
    if "--out" not in args:
        assert result.stdout.strip(), f"trustmed {shlex.join(args)} printed nothing"
        return
    out = Path(args[args.index("--out") + 1])
    assert out.exists(), f"trustmed {shlex.join(args)} did not write {out}"


@pytest.mark.parametrize("path", sorted(RUNNABLE), ids=" ".join)
def test_help_ends_with_one_example_of_this_command(path):
    words = shlex.split(_example(path))
    assert words[0] == "trustmed"
    assert tuple(words[1 : 1 + len(path)]) == path
    assert ("--out" in words) is (path not in PRINTS)


def test_tour_covers_every_command():
    assert [path for path, _ in TOUR if path not in RUNNABLE] == []
    assert sorted(RUNNABLE) == sorted(path for path, _ in TOUR)


@pytest.mark.slow
def test_examples_run_in_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for path, small in TOUR:
        if path in PREPARE:
            _run(PREPARE[path])
        _run([*shlex.split(_example(path))[1:], *small])
