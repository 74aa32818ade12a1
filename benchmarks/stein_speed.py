"""Speed of the Stein Hessian-diagonal estimator: trustmed (torch) vs a direct NumPy reference.

The reference follows the formula of SCORE (Rolland et al., arXiv 2203.04413) literally in float64:
an ``(n, n, d)`` array of pairwise differences, the kernel sums as ``einsum`` over it, and an explicit
inverse of ``K + eta I``. trustmed uses matrix products for the kernel sums and one Cholesky
factorisation for both systems. Both run in one process at n = 2000, d = 10; the ratio is printed,
with the float64 agreement of the two results. Writes ``results.json`` and ``summary.json`` (what
``make results`` renders).

    python benchmarks/stein_speed.py --out runs/bench/stein_speed [--quick] [--seed 0]
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch
from _lib.bench import bench_parser, command_line, result_table, target, write_results, write_summary

from trustmed.causal import stein_hessian_diag


def reference_hessian_diag(x: np.ndarray, eta: float = 1e-3) -> np.ndarray:
    """The SCORE formula, literally, in NumPy float64."""
    n = x.shape[0]
    diff = x[:, None, :] - x[None, :, :]
    dist = np.sqrt((diff**2).sum(-1))
    s = np.median(dist[np.triu_indices(n, k=1)])
    kernel = np.exp(-(dist**2) / (2 * s**2)) / s
    nabla = -np.einsum("kij,ki->kj", diff, kernel) / s**2
    nabla2 = np.einsum("kij,ki->kj", -1 / s**2 + diff**2 / s**4, kernel)
    inverse = np.linalg.inv(kernel + eta * np.eye(n))
    grad = inverse @ nabla
    return -(grad**2) + inverse @ nabla2


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = bench_parser(__doc__, "runs/bench/stein_speed")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--d", type=int, default=10)
    args = parser.parse_args()
    repeats = 2 if args.quick else 5
    load = os.getloadavg()[0]
    x = np.random.default_rng(args.seed).normal(size=(args.n, args.d))
    x64 = torch.as_tensor(x)
    x32 = x64.float()
    ref = reference_hessian_diag(x)
    ours64 = stein_hessian_diag(x64).numpy()
    ours32 = stein_hessian_diag(x32).double().numpy()
    timings = {
        "numpy_reference_s": best_time(lambda: reference_hessian_diag(x), repeats),
        "trustmed_float64_s": best_time(lambda: stein_hessian_diag(x64), repeats),
        "trustmed_float32_s": best_time(lambda: stein_hessian_diag(x32), repeats),
    }
    if torch.cuda.is_available():
        xg = x32.cuda()
        stein_hessian_diag(xg)
        torch.cuda.synchronize()

        def on_gpu():
            stein_hessian_diag(xg)
            torch.cuda.synchronize()

        timings["trustmed_float32_cuda_s"] = best_time(on_gpu, repeats)
    scale = np.abs(ref).max()
    result = {
        "n": args.n,
        "d": args.d,
        "threads": torch.get_num_threads(),
        **timings,
        "speedup_float64": timings["numpy_reference_s"] / timings["trustmed_float64_s"],
        "speedup_float32": timings["numpy_reference_s"] / timings["trustmed_float32_s"],
        "max_abs_diff_float64": float(np.abs(ours64 - ref).max()),
        "max_rel_diff_float32": float(np.abs(ours32 - ref).max() / scale),
    }
    for key, value in result.items():
        print(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}")
    note = "float64 vs the float64 NumPy reference"
    result["targets"] = [target("stein_speedup", result["speedup_float64"], ">=", 2.0, fmt=".2f", note=note)]
    write_results(args.out, result)
    rows = [
        ["NumPy reference (float64)", timings["numpy_reference_s"], 1.0, "—"],
        [
            "trustmed (float64)",
            timings["trustmed_float64_s"],
            result["speedup_float64"],
            f"max abs difference {result['max_abs_diff_float64']:.1e}",
        ],
        [
            "trustmed (float32)",
            timings["trustmed_float32_s"],
            result["speedup_float32"],
            f"max relative difference {result['max_rel_diff_float32']:.1e}",
        ],
    ]
    if "trustmed_float32_cuda_s" in timings:
        cuda = timings["trustmed_float32_cuda_s"]
        rows.append(["trustmed (float32, CUDA)", cuda, timings["numpy_reference_s"] / cuda, "—"])
    write_summary(
        args.out,
        benchmark="stein_speed",
        title="Stein Hessian diagonal: speed against a NumPy reference",
        command=command_line(),
        targets=result["targets"],
        tables=[
            result_table(
                f"Best of {repeats} runs at n = {args.n}, d = {args.d}, {result['threads']} torch threads",
                ["implementation", "seconds", "speed-up", "agreement with the reference"],
                rows,
            )
        ],
        conclusions=[
            f"trustmed's estimator is {result['speedup_float64']:.1f}x faster than the literal NumPy "
            f"formula in float64 and {result['speedup_float32']:.1f}x in float32.",
            f"In float64 the two agree to {result['max_abs_diff_float64']:.1e} (largest absolute "
            "difference), so the speed-up is not bought with accuracy.",
        ],
        settings={
            "n": args.n,
            "d": args.d,
            "repeats": repeats,
            "seed": args.seed,
            "threads": result["threads"],
            "load_average_at_start": load,
        },
    )


if __name__ == "__main__":
    main()
