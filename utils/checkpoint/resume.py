"""What ``--resume`` may take from a killed run: its ``opt.yaml`` (or the checkpoint's ``opt``) checked value by value
against the kinds of today's options, and its weights checked against the model their yaml builds. The options
themselves are merged in utils/engine/options.py."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch.nn as nn
import yaml

from models.yolo import ModelConfigError, meta_layers, without_pretrained
from utils.checkpoint.format import CheckpointError
from utils.checkpoint.model import check_state_dict
from utils.core.safety import read_yaml

_INT_OPTIONS = {'epochs': 1, 'imgsz': 1, 'workers': 0, 'batch_size': -1}  # smallest value a resumed run may get


def saved_options(last: Path, ckpt: dict, current: Mapping[str, Any]) -> dict:
    """A killed run's options for ``--resume``: ``<run>/opt.yaml``, else the checkpoint's ``opt``. Each value must
    have the kind of the command-line default it replaces; otherwise one CheckpointError line names the file."""
    file = Path(last).parent.parent / 'opt.yaml'
    if file.is_file():
        try:
            d = read_yaml(file)
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise CheckpointError(f'{file}: cannot read YAML: {" ".join(str(e).split())}') from None
    else:
        file, d = Path(last), ckpt.get('opt') or {}
    if not isinstance(d, dict) or any(not isinstance(k, str) for k in d):
        raise CheckpointError(f'{file}: options must be a mapping of option names to values')
    check_resume_weights(ckpt, Path(last))
    defaults = dict(current)
    for k, v in d.items():
        if k in ('resume', 'weights', 'cfg', 'save_dir'):
            continue  # replaced by utils.engine.options.resume_options
        if k in defaults and not _same_kind(v, defaults[k]):
            raise CheckpointError(f'{file}: option {k!r} has a {type(v).__name__} value where '
                                  f'{type(defaults[k]).__name__} is expected')
        low = _INT_OPTIONS.get(k)
        if low is not None and v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < low or v == 0
                                                  and k == 'batch_size'):
            raise CheckpointError(f'{file}: option {k!r} must be an integer >= {low}, got {str(v)[:40]!r}')
    return d


def check_resume_weights(ckpt: dict, path: Path) -> None:
    """--resume loads 'model' and 'ema' strictly: both must fit the model their yaml builds (checked on the meta
    device, so nothing is allocated)."""
    cfg = {**without_pretrained(ckpt['model_yaml']), **({'nc': ckpt['nc']} if ckpt.get('nc') else {})}
    model = nn.Module()  # state-dict keys as DetectionModel's: 'model.<layer>...'
    try:
        model.model = meta_layers(cfg, cfg.get('ch', 3), str(path))
    except ModelConfigError as e:
        raise CheckpointError(f'{path}: cannot rebuild the model: {e}') from None
    for key in ('model', 'ema'):
        if ckpt.get(key) is not None:
            check_state_dict(model, ckpt[key], f'{path} ({key})')


def _same_kind(value: Any, default: Any) -> bool:
    """True when ``value`` may replace ``default`` (None defaults take any plain value; ints are no bools)."""
    if default is None:
        return value is None or isinstance(value, (bool, int, float, str, list, dict))
    if isinstance(default, bool):  # --resume and --upload_dataset also take a path
        return isinstance(value, (bool, str))
    if isinstance(value, bool):
        return False
    if isinstance(default, list):
        kinds = {type(x) for x in default} or {int, str}
        return isinstance(value, list) and all(type(x) in kinds for x in value)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))
