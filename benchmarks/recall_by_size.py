"""Where a detector's mAP goes: recall by object size, in the pixels the network sees.

Validates ``--weights`` on a dataset split with val.py (its predictions saved as label files with confidences), then
matches them to the ground truth image by image and prints, per bin of object size *as the network sees it* (the
square root of the box area after the image is scaled so its long side is ``--img``), how many objects there are
and which share is found at IoU >= 0.5 with the right class, at the low confidence mAP integrates down to and at a
working confidence. On the embedded shapes dataset at 224 px this shows that small objects, not classes or box
accuracy, cost the quick start most of its missing mAP50. A benchmark to run by hand, not a test.

Usage:
    python benchmarks/recall_by_size.py --weights runs/train/exp/weights/best.pt --data data/shapes.yaml --img 224
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # entry point: make the repository importable when run as a script

BINS = (0, 8, 12, 16, 24, 32, 48, 96)  # px as the network sees them; the last bin is open-ended


def _read_rows(file: Path, columns: int) -> np.ndarray:
    if not file.is_file():
        return np.zeros((0, columns))
    rows = [line.split() for line in file.read_text().splitlines() if line.strip()]
    return np.array(rows, dtype=np.float64).reshape(-1, columns)


def match_image(labels: np.ndarray, preds: np.ndarray, hw: tuple[int, int], imgsz: int,
                confs: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(size in network pixels per label, found (labels, confs) bool): a label is found at a confidence when a
    prediction of its class with at least that confidence overlaps it with IoU >= 0.5 (normalised xywh rows)."""
    from utils.ops.boxes import box_iou, xywhn2xyxy

    h, w = hw
    sizes = np.sqrt(labels[:, 3] * w * labels[:, 4] * h) * imgsz / max(h, w)
    found = np.zeros((len(labels), len(confs)), bool)
    if len(preds):
        iou = box_iou(xywhn2xyxy(labels[:, 1:5], w, h), xywhn2xyxy(preds[:, 1:5], w, h))
        iou = iou * (labels[:, :1] == preds[None, :, 0])
        for j, conf in enumerate(confs):
            keep = preds[:, 5] >= conf
            found[:, j] = (iou[:, keep] >= 0.5).any(1) if keep.any() else False
    return sizes, found


def recall_table(sizes: np.ndarray, found: np.ndarray, confs: tuple[float, ...]) -> str:
    """Markdown: objects and recall per size bin."""
    head = '| object size (px) | objects | ' + ' | '.join(f'recall, conf >= {c:g}' for c in confs) + ' |'
    rows = [head, '|---|---:|' + '---:|' * len(confs)]
    edges = [*BINS[1:], np.inf]
    for lo, hi in zip(BINS, edges):
        sel = (sizes >= lo) & (sizes < hi)
        if sel.any():
            name = f'{lo}-{hi}' if np.isfinite(hi) else f'{lo}+'
            rows.append(f'| {name} | {int(sel.sum())} | ' + ' | '.join(f'{r:.2f}' for r in found[sel].mean(0)) + ' |')
    rows.append(f'| all | {len(sizes)} | ' + ' | '.join(f'{r:.2f}' for r in found.mean(0)) + ' |')
    return '\n'.join(rows)


def main(opt: argparse.Namespace) -> str:
    import val
    from utils.data.config import check_dataset
    from utils.data.dataset import LoadImagesAndLabels

    data = check_dataset(opt.data)
    confs = tuple(opt.conf)
    with tempfile.TemporaryDirectory() as tmp:
        val.run(data=data, weights=opt.weights, imgsz=opt.img, batch_size=opt.batch_size, task=opt.task,
                save_txt=True, save_conf=True, plots=False, project=tmp, name='v', workers=0)
        ds = LoadImagesAndLabels(data[opt.task], opt.img, opt.batch_size, augment=False, verbose=False)
        all_sizes, all_found = [], []
        for im_file, labels, (w, h) in zip(ds.im_files, ds.labels, ds.shapes):
            if not len(labels):
                continue
            preds = _read_rows(Path(tmp) / 'v' / 'labels' / f'{Path(im_file).stem}.txt', 6)
            sizes, found = match_image(labels, preds, (int(h), int(w)), opt.img, confs)
            all_sizes.append(sizes)
            all_found.append(found)
    table = recall_table(np.concatenate(all_sizes), np.concatenate(all_found), confs)
    print(f'\nRecall at IoU 0.5 by object size, {opt.weights} at {opt.img} px ({opt.task} split):\n\n{table}')
    return table


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--weights', required=True, help='model .pt')
    p.add_argument('--data', default=str(ROOT / 'data/shapes.yaml'), help='dataset YAML')
    p.add_argument('--img', '--imgsz', type=int, default=224, help='inference size (px)')
    p.add_argument('--batch-size', type=int, default=32)
    p.add_argument('--task', default='val', choices=['train', 'val', 'test'], help='dataset split')
    p.add_argument('--conf', type=float, nargs='+', default=[0.001, 0.25], help='confidence thresholds')
    return p.parse_args(argv)


if __name__ == '__main__':
    main(parse_opt())
