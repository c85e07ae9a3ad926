"""``detect.py --visualize``: every layer's output saved as a grid of feature maps, through forward hooks."""
from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import torch

from utils.core.logging import LOGGER
from utils.viz.imagefile import write_image

PANEL = 300  # px per map's cell: 1 inch at YOLOv5's dpi 300
MAP_SIDE = 256  # px of the cell's longer side the map fills; the rest is white margin between maps


@functools.cache
def _viridis() -> np.ndarray:
    """256 x 3 uint8 BGR lookup table of matplotlib's viridis, the colormap ``imshow`` uses by default."""
    from matplotlib import colormaps

    rgb = colormaps['viridis'](np.linspace(0.0, 1.0, 256))[:, :3]
    return np.round(rgb[:, ::-1] * 255).astype(np.uint8)


def feature_grid(maps: np.ndarray, cols: int = 8) -> np.ndarray:
    """(C, H, W) maps -> one BGR uint8 image: each map scaled to its own min..max (as ``imshow`` does), coloured with
    viridis, enlarged (nearest pixel, aspect kept) in a white ``PANEL``-pixel cell, ``cols`` cells per row."""
    n, h, w = maps.shape
    cols, rows = min(cols, n), math.ceil(n / cols)
    scale = MAP_SIDE / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))  # cv2's (width, height)
    top, left = (PANEL - size[1]) // 2, (PANEL - size[0]) // 2
    lut, grid = _viridis(), np.full((rows * PANEL, cols * PANEL, 3), 255, np.uint8)
    for i, m in enumerate(maps.astype(np.float64)):
        y, x = (i // cols) * PANEL + top, (i % cols) * PANEL + left
        grid[y:y + size[1], x:x + size[0]] = cv2.resize(_colour(m, lut), size, interpolation=cv2.INTER_NEAREST)
    return grid


def _colour(m: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """One map -> BGR: scaled to its finite values' min..max (a constant map at the low end); NaN and inf pixels
    white, as imshow leaves masked values (a diverged layer's map is drawn, not a crash or noise)."""
    finite = np.isfinite(m)
    level = np.zeros(m.shape, np.uint8)
    if finite.any():
        lo, hi = m[finite].min(), m[finite].max()
        if hi > lo:
            level[finite] = np.round((m[finite] - lo) / (hi - lo) * 255).astype(np.uint8)
    bgr = lut[level]
    bgr[~finite] = 255
    return bgr


def feature_visualization(x, module_type: str, stage: int, n: int = 32,
                          save_dir: str | Path = Path('runs/detect/exp')) -> Path | None:
    """``stage{i}_{type}_features.png``: image 0's first ``n`` channels as a grid, 8 per row (YOLOv5 v7.0's
    ``--visualize``), and the whole (C, H, W) map as ``.npy`` beside it. Detect, non-tensor outputs (a backbone's list,
    an empty slot) and maps of one pixel per side are skipped. The grid is drawn with numpy and OpenCV, not a
    matplotlib figure per layer as YOLOv5 does: the same picture (viridis, one scale per map, 300 px per map), 0.06 s
    per 32-map layer instead of ~1.1 s."""
    if 'Detect' in module_type or not isinstance(x, torch.Tensor) or x.dim() != 4 or min(x.shape[2:]) <= 1:
        return None
    maps = x[0].detach().float().cpu().numpy()
    channels = len(maps)
    n = min(n, channels)
    f = Path(save_dir) / f"stage{stage}_{module_type.split('.')[-1]}_features.png"
    LOGGER.info(f'Saving {f}... ({n}/{channels})')
    write_image(f, feature_grid(maps[:n]))
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
