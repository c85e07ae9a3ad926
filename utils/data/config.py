"""Dataset YAML and hyperparameter YAML loading, checked up front so bad configs fail before any training starts.

A dataset YAML holds ``path`` (dataset root; relative roots resolve against the repository root, as YOLOv5 v7.0),
``train``/``val``/``test`` (dirs, ``.txt`` image lists, COCO/VOC mappings such as ``{coco: a.json, images: dir}``
(utils.data.formats), or lists of these, relative to ``path``), ``names`` (list or ``{int: str}``; optional when a
split is COCO/VOC: then read from its annotations) and optionally ``nc`` (checked against ``names``) and
``generate`` (a spec for ``utils.data.synthetic``, run when the data is missing). Every problem raises
``DatasetError`` with one line naming the YAML.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from utils.core.logging import LOGGER
from utils.core.safety import UnsafeFileError, check_names, read_yaml
from utils.data import formats
from utils.data.coco_json import AnnotationError
from utils.data.images import IMG_FORMATS, VID_FORMATS  # noqa: F401  (re-exported: their old home)
from utils.data.textlist import read_text_list

ROOT = Path(__file__).resolve().parents[2]  # the repository root
HYP_KEYS = ('lr0', 'lrf', 'momentum', 'weight_decay', 'warmup_epochs', 'warmup_momentum', 'warmup_bias_lr', 'box',
            'cls', 'cls_pw', 'obj', 'obj_pw', 'iou_t', 'anchor_t', 'fl_gamma', 'hsv_h', 'hsv_s', 'hsv_v', 'degrees',
            'translate', 'scale', 'shear', 'perspective', 'flipud', 'fliplr', 'mosaic', 'mixup', 'copy_paste')

# What each hyperparameter may be: values outside these make training fail (lr0 <= 0, anchor_t 0) or quietly diverge
# (momentum >= 1); probabilities and fractional gains stay within [0, 1]. 'anchors' (optional) is anchors per level.
_HYP_RULES = {
    'positive': (lambda v: v > 0, 'must be > 0'),
    'non_negative': (lambda v: v >= 0, 'must be >= 0'),
    'fraction': (lambda v: 0 <= v <= 1, 'must be between 0 and 1'),
    'momentum': (lambda v: 0 <= v < 1, 'must be in [0, 1)'),
    'count': (lambda v: v >= 1 and int(v) == v, 'must be a positive integer'),
}
HYP_RANGES = {
    'lr0': 'positive', 'lrf': 'non_negative', 'momentum': 'momentum', 'weight_decay': 'non_negative',
    'warmup_epochs': 'non_negative', 'warmup_momentum': 'momentum', 'warmup_bias_lr': 'non_negative',
    'box': 'non_negative', 'cls': 'non_negative', 'cls_pw': 'positive', 'obj': 'non_negative', 'obj_pw': 'positive',
    'iou_t': 'fraction', 'anchor_t': 'positive', 'fl_gamma': 'non_negative', 'hsv_h': 'fraction',
    'hsv_s': 'fraction', 'hsv_v': 'fraction', 'degrees': 'non_negative', 'translate': 'fraction', 'scale': 'fraction',
    'shear': 'non_negative', 'perspective': 'non_negative', 'flipud': 'fraction', 'fliplr': 'fraction',
    'mosaic': 'fraction', 'mixup': 'fraction', 'copy_paste': 'fraction', 'anchors': 'positive',
    'nbs': 'count'}  # nbs (optional): images per optimizer step, our addition (YOLOv5 fixes 64)


class ConfigError(ValueError):
    """A configuration file is missing or malformed; the message is one line naming the file."""


class DatasetError(ConfigError):
    """The dataset YAML or the data it points to cannot be used."""


def _one_line(e: BaseException | str) -> str:
    return ' '.join(str(e).split())


def find_config(file: str | Path, *subdirs: str) -> Path | None:
    """Locate a YAML given as a path, a path relative to ROOT, or a bare name inside ROOT/<subdir>."""
    file = Path(file)
    for cand in (file, ROOT / file, *(ROOT / d / file.name for d in subdirs)):
        if cand.is_file():
            return cand.resolve()
    return None


def _read_yaml(file: Path, err: type[ConfigError]) -> dict:
    try:
        data = read_yaml(file)  # no aliases (an alias bomb expands 1 kB to gigabytes), bounded size
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise err(f'{file}: cannot read YAML: {_one_line(e)}') from None
    if not isinstance(data, dict):
        raise err(f'{file}: expected a YAML mapping, got {type(data).__name__}')
    return data


def load_hyp(path: str | Path | dict) -> dict:
    """Load a hyperparameter YAML (or check a dict) and require YOLOv5's keys with numeric values."""
    if isinstance(path, dict):
        file, hyp = '<hyp dict>', dict(path)
    else:
        file = find_config(path, 'data/hyps', 'data')
        if file is None:
            raise ConfigError(f'hyperparameter file {path} not found')
        hyp = _read_yaml(file, ConfigError)
    missing = [k for k in HYP_KEYS if k not in hyp]
    if missing:
        raise ConfigError(f'{file}: missing hyperparameter(s) {", ".join(missing)}')
    bad = [k for k in HYP_KEYS if not _is_number(hyp[k])]
    if bad:
        raise ConfigError(f'{file}: hyperparameter(s) {", ".join(bad)} must be numbers')
    for k, rule in HYP_RANGES.items():
        ok, need = _HYP_RULES[rule]
        v = hyp.get(k)
        if v is not None and not (_is_number(v) and ok(v)):
            raise ConfigError(f'{file}: hyperparameter {k} {need}, got {v!r}')
    return hyp


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def image_files_in(p: Path) -> Iterator[Path]:
    """Yield image files of a dir (recursive, sorted) or of a .txt list (relative lines: relative to the list). A list
    that is not UTF-8 text or cannot be read is a DatasetError naming it."""
    if p.is_dir():
        yield from (f for f in sorted(p.rglob('*.*')) if f.suffix[1:].lower() in IMG_FORMATS and f.is_file())
    elif p.is_file() and p.suffix.lower() == '.txt':
        try:
            text = read_text_list(p, 'image paths')
        except ValueError as e:
            raise DatasetError(str(e)) from None
        for line in text.splitlines():
            line = line.strip()
            if not line:
                continue
            f = Path(line)
            if line.startswith('./'):
                f = p.parent / line[2:]
            elif not f.is_absolute():  # relative to the list; YOLOv5 took it relative to the working dir (still tried)
                f = p.parent / f if (p.parent / f).exists() or not f.exists() else f.absolute()
            if f.suffix[1:].lower() in IMG_FORMATS:
                yield f
    elif p.is_file() and p.suffix[1:].lower() in IMG_FORMATS:
        yield p


def _resolve_split(file: Path | str, path: Path, value: Any) -> str | dict | list | None:
    if value in (None, '', []):
        return None
    out = []
    for v in value if isinstance(value, (list, tuple)) else [value]:
        if isinstance(v, dict) and 'format' in v:  # already resolved (a checked dataset dict)
            out.append(dict(v))
            continue
        if isinstance(v, dict):  # an annotation-file split: {coco: ...} or {voc: ...} (utils.data.formats)
            try:
                out.append(formats.resolve_spec(path, v))
            except ValueError as e:
                raise DatasetError(f'{file}: {_one_line(e)}') from None
            continue
        x = (path / str(v)).resolve()
        if not x.exists() and str(v).startswith('../'):  # YOLOv5's retry without the leading '../'
            x2 = (path / str(v)[3:]).resolve()
            x = x2 if x2.exists() else x
        out.append(str(x))
    return out if isinstance(value, (list, tuple)) else out[0]


def _as_list(v: str | dict | list | None) -> list:
    return [] if v is None else [v] if isinstance(v, (str, dict)) else list(v)


def _paths(v: str | dict | list | None) -> list[str]:
    """Every path a split needs: its dirs/lists, or an annotation split's file(s) and images folder."""
    return [p for x in _as_list(v) for p in (formats.spec_paths(x) if isinstance(x, dict) else [x])]


def _names(file: Path | str, data: dict) -> dict[int, str]:
    names = data['names']
    if isinstance(names, (list, tuple)):
        names = dict(enumerate(names))
    if not isinstance(names, dict) or not names:
        raise DatasetError(f"{file}: 'names' must be a non-empty list or a mapping {{0: name, ...}}")
    if not all(isinstance(k, int) and not isinstance(k, bool) for k in names):
        raise DatasetError(f"{file}: 'names' keys must be integers, got {list(names)[:5]}")
    if sorted(names) != list(range(len(names))):
        raise DatasetError(f"{file}: 'names' keys must be 0..{len(names) - 1}, got {sorted(names)[:10]}")
    if any(not isinstance(v, (str, int, float)) or isinstance(v, bool) for v in names.values()):
        raise DatasetError(f"{file}: 'names' values must be strings")
    try:
        names = check_names({k: str(v) for k, v in names.items()}, f'{file}: names')  # count and length limits
    except UnsafeFileError as e:
        raise DatasetError(str(e)) from None
    nc = data.get('nc')
    if nc is not None and nc != len(names):
        raise DatasetError(f"{file}: nc={nc} but 'names' has {len(names)} entries")
    return names


def _maybe_generate(file: Path | str, data: dict, path: Path, autogenerate: bool) -> None:
    """Run the ``generate:`` spec (a no-op when ``path`` already holds data from the same spec, so an edited spec
    regenerates instead of silently keeping stale data), then require the train/val paths to exist."""
    spec = data.get('generate')
    if isinstance(spec, dict) and autogenerate:
        from utils.data import synthetic  # lazy: only datasets that ask for generation need it
        try:
            synthetic.generate(spec, path)
        except Exception as e:  # any generator failure becomes one clear line
            raise DatasetError(f'{file}: generating the dataset into {path} failed: {_one_line(e)}') from None
    missing = list(dict.fromkeys(p for k in ('train', 'val') for p in _paths(data[k]) if not Path(p).exists()))
    if missing:
        hint = ' (downloads are not supported; put the data there)' if 'download' in data else ''
        raise DatasetError(f'{file}: dataset not found: {", ".join(missing)} missing{hint}')


def _check_has_images(file: Path | str, data: dict) -> None:
    for k in ('train', 'val', 'test'):
        for x in _as_list(data.get(k)):
            for p in formats.spec_paths(x) if isinstance(x, dict) else [x]:
                if not Path(p).exists():
                    raise DatasetError(f'{file}: {k} path {p} does not exist')
            if not isinstance(x, dict) and next(image_files_in(Path(x)), None) is None:
                raise DatasetError(f'{file}: no images found in {k} path {x} (formats: {", ".join(IMG_FORMATS)})')


def _specs(data: dict) -> list[dict]:
    return [x for k in ('train', 'val', 'test') for x in _as_list(data.get(k)) if isinstance(x, dict)]


def _names_from_annotations(file: Path | str, specs: list[dict]) -> dict[int, str]:
    """No ``names`` in the YAML: the first annotation split's classes (COCO: categories sorted by id, each COCO
    split then mapped by category id; VOC: the object names found, sorted); the mapping is printed."""
    first = specs[0]
    try:
        ids, names = formats.split_categories(first)
    except (AnnotationError, OSError, ValueError) as e:
        raise DatasetError(f'{file}: no names given and none readable from {first["annotations"]}: '
                           f'{_one_line(e)}') from None
    if not names:
        raise DatasetError(f"{file}: no names given and no classes found in {first['annotations']}")
    if first['format'] == 'coco':
        for x in specs:
            if x['format'] == 'coco':
                x['category_ids'] = list(ids)
        table = ', '.join(f'{c}->{i} {n}' for i, (c, n) in enumerate(zip(ids, names)))
        LOGGER.info(f'names from {first["annotations"]} categories (category id -> class index): {table}')
    else:
        LOGGER.info(f'names from the XML object names in {first["annotations"]} (sorted): '
                    + ', '.join(f'{i} {n}' for i, n in enumerate(names)))
    return dict(enumerate(names))


def check_dataset(data: str | Path | dict, autogenerate: bool = True) -> dict:
    """Load and validate a dataset YAML; return it with absolute paths, ``names`` as a dict and ``nc``.

    Calls ``utils.data.synthetic.generate`` first when the YAML has a ``generate:`` mapping (it does nothing when the
    data already matches the spec). Raises
    ``DatasetError`` (one line, naming the YAML) for a missing file, missing keys, bad names or no images.
    """
    if isinstance(data, dict):
        file, data = data.get('yaml_file', '<dataset dict>'), dict(data)
    else:
        found = find_config(data, 'data')
        if found is None:
            raise DatasetError(f'dataset YAML {data} not found')
        file, data = found, _read_yaml(found, DatasetError)
    missing = [k for k in ('train', 'val') if k not in data]
    if missing or ('names' not in data and not any(formats.is_spec(x) for k in ('train', 'val', 'test')
                                                   for x in _as_list(data.get(k)))):
        raise DatasetError(f'{file}: missing key(s) {", ".join(missing + ["names"] * ("names" not in data))} (a '
                           'dataset YAML needs path, train, val, names; names may come from COCO/VOC annotations)')
    if 'names' in data:  # checked before any data is looked at or generated
        data['names'] = _names(file, data)
    path = Path(os.path.expanduser(str(data.get('path') or '')))
    path = path if path.is_absolute() else (ROOT / path)
    path = path.resolve()
    data['path'] = str(path)
    for k in ('train', 'val', 'test'):
        data[k] = _resolve_split(file, path, data.get(k))
    if data['train'] is None or data['val'] is None:
        raise DatasetError(f"{file}: 'train' and 'val' must name at least one path")
    _maybe_generate(file, data, path, autogenerate)
    _check_has_images(file, data)
    specs = _specs(data)
    if 'names' not in data:
        data['names'] = _names_from_annotations(file, specs)
    data['nc'] = len(data['names'])
    for x in specs:  # the dataset scan maps each annotation file's classes to these
        x['names'] = dict(data['names'])
    data['yaml_file'] = str(file)
    return data
