"""Build ``docs/results.md`` and the README's results block from ``benchmarks/results/*.json``.

Each benchmark writes ``summary.json`` (``benchmarks/_lib/bench.py``: ``write_summary``); a run worth
publishing is copied to ``benchmarks/results/<benchmark>.json``. This script renders every such file,
in a fixed order, into ``docs/results.md``, lists the benchmarks without one under "Not yet
regenerated", and rewrites the lines between ``<!-- results:begin -->`` and ``<!-- results:end -->``
in ``README.md``: one headline per method, taken from one target of that method's result file.

    python scripts/make_results.py            # or: make results
    python scripts/make_results.py --check    # exit 1 if either file differs from what it would write

A malformed result file stops the script with one line naming the file and the key (exit code 2),
before anything is written. ``benchmarks/results/<benchmark>.notes.md``, if present, is appended to
that benchmark's section as commentary; it may not contain decimal numbers or percentages (the
numbers come from the JSON only).
"""

from __future__ import annotations

import argparse
import ast
import datetime
import difflib
import json
import math
import operator
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


@dataclass(frozen=True)
class Known:
    """A benchmark this page knows: its place in the page and where its earlier numbers are."""

    benchmark: str
    heading: str  # its heading under "Not yet regenerated"
    earlier: str | None  # a link (relative to docs/) to the method doc holding its earlier numbers


# The page's section order; benchmarks not listed follow alphabetically.
KNOWN = (
    Known("bootstrap_vs_fairlearn", "Fairness audit", "audit.md#speed-the-bootstrap-against-fairlearn"),
    Known("debias_synthskin", "SWiFT on SynthSkin", "debias.md"),
    Known("pretrained_start", "Pretrained start", "train.md#pretrained-start-results"),
    Known("distill_coloreddigits", "GroupDistil on ColoredDigits", "distill.md"),
    Known("demo_robustness", "Demo robustness", None),
    Known("reliability_matrix", "Reliability matrix", "reliability.md#results"),
    Known("tiny_ldm_recipe", "Tiny LDM recipe (validation)", "grounding.md#synthcxr-benchmark"),
    Known("grounding_synthcxr", "Zero-shot grounding on SynthCXR", "grounding.md#synthcxr-benchmark"),
    Known(
        "prompt_defaults",
        "Prompt-tuning defaults (validation)",
        "grounding.md#how-the-defaults-were-chosen-validation",
    ),
    Known("prompt_tuning_synthcxr", "Prompt tuning on SynthCXR", "grounding.md#results-on-synthcxr"),
    Known(
        "prompt_logit_range",
        "Prompt tuning: attention logit range",
        "grounding.md#the-exploratory-study-test-pairs-superseded-for-choosing",
    ),
    Known("covae_synthetic", "coVAE on synthetic data", "causal.md#results"),
    Known("score_order_anm", "SCORE ordering", "causal.md#results"),
    Known("ordering_criteria_true_latents", "Ordering criteria on the true latents", "causal.md#results"),
    Known("ordering_loss_rotations", "Ordering loss and rotations", "causal.md#results"),
    Known("stein_speed", "Stein estimator speed", "causal.md#results"),
    Known("grounding_throughput", "Grounding throughput", "grounding.md#your-own-ldm"),
)
# Where a benchmark's earlier numbers are when no method doc holds them.
EARLIER_ELSEWHERE = {
    "pretrained_start": (
        "`git show e83e244:docs/results.md`, section “Pretrained start” (no method doc holds them yet)"
    ),
}


@dataclass(frozen=True)
class Headline:
    """One README line: a method and the target of its result file that it quotes."""

    method: str
    command: str
    benchmark: str
    target: str
    label: str


HEADLINES = (
    Headline(
        "Fairness audit",
        "trustmed audit",
        "bootstrap_vs_fairlearn",
        "audit_speedup_vs_fairlearn",
        "speed-up of the bootstrap CIs over fairlearn's",
    ),
    Headline(
        "SWiFT",
        "trustmed debias run",
        "debias_synthskin",
        "swift_eodds_reduction",
        "relative cut of the equalised-odds gap, largest external set",
    ),
    Headline(
        "GroupDistil",
        "trustmed distill",
        "distill_coloreddigits",
        "groupdistil_wg_gain_over_kd",
        "worst-group accuracy gain over group-uniform KD",
    ),
    Headline(
        "Zero-shot grounding",
        "trustmed ground run",
        "grounding_synthcxr",
        "zero_shot_auroc",
        "pixel AUC-ROC with the shipped tiny LDM",
    ),
    Headline(
        "Anatomy-grounded prompt tuning",
        "trustmed ground tune",
        "prompt_tuning_synthcxr",
        "prompt_tuning_miou_gain_id",
        "relative mIoU gain in distribution",
    ),
    Headline(
        "coVAE",
        "trustmed causal fit",
        "covae_synthetic",
        "covae_order_divergence_vs_vae",
        "order divergence minus the VAE's, paired over seeds",
    ),
)

OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "=": operator.eq}
OP_SIGNS = {">=": "≥", "<=": "≤", ">": ">", "<": "<", "=": "="}
# Numbers that commentary may not state: decimals (0.85, 12.3) and percentages (85 %).
NOTE_NUMBER = re.compile(r"(?<![\w.])\d+\.\d+|\d+(?:\.\d+)?\s?%")
NOT_YET = "Not yet regenerated"

HEADER = """\
# Results

<!-- Generated by `make results` (scripts/make_results.py) from benchmarks/results/*.json: do not edit. -->

What the benchmarks in `benchmarks/` measured. Each section is one committed result file,
`benchmarks/results/<benchmark>.json`: the `summary.json` a benchmark run writes, with its command,
date, machine, targets (met or missed), tables and the conclusions it computed. This page is
generated from those files by `make results` (`python scripts/make_results.py`); do not edit it by
hand: rerun the benchmark, copy its `summary.json` to `benchmarks/results/`, and run `make results`.
Every choice behind these numbers follows the evaluation protocol in [protocol.md](protocol.md).
How to run the methods is in the [README](../README.md).
"""


class ResultsError(Exception):
    """A result or notes file that cannot be rendered; the message names the file and the key."""


# ------------------------------------------------------------------------------------------------
# reading and checking
# ------------------------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _expect(path: Path, where: str, value: Any, kind: str) -> None:
    checks = {
        "string": lambda v: isinstance(v, str) and v.strip() != "",
        "text": lambda v: isinstance(v, str),
        "object": lambda v: isinstance(v, dict),
        "list": lambda v: isinstance(v, list),
        "number": _is_number,
        "number or null": lambda v: v is None or _is_number(v),
        "boolean": lambda v: isinstance(v, bool),
        "cell (string, number, boolean or null)": lambda v: v is None or isinstance(v, str | int | float),
    }
    if not checks[kind](value):
        raise ResultsError(f"{path}: {where}: expected a {kind}, got {json.dumps(value)[:60]}")


def _field(path: Path, obj: dict, key: str, kind: str, where: str = "") -> Any:
    name = f"{where}.{key}" if where else key
    if key not in obj:
        raise ResultsError(f"{path}: missing key '{name}'")
    _expect(path, name, obj[key], kind)
    return obj[key]


def validate(path: Path, data: Any) -> dict[str, Any]:
    """Check one result file against the ``write_summary`` schema; return it unchanged.

    Keys: ``benchmark`` (the file's stem), ``title``, ``command``, ``date`` (YYYY-MM-DD), ``machine``
    (strings); ``settings`` (object); ``targets`` (list of ``{name, value, op, goal, passed}``, with
    ``passed`` agreeing with ``value op goal``); ``tables`` (list of ``{title, columns, rows}``, every
    row as long as ``columns``, cells strings, numbers, booleans or null); ``conclusions`` (strings).
    """
    if not isinstance(data, dict):
        raise ResultsError(f"{path}: expected a JSON object at the top, got {type(data).__name__}")
    benchmark = _field(path, data, "benchmark", "string")
    if benchmark != path.stem:
        raise ResultsError(f"{path}: benchmark: '{benchmark}' does not match the file name '{path.stem}'")
    for key in ("title", "command", "machine"):
        _field(path, data, key, "string")
    date = _field(path, data, "date", "string")
    try:
        datetime.date.fromisoformat(date)
    except ValueError:
        raise ResultsError(f"{path}: date: expected YYYY-MM-DD, got '{date}'") from None
    _field(path, data, "settings", "object")
    names = set()
    for i, row in enumerate(_field(path, data, "targets", "list")):
        where = f"targets[{i}]"
        _expect(path, where, row, "object")
        name = _field(path, row, "name", "string", where)
        if name in names:
            raise ResultsError(f"{path}: {where}.name: '{name}' appears twice")
        names.add(name)
        value = _field(path, row, "value", "number or null", where)
        op = _field(path, row, "op", "string", where)
        if op not in OPS:
            raise ResultsError(f"{path}: {where}.op: expected one of {' '.join(OPS)}, got '{op}'")
        goal = _field(path, row, "goal", "number", where)
        passed = _field(path, row, "passed", "boolean", where)
        met = value is not None and not math.isnan(value) and bool(OPS[op](value, goal))
        if passed != met:
            raise ResultsError(
                f"{path}: {where}.passed: is {str(passed).lower()}, but {value} {op} {goal} is "
                f"{str(met).lower()}"
            )
    for i, table in enumerate(_field(path, data, "tables", "list")):
        where = f"tables[{i}]"
        _expect(path, where, table, "object")
        _field(path, table, "title", "text", where)
        columns = _field(path, table, "columns", "list", where)
        for j, column in enumerate(columns):
            _expect(path, f"{where}.columns[{j}]", column, "string")
        for r, row in enumerate(_field(path, table, "rows", "list", where)):
            _expect(path, f"{where}.rows[{r}]", row, "list")
            if len(row) != len(columns):
                raise ResultsError(
                    f"{path}: {where}.rows[{r}]: {len(row)} cells, expected {len(columns)} (one per column)"
                )
            for c, cell in enumerate(row):
                _expect(path, f"{where}.rows[{r}][{c}]", cell, "cell (string, number, boolean or null)")
    for i, sentence in enumerate(_field(path, data, "conclusions", "list")):
        _expect(path, f"conclusions[{i}]", sentence, "string")
    return data


def read_result(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResultsError(f"{path}: not valid JSON ({str(exc).splitlines()[0]})") from None
    return validate(path, data)


def read_notes(path: Path) -> str:
    """Commentary for one section; a decimal number or a percentage in it is an error."""
    text = path.read_text(encoding="utf-8")
    for lineno, line in enumerate(text.splitlines(), 1):
        found = NOTE_NUMBER.search(line)
        if found:
            raise ResultsError(
                f"{path}:{lineno}: '{found.group().strip()}': notes are commentary only, numbers come from "
                "the result JSON"
            )
    return text.strip()


def _order(name: str) -> tuple[int, str]:
    index = [k.benchmark for k in KNOWN]
    return (index.index(name), "") if name in index else (len(index), name)


def load(results_dir: Path) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Every result file of ``results_dir`` (checked, in page order) and the notes by benchmark."""
    if not results_dir.is_dir():
        raise ResultsError(f"{results_dir}: results folder not found")
    results = [read_result(p) for p in sorted(results_dir.glob("*.json"))]
    results.sort(key=lambda r: _order(r["benchmark"]))
    have = {r["benchmark"] for r in results}
    notes = {}
    for path in sorted(results_dir.glob("*.notes.md")):
        name = path.name.removesuffix(".notes.md")
        if name not in have:
            raise ResultsError(f"{path}: notes for '{name}', which has no {name}.json beside it")
        notes[name] = read_notes(path)
    return results, notes


def usage_command(script: Path) -> str:
    """The first ``python benchmarks/...`` command in a benchmark's docstring (continuations joined)."""
    try:
        doc = ast.get_docstring(ast.parse(script.read_text(encoding="utf-8"))) or ""
    except SyntaxError as exc:
        raise ResultsError(f"{script}: cannot be parsed ({exc.msg}, line {exc.lineno})") from None
    lines = doc.splitlines()
    for i, line in enumerate(lines):
        start = line.find("python benchmarks/")
        if start < 0:
            continue
        command = line[start:].strip()
        while command.endswith("\\") and i + 1 < len(lines):
            i += 1
            command = command[:-1].rstrip() + " " + lines[i].strip()
        command = command.split("  #")[0].split("``")[0].strip()
        return command.rstrip(".")
    return f"python benchmarks/{script.name}"


# ------------------------------------------------------------------------------------------------
# rendering
# ------------------------------------------------------------------------------------------------


def number(value: float | int) -> str:
    """3 significant digits (0.687, 1.2, 8.67, 1.11e-16); whole numbers from 1000 up (1762)."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value == 0:
        return "0"
    if 1000 <= abs(value) < 1e15:
        return f"{value:.0f}"
    return f"{value:.3g}"


def cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value.replace("|", "\\|").replace("\n", " ")
    return number(value)


def setting(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if _is_number(value):
        return number(value)
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(cell(c) for c in columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


class Anchors:
    """Anchors of a page's headings, made unique the way GitHub does (``-1``, ``-2`` …)."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}

    def add(self, heading: str) -> str:
        base = slug(heading)
        count = self.seen.get(base, 0)
        self.seen[base] = count + 1
        return base if count == 0 else f"{base}-{count}"


def target_rows(targets: Sequence[dict[str, Any]]) -> list[list[str]]:
    return [
        [
            f"`{t['name']}`",
            cell(t["value"]),
            f"{OP_SIGNS[t['op']]} {number(t['goal'])}",
            "PASS" if t["passed"] else "MISS",
        ]
        for t in targets
    ]


def section(result: dict[str, Any], notes: str | None) -> list[str]:
    lines = [f"## {result['title']}", "", f"`{result['command']}`", ""]
    lines += [f"Run on {result['date']}, {result['machine']}.", ""]
    if result["settings"]:
        shown = ", ".join(f"`{k}` {setting(v)}" for k, v in result["settings"].items())
        lines += [f"Settings: {shown}.", ""]
    if result["targets"]:
        lines += markdown_table(["target", "value", "goal", "result"], target_rows(result["targets"]))
    else:
        lines.append("No targets: this benchmark reports measurements only.")
    lines.append("")
    for table in result["tables"]:
        if table["title"]:
            lines += [f"**{table['title']}**", ""]
        lines += markdown_table(table["columns"], table["rows"])
        lines.append("")
    if result["conclusions"]:
        lines += [f"- {sentence}" for sentence in result["conclusions"]]
        lines.append("")
    if notes:
        lines += [notes, ""]
    return lines


def not_yet(benchmarks_dir: Path, have: set[str], anchors: Anchors) -> list[str]:
    missing = sorted(
        (p for p in benchmarks_dir.glob("*.py") if p.stem not in have), key=lambda p: _order(p.stem)
    )
    lines = [f"## {NOT_YET}", ""]
    anchors.add(NOT_YET)
    if not missing:
        return [*lines, "Every benchmark in `benchmarks/` has a committed result file.", ""]
    lines += [
        "These benchmarks in `benchmarks/` have no committed result file yet. Their earlier numbers were",
        "recorded by hand, before the validation protocol ([protocol.md](protocol.md)), and stay where",
        "linked below until the benchmark is rerun and its `summary.json` is committed.",
        "",
    ]
    known = {k.benchmark: k for k in KNOWN}
    for script in missing:
        entry = known.get(script.stem)
        heading = entry.heading if entry else script.stem
        anchors.add(heading)
        lines += [f"### {heading}", "", f"`benchmarks/{script.name}`: `{usage_command(script)}`", ""]
        if entry and entry.earlier:
            doc = entry.earlier.split("#")[0]
            lines.append(f"Earlier numbers, measured before the protocol: [{doc}]({entry.earlier}).")
        elif script.stem in EARLIER_ELSEWHERE:
            lines.append(f"Earlier numbers, measured before the protocol: {EARLIER_ELSEWHERE[script.stem]}.")
        else:
            lines.append("No earlier numbers.")
        lines.append("")
    return lines


def render_doc(
    results: Sequence[dict[str, Any]], notes: dict[str, str], benchmarks_dir: Path
) -> tuple[str, dict[str, str]]:
    """The text of ``docs/results.md`` and each benchmark's anchor in it."""
    anchors = Anchors()
    anchors.add("Results")
    where = {r["benchmark"]: anchors.add(r["title"]) for r in results}
    lines = [HEADER]
    if results:
        lines += [f"- [{r['title']}](#{where[r['benchmark']]})" for r in results]
    lines += [f"- [{NOT_YET}](#{slug(NOT_YET)})", ""]
    for result in results:
        lines += section(result, notes.get(result["benchmark"]))
    lines += not_yet(benchmarks_dir, set(where), anchors)
    return "\n".join(lines).rstrip("\n") + "\n", where


def render_block(
    results: Sequence[dict[str, Any]], anchors: dict[str, str], doc_link: str, results_dir: Path
) -> str:
    """The README lines between the markers: one headline per method, each linked to its section."""
    by = {r["benchmark"]: r for r in results}
    lines = [BEGIN]
    for h in HEADLINES:
        result = by.get(h.benchmark)
        if result is None:
            lines.append(
                f"- **{h.method}** (`{h.command}`): results are being regenerated under the validation "
                f"protocol. [Status]({doc_link}#{slug(NOT_YET)})"
            )
            continue
        found = [t for t in result["targets"] if t["name"] == h.target]
        if not found:
            names = ", ".join(t["name"] for t in result["targets"]) or "none"
            raise ResultsError(
                f"{results_dir / (h.benchmark + '.json')}: targets: no '{h.target}' for the README's "
                f"{h.method} line (it has: {names})"
            )
        t = found[0]
        quick = "; a `--quick` run" if "--quick" in result["command"].split() else ""
        lines.append(
            f"- **{h.method}** (`{h.command}`): {h.label}: {cell(t['value'])} (goal {OP_SIGNS[t['op']]} "
            f"{number(t['goal'])}, {'PASS' if t['passed'] else 'MISS'}{quick}). "
            f"[Results]({doc_link}#{anchors[h.benchmark]})"
        )
    lines.append(END)
    return "\n".join(lines)


def replace_block(readme: str, block: str, path: Path) -> str:
    if readme.count(BEGIN) != 1 or readme.count(END) != 1 or readme.index(BEGIN) > readme.index(END):
        raise ResultsError(f"{path}: expected one '{BEGIN}' line followed by one '{END}' line")
    head, rest = readme.split(BEGIN)
    tail = rest.split(END)[1]
    return head + block + tail


def build(results_dir: Path, benchmarks_dir: Path, doc: Path, readme: Path) -> dict[Path, str]:
    """What ``docs/results.md`` and ``README.md`` should contain, by path."""
    results, notes = load(results_dir)
    text, anchors = render_doc(results, notes, benchmarks_dir)
    if not readme.is_file():
        raise ResultsError(f"{readme}: README not found")
    link = Path(os.path.relpath(doc, readme.parent)).as_posix()
    block = render_block(results, anchors, link, results_dir)
    return {doc: text, readme: replace_block(readme.read_text(encoding="utf-8"), block, readme)}


def first_difference(old: str, new: str) -> str:
    diff = list(difflib.unified_diff(old.splitlines(), new.splitlines(), lineterm="", n=0))
    changed = [line for line in diff[2:] if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    return changed[0][:100] if changed else "(whitespace at the end)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file is out of date")
    parser.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--benchmarks-dir", type=Path, default=ROOT / "benchmarks")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "results.md")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = parser.parse_args(argv)
    try:
        wanted = build(args.results_dir, args.benchmarks_dir, args.doc, args.readme)
    except ResultsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stale = [p for p, text in wanted.items() if not p.is_file() or p.read_text(encoding="utf-8") != text]
    if args.check:
        for path in stale:
            old = path.read_text(encoding="utf-8") if path.is_file() else ""
            print(
                f"{path} is out of date (first difference: {first_difference(old, wanted[path])}); "
                "run `make results`",
                file=sys.stderr,
            )
        return 1 if stale else 0
    for path in stale:
        path.write_text(wanted[path], encoding="utf-8")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
