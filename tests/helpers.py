"""Tiny YOLO-format dataset writer shared by tests: a few small images with coloured rectangles and their labels.

Each class has its own colour, so a detector can learn it in a few epochs. Everything is deterministic in ``seed``.
Usage::

    from tests.helpers import write_dataset
    data_yaml = write_dataset(tmp_path, n_train=12, n_val=4, nc=3, imgsz=64)
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import yaml

CLASS_COLOURS = ((230, 40, 40), (40, 200, 40), (40, 60, 230), (230, 220, 40), (200, 40, 220), (40, 220, 220))


def draw_image(rng: np.random.Generator, imgsz: int, nc: int, max_boxes: int = 3,
               min_frac: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """One RGB image (imgsz x imgsz) with 1..max_boxes filled rectangles; returns (image, labels (n,5) cls cxcywh)."""
    im = np.full((imgsz, imgsz, 3), 114, np.uint8)
    im += rng.integers(0, 20, im.shape, dtype=np.uint8)  # mild noise so images differ
    labels = []
    for _ in range(int(rng.integers(1, max_boxes + 1))):
        c = int(rng.integers(0, nc))
        w, h = (rng.uniform(min_frac, 0.5, 2) * imgsz).astype(int)
        x0, y0 = int(rng.integers(0, imgsz - w)), int(rng.integers(0, imgsz - h))
        im[y0:y0 + h, x0:x0 + w] = CLASS_COLOURS[c % len(CLASS_COLOURS)]
        labels.append([c, (x0 + w / 2) / imgsz, (y0 + h / 2) / imgsz, w / imgsz, h / imgsz])
    return im, np.array(labels, np.float32)


def write_split(root: Path, split: str, n: int, nc: int, imgsz: int, seed: int) -> Path:
    """Write ``n`` images to root/images/<split> and YOLO labels to root/labels/<split>; returns the image dir."""
    rng = np.random.default_rng(seed)
    img_dir, lbl_dir = root / 'images' / split, root / 'labels' / split
    img_dir.mkdir(parents=True, exist_ok=True)
    lbl_dir.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        im, labels = draw_image(rng, imgsz, nc)
        cv2.imwrite(str(img_dir / f'{split}_{i:04d}.png'), cv2.cvtColor(im, cv2.COLOR_RGB2BGR))
        rows = [f'{int(r[0])} {r[1]:.6f} {r[2]:.6f} {r[3]:.6f} {r[4]:.6f}' for r in labels]
        (lbl_dir / f'{split}_{i:04d}.txt').write_text('\n'.join(rows) + '\n')
    return img_dir


def write_dataset(root: str | Path, n_train: int = 12, n_val: int = 4, nc: int = 3, imgsz: int = 64,
                  seed: int = 0, name: str = 'data.yaml') -> Path:
    """Write a train/val dataset and its YAML (absolute ``path``) under ``root``; returns the YAML path."""
    root = Path(root)
    write_split(root, 'train', n_train, nc, imgsz, seed)
    write_split(root, 'val', n_val, nc, imgsz, seed + 1)
    cfg = {'path': str(root.resolve()), 'train': 'images/train', 'val': 'images/val',
           'names': {i: f'class{i}' for i in range(nc)}}
    file = root / name
    file.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return file


def write_hyp(path: str | Path, base: str | Path, **overrides: float) -> Path:
    """Copy a hyp YAML with some values changed (e.g. ``mosaic=0.0`` for a learnable tiny run)."""
    hyp = yaml.safe_load(Path(base).read_text())
    hyp.update(overrides)
    Path(path).write_text(yaml.safe_dump(hyp, sort_keys=False))
    return Path(path)
