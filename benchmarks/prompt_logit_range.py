"""How far the end token's attention varies over the image: zero-shot, context vectors, LoRA.

For each prompt (``zero`` for none, or a tuned-prompt folder) on the first ``--pairs`` SynthCXR test
pairs at t = T/2 and every cross-attention layer and head, this prints:

* the length of the end token's text embedding (fixed by the text encoder's final layer norm);
* the standard deviation over image positions of its attention logits, and the largest standard
  deviation any text vector of that length could give (the top singular value of the centred
  ``scale * Q W_k`` matrix times the length, over the square root of the number of positions);
* the 5th-to-95th percentile span of the log-attention of the end and padding tokens.

    python benchmarks/prompt_logit_range.py --root runs/bench_prompt/synthcxr \\
        zero runs/bench_prompt/prompt_tuned runs/bench_prompt/prompt_tuned_lora

Without ``--root`` a SynthCXR folder is generated under ``--out`` (the prompt-tuning benchmark's
in-distribution data); without prompts only ``zero`` is measured. Writes ``results.json`` and
``summary.json`` (what ``make results`` renders); no targets.
"""

from __future__ import annotations

from pathlib import Path

import torch
from _lib.bench import bench_parser, command_line, result_table, write_results, write_summary

from trustmed.data.mscxr import load_mscxr
from trustmed.data.synth.cxr import make_synthcxr
from trustmed.grounding.attention import AttentionRecorder, cross_attention_layers
from trustmed.grounding.ldm import load_ldm, tiny_ldm_path
from trustmed.grounding.prompt_tuning import TunedPrompt, build_examples
from trustmed.grounding.zero_shot import GroundingConfig, ZeroShotGrounder


@torch.no_grad()
def measure(ldm, latents: torch.Tensor, sentences: list[str], prompt: str, seed: int = 0) -> dict:
    tuned = None if prompt == "zero" else TunedPrompt.load(prompt)
    grounder = ZeroShotGrounder(ldm, GroundingConfig(token_set="end_and_padding"), prompt=tuned)
    model = grounder.ldm
    context, weights = grounder.encode_phrases(sentences)  # exactly the text the grounder attends to
    t = torch.full((len(sentences),), ldm.num_train_timesteps // 2)
    a = ldm.alphas_cumprod[t].view(-1, 1, 1, 1)
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed))
    zt = a.sqrt() * latents + (1 - a).sqrt() * noise
    end = context[torch.arange(len(sentences)), weights.argmax(1)]  # the first weighted token: the end token
    queries: dict[str, torch.Tensor] = {}
    blocks = {name: model.unet.get_submodule(name) for name in cross_attention_layers(model.unet)}
    hooks = [
        blk.to_q.register_forward_hook(lambda mod, i, out, name=name: queries.__setitem__(name, out))
        for name, blk in blocks.items()
    ]
    try:
        with AttentionRecorder(model.unet) as rec:
            model.unet_forward(zt, t, context)
    finally:
        for hook in hooks:
            hook.remove()
    real, bound = [], []
    for name, blk in blocks.items():
        key_proj = blk.to_k(torch.eye(context.shape[-1]))  # text dim x inner dim (no bias)
        for h in range(blk.num_heads):
            cols = slice(h * blk.head_dim, (h + 1) * blk.head_dim)
            logits = queries[name][..., cols] @ key_proj[:, cols].T * blk.scale  # (B, positions, text dim)
            centred = logits - logits.mean(1, keepdim=True)
            top = torch.linalg.svdvals(centred)[:, 0]
            bound.append(end.norm(dim=1) * top / centred.shape[1] ** 0.5)
            real.append((centred @ end[:, :, None])[..., 0].std(1, unbiased=False))
    w = (weights / weights.sum(1, keepdim=True)).float()
    spans = []
    for m in rec.maps():
        heat = torch.einsum("bkhwt,bt->bkhw", m.probs, w).flatten(2).clamp_min(1e-12).log()
        q = torch.quantile(heat, torch.tensor([0.05, 0.95]), dim=-1)
        spans.append((q[1] - q[0]).flatten())
    return {
        "end_token_norm": float(end.norm(dim=1).mean()),
        "logit_std": float(torch.cat(real).mean()),
        "logit_std_bound": float(torch.cat(bound).mean()),
        "log_attention_span": float(torch.cat(spans).mean()),
    }


def main() -> None:
    parser = bench_parser(__doc__, "runs/bench_logit_range")
    parser.add_argument("prompts", nargs="*", default=["zero"], help="'zero' or tuned-prompt folders")
    parser.add_argument("--root", type=Path, default=None, help="SynthCXR folder with anatomy/")
    parser.add_argument("--pairs", type=int, default=None, help="test pairs (default 64, quick 16)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = args.root
    if root is None:
        root = args.out / "synthcxr"
        make_synthcxr(
            root, n_images=120 if args.quick else 520, seed=args.seed + 1000, split_fractions=(0.4, 0.1)
        )
    ldm = load_ldm(tiny_ldm_path())
    table = load_mscxr(root, split="test").iloc[: args.pairs or (16 if args.quick else 64)]
    examples = build_examples(ldm, table, root / "anatomy")
    results = {"root": str(root), "pairs": len(table), "prompts": {}}
    print("| prompt | end-token length | logit std | bound | log-attention span |")
    print("| --- | --- | --- | --- | --- |")
    for prompt in args.prompts:
        r = results["prompts"][prompt] = measure(ldm, examples.latents, examples.sentences, prompt, args.seed)
        print(
            f"| {prompt} | {r['end_token_norm']:.2f} | {r['logit_std']:.2f} | {r['logit_std_bound']:.2f} "
            f"| {r['log_attention_span']:.2f} |"
        )
    write_results(args.out, results)
    measured = results["prompts"]
    said = [
        f"{prompt}: the end token's attention logits vary over image positions with a standard deviation "
        f"of {r['logit_std']:.2f}, {r['logit_std'] / r['logit_std_bound']:.0%} of the largest any text "
        f"vector of its length ({r['end_token_norm']:.2f}) could give."
        for prompt, r in measured.items()
    ]
    write_summary(
        args.out,
        benchmark="prompt_logit_range",
        title="Prompt tuning: how far the end token's attention varies over the image",
        command=command_line(),
        targets=[],
        tables=[
            result_table(
                f"{len(table)} SynthCXR test pairs at t = T/2, every cross-attention layer and head",
                ["prompt", "end-token length", "logit std", "bound", "log-attention span"],
                [
                    [p, r["end_token_norm"], r["logit_std"], r["logit_std_bound"], r["log_attention_span"]]
                    for p, r in measured.items()
                ],
            )
        ],
        conclusions=said,
        settings={"pairs": len(table), "prompts": list(measured), "seed": args.seed},
    )


if __name__ == "__main__":
    main()
