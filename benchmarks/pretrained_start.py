"""Benchmark: a pretrained start (torchvision-format DenseNet121 weights) against training from scratch.

The pretrained-initialisation path (``model.init_weights``) with a non-trivial model:

1. **Pretraining.** A MONAI DenseNet121 (the full network; 32 × 32 px: its pooling stages need at least
   31 px) learns a source task drawn with SynthSkin's lesion renderer under another
   seed and another label rule: the quartile of the latent lesion severity (4 classes), skin types
   drawn uniformly, stronger lesion cues (``benchmarks/_lib/pretrain.py``). Its weights are written
   as torchvision names them (``features.*``, ``classifier.*`` with 4 outputs) in a ``.pth`` file
   (``torch.save`` of a plain dict of tensors) and read back through trustmed's key mapping; the
   script checks that every extractor tensor arrived and that the 4-output head was left fresh.
2. **Fine-tuning.** ERM on SynthSkin (the debiasing benchmark's task: binary malignancy, dark-skin
   malignant cases under-represented in training, lower lesion contrast on dark skin) from the
   pretrained weights and from scratch: same architecture, same seed, same budget (Adam, learning
   rate and epochs fixed in advance for both arms, cosine schedule, the epoch with the best
   validation AUC kept). Each seed draws its own SynthSkin; the pretrained file is the same for all.
3. **SWiFT** on each pretrained-start model with an external set of 5 % of the training-set size,
   through the library's comparison (``trustmed.debias.run.compare_checkpoint``): the setting is
   chosen on validation only from the grid of ``benchmarks/debias_synthskin.py`` (the quick run uses
   the registered quick grid), with the same guard (validation AUC and balanced accuracy within
   0.02 of the model's). Skin tone; gaps on the test split at threshold 0.5.

Targets (mean over seeds, test split):

* ``pretrained_init_auc_gain``: test AUC of the pretrained start minus that of the scratch model
  with the same seed (> 0); the worst seed is named;
* ``pretrained_swift_gap_reduction``: ``eodds_mean_gap`` of the pretrained-start model minus that
  after SWiFT (> 0).

Torch runs on one CPU thread by default (``--threads``): on a shared two-core machine two threads
were many times slower than one.

Usage::

    python benchmarks/pretrained_start.py --out runs/bench/pretrained_start            # 5 seeds
    python benchmarks/pretrained_start.py --out runs/bench/pretrained_start_quick --quick  # 1 seed
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _lib.bench import bench_parser, command_line, result_table, target, write_results, write_summary
from _lib.paired import paired
from _lib.pretrain import (
    SOURCE_CLASSES,
    SOURCE_CUE_STRENGTH,
    check_init_weights,
    pretrain,
    severity_task,
    to_torchvision_densenet,
)

from trustmed.io import write_json

log = logging.getLogger("pretrained_start")

ATTRIBUTE = "skin_tone"
SOURCE_SEED_OFFSET = 1000  # the source task's data seed: never one of the target seeds
FULL: dict[str, Any] = {
    "image_size": 32,
    "n_pretrain": 4000,  # source images (20 % held out to report the source accuracy)
    "pretrain_epochs": 6,
    "pretrain_lr": 2e-3,
    "n_train": 2000,  # the debiasing benchmark's sizes (benchmarks/debias_synthskin.py)
    "n_val": 500,
    "n_external": 200,  # the external split; SWiFT draws external_fraction × n_train from it
    "n_test": 1000,
    "epochs": 8,
    "lr": 1e-3,
    "n_seeds": 5,  # docs/protocol.md: full runs use at least 5 seeds
    "external_fraction": 0.05,
    "swift_grid": "debias_synthskin",  # that benchmark's validation grid; "quick": the registered quick grid
    "swift_epochs": 10,  # epochs of each SWiFT step (the library's default)
    "n_boot": 200,
}
QUICK: dict[str, Any] = {
    **FULL,
    "n_pretrain": 1200,
    "pretrain_epochs": 3,
    "n_train": 600,
    "n_val": 200,
    "n_external": 60,
    "n_test": 400,
    "epochs": 4,
    "n_seeds": 1,
    "swift_grid": "quick",
    "n_boot": 0,
}
# For the smoke test only: seconds, not a measurement.
TINY: dict[str, Any] = {
    **QUICK,
    "n_pretrain": 160,
    "pretrain_epochs": 1,
    "n_train": 160,
    "n_val": 64,
    "n_external": 40,
    "n_test": 64,
    "epochs": 1,
    "external_fraction": 0.2,
    "swift_grid": [{"lr_forget": 1e-3, "lr_base": 1e-2, "batch_size": 16}],
    "swift_epochs": 1,
}


def _spec(sizes: dict[str, Any], n_outputs: int):
    from trustmed.models import ModelSpec

    return ModelSpec(arch="densenet121", in_channels=3, image_size=sizes["image_size"], n_outputs=n_outputs)


def make_pretrained(out: Path, seed: int, sizes: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """Pretrain on the source task, write ``densenet121_source.pth`` (torchvision keys), check the mapping."""
    path = out / "densenet121_source.pth"
    images, labels = severity_task(
        sizes["n_pretrain"], seed=SOURCE_SEED_OFFSET + seed, image_size=sizes["image_size"]
    )
    model, info = pretrain(
        _spec(sizes, SOURCE_CLASSES),
        images,
        labels,
        epochs=sizes["pretrain_epochs"],
        seed=seed,
        lr=sizes["pretrain_lr"],
    )
    out.mkdir(parents=True, exist_ok=True)
    torch.save(to_torchvision_densenet(model), path)
    mapping = check_init_weights(path, model, _spec(sizes, 1))
    info.update(
        {
            "task": f"severity quartile ({SOURCE_CLASSES} classes), uniform skin types, cue_strength "
            f"{SOURCE_CUE_STRENGTH}, data seed {SOURCE_SEED_OFFSET + seed}",
            "n_images": sizes["n_pretrain"],
            "file": str(path),
            "mapping": mapping,
        }
    )
    print(
        f"pretrained DenseNet121 on the source task: held-out accuracy {info['held_out_accuracy']:.3f} "
        f"(chance {1 / SOURCE_CLASSES:.2f}), {info['wall_time_s']:.0f}s; "
        f"{mapping['torchvision_keys']} features.* tensors written; init_weights loaded "
        f"{mapping['extractor_tensors_loaded']}/{mapping['extractor_tensors']} extractor tensors, "
        f"head {mapping['source_head_shape']} -> fresh {mapping['target_head_shape']}"
    )
    if mapping["extractor_tensors_loaded"] != mapping["extractor_tensors"] or not mapping["head_fresh"]:
        raise SystemExit("the pretrained weights did not map onto the model (see 'mapping' above)")
    return path, info


def _test_metrics(table, seed: int) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    from trustmed.metrics.fairness import fairness_report

    report = fairness_report(
        table["label"].to_numpy(),
        table["score"].to_numpy(),
        groups=table[ATTRIBUTE].astype(str).to_numpy(),
        threshold=0.5,
        n_boot=0,
        seed=seed,
    )
    return {
        "auc": float(roc_auc_score(table["label"], table["score"])),
        "eodds_mean_gap": float(report["gaps"]["eodds_mean_gap"]["value"]),
    }


def train_erm(
    data_root: Path, out: Path, seed: int, sizes: dict[str, Any], init: Path | None
) -> dict[str, Any]:
    """ERM DenseNet121 on SynthSkin, from ``init`` (torchvision-format weights) or from scratch."""
    from trustmed.train.classifier import TrainConfig, train_classifier

    model: dict[str, Any] = {"arch": "densenet121"}
    if init is not None:
        model["init_weights"] = str(init)
    cfg = TrainConfig.model_validate(
        {
            "seed": seed,
            "mixed_precision": "no",
            "cpu": True,
            "data": {"root": str(data_root), "image_size": sizes["image_size"], "augment": False},
            "model": model,
            "optim": {"name": "adam", "lr": sizes["lr"], "epochs": sizes["epochs"], "cosine": True},
        }
    )
    result = train_classifier(cfg, out)
    return {
        "val_auc": result.val_auc,
        "best_epoch": result.best_epoch,
        "wall_time_s": result.fit.wall_time_s,
        "test": _test_metrics(result.predictions["test"], seed),
    }


def _swift_grid(sizes: dict[str, Any]) -> tuple[dict[str, list[dict[str, Any]]], bool]:
    grid = sizes["swift_grid"]
    if grid == "quick":
        return {}, True
    if grid == "debias_synthskin":
        from debias_synthskin import BENCH_GRIDS

        return {"swift": BENCH_GRIDS["swift"]}, False
    return {"swift": list(grid)}, False


def run_swift(checkpoint: Path, data_root: Path, seed: int, sizes: dict[str, Any]) -> dict[str, Any]:
    """SWiFT from ``checkpoint`` with the validation-chosen setting; before/after on val and test."""
    from trustmed.debias.run import DataRef, DebiasCompareConfig, compare_checkpoint
    from trustmed.debias.selection import ERM

    grids, quick = _swift_grid(sizes)
    cfg = DebiasCompareConfig(
        seed=seed,
        checkpoint=checkpoint,
        data=DataRef(dataset="fitzpatrick17k", root=data_root),
        attribute=ATTRIBUTE,
        external_fraction=sizes["external_fraction"],
        methods=[ERM, "swift"],
        grids=grids,
        quick=quick,
        epochs=sizes["swift_epochs"],
        n_boot=sizes["n_boot"],
        eval_splits=["test"],
    )
    comparison = compare_checkpoint(cfg)
    erm, swift = comparison.results[ERM], comparison.results["swift"]
    chosen_val = next(row for row in swift.search if row["params"] == swift.params)

    def test(result, key: str) -> float:
        section = "overall" if key == "auc" else "gaps"
        return float(result.metrics["test"]["0.5"][section][key]["value"])

    before_gap, after_gap = test(erm, "eodds_mean_gap"), test(swift, "eodds_mean_gap")
    return {
        "n_external": comparison.settings["sizes"]["external"],
        "params": swift.params,
        "guard_passed": swift.guard_passed,
        "flags": swift.flags(),
        "search": [{k: v for k, v in row.items() if k != "cost"} for row in swift.search],
        "val_auc_before": float(comparison.reference["auc"]),
        "val_auc_after": float(chosen_val["auc"]),
        "val_eodds_gap_before": float(comparison.reference["eodds_mean_gap"]),
        "val_eodds_gap_after": float(chosen_val["eodds_mean_gap"]),
        "test_auc_before": test(erm, "auc"),
        "test_auc_after": test(swift, "auc"),
        "test_eodds_gap_before": before_gap,
        "test_eodds_gap_after": after_gap,
        "test_eodds_gap_reduction": before_gap - after_gap,
        "test_eodds_gap_ci_before": erm.metrics["test"]["0.5"]["gaps"]["eodds_mean_gap"].get("ci"),
        "test_eodds_gap_ci_after": swift.metrics["test"]["0.5"]["gaps"]["eodds_mean_gap"].get("ci"),
        "fit_wall_time_s": float(swift.cost["wall_time_s"]),
        "search_wall_time_s": float(swift.search_wall_time_s),
    }


def run_seed(out: Path, seed: int, sizes: dict[str, Any], pretrained: Path) -> dict[str, Any]:
    """One seed: its SynthSkin, ERM from scratch and from the pretrained weights, SWiFT on the latter."""
    from trustmed.data.synth.skin import generate_synthskin

    data_root = out / "synthskin"
    if not (data_root / "fitzpatrick17k.csv").is_file():
        generate_synthskin(
            data_root,
            seed=seed,
            image_size=sizes["image_size"],
            n_ood=0,
            **{k: sizes[k] for k in ("n_train", "n_val", "n_external", "n_test")},
        )
    scratch = train_erm(data_root, out / "scratch", seed, sizes, None)
    pre = train_erm(data_root, out / "pretrained", seed, sizes, pretrained)
    gain = pre["test"]["auc"] - scratch["test"]["auc"]
    print(
        f"seed {seed}: test AUC scratch {scratch['test']['auc']:.3f}, pretrained {pre['test']['auc']:.3f}, "
        f"gain {gain:+.3f} (val AUC {scratch['val_auc']:.3f} / {pre['val_auc']:.3f}; "
        f"test eodds gap {scratch['test']['eodds_mean_gap']:.3f} / {pre['test']['eodds_mean_gap']:.3f}; "
        f"{scratch['wall_time_s']:.0f}s / {pre['wall_time_s']:.0f}s)",
        flush=True,
    )
    swift = run_swift(out / "pretrained", data_root, seed, sizes)
    print(
        f"seed {seed}: SWiFT on the pretrained start ({swift['n_external']} external images, "
        f"{', '.join(f'{k}={v}' for k, v in swift['params'].items())}"
        f"{'' if swift['guard_passed'] else ', validation guard FAILED'}): test eodds gap "
        f"{swift['test_eodds_gap_before']:.3f} -> {swift['test_eodds_gap_after']:.3f} "
        f"(reduction {swift['test_eodds_gap_reduction']:+.3f}); AUC val {swift['val_auc_before']:.3f} -> "
        f"{swift['val_auc_after']:.3f}, test {swift['test_auc_before']:.3f} -> {swift['test_auc_after']:.3f}"
        + (
            f"; FLAGGED: {swift['flags']['test']['0.5']}" if swift["flags"].get("test", {}).get("0.5") else ""
        ),
        flush=True,
    )
    result = {"seed": seed, "scratch": scratch, "pretrained": pre, "auc_gain": gain, "swift": swift}
    write_json(out / "seed_result.json", result)
    return result


def _mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def run(out: Path, seeds: list[int], sizes: dict[str, Any]) -> dict[str, Any]:
    """Pretrain once, then every seed; print the summary and the targets; return results.json's content."""
    t0 = time.perf_counter()
    pretrained, pretraining = make_pretrained(out / "pretrain", seeds[0], sizes)
    per_seed = [run_seed(out / f"seed{s}", s, sizes, pretrained) for s in seeds]
    gains = [r["auc_gain"] for r in per_seed]
    worst = min(per_seed, key=lambda r: r["auc_gain"])
    reductions = [r["swift"]["test_eodds_gap_reduction"] for r in per_seed]
    worst_swift = min(per_seed, key=lambda r: r["swift"]["test_eodds_gap_reduction"])
    flagged = [r["seed"] for r in per_seed if r["swift"]["flags"].get("test", {}).get("0.5")]
    col = {
        "scratch test AUC": [r["scratch"]["test"]["auc"] for r in per_seed],
        "pretrained test AUC": [r["pretrained"]["test"]["auc"] for r in per_seed],
        "scratch val AUC": [r["scratch"]["val_auc"] for r in per_seed],
        "pretrained val AUC": [r["pretrained"]["val_auc"] for r in per_seed],
        "SWiFT val AUC (after)": [r["swift"]["val_auc_after"] for r in per_seed],
        "SWiFT test AUC (after)": [r["swift"]["test_auc_after"] for r in per_seed],
        "test eodds gap before SWiFT": [r["swift"]["test_eodds_gap_before"] for r in per_seed],
        "test eodds gap after SWiFT": [r["swift"]["test_eodds_gap_after"] for r in per_seed],
    }
    print(f"over {len(seeds)} seed(s), mean ± std:")
    for name, values in col.items():
        print(f"  {name}: {_mean_std(values)}")
    targets = [
        target(
            "pretrained_init_auc_gain",
            float(np.mean(gains)),
            ">",
            0.0,
            fmt="+.3f",
            note=f"± {np.std(gains):.3f} over {len(seeds)} seeds; "
            f"worst seed {worst['seed']}: {worst['auc_gain']:+.3f}",
        ),
        target(
            "pretrained_swift_gap_reduction",
            float(np.mean(reductions)),
            ">",
            0.0,
            fmt="+.3f",
            note=f"± {np.std(reductions):.3f}; worst seed {worst_swift['seed']}: "
            f"{worst_swift['swift']['test_eodds_gap_reduction']:+.3f}"
            + (f"; flagged (guard failed or degenerate) in seeds {flagged}" if flagged else ""),
        ),
    ]
    wall = time.perf_counter() - t0
    print(f"wall time {wall:.0f}s")
    return {
        "seeds": seeds,
        "sizes": sizes,
        "pretraining": pretraining,
        "per_seed": per_seed,
        "summary": {name: {"mean": float(np.mean(v)), "std": float(np.std(v))} for name, v in col.items()},
        "auc_gain": {"mean": float(np.mean(gains)), "std": float(np.std(gains)), "per_seed": gains},
        "swift_gap_reduction": {
            "mean": float(np.mean(reductions)),
            "std": float(np.std(reductions)),
            "per_seed": reductions,
        },
        "wall_time_s": wall,
        "targets": targets,
    }


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, "runs/bench/pretrained_start")
    parser.add_argument("--seeds", type=int, nargs="*", help="the seeds (default: --seed and the next ones)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (1: robust on a shared CPU; 0: torch's default)",
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="only rebuild summary.json from the results.json already in --out",
    )
    args = parser.parse_args(argv)
    if args.reuse:
        _summary(args.out, json.loads((args.out / "results.json").read_text()))
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("accelerate", "trustmed.metrics.fairness", "trustmed.models.weights"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = QUICK if args.quick else FULL
    seeds = args.seeds or [args.seed + i for i in range(sizes["n_seeds"])]
    results = run(args.out, seeds, sizes)
    results["torch_threads"] = torch.get_num_threads()
    write_results(args.out, results)
    _summary(args.out, results)
    return 0


def _summary(out: Path, results: dict[str, Any]) -> None:
    """``summary.json``: the per-seed table, the paired comparisons and the computed conclusions."""
    per_seed = results["per_seed"]
    seeds = [r["seed"] for r in per_seed]
    columns = ["seed", "scratch test AUC", "pretrained test AUC", "gain", "gap before SWiFT", "after",
               "test AUC after SWiFT", "SWiFT validation guard"]  # fmt: skip
    rows = [
        [r["seed"], f"{r['scratch']['test']['auc']:.3f}", f"{r['pretrained']['test']['auc']:.3f}",
         f"{r['auc_gain']:+.3f}", f"{r['swift']['test_eodds_gap_before']:.3f}",
         f"{r['swift']['test_eodds_gap_after']:.3f}", f"{r['swift']['test_auc_after']:.3f}",
         "passed" if r["swift"]["guard_passed"] else "failed"]
        for r in per_seed
    ]  # fmt: skip
    failed = [r["seed"] for r in per_seed if not r["swift"]["guard_passed"]]
    auc = paired(
        [r["pretrained"]["test"]["auc"] for r in per_seed],
        [r["scratch"]["test"]["auc"] for r in per_seed],
        better="higher",
        seeds=seeds,
    )
    gap = paired(
        [r["swift"]["test_eodds_gap_after"] for r in per_seed],
        [r["swift"]["test_eodds_gap_before"] for r in per_seed],
        better="lower",
        seeds=seeds,
    )
    fairer = paired(
        [r["swift"]["test_eodds_gap_before"] for r in per_seed],
        [r["scratch"]["test"]["eodds_mean_gap"] for r in per_seed],
        better="lower",
        seeds=seeds,
    )

    def ci(p: dict) -> str:
        return "" if np.isnan(p["ci_low"]) else f" [{p['ci_low']:+.3f}, {p['ci_high']:+.3f}]"

    paired_rows = [
        [name, f"{p['mean']:+.3f}{ci(p)}", f"{p['wins']} / {p['ties']} / {p['losses']}",
         f"{p['worst_seed']} ({p['worst']:+.3f})"]
        for name, p in (
            ("test AUC: pretrained − scratch", auc),
            ("test eodds gap: after SWiFT − before (pretrained start)", gap),
            ("test eodds gap: pretrained − scratch", fairer),
        )
    ]  # fmt: skip
    conclusions = [
        f"The pretrained start changed test AUC by {auc['mean']:+.3f} on average "
        f"({auc['wins']} of {auc['n_seeds']} seeds better by more than {auc['tie']}).",
        f"SWiFT changed the pretrained-start model's gap by {gap['mean']:+.3f} "
        f"(lower on {gap['wins']} of {gap['n_seeds']} seeds)"
        + (
            f"; no setting passed the validation guard in seed(s) {', '.join(map(str, failed))}, so "
            "those results are flagged."
            if failed
            else "; every seed passed the validation guard."
        ),
        "The pretrained start made the model "
        + ("fairer" if fairer["wins"] > fairer["n_seeds"] / 2 else "no fairer")
        + f" than training from scratch: gap difference {fairer['mean']:+.3f}, "
        f"{fairer['wins']} / {fairer['ties']} / {fairer['losses']} win / tie / loss.",
    ]
    write_summary(
        out,
        benchmark="pretrained_start",
        title="Pretrained start (torchvision-format DenseNet121) against training from scratch",
        command=command_line(),
        targets=results["targets"],
        tables=[
            result_table("Per seed (test split, skin tone, threshold 0.5)", columns, rows),
            result_table(
                "Paired over seeds (95 % t-interval)",
                ["comparison", "mean difference", "win / tie / loss", "worst seed"],
                paired_rows,
            ),
        ],
        conclusions=conclusions,
        settings={"seeds": seeds, "threads": results["torch_threads"]},
    )


if __name__ == "__main__":
    raise SystemExit(main())
