"""Checkpoint files: our format (a dict of tensors and plain data) and official YOLOv5 v6.x/v7.0 ``.pt`` files.

Our checkpoints hold state dicts, never pickled modules, so ``torch.load(weights_only=True)`` reads them and they do
not depend on import paths. Official YOLOv5 files pickle whole ``models.yolo.DetectionModel`` objects; we read them
with ``weights_only=True`` too, allowing exactly the class names such a file uses and mapping YOLOv5's own classes to
an inert stand-in (``_PickledModule``) whose only use is ``state_dict()``. A pickle naming anything else (e.g.
``os.system``) is refused before anything is called. The converted checkpoint has our format, so the rest of the
code handles one kind of file.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
import torch.nn as nn

from utils.core import pickle_scan
from utils.core.safety import MAX_CLASSES, UnsafeFileError, check_names

FORMAT = 'yolov5-efficientvit'


FORMAT_VERSION = 1


TRAINING_KEYS = ('optimizer', 'ema', 'updates', 'train_state')


class CheckpointError(Exception):
    """A checkpoint that is missing, unreadable, unsafe, of an unknown format or for another architecture."""


class _PickledModule(nn.Module):
    """Inert stand-in for YOLOv5's pickled classes: keeps the unpickled attributes so state_dict() works."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise CheckpointError('a module read from an official YOLOv5 pickle cannot run; use load_model()')


_YOLOV5_CLASSES = {
    'models.yolo': ('DetectionModel', 'Model', 'Detect'),
    'models.common': ('Conv', 'DWConv', 'Bottleneck', 'BottleneckCSP', 'C3', 'SPP', 'SPPF', 'Focus', 'Concat'),
}


_TORCH_CLASSES = (nn.Sequential, nn.ModuleList, nn.Conv2d, nn.BatchNorm2d, nn.SiLU, nn.ReLU, nn.LeakyReLU,
                  nn.Hardswish, nn.Identity, nn.Upsample, nn.MaxPool2d)


def _numpy_globals() -> list[tuple[Any, str]]:
    """numpy pieces YOLOv5 training files may hold (e.g. best_fitness as an array); they only rebuild arrays."""
    out = []
    mod = getattr(np, '_core', None) or np.core
    for prefix in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        out += [(mod.multiarray._reconstruct, f'{prefix}._reconstruct'), (mod.multiarray.scalar, f'{prefix}.scalar')]
    out += [(np.ndarray, 'numpy.ndarray'), (np.dtype, 'numpy.dtype')]
    out += [(type(np.dtype(t)), f'numpy.dtypes.{type(np.dtype(t)).__name__}')
            for t in ('float64', 'float32', 'int64', 'int32', 'bool')]
    return out


def _allow_list() -> list[Any]:
    """Globals an official YOLOv5 checkpoint may name, besides torch's own weights-only defaults."""
    allowed: list[Any] = [(_PickledModule, f'{mod}.{name}') for mod, names in _YOLOV5_CLASSES.items()
                          for name in names]
    allowed += list(_TORCH_CLASSES)
    allowed += _numpy_globals()
    return allowed


def _global_name(item: Any) -> str:
    return item[1] if isinstance(item, tuple) else f'{item.__module__}.{item.__qualname__}'


def _scan(path: Path) -> None:
    """The opcode scan of utils.core.pickle_scan: the allow-list's names, plus the tensor rebuilds, storages and
    dtypes a state dict needs; module classes may only be created empty (official YOLOv5 pickles)."""
    modules = {_global_name(x) for x in _allow_list() if isinstance(x, type) or x[0] is _PickledModule}
    names = {_global_name(x) for x in _allow_list()} | pickle_scan.state_dict_globals()
    try:
        pickle_scan.scan_checkpoint(path, names, modules)
    except UnsafeFileError as e:
        raise CheckpointError(str(e)) from None
    except OSError as e:
        raise CheckpointError(f'{path}: cannot read ({e.strerror or type(e).__name__})') from None


def _unsafe_global(e: Exception) -> str | None:
    m = re.search(r'GLOBAL ([\w.]+)', str(e))
    return m.group(1) if m else None


def _torch_load(path: Path) -> Any:
    """torch.load(weights_only=True) with the YOLOv5 allow-list, after the opcode scan (utils.core.pickle_scan) has
    shown that loading calls nothing but tensor rebuilds and stays within the file's size; every failure is one line."""
    if not path.is_file():
        raise CheckpointError(f'{path}: checkpoint not found')
    _scan(path)
    try:
        with torch.serialization.safe_globals(_allow_list()):
            return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        name = _unsafe_global(e)
        if name:
            raise CheckpointError(f'{path}: refused: the pickle names {name}, which is not on the allow-list of '
                                  'classes a YOLOv5 checkpoint may contain') from None
        raise CheckpointError(f'{path}: not a readable PyTorch checkpoint ({_first_line(e)})') from None
    except Exception as e:  # torch.load fails in many ways on foreign bytes (struct.error, RuntimeError, EOFError...)
        raise CheckpointError(f'{path}: not a readable PyTorch checkpoint ({_first_line(e)})') from None


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f'{type(e).__name__}: {text[0] if text else ""}'.strip()


def _plain(obj: Any, where: str) -> Any:
    """obj with Paths/Namespaces/numpy values made plain, so weights_only loading accepts it; modules are refused."""
    if isinstance(obj, nn.Module):
        raise CheckpointError(f'checkpoint entry {where} is a module ({type(obj).__name__}); save its state_dict()')
    if isinstance(obj, (torch.Tensor, str, int, float, bool, type(None))):
        return obj
    if isinstance(obj, dict):
        return type(obj)((k, _plain(v, f'{where}.{k}')) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v, f'{where}[{i}]') for i, v in enumerate(obj))
    if isinstance(obj, argparse.Namespace):
        return _plain(vars(obj), where)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, (set, frozenset)):
        return [_plain(v, where) for v in obj]
    raise CheckpointError(f'checkpoint entry {where} has type {type(obj).__name__}, which weights_only loading '
                          'cannot read; store plain data')


def _write_atomically(path: Path, write: Callable[[BinaryIO], None]) -> Path:
    """``write(f)`` into a temp file in ``path``'s directory, synced, then renamed onto ``path``: a run killed at any
    instant leaves the old file or the new one, and a failed write leaves no temp file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
    try:
        with os.fdopen(fd, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def save_checkpoint(ckpt: dict, path: str | Path) -> Path:
    """Write ckpt atomically (temp file in the same directory, then os.replace); fills format/version/date."""
    data = _plain(dict(ckpt), 'ckpt')
    data.setdefault('format', FORMAT)
    data.setdefault('format_version', FORMAT_VERSION)
    data.setdefault('date', datetime.now().isoformat())
    return _write_atomically(Path(path), lambda f: torch.save(data, f))


def copy_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """Copy a checkpoint file's bytes atomically, as ``save_checkpoint`` writes: best.pt from the last.pt just
    written, in a tenth of the time serialising it again takes (0.03 s against 0.16 s for the quick start's 49 MB)."""
    def copy(f: BinaryIO) -> None:
        with open(src, 'rb') as s:
            shutil.copyfileobj(s, f, length=1 << 24)

    return _write_atomically(Path(dst), copy)


def load_checkpoint(path: str | Path) -> dict:
    """Read one of our checkpoints, or an official YOLOv5 v6.x/v7.0 .pt converted to our format; its fields are
    checked by ``check_checkpoint`` either way."""
    path = Path(path)
    obj = _torch_load(path)
    if isinstance(obj, dict) and obj.get('format') == FORMAT:
        return check_checkpoint(obj, path)
    if isinstance(obj, dict) and isinstance(obj.get('ema') or obj.get('model'), _PickledModule):
        return check_checkpoint(_convert_official(obj, path), path)
    keys = [str(k)[:40] for k in list(obj)[:5]] if isinstance(obj, dict) else type(obj).__name__
    raise CheckpointError(f'{path}: not a {FORMAT} or YOLOv5 checkpoint (found {keys})')


# key: (accepted types, what the message calls them); None is accepted for every key not in _REQUIRED
_FIELDS = {
    'format_version': (int, 'an integer'), 'model': (dict, 'a state dict'), 'model_yaml': (dict, 'a mapping'),
    'ema': (dict, 'a state dict'), 'optimizer': (dict, 'an optimizer state dict'), 'names': ((dict, list), 'names'),
    'nc': (int, 'an integer'), 'epoch': (int, 'an integer'), 'updates': (int, 'an integer'),
    'best_fitness': ((int, float), 'a number'), 'opt': (dict, 'a mapping'), 'hyp': (dict, 'a mapping'),
    'train_state': (dict, 'a mapping'), 'date': (str, 'a string'), 'yaml_file': (str, 'a string'),
}


_REQUIRED = ('format_version', 'model', 'model_yaml')


def check_checkpoint(ckpt: dict, path: str | Path) -> dict:
    """THE check of a loaded checkpoint's fields (ours and converted official files), so no consumer meets a field
    of the wrong type: each problem is a one-line CheckpointError naming the file and the field."""
    for key, (types, what) in _FIELDS.items():
        v = ckpt.get(key)
        if v is None and key not in _REQUIRED:
            continue
        if not isinstance(v, types) or (isinstance(v, bool) and types is not bool):
            raise CheckpointError(f'{path}: field {key!r} must be {what}, got {type(v).__name__}')
    if ckpt['format_version'] > FORMAT_VERSION:
        raise CheckpointError(f'{path}: format_version {ckpt["format_version"]} is newer than this code '
                              f'({FORMAT_VERSION})')
    for key in ('model', 'ema'):
        sd = ckpt.get(key) or {}
        bad = next((k for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
        if bad is not None:
            raise CheckpointError(f'{path}: field {key!r} must map names to tensors; entry {str(bad)[:40]!r} does not')
    hyp = ckpt.get('hyp') or {}
    bad = next((k for k, v in hyp.items() if not isinstance(k, str) or isinstance(v, bool)
                or not isinstance(v, (int, float, type(None)))), None)
    if bad is not None:
        raise CheckpointError(f'{path}: hyperparameter {str(bad)[:40]!r} must be a number')
    if any(not isinstance(k, str) for k in ckpt.get('opt') or {}):
        raise CheckpointError(f'{path}: field \'opt\' must map option names (strings) to values')
    nc = ckpt.get('nc')
    if nc is not None and not 1 <= nc <= MAX_CLASSES:
        raise CheckpointError(f'{path}: nc must be an integer in 1..{MAX_CLASSES}, got {nc}')
    if nc is None and isinstance(ckpt['model_yaml'].get('nc'), int):
        nc = ckpt['model_yaml']['nc']  # the model is built with this many classes
    if ckpt.get('names'):
        try:
            ckpt['names'] = check_names(ckpt['names'], str(path), nc)
        except UnsafeFileError as e:
            raise CheckpointError(str(e)) from None
    ckpt['epoch'] = -1 if ckpt.get('epoch') is None else ckpt['epoch']
    ckpt['opt'] = ckpt.get('opt') or {}
    return ckpt


def _official_state(m: _PickledModule, path: Path) -> dict[str, torch.Tensor]:
    try:
        sd = m.state_dict()
        return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    except Exception as e:  # a damaged object graph
        raise CheckpointError(f'{path}: cannot read the pickled YOLOv5 model ({_first_line(e)})') from None


def _convert_official(obj: dict, path: Path) -> dict:
    """An official YOLOv5 checkpoint dict (pickled models) -> our format (state dicts + yaml + names), types left to
    check_checkpoint."""
    model = obj.get('model') if isinstance(obj.get('model'), _PickledModule) else obj['ema']
    attrs = model.__dict__
    cfg = attrs.get('yaml')
    if not isinstance(cfg, dict):
        raise CheckpointError(f'{path}: the pickled YOLOv5 model has no yaml dict; cannot rebuild it')
    nc = cfg.get('nc')
    names = attrs.get('names') or ([str(i) for i in range(nc)] if isinstance(nc, int) and 0 < nc <= MAX_CLASSES
                                   else None)
    ema = obj.get('ema')
    return {
        'format': FORMAT, 'format_version': FORMAT_VERSION, 'converted_from': 'yolov5',
        'model': _official_state(model, path),
        'ema': _official_state(ema, path) if isinstance(ema, _PickledModule) and ema is not model else None,
        'updates': obj.get('updates') if isinstance(obj.get('updates'), int) else 0, 'optimizer': None,
        'model_yaml': dict(cfg), 'names': names, 'nc': nc,
        'epoch': obj['epoch'] if isinstance(obj.get('epoch'), int) else -1,
        'best_fitness': 0.0, 'opt': {}, 'hyp': attrs.get('hyp') or {}, 'date': str(obj.get('date') or '')[:100],
        'train_state': None, 'yaml_file': attrs.get('yaml_file') if isinstance(attrs.get('yaml_file'), str) else '',
    }
