"""Benchmark: SWiFT and its baselines on SynthSkin, side by side, paired over seeds.

SWiFT ("Soft-Mask Weight Fine-tuning for Bias Mitigation", MELBA 2025, arXiv 2508.18826) against
every registered baseline (fine-tuning, BMFT arXiv 2408.06890, FairPrune arXiv 2203.02110, fair
retraining, per-group thresholds) and SWiFT's ablations, all from one ERM model per seed.

**Regime.** SynthSkin with its defaults (dark-skin malignant cases under-represented in training;
lower lesion contrast on dark skin; ``severity_overlap`` 0.15), 32 px, 2 000 training images. ERM is
``tiny_cnn`` trained for 30 epochs without augmentation (chosen on validation AUC): a competent
classifier (validation AUC about 0.89) that is still biased against dark skin. ``--quick`` is the same
regime (same data sizes, same ERM), smaller: 3 seeds instead of 5, skin tone only, the 2 % and 10 %
external sets only, the registered quick grids, no BMFT.

**Protocol** (docs/protocol.md). External sets of about 2 %, 5 % and 10 % of the training-set size,
drawn from SynthSkin's external split. Each (attribute, size) is one run of the library's comparison
(``trustmed.debias.run.compare_checkpoint``): every method's hyper-parameters are chosen on
validation only; gaps on the test split at threshold 0.5 and at a validation-tuned threshold, and
on the out-of-distribution split. Methods that fit on the training split (``retrain_fair``) do not
depend on the external set: they run at the first size and their result is reused at the others.
SWiFT runs twice: with SGD (``swift``, the paper's optimiser for skin images) and with Adam
(``swift_adam``, registered here with an Adam-sized grid); its mask scales the optimiser's update
in both.

**Statistics.** For SWiFT against every other method, per (attribute, size): the per-seed paired
difference in gap (``eodds_mean_gap`` at 0.5; lower is better) and in AUC, with a 95 % t-interval over
seeds, the win/tie/loss count (tie: within 0.005) and the worst seed (``_lib/paired.py``).

Targets (skin tone; test split; threshold 0.5; ERM as the start):

* ``swift_gap_falls_every_seed``: fraction of seeds on which SWiFT's gap is below ERM's, largest
  external set (>= 1);
* ``swift_eodds_reduction``: median over seeds of the relative cut of the gap, largest set (>= 0.5);
* ``swift_eodds_reduction_tuned``: the same at the validation-tuned threshold (>= 0.25);
* ``swift_auc_drop``: mean paired ERM AUC minus SWiFT AUC, largest set (<= 0.02);
* ``swift_gap_vs_best_baseline_small``: mean paired gap difference, SWiFT minus the best baseline
  that does not need the attribute at prediction time (lowest mean *validation* gap of its chosen
  setting; ablations and SWiFT variants excluded), smallest external set (<= 0);
* ``swift_cost_ratio``: SWiFT's wall time / ``retrain_fair``'s, each with its hyper-parameter
  search (every setting of its grid fitted and scored on validation) (<= 0.15); the ratio of the
  chosen settings' single runs is printed beside it (``swift_cost_ratio_single``).

Writes ``results.json`` (everything), ``summary.json`` and ``summary.md`` (what ``make results``
renders), ``table.md``, ``columns.md`` (every column, mean ± std), ``headline.md``, ``paired.md`` and
per-seed comparison folders. ``--reuse`` rebuilds every table and the summary from the per-seed
comparison folders already in ``--out`` instead of running them again.

Usage::

    python benchmarks/debias_synthskin.py --out runs/bench_debias_synthskin --jobs 2
    python benchmarks/debias_synthskin.py --out runs/bench_debias_synthskin_quick --quick --jobs 2
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from _lib.bench import bench_parser, command_line, result_table, target, write_results, write_summary
from _lib.debias import headline_table, markdown_table, summary_table
from _lib.paired import paired, paired_markdown

from trustmed.debias.registry import METHODS, Method, get_method, method_names, register
from trustmed.debias.run import DataRef, DebiasCompareConfig, compare_checkpoint, write_comparison
from trustmed.debias.selection import ERM
from trustmed.debias.swift import SWiFT
from trustmed.io import read_json, write_json

log = logging.getLogger("debias_synthskin")

# SWiFT with Adam: the paper's two steps with Adam's step sizes (the registered grid is SGD's).
SWIFT_ADAM = "swift_adam"


def register_swift_adam() -> None:
    """Add ``swift_adam`` to the registry for this process (idempotent; importing this module
    changes nothing)."""
    if SWIFT_ADAM in METHODS:
        return
    register(
        Method(
            SWIFT_ADAM,
            SWiFT,
            grid=tuple(
                {"lr_forget": a, "lr_base": b, "batch_size": 16} for a, b in ((1e-4, 1e-3), (1e-3, 1e-3))
            ),
            quick_grid=({"lr_forget": 1e-4, "lr_base": 1e-3, "batch_size": 16},),
            fixed={"optimizer": "adam"},
            epochs=METHODS["swift"].epochs,
        )
    )


# SWiFT and its variants are not baselines of SWiFT.
SWIFT_FAMILY = ("swift", SWIFT_ADAM, "swift_nomask", "swift_step1_only")

FULL = {
    "image_size": 32,
    "n_train": 2000,
    "n_val": 500,
    "n_external": 200,
    "n_test": 1000,
    "n_ood": 600,
    "erm_epochs": 30,
    "fractions": (0.02, 0.05, 0.10),
    "attributes": ("skin_tone", "age_bin"),
    "n_boot": 500,
    "n_seeds": 5,
    "skip": (),
}
QUICK = {
    **FULL,
    "fractions": (0.02, 0.10),
    "attributes": ("skin_tone",),
    "n_boot": 200,
    "n_seeds": 3,
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
    "swift_gap_falls_every_seed": (">=", 1.0),
    "swift_eodds_reduction": (">=", 0.5),
    "swift_eodds_reduction_tuned": (">=", 0.25),
    "swift_auc_drop": ("<=", 0.02),
    "swift_gap_vs_best_baseline_small": ("<=", 0.0),
    "swift_cost_ratio": ("<=", 0.15),
}
GAP = "eodds_mean_gap"
TIE = 0.005


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
    register_swift_adam()
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
            val_gap = {
                name: chosen_val_gap(res.search, res.params) for name, res in comparison.results.items()
            }
            tables.append(
                written.table.assign(
                    attribute=attribute,
                    fraction=fraction,
                    n_external=n_ext,
                    seed=seed,
                    search_wall_time_s=written.table["method"].map(search_s),
                    val_gap=written.table["method"].map(val_gap),
                )
            )
            wall = time.perf_counter() - t0
            results["runs"][key] = {"n_external": n_ext, "wall_time_s": wall, **comparison.to_dict()}
            log.info("seed %d %s done in %.0fs", seed, key, wall)
    table = pd.concat(tables, ignore_index=True)
    table.to_csv(out / "comparison.csv", index=False)
    write_json(out / "results.json", results)
    return {"table": table, "results": results}


def chosen_val_gap(search: list[dict[str, Any]], params: dict[str, Any]) -> float:
    """The validation equalised-odds gap of the chosen setting (its row of the validation search).

    >>> chosen_val_gap([{"params": {"lr": 1}, GAP: 0.3}, {"params": {"lr": 2}, GAP: 0.1}], {"lr": 2})
    0.1
    """
    row = next((r for r in search if r["params"] == params), None)
    return float("nan") if row is None else float(row[GAP])


def reuse_seed(out: Path) -> dict[str, Any]:
    """One seed's table from a finished run's folder (``comparison.csv``), with the chosen settings'
    validation gaps read from each ``<attribute>@<fraction>/comparison.json``."""
    table = pd.read_csv(out / "comparison.csv", dtype={"threshold": str})
    keys = [f"{a}@{f:g}" for a, f in zip(table["attribute"], table["fraction"], strict=True)]
    val = {}
    for key in dict.fromkeys(keys):
        methods = read_json(out / key / "comparison.json", what="comparison.json")["methods"]
        val[key] = {name: chosen_val_gap(m["search"], m["params"]) for name, m in methods.items()}
    table["val_gap"] = [val[k][m] for k, m in zip(keys, table["method"], strict=True)]
    return {"table": table, "results": read_json(out / "results.json", what="results.json")}


def _values(
    table: pd.DataFrame,
    method: str,
    attribute: str,
    fraction: float,
    column: str,
    seeds: list[int],
    *,
    split: str = "test",
    threshold: str = "0.5",
) -> np.ndarray:
    """``column`` of ``method`` per seed (in ``seeds`` order)."""
    rows = table[
        (table["method"] == method)
        & (table["attribute"] == attribute)
        & (table["fraction"] == fraction)
        & (table["split"] == split)
        & (table["threshold"] == threshold)
    ].set_index("seed")[column]
    missing = [s for s in seeds if s not in rows.index]
    if missing:
        raise KeyError(f"no {method} row for {attribute}@{fraction:g} on seeds {missing}")
    return rows.loc[seeds].to_numpy(dtype=float)


def paired_rows(table: pd.DataFrame, seeds: list[int]) -> list[dict[str, Any]]:
    """SWiFT against every other method, per (attribute, external size): gap at 0.5 and AUC."""
    rows = []
    for (attribute, fraction), part in table.groupby(["attribute", "fraction"], sort=False):
        n_ext = int(part["n_external"].iloc[0])
        for other in dict.fromkeys(part["method"]):
            if other == "swift":
                continue
            for metric, column, better in (("gap @0.5", GAP, "lower"), ("AUC", "auc", "higher")):
                stats = paired(
                    _values(table, "swift", attribute, fraction, column, seeds),
                    _values(table, other, attribute, fraction, column, seeds),
                    better=better,
                    tie=TIE,
                    seeds=seeds,
                )
                rows.append(
                    {
                        "attribute": attribute,
                        "n_external": n_ext,
                        "fraction": float(fraction),
                        "baseline": other,
                        "comparison": f"{attribute}, {n_ext} images: SWiFT − {other}",
                        "metric": metric,
                        **stats,
                    }
                )
    return rows


def attribute_free_baselines(table: pd.DataFrame) -> list[str]:
    """Baselines that do not need the attribute at prediction time (no ERM, no SWiFT variant)."""
    flagged = set(table.loc[table["needs_attribute_at_prediction"], "method"])
    return [
        m
        for m in dict.fromkeys(table["method"])
        if m != ERM and m not in SWIFT_FAMILY and m not in flagged and not get_method(m).ablation_of
    ]


def targets(table: pd.DataFrame, sizes: dict[str, Any], seeds: list[int]) -> dict[str, Any]:
    """The target values (skin tone, test split) and the per-seed numbers behind them."""
    big, small = max(sizes["fractions"]), min(sizes["fractions"])
    st = "skin_tone"
    erm_gap = _values(table, ERM, st, big, GAP, seeds)
    swift_gap = _values(table, "swift", st, big, GAP, seeds)
    out: dict[str, Any] = {"per_seed": {"erm_gap": erm_gap.tolist(), "swift_gap": swift_gap.tolist()}}
    out["swift_gap_falls_every_seed"] = float(np.mean(swift_gap < erm_gap))
    for name, kind in (("swift_eodds_reduction", "0.5"), ("swift_eodds_reduction_tuned", "tuned")):
        erm = _values(table, ERM, st, big, GAP, seeds, threshold=kind)
        swift = _values(table, "swift", st, big, GAP, seeds, threshold=kind)
        cut = np.where(erm > 0, (erm - swift) / np.where(erm > 0, erm, 1.0), np.nan)
        out["per_seed"][name] = cut.tolist()
        out[name] = float(np.nanmedian(cut))
    auc = paired(
        _values(table, ERM, st, big, "auc", seeds),
        _values(table, "swift", st, big, "auc", seeds),
        better="lower",
        tie=TIE,
        seeds=seeds,
    )
    out["per_seed"]["swift_auc_drop"] = auc["diff"]
    out["swift_auc_drop"] = auc["mean"]
    out["swift_auc_drop_worst"] = {
        "seed": auc["seeds"][int(np.argmax(auc["diff"]))],
        "drop": max(auc["diff"]),
    }
    rows = table[(table["attribute"] == st) & (table["fraction"] == small) & (table["split"] == "test")]
    rows = rows[rows["threshold"] == "0.5"]
    candidates = attribute_free_baselines(rows)
    # chosen on validation: the lowest mean validation gap of each baseline's chosen setting
    val_means = {m: float(rows.loc[rows["method"] == m, "val_gap"].mean()) for m in candidates}
    means = {m: float(rows.loc[rows["method"] == m, GAP].mean()) for m in candidates}
    best = min(val_means, key=val_means.get)
    gap = paired(
        _values(table, "swift", st, small, GAP, seeds),
        _values(table, best, st, small, GAP, seeds),
        better="lower",
        tie=TIE,
        seeds=seeds,
    )
    auc_best = paired(
        _values(table, "swift", st, small, "auc", seeds),
        _values(table, best, st, small, "auc", seeds),
        better="higher",
        tie=TIE,
        seeds=seeds,
    )
    out["best_baseline_small"] = {
        "method": best,
        "mean_val_gaps": val_means,
        "mean_gaps": means,
        "gap": gap,
        "auc": auc_best,
    }
    out["swift_gap_vs_best_baseline_small"] = gap["mean"]
    # each side's whole search (its grid fitted and scored on validation), and the chosen runs alone
    for name, column in (
        ("swift_cost_ratio", "search_wall_time_s"),
        ("swift_cost_ratio_single", "wall_time_s"),
    ):
        if (table["method"] == "retrain_fair").any():
            ratio = _values(table, "swift", st, big, column, seeds) / _values(
                table, "retrain_fair", st, big, column, seeds
            )
            out["per_seed"][name] = ratio.tolist()
            out[name] = float(np.mean(ratio))
        else:
            out[name] = float("nan")
    return out


def conclusions(
    table: pd.DataFrame, tgt: dict[str, Any], paired_list: list[dict], seeds: list[int]
) -> list[str]:
    """Sentences computed from the run (skin tone unless said)."""
    st, n = "skin_tone", len(seeds)
    fractions = sorted(table["fraction"].unique())
    big, small = fractions[-1], fractions[0]
    n_big = int(table.loc[table["fraction"] == big, "n_external"].iloc[0])
    n_small = int(table.loc[table["fraction"] == small, "n_external"].iloc[0])
    erm_auc = _values(table, ERM, st, big, "auc", seeds)
    per = tgt["per_seed"]
    falls = int(round(tgt["swift_gap_falls_every_seed"] * n))
    worst = int(np.argmin(per["swift_eodds_reduction"]))
    out = [
        f"ERM's mean test AUC is {erm_auc.mean():.3f}, "
        f"{'meeting' if erm_auc.mean() >= 0.85 else 'missing'} the 0.85 floor (lowest seed "
        f"{erm_auc.min():.3f}), skin-tone gap at 0.5 {np.mean(per['erm_gap']):.3f} "
        f"(range {min(per['erm_gap']):.3f}–{max(per['erm_gap']):.3f}).",
        f"With {n_big} external images SWiFT cut the skin-tone gap on {falls} of {n} seeds; median cut "
        f"{tgt['swift_eodds_reduction']:.0%} (worst seed {seeds[worst]}: {per['erm_gap'][worst]:.3f} → "
        f"{per['swift_gap'][worst]:.3f}); AUC changed by {-tgt['swift_auc_drop']:+.3f} on average "
        f"(worst seed {tgt['swift_auc_drop_worst']['seed']}: {-tgt['swift_auc_drop_worst']['drop']:+.3f}).",
    ]
    best = tgt["best_baseline_small"]
    g, a = best["gap"], best["auc"]
    verdict = "lower" if g["ci_high"] < 0 else "higher" if g["ci_low"] > 0 else "not different (CI spans 0)"
    out.append(
        f"At {n_small} external images the strongest attribute-free baseline is {best['method']} "
        f"(lowest mean validation gap); SWiFT's test gap minus its test gap is {g['mean']:+.3f} "
        f"[{g['ci_low']:+.3f}, {g['ci_high']:+.3f}] — {verdict}; SWiFT wins/ties/loses on "
        f"{g['wins']}/{g['ties']}/{g['losses']} "
        f"seeds (worst seed {g['worst_seed']}: {g['worst']:+.3f}); AUC difference {a['mean']:+.3f} "
        f"[{a['ci_low']:+.3f}, {a['ci_high']:+.3f}]."
    )
    adam = [r for r in paired_list if r["baseline"] == SWIFT_ADAM and r["metric"] == "gap @0.5"]
    adam = [r for r in adam if r["attribute"] == st and r["fraction"] == big]
    if adam:
        r = adam[0]
        adam_gap = _values(table, SWIFT_ADAM, st, big, GAP, seeds)
        adam_cuts = int(np.sum(adam_gap < np.array(per["erm_gap"])))
        out.append(
            f"SWiFT with Adam (update mask) cut the gap on {adam_cuts} "
            f"of {n} seeds at {n_big} images (mean gap {adam_gap.mean():.3f} vs SGD "
            f"{np.mean(per['swift_gap']):.3f}; SGD minus Adam {r['mean']:+.3f} [{r['ci_low']:+.3f}, "
            f"{r['ci_high']:+.3f}])."
        )
    if "age_bin" in set(table["attribute"]):
        erm_a = _values(table, ERM, "age_bin", big, GAP, seeds)
        sw_a = _values(table, "swift", "age_bin", big, GAP, seeds)
        out.append(
            f"Age bins (4 groups, {n_big} images): ERM gap {erm_a.mean():.3f}, SWiFT {sw_a.mean():.3f}; "
            f"SWiFT cut it on {int(np.sum(sw_a < erm_a))} of {n} seeds."
        )
    return out


def _fmt_paired(r: dict[str, Any]) -> list[Any]:
    ci = "" if np.isnan(r["ci_low"]) else f" [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]"
    return [
        str(r["n_external"]),
        r["baseline"],
        r["metric"],
        f"{r['mean']:+.3f}{ci}",
        f"{r['wins']} / {r['ties']} / {r['losses']}",
        f"{r['worst_seed']} ({r['worst']:+.3f})",
    ]


def _quiet_logs() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("accelerate", "trustmed.metrics.fairness"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def _run_seed_job(job: tuple[Path, int, bool, int]) -> dict[str, Any]:
    import torch

    out, seed, quick, threads = job
    torch.set_num_threads(threads)
    _quiet_logs()
    return run_seed(out, seed, quick)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, "runs/bench_debias_synthskin")
    parser.add_argument(
        "--seeds", type=int, nargs="*", help="explicit seeds (default: 5 from --seed, 3 with --quick)"
    )
    parser.add_argument("--jobs", type=int, default=1, help="seeds run in parallel processes")
    parser.add_argument(
        "--reuse", action="store_true", help="rebuild the tables from the seed folders already in --out"
    )
    args = parser.parse_args(argv)
    _quiet_logs()
    sizes = QUICK if args.quick else FULL
    seeds = list(args.seeds) if args.seeds else list(range(args.seed, args.seed + sizes["n_seeds"]))
    threads = max(1, (os.cpu_count() or 1) // max(1, args.jobs))
    jobs = [(args.out / f"seed{s}", s, args.quick, threads) for s in seeds]
    t0 = time.perf_counter()
    if args.reuse:
        per_seed = [reuse_seed(job[0]) for job in jobs]
    elif args.jobs > 1 and len(seeds) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            per_seed = list(pool.map(_run_seed_job, jobs))
    else:
        per_seed = [_run_seed_job(job) for job in jobs]
    table = pd.concat([r["table"] for r in per_seed], ignore_index=True)
    table.to_csv(args.out / "comparison_all_seeds.csv", index=False)
    summary = summary_table(table)
    headline = headline_table(table)
    (args.out / "columns.md").write_text(markdown_table(summary))
    (args.out / "headline.md").write_text(markdown_table(headline))
    pairs = paired_rows(table, seeds)
    (args.out / "paired.md").write_text(paired_markdown(pairs))
    tgt = targets(table, sizes, seeds)
    rows = [target(name, tgt[name], op, goal) for name, (op, goal) in GOALS.items()]
    print(f"swift_cost_ratio_single (chosen settings only, no search): {tgt['swift_cost_ratio_single']:.3f}")
    said = conclusions(table, tgt, pairs, seeds)
    for sentence in said:
        print(sentence)
    (args.out / "table.md").write_text(
        "## Targets\n\n"
        + markdown_table(pd.DataFrame(rows))
        + "\n## Mean ± std over seeds\n\n"
        + markdown_table(headline)
        + "\n## SWiFT paired with every method\n\n"
        + paired_markdown(pairs)
    )
    columns = [
        "external images",
        "baseline",
        "metric",
        "SWiFT − baseline [95 % CI]",
        "W / T / L",
        "worst seed",
    ]
    skin = headline[headline["attribute"] == "skin_tone"].drop(columns="attribute")
    tables = [
        result_table(
            f"Skin tone, test split: mean ± std over {len(seeds)} seeds (* needs the attribute to predict)",
            list(skin.columns),
            skin.astype(str).to_numpy().tolist(),
        ),
        result_table(
            f"SWiFT paired with each method, skin tone, test split, seeds {seeds} (tie: |diff| <= {TIE})",
            columns,
            [_fmt_paired(r) for r in pairs if r["attribute"] == "skin_tone"],
        ),
    ]
    if "age_bin" in set(table["attribute"]):
        age = headline[headline["attribute"] == "age_bin"].drop(columns="attribute")
        tables.append(
            result_table(
                "Age bins (4 groups), test split: mean ± std",
                list(age.columns),
                age.astype(str).to_numpy().tolist(),
            )
        )
    settings = {
        "seeds": seeds,
        "quick": args.quick,
        **{k: (list(v) if isinstance(v, tuple) else v) for k, v in sizes.items()},
    }
    write_summary(
        args.out,
        benchmark="debias_synthskin",
        title="SWiFT: post-hoc debiasing with a small external set (SynthSkin)",
        command=command_line(),
        targets=rows,
        tables=tables,
        conclusions=said,
        settings=settings,
    )
    result = {
        "seeds": seeds,
        "sizes": settings,
        "wall_time_s": time.perf_counter() - t0,
        "targets": rows,
        "target_details": tgt,
        "paired": pairs,
        "conclusions": said,
        "erm_training": {r["results"]["seed"]: r["results"]["erm_training"] for r in per_seed},
    }
    write_results(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
