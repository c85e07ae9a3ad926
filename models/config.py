"""Model YAML files: reading them (no aliases, bounded size) and checking what a buildable model needs (keys, nc, ch,
multiples, anchors, row shapes) before models.yolo.parse_model builds anything; every problem is one line naming the
file and the key (ModelConfigError)."""
from __future__ import annotations

import ast
import math
from copy import deepcopy
from pathlib import Path
from typing import Any

import yaml

from utils.core.safety import MAX_CLASSES, MAX_MODEL_ROWS, read_yaml

ROOT = Path(__file__).resolve().parents[1]


class ModelConfigError(ValueError):
    """A model YAML that cannot be built: missing file or key, unknown module, bad ``from`` index, bad arguments."""


def load_model_cfg(cfg: str | Path | dict) -> tuple[dict, str]:
    """Return (yaml dict copy, yaml file name) for a dict or a YAML path (looked up as given, then in models/)."""
    if isinstance(cfg, dict):
        return deepcopy(cfg), str(cfg.get('yaml_file', ''))
    path = Path(cfg)
    if not path.is_file():
        for alt in (ROOT / 'models' / path.name, ROOT / path):
            if alt.is_file():
                path = alt
                break
        else:
            raise ModelConfigError(f'model config {str(cfg)!r} not found (looked in ., {ROOT / "models"})')
    try:
        d = read_yaml(path)  # no aliases, bounded size
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as e:
        raise ModelConfigError(f'{path}: invalid YAML: {str(e).splitlines()[0]}') from None
    if not isinstance(d, dict):
        raise ModelConfigError(f'{path}: expected a mapping with nc, anchors, backbone and head')
    return d, path.name


def yaml_value(a: Any, nc: int, anchors: Any) -> Any:
    """A YAML argument: 'nc'/'anchors' are substituted, other strings parsed as Python literals or kept as text."""
    if not isinstance(a, str):
        return a
    if a == 'nc':
        return nc
    if a == 'anchors':
        return anchors
    try:
        return ast.literal_eval(a)
    except (ValueError, SyntaxError):
        return a  # e.g. 'nearest'


def check_model_dict(d: dict, where: str) -> None:
    missing = [k for k in ('nc', 'depth_multiple', 'width_multiple', 'anchors', 'backbone', 'head') if k not in d]
    if missing:
        raise ModelConfigError(f'{where}: missing key(s) {", ".join(missing)}')
    rows = d['backbone'] + d['head'] if isinstance(d['backbone'], list) and isinstance(d['head'], list) else None
    if not rows:
        raise ModelConfigError(f'{where}: backbone and head must be lists of [from, number, module, args] rows')
    if len(rows) > MAX_MODEL_ROWS:
        raise ModelConfigError(f'{where}: {len(rows)} layer rows, over the limit of {MAX_MODEL_ROWS}')
    _check_values(d, where)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _check_values(d: dict, where: str) -> None:
    """nc, ch, multiples and anchors must make a buildable model; each problem is one line naming the key."""
    for key, default in (('nc', None), ('ch', 3), ('channel_multiple', 8)):
        v = d.get(key, default)
        if not _is_positive_int(v):
            raise ModelConfigError(f'{where}: {key} must be a positive integer, got {v!r}')
    if d['nc'] > MAX_CLASSES:
        raise ModelConfigError(f"{where}: nc {d['nc']} is over the limit of {MAX_CLASSES} classes")
    for key in ('depth_multiple', 'width_multiple'):
        if not (_is_number(d[key]) and d[key] > 0 and math.isfinite(d[key])):
            raise ModelConfigError(f'{where}: {key} must be a number > 0, got {d[key]!r}')
    a = d['anchors']
    if _is_positive_int(a):
        return  # a count of placeholder anchors per level (AutoAnchor computes them)
    ok = isinstance(a, list) and a and all(isinstance(lv, list) and lv and len(lv) % 2 == 0 and len(lv) == len(a[0])
                                         and all(_is_number(x) and x > 0 for x in lv) for lv in a)
    if not ok:
        raise ModelConfigError(f'{where}: anchors must be a positive count or one list of w,h pixel pairs per level '
                               f'(same length, values > 0), got {a!r}')


def check_row(row: Any, i: int, where: str) -> tuple[int | list[int], int, str, list]:
    if not (isinstance(row, (list, tuple)) and len(row) == 4):
        raise ModelConfigError(f'{where}: layer {i}: expected [from, number, module, args], got {row!r}')
    f, n, name, args = row
    ok_from = isinstance(f, int) or (isinstance(f, list) and f and all(isinstance(j, int) for j in f))
    if not ok_from or not isinstance(n, int) or n < 1 or not isinstance(name, str) or not isinstance(args, list):
        raise ModelConfigError(f'{where}: layer {i}: malformed row {row!r}')
    return f, n, name, args
