"""Train a tiny text-conditioned latent diffusion model on SynthCXR (on a CPU, or a GPU).

The architecture family is the one of the MONAI model-zoo chest X-ray LDM used for zero-shot
grounding (Vilouras et al., arXiv 2404.12920; Pinaya et al., "Brain Imaging Generation with Latent
Diffusion Models", arXiv 2209.07162): a MONAI ``AutoencoderKL`` (L1 + KL), then a MONAI
``DiffusionModelUNet`` with cross-attention to a CLIP text encoder, trained with the v-prediction
loss and 10 % of captions dropped (so the empty prompt is a valid unconditional input). Everything
is scaled down (64² images, 16² latents, cross-attention at 8²) and the text encoder, a small
``transformers`` CLIP with a word-level tokenizer over the SynthCXR vocabulary, is trained with the
UNet. Both stages run through :func:`trustmed.train.fit`, on ``device`` with accelerate's mixed
``precision`` (:mod:`trustmed.grounding.device`); timesteps and noise are drawn on the CPU, so a seed
draws the same ones on every device, and the saved model is float32 weights from the CPU (stored as
float16, as before).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import model_validator
from torch import nn

from trustmed.config import Config
from trustmed.errors import InputError
from trustmed.grounding.device import DeviceName, Precision

__all__ = ["TinyLDMConfig", "train_tiny_ldm", "prepare_images", "captions_by_image"]

log = logging.getLogger(__name__)

TEXT_ATTENTION_MASK = True
"""The text encoder is trained with the captions' padding mask (recorded in ``inference.json``)."""


class TinyLDMConfig(Config):
    """Settings of :func:`train_tiny_ldm` (defaults produced the shipped model).

    ``device`` (``auto``, ``cpu``, ``cuda``; :func:`~trustmed.grounding.device.resolve_device`) is
    where both stages train; ``precision`` is accelerate's mixed precision (``fp32``: none;
    ``bf16``; ``fp16``, on a GPU only, with loss scaling); the weights are float32 either way.
    """

    seed: int = 0
    n_images: int = 2500
    data_image_size: int = 128
    image_size: int = 64
    ae_channels: list[int] = [8, 16, 16]
    latent_channels: int = 3
    ae_epochs: int = 6
    ae_lr: float = 2e-3
    kl_weight: float = 1e-4
    unet_channels: list[int] = [32, 64]
    unet_head_channels: int = 32
    unet_attention_levels: list[bool] | None = None
    text_hidden: int = 64
    text_layers: int = 2
    max_length: int = 24
    unet_epochs: int = 36
    unet_lr: float = 1e-3
    batch_size: int = 32
    caption_dropout: float = 0.1
    caption_sentences: Literal["all", "one"] = "one"
    num_train_timesteps: int = 1000
    beta_start: float = 0.0015
    beta_end: float = 0.0205
    prediction_type: str = "v_prediction"
    threads: int = 2
    device: DeviceName = "auto"
    precision: Precision = "fp32"

    @model_validator(mode="after")
    def _check_attention_levels(self):
        levels = self.unet_attention_levels
        if levels is not None and (len(levels) != len(self.unet_channels) or not any(levels)):
            raise ValueError(
                f"unet_attention_levels {levels}: expected one flag per UNet level "
                f"({len(self.unet_channels)}), at least one true"
            )
        return self


def prepare_images(paths: list[str], size: int) -> torch.Tensor:
    """Read images and resize them to (N, 1, size, size) in [0, 1]."""
    from trustmed.data.mscxr import read_image

    batch = torch.from_numpy(np.stack([read_image(p) for p in paths]))[:, None]
    return F.interpolate(
        batch, size=(size, size), mode="bilinear", antialias=True, align_corners=False
    ).clamp(0, 1)


def captions_by_image(table) -> tuple[list[str], list[list[str]]]:
    """Unique image paths and, for each, the list of its sentences."""
    grouped = table.groupby("path", sort=True)["text"].apply(list)
    return list(grouped.index), list(grouped.to_numpy())


class _TextUNet(nn.Module):
    """The UNet and the text encoder trained with it; its forward pass is the UNet's prediction."""

    def __init__(self, unet: nn.Module, text_encoder: nn.Module):
        super().__init__()
        self.unet = unet
        self.text_encoder = text_encoder

    def forward(self, zt, t, input_ids, attention_mask):
        context = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask)
        return self.unet(zt, timesteps=t, context=context.last_hidden_state)


def _ae_loss(kl_weight):
    def loss(model, batch):
        (x,) = batch
        recon, mu, sigma = (y.float() for y in model(x))
        kl = 0.5 * (mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2) + 1e-8) - 1).mean()
        return (recon - x).abs().mean() + kl_weight * kl

    return loss


def _diffusion_loss(alphas, prediction_type, tokenizer, sentences, cfg, rng):
    def loss(model, batch):
        z0, index = batch
        batch_sentences = [sentences[i] for i in index.tolist()]
        one = cfg.caption_sentences == "one"
        captions = _captions(rng, batch_sentences, cfg.caption_dropout, one=one)
        enc = tokenizer(
            captions, padding="max_length", truncation=True, max_length=cfg.max_length, return_tensors="pt"
        )
        # drawn on the CPU (the same draws on every device), then moved to the batch's device
        t = torch.randint(0, alphas.numel(), (z0.shape[0],))
        a = alphas[t].view(-1, 1, 1, 1)
        noise = torch.randn(z0.shape, dtype=z0.dtype)
        device = z0.device
        t, a, noise = t.to(device), a.to(device), noise.to(device)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        mask = enc["attention_mask"].to(device) if TEXT_ATTENTION_MASK else None
        pred = model(zt, t, enc["input_ids"].to(device), mask).float()
        target = noise if prediction_type == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * z0
        return F.mse_loss(pred, target)

    return loss


def _captions(
    rng: np.random.Generator, sentences: list[list[str]], dropout: float, *, one: bool = False
) -> list[str]:
    """One caption per image: its sentences in random order (the report), or one of them drawn at
    random with ``one``, or empty with ``dropout``."""
    out = []
    for sents in sentences:
        if rng.random() < dropout:
            out.append("")
            continue
        if one:
            out.append(sents[int(rng.integers(len(sents)))])
            continue
        order = rng.permutation(len(sents))
        out.append(" . ".join(sents[i] for i in order))
    return out


def train_tiny_ldm(cfg: TinyLDMConfig, out_dir: str | Path, *, data_root: str | Path | None = None) -> dict:
    """Generate (or read) SynthCXR, train the autoencoder then the UNet + text encoder, save the model.

    Parameters
    ----------
    cfg
        Settings.
    out_dir
        Where the model folder is written (MONAI bundle-style layout).
    data_root
        An existing SynthCXR (MS-CXR format) folder; default: generated under ``out_dir/synthcxr``
        with ``cfg.n_images`` images and ``cfg.seed``.

    Returns
    -------
    dict
        Training summary (losses, wall time, parameter counts).
    """
    from monai.networks.nets import AutoencoderKL, DiffusionModelUNet

    from trustmed.data.mscxr import load_mscxr
    from trustmed.data.synth.cxr import make_synthcxr, sentence_vocabulary
    from trustmed.grounding.device import accelerator_on, check_precision, mixed_precision, resolve_device
    from trustmed.grounding.ldm import (
        build_text_encoder,
        build_tokenizer,
        make_alphas_cumprod,
        save_monai_folder,
    )
    from trustmed.train import fit
    from trustmed.utils import seed_everything

    if cfg.prediction_type not in ("epsilon", "v_prediction"):
        raise InputError(f"prediction_type {cfg.prediction_type!r}: expected epsilon or v_prediction")
    device = resolve_device(cfg.device)
    check_precision(device, cfg.precision)  # fp16 on a CPU fails before the data is generated
    torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    if data_root is None:
        data_root = out_dir / "synthcxr"
        make_synthcxr(data_root, n_images=cfg.n_images, image_size=cfg.data_image_size, seed=cfg.seed)
    table = load_mscxr(data_root, split="train")
    paths, sentences = captions_by_image(table)
    images = prepare_images(paths, cfg.image_size)
    log.info("training on %d images (%d sentences)", len(paths), len(table))

    accelerator = accelerator_on(device, mixed_precision(cfg.precision))
    ae_def = {
        "spatial_dims": 2,
        "in_channels": 1,
        "out_channels": 1,
        "channels": list(cfg.ae_channels),
        "latent_channels": cfg.latent_channels,
        "num_res_blocks": 1,
        "attention_levels": [False] * len(cfg.ae_channels),
        "with_encoder_nonlocal_attn": False,
        "with_decoder_nonlocal_attn": False,
        "norm_num_groups": 8,
    }
    ae = AutoencoderKL(**ae_def)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(images), batch_size=cfg.batch_size, shuffle=True
    )
    ae_result = fit(
        ae,
        torch.optim.Adam(ae.parameters(), lr=cfg.ae_lr),
        loader,
        _ae_loss(cfg.kl_weight),
        epochs=cfg.ae_epochs,
        accelerator=accelerator,
        description="autoencoder",
    )
    ae = accelerator.unwrap_model(ae).eval()
    with torch.no_grad():
        mu = torch.cat(
            [
                ae.encode(images[i : i + 256].to(accelerator.device))[0].cpu()
                for i in range(0, len(images), 256)
            ]
        )
    scale = float(1.0 / mu.std())

    vocabulary = sentence_vocabulary() + ["."]
    tokenizer = build_tokenizer(vocabulary, max_length=cfg.max_length)
    text_encoder = build_text_encoder(
        tokenizer, hidden_size=cfg.text_hidden, layers=cfg.text_layers, seed=cfg.seed
    )
    n_levels = len(cfg.unet_channels)
    attention = cfg.unet_attention_levels or [False] * (n_levels - 1) + [True]
    net_def = {
        "spatial_dims": 2,
        "in_channels": cfg.latent_channels,
        "out_channels": cfg.latent_channels,
        "channels": list(cfg.unet_channels),
        "attention_levels": list(attention),
        "num_res_blocks": 1,
        "num_head_channels": [
            min(cfg.unet_head_channels, ch) if a else 0
            for a, ch in zip(attention, cfg.unet_channels, strict=True)
        ],
        "with_conditioning": True,
        "transformer_num_layers": 1,
        "cross_attention_dim": cfg.text_hidden,
        "norm_num_groups": 16,
    }
    unet = DiffusionModelUNet(**net_def)
    model = _TextUNet(unet, text_encoder)
    alphas = make_alphas_cumprod(cfg.num_train_timesteps, cfg.beta_start, cfg.beta_end)
    diffusion_loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(mu * scale, torch.arange(len(paths))),
        batch_size=cfg.batch_size,
        shuffle=True,
    )
    rng = np.random.default_rng(cfg.seed)
    unet_result = fit(
        model,
        torch.optim.AdamW(model.parameters(), lr=cfg.unet_lr, weight_decay=1e-4),
        diffusion_loader,
        _diffusion_loss(alphas, cfg.prediction_type, tokenizer, sentences, cfg, rng),
        epochs=cfg.unet_epochs,
        accelerator=accelerator,
        description="diffusion",
    )
    # saved from the CPU in float32 (``save_monai_folder`` stores float16), whatever trained it
    ae = ae.to("cpu", torch.float32)
    model = accelerator.unwrap_model(model).to("cpu", torch.float32).eval()
    config = {
        "autoencoder_def": {"_target_": "monai.networks.nets.AutoencoderKL", **ae_def},
        "network_def": {"_target_": "monai.networks.nets.DiffusionModelUNet", **net_def},
        "scheduler": {
            "num_train_timesteps": cfg.num_train_timesteps,
            "beta_start": cfg.beta_start,
            "beta_end": cfg.beta_end,
            "schedule": "scaled_linear_beta",
            "prediction_type": cfg.prediction_type,
        },
        "scale_factor": scale,
        "image_size": cfg.image_size,
        "image_channels": 1,
        "value_range": [0.0, 1.0],
        "text_attention_mask": TEXT_ATTENTION_MASK,  # as the text encoder was trained
        "training": cfg.model_dump(),
    }
    save_monai_folder(
        out_dir / "model",
        autoencoder=ae,
        unet=model.unet,
        text_encoder=model.text_encoder,
        tokenizer=tokenizer,
        config=config,
    )
    return {
        "autoencoder_history": ae_result.history,
        "diffusion_history": unet_result.history,
        "wall_time_s": time.perf_counter() - t0,
        "n_images": len(paths),
        "n_sentences": len(table),
        "latent_scale": scale,
        "parameters": {
            "autoencoder": sum(p.numel() for p in ae.parameters()),
            "unet": sum(p.numel() for p in model.unet.parameters()),
            "text_encoder": sum(p.numel() for p in model.text_encoder.parameters()),
        },
    }
