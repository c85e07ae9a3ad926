"""Training precision: which autocast a training step runs under, and the convolutions that stay float32 in it.

YOLOv5 trains with fp16 AMP on CUDA (and a GradScaler) and in float32 elsewhere. On a CPU with bf16 arithmetic in
hardware -- AMX tiles (Intel Xeon Sapphire Rapids and later) or AVX-512 BF16 dot products (AMD Zen 4 and
later) -- oneDNN's bf16 convolutions and matmuls are faster than float32, so training there runs under bf16
autocast: parameters, optimizer state, BatchNorm statistics, the loss and the gradients stay float32; only the
inputs of convolutions and matmuls are rounded to bf16 (8 significant bits). bf16 has float32's exponent range, so no
loss scaling is needed. Other CPUs (AVX2 only) keep float32: there bf16 is emulated and slower. ``--no-amp`` turns
mixed precision off on every device. Measured (README "Training speed") on a 2-core Xeon with AMX and a 2-core AMD
EPYC Zen 4 with AVX-512 BF16.
"""
from __future__ import annotations

import torch
from torch import nn


def _cpu_feature(name: str) -> bool:
    """torch's probe ``torch.cpu.<name>()``, False where this torch build has no such probe."""
    probe = getattr(torch.cpu, name, None)
    try:
        return bool(probe()) if probe is not None else False
    except RuntimeError:  # a torch build without the CPU feature probe
        return False


def cpu_bf16_unit() -> str | None:
    """The hardware that runs oneDNN's bf16 convolutions and matmuls on this CPU: 'AMX' (tiles), 'AVX-512 BF16' (dot
    products), or None where bf16 would be emulated (AVX2-only CPUs)."""
    if _cpu_feature('_is_amx_tile_supported'):
        return 'AMX'
    if _cpu_feature('_is_avx512_bf16_supported'):
        return 'AVX-512 BF16'
    return None


def training_autocast_dtype(device: torch.device, enabled: bool = True,
                            has_bf16: bool | None = None) -> torch.dtype | None:
    """The autocast dtype of a training step on ``device``: float16 on CUDA (YOLOv5's AMP), bfloat16 on a CPU with
    bf16 hardware (``cpu_bf16_unit``), None (float32, no autocast) otherwise or when ``enabled`` is False
    (``--no-amp``)."""
    device = torch.device(device)
    if not enabled:
        return None
    if device.type == 'cuda':
        return torch.float16
    if device.type == 'cpu' and (cpu_bf16_unit() is not None if has_bf16 is None else has_bf16):
        return torch.bfloat16
    return None


def describe(dtype: torch.dtype | None, device: torch.device) -> str:
    """One line for the training log."""
    if dtype is None:
        return f'AMP: off, training in float32 on {torch.device(device).type}'
    if dtype == torch.float16:
        kind = 'fp16 AMP with loss scaling'
    else:  # probed only here; a bf16 dtype forced on a CPU without bf16 hardware says so rather than 'with None'
        unit = cpu_bf16_unit()
        cpu = f'CPU with {unit}' if unit else 'no bf16 hardware on this CPU: emulated, slower than float32'
        kind = f'bf16 autocast ({cpu})'
    return f'AMP: {kind}; parameters, optimizer, BatchNorm statistics and loss stay float32 (--no-amp: float32)'


def slow_in_bf16(conv: nn.Conv2d) -> bool:
    """Depthwise convolutions with stride 2 or a kernel above 3x3, whose bf16 backward oneDNN runs 2.4-5x slower than
    its float32 one on the CPU (measured on a 2-core Xeon with AMX: EfficientViT-M0's stride-2 3x3 over 256 channels
    28.7 vs 5.7 ms inside a training step, 2.5x in isolation; the per-head 5x5/7x7 ones 2.4-2.9x); stride-1 3x3
    depthwise (0.96x) and dense convolutions (1x1: 0.6-0.8x) are as fast or faster in bf16. On a Zen 4 with AVX-512
    BF16 the same exception pays too: an M0 step's backward took 173-193 ms with it, 222-269 ms without."""
    depthwise = conv.groups > 1 and conv.groups == conv.in_channels
    return depthwise and (conv.stride != (1, 1) or max(conv.kernel_size) > 3)


def conv_float32_under_cpu_autocast(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)``, but computed in float32 when CPU autocast is on and ``conv`` is one that bf16 slows down
    (``slow_in_bf16``); the output is then float32, which the next layer accepts under autocast."""
    if x.device.type == 'cpu' and torch.is_autocast_enabled('cpu') and slow_in_bf16(conv):
        with torch.autocast('cpu', enabled=False):
            return conv(x.float())
    return conv(x)
