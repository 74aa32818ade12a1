"""BMFT: bias-based weight masking fine-tuning, a baseline of post-hoc debiasing.

Implements the method of "Achieving Fairness via Bias-based Weight Masking Fine-tuning"
(BMFT; FAIMI 2024, arXiv 2408.06890) on the same machinery as SWiFT
(:mod:`trustmed.debias.swift`), with its two differences:

* a **hard** mask, ``M = 1[r > mean r]`` with ``r = Ĩ_b/(Ĩ_p + 1e-10)`` the ratio of the min-max
  normalised (per tensor) bias and prediction Fisher importances, and one threshold: the mean of
  ``r`` over every entry of every extractor tensor, as the public BMFT code computes it
  (:func:`~trustmed.debias.importance.hard_mask`). The head is left out of the mask and of the
  threshold (step 1 does not train it; step 2 re-initialises it);
* the classification head is **re-initialised** and then trained alone on the frozen extractor
  with the weighted BCE.

Step 1 (masked extractor fine-tuning with ``β·WBCE + (1−β)·B``, head frozen) is SWiFT's, with the
hard mask in place of the soft one.

>>> import torch
>>> from trustmed.debias.data import GroupedSet
>>> from trustmed.models import ModelSpec, build_model
>>> _ = torch.manual_seed(0)
>>> model = build_model(ModelSpec(arch="tiny_cnn", image_size=8, width=2))
>>> data = GroupedSet(torch.randn(32, 3, 8, 8), [0, 1] * 16, ["light"] * 16 + ["dark"] * 16)
>>> bmft = BMFT(unlearn_epochs=1, n_epochs=1).fit(model, data)
>>> sorted({float(v) for m in bmft.mask_.values() for v in m.unique()}) in ([0.0, 1.0], [0.0], [1.0])
True
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from trustmed.debias.importance import hard_mask
from trustmed.debias.swift import SWiFT

__all__ = ["BMFT"]


class BMFT(SWiFT):
    """Bias-based weight masking fine-tuning (arXiv 2408.06890); parameters as :class:`SWiFT`.

    ``mask_`` holds the hard 0/1 masks of the extractor's tensors (the head has none); the head is
    re-initialised (seeded) before step 2, which trains it with the weighted BCE only.
    """

    def _masks(self, bias_imp, pred_imp):
        return hard_mask(bias_imp, pred_imp)

    def _step2_weights(self) -> tuple[float, float]:
        return 1.0, 0.0

    @torch.no_grad()
    def _prepare_head(self, head: nn.Linear, masks: Mapping[str, torch.Tensor]) -> None:
        torch.manual_seed(self.seed)
        head.reset_parameters()
