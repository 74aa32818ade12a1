"""coVAE vs VAE vs beta-VAE on the latent ANM and on Pendulum, over several seeds.

Each seed draws its own DAG, mechanisms and mixing (latent ANM, d = 5, D = 20) or its own Pendulum
sample; the three models train on the same data with the same seed, so differences are paired. Per run
we record MCC (Pearson, Spearman), R², validation reconstruction error, the order divergence of the
learned latents' index order after matching (``order_divergence``) and of the order SCORE recovers on
them (``order_divergence_score``). Every run is :func:`trustmed.causal.pipeline.fit_pipeline`, the
path of ``trustmed causal fit``: 20 % of the samples for validation, observations standardised with
the training split's statistics, metrics on the validation split. The step cost of the ordering loss
is timed separately at batch 128.

    python benchmarks/covae_synthetic.py --out runs/bench/covae [--quick] [--seed 0]

Full mode: 5 seeds, 2000 steps on the latent ANM and 400 on Pendulum, every model with the
Gaussian-mixture prior (``--prior normal`` for N(0, I)), coVAE with alpha = 10, tau = 1 (the best of
the sweep in docs/causal.md, which did not beat the VAE beyond seed noise). ``vae_reorder`` is the VAE
with its latent units put in SCORE's order once, at the end of the warm-up quarter (``reorder=True``,
no ordering loss). On a shared 2-core CPU the ANM part took about 7 minutes and Pendulum about 35 s
per run. ``--datasets``, ``--methods``, ``--anm-steps``, ``--pendulum-steps``, ``--alpha``, ``--tau``,
``--scale-aware``, ``--reorder`` (coVAE), ``--criterion`` (the leaf criterion of coVAE's loss and of every
reordering: ``hessian`` or ``residual``) and ``--seeds`` select a part or a sweep point.

Targets: coVAE's mean order divergence below the VAE's, with its mean MCC at most 0.05 below the VAE's
(latent ANM), and a coVAE step at most 4x a VAE step. The REPORT line gives ``vae_reorder`` against
the VAE the same way.

Writes ``results.json``, ``table.md`` and ``summary.json`` (what ``make results`` renders).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from _lib.bench import bench_parser, command_line, result_table, target, write_results, write_summary
from threadpoolctl import threadpool_limits

from trustmed.causal import CoVAE, ordering_loss
from trustmed.causal.pipeline import (
    CausalDataConfig,
    CausalFitConfig,
    CausalModelConfig,
    CausalTrainConfig,
    fit_pipeline,
)
from trustmed.causal.stein import LEAF_CRITERIA
from trustmed.io import write_json

log = logging.getLogger("covae_synthetic")

METHODS = {
    "vae": {"alpha": 0.0, "beta": 1.0},
    "beta_vae": {"alpha": 0.0, "beta": 4.0},
    "covae": {"alpha": 10.0, "beta": 1.0, "tau": 1.0},
    "vae_reorder": {"alpha": 0.0, "beta": 1.0, "reorder": True},
}


def fit_config(kind: str, method: str, seed: int, args) -> CausalFitConfig:
    """The pipeline config of one run: the benchmark's data and model, ``method``'s training settings."""
    if kind == "anm":
        data = CausalDataConfig(synthetic="anm", n=args.n, d=5, observed_dim=20)
        model = CausalModelConfig(latent_dim=5, hidden=64, depth=2, prior=args.prior)
    else:
        data = CausalDataConfig(synthetic="pendulum", n=args.n, image_size=args.image_size)
        model = CausalModelConfig(latent_dim=4, hidden=32, prior=args.prior)
    n_train = args.n - round(data.val_fraction * args.n)
    epochs = max(1, round(args.steps[kind] / (n_train // args.batch_size)))
    settings = dict(METHODS[method])
    if settings["alpha"] > 0:
        settings.update(scale_aware=args.scale_aware, reorder=args.reorder)
    train = CausalTrainConfig(
        epochs=epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_epochs=round(args.warmup * epochs),
        ramp_epochs=round(args.ramp * epochs),
        criterion=args.criterion,  # the leaf criterion of the loss and of the reordering
        **settings,
    )
    return CausalFitConfig(seed=seed, data=data, model=model, train=train)


def run_one(kind: str, method: str, seed: int, args) -> dict:
    cfg = fit_config(kind, method, seed, args)
    fitted = fit_pipeline(cfg)
    val = fitted.val_index
    row = {k: v for k, v in fitted.metrics.items() if k not in ("match", "split")}
    z_val = fitted.data.z[val]
    true_ordered = torch.as_tensor(z_val[:, fitted.data.order], dtype=torch.float64)
    row["order_loss_true_latents"] = float(ordering_loss(true_ordered))
    row["order_loss_learned"] = float(
        ordering_loss(torch.as_tensor(fitted.latents[val], dtype=torch.float64))
    )
    row.update(
        dataset=kind, method=method, seed=seed, epochs=cfg.train.epochs, wall_time_s=fitted.result.wall_time_s
    )
    log.info(
        "%s %s seed %d: %s", kind, method, seed, {k: row[k] for k in ("mcc_pearson", "order_divergence")}
    )
    return row


def step_overhead(
    batch_size: int = 128, rounds: int = 5, steps: int = 20, criterion: str = "hessian"
) -> dict:
    """Median time of one optimiser step, VAE vs coVAE (alpha > 0), on the latent ANM model."""
    torch.manual_seed(0)
    x = torch.randn(batch_size, 20)
    times: dict[str, list[float]] = {"vae": [], "covae": []}
    model = CoVAE(20, 5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(rounds):
        for name, alpha in (("vae", 0.0), ("covae", 10.0)):
            for _ in range(3):
                opt.zero_grad()
                model(x, alpha=alpha, criterion=criterion)["loss"].backward()
                opt.step()
            t0 = time.perf_counter()
            for _ in range(steps):
                opt.zero_grad()
                model(x, alpha=alpha, criterion=criterion)["loss"].backward()
                opt.step()
            times[name].append((time.perf_counter() - t0) / steps)
    vae, covae = float(np.median(times["vae"])), float(np.median(times["covae"]))
    return {
        "vae_step_ms": 1e3 * vae,
        "covae_step_ms": 1e3 * covae,
        "ratio": covae / vae,
        "batch_size": batch_size,
        "criterion": criterion,
    }


def summarise(rows: list[dict], kind: str) -> dict:
    out: dict = {}
    keys = ("mcc_pearson", "mcc_spearman", "r2", "recon_mse", "order_divergence", "order_divergence_score")
    for method in METHODS:
        sel = [r for r in rows if r["dataset"] == kind and r["method"] == method]
        if not sel:
            continue
        out[method] = {k: float(np.mean([r[k] for r in sel])) for k in keys}
        out[method].update({f"{k}_std": float(np.std([r[k] for r in sel])) for k in keys})
        out[method]["n_runs"] = len(sel)
    for method, prefix in (("covae", ""), ("vae_reorder", "vae_reorder_")):
        out.update(_paired(rows, kind, method, prefix))
    return out


def _paired(rows: list[dict], kind: str, method: str, prefix: str) -> dict:
    """Seed-paired differences of ``method`` against the VAE: order divergence and MCC drop."""
    out: dict = {}
    vae = {r["seed"]: r for r in rows if r["dataset"] == kind and r["method"] == "vae"}
    cov = {r["seed"]: r for r in rows if r["dataset"] == kind and r["method"] == method}
    seeds = sorted(set(vae) & set(cov))
    if seeds:
        diff = np.array([cov[s]["order_divergence"] - vae[s]["order_divergence"] for s in seeds], dtype=float)
        out[f"{prefix}paired_order_divergence_diff"] = {
            "mean": float(diff.mean()),
            "sem": float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else None,
            "wins": int((diff < 0).sum()),
            "ties": int((diff == 0).sum()),
            "losses": int((diff > 0).sum()),
            "n_pairs": len(seeds),
        }
        drop = np.array([vae[s]["mcc_pearson"] - cov[s]["mcc_pearson"] for s in seeds])
        out[f"{prefix}paired_mcc_drop"] = {"mean": float(drop.mean()), "max": float(drop.max())}
    return out


def main() -> None:
    parser = bench_parser(__doc__, "runs/bench/covae_synthetic")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default 5, 2 with --quick)")
    parser.add_argument("--datasets", default="anm,pendulum")
    parser.add_argument("--methods", default="vae,beta_vae,covae,vae_reorder")
    parser.add_argument("--prior", default="gmm", choices=["normal", "gmm"])
    parser.add_argument("--scale-aware", action="store_true")
    parser.add_argument("--criterion", choices=LEAF_CRITERIA, default="hessian")
    parser.add_argument("--reorder", action="store_true", help="coVAE: SCORE-order the units after warm-up")
    parser.add_argument("--alpha", type=float, default=10.0)
    parser.add_argument("--tau", type=float, default=1.0)
    parser.add_argument("--warmup", type=float, default=0.25, help="fraction of training with alpha = 0")
    parser.add_argument("--ramp", type=float, default=0.25, help="fraction of training ramping alpha up")
    parser.add_argument("--anm-steps", type=int, default=None, help="optimiser steps on the latent ANM")
    parser.add_argument("--pendulum-steps", type=int, default=None, help="optimiser steps on Pendulum")
    parser.add_argument("--from-results", type=Path, default=None, help="only re-print a results.json")
    args = parser.parse_args()
    if args.from_results is not None:
        saved = json.loads(args.from_results.read_text())
        if isinstance(saved, list):  # runs_partial.json of an unfinished run
            saved = {"runs": saved, "step": None}
        kinds = sorted({r["dataset"] for r in saved["runs"]})
        saved["summary"] = {k: summarise(saved["runs"], k) for k in kinds}
        report(saved, args.from_results.parent)
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    threadpool_limits(1)  # SciPy's BLAS too (the ordering loss factorises small systems with it)
    METHODS["covae"].update(alpha=args.alpha, tau=args.tau)
    n_seeds = args.seeds or (2 if args.quick else 5)
    args.n = 1000 if args.quick else 2000
    args.image_size = 32
    args.batch_size = 128
    args.lr = 2e-3
    args.steps = {"anm": 300, "pendulum": 150} if args.quick else {"anm": 2000, "pendulum": 400}
    if args.anm_steps is not None:
        args.steps["anm"] = args.anm_steps
    if args.pendulum_steps is not None:
        args.steps["pendulum"] = args.pendulum_steps
    datasets = args.datasets.split(",")
    if args.quick:
        datasets = [d for d in datasets if d == "anm"] or datasets[:1]
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for kind in datasets:
        for i in range(n_seeds):
            for method in args.methods.split(","):
                rows.append(run_one(kind, method, args.seed + i, args))
                write_json(args.out / "runs_partial.json", rows)
    overhead = step_overhead(rounds=3 if args.quick else 7, criterion=args.criterion)
    summary = {kind: summarise(rows, kind) for kind in datasets}
    result = {"settings": dict(vars(args)), "runs": rows, "summary": summary, "step": overhead}
    result["targets"] = report(result, args.out)
    write_results(args.out, result)
    write_summary(
        args.out,
        benchmark="covae_synthetic",
        title="coVAE against a VAE and a beta-VAE on synthetic data",
        command=command_line(),
        targets=result["targets"],
        tables=summary_tables(summary, overhead),
        conclusions=summary_sentences(summary, overhead),
        settings={
            "seeds": n_seeds,
            "first_seed": args.seed,
            "datasets": datasets,
            "methods": args.methods.split(","),
            "steps": {k: args.steps[k] for k in datasets},
            "n": args.n,
            "batch_size": args.batch_size,
            "prior": args.prior,
            "alpha": args.alpha,
            "tau": args.tau,
            "criterion": args.criterion,
            "scale_aware": args.scale_aware,
            "reorder": args.reorder,
        },
    )


def summary_tables(summary: dict, overhead: dict) -> list[dict]:
    """The mean ± std table, the seed-paired differences against the VAE, and the step cost."""
    keys = ("mcc_pearson", "mcc_spearman", "r2", "recon_mse", "order_divergence", "order_divergence_score")
    rows = []
    for kind, per_method in summary.items():
        for method in METHODS:
            if method in per_method:
                m = per_method[method]
                cells = [
                    f"{m[k]:.3f} ± {m[k + '_std']:.3f}" if k != "recon_mse" else f"{m[k]:.4f}" for k in keys
                ]
                rows.append([kind, method, m["n_runs"], *cells])
    paired = []
    for kind, s in summary.items():
        for method, prefix in (("covae", ""), ("vae_reorder", "vae_reorder_")):
            d = s.get(f"{prefix}paired_order_divergence_diff")
            if d:
                drop = s[f"{prefix}paired_mcc_drop"]["mean"]
                paired.append(
                    [
                        kind,
                        method,
                        f"{d['mean']:+.2f}",
                        f"{d['wins']}/{d['ties']}/{d['losses']}",
                        f"{drop:+.3f}",
                    ]
                )
    tables = [
        result_table(
            "Mean ± std over seeds (validation split)",
            [
                "data",
                "model",
                "seeds",
                "MCC (Pearson)",
                "MCC (Spearman)",
                "R²",
                "recon MSE",
                "D_top latent order",
                "D_top SCORE on latents",
            ],
            rows,
        ),
        result_table(
            "Paired by seed against the VAE (D_top: lower is better; win = lower D_top)",
            ["data", "model", "mean D_top difference", "wins/ties/losses", "mean MCC drop"],
            paired,
        ),
    ]
    if overhead:
        tables.append(
            result_table(
                f"Time of one optimiser step at batch {overhead['batch_size']} (median)",
                ["VAE ms", "coVAE ms", "ratio"],
                [[overhead["vae_step_ms"], overhead["covae_step_ms"], overhead["ratio"]]],
            )
        )
    return tables


def summary_sentences(summary: dict, overhead: dict) -> list[str]:
    """Computed sentences: does coVAE lower the order divergence, at what MCC and step cost?"""
    said = []
    for kind, s in summary.items():
        d = s.get("paired_order_divergence_diff")
        if not d:
            continue
        verdict = "lowers" if d["mean"] < 0 else "does not lower"
        said.append(
            f"{kind}: coVAE {verdict} the order divergence against the VAE ({d['mean']:+.2f} edges, "
            f"paired over {d['n_pairs']} seeds: {d['wins']} wins, {d['ties']} ties, {d['losses']} losses); "
            f"mean MCC drop (VAE minus coVAE) {s['paired_mcc_drop']['mean']:+.3f}."
        )
        r = s.get("vae_reorder_paired_order_divergence_diff")
        if r:
            said.append(
                f"{kind}: the VAE with its units put in SCORE's order after warm-up (no ordering loss) gives "
                f"{r['mean']:+.2f} ({r['wins']} wins, {r['ties']} ties, {r['losses']} losses)."
            )
    if overhead:
        said.append(
            f"A coVAE step costs {overhead['ratio']:.2f}x a VAE step at batch {overhead['batch_size']} "
            f"({overhead['covae_step_ms']:.1f} ms against {overhead['vae_step_ms']:.1f} ms)."
        )
    return said


def markdown_table(summary: dict) -> str:
    """Mean ± std over seeds per dataset and method, as a Markdown table."""
    lines = [
        "| data | model | MCC (Pearson) | MCC (Spearman) | R² | recon MSE | D_top latent order "
        "| D_top SCORE on latents |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    keys = ("mcc_pearson", "mcc_spearman", "r2", "recon_mse", "order_divergence", "order_divergence_score")
    for kind, per_method in summary.items():
        for method in METHODS:
            if method not in per_method:
                continue
            m = per_method[method]
            cells = [f"{m[k]:.3f} ± {m[k + '_std']:.3f}" if k != "recon_mse" else f"{m[k]:.4f}" for k in keys]
            lines.append(f"| {kind} | {method} (n={m['n_runs']}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def report(result: dict, out: Path) -> list[dict]:
    """Write ``table.md``, print the table, the REPORT and ``TARGET`` lines; return the targets."""
    summary = result["summary"]
    (out / "table.md").write_text(markdown_table(summary))
    print(markdown_table(summary))
    targets = []
    for kind, s in summary.items():
        if "paired_order_divergence_diff" not in s:
            continue
        suffix = "" if kind == "anm" else f"_{kind}"
        paired = s["paired_order_divergence_diff"]
        print(f"paired D_top difference coVAE - VAE ({kind}): {paired}")
        targets.append(target(f"covae_order_divergence_vs_vae{suffix}", paired["mean"], "<", 0, fmt="+.2f"))
        targets.append(target(f"covae_mcc_drop{suffix}", s["paired_mcc_drop"]["mean"], "<=", 0.05))
    for kind, s in summary.items():
        if "vae_reorder_paired_order_divergence_diff" in s:
            paired = s["vae_reorder_paired_order_divergence_diff"]
            print(
                f"REPORT vae_reorder_order_divergence_vs_vae ({kind}): {paired['mean']:+.2f} "
                f"({paired['wins']} wins, {paired['ties']} ties, {paired['losses']} losses; "
                f"MCC drop {s['vae_reorder_paired_mcc_drop']['mean']:+.3f})"
            )
    if result.get("step"):
        targets.append(target("covae_step_overhead", result["step"]["ratio"], "<=", 4.0, fmt=".2f"))
    return targets


if __name__ == "__main__":
    main()
