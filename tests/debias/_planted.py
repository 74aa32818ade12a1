"""A small tabular problem with a planted bias, shared by the efficacy tests (not a test module).

The label ``y`` is weakly readable from feature 0 in both groups; feature 1 carries it strongly,
but in group ``a`` only (pure noise in ``b``); feature 2 reveals the group. An ERM model leans on
feature 1, so at threshold 0.5 group ``a`` gets a much higher TPR and lower FPR than ``b``: an
equalised-odds gap that balancing the external set by group does not remove (feature 1 stays
predictive in ``a``), only a fairness objective does. Held-out sets come from the same
distribution.
"""

import numpy as np
import torch
from torch import nn

from trustmed.debias.data import GroupedSet
from trustmed.debias.losses import bias_loss_from_probs
from trustmed.models.classifier import Classifier

N_FEATURES = 6


def planted_set(n: int, seed: int) -> GroupedSet:
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, 2, n)  # 1 = "a", 0 = "b"
    labels = rng.integers(0, 2, n)
    x = rng.normal(size=(n, N_FEATURES))
    x[:, 0] += 1.5 * labels
    x[:, 1] = groups * (2.0 * labels - 1.0) + 0.5 * rng.normal(size=n)
    x[:, 2] += 1.0 * groups
    names = np.where(groups == 1, "a", "b")
    return GroupedSet(torch.as_tensor(x, dtype=torch.float32), labels, names, attribute="site")


def erm_model(train: GroupedSet, seed: int, steps: int = 300) -> Classifier:
    torch.manual_seed(seed)
    extractor = nn.Sequential(nn.Linear(N_FEATURES, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU())
    model = Classifier(extractor, nn.Linear(8, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = train.images, torch.as_tensor(train.labels, dtype=torch.float32)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.binary_cross_entropy_with_logits(model(x), y).backward()
        optimizer.step()
    return model.eval()


def auc_and_gap(model: nn.Module, data: GroupedSet) -> tuple[float, float]:
    """AUC and equalised-odds gap (mean of the TPR and FPR gaps) at threshold 0.5."""
    from sklearn.metrics import roc_auc_score

    with torch.no_grad():
        scores = torch.sigmoid(model(data.images))
    gap = bias_loss_from_probs(
        (scores >= 0.5).float(),
        torch.as_tensor(data.labels),
        torch.as_tensor(data.group_index),
        kind="eodds",
        n_groups=len(data.group_names),
    )
    return float(roc_auc_score(data.labels, scores.numpy())), float(gap)
