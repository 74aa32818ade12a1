"""Benchmark: SWiFT and its baselines on SynthSkin, side by side.

SWiFT ("Soft-Mask Weight Fine-tuning for Bias Mitigation", MELBA 2025, arXiv 2508.18826) against
fine-tuning, BMFT (arXiv 2408.06890), FairPrune (arXiv 2203.02110), fair retraining and per-group
thresholds, all from one ERM model trained on SynthSkin (default bias: dark-skin malignant cases
under-represented in training; lower lesion contrast on dark skin). Attributes: skin tone (binary)
and age bins (4 groups). External sets of about 2 %, 5 % and 10 % of the training-set size, drawn
from SynthSkin's external split. Hyper-parameters are chosen on validation (trustmed.debias.compare);
gaps are reported on the test split at threshold 0.5 and at a validation-tuned threshold, and on
the out-of-distribution split.

Targets (skin tone; test split; ERM as the start):

* ``swift_eodds_reduction``: relative cut of ``eodds_mean_gap`` at 0.5, largest external set (>= 0.5);
* ``swift_eodds_reduction_tuned``: the same at the validation-tuned threshold (>= 0.25);
* ``swift_auc_drop``: ERM test AUC minus SWiFT's, largest external set (<= 0.02);
* ``swift_not_dominated_small``: at the smallest external set, no baseline that does not need the
  attribute at prediction time has both a higher AUC and a lower gap beyond the CIs (1 = PASS);
* ``swift_cost_ratio``: SWiFT's wall time / ``retrain_fair``'s (<= 0.15).

Usage::

    python benchmarks/debias_synthskin.py --out runs/bench_debias --seed 0 [--quick] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from trustmed.debias.compare import (
    METHODS,
    compare_methods,
    comparison_table,
    default_grids,
    dominating_methods,
    load_grouped_sets,
    pareto_figure,
    subsample,
)
from trustmed.io import write_json

log = logging.getLogger("debias_synthskin")

FULL = {
    "image_size": 32,
    "n_train": 2000,
    "n_val": 500,
    "n_external": 200,
    "n_test": 1000,
    "n_ood": 600,
    "erm_epochs": 10,
    "fractions": (0.02, 0.05, 0.10),
    "attributes": ("skin_tone", "age_bin"),
    "n_boot": 500,
    "methods": METHODS,
}
QUICK = {
    **FULL,
    "n_train": 1200,
    "n_val": 300,
    "n_external": 120,
    "n_test": 500,
    "n_ood": 300,
    "erm_epochs": 6,
    "fractions": (0.02,),
    "attributes": ("skin_tone",),
    "n_boot": 200,
    "methods": (
        "erm",
        "swift",
        "swift_nomask",
        "swift_step1_only",
        "finetune",
        "finetune_fair",
        "fairprune",
        "retrain_fair",
        "group_thresholds",
    ),
}
# The full benchmark's validation grids (a subset of ``default_grids()`` sized for a shared CPU).
BENCH_GRIDS = {
    "swift": [{"lr_forget": 1e-4, "lr_base": 1e-3, "batch_size": 64}]
    + [
        {"lr_forget": a, "lr_base": b, "batch_size": 16}
        for a, b in ((1e-4, 1e-1), (1e-3, 1e-2), (1e-3, 1e-1))
    ],
    "finetune": [{"lr": lr, "batch_size": 16} for lr in (1e-3, 1e-2)],
    "finetune_fair": [{"lr": lr, "lam": 1.0, "batch_size": 16} for lr in (1e-3, 1e-2)],
    "bmft": [{"lr_forget": 1e-3, "lr_base": 1e-1, "batch_size": 16}],
    "fairprune": [{"prune_ratio": k, "beta": b} for k in (0.01, 0.05) for b in (0.5, 1.0)],
    "retrain_fair": [{"lam": 1.0}],
    "group_thresholds": [{"constraints": "equalized_odds"}],
}
GOALS = {
    "swift_eodds_reduction": (">=", 0.5),
    "swift_eodds_reduction_tuned": (">=", 0.25),
    "swift_auc_drop": ("<=", 0.02),
    "swift_not_dominated_small": (">=", 1.0),
    "swift_cost_ratio": ("<=", 0.15),
}


def prepare(out: Path, seed: int, sizes: dict[str, Any]) -> tuple[Path, Path]:
    """Generate SynthSkin and train the ERM model (reused when already there)."""
    from trustmed.data.synth.skin import generate_synthskin
    from trustmed.train.classifier import TrainConfig, train_classifier

    data_root = out / "synthskin"
    if not (data_root / "fitzpatrick17k.csv").is_file():
        generate_synthskin(
            data_root,
            seed=seed,
            image_size=sizes["image_size"],
            **{k: sizes[k] for k in ("n_train", "n_val", "n_external", "n_test", "n_ood")},
        )
    erm_dir = out / "erm"
    if not (erm_dir / "model.json").is_file():
        cfg = TrainConfig.model_validate(
            {
                "seed": seed,
                "mixed_precision": "no",
                "data": {"root": str(data_root), "image_size": sizes["image_size"], "augment": False},
                "optim": {"epochs": sizes["erm_epochs"]},
            }
        )
        train_classifier(cfg, erm_dir)
    return data_root, erm_dir


def run_seed(out: Path, seed: int, sizes: dict[str, Any]) -> dict[str, Any]:
    """Every attribute × external size for one seed; returns the per-seed results."""
    from trustmed.models import load_checkpoint

    out.mkdir(parents=True, exist_ok=True)
    data_root, erm_dir = prepare(out, seed, sizes)
    model, spec, metadata = load_checkpoint(erm_dir)
    n_train = int(metadata.get("training", {}).get("n_train", sizes["n_train"]))
    grids = default_grids(quick=True) if sizes is QUICK else BENCH_GRIDS
    results: dict[str, Any] = {"seed": seed, "erm_training": metadata.get("training", {}), "runs": {}}
    tables = []
    for attribute in sizes["attributes"]:
        sets = load_grouped_sets(
            "fitzpatrick17k",
            data_root,
            attribute=attribute,
            image_size=spec.image_size,
            splits=["train", "val", "external", "test", "ood"],
        )
        pool = sets["external"]
        retrain = None
        for fraction in sizes["fractions"]:
            n_ext = max(int(round(fraction * n_train)), 8)
            run_sets = {**sets, "external": subsample(pool, n_ext, seed=seed)}
            methods = [m for m in sizes["methods"] if m != "retrain_fair" or retrain is None]
            t0 = time.perf_counter()
            comparison = compare_methods(
                model,
                run_sets,
                methods=methods,
                grids=grids,
                retrain_schedule=metadata.get("config", {}),
                n_boot=sizes["n_boot"],
                seed=seed,
            )
            if "retrain_fair" in comparison.results:
                retrain = comparison.results["retrain_fair"]
            elif retrain is not None:
                comparison.results["retrain_fair"] = retrain
            table = comparison_table(comparison).assign(
                attribute=attribute, fraction=fraction, n_external=n_ext, seed=seed
            )
            tables.append(table)
            key = f"{attribute}@{fraction:g}"
            results["runs"][key] = {
                "n_external": n_ext,
                "wall_time_s": time.perf_counter() - t0,
                **comparison.to_dict(),
            }
            for split in ("test", "ood"):
                pareto_figure(
                    table,
                    out / f"pareto_{attribute}_{fraction:g}_{split}.png",
                    split=split,
                    title=f"{attribute}, external {n_ext} ({fraction:.0%}), {split}",
                )
            log.info("seed %d %s done in %.0fs", seed, key, time.perf_counter() - t0)
    table = pd.concat(tables, ignore_index=True)
    table.to_csv(out / "comparison.csv", index=False)
    results["targets"] = targets(table, sizes)
    write_json(out / "results.json", results)
    return {"table": table, "results": results}


def _row(
    table: pd.DataFrame,
    method: str,
    attribute: str,
    fraction: float,
    split: str = "test",
    threshold: str = "0.5",
) -> pd.Series:
    rows = table[
        (table["method"] == method)
        & (table["attribute"] == attribute)
        & (table["fraction"] == fraction)
        & (table["split"] == split)
        & (table["threshold"] == threshold)
    ]
    return rows.iloc[0]


def targets(table: pd.DataFrame, sizes: dict[str, Any]) -> dict[str, float]:
    """The five TARGET values (skin tone, test split)."""
    big, small = max(sizes["fractions"]), min(sizes["fractions"])
    out = {}
    for name, kind in (("swift_eodds_reduction", "0.5"), ("swift_eodds_reduction_tuned", "tuned")):
        erm = _row(table, "erm", "skin_tone", big, threshold=kind)["eodds_mean_gap"]
        swift = _row(table, "swift", "skin_tone", big, threshold=kind)["eodds_mean_gap"]
        out[name] = float((erm - swift) / erm) if erm > 0 else float("nan")
    out["swift_auc_drop"] = float(
        _row(table, "erm", "skin_tone", big)["auc"] - _row(table, "swift", "skin_tone", big)["auc"]
    )
    rows = table[(table["attribute"] == "skin_tone") & (table["fraction"] == small)]
    out["swift_not_dominated_small"] = float(not dominating_methods(rows, "swift"))
    swift_cost = _row(table, "swift", "skin_tone", big)["wall_time_s"]
    retrain_cost = (
        _row(table, "retrain_fair", "skin_tone", big)["wall_time_s"]
        if (table["method"] == "retrain_fair").any()
        else float("nan")
    )
    out["swift_cost_ratio"] = float(swift_cost / retrain_cost) if retrain_cost else float("nan")
    return out


def _check(value: float, goal: tuple[str, float]) -> bool:
    op, bound = goal
    return bool(np.isfinite(value) and (value >= bound if op == ">=" else value <= bound))


COLUMNS = (
    "auc",
    "balanced_accuracy",
    "eodds_mean_gap",
    "eopp_tpr_gap",
    "dp_gap",
    "worst_group_auc",
    "wall_time_s",
)


def summary_table(table: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over seeds per (attribute, external size, split, threshold, method)."""
    keys = ["attribute", "n_external", "split", "threshold", "method"]
    grouped = table.groupby(keys, sort=False)[list(COLUMNS)]
    mean, std = grouped.mean(), grouped.std(ddof=0).fillna(0.0)
    out = mean.copy().astype(object)
    for col in COLUMNS:
        fmt = "{:.1f} ± {:.1f}" if col == "wall_time_s" else "{:.3f} ± {:.3f}"
        out[col] = [fmt.format(m, s) for m, s in zip(mean[col], std[col], strict=True)]
    return out.reset_index()


def headline_table(table: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over seeds: test AUC, eodds gap at 0.5 and tuned, OOD AUC and gap, wall time."""

    def stat(split: str, threshold: str, col: str, digits: int = 3) -> pd.Series:
        rows = table[(table["split"] == split) & (table["threshold"] == threshold)]
        grouped = rows.groupby(["attribute", "n_external", "method"], sort=False)[col]
        mean, std = grouped.mean(), grouped.std(ddof=0).fillna(0.0)
        return pd.Series(
            [f"{m:.{digits}f} ± {s:.{digits}f}" for m, s in zip(mean, std, strict=True)], mean.index
        )

    out = pd.DataFrame(
        {
            "test AUC": stat("test", "0.5", "auc"),
            "test eodds gap @0.5": stat("test", "0.5", "eodds_mean_gap"),
            "test eodds gap @tuned": stat("test", "tuned", "eodds_mean_gap"),
            "test worst-group AUC": stat("test", "0.5", "worst_group_auc"),
            "OOD AUC": stat("ood", "0.5", "auc"),
            "OOD eodds gap @0.5": stat("ood", "0.5", "eodds_mean_gap"),
            "wall s": stat("test", "0.5", "wall_time_s", 1),
        }
    ).reset_index()
    flagged = out["method"].isin(["group_thresholds"])
    out.loc[flagged, "method"] = out.loc[flagged, "method"] + " *"
    return out


def _run_seed_job(job: tuple[Path, int, bool]) -> dict[str, Any]:
    out, seed, quick = job
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("accelerate", "trustmed.metrics.fairness"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    return run_seed(out, seed, QUICK if quick else FULL)


def markdown_table(df: pd.DataFrame) -> str:
    """A DataFrame as a GitHub markdown table."""
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench_debias_synthskin"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, nargs="*", help="run several seeds and report mean ± std")
    parser.add_argument("--quick", action="store_true", help="one attribute, smallest external set")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run in parallel processes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("accelerate", "trustmed.metrics.fairness"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    sizes = QUICK if args.quick else FULL
    seeds = args.seeds or [args.seed]
    t0 = time.perf_counter()
    if args.jobs > 1 and len(seeds) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            per_seed = list(pool.map(_run_seed_job, [(args.out / f"seed{s}", s, args.quick) for s in seeds]))
    else:
        per_seed = [run_seed(args.out / f"seed{s}", s, sizes) for s in seeds]
    table = pd.concat([r["table"] for r in per_seed], ignore_index=True)
    table.to_csv(args.out / "comparison_all_seeds.csv", index=False)
    summary = summary_table(table)
    (args.out / "summary.md").write_text(markdown_table(summary))
    (args.out / "headline.md").write_text(markdown_table(headline_table(table)))
    values = {k: [r["results"]["targets"][k] for r in per_seed] for k in GOALS}
    result = {
        "seeds": seeds,
        "sizes": {k: (list(v) if isinstance(v, tuple) else v) for k, v in sizes.items()},
        "wall_time_s": time.perf_counter() - t0,
        "targets": {
            k: {
                "mean": float(np.mean(v)),
                "std": float(np.std(v)),
                "per_seed": v,
                "goal": f"{GOALS[k][0]} {GOALS[k][1]}",
            }
            for k, v in values.items()
        },
    }
    write_json(args.out / "results.json", result)
    for name, goal in GOALS.items():
        value = float(np.mean(values[name]))
        status = "PASS" if _check(value, goal) else "FAIL"
        print(f"TARGET {name}: {value:.3f} (goal {goal[0]} {goal[1]}) {status}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
