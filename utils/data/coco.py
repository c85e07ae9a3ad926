"""COCO-format predictions and ground truth, and pycocotools evaluation (val.py ``--save-json``).

Predictions are written as YOLOv5 v7.0 does: ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` in
original-image pixels, ``image_id = int(stem)`` when the stem is numeric, COCO's 91-id categories for COCO datasets
and the 0-based class index otherwise. For a YOLO-format dataset without a COCO annotation file, the ground truth is
built from the label files in original pixel space, so pycocotools can check the project's own mAP.
"""
from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from utils.core.logging import LOGGER

# COCO's 80 detection classes in the 91-id numbering of the official annotation files
COCO80_TO_91 = (*range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70, *range(72, 83),
                *range(84, 91))


def is_coco(data: dict) -> bool:
    """THE "is this COCO?" test, YOLOv5's: the dataset's ``val`` split is COCO's ``val2017.txt`` list. val.py then
    writes COCO json with the 91-id categories and uses the official annotations; training validates its final
    best.pt at NMS IoU 0.65 instead of 0.6."""
    val = data.get('val')
    return isinstance(val, str) and val.replace('\\', '/').endswith('coco/val2017.txt')


def coco80_to_coco91_class() -> list[int]:
    """Category id in COCO's 91-id numbering for each of the 80 class indices."""
    return list(COCO80_TO_91)


def image_id(path: str | Path, numeric: bool = True) -> int | str:
    """``int(stem)`` for numeric stems (COCO's ``000000397133.jpg`` -> 397133), else the stem.

    ``numeric=False`` keeps every id a string: pycocotools sorts image ids, which fails on a mix of int and str.
    """
    stem = Path(path).stem
    return int(stem) if numeric and stem.isnumeric() else stem


def numeric_ids(paths: Sequence[str | Path]) -> bool:
    """True when every stem is numeric, so ids can be ints as COCO's (else all ids stay strings)."""
    return all(Path(p).stem.isnumeric() for p in paths)


def prediction_records(pred: np.ndarray, path: str | Path, class_map: Sequence[int] | None = None,
                       numeric: bool = True, iid: int | str | None = None) -> list[dict]:
    """COCO result records for one image; ``pred`` is (n, 6) ``x1 y1 x2 y2 conf cls`` in original pixels; ``iid``:
    the image's id in a COCO annotation file the dataset was read from (default: from the file name)."""
    pred = np.asarray(pred, dtype=np.float64).reshape(-1, 6)
    iid = image_id(path, numeric) if iid is None else iid
    records = []
    for x1, y1, x2, y2, conf, cls in pred.tolist():
        c = int(cls)
        records.append({'image_id': iid, 'category_id': class_map[c] if class_map else c,
                        'bbox': [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                        'score': round(conf, 5)})
    return records


def yolo_labels_to_coco(im_files: Sequence[str], labels: Sequence[np.ndarray], shapes: np.ndarray,
                        names: dict[int, str], class_map: Sequence[int] | None = None) -> dict:
    """A COCO ground-truth dict from YOLO labels (cls cx cy w h normalised) and image sizes ``shapes`` (n, 2) w, h."""
    images, annotations, numeric = [], [], numeric_ids(im_files)
    ann_id = 1  # pycocotools treats annotation id 0 as "unmatched": ids start at 1
    for f, lb, (w, h) in zip(im_files, labels, np.asarray(shapes).tolist()):
        iid = image_id(f, numeric)
        images.append({'id': iid, 'file_name': Path(f).name, 'width': int(w), 'height': int(h)})
        for cls, cx, cy, bw, bh in np.asarray(lb, dtype=np.float64).reshape(-1, 5).tolist():
            pw, ph = bw * w, bh * h
            c = int(cls)
            annotations.append({'id': ann_id, 'image_id': iid, 'category_id': class_map[c] if class_map else c,
                                'bbox': [(cx - bw / 2) * w, (cy - bh / 2) * h, pw, ph], 'area': pw * ph,
                                'iscrowd': 0})
            ann_id += 1
    categories = [{'id': class_map[i] if class_map else i, 'name': str(n)} for i, n in sorted(names.items())]
    return {'images': images, 'annotations': annotations, 'categories': categories}


def save_json(obj: object, path: str | Path) -> Path:
    """Write ``obj`` as JSON and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, 'w') as f:
        json.dump(obj, f)
    return path


def coco_evaluate(anno_json: str | Path, pred_json: str | Path, img_ids: Sequence | None = None,
                  verbose: bool = True) -> tuple[float, float]:
    """pycocotools bbox evaluation -> (mAP50-95, mAP50); prints COCOeval's summary when ``verbose``."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()) as quiet:
        anno = COCO(str(anno_json))
        preds = json.loads(Path(pred_json).read_text())
        if not preds:
            return 0.0, 0.0
        pred = anno.loadRes(preds)
        ev = COCOeval(anno, pred, 'bbox')
        if img_ids is not None:
            ev.params.imgIds = list(img_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    if verbose:
        LOGGER.info(quiet.getvalue().rstrip())
    return float(ev.stats[0]), float(ev.stats[1])


def find_coco_annotations(data: dict) -> Path | None:
    """YOLOv5's COCO annotation locations: ``../datasets/coco/annotations`` then ``<path>/annotations``."""
    root = Path(__file__).resolve().parents[2]  # the repository root
    for p in (root.parent / 'datasets/coco/annotations/instances_val2017.json',
              Path(data.get('path', '')) / 'annotations/instances_val2017.json'):
        if p.is_file():
            return p
    return None
