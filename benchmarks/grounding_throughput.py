"""Zero-shot grounding throughput: images per second at batch 1 and batch 8, and peak memory.

The same pairs are grounded once per batch size, each in a fresh process (so peak memory is that
setting's own), with the paper's step settings (300 DDIM steps at the integer ratio, steps 120-179
recorded, so 180 UNet calls per batch); the maps of both batch sizes are compared too.

    python benchmarks/grounding_throughput.py --out runs/bench/grounding_throughput
    # the MONAI chest X-ray LDM's layout at 512² with random weights (s/image; run it on a GPU)
    python benchmarks/grounding_throughput.py --model cxr --device cuda --precision bf16 --images 16
    # a model folder of your own
    python benchmarks/grounding_throughput.py --model /data/models/cxr_ldm --device cuda

``--model tiny`` (default) is the shipped SynthCXR LDM and prints the target ``grounding_batch_speedup``
(images/s at batch 8 over batch 1; goal ≥ 3 on 2 CPU cores). ``--quick`` grounds fewer images.
Writes ``results.json``, ``table.md`` and ``summary.json`` (what ``make results`` renders).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _lib.bench import bench_parser, command_line, result_table, target, write_results, write_summary

HERE = Path(__file__).resolve().parent


def _grounding_config(model: str, args) -> dict:
    """The paper's step settings (its whole preset on the chest X-ray LDM's layout; on other models
    only the steps, with the model folder's own layers, token set and text mask)."""
    cfg = {"num_steps": args.num_steps, "device": args.device, "precision": args.precision}
    if model == "cxr":
        return {"preset": "mscxr_paper", **cfg}
    return {"spacing": "trailing_integer", "band": [0.4, 0.6], "band_by": "step", **cfg}


def _load(model: str):
    from trustmed.grounding.ldm import build_ldm, cxr_ldm_config, load_ldm, tiny_ldm_path

    if model == "tiny":
        return load_ldm(tiny_ldm_path())
    if model == "cxr":
        return build_ldm(cxr_ldm_config(), source="random weights, MONAI chest X-ray LDM layout")
    return load_ldm(model)


def worker(spec: dict) -> dict:
    """Ground ``spec['images']`` pairs at one batch size in this process; return timings and memory."""
    import torch

    from trustmed.data.mscxr import load_mscxr, read_image
    from trustmed.grounding.zero_shot import GroundingConfig, ZeroShotGrounder

    torch.manual_seed(0)
    table = load_mscxr(spec["data"], split=None).head(spec["images"])
    images = [read_image(p) for p in table.path]
    ldm = _load(spec["model"])
    cfg = GroundingConfig(**spec["grounding"], batch_size=spec["batch_size"])
    # warm-up (allocations, kernel choice) with a short inversion of one batch
    warm = ZeroShotGrounder(ldm, cfg.model_copy(update={"num_steps": 10}))
    warm.ground(images[: spec["batch_size"]], list(table.text)[: spec["batch_size"]])
    grounder = ZeroShotGrounder(ldm, cfg)
    cuda = grounder.ldm.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    maps = grounder.ground(images, list(table.text))
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    np.save(spec["maps"], np.stack([np.nan_to_num(m, nan=-1.0) for m in maps]))
    return {
        "batch_size": spec["batch_size"],
        "images": len(images),
        "seconds": seconds,
        "images_per_s": len(images) / seconds,
        "s_per_image": seconds / len(images),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "device": str(grounder.ldm.device),
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = bench_parser(__doc__, "runs/bench/grounding_throughput")
    parser.add_argument("--model", default="tiny", help="tiny, cxr (512² random weights) or a model folder")
    parser.add_argument("--images", type=int, default=None, help="pairs to ground (default 32; quick 16)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--num-steps", type=int, default=300)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--worker", help=argparse_hidden())
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    from trustmed.data.synth.cxr import make_synthcxr

    n_images = args.images or (16 if args.quick else 32)
    load = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as work:
        data = Path(work) / "synthcxr"
        make_synthcxr(data, n_images=max(4, n_images // 2 + 2), seed=args.seed + 1000)
        for bs in args.batch_sizes:
            spec = {
                "model": args.model,
                "data": str(data),
                "images": n_images,
                "batch_size": bs,
                "grounding": _grounding_config(args.model, args),
                "maps": str(Path(work) / f"maps_{bs}.npy"),
            }
            proc = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
                capture_output=True,
                text=True,
                cwd=HERE,
            )
            if proc.returncode != 0:
                sys.exit(f"worker at batch {bs} failed:\n{proc.stderr[-3000:]}")
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(row)
            gpu = f", peak GPU {row['peak_gpu_mib']:.0f} MiB" if row["peak_gpu_mib"] is not None else ""
            print(
                f"batch {bs:3d}: {row['images_per_s']:.3f} images/s ({row['s_per_image']:.2f} s/image) on "
                f"{row['device']}{' ' + row['gpu'] if row['gpu'] else ''}, {row['threads']} threads; "
                f"peak RSS {row['peak_rss_mib']:.0f} MiB{gpu}"
            )
        maps = {bs: np.load(Path(work) / f"maps_{bs}.npy") for bs in args.batch_sizes}
    first = maps[args.batch_sizes[0]]
    max_diff = max(float(np.abs(m - first).max()) for m in maps.values())
    print(f"largest difference between the batch sizes' maps: {max_diff:.2e}")
    results = {
        "model": args.model,
        "grounding": _grounding_config(args.model, args),
        "rows": rows,
        "max_map_difference": max_diff,
        "targets": [],
    }
    if args.model == "tiny" and {1, 8} <= set(args.batch_sizes):
        by = {r["batch_size"]: r for r in rows}
        speedup = by[8]["images_per_s"] / by[1]["images_per_s"]
        results["targets"].append(
            target(
                "grounding_batch_speedup", speedup, ">=", 3.0, fmt=".2f", note=f"{by[1]['threads']} threads"
            )
        )
    write_results(args.out, results)
    (args.out / "table.md").write_text(markdown_rows(results))
    print(markdown_rows(results), end="")
    rate = {r["batch_size"]: r["images_per_s"] for r in rows}
    said = [
        f"At batch {bs} the model grounds {rate[bs]:.3f} images/s, "
        f"{rate[bs] / rate[args.batch_sizes[0]]:.2f}x the rate at batch {args.batch_sizes[0]}."
        for bs in args.batch_sizes[1:]
    ]
    said.append(f"The maps of the batch sizes differ by at most {max_diff:.1e}.")
    write_summary(
        args.out,
        benchmark="grounding_throughput",
        title=f"Grounding throughput ({args.model} LDM)",
        command=command_line(),
        targets=results["targets"],
        tables=[
            result_table(
                f"{n_images} SynthCXR pairs, {args.num_steps} DDIM steps (the paper's step settings)",
                [
                    "model",
                    "device",
                    "precision",
                    "batch",
                    "images/s",
                    "s/image",
                    "peak RSS (MiB)",
                    "peak GPU (MiB)",
                ],
                [
                    [
                        args.model,
                        r["gpu"] or f"{r['device']}, {r['threads']} threads",
                        args.precision,
                        r["batch_size"],
                        r["images_per_s"],
                        r["s_per_image"],
                        r["peak_rss_mib"],
                        r["peak_gpu_mib"],
                    ]
                    for r in rows
                ],
            )
        ],
        conclusions=said,
        settings={
            "model": args.model,
            "images": n_images,
            "batch_sizes": args.batch_sizes,
            "num_steps": args.num_steps,
            "device": args.device,
            "precision": args.precision,
            "seed": args.seed,
            "load_average_at_start": load,
        },
    )


def markdown_rows(results: dict) -> str:
    """The runs as markdown table rows (the header is :data:`TABLE_HEADER`), for the docs."""
    lines = [TABLE_HEADER]
    for r in results["rows"]:
        gpu = f"{r['peak_gpu_mib']:.0f}" if r["peak_gpu_mib"] is not None else "—"
        where = r["gpu"] or f"CPU, {r['threads']} threads"
        lines.append(
            f"| {results['model']} | {where} | {results['grounding']['precision']} | {r['batch_size']} | "
            f"{r['images_per_s']:.3f} | {r['s_per_image']:.2f} | {r['peak_rss_mib']:.0f} | {gpu} |"
        )
    return "\n".join(lines) + "\n"


TABLE_HEADER = (
    "| model | device | precision | batch | images/s | s/image | peak RSS (MiB) | peak GPU (MiB) |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- |"
)


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
