"""SWiFT's mechanics: balanced external set, masked step 1, head step 2, frozen parts, bad input."""

import numpy as np
import pytest
import torch

from trustmed.debias.data import GroupedSet, balanced_indices
from trustmed.debias.swift import SWiFT
from trustmed.errors import InputError
from trustmed.models import ModelSpec, build_model


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model(ModelSpec(arch="tiny_cnn", image_size=8, width=4))


def _data(n: int = 96, k: int = 2, seed: int = 0) -> GroupedSet:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    groups = np.array([f"g{i}" for i in rng.integers(0, k, n)])
    images = torch.as_tensor(rng.normal(size=(n, 3, 8, 8)), dtype=torch.float32)
    images += torch.as_tensor(labels, dtype=torch.float32).view(-1, 1, 1, 1)
    return GroupedSet(images, labels, groups, attribute="tone")


def _params(module):
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def test_balanced_within_each_label_by_group():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 500)
    groups = rng.choice(["a", "b", "c"], 500, p=[0.6, 0.3, 0.1])
    idx = balanced_indices(labels, groups, seed=0)
    assert len(set(idx.tolist())) == len(idx)
    for label in (0, 1):
        counts = {g: int(((labels == label) & (groups == g)).sum()) for g in "abc"}
        kept = {g: int(((labels[idx] == label) & (groups[idx] == g)).sum()) for g in "abc"}
        assert set(kept.values()) == {min(counts.values())}, (counts, kept)
    # Seeded: same seed, same subset; another seed, another subset.
    assert np.array_equal(idx, balanced_indices(labels, groups, seed=0))
    assert not np.array_equal(idx, balanced_indices(labels, groups, seed=1))


def test_balancing_skips_a_group_absent_from_a_label():
    labels = np.array([1, 1, 1, 0, 0, 0, 0])
    groups = np.array(["a", "a", "a", "a", "b", "b", "b"])
    idx = balanced_indices(labels, groups, seed=0)
    assert sorted(zip(labels[idx].tolist(), groups[idx].tolist(), strict=True)) == [
        (0, "a"),
        (0, "b"),
        (1, "a"),
        (1, "a"),
        (1, "a"),
    ]


def test_step1_moves_only_unmasked_extractor_weights_and_not_the_head():
    model = _model()
    before = _params(model)
    swift = SWiFT(unlearn_epochs=3, head_step=False, lr_forget=0.05, batch_size=32).fit(model, _data())
    after = _params(swift.model_)
    moved_any = False
    for name, mask in swift.mask_.items():
        if not name.startswith("extractor."):
            continue
        zero = (mask == 0).cpu()
        assert zero.any(), name  # min-max normalisation gives every tensor at least one zero
        assert torch.equal(after[name][zero], before[name][zero]), name
        moved_any |= bool((after[name][~zero] != before[name][~zero]).any())
    assert moved_any
    for name in ("head.weight", "head.bias"):
        assert torch.equal(after[name], before[name])
    # The input model is untouched.
    assert all(torch.equal(v, before[k]) for k, v in _params(model).items())


def test_step2_zeroes_high_mask_head_weights_and_freezes_the_extractor():
    model = _model()
    data = _data()
    kwargs = dict(unlearn_epochs=2, lr_forget=0.05, batch_size=32, seed=3)
    step1 = SWiFT(head_step=False, **kwargs).fit(model, data)
    zeroed = SWiFT(n_epochs=0, **kwargs).fit(model, data)
    full = SWiFT(n_epochs=3, lr_base=0.05, **kwargs).fit(model, data)
    s1, z, f = _params(step1.model_), _params(zeroed.model_), _params(full.model_)
    # Step 2 does not touch the extractor: parameters and batch-norm statistics.
    for name in s1:
        if name.startswith("extractor."):
            assert torch.equal(s1[name], z[name]) and torch.equal(s1[name], f[name]), name
    mask = zeroed.mask_["head.weight"]
    high = mask > mask.mean()
    assert high.any() and (~high).any()
    assert (z["head.weight"][high] == 0).all()
    assert torch.equal(z["head.weight"][~high], s1["head.weight"][~high])
    assert not torch.equal(f["head.weight"], z["head.weight"])  # then the head is trained
    assert len(full.history_["step2"]) == 3 and full.cost_["epochs"] == 5


def test_nomask_ablation_uses_unit_mask():
    swift = SWiFT(use_mask=False, unlearn_epochs=1, n_epochs=1, batch_size=32).fit(_model(), _data())
    assert all(bool((m == 1).all()) for m in swift.mask_.values())


def test_k_groups_and_worst_best_reduction():
    data = _data(n=160, k=4)
    full = SWiFT(unlearn_epochs=1, n_epochs=1, batch_size=32).fit(_model(), data)
    assert full.groups_ == ("g0", "g1", "g2", "g3")


def test_worst_best_keeps_the_lowest_and_highest_auc_groups():
    from trustmed.models.classifier import Classifier

    # Scores are x[:, 0] (identity extractor, head picks feature 0). Per group, x[:, 0] is the
    # label plus noise scaled so the AUCs are ordered: g2 worst (labels reversed), g0 best.
    rng = np.random.default_rng(0)
    n_per, names = 40, ["g0", "g1", "g2", "g3"]
    signs_noise = {"g0": (1.0, 0.1), "g1": (1.0, 1.0), "g2": (-1.0, 0.1), "g3": (1.0, 3.0)}
    xs, ys, gs = [], [], []
    for g in names:
        y = np.tile([0, 1], n_per // 2)
        sign, noise = signs_noise[g]
        x = rng.normal(size=(n_per, 2))
        x[:, 0] = sign * y + noise * rng.normal(size=n_per)
        xs.append(x)
        ys.append(y)
        gs += [g] * n_per
    data = GroupedSet(torch.tensor(np.concatenate(xs), dtype=torch.float32), np.concatenate(ys), gs)
    extractor = torch.nn.Linear(2, 2)
    head = torch.nn.Linear(2, 1)
    with torch.no_grad():
        extractor.weight.copy_(torch.eye(2))
        extractor.bias.zero_()
        head.weight.copy_(torch.tensor([[1.0, 0.0]]))
        head.bias.zero_()
    swift = SWiFT(unlearn_epochs=1, n_epochs=1, batch_size=32, group_reduction="worst_best")
    swift.fit(Classifier(extractor, head), data)
    assert swift.groups_ == ("g2", "g0")  # (worst, best)
    assert swift.history_["n_external"] == 2 * n_per


def test_cost_and_history_are_recorded():
    data = _data()
    swift = SWiFT(unlearn_epochs=2, n_epochs=1, batch_size=32).fit(_model(), data, val_set=data)
    n_bal = swift.history_["n_balanced"]
    assert swift.cost_["samples_seen"] == 3 * n_bal
    assert swift.cost_["wall_time_s"] > 0
    assert {"val_auc", "val_eodds_gap"} <= set(swift.history_["step1"][0])


def test_bad_external_sets_are_rejected():
    data = _data()
    one_group = GroupedSet(data.images, data.labels, ["x"] * len(data), attribute="tone")
    with pytest.raises(InputError, match="single group"):
        SWiFT().fit(_model(), one_group)
    one_class = GroupedSet(data.images, np.ones(len(data), int), data.groups, attribute="tone")
    with pytest.raises(InputError, match="both classes"):
        SWiFT().fit(_model(), one_class)
    with pytest.raises(InputError, match="bias_loss"):
        SWiFT(bias_loss="nope").fit(_model(), data)
    multi = build_model(ModelSpec(arch="tiny_cnn", image_size=8, width=4, n_outputs=3))
    with pytest.raises(InputError, match="3 outputs; choose one with output_index"):
        SWiFT().fit(multi, data)
