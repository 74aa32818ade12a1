"""Anatomy-grounded weakly supervised prompt tuning of a frozen latent diffusion model.

After Vilouras et al., "Anatomy-grounded weakly supervised prompt tuning for chest X-ray latent
diffusion models" (MIDL 2026; arXiv 2506.10633). The paper's full method was not available; what
follows is **trustmed's design** (``docs/grounding.md``):

* the LDM — autoencoder, UNet, text encoder — stays frozen. What is learned is ``n_ctx`` continuous
  context vectors placed after the start token in the text encoder's *input* embeddings (CoOp: Zhou
  et al., "Learning to Prompt for Vision-Language Models", IJCV 2022), their own vectors at every
  further text-encoder layer (deep prompts), by default a learned offset on each context slot's
  text-encoder *output* (after the final layer norm, which would otherwise bound it), and optionally
  LoRA adapters (Hu et al., arXiv 2106.09685; ``peft``) on the cross-attention key/value projections;
* the only supervision besides the images and their sentences is the anatomy named by each
  sentence's location words (:mod:`trustmed.grounding.anatomy`: "right upper zone" → the right
  upper zone's mask). No pathology box is used;
* loss = denoising loss (v- or ε-prediction MSE at a timestep in the band the grounder records)
  + λ · alignment loss on the cross-attention captured *with its graph* at that forward pass
  (:class:`~trustmed.grounding.attention.AttentionRecorder` with ``keep_graph=True``), aggregated
  over the grounder's tokens and normalised over positions into a distribution p:
  ``outside_mass`` = 1 − Σ p · m (m: fraction of each attention cell inside the mask), or ``kl`` =
  KL(m / Σ m ‖ p). Sentences without a location word (or with an anatomical word the vocabulary
  cannot map) contribute only to the denoising loss and are counted;
* training runs through :func:`trustmed.train.fit`; the result is a :class:`TunedPrompt`
  (safetensors + JSON, bound to the base model's weight fingerprint) that
  :class:`~trustmed.grounding.zero_shot.ZeroShotGrounder` applies.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trustmed.config import Config
from trustmed.errors import InputError
from trustmed.grounding.attention import AttentionMap, AttentionRecorder
from trustmed.grounding.ldm import LDM

__all__ = [
    "PromptTuningConfig",
    "LORA_RECIPE",
    "INPUT_RECIPE",
    "TunedPrompt",
    "PromptExamples",
    "build_examples",
    "train_prompt",
    "ldm_fingerprint",
    "attention_distribution",
    "attention_heat",
    "alignment_loss",
]

log = logging.getLogger(__name__)
FORMAT_VERSION = 1


class PromptTuningConfig(Config):
    """Settings of :func:`train_prompt`.

    Attributes
    ----------
    n_ctx : number of learnable context vectors.
    depth : text-encoder layers whose input gets its own context vectors (``all``: every layer):
        1 is CoOp (input embeddings only); more is deep prompt tuning (VPT-deep, Jia et al.,
        ECCV 2022; P-Tuning v2, Liu et al., ACL 2022): each layer's slots are overwritten by that
        layer's own vectors.
    output_ctx : also learn an offset for each context slot's text-encoder *output*, added after the
        final layer norm: what every cross-attention layer's key/value projection reads for that slot
        (prefix tuning, Li & Liang, ACL 2021, learns such per-layer prefixes). The text encoder's
        final layer norm fixes the length of every token it outputs; these offsets are not bound by it.
    ctx_position : ``front`` (after the start token, CoOp) or ``end`` (after the end token; with
        ``token_set: end_and_padding`` they are read by the grounder too).
    ctx_init_std : standard deviation of their random initialisation.
    align_weight : λ, the weight of the alignment loss.
    align_loss : ``outside_mass`` (1 − attention mass inside the anatomy mask), ``kl`` (to the
        normalised mask) or ``soft_iou`` (1 − soft IoU of the min-max normalised map, read as the
        grounder reads it, with the mask; the loss of :data:`LORA_RECIPE`).
    sharpness : contrast of the attention distribution the loss reads
        (:func:`attention_distribution`); ``None``: the raw map divided by its sum.
    token_set, layers : tokens and cross-attention layers whose attention is aligned (and later
        read by the grounder): as in :class:`~trustmed.grounding.zero_shot.GroundingConfig`.
    band : timesteps drawn in [band[0]·T, band[1]·T): where the grounder records.
    lora : also train LoRA adapters on the cross-attention key/value projections.
    lora_rank, lora_alpha, lora_targets : LoRA settings (module-name suffixes under ``attn2``).
    epochs, batch_size, lr, weight_decay : optimisation (AdamW).
    val_fraction : images held out to select the epoch by validation alignment loss (anatomy
        masks only, no boxes); 0 keeps the last epoch.
    token_noise : share of training sentences that get one random vocabulary token inserted at
        each step (:func:`insert_random_tokens`); validation sentences are never changed.
    token_noise_vocab : draw the inserted token only from the tokens of the training sentences
        (default), or from the whole tokenizer vocabulary.
    threads : CPU threads.
    """

    seed: int = 0
    n_ctx: int = 8
    depth: int | Literal["all"] = "all"
    output_ctx: bool = True
    ctx_position: Literal["front", "end"] = "front"
    ctx_init_std: float = 0.02
    align_weight: float = 1.0
    align_loss: Literal["outside_mass", "kl", "soft_iou"] = "soft_iou"
    sharpness: float | None = 0.5
    token_set: Literal["content", "end_and_padding"] = "end_and_padding"
    layers: str | int | list[str] = "bottleneck"
    band: tuple[float, float] = (0.4, 0.6)
    lora: bool = False
    lora_rank: int = 4
    lora_alpha: float = 4.0
    lora_targets: list[str] = ["to_k", "to_v"]
    epochs: int = 24
    batch_size: int = 32
    lr: float = 3e-2
    weight_decay: float = 0.0
    val_fraction: float = 0.1
    token_noise: float = 0.5
    token_noise_vocab: Literal["training", "tokenizer"] = "training"
    threads: int = 1


#: the earlier default, without output offsets: input and deep context vectors, the ``kl`` loss, 12 epochs
#: (``benchmarks/prompt_tuning_synthcxr.py`` keeps it as a row: better laterality, much lower mIoU)
INPUT_RECIPE = {"output_ctx": False, "align_loss": "kl", "epochs": 12}

#: settings the LoRA option was measured with (``benchmarks/prompt_tuning_synthcxr.py``): the soft-IoU
#: loss, which reads the map as the grounder does, 4 context vectors at the input only, token noise
LORA_RECIPE = {
    "lora": True,
    "align_loss": "soft_iou",
    "depth": 1,
    "n_ctx": 4,
    "output_ctx": False,
    "epochs": 12,
    "lr": 1e-2,
    "token_noise": 0.5,
}


def ldm_fingerprint(ldm: LDM) -> str:
    """SHA-256 of the base model's weights (UNet, autoencoder, text encoder; adapters excluded)."""
    cached = getattr(ldm, "_fingerprint", None)
    if cached:
        return cached
    digest = hashlib.sha256()
    for part in ("unet", "autoencoder", "text_encoder"):
        state = getattr(ldm, part).state_dict()
        for key in sorted(state):
            if "lora_" in key:
                continue
            name = key.replace(".base_layer.", ".")
            digest.update(f"{part}.{name}".encode())
            digest.update(state[key].detach().float().cpu().contiguous().numpy().tobytes())
    value = digest.hexdigest()
    object.__setattr__(ldm, "_fingerprint", value)
    return value


def _text_layers(ldm: LDM) -> list[nn.Module]:
    """The text encoder's transformer layers (none when it is not CLIP-style)."""
    model = getattr(ldm.text_encoder, "text_model", ldm.text_encoder)  # transformers 4 nests it
    layers = getattr(getattr(model, "encoder", None), "layers", None)
    return [] if layers is None else list(layers)


def _check_depth(ldm: LDM, depth: int) -> None:
    """Deep prompts (``depth`` > 1) need a CLIP-style text encoder with at least ``depth`` layers."""
    if depth <= 1:
        return
    layers = _text_layers(ldm)
    if not layers:
        raise InputError("deep prompts (depth > 1) need a CLIP-style text encoder (encoder.layers)")
    if depth > len(layers):
        raise InputError(f"depth={depth}: the text encoder has only {len(layers)} layers")


def _lora_config(rank: int, alpha: float, targets: list[str]):
    try:
        from peft import LoraConfig
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise InputError(
            "LoRA needs peft; install the grounding extra: pip install 'trustmed[grounding]'"
        ) from exc
    pattern = r".*attn2\.(" + "|".join(targets) + r")$"
    return LoraConfig(r=rank, lora_alpha=alpha, target_modules=pattern, lora_dropout=0.0, bias="none")


def _inject_lora(unet: nn.Module, rank: int, alpha: float, targets: list[str]) -> nn.Module:
    from peft import inject_adapter_in_model

    return inject_adapter_in_model(_lora_config(rank, alpha, targets), unet)


class TunedPrompt(nn.Module):
    """Learned context vectors (and optional LoRA weights) for one base LDM.

    Parameters
    ----------
    n_ctx, dim
        Number and size of the context vectors (``dim`` = the text encoder's embedding size).
    meta
        What is saved in the JSON: base model fingerprint and source, token set, layers, LoRA
        settings, anatomy vocabulary, training summary.
    """

    def __init__(
        self,
        n_ctx: int,
        dim: int,
        *,
        depth: int = 1,
        output: bool = False,
        meta: dict | None = None,
        init_std: float = 0.02,
        seed: int = 0,
    ):
        super().__init__()
        if n_ctx < 1:
            raise InputError(f"n_ctx={n_ctx}: expected at least one context vector")
        if depth < 1:
            raise InputError(f"depth={depth}: expected at least 1 (the input embeddings)")
        gen = torch.Generator().manual_seed(seed)
        self.ctx = nn.Parameter(torch.randn(n_ctx, dim, generator=gen) * init_std)
        # deep prompts: their own context vectors at the input of text-encoder layers 1 … depth-1
        self.deep_ctx = (
            nn.Parameter(torch.randn(depth - 1, n_ctx, dim, generator=gen) * init_std) if depth > 1 else None
        )
        # output offsets: added to the slots' text-encoder *output*, after its final layer norm;
        # zero at the start, so training begins from the input/deep prompt alone
        self.out_ctx = nn.Parameter(torch.zeros(n_ctx, dim)) if output else None
        self.meta = dict(meta or {})
        self.lora_state: dict[str, torch.Tensor] = {}

    @property
    def n_ctx(self) -> int:
        return int(self.ctx.shape[0])

    def _deep(self) -> list[torch.Tensor]:
        return [] if self.deep_ctx is None else list(self.deep_ctx)

    @property
    def depth(self) -> int:
        """Number of text-encoder layers whose input carries context vectors (1: CoOp)."""
        return 1 if self.deep_ctx is None else 1 + int(self.deep_ctx.shape[0])

    @property
    def output(self) -> bool:
        """Whether the slots' text-encoder outputs carry learned offsets (``output_ctx``)."""
        return self.out_ctx is not None

    @property
    def token_set(self) -> str:
        return self.meta.get("token_set", "end_and_padding")

    # ----------------------------------------------------------------------------------- text
    def tokenize(
        self,
        tokenizer,
        phrases: list[str],
        *,
        truncate: bool = False,
        words=None,
        token_set: str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token ids with ``n_ctx`` placeholder slots, attention mask, token weights.

        The slots follow the start token (``ctx_position: front``, CoOp) or the end token
        (``end``: in a causal text encoder the context then reads the whole phrase).
        """
        from trustmed.grounding.zero_shot import tokenize_phrases

        length = int(tokenizer.model_max_length)
        if length - self.n_ctx < 3:
            raise InputError(f"n_ctx={self.n_ctx} leaves no room for a phrase in {length} tokens")
        try:
            enc, weights = tokenize_phrases(
                tokenizer,
                phrases,
                truncate=truncate,
                words=words,
                token_set=token_set or self.token_set,
                max_length=length - self.n_ctx,
            )
        except InputError as exc:
            raise InputError(
                f"{exc} (the prompt's {self.n_ctx} context vectors take {self.n_ctx} of them)"
            ) from None
        ids, mask = enc["input_ids"], enc["attention_mask"]
        after = self._after(ids, tokenizer.eos_token_id)
        slot = lambda value, like: torch.full((self.n_ctx,), value, dtype=like.dtype)  # noqa: E731
        rows = [
            [
                torch.cat([r[: a + 1], slot(fill, r), r[a + 1 :]])
                for r, a in zip(x, after.tolist(), strict=True)
            ]
            for x, fill in ((ids, int(tokenizer.pad_token_id)), (mask, 1), (weights, 0.0))
        ]
        ids, mask, weights = (torch.stack(r) for r in rows)
        if self.ctx_position == "end":  # the slots belong to the end-and-padding tokens they sit among
            end_weight = weights[torch.arange(len(ids)), after]
            weights[self._slots(ids, tokenizer.eos_token_id)] = end_weight[:, None].expand(-1, self.n_ctx)
        return ids, mask, weights

    @property
    def ctx_position(self) -> str:
        return self.meta.get("ctx_position", "front")

    def _after(self, ids: torch.Tensor, eos_id: int) -> torch.Tensor:
        """Index after which the slots go: the start token (``front``) or the end token (``end``)."""
        if self.ctx_position == "end":
            return (ids == eos_id).int().argmax(dim=1)
        return torch.zeros(len(ids), dtype=torch.long)

    def _slots(self, ids: torch.Tensor, eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, positions) of the context slots in slotted token ids."""
        if self.ctx_position == "end":
            start = (ids == eos_id).int().argmax(dim=1) + 1
        else:
            start = torch.ones(len(ids), dtype=torch.long)
        positions = start[:, None] + torch.arange(self.n_ctx)[None]
        return torch.arange(len(ids))[:, None].expand_as(positions), positions

    def encode_ids(self, ldm: LDM, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Text-encoder output with the context vectors written into the input-embedding slots.

        With output offsets the slots' outputs then get their learned ``out_ctx`` added.
        """
        embedding = ldm.text_encoder.get_input_embeddings()
        rows, positions = self._slots(ids, ldm.tokenizer.eos_token_id)

        def insert(module, inputs, output):
            out = output.clone()
            out[rows, positions] = self.ctx.to(output.dtype).unsqueeze(0).expand(len(ids), -1, -1)
            return out

        handles = [embedding.register_forward_hook(insert)]
        _check_depth(ldm, self.depth)
        for layer, vectors in zip(_text_layers(ldm)[1 : self.depth], self._deep(), strict=True):

            def overwrite(module, args, kwargs, vectors=vectors):
                hidden = args[0].clone()
                hidden[rows, positions] = vectors.to(hidden.dtype).unsqueeze(0).expand(len(ids), -1, -1)
                return (hidden, *args[1:]), kwargs

            handles.append(layer.register_forward_pre_hook(overwrite, with_kwargs=True))
        try:
            out = ldm.encode_text(ids, mask if ldm.text_attention_mask else None)
        finally:
            for handle in handles:
                handle.remove()
        if self.out_ctx is None:
            return out
        offsets = torch.zeros_like(out)
        offsets[rows, positions] = self.out_ctx.to(out.dtype).unsqueeze(0).expand(len(ids), -1, -1)
        return out + offsets

    def encode(
        self,
        ldm: LDM,
        phrases: list[str],
        *,
        truncate: bool = False,
        words=None,
        token_set: str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(context (B, T, D), token weights (B, T)) for ``phrases``, as the grounder needs them."""
        ids, mask, weights = self.tokenize(
            ldm.tokenizer, phrases, truncate=truncate, words=words, token_set=token_set
        )
        return self.encode_ids(ldm, ids, mask), weights

    # ------------------------------------------------------------------------------- binding
    def check_base(self, ldm: LDM) -> None:
        """Refuse a base model other than the one the prompt was trained on."""
        expected = self.meta.get("base_fingerprint")
        actual = ldm_fingerprint(ldm)
        if expected and expected != actual:
            raise InputError(
                f"tuned prompt was trained on base model {expected[:12]} "
                f"({self.meta.get('base_source', '?')}), "
                f"not on {actual[:12]} ({ldm.source or 'this model'}); refusing to apply it"
            )
        dim = int(ldm.text_encoder.get_input_embeddings().weight.shape[1])
        if dim != self.ctx.shape[1]:
            raise InputError(
                f"tuned prompt vectors have size {self.ctx.shape[1]}, the text encoder's are {dim}"
            )

    def apply(self, ldm: LDM) -> LDM:
        """The model to ground with: ``ldm`` itself, or a copy whose UNet carries the LoRA weights."""
        self.check_base(ldm)
        if not self.lora_state:
            return ldm
        lora = self.meta["lora"]
        unet = _inject_lora(copy.deepcopy(ldm.unet), lora["rank"], lora["alpha"], lora["targets"])
        missing = set(self.lora_state) - set(unet.state_dict())
        if missing:
            raise InputError(f"tuned prompt LoRA weights do not fit the model ({len(missing)} unknown keys)")
        unet.load_state_dict(self.lora_state, strict=False)
        bound = dataclasses.replace(ldm, unet=unet.eval())
        object.__setattr__(bound, "_fingerprint", ldm_fingerprint(ldm))
        return bound

    # ------------------------------------------------------------------------------- storage
    def save(self, folder: str | Path) -> Path:
        """Write ``prompt.safetensors`` (context vectors, LoRA weights) and ``prompt.json``."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {"ctx": self.ctx.detach().float().contiguous()}
        if self.deep_ctx is not None:
            tensors["deep_ctx"] = self.deep_ctx.detach().float().contiguous()
        if self.out_ctx is not None:
            tensors["out_ctx"] = self.out_ctx.detach().float().contiguous()
        tensors.update({f"lora.{k}": v.detach().float().contiguous() for k, v in self.lora_state.items()})
        save_file(tensors, folder / "prompt.safetensors")
        meta = {
            "format": "trustmed-tuned-prompt",
            "version": FORMAT_VERSION,
            "n_ctx": self.n_ctx,
            "depth": self.depth,
            **self.meta,
        }
        (folder / "prompt.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
        return folder / "prompt.safetensors"

    @classmethod
    def load(cls, path: str | Path) -> TunedPrompt:
        """Read a tuned prompt from its folder, its ``.safetensors`` or its ``.json`` file.

        A missing, truncated or damaged file, or a pickle-format file in the folder, is an
        :class:`InputError` naming the file.
        """
        from trustmed.io import check_finite, read_json, read_tensors, refuse_pickles

        path = Path(path)
        folder = path if path.is_dir() else path.parent
        weights, meta_path = folder / "prompt.safetensors", folder / "prompt.json"
        if path.is_file() and path.suffix == ".safetensors":
            weights, meta_path = path, path.with_suffix(".json")
        for p in (weights, meta_path):
            if not p.is_file():
                raise InputError(f"tuned prompt {p}: not found")
        refuse_pickles(folder, what="tuned-prompt folder")
        meta = read_json(meta_path, what="tuned prompt")
        if not isinstance(meta, dict) or meta.get("format") != "trustmed-tuned-prompt":
            fmt = meta.get("format") if isinstance(meta, dict) else None
            raise InputError(f"{meta_path}: not a trustmed tuned prompt (format={fmt!r})")
        tensors = read_tensors(weights, what="tuned prompt")
        check_finite(tensors, weights)
        if "ctx" not in tensors:
            raise InputError(f"{weights}: no 'ctx' tensor")
        ctx = tensors["ctx"]
        if ctx.ndim != 2 or ctx.shape[0] != meta.get("n_ctx"):
            raise InputError(
                f"{weights}: context vectors of shape {tuple(ctx.shape)} "
                f"do not match n_ctx={meta.get('n_ctx')}"
            )
        deep = tensors.get("deep_ctx")
        try:
            depth = int(meta.get("depth", 1))
        except (TypeError, ValueError):
            raise InputError(f"{meta_path}: depth must be an integer, got {meta.get('depth')!r}") from None
        if (deep is None) != (depth == 1) or (
            deep is not None and tuple(deep.shape) != (depth - 1, *ctx.shape)
        ):
            raise InputError(
                f"{weights}: deep context vectors {None if deep is None else tuple(deep.shape)} "
                f"do not match depth={depth}"
            )
        out = tensors.get("out_ctx")
        if out is not None and out.shape != ctx.shape:
            raise InputError(f"{weights}: out_ctx {tuple(out.shape)} does not match ctx {tuple(ctx.shape)}")
        for key in ("format", "version", "n_ctx", "depth"):
            meta.pop(key, None)
        prompt = cls(ctx.shape[0], ctx.shape[1], depth=depth, output=out is not None, meta=meta)
        with torch.no_grad():
            prompt.ctx.copy_(ctx)
            if deep is not None:
                prompt.deep_ctx.copy_(deep)
            if out is not None:
                prompt.out_ctx.copy_(out)
        prompt.lora_state = {k[5:]: v for k, v in tensors.items() if k.startswith("lora.")}
        return prompt


# ------------------------------------------------------------------------------------ losses
def attention_distribution(
    maps: list[AttentionMap], weights: torch.Tensor, sharpness: float | None = 2.0
) -> torch.Tensor:
    """Differentiable (B, h, w) distribution over positions of the weighted tokens' attention.

    Each map (B, heads, h, w, T) is averaged over heads and the weighted tokens; maps of different
    resolutions are resized bilinearly to the largest; layers and calls are averaged. With
    ``sharpness=None`` each image's map is divided by its sum. Otherwise it is standardised per
    image and passed through a softmax over positions, ``softmax(sharpness · (a − mean) / std)``:
    like the grounder's min-max normalisation this reads the map's contrast, not its level (the
    cross-attention of a small LDM is close to uniform over tokens, so ``a / Σ a`` is nearly flat and
    a loss on it barely moves).
    """
    if not maps:
        raise InputError("no cross-attention was recorded (check the layers setting)")
    h = max(m.probs.shape[2] for m in maps)
    w = max(m.probs.shape[3] for m in maps)
    norm = weights.sum(-1).clamp_min(1e-12)[:, None, None]
    out = 0.0
    for m in maps:
        a = (m.probs.mean(1) * weights[:, None, None, :].to(m.probs.dtype)).sum(-1) / norm
        if a.shape[-2:] != (h, w):
            a = F.interpolate(a[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
        out = out + a
    out = out / len(maps)
    if sharpness is None:
        return out / out.sum((-2, -1), keepdim=True).clamp_min(1e-12)
    flat = out.flatten(1)
    z = (flat - flat.mean(1, keepdim=True)) / flat.std(1, keepdim=True).clamp_min(1e-8)
    return torch.softmax(sharpness * z, dim=1).view_as(out)


def attention_heat(maps: list[AttentionMap], weights: torch.Tensor) -> torch.Tensor:
    """Differentiable (B, h, w) map in [0, 1] read as the grounder reads it.

    Each map is averaged over heads and the weighted tokens and min-max normalised per image
    (:func:`trustmed.grounding.heatmaps.aggregate_maps`); maps of several layers or calls are
    resized to the largest and averaged.
    """
    from trustmed.grounding.heatmaps import aggregate_maps

    if not maps:
        raise InputError("no cross-attention was recorded (check the layers setting)")
    size = max(m.probs.shape[2] for m in maps)
    return aggregate_maps(maps, weights, size)


def alignment_loss(p: torch.Tensor, mask: torch.Tensor, kind: str = "outside_mass") -> torch.Tensor:
    """Per-image alignment loss between a position distribution ``p`` and a [0, 1] anatomy mask.

    ``mask`` may be larger than ``p``; it is area-pooled to ``p``'s grid (fraction of each cell
    inside the region).

    >>> p = torch.full((1, 2, 2), 0.25)
    >>> m = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    >>> float(alignment_loss(p, m)), round(float(alignment_loss(p, m, "kl")), 4)
    (0.5, 0.6931)
    """
    if mask.shape[-2:] != p.shape[-2:]:
        mask = F.adaptive_avg_pool2d(mask[:, None].float(), p.shape[-2:])[:, 0]
    if kind == "outside_mass":
        return 1.0 - (p * mask).sum((-2, -1))
    if kind == "kl":
        q = mask / mask.sum((-2, -1), keepdim=True).clamp_min(1e-12)
        return (torch.xlogy(q, q) - q * torch.log(p.clamp_min(1e-12))).sum((-2, -1))
    if kind == "soft_iou":
        inter = (p * mask).sum((-2, -1))
        return 1.0 - inter / (p + mask - p * mask).sum((-2, -1)).clamp_min(1e-12)
    raise InputError(f"align_loss {kind!r}: expected outside_mass, kl or soft_iou")


# -------------------------------------------------------------------------------------- data
@dataclasses.dataclass
class PromptExamples:
    """Training pairs: latents, sentences, anatomy masks at the crop size, and what was counted."""

    latents: torch.Tensor
    sentences: list[str]
    masks: torch.Tensor
    has_mask: torch.Tensor
    image_ids: list[str]
    counts: dict


def _crop_mask(mask: np.ndarray, ldm: LDM) -> torch.Tensor:
    from trustmed.grounding.heatmaps import crop_info

    info = crop_info(mask.shape[0], mask.shape[1], ldm.image_size)
    m = torch.from_numpy(mask.astype(np.float32))[None, None]
    m = F.interpolate(m, size=info.resized, mode="area")[0, 0]
    return m[info.top : info.top + info.size, info.left : info.left + info.size]


def build_examples(ldm: LDM, table, anatomy_dir: str | Path, *, batch_size: int = 64) -> PromptExamples:
    """Encode a grounding table's images and map each sentence to its anatomy mask.

    ``table`` is a grounding table (:func:`trustmed.data.mscxr.load_mscxr`; only ``image_id``,
    ``path`` and ``text`` are read — never the boxes). ``anatomy_dir`` holds ``<image_id>.npz``
    files of boolean masks of the image's size (:mod:`trustmed.grounding.anatomy`).
    """
    from trustmed.data.mscxr import read_image
    from trustmed.grounding.anatomy import load_anatomy, location_mask
    from trustmed.grounding.zero_shot import prepare_image

    if len(table) == 0:
        raise InputError("prompt tuning: the training table is empty")
    anatomy_dir = Path(anatomy_dir)
    if not anatomy_dir.is_dir():
        raise InputError(f"anatomy folder {anatomy_dir}: not found")
    counts: Counter = Counter()
    unknown_words: Counter = Counter()
    images: dict[str, torch.Tensor] = {}
    masks, has_mask, sentences, ids = [], [], [], []
    empty = torch.zeros(ldm.image_size, ldm.image_size)
    for row in table.itertuples():
        image = read_image(row.path)
        if row.image_id not in images:
            images[row.image_id] = prepare_image(image, ldm)[0]
        anatomy = load_anatomy(anatomy_dir / f"{row.image_id}.npz", shape=image.shape)
        mask, parse = location_mask(row.text, anatomy)
        counts["pairs"] += 1
        if mask is None:
            counts["unknown_location" if parse.unknown else "no_location"] += 1
            unknown_words.update(parse.unknown)
            masks.append(empty)
        else:
            counts["with_location"] += 1
            masks.append(_crop_mask(mask, ldm))
        has_mask.append(mask is not None)
        sentences.append(row.text)
        ids.append(row.image_id)
    order = list(images)
    with torch.no_grad():
        stacked = torch.stack([images[i] for i in order])
        z = torch.cat(
            [ldm.encode_images(stacked[i : i + batch_size]) for i in range(0, len(order), batch_size)]
        )
    index = {k: i for i, k in enumerate(order)}
    latents = z[[index[i] for i in ids]]
    counts = dict(counts)
    counts["unknown_words"] = dict(unknown_words)
    return PromptExamples(latents, sentences, torch.stack(masks), torch.tensor(has_mask), ids, counts)


# ---------------------------------------------------------------------------------- training
def insert_random_tokens(
    ids: torch.Tensor,
    mask: torch.Tensor,
    weights: torch.Tensor,
    prompt: TunedPrompt,
    eos_id: int,
    insertable: torch.Tensor,
    rate: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Insert one random vocabulary token among the phrase's words of a ``rate`` share of the rows.

    Text noise for robustness to wording the prompt was not tuned on (random insertion, as in EDA:
    Wei & Zou, EMNLP 2019). ``ids``, ``mask`` and ``weights`` are slotted rows
    (:meth:`TunedPrompt.tokenize`); the token goes at a random place between the first word and the
    end token, everything after it moves one place right and the last (padding) column is dropped.
    A row without a free padding column is left as it is. The inserted token gets the weight the
    phrase's words have (0 for ``end_and_padding``, 1 for ``content``). Location words are never
    removed, so the anatomy mask still holds.
    """
    ids, mask, weights = ids.clone(), mask.clone(), weights.clone()
    n, length = ids.shape
    eos = (ids == eos_id).int().argmax(dim=1)
    end = prompt.ctx_position == "end"
    first = 1 if end else 1 + prompt.n_ctx
    last_used = eos + (prompt.n_ctx if end else 0)  # index of the last non-padding column
    chosen = torch.rand(n, generator=generator) < rate
    word_weight = 1.0 if prompt.token_set == "content" else 0.0
    for r in torch.nonzero(chosen & (last_used + 1 < length)).flatten().tolist():
        q = int(torch.randint(first, int(eos[r]) + 1, (1,), generator=generator))
        token = insertable[torch.randint(len(insertable), (1,), generator=generator)]
        ids[r] = torch.cat([ids[r, :q], token.to(ids.dtype), ids[r, q:-1]])
        mask[r] = torch.cat([mask[r, :q], mask.new_ones(1), mask[r, q:-1]])
        weights[r] = torch.cat([weights[r, :q], weights.new_full((1,), word_weight), weights[r, q:-1]])
    return ids, mask, weights


class _Tuner(nn.Module):
    def __init__(self, prompt: TunedPrompt, unet: nn.Module):
        super().__init__()
        self.prompt = prompt
        self.unet = unet


def _step_losses(tuner: _Tuner, ldm: LDM, cfg: PromptTuningConfig, batch, generator=None):
    z0, ids, mask, weights, region, has = batch
    n = z0.shape[0]
    T = ldm.num_train_timesteps
    lo, hi = int(cfg.band[0] * T), max(int(cfg.band[0] * T) + 1, int(cfg.band[1] * T))
    t = torch.randint(lo, hi, (n,), generator=generator)
    a = ldm.alphas_cumprod[t].view(-1, 1, 1, 1).to(z0.dtype)
    noise = torch.randn(z0.shape, generator=generator, dtype=z0.dtype)
    zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
    context = tuner.prompt.encode_ids(ldm, ids, mask)
    with AttentionRecorder(tuner.unet, layers=cfg.layers, keep_graph=True, reduce_heads=True) as rec:
        pred = ldm.unet_forward(zt, t, context)
        maps = rec.maps()
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


def train_prompt(
    ldm: LDM, examples: PromptExamples, cfg: PromptTuningConfig | None = None
) -> tuple[TunedPrompt, dict]:
    """Learn context vectors (and LoRA weights if ``cfg.lora``) on ``examples``; ``ldm`` is unchanged.

    Returns the tuned prompt and a summary (history with the denoising and alignment losses, CPU
    and wall time, counts of sentences with and without a location).
    """
    from trustmed.train import fit, make_accelerator
    from trustmed.utils import seed_everything

    cfg = cfg or PromptTuningConfig()
    if cfg.depth == "all":
        cfg = cfg.model_copy(update={"depth": max(1, len(_text_layers(ldm)))})
    _check_depth(ldm, cfg.depth)  # a depth the text encoder cannot take fails before training
    if int(examples.has_mask.sum()) == 0:
        raise InputError("prompt tuning: no training sentence names a location the anatomy vocabulary maps")
    torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    t_wall, t_cpu = time.perf_counter(), time.process_time()
    base = ldm_fingerprint(ldm)
    unet = copy.deepcopy(ldm.unet)
    for module in (unet, ldm.text_encoder, ldm.autoencoder):
        for p in module.parameters():
            p.requires_grad_(False)
    if cfg.lora:
        unet = _inject_lora(unet, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
        if not any("lora_" in n for n, _ in unet.named_parameters()):
            raise InputError(f"lora_targets {cfg.lora_targets}: no cross-attention projection matched")
    work = dataclasses.replace(ldm, unet=unet)
    from trustmed.grounding.anatomy import HEART_WORDS, LANDMARK_WORDS, SIDES, UNMAPPED_WORDS, ZONE_WORDS

    dim = int(ldm.text_encoder.get_input_embeddings().weight.shape[1])
    meta = {
        "base_fingerprint": base,
        "base_source": ldm.source,
        "token_set": cfg.token_set,
        "ctx_position": cfg.ctx_position,
        "layers": cfg.layers,
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
    prompt = TunedPrompt(
        cfg.n_ctx,
        dim,
        depth=cfg.depth,
        output=cfg.output_ctx,
        meta=meta,
        init_std=cfg.ctx_init_std,
        seed=cfg.seed,
    )
    ids, mask, weights = prompt.tokenize(
        ldm.tokenizer, examples.sentences, truncate=False, token_set=cfg.token_set
    )

    images = np.array(sorted(set(examples.image_ids)))
    rng = np.random.default_rng(cfg.seed)
    n_val = int(round(cfg.val_fraction * len(images)))
    val_images = set(rng.choice(images, size=n_val, replace=False)) if n_val else set()
    is_val = torch.tensor([i in val_images for i in examples.image_ids])
    tensors = (examples.latents, ids, mask, weights, examples.masks, examples.has_mask)
    train_idx = torch.nonzero(~is_val).flatten()
    val_idx = torch.nonzero(is_val).flatten()
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(*(x[train_idx] for x in tensors)),
        batch_size=cfg.batch_size,
        shuffle=True,
    )
    tuner = _Tuner(prompt, unet)
    trainable = [p for p in tuner.parameters() if p.requires_grad]
    parts = {"denoise": 0.0, "align": 0.0, "n": 0}

    special = {ldm.tokenizer.bos_token_id, ldm.tokenizer.eos_token_id, ldm.tokenizer.pad_token_id}
    special |= {ldm.tokenizer.unk_token_id} - {None}
    training_tokens = ids[~is_val].unique().tolist()
    pool = range(len(ldm.tokenizer)) if cfg.token_noise_vocab == "tokenizer" else training_tokens
    insertable = torch.tensor(sorted({int(i) for i in pool} - special))

    def loss_fn(model, batch):
        if cfg.token_noise > 0:
            z0, b_ids, b_mask, b_weights, region, has = batch
            b_ids, b_mask, b_weights = insert_random_tokens(
                b_ids, b_mask, b_weights, prompt, ldm.tokenizer.eos_token_id, insertable, cfg.token_noise
            )
            batch = (z0, b_ids, b_mask, b_weights, region, has)
        denoise, align = _step_losses(model, work, cfg, batch)
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
            gen = torch.Generator().manual_seed(cfg.seed + 17)
            d_sum, a_sum, k = 0.0, 0.0, 0
            with torch.no_grad():
                for s in range(0, len(val_idx), cfg.batch_size):
                    sel = val_idx[s : s + cfg.batch_size]
                    d, a = _step_losses(model, work, cfg, tuple(x[sel] for x in tensors), generator=gen)
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
        accelerator=make_accelerator(cpu=True),
        description="prompt tuning",
    )
    if cfg.lora:
        prompt.lora_state = {k: v.detach().clone() for k, v in unet.state_dict().items() if "lora_" in k}
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
