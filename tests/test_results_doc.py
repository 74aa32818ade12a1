"""``docs/results.md`` and the README's results block are exactly what ``scripts/make_results.py`` builds
from the committed ``benchmarks/results/*.json``; a malformed result file or a notes file that states a
number stops it with one line naming the file, before anything is written."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
DOC = ROOT / "docs" / "results.md"


def _load_script():
    spec = importlib.util.spec_from_file_location("make_results", ROOT / "scripts" / "make_results.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


mr = _load_script()


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a page's headings (written here independently of the script)."""
    anchors, seen = set(), {}
    in_code = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        match = re.match(r"^(#{1,6}) (.+)$", line)
        if match and not in_code:
            text = re.sub(r"[^\w\- ]", "", match.group(2).strip().lower()).replace(" ", "-")
            count = seen.get(text, 0)
            seen[text] = count + 1
            anchors.add(text if count == 0 else f"{text}-{count}")
    return anchors


def readme_block(text: str) -> str:
    return text.split("<!-- results:begin -->")[1].split("<!-- results:end -->")[0]


def a_result() -> dict:
    """A committed result file with targets and tables (the fairness audit's), as a template."""
    return json.loads((RESULTS / "bootstrap_vs_fairlearn.json").read_text())


def run(tmp_path: Path, results: dict[str, dict | str], *extra: str) -> tuple[int, Path, Path]:
    """Run the script on a results folder holding ``results`` (name -> JSON object or raw text)."""
    folder = tmp_path / "results"
    folder.mkdir(exist_ok=True)
    for name, content in results.items():
        text = content if isinstance(content, str) else json.dumps(content)
        (folder / name).write_text(text)
    doc, readme = tmp_path / "docs" / "results.md", tmp_path / "README.md"
    doc.parent.mkdir(exist_ok=True)
    if not readme.exists():
        readme.write_text(
            "# project\n\nbefore\n\n<!-- results:begin -->\nold\n<!-- results:end -->\n\nafter\n"
        )
    argv = ["--results-dir", str(folder), "--doc", str(doc), "--readme", str(readme), *extra]
    return mr.main(argv), doc, readme


# --------------------------------------------------------------------------------------------------
# (a) the committed docs are the script's output


def test_committed_docs_are_what_the_script_builds_from_the_committed_json(capsys):
    assert sorted(RESULTS.glob("*.json")), "no committed result files under benchmarks/results/"
    wanted = mr.build(RESULTS, ROOT / "benchmarks", DOC, README)
    assert DOC.read_text() == wanted[DOC], "docs/results.md is out of date: run `make results`"
    assert README.read_text() == wanted[README], (
        "README.md's results block is out of date: run `make results`"
    )
    assert mr.main(["--check"]) == 0, capsys.readouterr().err


def test_every_committed_result_is_a_section_with_its_numbers():
    doc = DOC.read_text()
    for path in sorted(RESULTS.glob("*.json")):
        result = json.loads(path.read_text())
        assert f"## {result['title']}\n\n`{result['command']}`" in doc, path.name
        for t in result["targets"]:
            value = "—" if t["value"] is None else mr.number(t["value"])
            verdict = "PASS" if t["passed"] else "MISS"
            assert re.search(rf"\| `{t['name']}` \| {re.escape(value)} \| [^|]+ \| {verdict} \|", doc), t[
                "name"
            ]
        for sentence in result["conclusions"]:
            assert f"- {sentence}\n" in doc


def test_check_reports_a_stale_doc_and_writes_nothing(tmp_path, capsys):
    code, doc, readme = run(tmp_path, {"bootstrap_vs_fairlearn.json": a_result()})
    assert code == 0 and doc.is_file()
    assert "[Results](docs/results.md#fairness-audit-bootstrap-cis-against-fairlearn)" in readme.read_text()
    assert readme.read_text().startswith("# project\n\nbefore\n\n") and readme.read_text().endswith(
        "\n\nafter\n"
    )
    assert run(tmp_path, {}, "--check")[0] == 0
    doc.write_text(doc.read_text().replace("| PASS |", "| MISS |", 1))
    edited = doc.read_text()
    capsys.readouterr()
    assert run(tmp_path, {}, "--check")[0] == 1
    err = capsys.readouterr().err
    assert "results.md is out of date" in err and "make results" in err
    assert doc.read_text() == edited  # --check wrote nothing


# --------------------------------------------------------------------------------------------------
# (b) a malformed result file


def _without(key):
    def edit(r):
        del r[key]

    return edit


BREAKAGES = {
    "missing targets": (_without("targets"), "missing key 'targets'"),
    "missing title": (_without("title"), "missing key 'title'"),
    "target without a goal": (lambda r: r["targets"][1].pop("goal"), "missing key 'targets[1].goal'"),
    "unknown operator": (lambda r: r["targets"][0].update(op="=>"), "targets[0].op"),
    "passed contradicts the value": (lambda r: r["targets"][0].update(goal=1e9), "targets[0].passed"),
    "short table row": (lambda r: r["tables"][0]["rows"][1].pop(), "tables[0].rows[1]"),
    "table cell is a list": (lambda r: r["tables"][0]["rows"][0].__setitem__(1, [1]), "tables[0].rows[0][1]"),
    "conclusion is a number": (lambda r: r["conclusions"].append(3), "conclusions[3]"),
    "bad date": (lambda r: r.update(date="yesterday"), "date"),
    "name differs from the file": (lambda r: r.update(benchmark="other"), "benchmark"),
}


@pytest.mark.parametrize("case", BREAKAGES, ids=list(BREAKAGES))
def test_a_malformed_result_file_is_one_line_naming_file_and_key(tmp_path, capsys, case):
    edit, key = BREAKAGES[case]
    broken = a_result()
    edit(broken)
    code, doc, readme = run(tmp_path, {"bootstrap_vs_fairlearn.json": broken})
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert "bootstrap_vs_fairlearn.json" in err and key in err, err
    assert not doc.exists() and "old" in readme.read_text()  # nothing written


def test_invalid_json_is_one_line(tmp_path, capsys):
    code, doc, _ = run(tmp_path, {"x.json": '{"benchmark": "x",'})
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "x.json: not valid JSON" in err
    assert not doc.exists()


def test_a_headline_target_missing_from_its_result_file_is_named(tmp_path, capsys):
    result = a_result()
    result["targets"] = result["targets"][1:]
    code, _, _ = run(tmp_path, {"bootstrap_vs_fairlearn.json": result})
    err = capsys.readouterr().err
    assert code == 2 and "audit_speedup_vs_fairlearn" in err and "bootstrap_vs_fairlearn.json" in err


# --------------------------------------------------------------------------------------------------
# (c) notes: commentary only


@pytest.mark.parametrize("number", ["0.85", "12.3", "85 %", "40%"])
def test_a_notes_file_stating_a_number_is_rejected(tmp_path, capsys, number):
    notes = f"The gap fell.\nIt fell to {number} after the change.\n"
    code, doc, _ = run(
        tmp_path, {"bootstrap_vs_fairlearn.json": a_result(), "bootstrap_vs_fairlearn.notes.md": notes}
    )
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "bootstrap_vs_fairlearn.notes.md:2" in err and number.strip() in err
    assert not doc.exists()


def test_notes_without_numbers_are_rendered_in_their_section(tmp_path):
    notes = "Wall time on a shared machine depends on its load; see [protocol.md](protocol.md), 3 seeds.\n"
    code, doc, _ = run(
        tmp_path, {"bootstrap_vs_fairlearn.json": a_result(), "bootstrap_vs_fairlearn.notes.md": notes}
    )
    assert code == 0
    section = doc.read_text().split("## Fairness audit: bootstrap CIs against fairlearn")[1].split("\n## ")[0]
    assert notes.strip() in section


def test_notes_without_a_result_file_are_rejected(tmp_path, capsys):
    code, _, _ = run(tmp_path, {"stein_speed.notes.md": "Commentary."})
    assert code == 2 and "stein_speed.notes.md" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# (d) the README block's links


def test_readme_block_links_resolve_to_headings_of_the_results_page():
    block = readme_block(README.read_text())
    lines = [line for line in block.splitlines() if line.strip()]
    assert len(lines) == len(mr.HEADLINES)
    for line, headline in zip(lines, mr.HEADLINES, strict=True):
        assert line.startswith(f"- **{headline.method}**")
    links = re.findall(r"\]\(docs/results\.md#([^)]+)\)", block)
    assert len(links) == len(lines)
    anchors = github_anchors(DOC.read_text())
    missing = [a for a in links if a not in anchors]
    assert not missing, f"README links to headings that docs/results.md lacks: {missing}"
    page_links = re.findall(r"\]\(#([^)]+)\)", DOC.read_text())
    assert page_links and not [a for a in page_links if a not in anchors]


def test_links_into_the_results_page_from_other_docs_resolve():
    anchors = github_anchors(DOC.read_text())
    for doc in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        for anchor in re.findall(r"results\.md#([\w-]+)", doc.read_text()):
            assert anchor in anchors, f"{doc.name} links to results.md#{anchor}, which does not exist"


def test_links_to_earlier_numbers_resolve_to_headings_of_the_method_docs():
    for known in mr.KNOWN:
        if known.earlier is None:
            continue
        doc, _, anchor = known.earlier.partition("#")
        page = ROOT / "docs" / doc
        assert page.is_file(), f"{known.benchmark}: {doc} does not exist"
        assert not anchor or anchor in github_anchors(page.read_text()), f"{known.benchmark}: {known.earlier}"


# --------------------------------------------------------------------------------------------------
# new result files are picked up


def test_a_new_result_file_is_picked_up_in_order_and_headlined(tmp_path):
    fake = copy.deepcopy(a_result())
    fake.update(benchmark="debias_synthskin", title="SWiFT on a test set", command="python benchmarks/x.py")
    fake["targets"] = [
        {"name": "swift_eodds_reduction", "value": 0.4321, "op": ">=", "goal": 0.5, "passed": False}
    ]
    unknown = copy.deepcopy(a_result())
    unknown.update(benchmark="aa_new", title="A benchmark the page does not know")
    speed = copy.deepcopy(a_result())
    speed.update(benchmark="grounding_throughput", title="Grounding throughput (test)")
    results = {
        "aa_new.json": unknown,
        "grounding_throughput.json": speed,
        "stein_speed.json": json.loads((RESULTS / "stein_speed.json").read_text()),
        "debias_synthskin.json": fake,
        "bootstrap_vs_fairlearn.json": a_result(),
    }
    code, doc, readme = run(tmp_path, results)
    assert code == 0
    text = doc.read_text()
    titles = re.findall(r"^## (.+)$", text, flags=re.M)
    assert titles == [  # the page's order for known benchmarks, then the others alphabetically
        "Fairness audit: bootstrap CIs against fairlearn",
        "SWiFT on a test set",
        "Stein Hessian diagonal: speed against a NumPy reference",
        "Grounding throughput (test)",
        "A benchmark the page does not know",
        "Not yet regenerated",
    ]
    assert "| `swift_eodds_reduction` | 0.432 | ≥ 0.5 | MISS |" in text
    assert "### SWiFT on SynthSkin" not in text and "### Pretrained start" in text
    swift = [line for line in readme.read_text().splitlines() if line.startswith("- **SWiFT**")]
    assert swift == [
        "- **SWiFT** (`trustmed debias run`): relative cut of the equalised-odds gap, largest external set: "
        "0.432 (goal ≥ 0.5, MISS). [Results](docs/results.md#swift-on-a-test-set)"
    ]
    distill = [line for line in readme.read_text().splitlines() if line.startswith("- **GroupDistil**")]
    assert distill[0].endswith("[Status](docs/results.md#not-yet-regenerated)")


def test_not_yet_regenerated_lists_each_benchmark_without_a_result_file():
    doc = DOC.read_text()
    listed = doc.split("## Not yet regenerated")[1]
    have = {p.stem for p in RESULTS.glob("*.json")}
    for script in sorted((ROOT / "benchmarks").glob("*.py")):
        named = f"`benchmarks/{script.name}`: `python benchmarks/{script.name}" in listed
        assert named == (script.stem not in have), script.name


@pytest.mark.parametrize(
    ("value", "shown"),
    [(294.55, "295"), (1761.7, "1762"), (0.68712, "0.687"), (1.1102e-16, "1.11e-16"), (2.0, "2"),
     (-0.0412, "-0.0412"), (8.667, "8.67"), (3, "3"), (0.0, "0")],
)  # fmt: skip
def test_numbers_have_three_significant_digits(value, shown):
    assert mr.number(value) == shown
