"""Training precision: which autocast a training step runs under, and the convolutions that stay float32 in it.

YOLOv5 trains with fp16 AMP on CUDA (and a GradScaler) and in float32 elsewhere. On a CPU with AMX (Intel Xeon
Sapphire Rapids and later) bfloat16 matrix arithmetic is many times faster than float32, so training there runs
under bf16 autocast: parameters, optimizer state, BatchNorm statistics, the loss and the gradients stay float32;
only the inputs of convolutions and matmuls are rounded to bf16 (8 significant bits). bf16 has float32's exponent
range, so no loss scaling is needed. CPUs without AMX keep float32: there bf16 is emulated and slower. ``--no-amp``
turns mixed precision off on every device. Measured (README "Training speed") on a 2-core Xeon with AMX.
"""
from __future__ import annotations

import torch
from torch import nn


def cpu_has_amx() -> bool:
    """True when this CPU has AMX tiles, where oneDNN runs bf16 convolutions and matmuls in hardware."""
    probe = getattr(torch.cpu, '_is_amx_tile_supported', None)
    try:
        return bool(probe()) if probe is not None else False
    except RuntimeError:  # a torch build without the CPU feature probe
        return False


def training_autocast_dtype(device: torch.device, enabled: bool = True,
                            has_amx: bool | None = None) -> torch.dtype | None:
    """The autocast dtype of a training step on ``device``: float16 on CUDA (YOLOv5's AMP), bfloat16 on a CPU with
    AMX, None (float32, no autocast) otherwise or when ``enabled`` is False (``--no-amp``)."""
    device = torch.device(device)
    if not enabled:
        return None
    if device.type == 'cuda':
        return torch.float16
    if device.type == 'cpu' and (cpu_has_amx() if has_amx is None else has_amx):
        return torch.bfloat16
    return None


def describe(dtype: torch.dtype | None, device: torch.device) -> str:
    """One line for the training log."""
    if dtype is None:
        return f'AMP: off, training in float32 on {torch.device(device).type}'
    kind = 'fp16 AMP with loss scaling' if dtype == torch.float16 else 'bf16 autocast (CPU with AMX)'
    return f'AMP: {kind}; parameters, optimizer, BatchNorm statistics and loss stay float32 (--no-amp: float32)'


def slow_in_bf16(conv: nn.Conv2d) -> bool:
    """Depthwise convolutions with stride 2 or a kernel above 3x3, whose bf16 backward oneDNN runs 2.4-5x slower than
    its float32 one on the CPU (measured on a 2-core Xeon with AMX: EfficientViT-M0's stride-2 3x3 over 256 channels
    28.7 vs 5.7 ms inside a training step, 2.5x in isolation; the per-head 5x5/7x7 ones 2.4-2.9x); stride-1 3x3
    depthwise (0.96x) and dense convolutions (1x1: 0.6-0.8x) are as fast or faster in bf16."""
    depthwise = conv.groups > 1 and conv.groups == conv.in_channels
    return depthwise and (conv.stride != (1, 1) or max(conv.kernel_size) > 3)


def conv_float32_under_cpu_autocast(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)``, but computed in float32 when CPU autocast is on and ``conv`` is one that bf16 slows down
    (``slow_in_bf16``); the output is then float32, which the next layer accepts under autocast."""
    if x.device.type == 'cpu' and torch.is_autocast_enabled('cpu') and slow_in_bf16(conv):
        with torch.autocast('cpu', enabled=False):
            return conv(x.float())
    return conv(x)
