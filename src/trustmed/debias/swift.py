"""SWiFT: soft-mask weight fine-tuning for post-hoc bias mitigation.

Implements "Soft-Mask Weight Fine-tuning for Bias Mitigation" (SWiFT; MELBA 2025,
arXiv 2508.18826). Given a trained classifier ``f = head ∘ extractor`` and a small labelled
external set with the sensitive attribute:

1. losses on the external set: weighted BCE (prediction) and a soft fairness gap ``B`` (bias);
2. parameter importance: diagonal empirical Fisher of each loss, ``I_p`` and ``I_b``;
3. soft mask per tensor: ``m = tanh(Ĩ_b / (Ĩ_p + 1e-10))`` with min-max normalised importances;
4. step 1: on the external set balanced by group within each label, the head frozen, train the
   extractor with ``β·WBCE + (1−β)·B``, every parameter's optimiser update multiplied by its mask
   (``Δθ ← m ⊙ Δθ``; or, with ``mask_on="gradient"``, every gradient: ``g ← m ⊙ g``),
   ``unlearn_epochs`` epochs at ``lr_forget``;
5. step 2: set to 0 the head weights whose mask exceeds the tensor's mean mask, freeze the
   extractor and train the head with ``(1−β)·WBCE + β·B`` for ``n_epochs`` at ``lr_base``.

Where the mask acts (``mask_on``). The paper multiplies the gradients by the mask. With SGD that
scales each step by ``m``, but Adam divides each gradient by the root of its own running second
moment, so a constant per-entry factor cancels and gradient masking leaves Adam's steps (almost)
unchanged: SWiFT would behave like ``swift_nomask``. By default (``mask_on="update"``) the mask is
applied to the optimiser's update instead: ``θ ← θ_old + m ⊙ (θ_new − θ_old)`` after each
``optimizer.step()`` (:class:`UpdateMask`), which scales the step by ``m`` for every optimiser.
Weight decay is part of the optimiser's update there, so it is masked with it; with
``mask_on="gradient"`` it is added inside the masked gradient (``g ← m ⊙ (g + λθ)``). Either way a
parameter whose mask is 0 does not move at all in step 1 (our reading: the mask gates every
update). Importances
are computed with the model in eval mode. Step 2 trains the head on the frozen extractor's
features, computed once.

>>> import torch
>>> from trustmed.debias.data import GroupedSet
>>> from trustmed.models import ModelSpec, build_model
>>> _ = torch.manual_seed(0)
>>> model = build_model(ModelSpec(arch="tiny_cnn", image_size=8, width=2))
>>> data = GroupedSet(torch.randn(32, 3, 8, 8), [0, 1] * 16, ["light"] * 16 + ["dark"] * 16)
>>> swift = SWiFT(attribute="skin_tone", unlearn_epochs=1, n_epochs=1).fit(model, data)
>>> all(0 <= float(m.min()) and float(m.max()) < 1 for m in swift.mask_.values())
True
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Mapping

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trustmed.debias.base import (
    Cost,
    DebiasEstimator,
    combined_loss,
    make_optimizer,
    require_binary_classifier,
)
from trustmed.debias.data import GroupedSet, balanced_indices, check_external_set, predict_proba
from trustmed.debias.importance import fisher_importance, mask_summary, soft_mask
from trustmed.debias.losses import BIAS_LOSSES, bias_loss, bias_loss_from_probs, wbce
from trustmed.errors import InputError
from trustmed.models import merge_output
from trustmed.train import fit
from trustmed.utils import seed_everything

__all__ = ["MASK_ON", "SWiFT", "UpdateMask", "worst_best_groups", "masked_grad_hook"]

MASK_ON = ("update", "gradient")
"""Where SWiFT's step 1 applies the mask: the optimiser's update (default) or the gradient."""

log = logging.getLogger(__name__)


def worst_best_groups(scores: np.ndarray, data: GroupedSet) -> tuple[str, str]:
    """The groups of ``data`` with the lowest and highest AUC of ``scores`` (one-class groups skipped)."""
    aucs = {}
    for name in data.group_names:
        rows = data.groups == name
        if len(set(data.labels[rows].tolist())) == 2:
            aucs[name] = roc_auc_score(data.labels[rows], scores[rows])
    if len(aucs) < 2:
        raise InputError(
            f"group_reduction='worst_best': fewer than two groups of '{data.attribute}' have both classes"
        )
    ordered = sorted(aucs, key=lambda g: aucs[g])
    return ordered[0], ordered[-1]


def masked_grad_hook(masks: Mapping[str, torch.Tensor], weight_decay: float = 0.0):
    """A ``grad_hook`` for :func:`trustmed.train.fit`: ``g ← m ⊙ (g + weight_decay·θ)`` per masked tensor."""
    cache: dict[str, torch.Tensor] = {}

    def hook(model: nn.Module) -> None:
        for name, param in model.named_parameters():
            if param.grad is None or name not in masks:
                continue
            if name not in cache or cache[name].device != param.device:
                cache[name] = masks[name].to(param.device, param.dtype)
            grad = param.grad + weight_decay * param.detach() if weight_decay else param.grad
            param.grad = cache[name] * grad

    return hook


class UpdateMask:
    """Mask an optimiser's updates: ``θ ← θ_old + m ⊙ (θ_new − θ_old)`` after every ``step()``.

    Registers step pre- and post-hooks on ``optimizer`` (a plain ``torch.optim.Optimizer``, before
    or after ``accelerate`` prepares it: its wrapper calls the same ``step``), so the optimiser, its
    ``state_dict`` and a resumed run are unchanged; :meth:`remove` takes the hooks off. A step that
    does not run (a mixed-precision step skipped for an overflow) triggers neither hook.

    Parameters
    ----------
    optimizer : the optimiser whose updates are masked.
    params : parameter name → parameter (e.g. ``dict(model.named_parameters())``).
    masks : parameter name → mask of the parameter's shape; parameters without one are left alone.

    >>> p = torch.nn.Parameter(torch.zeros(2))
    >>> opt = torch.optim.Adam([p], lr=0.1)
    >>> masking = UpdateMask(opt, {"p": p}, {"p": torch.tensor([0.0, 0.5])})
    >>> p.grad = torch.ones(2)
    >>> opt.step()
    >>> [round(float(v), 4) for v in p.detach()]
    [0.0, -0.05]
    >>> masking.remove()
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        params: Mapping[str, nn.Parameter],
        masks: Mapping[str, torch.Tensor],
    ):
        self._pairs = [(params[n], masks[n]) for n in params if n in masks]
        for name, mask in masks.items():
            if name in params and mask.shape != params[name].shape:
                raise ValueError(f"mask of {name}: shape {tuple(mask.shape)} != {tuple(params[name].shape)}")
        self._old: list[torch.Tensor] = []
        self._handles = [
            optimizer.register_step_pre_hook(self._before),
            optimizer.register_step_post_hook(self._after),
        ]

    @torch.no_grad()
    def _before(self, *_) -> None:
        self._old = [p.detach().clone() for p, _ in self._pairs]

    @torch.no_grad()
    def _after(self, *_) -> None:
        for i, ((param, mask), old) in enumerate(zip(self._pairs, self._old, strict=True)):
            if mask.device != param.device or mask.dtype != param.dtype:
                mask = mask.to(param.device, param.dtype)
                self._pairs[i] = (param, mask)
            param.copy_(torch.addcmul(old, mask, param - old))
        self._old = []

    def remove(self) -> None:
        """Take the hooks off the optimiser."""
        for handle in self._handles:
            handle.remove()
        self._handles = []


class SWiFT(DebiasEstimator):
    """Soft-mask weight fine-tuning (SWiFT, arXiv 2508.18826), scikit-learn shaped.

    Parameters
    ----------
    attribute : name of the sensitive attribute (informational; groups come with the set).
    bias_loss : ``"eodds"``, ``"eopp"`` or ``"dp"``: the fairness gap ``B`` to reduce.
    beta : weight of the prediction loss in step 1 (``β·WBCE + (1−β)·B``) and of the bias loss in
        step 2 (``(1−β)·WBCE + β·B``).
    lr_forget, unlearn_epochs : learning rate and epochs of step 1 (masked extractor).
    lr_base, n_epochs : learning rate and epochs of step 2 (head).
    batch_size : batch size of importances and both steps.
    optimizer : ``"sgd"`` (momentum 0.9; the paper's choice for skin images) or ``"adam"``
        (its choice for chest X-rays).
    weight_decay : weight decay of both steps (masked in step 1).
    mask_on : ``"update"`` (default) multiplies each optimiser update by the mask
        (``Δθ ← m ⊙ Δθ``), which works with any optimiser; ``"gradient"`` multiplies the gradients
        (``g ← m ⊙ (g + λθ)``, the paper's description), which Adam's per-entry scaling largely
        cancels (see the module docstring).
    group_reduction : ``None`` (all K groups) or ``"worst_best"`` (keep the groups with the lowest
        and highest AUC on the external set, as the public code does for attributes with > 2 groups).
    use_mask : ``False`` gives the ``swift_nomask`` ablation (``m ≡ 1``).
    head_step : ``False`` gives the ``swift_step1_only`` ablation.
    seed : seeds balancing, shuffling and initialisation.

    Attributes
    ----------
    bias_importance_, pred_importance_ : dict of Fisher importances per parameter name.
    mask_ : dict of soft masks per parameter name (values in [0, 1)).
    model_ : the debiased copy of the model (the input model is not modified).
    history_ : per-epoch losses of each step, balanced-set size, mask statistics.
    cost_ : wall time, epochs, samples seen and parameter updates.
    groups_ : the groups used (after ``group_reduction``).
    """

    step_names = ("step1", "step2")

    def __init__(
        self,
        attribute: str | None = None,
        *,
        bias_loss: str = "eodds",
        beta: float = 0.1,
        lr_forget: float = 1e-4,
        lr_base: float = 1e-3,
        unlearn_epochs: int = 10,
        n_epochs: int = 10,
        batch_size: int = 64,
        optimizer: str = "sgd",
        weight_decay: float = 5e-4,
        mask_on: str = "update",
        group_reduction: str | None = None,
        use_mask: bool = True,
        head_step: bool = True,
        seed: int = 0,
    ):
        self.attribute = attribute
        self.bias_loss = bias_loss
        self.beta = beta
        self.lr_forget = lr_forget
        self.lr_base = lr_base
        self.unlearn_epochs = unlearn_epochs
        self.n_epochs = n_epochs
        self.batch_size = batch_size
        self.optimizer = optimizer
        self.weight_decay = weight_decay
        self.mask_on = mask_on
        self.group_reduction = group_reduction
        self.use_mask = use_mask
        self.head_step = head_step
        self.seed = seed

    # Parts that BMFT (trustmed.debias.bmft) replaces.
    def _masks(self, bias_imp: dict[str, torch.Tensor], pred_imp: dict[str, torch.Tensor]):
        return soft_mask(bias_imp, pred_imp)

    def _step1_weights(self) -> tuple[float, float]:
        return self.beta, 1.0 - self.beta

    def _step2_weights(self) -> tuple[float, float]:
        return 1.0 - self.beta, self.beta

    @torch.no_grad()
    def _prepare_head(self, head: nn.Linear, masks: Mapping[str, torch.Tensor]) -> None:
        """Zero the head weights whose mask exceeds the tensor's mean mask."""
        for name, param in head.named_parameters():
            mask = masks[f"head.{name}"].to(param.device)
            param[mask > mask.mean()] = 0.0

    def _validate(self) -> None:
        if self.bias_loss not in BIAS_LOSSES:
            raise InputError(f"bias_loss must be one of {BIAS_LOSSES}, got {self.bias_loss!r}")
        if not 0.0 <= self.beta <= 1.0:
            raise InputError(f"beta must lie in [0, 1], got {self.beta}")
        if self.group_reduction not in (None, "worst_best"):
            raise InputError(f"group_reduction must be None or 'worst_best', got {self.group_reduction!r}")
        if self.mask_on not in MASK_ON:
            raise InputError(f"mask_on must be one of {MASK_ON}, got {self.mask_on!r}")

    def _reduce_groups(self, model: nn.Module, external_set: GroupedSet) -> GroupedSet:
        if self.group_reduction is None:
            return external_set
        worst, best = worst_best_groups(predict_proba(model, external_set), external_set)
        keep = np.flatnonzero(np.isin(external_set.groups, [worst, best]))
        reduced = external_set.subset(keep)
        return reduced.with_groups(reduced.groups, (worst, best))

    def fit(self, model: nn.Module, external_set: GroupedSet, val_set: GroupedSet | None = None) -> SWiFT:
        """Debias a copy of ``model`` with ``external_set``.

        Parameters
        ----------
        model : a binary :class:`trustmed.models.Classifier` (``extractor`` + linear ``head``).
        external_set : the labelled external set with the attribute's groups.
        val_set : optional; when given, validation AUC and eodds gap at 0.5 are logged per epoch
            in ``history_`` (nothing is selected with it).
        """
        self._validate()
        source = model
        model = require_binary_classifier(model)
        check_external_set(external_set)
        start = time.perf_counter()
        seed_everything(self.seed)
        model = copy.deepcopy(model)
        data = self._reduce_groups(model, external_set)
        check_external_set(data, "external set after group reduction")
        n_groups = len(data.group_names)
        for p in model.parameters():
            p.requires_grad_(True)

        batches = list(data.loader(self.batch_size))
        self.bias_importance_ = fisher_importance(
            model, batches, combined_loss(0.0, 1.0, kind=self.bias_loss, n_groups=n_groups)
        )
        self.pred_importance_ = fisher_importance(model, batches, combined_loss(1.0, 0.0, n_groups=n_groups))
        if self.use_mask:
            self.mask_ = self._masks(self.bias_importance_, self.pred_importance_)
        else:
            self.mask_ = {n: torch.ones_like(t) for n, t in self.bias_importance_.items()}
        importance_s = time.perf_counter() - start

        balanced = balanced_indices(data.labels, data.groups, seed=self.seed)
        cost = Cost()
        evaluate = self._evaluator(model, val_set)
        step1 = self._step1(model, data, balanced, n_groups, evaluate)
        cost.add(step1)
        step2 = None
        if self.head_step:
            step2 = self._step2(model, data, balanced, n_groups, evaluate)
            cost.add(step2)
        for p in model.parameters():
            p.requires_grad_(True)
        model.eval()
        cost.wall_time_s = time.perf_counter() - start
        self.model_ = merge_output(source, model)
        self.groups_ = data.group_names
        self.cost_ = cost.as_dict()
        self.history_ = {
            "importance_s": importance_s,
            "n_external": len(data),
            "n_balanced": len(balanced),
            "groups": list(data.group_names),
            "mask": mask_summary({n: m for n, m in self.mask_.items() if n.startswith("extractor.")}),
            "step1": step1.history,
            "step2": step2.history if step2 is not None else [],
        }
        return self

    def _evaluator(self, model: nn.Module, val_set: GroupedSet | None):
        if val_set is None:
            return None

        def evaluate(_: nn.Module) -> dict[str, float]:
            scores = predict_proba(model, val_set)
            hard = torch.as_tensor((scores >= 0.5).astype(np.float32))
            gap = bias_loss_from_probs(
                hard,
                torch.as_tensor(val_set.labels),
                torch.as_tensor(val_set.group_index),
                kind="eodds",
                n_groups=len(val_set.group_names),
            )
            return {"val_auc": float(roc_auc_score(val_set.labels, scores)), "val_eodds_gap": float(gap)}

        return evaluate

    def _step1(self, model: nn.Module, data: GroupedSet, balanced: np.ndarray, n_groups: int, evaluate):
        """Masked extractor step: head frozen, every extractor update (or gradient) multiplied by its mask."""
        for p in model.head.parameters():
            p.requires_grad_(False)
        for p in model.extractor.parameters():
            p.requires_grad_(True)
        masks = {n: m for n, m in self.mask_.items() if n.startswith("extractor.")}
        pred_w, bias_w = self._step1_weights()
        on_update = self.mask_on == "update"
        # With update masking the optimiser applies the weight decay and the mask scales it with
        # the rest of the update; with gradient masking the hook adds it inside the mask.
        optimizer = make_optimizer(
            model.extractor.parameters(),
            self.optimizer,
            self.lr_forget,
            weight_decay=self.weight_decay if on_update else 0.0,
        )
        masking = UpdateMask(optimizer, dict(model.named_parameters()), masks) if on_update else None
        loader = data.loader(self.batch_size, shuffle=True, seed=self.seed, indices=balanced)
        try:
            return fit(
                model,
                optimizer,
                loader,
                combined_loss(pred_w, bias_w, kind=self.bias_loss, n_groups=n_groups),
                epochs=self.unlearn_epochs,
                grad_hook=None if on_update else masked_grad_hook(masks, self.weight_decay),
                evaluate=evaluate,
                description="SWiFT step 1",
            )
        finally:
            if masking is not None:
                masking.remove()

    def _step2(self, model: nn.Module, data: GroupedSet, balanced: np.ndarray, n_groups: int, evaluate):
        """Head step: masked head entries zeroed, extractor frozen, head trained on cached features."""
        for p in model.extractor.parameters():
            p.requires_grad_(False)
        for p in model.head.parameters():
            p.requires_grad_(True)
        self._prepare_head(model.head, self.mask_)
        model.extractor.eval()
        device = next(model.parameters()).device
        with torch.no_grad():
            chunks = [
                (model.features(x.to(device)).cpu(), y, g)
                for x, y, g in data.loader(self.batch_size, indices=balanced)
            ]
        features = TensorDataset(*(torch.cat([c[i] for c in chunks]) for i in range(3)))
        generator = torch.Generator().manual_seed(self.seed)
        loader = DataLoader(features, batch_size=self.batch_size, shuffle=True, generator=generator)
        pred_w, bias_w = self._step2_weights()

        def head_loss(head: nn.Module, batch) -> torch.Tensor:
            feats, y, g = (t.to(next(head.parameters()).device) for t in batch)
            logits = head(feats).squeeze(-1)
            loss = logits.new_zeros(())
            if pred_w:
                loss = loss + pred_w * wbce(logits, y)
            if bias_w:
                loss = loss + bias_w * bias_loss(logits, y, g, kind=self.bias_loss, n_groups=n_groups)
            return loss

        optimizer = make_optimizer(
            model.head.parameters(), self.optimizer, self.lr_base, weight_decay=self.weight_decay
        )
        return fit(
            model.head,
            optimizer,
            loader,
            head_loss,
            epochs=self.n_epochs,
            evaluate=evaluate,
            description="SWiFT step 2",
        )
