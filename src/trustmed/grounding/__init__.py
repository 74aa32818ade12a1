"""Phrase grounding in chest X-rays from a frozen latent diffusion model's cross-attention.

Zero-shot grounding after Vilouras et al., "Zero-Shot Medical Phrase Grounding with Off-the-shelf
Diffusion Models" (IEEE J-BHI; arXiv 2404.12920): :class:`AttentionRecorder` (capture),
:class:`ZeroShotGrounder` (pipeline), :func:`load_ldm` (MONAI bundle or diffusers folders).
Anatomy-grounded prompt tuning (after arXiv 2506.10633): :func:`train_prompt` learns a
:class:`TunedPrompt` from sentences and anatomy masks (:mod:`trustmed.grounding.anatomy`).
The commands' pipelines (:func:`ground_image`, :func:`evaluate_grounding`, :func:`tune_prompt`) are
in :mod:`trustmed.grounding.pipeline`.
"""

from trustmed.grounding.attention import AttentionMap, AttentionRecorder, cross_attention_layers
from trustmed.grounding.ldm import LDM, load_ldm, tiny_ldm_path
from trustmed.grounding.pipeline import evaluate_grounding, evaluate_maps, ground_image, tune_prompt
from trustmed.grounding.prompt_tuning import (
    LoraPromptTuningConfig,
    PromptTuningConfig,
    TunedPrompt,
    build_examples,
    train_prompt,
)
from trustmed.grounding.zero_shot import GroundingConfig, ZeroShotGrounder, ground_table, score_table

__all__ = [
    "AttentionMap",
    "AttentionRecorder",
    "cross_attention_layers",
    "LDM",
    "load_ldm",
    "tiny_ldm_path",
    "PromptTuningConfig",
    "LoraPromptTuningConfig",
    "TunedPrompt",
    "build_examples",
    "train_prompt",
    "GroundingConfig",
    "ZeroShotGrounder",
    "ground_table",
    "score_table",
    "ground_image",
    "evaluate_grounding",
    "evaluate_maps",
    "tune_prompt",
]
