"""Convert datasets between COCO JSON, Pascal VOC XML and YOLO ``.txt`` labels, through the same label scan.

Usage:
    python -m utils.data.convert --from coco annotations/instances_val.json --images images/val --to yolo out/
    python -m utils.data.convert --from voc VOCdevkit/VOC2012 --list ImageSets/Main/val.txt --to yolo out/
    python -m utils.data.convert --from yolo data/my.yaml --to coco out/        # every split of the dataset YAML

Every image and box goes through the label scan the training uses (utils.data.label_cache), so the converter skips
and reports exactly what training would: one warning line per bad file, the scan's counts line. Nothing is written
into the source; the destination gets ``images/<split>/`` (copies, or ``--symlink``), ``labels/<split>/*.txt``
(YOLO) or ``annotations/instances_<split>.json`` (COCO: category ids 1..nc, image ids 1..n, boxes unrounded), and a
``data.yaml`` naming the split (merged into an existing one with the same names). YOLO -> COCO -> YOLO is lossless
to 1e-6 (labels are written with 6 decimals).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import yaml
from tqdm import tqdm

from utils.core.errors import exit_on
from utils.core.logging import LOGGER, TQDM_BAR_FORMAT
from utils.core.safety import UnsafeFileError, inside, read_yaml
from utils.data import formats
from utils.data.coco_json import AnnotationError
from utils.data.config import ConfigError, check_dataset
from utils.data.dataset import _list_images, img2label_paths
from utils.data.label_cache import scan_labels


class ConvertError(ConfigError):
    """A conversion that cannot be done (bad arguments, clashing destination); one line."""


def read_split(spec: dict | str, prefix: str = '') -> tuple[dict, list[str]]:
    """Scan one split (a COCO/VOC spec, or a YOLO dir/list) -> (scan dict with labels in the spec's ``names`` (by
    name) or the file's own classes, relative output names). Warnings are logged as the training would log them; no
    cache is written."""
    if isinstance(spec, dict):
        x = formats.scan_split(spec, formats.cache_file(spec), prefix)
        labels, msgs, _ = formats.remap_classes(x, spec, prefix)
        x['labels'], x['msgs'] = labels, list(x['msgs']) + msgs
        base = spec['images']
    else:
        ims = _list_images(spec, prefix)
        x = scan_labels(ims, img2label_paths(ims), Path(img2label_paths(ims)[0]).parent, prefix)
        base = spec if Path(spec).is_dir() else None
    for m in x['msgs']:
        LOGGER.warning(m)
    return x, _relative_names(x['im_files'], base)


def _relative_names(files: list[str], base: str | None) -> list[str]:
    """Each image's name under ``images/<split>/``: its path below ``base`` (else its file name), made unique."""
    out, seen = [], set()
    for f in files:
        rel = os.path.relpath(f, base) if base else Path(f).name
        rel = Path(f).name if rel.startswith('..') or os.path.isabs(rel) else rel
        stem, ext, k = os.path.splitext(rel)[0], os.path.splitext(rel)[1], 1
        while rel in seen:
            rel, k = f'{stem}_{k}{ext}', k + 1
        seen.add(rel)
        out.append(rel)
    return out


def _put_image(src: str, dst: Path, symlink: bool) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    if symlink:
        dst.symlink_to(os.path.abspath(src))
    else:
        shutil.copyfile(src, dst)


def write_yolo(x: dict, rel: list[str], dst: Path, split: str, symlink: bool = False) -> int:
    """Images and ``cls cx cy w h`` label files of one scanned split under ``dst``; returns the boxes written."""
    n = 0
    for f, r, lb in tqdm(list(zip(x['im_files'], rel, x['labels'])), desc=f'Writing {dst}/labels/{split}',
                         bar_format=TQDM_BAR_FORMAT):
        _put_image(f, inside(dst, dst / 'images' / split / r), symlink)
        txt = inside(dst, dst / 'labels' / split / Path(r).with_suffix('.txt'))
        txt.parent.mkdir(parents=True, exist_ok=True)
        rows = np.asarray(lb, np.float64).reshape(-1, 5)
        txt.write_text(''.join(f'{int(c)} {a:.6f} {b:.6f} {w:.6f} {h:.6f}\n' for c, a, b, w, h in rows.tolist()))
        n += len(rows)
    return n


def write_coco(x: dict, rel: list[str], names: dict[int, str], dst: Path, split: str,
               symlink: bool = False) -> Path:
    """Images and ``annotations/instances_<split>.json`` of one scanned split: category id = class + 1, image ids
    1..n in scan order, boxes in unrounded pixels."""
    images, anns = [], []
    for i, (f, r, lb, (w, h)) in enumerate(tqdm(list(zip(x['im_files'], rel, x['labels'], np.asarray(
            x['shapes']).tolist())), desc=f'Writing {dst}/annotations/instances_{split}.json',
            bar_format=TQDM_BAR_FORMAT), start=1):
        _put_image(f, inside(dst, dst / 'images' / split / r), symlink)
        images.append({'id': i, 'file_name': Path(r).as_posix(), 'width': int(w), 'height': int(h)})
        for c, cx, cy, bw, bh in np.asarray(lb, np.float64).reshape(-1, 5).tolist():
            box = [(cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h]
            anns.append({'id': len(anns) + 1, 'image_id': i, 'category_id': int(c) + 1, 'bbox': box,
                         'area': box[2] * box[3], 'iscrowd': 0})
    out = inside(dst, dst / 'annotations' / f'instances_{split}.json')
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({'images': images, 'annotations': anns,
                               'categories': [{'id': i + 1, 'name': n} for i, n in sorted(names.items())]}))
    return out


def update_yaml(dst: Path, split: str, value, names: dict[int, str]) -> Path:
    """``dst/data.yaml`` with ``split: value`` and ``names`` (merged into an existing file with the same names)."""
    f = dst / 'data.yaml'
    cfg = yaml.safe_load(f.read_text()) if f.is_file() else {}
    old = cfg.get('names')
    if old is not None and {int(k): str(v) for k, v in (old.items() if isinstance(old, dict) else enumerate(old))} \
            != names:
        raise ConvertError(f'{f}: has other names {old}; convert into another folder')
    cfg.update({'path': str(dst.resolve()), split: value, 'names': names})
    f.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return f


def parse_names(text: str | None) -> dict[int, str] | None:
    """``--names``: a dataset YAML (its ``names``) or a comma-separated list."""
    if not text:
        return None
    if Path(text).is_file():
        names = (read_yaml(text) or {}).get('names')
        names = dict(enumerate(names)) if isinstance(names, list) else names
        if not isinstance(names, dict) or not names:
            raise ConvertError(f'--names {text}: no names in that file')
        return {int(k): str(v) for k, v in sorted(names.items())}
    return dict(enumerate(n.strip() for n in text.split(',') if n.strip()))


def default_split(src: Path, fmt: str, lst: str | None) -> str:
    """COCO ``instances_val2017.json`` -> val2017 (Roboflow's ``train/_annotations.coco.json`` -> train); VOC: the
    list's stem, else train."""
    if fmt == 'coco':
        stem = src.name.split('.')[0]
        return src.parent.name if stem.startswith('_') or not stem else stem.removeprefix('instances_')
    return Path(lst).stem if lst else 'train'


def convert(src: str | Path, fmt: str, to: str, dst: str | Path, images: str | None = None, lst: str | None = None,
            annotations: str | None = None, split: str | None = None, difficult: bool = True,
            symlink: bool = False, names: dict[int, str] | None = None) -> Path:
    """Convert ``src`` (COCO JSON, VOC root or dataset YAML) of format ``fmt`` into ``dst`` in format ``to``;
    returns ``dst/data.yaml``."""
    src, dst = Path(src), Path(dst)
    if (fmt, to) not in (('coco', 'yolo'), ('voc', 'yolo'), ('yolo', 'coco')):
        raise ConvertError(f'--from {fmt} --to {to}: not supported (coco|voc -> yolo, yolo -> coco)')
    if not src.exists():
        raise ConvertError(f'{src}: not found')
    dst.mkdir(parents=True, exist_ok=True)
    if fmt == 'yolo':
        data = check_dataset(src, autogenerate=False)
        out = None
        for k in ('train', 'val', 'test'):
            if isinstance(data.get(k), str):
                x, rel = read_split(data[k], f'{k}: ')
                ann = write_coco(x, rel, data['names'], dst, k, symlink)
                out = update_yaml(dst, k, {'coco': str(ann.relative_to(dst)), 'images': f'images/{k}'}, data['names'])
            elif data.get(k) is not None:
                raise ConvertError(f'{src}: split {k} is not a YOLO images folder or list')
        return out
    cwd = Path.cwd()
    raw = {'coco': str(src), 'images': images} if fmt == 'coco' else {
        'voc': lst or True, 'annotations': annotations, 'images': images, 'difficult': difficult}
    spec = formats.resolve_spec(cwd if fmt == 'coco' else src, {k: v for k, v in raw.items() if v is not None})
    split = split or default_split(src, fmt, lst)
    x, rel = read_split({**spec, 'names': names} if names else spec)
    n = write_yolo(x, rel, dst, split, symlink)
    if names is None:  # the file's own classes: COCO categories sorted by id, VOC names sorted
        names = {i: str(nm) for i, nm in enumerate(x['cat_names'])}
        LOGGER.info('classes (category id -> class index): ' + ', '.join(
            f'{c}->{i} {nm}' if fmt == 'coco' else f'{i} {nm}' for i, (c, nm) in enumerate(zip(
                x['cat_ids'].tolist(), names.values()))))
    LOGGER.info(f'{len(x["im_files"])} images, {n} boxes written to {dst}')
    return update_yaml(dst, split, f'images/{split}', names)


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog='python -m utils.data.convert', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--from', dest='fmt', required=True, choices=('coco', 'voc', 'yolo'), help='source format')
    p.add_argument('src', help='COCO: the JSON file; VOC: the dataset root; YOLO: the dataset YAML')
    p.add_argument('--to', nargs=2, required=True, metavar=('FORMAT', 'DST'), help='yolo|coco and the output folder')
    p.add_argument('--images', help='images folder (COCO default: the JSON\'s folder; VOC: SRC/JPEGImages)')
    p.add_argument('--list', dest='lst', help='VOC: list of stems, relative to SRC (default: every XML)')
    p.add_argument('--annotations', help='VOC: XML folder relative to SRC (default: Annotations)')
    p.add_argument('--split', help='COCO/VOC: output split name (default: from the file name, e.g. val2017); '
                                   'YOLO keeps its split names')
    p.add_argument('--no-difficult', dest='difficult', action='store_false', help='VOC: leave difficult objects out')
    p.add_argument('--names', help='COCO/VOC: class names, a dataset YAML or "a,b,c" (classes mapped by name; '
                                   'default: COCO categories sorted by id, VOC names found, sorted)')
    p.add_argument('--symlink', action='store_true', help='link images instead of copying them')
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    opt = parse_opt(argv)
    with exit_on('convert', (ConfigError, AnnotationError, UnsafeFileError, ValueError, OSError, yaml.YAMLError)):
        convert(opt.src, opt.fmt, opt.to[0], opt.to[1], opt.images, opt.lst, opt.annotations, opt.split,
                opt.difficult, opt.symlink, parse_names(opt.names))
    return 0


if __name__ == '__main__':
    sys.exit(main())
