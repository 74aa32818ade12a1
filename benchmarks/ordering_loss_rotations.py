"""Does the ordering loss single out the causal latents among linear mixtures of them?

A VAE with a piecewise-affine decoder recovers the latents at best up to an affine map (Kivva et al.,
arXiv 2206.10044); on the latent ANM of ``covae_synthetic.py`` the VAE's latents are an affine map of the
true ones to R² ≈ 0.95, but match them one to one only at MCC ≈ 0.7. For coVAE to put the latents in
causal order, the ordering loss would have to prefer the causal latents over other linear mixtures of
them. This script asks that question on the *true* latents, with no VAE in between.

Per seed (the benchmark's ANMs, d = 5, n = 2000): the true latents in causal order are decorrelated by
the Cholesky factor of their covariance (``z_k`` minus its linear regression on ``z_1..z_{k-1}``, a
lower-triangular map that keeps an ANM an ANM in the same order) and scaled to unit variance. Every
whitened linear mixture of the latents is a rotation ``R`` of this ``truth``. Starting from 10 random
rotations and from the truth itself, ``R`` is trained on the ordering loss alone (80 Adam steps on
minibatches of 128, the training batch size). Reported: the loss of the truth, the loss and the order
divergence D_top (after Hungarian matching, as in the coVAE benchmark) of the lowest-loss rotation from
the random starts, and D_top and MCC after training from the truth.

    python benchmarks/ordering_loss_rotations.py --out runs/bench/ordering_loss_rotations [--quick] [--seed 0]

``--quick``: 2 seeds, 4 random starts and 40 steps; ``--seeds``, ``--starts`` and ``--steps`` override.

Criteria (``--criteria``, default ``hessian,residual``): ``hessian`` (tau = 1) and ``residual``
(tau = 0.1), as in ``ordering_criteria_true_latents.py``, and ``residual_abs``: the sum of each designated
leaf's own residual criterion instead of the softmax over its prefix (``loss_of``; not a coVAE option).
Each criterion draws its own random starts and minibatches from ``(seed, criterion)``, so any subset of
``--criteria`` reproduces the same rows. ``--batch-size 512 --starts 6 --steps 60`` asks whether larger
minibatches help (about 4 minutes for ``hessian``, 6 for each residual criterion).
If the lowest-loss rotations reverse as many edges as a random order, the loss alone cannot identify the
causal latents up to a linear map, and coVAE's ordering cannot come from it.

Writes ``results.json``, ``table.md`` and ``summary.json`` (what ``make results`` renders); no targets.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
from _lib.bench import bench_parser, command_line, result_table, write_results, write_summary
from threadpoolctl import threadpool_limits
from torch.nn.utils.parametrizations import orthogonal

from trustmed.causal import ordering_loss
from trustmed.causal.stein import nested_residual_leafness
from trustmed.data.synth.anm import make_latent_anm
from trustmed.metrics.causal import causal_metrics

log = logging.getLogger("ordering_loss_rotations")

CRITERIA = {
    "hessian": {"criterion": "hessian", "tau": 1.0},
    "residual": {"criterion": "residual", "tau": 0.1},
    "residual_abs": {"absolute": True, "tau": 0.1},  # not an ordering_loss option: see loss_of
}


def triangular_whitening(z_causal: np.ndarray) -> np.ndarray:
    """Decorrelate latents given in causal order by a lower-triangular map (Cholesky) to unit variance."""
    zc = z_causal - z_causal.mean(0)
    chol = np.linalg.cholesky(np.cov(zc.T))
    return np.linalg.solve(chol, zc.T).T


def loss_of(z: torch.Tensor, settings: dict) -> torch.Tensor:
    """``ordering_loss``, or with ``absolute`` the sum of each designated leaf's own residual criterion.

    The ordering loss is relative (a softmax over the prefix): it asks only that ``z_k`` look more
    leaf-like than ``z_1..z_{k-1}``. The absolute variant asks that it be a leaf, ``1 - corr^2 = 0``.
    """
    if settings.get("absolute"):
        crit = nested_residual_leafness(z)
        return sum(crit[k - 2, k - 1] for k in range(2, z.shape[1] + 1)) / settings["tau"]
    return ordering_loss(z, **settings)


def mean_loss(z: torch.Tensor, batches: list, settings: dict) -> float:
    with torch.no_grad():
        return float(np.mean([float(loss_of(z[b], settings)) for b in batches]))


def train_rotation(
    z: torch.Tensor, start: np.ndarray, settings: dict, steps: int, batch_size: int, rng: np.random.Generator
) -> np.ndarray:
    """Train an orthogonal ``R`` (``z @ R``) from ``start`` on the ordering loss alone."""
    layer = orthogonal(torch.nn.Linear(z.shape[1], z.shape[1], bias=False).double())
    with torch.no_grad():
        layer.weight = torch.as_tensor(start.T.copy())  # nn.Linear computes z @ weight.T
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.03)
    for _ in range(steps):
        loss = loss_of(layer(z[rng.choice(len(z), batch_size, replace=False)]), settings)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return layer.weight.detach().numpy().T


def run_seed(seed: int, args) -> list[dict]:
    data = make_latent_anm(n=args.n, d=5, observed_dim=None, seed=seed)
    order = list(data.order)
    truth = triangular_whitening(data.z[:, order].astype(np.float64))
    # truth's column k is latent order[k]: put the true latents in the same column order for matching
    z_true = data.z[:, order]
    adjacency = data.adjacency[np.ix_(order, order)]
    z = torch.as_tensor(truth)
    rng = np.random.default_rng(seed)
    batches = [rng.choice(len(z), args.batch_size, replace=False) for _ in range(8)]
    rows = []
    for name in args.criteria:
        settings = CRITERIA[name]
        t0 = time.perf_counter()
        rng = np.random.default_rng([seed, list(CRITERIA).index(name)])  # the same draws for any --criteria
        starts = [np.linalg.qr(rng.normal(size=(5, 5)))[0] for _ in range(args.starts)]
        found = []
        for start in starts:
            rot = train_rotation(z, start, settings, args.steps, args.batch_size, rng)
            mixed = truth @ rot
            metrics = causal_metrics(z_true, mixed, adjacency)
            loss = mean_loss(torch.as_tensor(mixed), batches, settings)
            found.append((loss, metrics["order_divergence"], metrics["mcc_pearson"]))
        from_truth = truth @ train_rotation(z, np.eye(5), settings, args.steps, args.batch_size, rng)
        truth_metrics = causal_metrics(z_true, truth, adjacency)
        moved = causal_metrics(z_true, from_truth, adjacency)
        best = min(found)
        row = {
            "seed": seed,
            "criterion": name,
            "edges": int(adjacency.sum()),
            "loss_truth": mean_loss(z, batches, settings),
            "dtop_truth": truth_metrics["order_divergence"],
            "mcc_truth": truth_metrics["mcc_pearson"],
            "loss_best": best[0],
            "dtop_best": best[1],
            "mcc_best": best[2],
            "dtop_random_starts": [f[1] for f in found],
            "loss_from_truth": mean_loss(torch.as_tensor(from_truth), batches, settings),
            "dtop_from_truth": moved["order_divergence"],
            "mcc_from_truth": moved["mcc_pearson"],
            "seconds": time.perf_counter() - t0,
        }
        log.info("seed %d %s: %s", seed, name, {k: row[k] for k in ("loss_truth", "loss_best", "dtop_best")})
        rows.append(row)
    return rows


def main() -> None:
    parser = bench_parser(__doc__, "runs/bench/ordering_loss_rotations")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default 5, 2 quick)")
    parser.add_argument(
        "--starts", type=int, default=None, help="random starting rotations (default 10, 4 quick)"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="Adam steps per rotation (default 80, 40 quick)"
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument(
        "--criteria", default="hessian,residual", help=f"comma-separated, from {list(CRITERIA)}"
    )
    args = parser.parse_args()
    args.seeds = args.seeds or (2 if args.quick else 5)
    args.starts = args.starts or (4 if args.quick else 10)
    args.steps = args.steps or (40 if args.quick else 80)
    args.criteria = args.criteria.split(",")
    unknown = sorted(set(args.criteria) - set(CRITERIA))
    if unknown:
        parser.error(f"--criteria: unknown {unknown}; choose from {list(CRITERIA)}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    threadpool_limits(1)  # the loss factorises small systems with SciPy's LAPACK
    rows = [row for seed in range(args.seed, args.seed + args.seeds) for row in run_seed(seed, args)]
    settings = {k: str(v) for k, v in vars(args).items()}
    write_results(args.out, {"runs": rows, "settings": settings})
    lines = [
        "| criterion | loss of the truth per seed | lowest loss found per seed"
        " | D_top of lowest-loss rotation per seed (mean)"
        " | D_top after training from the truth (mean) | MCC from the truth |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name in args.criteria:
        sub = [r for r in rows if r["criterion"] == name]

        def cells(key: str, fmt: str = "{:.2f}", rows=sub) -> str:
            return " ".join(fmt.format(r[key]) for r in rows)

        lines.append(
            f"| {name} | {cells('loss_truth')} | {cells('loss_best')} | {cells('dtop_best', '{}')}"
            f" ({np.mean([r['dtop_best'] for r in sub]):.1f}) | {cells('dtop_from_truth', '{}')}"
            f" ({np.mean([r['dtop_from_truth'] for r in sub]):.1f}) | {cells('mcc_from_truth')} |"
        )
        lower = np.mean([r["loss_best"] < r["loss_truth"] for r in sub])
        print(f"REPORT rotation_loss_below_truth_{name}: {lower:.2f} (share of seeds)")
        print(f"REPORT rotation_dtop_{name}: {np.mean([r['dtop_best'] for r in sub]):.2f}")
    edges = [r["edges"] for r in rows if r["criterion"] == args.criteria[0]]
    lines.append("")
    lines.append(f"Edges per seed: {' '.join(map(str, edges))} (a random order reverses about half).")
    table = "\n".join(lines)
    (args.out / "table.md").write_text(table + "\n")
    print(table)
    write_summary(
        args.out,
        benchmark="ordering_loss_rotations",
        title="Ordering loss among linear mixtures of the true latents",
        command=command_line(),
        targets=[],
        tables=[summary_table(rows, args)],
        conclusions=[rotation_sentence(name, rows) for name in args.criteria],
        settings={
            "seeds": args.seeds,
            "first_seed": args.seed,
            "starts": args.starts,
            "steps": args.steps,
            "batch_size": args.batch_size,
            "n": args.n,
            "criteria": args.criteria,
            "edges_per_seed": edges,
        },
    )


def summary_table(rows: list[dict], args) -> dict:
    """Per criterion: the truth's loss, the lowest loss found, and the rotations' order divergence."""

    def per_seed(sub: list[dict], key: str, fmt: str = "{:.2f}") -> str:
        return " ".join(fmt.format(r[key]) for r in sub)

    def with_mean(sub: list[dict], key: str) -> str:
        return f"{per_seed(sub, key, '{}')} ({np.mean([r[key] for r in sub]):.1f})"

    table_rows = []
    for name in args.criteria:
        sub = [r for r in rows if r["criterion"] == name]
        table_rows.append(
            [
                name,
                per_seed(sub, "loss_truth"),
                per_seed(sub, "loss_best"),
                with_mean(sub, "dtop_best"),
                with_mean(sub, "dtop_from_truth"),
                per_seed(sub, "mcc_from_truth"),
            ]
        )
    return result_table(
        f"Rotations trained on the ordering loss alone ({args.starts} random starts, {args.steps} Adam "
        f"steps, minibatches of {args.batch_size})",
        [
            "criterion",
            "loss of the truth per seed",
            "lowest loss found per seed",
            "D_top of the lowest-loss rotation per seed (mean)",
            "D_top trained from the truth (mean)",
            "MCC trained from the truth",
        ],
        table_rows,
    )


def rotation_sentence(name: str, rows: list[dict]) -> str:
    """What one criterion's rows say: does some rotation beat the truth's loss, and how wrong is it?"""
    sub = [r for r in rows if r["criterion"] == name]
    lower = sum(r["loss_best"] < r["loss_truth"] for r in sub)
    dtop = float(np.mean([r["dtop_best"] for r in sub]))
    random_order = float(np.mean([r["edges"] for r in sub])) / 2
    return (
        f"`{name}`: in {lower} of {len(sub)} seeds a rotation of the true latents has a lower loss than the "
        f"truth; the lowest-loss rotations reverse {dtop:.1f} edges on average (a random order about "
        f"{random_order:.1f}, the truth 0)."
    )


if __name__ == "__main__":
    main()
