"""Group-robust knowledge distillation: GroupDistil (Vilouras et al., MLMI 2023, arXiv 2311.00476),
vanilla KD and Group DRO, trained through the shared loop with worst-group model selection."""

from trustmed.distill.losses import GroupDistilLoss, GroupDROLoss, KDLoss
from trustmed.distill.trainer import METHODS, GroupDataset, GroupDistiller, make_group_loaders

__all__ = [
    "METHODS",
    "GroupDROLoss",
    "GroupDataset",
    "GroupDistilLoss",
    "GroupDistiller",
    "KDLoss",
    "make_group_loaders",
]
