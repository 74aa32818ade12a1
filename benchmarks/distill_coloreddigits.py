"""Benchmark: GroupDistil vs KD, ERM and Group DRO students on ColoredDigits (95 % spurious colour).

Per seed: ColoredDigits is generated, a teacher (tiny_cnn width 24) is trained with ERM and another
with Group DRO; students (width 8, about 8x fewer parameters) are trained with ERM, group-uniform KD
(``kd``: GroupDistil's loss with eta = 0, the baseline of METHODS.md), per-sample KD (``kd_sample``),
GroupDistil (eta chosen on validation worst-group accuracy from a small grid) and Group DRO, plus
GroupDistil and group-uniform KD from the Group DRO teacher. Every model is one
:func:`trustmed.distill.run.train_and_score` call (the path of ``trustmed distill``) and keeps its best
epoch by validation worst-group accuracy; the numbers are on the balanced test split, with bootstrap
CIs. The per-step cost of GroupDistil vs per-sample KD is timed in the same process on the same
batches, interleaved.

**Seeds.** ``--seeds N`` seeds ``--seed .. --seed + N - 1`` (default 5; 3 with ``--quick``, which also
trains 10 instead of 15 epochs and times fewer steps). Validation chooses eta per seed; the test split
chooses nothing.

**Statistics** (``_lib/paired.py``). The chosen-eta GroupDistil student is paired, seed by seed, with
every baseline student from the same data and teacher (group-uniform KD, per-sample KD, ERM, Group
DRO), and GroupDistil from the Group DRO teacher with group-uniform KD from that teacher. For test
worst-group and average accuracy: the mean per-seed difference with a 95 % t-interval over seeds, the
win/tie/loss count (tie: within 0.005) and the worst seed. The gain targets are the means of these
paired differences.

Writes ``table.md`` (mean ± std per model with the per-seed values, and the paired table),
``results.json`` (every run's test metrics with CIs, selected epoch, final group weights, the eta grid,
timings and the paired rows), ``summary.json`` (what ``make results`` renders) and
``group_weights_seed*.png``.

Usage::

    python benchmarks/distill_coloreddigits.py --out runs/bench_distill [--seed 0] [--seeds 5]
    python benchmarks/distill_coloreddigits.py --out runs/bench_distill_quick --quick

Ends with one ``TARGET`` line per target.
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
from _lib.bench import (
    bench_parser,
    command_line,
    markdown,
    result_table,
    target,
    write_results,
    write_summary,
)
from _lib.distill import MethodRun, prepare_digits, train_method
from _lib.paired import paired, paired_markdown

from trustmed.distill.demo import TEACHER_WIDTH, results_table
from trustmed.distill.losses import GroupDistilLoss, KDLoss
from trustmed.distill.run import DistillData
from trustmed.distill.trainer import plot_group_weights, teacher_logits
from trustmed.models import ModelSpec, build_model

log = logging.getLogger("distill_coloreddigits")

ETAS = (1e-3, 1e-2)  # GroupDistil's eta grid, chosen per seed on validation worst-group accuracy
EPOCHS = {False: (15, 15), True: (10, 10)}  # quick -> (teacher, student) epochs
TIMED_STEPS = {False: 300, True: 100}  # quick -> interleaved steps timed per method
TIE = 0.005  # a paired difference within this is a tie
# (key, label) of every model in the table; keys name the runs of run_seed
MODELS = [
    ("teacher_erm", "teacher, ERM (width 24)"),
    ("teacher_groupdro", "teacher, Group DRO (width 24)"),
    ("erm", "student ERM"),
    ("kd", "student KD, group-uniform (ERM teacher)"),
    ("kd_sample", "student KD, per-sample (ERM teacher)"),
    ("groupdistil", "student GroupDistil (ERM teacher, eta on val)"),
    ("groupdro", "student Group DRO (no teacher)"),
    ("kd_dro_teacher", "student KD, group-uniform (Group DRO teacher)"),
    ("groupdistil_dro_teacher", "student GroupDistil (Group DRO teacher)"),
    ("groupdistil_eta0.1", "diagnostic: GroupDistil with eta = 0.1"),
]
# (method key, baseline key, method in words, baseline in words): the paired comparisons
COMPARISONS = [
    ("groupdistil", "kd", "GroupDistil", "group-uniform KD"),
    ("groupdistil", "kd_sample", "GroupDistil", "per-sample KD"),
    ("groupdistil", "erm", "GroupDistil", "the ERM student"),
    ("groupdistil", "groupdro", "GroupDistil", "the Group DRO student (no teacher)"),
    (
        "groupdistil_dro_teacher",
        "kd_dro_teacher",
        "GroupDistil from the Group DRO teacher",
        "group-uniform KD from the same teacher",
    ),
]
METRICS = {"acc_wg": "test acc_wg", "acc_avg": "test acc_avg"}


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
    e_t, e_s = EPOCHS[quick]

    def student(method: str, name: str, **kwargs) -> MethodRun:
        return train_method(data, method, seed=seed, epochs=e_s, n_boot=n_boot, name=name, **kwargs)

    def teacher(method: str, name: str) -> MethodRun:
        return train_method(
            data, method, seed=seed, epochs=e_t, n_boot=n_boot, name=name, width=TEACHER_WIDTH
        )

    t_erm = teacher("erm", "teacher ERM")
    named = {
        "teacher_erm": t_erm,
        "erm": student("erm", "student ERM"),
        "kd": student("kd", "student KD", teacher=t_erm),
        "kd_sample": student("kd_sample", "student per-sample KD", teacher=t_erm),
    }
    candidates = [student("groupdistil", f"GroupDistil eta={eta:g}", teacher=t_erm, eta=eta) for eta in ETAS]
    best = max(candidates, key=lambda r: r.val_acc_wg)
    best_eta = best.distiller.eta
    named["groupdistil"] = dataclasses.replace(
        best, name=f"student GroupDistil (eta={best_eta:g}, chosen on val)"
    )
    named["groupdro"] = student("groupdro", "student GroupDRO")
    t_dro = teacher("groupdro", "teacher GroupDRO")
    named["teacher_groupdro"] = t_dro
    named["groupdistil_dro_teacher"] = student(
        "groupdistil", "student GroupDistil <- GroupDRO teacher", teacher=t_dro, eta=best_eta
    )
    named["kd_dro_teacher"] = student("kd", "student KD <- GroupDRO teacher", teacher=t_dro)
    if not quick:
        named["groupdistil_eta0.1"] = student(
            "groupdistil", "GroupDistil eta=0.1 (diagnostic)", teacher=t_erm, eta=0.1
        )
    runs = list(named.values())
    width = named["erm"].result.config.student.width
    timing = step_overhead(data, t_erm.result.model, width=width, seed=seed, n_steps=TIMED_STEPS[quick])
    plot_group_weights(
        best.distiller.group_weights_,
        data.group_names,
        work / f"group_weights_seed{seed}.png",
        title=f"GroupDistil q (seed {seed}, eta={best_eta:g})",
    )
    table = results_table({r.name: r.result for r in [*runs, *[c for c in candidates if c is not best]]})
    return {
        "seed": seed,
        "models": {key: run.name for key, run in named.items()},
        "table": table.to_dict(orient="records"),
        "runs": {r.name: r.record() for r in [*runs, *candidates]},
        "eta_grid": {f"{c.distiller.eta:g}": c.val_acc_wg for c in candidates},
        "chosen_eta": best_eta,
        "student_width": width,
        "timing": timing,
        "group_names": data.group_names,
        "train_group_counts": data.group_counts.tolist(),
        "wall_time_s": time.perf_counter() - t0,
    }


def summarise(per_seed: list[dict]) -> dict:
    """Per-model test accuracies over seeds, the paired comparisons and the target values."""
    seeds = [s["seed"] for s in per_seed]
    keys = [key for key, _ in MODELS if all(key in s["models"] for s in per_seed)]
    means = {}
    for key in keys:
        for metric in ("acc_avg", "acc_wg"):
            values = [s["runs"][s["models"][key]]["test"][metric]["value"] for s in per_seed]
            std = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
            means[f"{key}:{metric}"] = {"mean": float(np.mean(values)), "std": std, "per_seed": values}
    chosen = [s["runs"][s["models"]["groupdistil"]] for s in per_seed]
    drops = [r["val_acc_wg"] - r["last_epoch_val_acc_wg"] for r in chosen]
    means["groupdistil_val_wg_best_minus_last_epoch"] = {"mean": float(np.mean(drops)), "per_seed": drops}

    pairs = []
    for method, baseline, _, _ in COMPARISONS:
        for metric, label in METRICS.items():
            row = paired(
                means[f"{method}:{metric}"]["per_seed"],
                means[f"{baseline}:{metric}"]["per_seed"],
                better="higher",
                tie=TIE,
                seeds=seeds,
            )
            pairs.append({"comparison": comparison_label(method, baseline), "metric": label, **row})
            pairs[-1].update(method=method, baseline=baseline, metric_key=metric)

    def pair(baseline: str, metric: str) -> dict:
        return next(p for p in pairs if (p["baseline"], p["metric_key"]) == (baseline, metric))

    overheads = [s["timing"]["overhead"] for s in per_seed]
    avg_kd = pair("kd", "acc_avg")
    targets = {
        "groupdistil_wg_gain_over_kd": (pair("kd", "acc_wg"), 1.0, ">=", 0.10),
        "groupdistil_wg_gain_over_kd_sample": (pair("kd_sample", "acc_wg"), 1.0, ">=", 0.10),
        "groupdistil_wg_gain_over_erm": (pair("erm", "acc_wg"), 1.0, ">=", 0.0),
        "groupdistil_avg_drop_vs_kd": (avg_kd, -1.0, "<=", 0.03),
    }
    target_values = {}
    for name, (row, sign, op, goal) in targets.items():
        lo, hi = sorted((sign * row["ci_low"], sign * row["ci_high"]))
        ci = "no CI with one seed" if np.isnan(lo) else f"95 % CI [{lo:+.3f}, {hi:+.3f}]"
        note = f"mean of {row['n_seeds']} paired seeds, {ci}"
        target_values[name] = (sign * row["mean"], op, goal, note)
    target_values["groupdistil_step_overhead"] = (
        float(np.mean(overheads)),
        "<=",
        0.05,
        "per seed " + " / ".join(f"{o:+.3f}" for o in overheads),
    )
    return {"seeds": seeds, "means": means, "paired": pairs, "targets": target_values}


def comparison_label(method: str, baseline: str) -> str:
    return next(f"{m} vs {b}" for mk, bk, m, b in COMPARISONS if (mk, bk) == (method, baseline))


def _mean_std(entry: dict) -> str:
    return f"{entry['mean']:.3f}" if np.isnan(entry["std"]) else f"{entry['mean']:.3f} ± {entry['std']:.3f}"


def mean_rows(summary: dict) -> list[list[str]]:
    """Rows of the per-model table: label, acc_avg mean ± std, acc_wg mean ± std, acc_wg per seed."""
    rows = []
    for key, label in MODELS:
        if f"{key}:acc_avg" not in summary["means"]:
            continue
        avg, wg = summary["means"][f"{key}:acc_avg"], summary["means"][f"{key}:acc_wg"]
        per = " / ".join(f"{v:.3f}" for v in wg["per_seed"])
        rows.append([label, _mean_std(avg), _mean_std(wg), per])
    return rows


def mean_columns(seeds: list[int]) -> list[str]:
    return [
        "model",
        f"test acc_avg (mean ± std, {len(seeds)} seeds)",
        "test acc_wg (mean ± std)",
        f"acc_wg per seed ({' / '.join(map(str, seeds))})",
    ]


def paired_cells(row: dict) -> list[str]:
    ci = "" if np.isnan(row["ci_low"]) else f" [{row['ci_low']:+.3f}, {row['ci_high']:+.3f}]"
    return [
        row["comparison"],
        row["metric"],
        f"{row['mean']:+.3f}{ci}",
        f"{row['wins']} / {row['ties']} / {row['losses']}",
        f"{row['worst_seed']} ({row['worst']:+.3f})",
    ]


PAIRED_COLUMNS = [
    "comparison",
    "metric",
    "GroupDistil − baseline [95 % CI]",
    "win / tie / loss",
    "worst seed (difference)",
]


def _ci_text(row: dict) -> str:
    if np.isnan(row["ci_low"]):
        return "one seed, no CI"
    return f"95 % CI [{row['ci_low']:+.3f}, {row['ci_high']:+.3f}]"


def _verdict(row: dict, method: str, baseline: str, what: str) -> str:
    """Whether ``method`` beats ``baseline`` on ``what``, in words, from the paired row."""
    if row["n_seeds"] < 2:
        return f"{method} {'beats' if row['mean'] > row['tie'] else 'does not beat'} {baseline} on {what}"
    if row["ci_low"] > 0:
        return f"{method} beats {baseline} on {what} (the 95 % CI is above 0)"
    if row["ci_high"] < 0:
        return f"{method} does not beat {baseline} on {what}: it is lower (the 95 % CI is below 0)"
    if row["mean"] > 0:
        return (
            f"{method} is ahead of {baseline} on {what} on average, but not reliably (the 95 % CI includes 0)"
        )
    return f"{method} does not beat {baseline} on {what} (mean difference <= 0; the 95 % CI includes 0)"


def conclusions(summary: dict, per_seed: list[dict]) -> list[str]:
    """Sentences computed from the run's numbers."""
    n = len(summary["seeds"])
    out = []
    for method, baseline, method_words, baseline_words in COMPARISONS:
        wg, avg = (
            next(p for p in summary["paired"] if (p["method"], p["baseline"], p["metric_key"]) == key)
            for key in ((method, baseline, "acc_wg"), (method, baseline, "acc_avg"))
        )
        out.append(
            f"{_verdict(wg, method_words, baseline_words, 'test worst-group accuracy')}: higher on "
            f"{wg['wins']} of {n} seeds, tied on {wg['ties']}, lower on {wg['losses']} (mean "
            f"{wg['mean']:+.3f}, {_ci_text(wg)}); worst seed {wg['worst_seed']}: {wg['worst']:+.3f}. "
            f"Average accuracy: mean {avg['mean']:+.3f} ({_ci_text(avg)}), higher / tied / lower on "
            f"{avg['wins']} / {avg['ties']} / {avg['losses']} seeds."
        )
    means = summary["means"]
    t_wg, g_wg = means["teacher_erm:acc_wg"], means["groupdistil:acc_wg"]
    t_avg = means["teacher_erm:acc_avg"]
    above = sum(g > t for g, t in zip(g_wg["per_seed"], t_wg["per_seed"], strict=True))
    out.append(
        f"The ERM teacher's test worst-group accuracy is {t_wg['mean']:.3f} on average (average accuracy "
        f"{t_avg['mean']:.3f}); the GroupDistil student distilled from it reaches {g_wg['mean']:.3f} and is "
        f"above its teacher on {above} of {n} seeds."
    )
    chosen = [s["chosen_eta"] for s in per_seed]
    counts = ", ".join(f"{eta:g} on {chosen.count(eta)}" for eta in ETAS if chosen.count(eta))
    out.append(
        f"Validation worst-group accuracy chose eta = {counts} of {n} seeds (grid "
        f"{', '.join(f'{e:g}' for e in ETAS)})."
    )
    drop = means["groupdistil_val_wg_best_minus_last_epoch"]
    out.append(
        f"For the chosen GroupDistil student, validation worst-group accuracy at the selected epoch was "
        f"{drop['mean']:.3f} higher than at the last epoch on average (per seed "
        f"{' / '.join(f'{d:.3f}' for d in drop['per_seed'])})."
    )
    overheads = [s["timing"]["overhead"] for s in per_seed]
    ms = [(s["timing"]["kd_step_s"] * 1e3, s["timing"]["groupdistil_step_s"] * 1e3) for s in per_seed]
    mean_overhead = float(np.mean(overheads))
    out.append(
        f"Per training step GroupDistil took {abs(mean_overhead):.1%} "
        f"{'longer' if mean_overhead >= 0 else 'less time'} than per-sample KD on average (median of "
        f"{per_seed[0]['timing']['n_steps']} interleaved steps per seed; per seed "
        f"{' / '.join(f'{o:+.1%}' for o in overheads)}; about {np.mean([k for k, _ in ms]):.1f} vs "
        f"{np.mean([g for _, g in ms]):.1f} ms per step on this machine)."
    )
    return out


def main() -> None:
    parser = bench_parser(__doc__, "runs/bench/distill_coloreddigits")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default 5; 3 with --quick)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    n_seeds = args.seeds or (3 if args.quick else 5)
    n_boot = 200 if args.quick else 1000
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    per_seed = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seed, args.seed + n_seeds):
            result = run_seed(seed, Path(tmp), quick=args.quick, n_boot=n_boot)
            for png in Path(tmp).glob("group_weights_seed*.png"):
                png.replace(args.out / png.name)
            log.info("seed %d done in %.0f s", seed, result["wall_time_s"])
            per_seed.append(result)
    summary = summarise(per_seed)
    seeds = summary["seeds"]
    rows = mean_rows(summary)
    paired_md = paired_markdown(summary["paired"])
    table = (
        f"## Test accuracy over seeds {seeds}\n\n"
        + markdown(mean_columns(seeds), rows)
        + f"\n## GroupDistil paired with each baseline (tie: |difference| <= {TIE})\n\n"
        + paired_md
    )
    (args.out / "table.md").write_text(table)
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
    said = conclusions(summary, per_seed)
    for sentence in said:
        print(sentence)
    targets = [
        target(name, value, op, goal, note=note)
        for name, (value, op, goal, note) in summary["targets"].items()
    ]
    e_t, e_s = EPOCHS[args.quick]
    settings = {
        "seeds": seeds,
        "quick": args.quick,
        "teacher_epochs": e_t,
        "student_epochs": e_s,
        "teacher_width": TEACHER_WIDTH,
        "student_width": per_seed[0]["student_width"],
        "eta_grid": list(ETAS),
        "eta_chosen_per_seed": [s["chosen_eta"] for s in per_seed],
        "n_boot": n_boot,
        "tie": TIE,
        "timed_steps": TIMED_STEPS[args.quick],
    }
    write_summary(
        args.out,
        benchmark="distill_coloreddigits",
        title="GroupDistil: group-robust distillation on ColoredDigits (95 % spurious colour)",
        command=command_line(),
        targets=targets,
        tables=[
            result_table(
                f"Test accuracy on the balanced split, mean ± std over seeds {seeds}",
                mean_columns(seeds),
                rows,
            ),
            result_table(
                f"GroupDistil paired with each baseline, test split, seeds {seeds} "
                f"(tie: |difference| <= {TIE})",
                PAIRED_COLUMNS,
                [paired_cells(p) for p in summary["paired"]],
            ),
        ],
        conclusions=said,
        settings=settings,
    )
    write_results(
        args.out,
        {
            "quick": args.quick,
            "seeds": seeds,
            "n_seeds": n_seeds,
            "settings": settings,
            "wall_time_s": time.perf_counter() - t0,
            "per_seed": per_seed,
            "means": summary["means"],
            "paired": summary["paired"],
            "targets": targets,
            "conclusions": said,
        },
    )


if __name__ == "__main__":
    main()
