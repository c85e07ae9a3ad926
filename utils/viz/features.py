"""``detect.py --visualize``: every layer's output saved as a grid of feature maps, through forward hooks."""
from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from utils.core.logging import LOGGER
from utils.viz.charts import figure


def feature_visualization(x, module_type: str, stage: int, n: int = 32,
                          save_dir: str | Path = Path('runs/detect/exp')) -> Path | None:
    """``stage{i}_{type}_features.png``: image 0's first ``n`` channels as a grid, 8 per row (YOLOv5 v7.0's
    ``--visualize``), and the whole (C, H, W) map as ``.npy`` beside it. Detect, non-tensor outputs (a backbone's list,
    an empty slot) and maps of one pixel per side are skipped."""
    if 'Detect' in module_type or not isinstance(x, torch.Tensor) or x.dim() != 4 or min(x.shape[2:]) <= 1:
        return None
    maps = x[0].detach().float().cpu().numpy()
    channels = len(maps)
    n = min(n, channels)
    f = Path(save_dir) / f"stage{stage}_{module_type.split('.')[-1]}_features.png"
    cols, rows = min(8, n), math.ceil(n / 8)
    fig = figure(figsize=(cols, rows), tight_layout=True)
    for i, ax in enumerate(np.atleast_1d(fig.subplots(rows, cols)).ravel()):
        if i < n:
            ax.imshow(maps[i])
        ax.axis('off')
    LOGGER.info(f'Saving {f}... ({n}/{channels})')
    fig.savefig(f, dpi=300, bbox_inches='tight')
    np.save(f.with_suffix('.npy'), maps)
    return f


@contextmanager
def features_saved(model: torch.nn.Module, save_dir: str | Path) -> Iterator[None]:
    """While active, every forward of a DetectionModel saves each layer's output with ``feature_visualization``
    (forward hooks, removed on exit: the model itself is not changed)."""
    def save(mod: torch.nn.Module, args, out) -> None:
        feature_visualization(out, getattr(mod, 'type', type(mod).__name__), mod.i, save_dir=save_dir)

    hooks = [m.register_forward_hook(save) for m in model.model]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()
