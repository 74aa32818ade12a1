"""Benchmark: GroupDistil vs KD, ERM and Group DRO students on ColoredDigits (95 % spurious colour).

Per seed: ColoredDigits is generated, a teacher (tiny_cnn width 24) is trained with ERM and another
with Group DRO; students (width 8, about 8x fewer parameters) are trained with ERM, group-uniform KD
(``kd``: GroupDistil's loss with eta = 0, the baseline of METHODS.md), per-sample KD (``kd_sample``),
GroupDistil (eta chosen on validation worst-group accuracy from a small grid) and Group DRO, plus
GroupDistil and KD from the Group DRO teacher. GroupDistil's worst-group gain is reported against both
KD baselines. Every model is one :func:`trustmed.distill.run.train_and_score` call
(the path of ``trustmed distill``) and keeps its best epoch by validation worst-group accuracy; the
numbers are on the balanced test split, with bootstrap CIs. The per-step cost of GroupDistil vs
per-sample KD is timed in the same process on the same batches, interleaved.

Usage::

    python benchmarks/distill_coloreddigits.py --out runs/bench_distill [--seed 0] [--quick]

Ends with one ``TARGET`` line per target (means over seeds).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _lib.bench import bench_parser, target, write_results
from _lib.distill import MethodRun, prepare_digits, train_method

from trustmed.distill.demo import TEACHER_WIDTH, results_table
from trustmed.distill.losses import GroupDistilLoss, KDLoss
from trustmed.distill.run import DistillData
from trustmed.distill.trainer import plot_group_weights, teacher_logits
from trustmed.models import ModelSpec, build_model

log = logging.getLogger("distill_coloreddigits")


def step_overhead(
    data: DistillData, teacher: torch.nn.Module, *, width: int, seed: int, n_steps: int
) -> dict:
    """Median seconds per training step of per-sample KD and GroupDistil, timed alternately on the same
    batches."""
    torch.manual_seed(seed)
    batches = list(data.loaders["train"])
    for batch in batches:
        batch["teacher"] = teacher_logits(teacher.eval(), batch["image"])
    spec = ModelSpec(arch="tiny_cnn", width=width, n_outputs=2, image_size=data.image_size)
    base = build_model(spec)
    setups = {}
    for name, loss in (("kd", KDLoss()), ("groupdistil", GroupDistilLoss(len(data.group_names), eta=1e-3))):
        model = copy.deepcopy(base)
        setups[name] = (model, torch.optim.AdamW(model.parameters(), lr=3e-3), loss)
    times: dict[str, list[float]] = {name: [] for name in setups}
    for step in range(n_steps):
        batch = batches[step % len(batches)]
        order = list(setups) if step % 2 == 0 else list(reversed(setups))
        for name in order:
            model, opt, loss = setups[name]
            start = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            value = loss(
                model(batch["image"]), batch["label"].long(), batch["group"], teacher_logits=batch["teacher"]
            )
            value.backward()
            opt.step()
            times[name].append(time.perf_counter() - start)
    kd, gd = statistics.median(times["kd"]), statistics.median(times["groupdistil"])
    return {"kd_step_s": kd, "groupdistil_step_s": gd, "overhead": gd / kd - 1, "n_steps": n_steps}


def run_seed(seed: int, work: Path, *, quick: bool, n_boot: int) -> dict:
    t0 = time.perf_counter()
    data = prepare_digits(work / f"data_seed{seed}", seed=seed)
    e_t, e_s = (10, 10) if quick else (15, 15)
    etas = (1e-3, 1e-2)

    def student(method: str, name: str, **kwargs) -> MethodRun:
        return train_method(data, method, seed=seed, epochs=e_s, n_boot=n_boot, name=name, **kwargs)

    def teacher(method: str, name: str) -> MethodRun:
        return train_method(
            data, method, seed=seed, epochs=e_t, n_boot=n_boot, name=name, width=TEACHER_WIDTH
        )

    t_erm = teacher("erm", "teacher ERM")
    runs: list[MethodRun] = [
        t_erm,
        student("erm", "student ERM"),
        student("kd", "student KD", teacher=t_erm),
        student("kd_sample", "student per-sample KD", teacher=t_erm),
    ]
    candidates = [student("groupdistil", f"GroupDistil eta={eta:g}", teacher=t_erm, eta=eta) for eta in etas]
    best = max(candidates, key=lambda r: r.val_acc_wg)
    best_eta = best.distiller.eta
    runs.append(dataclasses.replace(best, name=f"student GroupDistil (eta={best_eta:g}, chosen on val)"))
    runs.append(student("groupdro", "student GroupDRO"))
    t_dro = teacher("groupdro", "teacher GroupDRO")
    runs += [
        t_dro,
        student("groupdistil", "student GroupDistil <- GroupDRO teacher", teacher=t_dro, eta=best_eta),
        student("kd", "student KD <- GroupDRO teacher", teacher=t_dro),
    ]
    if not quick:
        runs.append(student("groupdistil", "GroupDistil eta=0.1 (diagnostic)", teacher=t_erm, eta=0.1))
    width = runs[1].result.config.student.width
    timing = step_overhead(data, t_erm.result.model, width=width, seed=seed, n_steps=100 if quick else 300)
    plot_group_weights(
        best.distiller.group_weights_,
        data.group_names,
        work / f"group_weights_seed{seed}.png",
        title=f"GroupDistil q (seed {seed}, eta={best_eta:g})",
    )
    table = results_table({r.name: r.result for r in [*runs, *[c for c in candidates if c is not best]]})
    return {
        "seed": seed,
        "table": table.to_dict(orient="records"),
        "runs": {r.name: r.record() for r in [*runs, *candidates]},
        "eta_grid": {f"{c.distiller.eta:g}": c.val_acc_wg for c in candidates},
        "chosen_eta": best_eta,
        "timing": timing,
        "group_names": data.group_names,
        "train_group_counts": data.group_counts.tolist(),
        "wall_time_s": time.perf_counter() - t0,
    }


def summarise(per_seed: list[dict]) -> dict:
    def value(seed_result: dict, name_prefix: str, key: str) -> float:
        runs = seed_result["runs"]
        name = next(n for n in runs if n.startswith(name_prefix))
        return runs[name]["test"][key]["value"]

    keys = {
        "teacher_erm": "teacher ERM",
        "teacher_groupdro": "teacher GroupDRO",
        "erm": "student ERM",
        "kd": "student KD",
        "kd_sample": "student per-sample KD",
        "groupdistil": "student GroupDistil (",
        "groupdro": "student GroupDRO",
        "groupdistil_dro_teacher": "student GroupDistil <-",
        "kd_dro_teacher": "student KD <-",
    }
    optional = {"groupdistil_eta0.1": "GroupDistil eta=0.1 "}
    for short, prefix in optional.items():
        if all(any(n.startswith(prefix) for n in s["runs"]) for s in per_seed):
            keys[short] = prefix
    mean = {}
    for short, prefix in keys.items():
        for metric in ("acc_avg", "acc_wg"):
            values = [value(s, prefix, metric) for s in per_seed]
            mean[f"{short}:{metric}"] = {"mean": float(np.mean(values)), "per_seed": values}
    gd_wg, kd_wg, kd_sample_wg, erm_wg = (
        np.array(mean[f"{k}:acc_wg"]["per_seed"]) for k in ("groupdistil", "kd", "kd_sample", "erm")
    )
    gd_avg, kd_avg = (np.array(mean[f"{k}:acc_avg"]["per_seed"]) for k in ("groupdistil", "kd"))
    overheads = [s["timing"]["overhead"] for s in per_seed]
    chosen = [
        next(r for n, r in s["runs"].items() if n.startswith("student GroupDistil (")) for s in per_seed
    ]
    mean["groupdistil_val_wg_best_minus_last_epoch"] = {
        "mean": float(np.mean([r["val_acc_wg"] - r["last_epoch_val_acc_wg"] for r in chosen])),
        "per_seed": [r["val_acc_wg"] - r["last_epoch_val_acc_wg"] for r in chosen],
    }
    targets = {
        "groupdistil_wg_gain_over_kd": (float(np.mean(gd_wg - kd_wg)), ">=", 0.10),
        "groupdistil_wg_gain_over_kd_sample": (float(np.mean(gd_wg - kd_sample_wg)), ">=", 0.10),
        "groupdistil_wg_gain_over_erm": (float(np.mean(gd_wg - erm_wg)), ">=", 0.0),
        "groupdistil_avg_drop_vs_kd": (float(np.mean(kd_avg - gd_avg)), "<=", 0.03),
        "groupdistil_step_overhead": (float(np.mean(overheads)), "<=", 0.05),
    }
    return {"means": mean, "targets": targets}


def markdown_table(summary: dict, n_seeds: int) -> str:
    rows = [
        ("teacher, ERM (width 24)", "teacher_erm"),
        ("teacher, Group DRO (width 24)", "teacher_groupdro"),
        ("student ERM", "erm"),
        ("student KD, group-uniform (ERM teacher)", "kd"),
        ("student KD, per-sample (ERM teacher)", "kd_sample"),
        ("student GroupDistil (ERM teacher, eta on val)", "groupdistil"),
        ("student Group DRO (no teacher)", "groupdro"),
        ("student KD, group-uniform (Group DRO teacher)", "kd_dro_teacher"),
        ("student GroupDistil (Group DRO teacher)", "groupdistil_dro_teacher"),
    ]
    lines = [
        f"| model | test acc_avg (mean of {n_seeds}) | test acc_wg (mean) | acc_wg per seed |",
        "| --- | --- | --- | --- |",
    ]
    rows += [("diagnostic: GroupDistil with eta = 0.1", "groupdistil_eta0.1")]
    for label, key in rows:
        if f"{key}:acc_avg" not in summary["means"]:
            continue
        avg, wg = summary["means"][f"{key}:acc_avg"], summary["means"][f"{key}:acc_wg"]
        per = " / ".join(f"{v:.3f}" for v in wg["per_seed"])
        lines.append(f"| {label} | {avg['mean']:.3f} | {wg['mean']:.3f} | {per} |")
    return "\n".join(lines)


def main() -> None:
    parser = bench_parser(__doc__, "runs/bench/distill_coloreddigits")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default 1 quick, 3 full)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    n_seeds = args.seeds or (1 if args.quick else 3)
    n_boot = 200 if args.quick else 1000
    args.out.mkdir(parents=True, exist_ok=True)
    per_seed = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seed, args.seed + n_seeds):
            result = run_seed(seed, Path(tmp), quick=args.quick, n_boot=n_boot)
            for png in Path(tmp).glob("group_weights_seed*.png"):
                png.replace(args.out / png.name)
            log.info("seed %d done in %.0f s", seed, result["wall_time_s"])
            per_seed.append(result)
    summary = summarise(per_seed)
    table = markdown_table(summary, n_seeds)
    (args.out / "table.md").write_text(table + "\n")
    print(table)
    drop = summary["means"]["groupdistil_val_wg_best_minus_last_epoch"]
    print(f"GroupDistil validation acc_wg, selected epoch minus last epoch: {drop['mean']:.3f} (mean)")
    for seed_result in per_seed:
        t = seed_result["timing"]
        print(
            f"seed {seed_result['seed']}: eta grid (val acc_wg) {seed_result['eta_grid']}, chosen "
            f"{seed_result['chosen_eta']:g}; step per-sample KD {t['kd_step_s'] * 1e3:.2f} ms, GroupDistil "
            f"{t['groupdistil_step_s'] * 1e3:.2f} ms"
        )
    targets = [target(name, value, op, goal) for name, (value, op, goal) in summary["targets"].items()]
    write_results(
        args.out,
        {"quick": args.quick, "seeds": n_seeds, "per_seed": per_seed, **summary, "targets": targets},
    )


if __name__ == "__main__":
    main()
