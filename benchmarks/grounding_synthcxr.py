"""Zero-shot LDM grounding on the SynthCXR test split vs a uniform map, the class-location prior and a
text oracle (Vilouras et al., arXiv 2404.12920, evaluated with the metrics of METRICS.md).

Usage: ``python benchmarks/grounding_synthcxr.py --out runs/bench_grounding [--quick] [--seed 0]``.
Writes ``results.json`` and ends with one ``TARGET`` line per target.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from _lib.bench import bench_parser, target, write_results
from _lib.grounding import box_masks, ci_cell, prior_maps, with_truth

from trustmed.data.mscxr import load_mscxr
from trustmed.data.synth.cxr import flip_laterality, make_synthcxr
from trustmed.grounding.attention import AttentionRecorder
from trustmed.grounding.ldm import load_ldm, tiny_ldm_path
from trustmed.grounding.pipeline import METRICS, evaluate_maps
from trustmed.grounding.zero_shot import GroundingConfig, ZeroShotGrounder, ground_table, score_table
from trustmed.metrics.grounding import miou

log = logging.getLogger("grounding_synthcxr")


def _other_image_texts(test: pd.DataFrame, seed: int) -> list[str]:
    """Each pair's sentence replaced by the sentence of a pair from another image (text control)."""
    rng = np.random.default_rng(seed)
    images, texts = test.image_id.to_numpy(), test.text.to_numpy()
    return [str(rng.choice(texts[images != image])) for image in images]


def _capture_overhead(ldm, repeats: int) -> dict:
    torch.manual_seed(0)
    with torch.no_grad():
        z = ldm.encode_images(torch.rand(16, ldm.image_channels, ldm.image_size, ldm.image_size))
    ctx = ldm.encode_text(
        ldm.tokenizer(["right upper zone nodule"] * 16, padding="max_length", return_tensors="pt")[
            "input_ids"
        ]
    ).detach()
    t = torch.full((16,), 500, dtype=torch.long)
    plain, recorded = [], []
    with torch.no_grad():
        ldm.unet_forward(z, t, ctx)
        for _ in range(repeats):
            t0 = time.perf_counter()
            ldm.unet_forward(z, t, ctx)
            plain.append(time.perf_counter() - t0)
            with AttentionRecorder(ldm.unet, layers="bottleneck", reduce_heads=True):
                t0 = time.perf_counter()
                ldm.unet_forward(z, t, ctx)
                recorded.append(time.perf_counter() - t0)
    return {
        "plain_s": float(np.median(plain)),
        "recorded_s": float(np.median(recorded)),
        "ratio": float(np.median(recorded) / np.median(plain)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, "runs/bench_grounding")
    parser.add_argument("--model", type=Path, default=tiny_ldm_path())
    parser.add_argument("--steps", type=int, default=None, help="DDIM inversion steps (default 50, quick 20)")
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--layers", default="bottleneck", help="attention layers (bottleneck, all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    n_images = 120 if args.quick else 520
    steps = args.steps or (20 if args.quick else 50)
    data = args.out / "synthcxr"
    make_synthcxr(data, n_images=n_images, seed=args.seed + 1000, split_fractions=(0.4, 0.1))
    train = with_truth(load_mscxr(data, split="train"), data)
    val = load_mscxr(data, split="val")
    test = with_truth(load_mscxr(data, split="test"), data)
    size = int(test.image_width.iloc[0])
    ldm = load_ldm(args.model)
    # the token set is chosen on the validation split, never on the test split
    settings = {"seed": args.seed, "num_steps": steps, "batch_size": 32, "layers": args.layers}
    selection = {}
    for token_set in ("content", "end_and_padding"):
        cfg = GroundingConfig(**settings, token_set=token_set)
        val_scores = score_table(val, ground_table(ZeroShotGrounder(ldm, cfg), val))
        selection[token_set] = float(val_scores.auroc.mean())
    chosen = max(selection, key=selection.get)
    log.info("validation AUC-ROC by token set: %s -> %s", selection, chosen)
    grounder = ZeroShotGrounder(ldm, GroundingConfig(**settings, token_set=chosen))
    log.info("test pairs: %d, inversion steps: %d", len(test), steps)
    t0 = time.perf_counter()
    heat = ground_table(grounder, test)
    seconds_per_pair = (time.perf_counter() - t0) / len(test)
    # control: the same images with the sentence of another image; the gap to zero_shot is how much
    # of the map comes from the text rather than from the image alone
    methods = {
        "zero_shot": heat,
        "zero_shot_other_text": ground_table(grounder, test, texts=_other_image_texts(test, args.seed)),
        "uniform": [np.ones((size, size))] * len(test),
        "class_prior": prior_maps(train, test, size, ["category"]),
        "text_oracle": prior_maps(train, test, size, ["category", "side", "zone"]),
    }
    results: dict = {
        "token_set_val_auroc": selection,
        "token_set": chosen,
        "n_test_pairs": len(test),
        "n_train_pairs": len(train),
        "inversion_steps": steps,
        "seconds_per_pair": seconds_per_pair,
        "methods": {},
    }
    for name, maps in methods.items():
        _, results["methods"][name] = evaluate_maps(test, maps, n_boot=args.n_boot, seed=args.seed)
    results["laterality_accuracy"] = {
        name: m["laterality_accuracy"] for name, m in results["methods"].items()
    }
    results["n_laterality_pairs"] = results["methods"]["zero_shot"]["n_laterality_pairs"]
    masks = box_masks(test, size)
    lateral = test.index[test.side.notna()].tolist()[: 60 if args.quick else 150]
    flipped = ground_table(
        grounder, test.loc[lateral], texts=[flip_laterality(t) for t in test.text[lateral]]
    )
    shift = [miou(heat[i], masks[i]) - miou(h, masks[i]) for i, h in zip(lateral, flipped, strict=True)]
    results["caption_flip_shift"] = {"value": float(np.mean(shift)), "n": len(shift)}
    results["capture_overhead"] = _capture_overhead(ldm, 5 if args.quick else 20)

    m = results["methods"]
    print("| method | CNR | mIoU | AUC-ROC | pointing game | laterality acc. |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in methods:
        lat_value = results["laterality_accuracy"][name]
        cells = [name, *(ci_cell(m[name], metric) for metric in METRICS)]
        cells.append("—" if lat_value is None else f"{lat_value:.2f}")
        print("| " + " | ".join(cells) + " |")
    print(f"seconds per pair (CPU, {steps} steps): {seconds_per_pair:.3f}; test pairs: {len(test)}")
    print(f"token set chosen on validation: {chosen} (val AUC-ROC {selection})")
    print(
        f"REPORT laterality_accuracy: {results['laterality_accuracy']['zero_shot']:.3f} "
        f"(n={results['n_laterality_pairs']}; 0.5 = ignores location words)"
    )
    other = m["zero_shot_other_text"]["overall"]
    print(
        f"REPORT text_dependence: AUC-ROC {m['zero_shot']['overall']['auroc']['value']:.3f} with the pair's "
        f"sentence vs {other['auroc']['value']:.3f} with another image's; mIoU "
        f"{m['zero_shot']['overall']['miou']['value']:.3f} vs {other['miou']['value']:.3f}"
    )
    print(f"REPORT caption_flip_shift: {results['caption_flip_shift']['value']:.4f} (n={len(shift)})")
    zero = m["zero_shot"]["overall"]
    ratio = zero["miou"]["value"] / max(m["uniform"]["overall"]["miou"]["value"], 1e-12)
    results["targets"] = [
        target("zero_shot_auroc", zero["auroc"]["value"], ">=", 0.85),
        target("zero_shot_miou_vs_uniform", ratio, ">=", 2.0),
        target(
            "zero_shot_vs_prior",
            zero["miou"]["value"] - m["class_prior"]["overall"]["miou"]["value"],
            ">",
            0.0,
        ),
        target("capture_overhead", results["capture_overhead"]["ratio"], "<=", 1.5),
    ]
    write_results(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
