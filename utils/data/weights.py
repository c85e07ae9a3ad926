"""Sampling weights from the training labels: YOLOv5's ``class_weights`` (inverse class frequency) and the per-image
weights of ``--image-weights``."""
from __future__ import annotations

import numpy as np
import torch


def labels_to_class_weights(labels: list[np.ndarray], nc: int = 80) -> torch.Tensor:
    """Inverse class frequency (normalised to sum 1) from the training labels; YOLOv5's class_weights."""
    if not labels or not sum(len(lb) for lb in labels):
        return torch.ones(nc) / nc
    classes = np.concatenate([lb.reshape(-1, 5) for lb in labels], 0)[:, 0].astype(int)
    weights = np.bincount(classes, minlength=nc).astype(float)
    weights[weights == 0] = 1  # empty classes count as one
    weights = 1 / weights
    return torch.from_numpy(weights / weights.sum()).float()


def labels_to_image_weights(labels: list[np.ndarray], nc: int, class_weights: np.ndarray) -> np.ndarray:
    """Per-image sampling weight = sum over its labels of the class weight (``--image-weights``)."""
    counts = np.array([np.bincount(lb[:, 0].astype(int), minlength=nc) for lb in labels]).reshape(-1, nc)
    return (class_weights.reshape(1, nc) * counts).sum(1)
