"""EfficientViT checkpoint filters (pure functions) and the pretrained loader.

Official Cream checkpoints (``{'model': state_dict}``), mmdet ones (``backbone.`` prefix) and timm's
``efficientvit_msra`` state dicts all map to the official key names our model uses (``timm_to_cream``). What differs
between an ImageNet classification model and our detection variant is adapted where the architecture allows it:
attention-bias tables of another resolution are resized bicubically (as Cream does), q depthwise kernels of another
size are zero-padded (exact) or centre-cropped (warned). The file reading and the report are shared with every other
backbone (``models.backbone_weights``).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from models.backbone_weights import LoadReport, PretrainedError, load_matching, read_state_dict
from utils.core.logging import LOGGER

__all__ = ['PretrainedError', 'LoadReport', 'load_pretrained', 'timm_to_cream', 'timm_to_cream_key',
           'cream_state_dict', 'resize_attention_biases', 'adapt_kernel']


def _map_timm_stage_key(rest: list[str]) -> list[str] | None:
    """``stages.{s}.{downsample|blocks}...`` -> ``blocks{s+1}.{j}...``; None for keys with no official twin."""
    s = int(rest[1])
    if rest[2] == 'blocks':
        return [f'blocks{s + 1}', str(int(rest[3]) + (3 if s > 0 else 0))] + rest[4:]
    if rest[2] == 'downsample' and s > 0:
        j = {'res1': 0, 'patchmerge': 1, 'res2': 2}.get(rest[3])
        return None if j is None else [f'blocks{s + 1}', str(j)] + rest[4:]
    return None


def timm_to_cream_key(key: str) -> str | None:
    """Map one timm ``efficientvit_msra`` key to the official (Cream) name; None when it has no counterpart."""
    parts = key.split('.')
    if parts[-1] == 'attention_bias_idxs':
        return None
    if parts[0] == 'patch_embed' and len(parts) > 1 and parts[1].startswith('conv'):
        parts = ['patch_embed', str(2 * (int(parts[1][4:]) - 1))] + parts[2:]
    elif parts[0] == 'stages':
        mapped = _map_timm_stage_key(parts)
        if mapped is None:
            return None
        parts = mapped
    elif parts[0] == 'head':
        parts = ['head'] + [{'linear': 'l'}.get(p, p) for p in parts[1:]]
    # ConvNorm's conv is called 'conv' in timm and 'c' officially; 'conv1'..'conv3' of PatchMerging stay.
    return '.'.join('c' if p == 'conv' else p for p in parts)


def timm_to_cream(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a timm-format state dict to official keys (keys without a counterpart are dropped)."""
    out = {}
    for k, v in state_dict.items():
        new = timm_to_cream_key(k)
        if new is not None:
            out[new] = v
    return out


def cream_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official-key state dict from a Cream, mmdet or timm state dict (prefixes stripped, timm keys renamed)."""
    stripped = {}
    for k, v in sd.items():
        for prefix in ('module.', 'backbone.'):
            if k.startswith(prefix):
                k = k[len(prefix):]
        stripped[k] = v
    if any(k.startswith('stages.') or k.startswith('patch_embed.conv1.') for k in stripped):
        stripped = timm_to_cream(stripped)
    return stripped


def resize_attention_biases(bias: torch.Tensor, resolution: int) -> torch.Tensor:
    """Bicubic-resize a (heads, S*S) bias table over its (|dy|, |dx|) grid to (heads, resolution**2), as Cream does."""
    h, n = bias.shape
    s = math.isqrt(n)
    if s * s != n:
        raise ValueError(f'attention bias length {n} is not a square')
    grid = bias.detach().float().view(1, h, s, s)
    out = F.interpolate(grid, size=(resolution, resolution), mode='bicubic', align_corners=False)
    return out.view(h, resolution * resolution).to(bias.dtype)


def adapt_kernel(weight: torch.Tensor, k: int) -> tuple[torch.Tensor, bool]:
    """Fit a (C, 1, ks, ks) depthwise kernel to k x k: zero-pad a smaller one (exact), centre-crop a larger one.

    Returns the kernel and whether it was cropped (which changes the function, so the caller warns).
    """
    ks = weight.shape[-1]
    if ks == k:
        return weight, False
    if (ks - k) % 2:
        raise ValueError(f'cannot centre a {ks}x{ks} kernel in {k}x{k}')
    if ks < k:
        p = (k - ks) // 2
        return F.pad(weight, (p, p, p, p)), False
    c = (ks - k) // 2
    return weight[..., c:c + k, c:c + k].contiguous(), True


def _adapt(key: str, src: torch.Tensor, dst: torch.Tensor, report: LoadReport) -> torch.Tensor | None:
    """Make ``src`` fit ``dst``'s shape where the architecture allows it; None (and a skip reason) otherwise."""
    if key.endswith('attention_biases') and src.dim() == 2 and src.shape[0] == dst.shape[0]:
        r = math.isqrt(dst.shape[1])
        report.adapted[key] = f'bias resized {math.isqrt(src.shape[1])}x{math.isqrt(src.shape[1])} -> {r}x{r}'
        return resize_attention_biases(src, r)
    if '.dws.' in key and key.endswith('c.weight') and src.shape[:2] == dst.shape[:2] and src.dim() == 4:
        out, cropped = adapt_kernel(src, dst.shape[-1])
        how = 'centre-cropped' if cropped else 'zero-padded'
        report.adapted[key] = f'q kernel {src.shape[-1]}x{src.shape[-1]} {how} to {dst.shape[-1]}x{dst.shape[-1]}'
        if cropped:
            LOGGER.warning(f'WARNING: {key}: {report.adapted[key]} (outputs change; fine-tune to recover)')
        return out
    report.skipped[key] = 'shape mismatch'
    return None


def _skip(key: str) -> str | None:
    if key.startswith(('head.', 'head_dist.')):
        return 'classifier head'
    return 'derived index (recomputed)' if key.endswith('attention_bias_idxs') else None


def load_pretrained(model: nn.Module, path: str | Path) -> LoadReport:
    """Load Cream/timm/mmdet EfficientViT weights into ``model`` by name, adapting what differs; log a report.

    Head and ``attention_bias_idxs`` tensors are ignored; attention biases of another resolution are resized
    bicubically; q depthwise kernels of another size are padded or cropped. Raises FileNotFoundError or
    PretrainedError with a one-line message.
    """
    sd = cream_state_dict(read_state_dict(path, 'EfficientViT'))
    return load_matching(model, sd, path, 'EfficientViT', skip=_skip, adapt=_adapt,
                         derived=lambda k: k.endswith('attention_bias_idxs'))
