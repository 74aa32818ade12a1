"""Benchmark: SWiFT and its baselines on SynthSkin, side by side.

SWiFT ("Soft-Mask Weight Fine-tuning for Bias Mitigation", MELBA 2025, arXiv 2508.18826) against
every registered baseline (fine-tuning, BMFT arXiv 2408.06890, FairPrune arXiv 2203.02110, fair
retraining, per-group thresholds) and SWiFT's ablations, all from one ERM model trained on SynthSkin
(default bias: dark-skin malignant cases under-represented in training; lower lesion contrast on
dark skin). Attributes: skin tone (binary) and age bins (4 groups). External sets of about 2 %, 5 %
and 10 % of the training-set size, drawn from SynthSkin's external split. Each (attribute, size) is
one run of the library's comparison (``trustmed.debias.run.compare_checkpoint``): hyper-parameters
chosen on validation only; gaps on the test split at threshold 0.5 and at a validation-tuned
threshold, and on the out-of-distribution split. Methods that fit on the training split
(``retrain_fair``) do not depend on the external set: they run at the first size and their result
is reused at the others.

Targets (skin tone; test split; ERM as the start):

* ``swift_eodds_reduction``: relative cut of ``eodds_mean_gap`` at 0.5, largest external set (>= 0.5);
* ``swift_eodds_reduction_tuned``: the same at the validation-tuned threshold (>= 0.25);
* ``swift_auc_drop``: ERM test AUC minus SWiFT's, largest external set (<= 0.02);
* ``swift_not_dominated_small``: at the smallest external set, no baseline that does not need the
  attribute at prediction time has both a higher AUC and a lower gap beyond the CIs (1 = PASS);
* ``swift_cost_ratio``: SWiFT's wall time / ``retrain_fair``'s, each with its hyper-parameter
  search (every setting of its grid fitted and scored on validation) (<= 0.15); the ratio of the
  chosen settings' single runs is printed beside it (``swift_cost_ratio_single``).

Usage::

    python benchmarks/debias_synthskin.py --out runs/bench_debias_synthskin --seed 0 [--quick]
    python benchmarks/debias_synthskin.py --seeds 0 1 2 --jobs 3
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from _lib.bench import bench_parser, target, write_results
from _lib.debias import headline_table, markdown_table, summary_table

from trustmed.debias.registry import get_method, method_names
from trustmed.debias.run import DataRef, DebiasCompareConfig, compare_checkpoint, write_comparison
from trustmed.debias.selection import ERM
from trustmed.debias.tables import dominating_methods
from trustmed.io import read_json, write_json

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
    "skip": (),
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
    "skip": ("bmft",),
}
# The full benchmark's validation grids (subsets of the registered grids, sized for a shared CPU);
# a method not listed uses its registered grid. The quick benchmark uses the registered quick grids.
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


def run_seed(out: Path, seed: int, quick: bool) -> dict[str, Any]:
    """Every attribute × external size for one seed; returns the per-seed table and results."""
    sizes = QUICK if quick else FULL
    out.mkdir(parents=True, exist_ok=True)
    data_root, erm_dir = prepare(out, seed, sizes)
    methods = [ERM, *(m for m in method_names() if m not in sizes["skip"])]
    once = [m for m in methods if m != ERM and get_method(m).fit_on == "train"]
    training = read_json(erm_dir / "model.json", what="model.json")["metadata"].get("training", {})
    results: dict[str, Any] = {"seed": seed, "erm_training": training, "runs": {}}
    tables = []
    for attribute in sizes["attributes"]:
        reused = {}
        for fraction in sizes["fractions"]:
            cfg = DebiasCompareConfig(
                seed=seed,
                checkpoint=erm_dir,
                data=DataRef(dataset="fitzpatrick17k", root=data_root),
                attribute=attribute,
                external_fraction=fraction,
                methods=[m for m in methods if m not in reused],
                grids={} if quick else BENCH_GRIDS,
                quick=quick,
                n_boot=sizes["n_boot"],
            )
            t0 = time.perf_counter()
            comparison = compare_checkpoint(cfg)
            for name in once:
                if name in comparison.results:
                    reused[name] = comparison.results[name]
                elif name in reused:
                    comparison.results[name] = reused[name]
            key = f"{attribute}@{fraction:g}"
            written = write_comparison(comparison, out / key)
            n_ext = comparison.settings["sizes"]["external"]
            search_s = {name: res.search_wall_time_s for name, res in comparison.results.items()}
            tables.append(
                written.table.assign(
                    attribute=attribute,
                    fraction=fraction,
                    n_external=n_ext,
                    seed=seed,
                    search_wall_time_s=written.table["method"].map(search_s),
                )
            )
            wall = time.perf_counter() - t0
            results["runs"][key] = {"n_external": n_ext, "wall_time_s": wall, **comparison.to_dict()}
            log.info("seed %d %s done in %.0fs", seed, key, wall)
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
    """The five target values (skin tone, test split)."""
    big, small = max(sizes["fractions"]), min(sizes["fractions"])
    out = {}
    for name, kind in (("swift_eodds_reduction", "0.5"), ("swift_eodds_reduction_tuned", "tuned")):
        erm = _row(table, ERM, "skin_tone", big, threshold=kind)["eodds_mean_gap"]
        swift = _row(table, "swift", "skin_tone", big, threshold=kind)["eodds_mean_gap"]
        out[name] = float((erm - swift) / erm) if erm > 0 else float("nan")
    out["swift_auc_drop"] = float(
        _row(table, ERM, "skin_tone", big)["auc"] - _row(table, "swift", "skin_tone", big)["auc"]
    )
    rows = table[(table["attribute"] == "skin_tone") & (table["fraction"] == small)]
    out["swift_not_dominated_small"] = float(not dominating_methods(rows, "swift"))
    # each side's whole search (its grid fitted and scored on validation), and the chosen runs alone
    for name, column in (
        ("swift_cost_ratio", "search_wall_time_s"),
        ("swift_cost_ratio_single", "wall_time_s"),
    ):
        swift_cost = _row(table, "swift", "skin_tone", big)[column]
        retrain_cost = (
            _row(table, "retrain_fair", "skin_tone", big)[column]
            if (table["method"] == "retrain_fair").any()
            else float("nan")
        )
        out[name] = float(swift_cost / retrain_cost) if retrain_cost else float("nan")
    return out


def _quiet_logs() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("accelerate", "trustmed.metrics.fairness"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def _run_seed_job(job: tuple[Path, int, bool]) -> dict[str, Any]:
    _quiet_logs()
    return run_seed(*job)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, "runs/bench_debias_synthskin")
    parser.add_argument("--seeds", type=int, nargs="*", help="run several seeds and report mean ± std")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run in parallel processes")
    args = parser.parse_args(argv)
    _quiet_logs()
    seeds = args.seeds or [args.seed]
    jobs = [(args.out / f"seed{s}", s, args.quick) for s in seeds]
    t0 = time.perf_counter()
    if args.jobs > 1 and len(seeds) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            per_seed = list(pool.map(_run_seed_job, jobs))
    else:
        per_seed = [run_seed(*job) for job in jobs]
    table = pd.concat([r["table"] for r in per_seed], ignore_index=True)
    table.to_csv(args.out / "comparison_all_seeds.csv", index=False)
    (args.out / "summary.md").write_text(markdown_table(summary_table(table)))
    (args.out / "headline.md").write_text(markdown_table(headline_table(table)))
    sizes = QUICK if args.quick else FULL
    values = {k: [r["results"]["targets"][k] for r in per_seed] for k in GOALS}
    rows = []
    for name, (op, goal) in GOALS.items():
        row = target(name, float(np.mean(values[name])), op, goal)
        rows.append({**row, "std": float(np.std(values[name])), "per_seed": values[name]})
    single = [r["results"]["targets"]["swift_cost_ratio_single"] for r in per_seed]
    print(f"swift_cost_ratio_single (chosen settings only, no search): {np.mean(single):.3f}")
    result = {
        "swift_cost_ratio_single": {"mean": float(np.mean(single)), "per_seed": single},
        "seeds": seeds,
        "sizes": {k: (list(v) if isinstance(v, tuple) else v) for k, v in sizes.items()},
        "wall_time_s": time.perf_counter() - t0,
        "targets": rows,
    }
    write_results(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
