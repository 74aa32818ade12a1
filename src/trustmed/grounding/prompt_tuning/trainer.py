"""The prompt-tuning loop: denoising loss plus attention–anatomy alignment, on a frozen LDM.

At each step a timestep is drawn in the band the grounder reads
(:func:`~trustmed.grounding.inversion.band_timesteps`), the latents are noised, and the UNet runs
once with the prompt while its cross-attention is captured with its graph; the loss is the
denoising MSE plus ``align_weight`` times the alignment loss
(:mod:`~trustmed.grounding.prompt_tuning.losses`) on the sentences that name a location. Training
runs through :func:`trustmed.train.fit`; the epoch is chosen on held-out images' alignment loss.

The frozen networks run on ``cfg.device`` in ``cfg.precision``
(:func:`~trustmed.grounding.device.place`, on copies: the caller's model is not moved); the context
vectors and LoRA weights are trained in float32 and the losses are computed in float32. Timesteps,
noise and the text noise are drawn on the CPU and then moved, so a seed draws the same ones on
every device; on the CPU in float32 training gives exactly what it gave before devices were chosen.
"""

from __future__ import annotations

import copy
import dataclasses
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trustmed.errors import InputError
from trustmed.grounding.attention import AttentionRecorder
from trustmed.grounding.device import accelerator_on, check_precision, is_placed, place, resolve_device
from trustmed.grounding.inversion import band_timesteps
from trustmed.grounding.ldm import LDM
from trustmed.grounding.prompt_tuning.artefact import (
    TunedPrompt,
    check_depth,
    inject_lora,
    ldm_fingerprint,
    text_layers,
)
from trustmed.grounding.prompt_tuning.config import PromptTuningConfig
from trustmed.grounding.prompt_tuning.examples import PromptExamples, insert_random_tokens
from trustmed.grounding.prompt_tuning.losses import alignment_loss, attention_distribution, attention_heat

__all__ = ["train_prompt"]


class _Tuner(nn.Module):
    """What the optimiser sees: the prompt and the UNet copy (LoRA adapters are its only trainables).

    Its forward pass is one batch's ``(denoising loss, alignment loss)`` (:func:`_step_losses` on
    ``ldm``, the working model whose UNet is ``unet``), so that a distributed wrapper sees it.
    """

    def __init__(
        self,
        prompt: TunedPrompt,
        unet: nn.Module,
        ldm: LDM | None = None,
        cfg: PromptTuningConfig | None = None,
    ):
        super().__init__()
        self.prompt = prompt
        self.unet = unet
        self.ldm = ldm
        self.cfg = cfg

    def forward(self, batch, generator: torch.Generator | None = None):
        return _step_losses(self, self.ldm, self.cfg, batch, generator=generator)


def _step_losses(tuner: _Tuner, ldm: LDM, cfg: PromptTuningConfig, batch, generator=None):
    """(denoising loss, alignment loss over the pairs with an anatomy mask) of one batch.

    The batch's tensors are on the model's device; the timesteps and noise are drawn on the CPU
    (with ``generator``, a CPU generator, or the global one) and moved there. With a frozen model
    in half precision its inputs are cast to its dtype and the losses computed in float32.
    """
    z0, ids, mask, weights, region, has = batch
    n = z0.shape[0]
    device = z0.device
    lo, hi = band_timesteps(cfg.band, ldm.num_train_timesteps)
    t = torch.randint(lo, hi, (n,), generator=generator)
    a = ldm.alphas_cumprod[t].view(-1, 1, 1, 1).to(z0.dtype)
    noise = torch.randn(z0.shape, generator=generator, dtype=z0.dtype)
    t, a, noise = t.to(device), a.to(device), noise.to(device)
    zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
    context = tuner.prompt.encode_ids(ldm, ids, mask)
    dtype = _frozen_dtype(tuner.unet)
    with AttentionRecorder(tuner.unet, layers=cfg.layers, keep_graph=True, reduce_heads=True) as rec:
        pred = ldm.unet_forward(zt.to(dtype), t, context.to(dtype))
        maps = rec.maps()
    if pred.dtype != torch.float32:
        pred = pred.float()
        maps = [dataclasses.replace(m, probs=m.probs.float()) for m in maps]
    target = noise if ldm.prediction_type == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * z0
    denoise = F.mse_loss(pred, target)
    if cfg.align_loss == "soft_iou":
        p = attention_heat(maps, weights)
    else:
        p = attention_distribution(maps, weights, cfg.sharpness)
    per_image = alignment_loss(p, region, cfg.align_loss)
    hasf = has.to(per_image.dtype)
    align = (per_image * hasf).sum() / hasf.sum().clamp_min(1.0)
    return denoise, align


def _frozen_dtype(unet: nn.Module) -> torch.dtype:
    """The dtype of the frozen UNet's weights (its LoRA weights stay float32)."""
    return next(p.dtype for name, p in unet.named_parameters() if "lora_" not in name)


def _working_model(ldm: LDM, cfg: PromptTuningConfig, device: torch.device) -> LDM:
    """The frozen model to train on: a UNet copy (with LoRA adapters if ``cfg.lora``) and, when
    ``ldm`` is not already on ``device`` in ``cfg.precision``, copies of the other networks, placed
    there (:func:`~trustmed.grounding.device.place`); ``ldm`` itself is never moved or cast.

    The LoRA adapters are created on the UNet copy before it is placed and are kept in float32
    when the placement casts the base weights.
    """
    dtype = check_precision(device, cfg.precision)
    unet = copy.deepcopy(ldm.unet)
    for module in (unet, ldm.text_encoder, ldm.autoencoder):
        for p in module.parameters():
            p.requires_grad_(False)
    if cfg.lora:
        unet = inject_lora(unet, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
        if not any("lora_" in n for n, _ in unet.named_parameters()):
            raise InputError(f"lora_targets {cfg.lora_targets}: no cross-attention projection matched")
    lora = {n: p.detach().clone() for n, p in unet.named_parameters() if "lora_" in n}
    if is_placed(ldm, device, dtype):
        work = dataclasses.replace(ldm, unet=unet)
    else:
        work = dataclasses.replace(
            ldm,
            unet=unet,
            text_encoder=copy.deepcopy(ldm.text_encoder),
            autoencoder=copy.deepcopy(ldm.autoencoder),
        )
        object.__setattr__(work, "_fingerprint", ldm_fingerprint(ldm))  # the caller's weights
        place(work, device, cfg.precision)
    for name, p in unet.named_parameters():
        if name in lora and p.dtype != torch.float32:  # cast with the base weights (or by peft)
            p.data = lora[name].to(device=p.device, dtype=torch.float32)
    return work


def _prompt_meta(ldm: LDM, cfg: PromptTuningConfig, examples: PromptExamples) -> dict:
    """What ``prompt.json`` records: the base model, the readout trained for, LoRA, vocabulary, counts."""
    from trustmed.grounding.anatomy import HEART_WORDS, LANDMARK_WORDS, SIDES, UNMAPPED_WORDS, ZONE_WORDS

    return {
        "base_fingerprint": ldm_fingerprint(ldm),
        "base_source": ldm.source,
        "token_set": cfg.token_set,
        "layers": cfg.layers,
        "band": list(cfg.band),
        "ctx_position": cfg.ctx_position,
        "config": cfg.model_dump(),
        "lora": {"rank": cfg.lora_rank, "alpha": cfg.lora_alpha, "targets": cfg.lora_targets}
        if cfg.lora
        else None,
        "vocabulary": {
            "sides": list(SIDES),
            "zones": ZONE_WORDS,
            "landmarks": LANDMARK_WORDS,
            "heart": list(HEART_WORDS),
            "unmapped": list(UNMAPPED_WORDS),
        },
        "counts": examples.counts,
    }


def _held_out(image_ids: list[str], fraction: float, seed: int) -> torch.Tensor:
    """Boolean mask of the pairs whose image is held out for validation (whole images, seeded)."""
    images = np.array(sorted(set(image_ids)))
    n_val = int(round(fraction * len(images)))
    rng = np.random.default_rng(seed)
    val_images = set(rng.choice(images, size=n_val, replace=False)) if n_val else set()
    return torch.tensor([i in val_images for i in image_ids])


def _insertable_tokens(tokenizer, training_ids: torch.Tensor, vocab: str) -> torch.Tensor:
    """Token ids the text noise may insert: the training sentences' (or the tokenizer's), no specials."""
    special = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    special |= {tokenizer.unk_token_id} - {None}
    pool = range(len(tokenizer)) if vocab == "tokenizer" else training_ids.unique().tolist()
    return torch.tensor(sorted({int(i) for i in pool} - special))


def train_prompt(
    ldm: LDM, examples: PromptExamples, cfg: PromptTuningConfig | None = None
) -> tuple[TunedPrompt, dict]:
    """Learn context vectors (and LoRA weights if ``cfg.lora``) on ``examples``; ``ldm`` is unchanged.

    Training runs on ``cfg.device`` with the frozen networks in ``cfg.precision``; where ``ldm`` is
    not already there, copies of its networks are (the caller's model is never moved or cast).
    Returns the tuned prompt, float32 tensors on the CPU whatever the device, and a summary
    (history with the denoising and alignment losses, CPU and wall time, counts of sentences with
    and without a location).
    """
    from trustmed.train import fit
    from trustmed.utils import seed_everything

    cfg = cfg or PromptTuningConfig()
    if cfg.depth == "all":
        cfg = cfg.model_copy(update={"depth": max(1, len(text_layers(ldm)))})
    check_depth(ldm, cfg.depth)  # a depth the text encoder cannot take fails before training
    if int(examples.has_mask.sum()) == 0:
        raise InputError("prompt tuning: no training sentence names a location the anatomy vocabulary maps")
    device = resolve_device(cfg.device)
    check_precision(device, cfg.precision)  # fp16 on a CPU fails before anything is copied
    torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    t_wall, t_cpu = time.perf_counter(), time.process_time()
    # fp16 trains with accelerate's loss scaling; bf16 has float32's range and needs none
    accelerator = accelerator_on(device, "fp16" if cfg.precision == "fp16" else "no")
    device = accelerator.device
    work = _working_model(ldm, cfg, device)
    unet = work.unet
    prompt = TunedPrompt(
        cfg.n_ctx,
        int(ldm.text_encoder.get_input_embeddings().weight.shape[1]),
        depth=cfg.depth,
        output=cfg.output_ctx,
        meta=_prompt_meta(ldm, cfg, examples),
        init_std=cfg.ctx_init_std,
        seed=cfg.seed,
    )
    ids, mask, weights = prompt.tokenize(
        ldm.tokenizer, examples.sentences, truncate=False, token_set=cfg.token_set
    )
    is_val = _held_out(examples.image_ids, cfg.val_fraction, cfg.seed)
    tensors = (examples.latents, ids, mask, weights, examples.masks, examples.has_mask)
    train_idx = torch.nonzero(~is_val).flatten()
    val_idx = torch.nonzero(is_val).flatten()
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(*(x[train_idx] for x in tensors)),
        batch_size=cfg.batch_size,
        shuffle=True,
    )
    tuner = _Tuner(prompt, unet, work, cfg)
    trainable = [p for p in tuner.parameters() if p.requires_grad]
    parts = {"denoise": 0.0, "align": 0.0, "n": 0}
    insertable = _insertable_tokens(ldm.tokenizer, ids[~is_val], cfg.token_noise_vocab)

    def loss_fn(model, batch):
        if cfg.token_noise > 0:  # drawn on the CPU, like the timesteps and noise
            z0, b_ids, b_mask, b_weights, region, has = batch
            noisy = insert_random_tokens(
                b_ids.cpu(),
                b_mask.cpu(),
                b_weights.cpu(),
                prompt,
                ldm.tokenizer.eos_token_id,
                insertable,
                cfg.token_noise,
            )
            b_ids, b_mask, b_weights = (x.to(z0.device) for x in noisy)
            batch = (z0, b_ids, b_mask, b_weights, region, has)
        denoise, align = model(batch)
        parts["denoise"] += float(denoise.detach())
        parts["align"] += float(align.detach())
        parts["n"] += 1
        return denoise + cfg.align_weight * align

    def evaluate(model):
        out = {
            "train_denoise": parts["denoise"] / max(parts["n"], 1),
            "train_align": parts["align"] / max(parts["n"], 1),
        }
        parts.update(denoise=0.0, align=0.0, n=0)
        if len(val_idx):
            # the same timesteps and noise at every epoch, so epochs are compared on equal terms
            gen = torch.Generator().manual_seed(cfg.seed + 17)
            d_sum, a_sum, k = 0.0, 0.0, 0
            with torch.no_grad():
                for s in range(0, len(val_idx), cfg.batch_size):
                    sel = val_idx[s : s + cfg.batch_size]
                    d, a = model(tuple(x[sel].to(device) for x in tensors), generator=gen)
                    d_sum, a_sum, k = d_sum + float(d) * len(sel), a_sum + float(a) * len(sel), k + len(sel)
            out.update(
                val_denoise=d_sum / k, val_align=a_sum / k, val_loss=(d_sum + cfg.align_weight * a_sum) / k
            )
        return out

    result = fit(
        tuner,
        torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay),
        loader,
        loss_fn,
        epochs=cfg.epochs,
        evaluate=evaluate,
        select="val_align" if len(val_idx) else None,
        mode="min",
        accelerator=accelerator,
        description="prompt tuning",
    )
    prompt.to("cpu")  # the tuned prompt is device-independent: float32 tensors on the CPU
    if cfg.lora:
        prompt.lora_state = {
            k: v.detach().to("cpu", torch.float32).clone()
            for k, v in unet.state_dict().items()
            if "lora_" in k
        }
    summary = {
        "history": result.history,
        "best_epoch": result.best_epoch,
        "wall_time_s": time.perf_counter() - t_wall,
        "cpu_time_s": time.process_time() - t_cpu,
        "trainable_parameters": sum(p.numel() for p in trainable),
        "counts": examples.counts,
        "n_train_pairs": len(train_idx),
        "n_val_pairs": len(val_idx),
    }
    prompt.meta["training"] = {k: v for k, v in summary.items() if k != "counts"}
    return prompt, summary
