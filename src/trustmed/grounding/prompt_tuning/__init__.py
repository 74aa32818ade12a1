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
  over the grounder's tokens: ``soft_iou`` on the map as the grounder reads it, or, on a
  distribution p over positions, ``outside_mass`` = 1 − Σ p · m (m: fraction of each attention cell
  inside the mask) or ``kl`` = KL(m / Σ m ‖ p). Sentences without a location word (or with an
  anatomical word the vocabulary cannot map) contribute only to the denoising loss and are counted;
* training runs through :func:`trustmed.train.fit`; the result is a :class:`TunedPrompt`
  (safetensors + JSON, bound to the base model's weight fingerprint and to the ``token_set``,
  ``layers`` and ``band`` it was trained for) that
  :class:`~trustmed.grounding.zero_shot.ZeroShotGrounder` applies.

Modules: :mod:`~.config` (settings), :mod:`~.artefact` (the saved prompt), :mod:`~.examples`
(training pairs and text noise), :mod:`~.losses` (alignment losses), :mod:`~.trainer` (the loop).
"""

from trustmed.grounding.prompt_tuning.artefact import TunedPrompt, ldm_fingerprint
from trustmed.grounding.prompt_tuning.config import LoraPromptTuningConfig, PromptTuningConfig
from trustmed.grounding.prompt_tuning.examples import PromptExamples, build_examples, insert_random_tokens
from trustmed.grounding.prompt_tuning.losses import alignment_loss, attention_distribution, attention_heat
from trustmed.grounding.prompt_tuning.trainer import train_prompt

__all__ = [
    "PromptTuningConfig",
    "LoraPromptTuningConfig",
    "TunedPrompt",
    "ldm_fingerprint",
    "PromptExamples",
    "build_examples",
    "insert_random_tokens",
    "attention_distribution",
    "attention_heat",
    "alignment_loss",
    "train_prompt",
]
