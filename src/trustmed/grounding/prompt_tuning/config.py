"""Settings of prompt tuning: the default recipe and the one LoRA was measured with.

>>> cfg = LoraPromptTuningConfig()
>>> cfg.lora, cfg.depth, cfg.n_ctx, cfg.output_ctx, cfg.epochs, cfg.lr
(True, 1, 4, False, 12, 0.01)
>>> cfg.device, cfg.precision
('auto', 'fp32')
"""

from __future__ import annotations

from typing import Literal

from trustmed.config import Config
from trustmed.grounding.device import DeviceName, Precision
from trustmed.grounding.inversion import DEFAULT_BAND, Band

__all__ = ["PromptTuningConfig", "LoraPromptTuningConfig"]


class PromptTuningConfig(Config):
    """Settings of :func:`~trustmed.grounding.prompt_tuning.train_prompt`.

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
        grounder reads it, with the mask).
    sharpness : contrast of the attention distribution the ``kl`` and ``outside_mass`` losses read
        (:func:`~trustmed.grounding.prompt_tuning.attention_distribution`); ``None``: the raw map
        divided by its sum.
    token_set, layers, band : the tokens, cross-attention layers and part of the noise schedule
        whose attention is aligned, as in :class:`~trustmed.grounding.zero_shot.GroundingConfig`.
        The tuned prompt records them and the grounder reads the same ones.
    lora : also train LoRA adapters on the cross-attention key/value projections.
    lora_rank, lora_alpha, lora_targets : LoRA settings (module-name suffixes under ``attn2``).
    epochs, batch_size, lr, weight_decay : optimisation (AdamW).
    val_fraction : images held out to select the epoch by validation alignment loss (anatomy
        masks only, no boxes); 0 keeps the last epoch.
    token_noise : share of training sentences that get one random vocabulary token inserted at
        each step (:func:`~trustmed.grounding.prompt_tuning.insert_random_tokens`); validation
        sentences are never changed.
    token_noise_vocab : draw the inserted token only from the tokens of the training sentences
        (default), or from the whole tokenizer vocabulary.
    threads : CPU threads.
    device : where to train (:func:`~trustmed.grounding.device.resolve_device`): ``auto`` (the
        process's GPU when CUDA is available, else the CPU), ``cpu`` or ``cuda``.
    precision : floating-point type of the *frozen* UNet, autoencoder and text encoder (``fp32``,
        ``bf16``, or ``fp16`` on a GPU only, with loss scaling); the context vectors and LoRA
        weights are always trained in float32 and the losses computed in float32.
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
    band: Band = DEFAULT_BAND
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
    device: DeviceName = "auto"
    precision: Precision = "fp32"


class LoraPromptTuningConfig(PromptTuningConfig):
    """The settings the LoRA option was measured with (``benchmarks/prompt_tuning_synthcxr.py``).

    LoRA on the cross-attention key/value projections, 4 context vectors at the input only (no deep
    vectors, no output offsets), the soft-IoU loss, lr 0.01, no token noise, 12 epochs; every other
    setting as in :class:`PromptTuningConfig`. ``trustmed ground tune --lora`` starts from these.
    ``token_noise`` 0 was chosen over 0.5 on SynthCXR validation mIoU (``benchmarks/prompt_defaults.py``);
    the noise helped on the out-of-distribution wording, which no choice may use.
    """

    lora: bool = True
    n_ctx: int = 4
    depth: int | Literal["all"] = 1
    output_ctx: bool = False
    epochs: int = 12
    lr: float = 1e-2
    token_noise: float = 0.0
