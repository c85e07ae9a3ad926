"""Models from checkpoints and back: rebuild a DetectionModel from a checkpoint (its yaml, then its weights checked
name by name and shape by shape), load one ready to run, transfer matching weights into another architecture, and
strip the training state for release. The file format itself is utils/checkpoint/format.py."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from models.yolo import DetectionModel, ModelConfigError, without_pretrained
from utils.checkpoint.format import TRAINING_KEYS, CheckpointError, load_checkpoint, save_checkpoint
from utils.core.logging import LOGGER


def check_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str = 'checkpoint') -> None:
    """Raise CheckpointError (one line) unless state_dict has exactly the model's keys and shapes."""
    msd = model.state_dict()
    missing = [k for k in msd if k not in state_dict]
    unexpected = [k for k in state_dict if k not in msd]
    shapes = [k for k in msd if k in state_dict and tuple(state_dict[k].shape) != tuple(msd[k].shape)]
    if missing or unexpected or shapes:
        example = (shapes or missing or unexpected)[0]
        raise CheckpointError(f'{source}: weights are for another architecture: {len(missing)} missing, '
                              f'{len(unexpected)} unexpected and {len(shapes)} mis-shaped tensors (e.g. {example})')


def model_from_checkpoint(ckpt: dict, prefer_ema: bool = True, source: str = 'checkpoint') -> DetectionModel:
    """Build the checkpoint's model from its yaml and load its (EMA) weights; float32, eval mode, names set."""
    state = ckpt.get('ema') if prefer_ema and ckpt.get('ema') else ckpt.get('model')
    if not isinstance(state, dict) or not isinstance(ckpt.get('model_yaml'), dict):
        raise CheckpointError(f'{source}: checkpoint has no model state dict and model_yaml')
    try:
        model = DetectionModel(without_pretrained(ckpt['model_yaml']), nc=ckpt.get('nc'), verbose=False)
    except ModelConfigError as e:
        raise CheckpointError(f'{source}: cannot rebuild the model: {e}') from None
    model.yaml_file = str(ckpt.get('yaml_file') or '')  # optional key: the summary is then named after the yaml
    check_state_dict(model, state, source)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    if ckpt.get('names'):  # check_checkpoint made them {0..nc-1: str}
        model.names = dict(ckpt['names'])
    model.nc = len(model.names) or model.nc
    if ckpt.get('hyp'):
        model.hyp = dict(ckpt['hyp'])
    return model.float().eval()


def load_model(weights: str | Path, device: str | torch.device = 'cpu', fuse: bool = True) -> DetectionModel:
    """A ready-to-run DetectionModel from our checkpoint or an official YOLOv5 .pt (BN fused by default)."""
    ckpt = load_checkpoint(weights)
    model = model_from_checkpoint(ckpt, source=str(weights))
    if fuse:
        model.fuse()
    return model.to(device).eval()


def transfer_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], exclude: tuple[str, ...] | list = (),
                     source: str = 'weights') -> tuple[int, int]:
    """Copy the tensors whose name and shape match (and whose name contains no exclude string); log the count."""
    msd = model.state_dict()
    csd = {k: v for k, v in state_dict.items()
           if k in msd and not any(x in k for x in exclude) and tuple(v.shape) == tuple(msd[k].shape)}
    model.load_state_dict(csd, strict=False)
    LOGGER.info(f'Transferred {len(csd)}/{len(msd)} items from {source}')
    return len(csd), len(msd)


def strip_optimizer(path: str | Path, s: str | Path = '') -> Path:
    """Keep only the model (the EMA weights when present, as fp16) for release; epoch becomes -1. Writes s or path."""
    path = Path(path)
    ckpt = load_checkpoint(path)
    if ckpt.get('ema'):
        ckpt['model'] = ckpt['ema']
    ckpt['model'] = {k: v.half() if v.is_floating_point() else v for k, v in ckpt['model'].items()}
    for k in TRAINING_KEYS:
        ckpt[k] = 0 if k == 'updates' else None
    ckpt['epoch'] = -1
    out = save_checkpoint(ckpt, s or path)
    mb = out.stat().st_size / 1e6
    LOGGER.info(f"Optimizer stripped from {path},{f' saved as {s},' if s else ''} {mb:.1f}MB")
    return out
