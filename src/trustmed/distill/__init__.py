"""Group-robust knowledge distillation: GroupDistil (Vilouras et al., MLMI 2023, arXiv 2311.00476),
vanilla KD and Group DRO, trained through the shared loop with worst-group model selection.
:mod:`trustmed.distill.run` is the one path from a config to a trained, scored student."""

from trustmed.distill.losses import GroupDistilLoss, GroupDROLoss, KDLoss
from trustmed.distill.run import (
    DistillConfig,
    DistillData,
    DistillResult,
    prepare_data,
    run_distill,
    train_and_score,
)
from trustmed.distill.trainer import METHODS, GroupDataset, GroupDistiller, make_group_loaders

__all__ = [
    "METHODS",
    "DistillConfig",
    "DistillData",
    "DistillResult",
    "GroupDROLoss",
    "GroupDataset",
    "GroupDistilLoss",
    "GroupDistiller",
    "KDLoss",
    "make_group_loaders",
    "prepare_data",
    "run_distill",
    "train_and_score",
]
