"""Dataset splits given as annotation files: COCO JSON and Pascal VOC XML, through the same label scan and cache.

A dataset YAML split may be a mapping naming its format (paths relative to the YAML's ``path``)::

    train: {coco: annotations/instances_train.json, images: images/train}  # file_name relative to images (default:
                                                                          # the JSON's folder, as Roboflow exports)
    val: {voc: ImageSets/Main/val.txt}  # stems; Annotations/<stem>.xml, JPEGImages/<stem>.<jpg|png|...>
    test: {voc: true, annotations: Annotations, images: JPEGImages, difficult: false}  # every XML, no difficult

``resolve_spec`` turns such a mapping into a plain dict of absolute paths (``check_dataset`` calls it);
``load_split`` scans it: the annotation file is parsed into pixel boxes, every image is verified by the label
cache's worker (``verify_image_boxes``: clipped, inverted/outside boxes dropped, one warning line naming the file),
and the result is kept in the same ``.cache`` as YOLO labels, beside the annotation file (``<json>.cache``,
``<list>.cache`` or ``<Annotations>.cache``).

The cache's key, compared before anything else is read, is the annotation file's path, size and mtime (VOC: those of
the list and of every XML), the images folder and the VOC ``difficult`` choice: a cache hit never opens the JSON
(a 500 MB file would take a minute to parse). Then the path, size and mtime of every image the file referenced
(stored in the cache) are hashed and compared, as for YOLO labels, so an edited or added image re-scans too.
Content hashing was rejected: it would read the whole JSON on every run. Class indices in the cache are the file's
own ("natural": categories sorted by id, VOC names sorted); ``remap_classes`` maps them to the dataset's ``names``
on every load, so changing ``names`` in the YAML needs no re-scan.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import partial
from multiprocessing.pool import ThreadPool
from pathlib import Path

import numpy as np

from utils.data.coco_json import load_json, read_categories, read_coco
from utils.data.images import IMG_FORMATS
from utils.data.label_cache import (
    CACHE_VERSION,
    cache_writable_at,
    files_hash,
    io_threads,
    load_cache,
    run_scan,
    save_cache,
    verify_image_boxes,
)
from utils.data.voc_xml import read_voc

FORMATS = ('coco', 'voc')
_KEYS = {'coco': {'coco', 'images'}, 'voc': {'voc', 'annotations', 'images', 'difficult'}}
COUNT_KEYS = ('annotations', 'boxes', 'crowd', 'unknown_category', 'missing_image', 'malformed')


def is_spec(value: object) -> bool:
    """True for a split given as an annotation-file mapping (resolved or as written in the YAML)."""
    return isinstance(value, dict) and ('format' in value or any(k in value for k in FORMATS))


def resolve_spec(root: Path, value: dict) -> dict:
    """A YAML split mapping -> ``{'format', 'annotations', 'images', ...}`` with absolute paths; ValueError (short
    reason) for an unknown key, a missing format or a bad ``difficult``."""
    fmts = [k for k in FORMATS if k in value]
    if len(fmts) != 1:
        raise ValueError(f"a split mapping needs exactly one of 'coco:' or 'voc:', got keys {sorted(map(str, value))}")
    fmt = fmts[0]
    unknown = sorted(map(str, set(value) - _KEYS[fmt]))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in a {fmt} split (allowed: {sorted(_KEYS[fmt])})")

    def path(v) -> str:
        return os.path.normpath(root / os.path.expanduser(str(v)))

    if fmt == 'coco':
        if not isinstance(value['coco'], str) or not value['coco']:
            raise ValueError("'coco:' must name the annotation JSON file")
        ann = path(value['coco'])
        return {'format': 'coco', 'annotations': ann, 'images': path(value['images']) if value.get('images')
                else str(Path(ann).parent)}
    difficult = value.get('difficult', True)
    if not isinstance(difficult, bool):
        raise ValueError(f"'difficult:' must be true or false, got {difficult!r}")
    voc, lst = value['voc'], None
    ann_dir = path(value.get('annotations') or 'Annotations')
    if isinstance(voc, str) and voc:
        p = path(voc)
        if Path(p).is_dir() and not value.get('annotations'):
            ann_dir = p
        elif not Path(p).is_dir():
            lst = p
    elif voc not in (None, True):
        raise ValueError(f"'voc:' must be a list file of stems, a folder of XMLs or true, got {voc!r}")
    return {'format': 'voc', 'list': lst, 'annotations': ann_dir, 'images': path(value.get('images') or 'JPEGImages'),
            'difficult': difficult}


def spec_paths(spec: dict) -> list[str]:
    """The paths a split needs to exist."""
    return [p for p in (spec.get('list'), spec['annotations'], spec['images']) if p]


def cache_file(spec: dict) -> Path:
    """Where a split's label cache lives: beside its annotation file (or list, or Annotations folder)."""
    base = Path(spec.get('list') or spec['annotations'])
    tail = '' if spec.get('difficult', True) else '-nodifficult'
    return base.with_name(f'{base.stem if base.suffix else base.name}{tail}.cache')


def _voc_stems(spec: dict) -> list[str]:
    if spec.get('list'):
        text = Path(spec['list']).read_text(encoding='utf-8-sig')
        return list(dict.fromkeys(line.split()[0] for line in text.splitlines() if line.strip()))
    return sorted(f.stem for f in Path(spec['annotations']).glob('*.xml'))


def annotation_key(spec: dict) -> tuple[str, list[str]]:
    """The cache key (see the module doc) and, for VOC, the stems it covers."""
    h = hashlib.sha256(f"{CACHE_VERSION}\0{spec['format']}\0{spec['images']}\0{spec.get('difficult', True)}".encode())
    stems = []
    if spec['format'] == 'coco':
        h.update(files_hash([spec['annotations']]).encode())
    else:
        stems = _voc_stems(spec)
        xmls = [os.path.join(spec['annotations'], f'{s}.xml') for s in stems]
        h.update(files_hash(([spec['list']] if spec.get('list') else []) + xmls).encode())
    return h.hexdigest(), stems


def _preloaded(boxes: np.ndarray, size, notes: list[str]):
    return boxes, size, notes


def _no_annotation() -> None:
    return None  # a listed stem without its XML: a background image, as a missing YOLO label file


def _raise(e: Exception):
    raise e


def _coco_jobs(spec: dict, prefix: str) -> tuple[list, dict, list[str], list, list, dict]:
    f = read_coco(spec['annotations'], spec['images'])
    jobs = [(e.file, partial(_preloaded, e.boxes, e.size, []), e.source, prefix) for e in f.images]
    info = {e.file: (spec['annotations'], e.image_id) for e in f.images}
    return jobs, info, f.msgs, f.category_ids, f.category_names, f.counts


def _voc_image(images: str, stem: str) -> str:
    for ext in ('jpg', *(e for e in IMG_FORMATS if e != 'jpg')):
        f = os.path.join(images, f'{stem}.{ext}')
        if os.path.isfile(f):
            return f
    return os.path.join(images, f'{stem}.jpg')  # reported missing by the scan


def _read_voc_safe(xml: str):
    if not os.path.isfile(xml):
        return None
    try:
        return read_voc(xml)
    except (ValueError, OSError) as e:
        return e


def _voc_jobs(spec: dict, stems: list[str], prefix: str) -> tuple[list, dict, list[str], list, list, dict]:
    xmls = [os.path.join(spec['annotations'], f'{s}.xml') for s in stems]
    with ThreadPool(io_threads()) as pool:
        parsed = pool.map(_read_voc_safe, xmls)
    names = sorted({o.name for p in parsed if p is not None and not isinstance(p, Exception) for o in p.objects})
    index = {n: i for i, n in enumerate(names)}
    jobs, info, counts = [], {}, dict.fromkeys(COUNT_KEYS, 0)
    for stem, xml, p in zip(stems, xmls, parsed):
        im = _voc_image(spec['images'], stem)
        if p is None:
            load = _no_annotation
        elif isinstance(p, Exception):
            load = partial(_raise, p)
        else:
            objs = [o for o in p.objects if spec.get('difficult', True) or not o.difficult]
            counts['annotations'] += len(p.objects)
            counts['boxes'] += len(objs)
            boxes = np.array([[index[o.name], *o.box] for o in objs], np.float64).reshape(-1, 5)
            load = partial(_preloaded, boxes, p.size, [])
        jobs.append((im, load, xml, prefix))
        info[im] = (xml, stem)
    counts['difficult'] = counts['annotations'] - counts['boxes']
    return jobs, info, [], list(range(len(names))), names, counts


def scan_split(spec: dict, cache_path: Path, prefix: str = '') -> dict:
    """Parse the annotation file(s) of ``spec`` and verify every image; returns the cache dict with its key."""
    key, stems = annotation_key(spec)
    if spec['format'] == 'coco':
        jobs, info, file_msgs, cat_ids, cat_names, counts = _coco_jobs(spec, prefix)
    else:
        jobs, info, file_msgs, cat_ids, cat_names, counts = _voc_jobs(spec, stems, prefix)
    x = run_scan(verify_image_boxes, jobs, f"{prefix}Scanning '{cache_path.with_suffix('')}'...")
    x['msgs'] = [f'{prefix}WARNING ⚠️ {m}' for m in file_msgs] + x['msgs']
    x['label_files'] = [info[f][0] for f in x['im_files']]
    ids = [info[f][1] for f in x['im_files']]
    x['image_ids'] = np.array(ids, np.int64) if all(isinstance(i, int) for i in ids) else np.array(ids, str)
    x['src_files'] = [j[0] for j in jobs]
    x['files_hash'] = files_hash(x['src_files'])
    x['cat_ids'], x['cat_names'] = np.array(cat_ids, np.int64), np.array(cat_names, str)
    x['counts'] = np.array([counts.get(k, 0) for k in (*COUNT_KEYS, 'difficult')], np.int64)
    x['hash'] = key
    return x


def cached_split(spec: dict, cache_path: Path) -> dict | None:
    """The split's cache when its annotation key and image hash still match, else None."""
    cache = load_cache(cache_path, annotation_key(spec)[0])
    if cache is None or 'files_hash' not in cache:
        return None
    src = [str(f) for f in cache['src_files']]
    if files_hash(src) != str(cache['files_hash']):
        return None
    cache['label_files'] = [str(f) for f in cache['label_files']]
    return cache


def load_split(spec: dict, prefix: str = '', root: str | Path | None = None) -> tuple[dict, bool, Path]:
    """(cache dict, from_cache, cache path) of one annotation-file split; AnnotationError for an unusable file."""
    path = cache_file(spec)
    cache = cached_split(spec, path)
    if cache is not None:
        return cache, True, path
    cache = scan_split(spec, path, prefix)
    if cache_writable_at(path, root, prefix):
        save_cache(path, cache, prefix)
    return cache, False, path


def split_categories(spec: dict) -> tuple[list[int], list[str]]:
    """The split's natural class table (category ids and names), from its cache when valid (the JSON is not read),
    else from its annotation file(s). COCO: categories sorted by id; VOC: every object name found, sorted."""
    path = cache_file(spec)
    cache = load_cache(path, annotation_key(spec)[0])
    if cache is not None and 'cat_names' in cache:
        return [int(i) for i in cache['cat_ids']], [str(n) for n in cache['cat_names']]
    if spec['format'] == 'coco':
        return read_categories(spec['annotations'], load_json(spec['annotations']))
    stems = _voc_stems(spec)
    with ThreadPool(io_threads()) as pool:
        parsed = pool.map(_read_voc_safe, [os.path.join(spec['annotations'], f'{s}.xml') for s in stems])
    names = sorted({o.name for p in parsed if p is not None and not isinstance(p, Exception) for o in p.objects})
    return list(range(len(names))), names


def remap_classes(cache: dict, spec: dict, prefix: str = '') -> tuple[list[np.ndarray], list[str], tuple | None]:
    """The cache's natural class indices -> the dataset's (``spec['names']``, by category id when
    ``spec['category_ids']`` is set, else by name). Boxes of classes the dataset does not have are removed with one
    warning per annotation file. Returns (labels, warnings, class_map: dataset index -> original category id, COCO)."""
    cat_ids, cat_names = [int(i) for i in cache['cat_ids']], [str(n) for n in cache['cat_names']]
    names = spec.get('names') or dict(enumerate(cat_names))
    by_id = spec.get('category_ids')
    if by_id is not None:
        pos = {c: i for i, c in enumerate(by_id)}
        lut = np.array([pos.get(c, -1) for c in cat_ids] + [-1], np.int64)
    else:
        first = {}
        for i, n in sorted(names.items()):
            first.setdefault(n, i)
        lut = np.array([first.get(n, -1) for n in cat_names] + [-1], np.int64)
    labels, removed = [], {}
    for lb, src in zip(cache['labels'], cache['label_files']):
        lb = np.asarray(lb, np.float32).reshape(-1, 5).copy()
        new = lut[lb[:, 0].astype(np.int64)] if len(lb) else np.zeros(0, np.int64)
        if (new < 0).any():
            for c in lb[new < 0, 0].astype(int):
                removed.setdefault(src, {}).setdefault(cat_names[c], 0)
                removed[src][cat_names[c]] += 1
        lb[:, 0] = new
        labels.append(lb[new >= 0])
    msgs = [f'{prefix}WARNING ⚠️ {src}: {sum(d.values())} box(es) of classes not in the dataset names removed '
            f'({", ".join(f"{n!r} x{k}" for n, k in sorted(d.items())[:5])})' for src, d in removed.items()]
    class_map = None
    if spec['format'] == 'coco':
        inv = {int(lut[j]): c for j, c in enumerate(cat_ids) if lut[j] >= 0}
        spare = max(cat_ids, default=0) + 1
        class_map = tuple(inv.get(i, spare + i) for i in range(len(names)))
    return labels, msgs, class_map


@dataclass
class AnnotationSource:
    """One COCO/VOC part of a dataset: its spec, the class map (dataset index -> original category id, COCO), each
    image's original id (COCO image id, VOC stem) by file, and the annotation counts (they add up, see ``summary``)."""

    spec: dict
    class_map: tuple | None
    image_ids: dict
    counts: dict

    def summary(self) -> str:
        """One line: where every annotation of the file went."""
        c, ann = self.counts, self.spec.get('list') or self.spec['annotations']
        if self.spec['format'] == 'voc':
            return f"{ann}: {c['annotations']} objects: {c['boxes']} boxes, {c['difficult']} difficult left out"
        return (f"{ann}: {c['annotations']} annotations: {c['boxes']} boxes, {c['crowd']} crowd ignored, "
                f"{c['unknown_category']} unknown category, {c['missing_image']} for missing images, "
                f"{c['malformed']} malformed")


def empty_cache(msg: str) -> dict:
    """The scan of an annotation file that could not be used: no images, one warning."""
    return {'im_files': [], 'labels': [], 'segments': [], 'msgs': [msg], 'label_files': [],
            'shapes': np.zeros((0, 2), np.int64), 'results': (0, 0, 0, 0, 0)}


def merge_caches(parts: list[dict]) -> dict:
    """Several scans (YOLO files, annotation splits) as one: lists concatenated, results summed."""
    if len(parts) == 1:
        return parts[0]
    out = {k: [x for p in parts for x in p[k]] for k in ('im_files', 'labels', 'segments', 'msgs', 'label_files')}
    out['shapes'] = np.concatenate([np.asarray(p['shapes'], np.int64).reshape(-1, 2) for p in parts], 0)
    out['results'] = tuple(int(sum(int(p['results'][i]) for p in parts)) for i in range(5))
    return out
