"""The methods do what they are for: on a planted bias, SWiFT and finetune_fair cut the ERM gap.

The problem (:mod:`_planted`): a feature that carries the label in one group only, which ERM uses;
balancing the external set does not remove the gap it causes (plain fine-tuning keeps it), a
fairness objective does. Everything is measured on a held-out set of the same distribution.
Checked on seeds 0-4 when written (ERM gap 0.19-0.24; SWiFT keeps at most 0.74 of it, finetune_fair
at most 0.58; AUC drops by at most 0.08); the test runs two seeds.
"""

import sys
from pathlib import Path

import pytest

from trustmed.debias.registry import get_method
from trustmed.debias.swift import SWiFT

sys.path.insert(0, str(Path(__file__).parent))
from _planted import auc_and_gap, erm_model, planted_set  # noqa: E402


def _estimator(name: str, seed: int):
    if name == "swift":
        return SWiFT(
            optimizer="adam",
            lr_forget=1e-2,
            lr_base=1e-2,
            unlearn_epochs=10,
            n_epochs=10,
            batch_size=64,
            weight_decay=0.0,
            seed=seed,
        )
    settings = {"lr": 1e-2, "lam": 1.0, "batch_size": 64, "optimizer": "adam", "epochs": 20}
    return get_method("finetune_fair").build(settings, seed=seed)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", ["swift", "finetune_fair"])
def test_method_cuts_the_planted_gap_on_held_out_data(name, seed):
    train, external, test = (
        planted_set(2000, 100 + seed),
        planted_set(1000, 200 + seed),
        planted_set(2000, 300 + seed),
    )
    erm = erm_model(train, seed)
    erm_auc, erm_gap = auc_and_gap(erm, test)
    assert erm_gap > 0.15  # the planted bias is there
    fitted = _estimator(name, seed).fit(erm, external)
    auc, gap = auc_and_gap(fitted.model_, test)
    assert gap < 0.8 * erm_gap and erm_gap - gap > 0.05, (erm_gap, gap)
    assert auc > erm_auc - 0.1 and auc > 0.8, (erm_auc, auc)
