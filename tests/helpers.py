"""Tiny YOLO-format dataset writer shared by tests: a few small images with coloured rectangles and their labels.

Each class has its own colour, so a detector can learn it in a few epochs. Everything is deterministic in ``seed``.
Usage::

    from tests.helpers import write_dataset
    data_yaml = write_dataset(tmp_path, n_train=12, n_val=4, nc=3, imgsz=64)
"""
from __future__ import annotations

import json
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


def yolo_items(root: str | Path, split: str) -> list[tuple[Path, tuple[int, int], np.ndarray]]:
    """(image, (w, h), labels (n, 5) cls cx cy w h) for every image of a split written by ``write_split``."""
    out = []
    for f in sorted((Path(root) / 'images' / split).iterdir()):
        h, w = cv2.imread(str(f)).shape[:2]
        lb = np.loadtxt(Path(root) / 'labels' / split / f'{f.stem}.txt', ndmin=2).reshape(-1, 5)
        out.append((f, (w, h), lb))
    return out


def write_coco(file: str | Path, items, names: dict[int, str], images_dir: str | Path, cat_ids=None,
               first_image_id: int = 1) -> dict:
    """A COCO annotation file for ``items`` (see ``yolo_items``): class i gets category id ``cat_ids[i]`` (default
    i + 1), image ids count from ``first_image_id``, ``file_name`` relative to ``images_dir``."""
    cat_ids = cat_ids or [i + 1 for i in range(len(names))]
    images, anns = [], []
    for k, (f, (w, h), lb) in enumerate(items):
        iid = first_image_id + k
        images.append({'id': iid, 'file_name': str(Path(f).relative_to(images_dir)), 'width': w, 'height': h})
        for c, cx, cy, bw, bh in lb.tolist():
            box = [(cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h]
            anns.append({'id': len(anns) + 1, 'image_id': iid, 'category_id': cat_ids[int(c)], 'bbox': box,
                         'area': box[2] * box[3], 'iscrowd': 0})
    d = {'images': images, 'annotations': anns,
         'categories': [{'id': cat_ids[i], 'name': n} for i, n in sorted(names.items())]}
    Path(file).parent.mkdir(parents=True, exist_ok=True)
    Path(file).write_text(json.dumps(d))
    return d


def voc_xml(filename: str, size: tuple[int, int], objects: list[tuple[str, float, float, float, float, int]]) -> str:
    """One VOC annotation; ``objects``: (name, x1, y1, x2, y2 in 0-based pixels, difficult)."""
    objs = ''.join(f'<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{x1 + 1}</xmin>'
                   f'<ymin>{y1 + 1}</ymin><xmax>{x2 + 1}</xmax><ymax>{y2 + 1}</ymax></bndbox></object>'
                   for n, x1, y1, x2, y2, d in objects)
    return (f'<annotation><filename>{filename}</filename><size><width>{size[0]}</width><height>{size[1]}</height>'
            f'<depth>3</depth></size>{objs}</annotation>')


def write_voc(ann_dir: str | Path, items, names: dict[int, str]) -> list[Path]:
    """One VOC XML per item (see ``yolo_items``) in ``ann_dir``; returns the files."""
    ann_dir = Path(ann_dir)
    ann_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for f, (w, h), lb in items:
        objs = [(names[int(c)], (cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h, 0)
                for c, cx, cy, bw, bh in lb.tolist()]
        files.append(ann_dir / f'{Path(f).stem}.xml')
        files[-1].write_text(voc_xml(Path(f).name, (w, h), objs))
    return files


def write_annotation_yamls(root: str | Path, nc: int = 3) -> dict[str, Path]:
    """Beside a ``write_dataset`` dataset in ``root``: the same labels as COCO JSON (annotations/*.json, category
    ids 10, 20, ...) and VOC XML (voc/<split>/*.xml), and a dataset YAML for each format (names from the files)."""
    root = Path(root)
    names = {i: f'class{i}' for i in range(nc)}
    out = {'yolo': root / 'data.yaml'}
    coco, voc = {'path': str(root)}, {'path': str(root), 'names': names}
    for split in ('train', 'val'):
        items = yolo_items(root, split)
        write_coco(root / f'annotations/instances_{split}.json', items, names, root / 'images' / split,
                   cat_ids=[10 * (i + 1) for i in range(nc)], first_image_id=1000 if split == 'val' else 1)
        coco[split] = {'coco': f'annotations/instances_{split}.json', 'images': f'images/{split}'}
        write_voc(root / 'voc' / split, items, names)
        voc[split] = {'voc': f'voc/{split}', 'images': f'images/{split}'}
    for k, cfg in (('coco', coco), ('voc', voc)):
        out[k] = root / f'{k}.yaml'
        out[k].write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out
