"""COCO JSON annotations read directly: one file -> per-image pixel boxes for the label scan (utils.data.formats).

What is read (the fields of COCO's ``instances_*.json``): ``images`` (``id``, ``file_name`` relative to the split's
images directory, optional ``width``/``height``), ``annotations`` (``image_id``, ``category_id``, ``bbox`` = top-left
x, y, width, height in pixels, ``iscrowd``) and ``categories`` (``id``, ``name``). Class indices here are positions
in the categories sorted by id (the "natural" table); utils.data.formats maps them to the dataset's names.

Rules, each one counted: crowd boxes (``iscrowd: 1``) are ignored as YOLOv5's JSON2YOLO converter does; annotations
with an unknown category id, for an image id that does not exist, or malformed, are dropped with one warning line
per kind naming the file. A file that is not COCO (no ``images`` list, or no ``categories`` list) raises
``AnnotationError``. The file size is checked before it is parsed (MAX_ANNOTATION_JSON_BYTES).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from utils.core.safety import MAX_ANNOTATION_JSON_BYTES, MAX_CLASSES, MAX_NAME_CHARS


class AnnotationError(ValueError):
    """An annotation file that cannot be used at all (not COCO, too large, unreadable); one line naming the file."""


@dataclass
class ImageBoxes:
    """One image of an annotation file: its path, pixel boxes (n, 5) ``cls x1 y1 x2 y2`` (unclipped), the size the
    annotation claims (w, h) or None, its original id, and what warnings about it name."""

    file: str
    boxes: np.ndarray
    size: tuple[int, int] | None
    image_id: int | str
    source: str


@dataclass
class CocoFile:
    """A parsed COCO file: categories sorted by id (``category_ids``, ``category_names``), its images, one-line
    warnings (without prefix) and the annotation counts (they add up to ``annotations``)."""

    category_ids: list[int]
    category_names: list[str]
    images: list[ImageBoxes]
    msgs: list[str] = field(default_factory=list)
    counts: dict = field(default_factory=dict)


def _one_line(e: BaseException | str) -> str:
    return ' '.join(str(e).split())


def load_json(path: str | Path, limit: int = MAX_ANNOTATION_JSON_BYTES) -> object:
    """Parse a JSON file after checking its size; AnnotationError (one line naming the file) on any failure."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > limit:
            raise AnnotationError(f'{path}: {size:,} bytes, over the limit of {limit:,} for an annotation file')
        with open(path, 'rb') as f:
            return json.loads(f.read())
    except AnnotationError:
        raise
    except (OSError, ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise AnnotationError(f'{path}: cannot read JSON: {_one_line(e)[:200]}') from None


def _is_id(v: object) -> bool:
    return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, str) and 0 < len(v) <= 256)


def read_categories(path: str | Path, data: dict) -> tuple[list[int], list[str]]:
    """COCO ``categories`` sorted by id -> (ids, names); AnnotationError when the file is not COCO."""
    if not isinstance(data, dict) or not isinstance(data.get('images'), list) \
            or not isinstance(data.get('categories'), list):
        raise AnnotationError(f"{path}: not a COCO annotation file (needs 'images' and 'categories' lists)")
    cats = {}
    for c in data['categories']:
        if not isinstance(c, dict) or not isinstance(c.get('id'), int) or isinstance(c.get('id'), bool) \
                or not isinstance(c.get('name'), str) or not c['name'] or len(c['name']) > MAX_NAME_CHARS:
            raise AnnotationError(f"{path}: malformed category {str(c)[:80]} (needs an integer 'id' and a 'name')")
        if c['id'] in cats:
            raise AnnotationError(f"{path}: category id {c['id']} appears twice")
        cats[c['id']] = c['name']
    if not cats:
        raise AnnotationError(f'{path}: no categories')
    if len(cats) > MAX_CLASSES:
        raise AnnotationError(f'{path}: {len(cats)} categories, over the limit of {MAX_CLASSES}')
    ids = sorted(cats)
    return ids, [cats[i] for i in ids]


def _images(path: Path, data: dict, images_dir: Path, msgs: list[str]) -> dict:
    """id -> [file, size, boxes list] for every well-formed image entry (one warning per kind of bad entry)."""
    out, files, bad, dup = {}, set(), 0, []
    for im in data['images']:
        if not isinstance(im, dict) or not _is_id(im.get('id')) or not isinstance(im.get('file_name'), str) \
                or not im['file_name']:
            bad += 1
            continue
        w, h = im.get('width'), im.get('height')
        size = (w, h) if all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (w, h)) else None
        file = os.path.normpath(images_dir / im['file_name'])
        if im['id'] in out or file in files:
            dup.append(im['id'])
            continue
        files.add(file)
        out[im['id']] = [file, size, []]
    if bad:
        msgs.append(f"{path}: {bad} malformed image entr{'y' if bad == 1 else 'ies'} ignored (need 'id' and "
                    "'file_name')")
    if dup:
        msgs.append(f'{path}: {len(dup)} image entr{"y" if len(dup) == 1 else "ies"} repeating an id or file_name '
                    f'ignored (ids {dup[:5]})')
    return out


def _bbox(a: dict) -> list[float] | None:
    b = a.get('bbox')
    if not isinstance(b, list) or len(b) != 4 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in b):
        return None
    x, y, w, h = b
    return [x, y, x + w, y + h]


def read_coco(path: str | Path, images_dir: str | Path) -> CocoFile:
    """Read one COCO annotation file; boxes get the category's position in the id-sorted categories as class."""
    path, images_dir = Path(path), Path(images_dir)
    data = load_json(path)
    ids, names = read_categories(path, data)
    index = {c: i for i, c in enumerate(ids)}
    msgs: list[str] = []
    images = _images(path, data, images_dir, msgs)
    anns = data.get('annotations', [])
    anns = anns if isinstance(anns, list) else []
    counts = dict(annotations=len(anns), boxes=0, crowd=0, unknown_category=0, missing_image=0, malformed=0)
    unknown, orphan = set(), set()
    for a in anns:
        box = _bbox(a) if isinstance(a, dict) else None
        if box is None or not _is_id(a.get('image_id')):
            counts['malformed'] += 1
        elif a.get('iscrowd', 0):
            counts['crowd'] += 1
        elif a['image_id'] not in images:
            counts['missing_image'] += 1
            orphan.add(a['image_id'])
        elif a.get('category_id') not in index or isinstance(a.get('category_id'), bool):
            counts['unknown_category'] += 1
            unknown.add(str(a.get('category_id')))
        else:
            images[a['image_id']][2].append([index[a['category_id']], *box])
            counts['boxes'] += 1
    _count_msgs(path, counts, unknown, orphan, msgs)
    out = [ImageBoxes(f, np.array(b, np.float64).reshape(-1, 5), s, i, f'{path}: image {i} ({Path(f).name})')
           for i, (f, s, b) in images.items()]
    return CocoFile(ids, names, out, msgs, counts)


def _count_msgs(path: Path, counts: dict, unknown: set, orphan: set, msgs: list[str]) -> None:
    if counts['unknown_category']:
        msgs.append(f"{path}: {counts['unknown_category']} annotation(s) with unknown category id(s) "
                    f"{sorted(unknown)[:5]} ignored")
    if counts['missing_image']:
        msgs.append(f"{path}: {counts['missing_image']} annotation(s) for image id(s) that do not exist "
                    f"{sorted(orphan, key=str)[:5]} ignored")
    if counts['malformed']:
        msgs.append(f"{path}: {counts['malformed']} malformed annotation(s) ignored (need 'image_id' and a 'bbox' "
                    'of 4 numbers)')
