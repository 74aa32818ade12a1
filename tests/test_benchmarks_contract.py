"""Every benchmark keeps the one contract: ``--out/--seed/--quick`` from ``benchmarks/_lib/bench.py`` and
TARGET lines printed by its ``target()`` (never by hand)."""

from __future__ import annotations

import ast
import doctest
import importlib
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(BENCHMARKS.glob("*.py"))


def _calls(tree: ast.AST) -> set[str]:
    return {
        node.func.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_benchmark_uses_the_shared_contract(script):
    source = script.read_text()
    calls = _calls(ast.parse(source))
    assert "bench_parser" in calls, f"{script.name}: build the parser with _lib.bench.bench_parser"
    assert "TARGET " not in source.replace("TARGET lines", ""), f"{script.name}: print targets with target()"


def test_the_shared_helper_works():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        bench = importlib.import_module("_lib.bench")
    finally:
        sys.path.remove(str(BENCHMARKS))
    assert doctest.testmod(bench).failed == 0
    args = bench.bench_parser("A benchmark.\n\nMore.", "runs/bench/x").parse_args(["--quick", "--seed", "3"])
    assert (args.quick, args.seed, str(args.out)) == (True, 3, "runs/bench/x")
    assert bench.target("x", float("nan"), ">=", 1)["passed"] is False  # an undefined value is a miss


def test_write_summary_writes_the_json_and_its_markdown_table(tmp_path):
    bench = _bench_module("_lib.bench")
    table = bench.result_table("per seed", ["seed", "gap"], [[0, "0.120"], [1, "0.090"]])
    hit = bench.target("gap_cut", 0.4, ">=", 0.5)
    bench.write_summary(
        tmp_path, benchmark="b", title="B", command="python b.py", targets=[hit], tables=[table],
        conclusions=["The gap fell on 2 of 2 seeds."],
    )  # fmt: skip
    summary = json.loads((tmp_path / "summary.json").read_text())
    text = (tmp_path / "summary.md").read_text()
    assert summary["tables"][0]["rows"] == [[0, "0.120"], [1, "0.090"]]
    assert "| seed | gap |" in text and "| 1 | 0.090 |" in text
    assert "| `gap_cut` | 0.4 | >= 0.5 | MISS |" in text
    assert text.rstrip().endswith("- The gap fell on 2 of 2 seeds.")


@pytest.mark.slow
def test_pretrained_start_runs_end_to_end_in_a_tiny_configuration(tmp_path):
    """benchmarks/pretrained_start.py at a size that only checks the plumbing (about a minute)."""
    import torch

    sys.path.insert(0, str(BENCHMARKS))
    threads = torch.get_num_threads()
    try:
        bench = importlib.import_module("pretrained_start")
        torch.set_num_threads(1)
        results = bench.run(tmp_path, [0], bench.TINY)
    finally:
        sys.path.remove(str(BENCHMARKS))
        torch.set_num_threads(threads)
    state = torch.load(tmp_path / "pretrain" / "densenet121_source.pth", weights_only=True)
    assert all(k.startswith(("features.", "classifier.")) for k in state)
    assert "features.denseblock1.denselayer1.norm1.weight" in state
    assert tuple(state["classifier.weight"].shape) == (4, 1024)
    mapping = results["pretraining"]["mapping"]
    assert mapping["extractor_tensors_loaded"] == mapping["extractor_tensors"] > 0 and mapping["head_fresh"]
    names = [t["name"] for t in results["targets"]]
    assert names == ["pretrained_init_auc_gain", "pretrained_swift_gap_reduction"]
    seed = results["per_seed"][0]
    assert seed["auc_gain"] == seed["pretrained"]["test"]["auc"] - seed["scratch"]["test"]["auc"]
    assert (tmp_path / "seed0" / "pretrained" / "model.safetensors").is_file()


def _bench_module(name):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_paired_statistics_match_a_hand_computed_t_interval():
    paired = _bench_module("_lib.paired")
    assert doctest.testmod(paired).failed == 0
    row = paired.paired([0.30, 0.10, 0.20, 0.25], [0.20, 0.30, 0.25, 0.26], better="lower", tie=0.005)
    diff = [0.10, -0.20, -0.05, -0.01]
    mean = sum(diff) / 4
    sd = (sum((d - mean) ** 2 for d in diff) / 3) ** 0.5
    half = 3.182446305284263 * sd / 2  # t(0.975, 3) * sd / sqrt(4)
    assert row["mean"] == pytest.approx(mean)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((mean - half, mean + half))
    assert (row["wins"], row["ties"], row["losses"]) == (3, 0, 1)
    assert (row["worst_seed"], row["worst"]) == (0, pytest.approx(0.10))
    higher = paired.paired([0.8, 0.9], [0.7, 0.9], better="higher", seeds=[5, 7])
    assert (higher["wins"], higher["ties"], higher["losses"], higher["worst_seed"]) == (1, 1, 0, 7)
    with pytest.raises(ValueError, match="equal, non-empty"):
        paired.paired([0.1], [0.1, 0.2], better="lower")


def _debias_table(erm_gaps, swift_gaps, finetune_gaps, val_gaps=None):
    import pandas as pd

    # validation gaps of each method's chosen setting (default: retrain_fair's is the higher)
    val_gaps = val_gaps or {
        "erm": 0.3,
        "swift": 0.05,
        "finetune": 0.1,
        "retrain_fair": 0.15,
        "group_thresholds": 0.0,
    }
    rows = []
    for seed, (erm, swift, ft) in enumerate(zip(erm_gaps, swift_gaps, finetune_gaps, strict=True)):
        for fraction, n_ext in ((0.02, 40), (0.1, 200)):
            for method, gap, auc, wall in (
                ("erm", erm, 0.88, 0.0),
                ("swift", swift, 0.87, 10.0),
                ("finetune", ft, 0.88, 12.0),
                ("retrain_fair", 0.2, 0.86, 100.0),
                ("group_thresholds", 0.01, 0.7, 1.0),
            ):
                for threshold in ("0.5", "tuned"):
                    rows.append(
                        {
                            "method": method,
                            "attribute": "skin_tone",
                            "fraction": fraction,
                            "n_external": n_ext,
                            "split": "test",
                            "threshold": threshold,
                            "seed": seed,
                            "eodds_mean_gap": gap,
                            "auc": auc,
                            "wall_time_s": wall,
                            "search_wall_time_s": 4 * wall,
                            "val_gap": val_gaps[method],
                            "needs_attribute_at_prediction": method == "group_thresholds",
                        }
                    )
    return pd.DataFrame(rows)


def test_debias_targets_are_paired_over_seeds():
    bench = _bench_module("debias_synthskin")
    sizes = {"fractions": (0.02, 0.1)}
    table = _debias_table([0.3, 0.3, 0.2], [0.1, 0.05, 0.25], [0.12, 0.2, 0.1])
    tgt = bench.targets(table, sizes, [0, 1, 2])
    assert tgt["swift_gap_falls_every_seed"] == pytest.approx(2 / 3)  # seed 2: 0.20 -> 0.25
    assert tgt["swift_eodds_reduction"] == pytest.approx(2 / 3)  # median of 2/3, 5/6, -1/4
    assert tgt["swift_auc_drop"] == pytest.approx(0.01)
    best = tgt["best_baseline_small"]
    assert best["method"] == "finetune"  # group_thresholds needs the attribute; retrain_fair's gap is higher
    assert best["gap"]["diff"] == pytest.approx([-0.02, -0.15, 0.15])
    assert tgt["swift_gap_vs_best_baseline_small"] == pytest.approx(-0.02 / 3)
    assert tgt["swift_cost_ratio"] == pytest.approx(0.1) and tgt["swift_cost_ratio_single"] == pytest.approx(
        0.1
    )
    said = bench.conclusions(table, tgt, bench.paired_rows(table, [0, 1, 2]), [0, 1, 2])
    assert "cut the skin-tone gap on 2 of 3 seeds" in said[1]
    assert "worst seed 2: 0.200 → 0.250" in said[1]


def test_the_strongest_debias_baseline_is_picked_on_validation_not_test():
    bench = _bench_module("debias_synthskin")
    # on test finetune is the stronger (its gaps 0.12-0.2 against retrain_fair's 0.2); on validation
    # retrain_fair's chosen setting has the lower gap, so retrain_fair is the comparator
    val = {"erm": 0.3, "swift": 0.05, "finetune": 0.1, "retrain_fair": 0.04, "group_thresholds": 0.0}
    table = _debias_table([0.3, 0.3, 0.2], [0.1, 0.05, 0.25], [0.12, 0.2, 0.1], val_gaps=val)
    best = bench.targets(table, {"fractions": (0.02, 0.1)}, [0, 1, 2])["best_baseline_small"]
    assert best["method"] == "retrain_fair"
    assert best["gap"]["diff"] == pytest.approx([-0.1, -0.15, 0.05])
    assert best["mean_gaps"]["finetune"] < best["mean_gaps"]["retrain_fair"]


def test_the_tiny_ldm_recipe_rule_takes_the_best_validation_auroc_and_the_cheaper_on_a_tie():
    recipe = _bench_module("tiny_ldm_recipe")
    assert doctest.testmod(recipe).failed == 0
    # listed cheapest first: a clear winner wins wherever it is listed
    assert recipe.choose({"a": {"auroc": 0.81}, "b": {"auroc": 0.87}, "c": {"auroc": 0.85}}) == "b"
    # within the tie margin, the cheaper (first) recipe ships; just outside it, the better one
    assert recipe.choose({"a": {"auroc": 0.866}, "b": {"auroc": 0.870}}) == "a"
    assert recipe.choose({"a": {"auroc": 0.860}, "b": {"auroc": 0.870}}) == "b"


def test_the_prompt_defaults_rule_needs_zero_shot_auroc_and_laterality_then_takes_the_best_miou():
    defaults = _bench_module("prompt_defaults")
    assert doctest.testmod(defaults).failed == 0
    zero = {"miou": 0.08, "auroc": 0.87, "laterality_accuracy": 0.70}
    entries = {
        "sharp but blind to the side": {"miou": 0.30, "auroc": 0.90, "laterality_accuracy": 0.60},
        "sharp but ranks worse": {"miou": 0.25, "auroc": 0.85, "laterality_accuracy": 0.90},
        "qualifies": {"miou": 0.16, "auroc": 0.91, "laterality_accuracy": 0.78},
        "qualifies, blunter": {"miou": 0.12, "auroc": 0.95, "laterality_accuracy": 0.90},
    }
    assert defaults.choose(entries, zero) == ("qualifies", True)
    # none qualifies: the best mIoU, flagged
    assert defaults.choose({k: entries[k] for k in list(entries)[:2]}, zero) == (
        "sharp but blind to the side",
        False,
    )
    # the library's default is recognised whatever the class's own defaults are
    assert defaults.is_library_default(defaults.LoraPromptTuningConfig, {"token_noise": 0.0})
    assert not defaults.is_library_default(defaults.LoraPromptTuningConfig, {"token_noise": 0.5})
