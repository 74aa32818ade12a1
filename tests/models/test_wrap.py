"""trustmed.models.wrap: any torch classifier becomes an extractor + linear head; multi-output heads."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from trustmed.debias import SWiFT
from trustmed.debias.data import GroupedSet
from trustmed.errors import InputError
from trustmed.models import (
    Classifier,
    binary_view,
    linear_layers,
    load_checkpoint,
    merge_output,
    save_checkpoint,
    wrap,
)

FINDINGS = [f"finding_{i}" for i in range(14)]


class DenseLike(nn.Module):
    """A user architecture in torchvision's DenseNet style: ``features`` then ``classifier``."""

    def __init__(self, n_outputs: int = 14):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(6, n_outputs)

    def forward(self, x):
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(16, 5), nn.ReLU())
        self.top = nn.Sequential(nn.Dropout(0.0), nn.Linear(5, 2))

    def forward(self, x):
        return self.top(self.body(x))


class SigmoidAfter(DenseLike):
    def forward(self, x):
        return torch.sigmoid(super().forward(x))


def _data(n: int = 48, seed: int = 0) -> GroupedSet:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, 8, 8, generator=g)
    labels = np.array([0, 1] * (n // 2))
    images[labels == 1, :, 2:5, 2:5] += 1.0
    groups = np.array(["a"] * (n // 2) + ["b"] * (n // 2))
    images[groups == "b"] += 0.5 * torch.rand(int((groups == "b").sum()), 1, 8, 8, generator=g)
    return GroupedSet(images, labels, groups, attribute="sex")


def test_wrap_matches_the_module_and_picks_an_output_by_name():
    torch.manual_seed(0)
    net = DenseLike().eval()
    x = torch.randn(4, 1, 8, 8)
    model = wrap(net, head="classifier", output_index="finding_9", output_names=FINDINGS, example_input=x)
    assert isinstance(model, Classifier) and model.output_index == 9
    assert torch.allclose(model.eval()(x), net(x)[:, 9], atol=1e-6)
    assert torch.allclose(model.all_logits(x), net(x), atol=1e-6)
    assert isinstance(net.classifier, nn.Linear)  # the user's module is left as it was
    by_index = wrap(net, head="classifier", output_index=2).eval()
    assert torch.allclose(by_index(x), net(x)[:, 2], atol=1e-6)


def test_wrap_takes_a_dotted_path_or_a_function():
    torch.manual_seed(0)
    net = Nested().eval()
    x = torch.randn(3, 1, 4, 4)
    dotted = wrap(net, head="top.1", output_index=1).eval()
    assert torch.allclose(dotted(x), net(x)[:, 1], atol=1e-6)
    split = wrap(net, head=lambda m: (m.body, m.top[1]), output_index=0).eval()
    assert torch.allclose(split(x), net(x)[:, 0], atol=1e-6)


def test_wrap_errors_name_the_layer_and_list_the_linear_layers():
    net = Nested()
    with pytest.raises(InputError, match=r"no layer 'fc'; its linear layers: body.1 \(16→5\), top.1 \(5→2\)"):
        wrap(net, head="fc")
    with pytest.raises(InputError, match="'body.0' is a Flatten, not a linear layer"):
        wrap(net, head="body.0")
    with pytest.raises(InputError, match="is not an output; outputs: a, b"):
        wrap(net, head="top.1", output_index="c", output_names=["a", "b"])
    with pytest.raises(InputError, match="out of range"):
        wrap(net, head="top.1", output_index=2)
    with pytest.raises(InputError, match="does more after layer 'classifier'"):
        wrap(SigmoidAfter(), head="classifier", example_input=torch.randn(2, 1, 8, 8))
    assert linear_layers(DenseLike()) == ["classifier (6→14)"]


def test_a_multi_output_model_needs_an_output_index_for_debiasing():
    with pytest.raises(InputError, match="14 outputs; choose one with output_index"):
        SWiFT().fit(wrap(DenseLike(), head="classifier"), _data())


def test_swift_debiases_one_finding_and_leaves_the_other_outputs_unchanged(tmp_path):
    torch.manual_seed(0)
    model = wrap(DenseLike(), head="classifier", output_index="finding_3", output_names=FINDINGS)
    data = _data()
    before = model.eval().all_logits(data.images).detach()
    swift = SWiFT(attribute="sex", unlearn_epochs=2, n_epochs=2, lr_forget=0.05, lr_base=0.05, batch_size=16)
    swift.fit(model, data)
    debiased = swift.model_.eval()
    after = debiased.all_logits(data.images).detach()
    others = [i for i in range(14) if i != 3]
    assert after.shape == before.shape
    assert torch.allclose(after[:, others], before[:, others], atol=1e-5)
    assert not torch.allclose(after[:, 3], before[:, 3], atol=1e-3)  # the chosen output did change
    assert torch.allclose(debiased(data.images), after[:, 3])
    assert torch.equal(model.eval().all_logits(data.images).detach(), before)  # the input is untouched
    # the forked model is saved and loaded like any other
    spec = __import__("trustmed.models", fromlist=["ModelSpec"]).ModelSpec(
        factory=f"{__file__}:DenseLike", head="classifier", in_channels=1, image_size=8
    )
    save_checkpoint(debiased, spec, tmp_path / "ckpt")
    loaded, loaded_spec, _ = load_checkpoint(tmp_path / "ckpt")
    assert loaded_spec.forks == 1 and loaded_spec.output_index == 3 and loaded_spec.output_names == FINDINGS
    assert torch.allclose(loaded.eval().all_logits(data.images), after, atol=1e-6)


def test_every_baseline_accepts_a_wrapped_multi_output_model():
    from trustmed.debias import BMFT, FairPrune, FineTune, GroupThresholds, RetrainFair

    torch.manual_seed(0)
    model = wrap(DenseLike(), head="classifier", output_index=5)
    data = _data()
    before = model.eval().all_logits(data.images).detach()
    for method in (
        BMFT(unlearn_epochs=1, n_epochs=1),
        FairPrune(prune_ratio=0.05),
        FineTune(epochs=1),
        GroupThresholds(),
        RetrainFair(epochs=1, batch_size=16),
    ):
        method.fit(model, data)
        after = method.model_.eval().all_logits(data.images).detach()
        keep = [i for i in range(14) if i != 5]
        assert torch.allclose(after[:, keep], before[:, keep], atol=1e-5), type(method).__name__
        assert method.predict_scores(data).shape == (len(data),)


def test_binary_view_and_merge_without_extractor_change_only_swap_the_row():
    torch.manual_seed(0)
    model = wrap(DenseLike(), head="classifier", output_index=1)
    view = binary_view(model)
    assert view.extractor is model.extractor and view.head.out_features == 1
    with torch.no_grad():
        view.head.weight.zero_()
    merged = merge_output(model, view)
    assert not hasattr(merged.extractor, "kept")  # no fork: the extractor did not change
    assert torch.count_nonzero(merged.head.weight[1]) == 0
    assert torch.equal(merged.head.weight[0], model.head.weight[0])
