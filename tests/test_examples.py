"""Every example YAML loads into its command's config, and the dataset examples run one training step
(their real architecture, image size, channels and loader options) on schema-faithful fixtures, so
none goes stale."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from trustmed.config import load_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.fixtures import real_formats  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CONFIGS = {
    "audit_": "trustmed.audit:AuditConfig",
    "causal_": "trustmed.causal.pipeline:CausalFitConfig",
    "debias_": "trustmed.debias.run:DebiasCompareConfig",
    "distill_": "trustmed.distill.run:DistillConfig",
    "ground_": "trustmed.grounding.pipeline:GroundEvalConfig",
    "prompt_tuning_": "trustmed.grounding.pipeline:GroundTuneConfig",
    "train_": "trustmed.train.classifier:TrainConfig",
}
FIXTURES = {
    "chexpert": real_formats.make_chexpert,
    "mimic": real_formats.make_mimic_cxr,
    "isic2020": real_formats.make_isic2020,
    "fitzpatrick17k": real_formats.make_fitzpatrick17k,
}


def _config_class(path: Path):
    from trustmed.utils import import_object

    prefix = next(p for p in CONFIGS if path.name.startswith(p))
    return import_object(CONFIGS[prefix])


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_loads(path):
    cfg = load_config(_config_class(path), path)
    if path.name.startswith("debias_"):
        from trustmed.debias.registry import method_names
        from trustmed.debias.selection import check_plan

        check_plan(cfg.methods or method_names(), cfg.grids)


@pytest.mark.parametrize("stem", list(FIXTURES))
def test_dataset_example_runs_one_training_step(stem, tmp_path):
    from trustmed.data.images import make_loader
    from trustmed.models import build_model
    from trustmed.train.classifier import TrainConfig, read_training_data

    root = FIXTURES[stem](tmp_path / "data")
    cfg = load_config(TrainConfig, EXAMPLES / f"train_{stem}.yaml")
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"root": root})})
    manifest = read_training_data(cfg.data, cfg.seed)
    train = manifest[manifest["split"] == cfg.data.train_split].head(2)
    size, channels = cfg.data.image_size, cfg.data.channels
    loader = make_loader(
        train, root, image_size=size, channels=channels, batch_size=2, shuffle=False, cache=False
    )
    batch = next(iter(loader))
    assert batch["image"].shape == (2, cfg.data.channels, cfg.data.image_size, cfg.data.image_size)
    model = build_model(cfg.model)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch["image"]), batch["label"].float())
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    missing = [a for a in cfg.data.attributes or [] if a not in manifest.columns]
    assert not missing, f"train_{stem}.yaml names attributes the data lacks: {missing}"
