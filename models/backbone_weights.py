"""Loading a backbone's pretrained weights from a local file, with one report of what was loaded and skipped.

Shared by every backbone (EfficientViT's Cream/timm files, any ``Timm`` model's state dict): the file is read with
``torch.load(weights_only=True)`` after the opcode scan of utils.core.pickle_scan (or safetensors), tensors are matched
to the model by name and shape, and one line says how many were loaded, adapted and skipped, and why.
Nothing is ever downloaded.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from utils.core import pickle_scan
from utils.core.logging import LOGGER
from utils.core.safety import UnsafeFileError

STATE_DICT_KEYS = ('model', 'state_dict', 'model_ema', 'state_dict_ema')  # where checkpoints keep their tensors


class PretrainedError(ValueError):
    """A pretrained file that cannot be used (unreadable, or not a checkpoint of this backbone)."""


@dataclass
class LoadReport:
    """What a weights loader did with each tensor of the checkpoint."""
    path: str
    loaded: list[str] = field(default_factory=list)
    adapted: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    def summary(self) -> str:
        reasons: dict[str, int] = {}
        for why in self.skipped.values():
            reasons[why] = reasons.get(why, 0) + 1
        why = '; '.join(f'{n} {r}' for r, n in sorted(reasons.items())) or 'none'
        return (f'{self.path}: loaded {len(self.loaded)} tensors ({len(self.adapted)} of them adapted), '
                f'skipped {len(self.skipped)} ({why}), {len(self.missing)} model tensors not in the file')


def _read(path: Path) -> object:
    """The file's content: safetensors by suffix, else a weights-only torch.load (no code can run)."""
    try:
        if path.suffix == '.safetensors':
            from safetensors.torch import load_file
            return load_file(str(path), device='cpu')
        pickle_scan.scan_checkpoint(path, pickle_scan.state_dict_globals(), set())  # before any opcode runs
        return torch.load(path, map_location='cpu', weights_only=True)
    except UnsafeFileError as e:
        raise PretrainedError(str(e)) from None
    except Exception as e:  # corrupt, truncated, or a pickle with foreign classes
        detail = ' '.join(str(e).split())[:120]
        raise PretrainedError(f'{path}: cannot read as a weights-only torch checkpoint '
                              f'({type(e).__name__}{": " + detail if detail else ""})') from None


def read_state_dict(path: str | Path, what: str = 'backbone') -> dict[str, torch.Tensor]:
    """The state dict in a local weights file: bare, or under one of ``STATE_DICT_KEYS``.

    Raises FileNotFoundError or PretrainedError with a one-line message naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'pretrained weights not found: {path}')
    obj = _read(path)
    if isinstance(obj, dict):
        for key in STATE_DICT_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise PretrainedError(f'{path}: not an {what} checkpoint (no state dict of tensors found)')
    return obj


Adapter = Callable[[str, torch.Tensor, torch.Tensor, LoadReport], 'torch.Tensor | None']


def load_matching(model: nn.Module, state_dict: dict[str, torch.Tensor], path: str | Path, what: str = 'backbone',
                  skip: Callable[[str], str | None] | None = None, adapt: Adapter | None = None,
                  derived: Callable[[str], bool] | None = None) -> LoadReport:
    """Load the tensors whose name is in ``model`` and whose shape fits, log the report and return it.

    ``skip(key)`` gives a reason to ignore a file tensor (e.g. 'classifier head'); ``adapt(key, src, dst, report)``
    may reshape a tensor whose shape differs (returning None records it as skipped); ``derived(key)`` marks model
    entries that are recomputed, not loaded, so they do not count as missing. Raises PretrainedError when nothing
    matches (a file of another model).
    """
    own = model.state_dict()
    report = LoadReport(str(path))
    new = {}
    for k, v in state_dict.items():
        why = skip(k) if skip else None
        if why:
            report.skipped[k] = why
        elif k not in own:
            report.skipped[k] = 'not in model'
        elif v.shape == own[k].shape:
            new[k] = v
        elif adapt is not None and (a := adapt(k, v, own[k], report)) is not None:
            new[k] = a
        else:
            report.skipped.setdefault(k, 'shape mismatch')
    if not new:
        raise PretrainedError(f'{path}: no tensor matches the {what} backbone (checkpoint of another model?)')
    model.load_state_dict(new, strict=False)
    report.loaded = sorted(new)
    report.missing = sorted(k for k in own if k not in new and not (derived and derived(k)))
    LOGGER.info(report.summary())
    return report
