"""Classifiers (MONAI networks, a tiny CPU preset, or any torch module wrapped) and checkpoint IO."""

from trustmed.models.classifier import (
    ARCHITECTURES,
    Classifier,
    ModelSpec,
    binary_view,
    build_model,
    count_parameters,
    load_checkpoint,
    merge_output,
    save_checkpoint,
)
from trustmed.models.weights import load_weights
from trustmed.models.wrap import linear_layers, wrap

__all__ = [
    "ARCHITECTURES",
    "Classifier",
    "ModelSpec",
    "binary_view",
    "build_model",
    "count_parameters",
    "linear_layers",
    "load_checkpoint",
    "load_weights",
    "merge_output",
    "save_checkpoint",
    "wrap",
]
