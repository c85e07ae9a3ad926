"""AutoBatch (``train.py --batch-size -1``): the largest batch that fits a fraction of the free CUDA memory.

As YOLOv5 v7.0: train-mode forward + backward at batch sizes 1, 2, 4, 8 and 16 at the training image size (under AMP
when training uses it), a straight line fitted to peak memory against batch size, and the batch whose predicted memory
is ``fraction`` (0.8) of the memory free before profiling. On a CPU, with ``cudnn.benchmark`` on (it makes memory use
depend on the algorithm search) or when the fit is absurd, the default batch size is used with a message saying why.

The choice (``pick_batch_size``) is pure arithmetic on measured numbers, tested on its own; ``profile_memory`` is the
CUDA-only measurement.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from copy import deepcopy

import numpy as np
import torch

from utils.core.logging import LOGGER, colorstr

PROFILE_BATCH_SIZES = (1, 2, 4, 8, 16)
GIB = 1 << 30
PREFIX = colorstr('AutoBatch: ')


def pick_batch_size(batch_sizes: Sequence[int], mem_gib: Sequence[float | None], free_gib: float,
                    fraction: float = 0.8, default: int = 16) -> tuple[int, str]:
    """Batch size for ``fraction`` of ``free_gib`` from peak memory measured at ``batch_sizes`` (None = out of memory).

    Returns (batch size, '' or the reason the default was used). A batch at or past the first size that ran out
    of memory is cut back to the last size that fitted."""
    ok = [(b, m) for b, m in zip(batch_sizes, mem_gib) if m is not None]
    if len(ok) < 2:
        return default, f'too few batch sizes profiled ({len(ok)})'
    slope, intercept = np.polyfit([b for b, _ in ok], [m for _, m in ok], deg=1)
    if slope <= 0:
        return default, f'memory does not grow with batch size (slope {slope:.3g} GiB per image)'
    b = int(np.floor((free_gib * fraction - intercept) / slope + 1e-6))  # tolerate the fit's rounding (13.9999)
    if None in mem_gib:
        i = list(mem_gib).index(None)
        if b >= batch_sizes[i]:
            b = batch_sizes[max(i - 1, 0)]
    if not 1 <= b <= 1024:
        return default, f'computed batch size {b} is outside 1-1024 (CUDA anomaly? restart and retry)'
    return b, ''


def profile_memory(model: torch.nn.Module, imgsz: int, batch_sizes: Sequence[int], device: torch.device,
                   amp: bool = True) -> list[float | None]:
    """Peak reserved CUDA memory (GiB) of one train-mode forward + backward per batch size; None where it ran out."""
    out: list[float | None] = []
    for b in batch_sizes:
        try:
            torch.cuda.reset_peak_memory_stats(device)
            x = torch.empty(b, 3, imgsz, imgsz, device=device).uniform_()
            with torch.autocast('cuda', enabled=amp):
                y = model(x)
            sum(t.float().sum() for t in (y if isinstance(y, (list, tuple)) else [y])).backward()
            model.zero_grad(set_to_none=True)
            out.append(torch.cuda.max_memory_reserved(device) / GIB)
        except torch.cuda.OutOfMemoryError:
            out.append(None)
        finally:
            torch.cuda.empty_cache()
    return out


def autobatch(model: torch.nn.Module, imgsz: int = 640, fraction: float = 0.8, batch_size: int = 16,
              amp: bool = True, profile: Callable[..., list[float | None]] = profile_memory) -> int:
    """The training batch size for ``model`` at ``imgsz`` (see the module docstring); logs the choice."""
    device = next(model.parameters()).device
    if device.type != 'cuda':
        LOGGER.info(f'{PREFIX}CUDA not detected, using default CPU batch-size {batch_size}')
        return batch_size
    if torch.backends.cudnn.benchmark:
        LOGGER.info(f'{PREFIX}requires torch.backends.cudnn.benchmark=False, using default batch-size {batch_size}')
        return batch_size
    total = torch.cuda.get_device_properties(device).total_memory / GIB
    reserved, allocated = torch.cuda.memory_reserved(device) / GIB, torch.cuda.memory_allocated(device) / GIB
    free = total - (reserved + allocated)
    LOGGER.info(f'{PREFIX}computing optimal batch size for --imgsz {imgsz}: {torch.cuda.get_device_name(device)} '
                f'{total:.2f}G total, {reserved:.2f}G reserved, {allocated:.2f}G allocated, {free:.2f}G free')
    mem = profile(deepcopy(model).train(), imgsz, PROFILE_BATCH_SIZES, device, amp=amp)
    b, why = pick_batch_size(PROFILE_BATCH_SIZES, mem, free, fraction, batch_size)
    if why:
        LOGGER.warning(f'{PREFIX}WARNING ⚠️ {why}; using default batch-size {batch_size}')
        return batch_size
    LOGGER.info(f'{PREFIX}using batch-size {b} for {torch.cuda.get_device_name(device)} '
                f'(~{fraction * 100:.0f}% of the {free:.2f}G free) ✅')
    return b
