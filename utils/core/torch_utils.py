"""PyTorch helpers: device selection, seeding, BN fusing, parameter and FLOP counting, model summaries.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (no thop). The count runs on a copy of the model
whose parameters live on the ``meta`` device, so even a 640x640 count of YOLOv5x costs no real compute and leaves the
model (and any cache it keeps) untouched.
"""
from __future__ import annotations

import copy
import functools
import itertools
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from utils.core.logging import LOGGER


class DeviceError(ValueError):
    """A --device string that names no usable device."""


def select_device(device: str = '', batch_size: int = 0) -> torch.device:
    """Turn a YOLOv5 ``--device`` string into a torch.device.

    '' -> cuda:0 when CUDA is available, else cpu; 'cpu'; 'mps'; '0' -> cuda:0; '0,1' -> cuda:0 (the first listed
    device; DDP launches one process per device). For several GPUs the batch size must divide evenly among them.
    """
    spec = str(device).strip().lower().replace('cuda:', '').replace(' ', '')
    if spec == 'cpu':
        LOGGER.info(f'torch-{torch.__version__} CPU')
        return torch.device('cpu')
    if spec == 'mps':
        if not (hasattr(torch.backends, 'mps') and torch.backends.mps.is_available()):
            raise DeviceError("--device mps requested but MPS is not available on this machine")
        return torch.device('mps')
    if spec == '':
        if torch.cuda.is_available():
            return _cuda_device([0], batch_size)
        LOGGER.info(f'torch-{torch.__version__} CPU')
        return torch.device('cpu')
    bad = f"invalid --device {device!r}: use '', 'cpu', 'mps' or CUDA indices like '0' or '0,1'"
    try:
        ids = [int(s) for s in spec.split(',') if s != '']
    except ValueError:
        raise DeviceError(bad) from None
    if not ids:
        raise DeviceError(bad)
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    missing = [i for i in ids if i >= available]
    if missing:
        raise DeviceError(f'invalid --device {device!r}: CUDA device(s) {missing} not available '
                          f'(torch.cuda.device_count()={available})')
    return _cuda_device(ids, batch_size)


def _cuda_device(ids: list[int], batch_size: int) -> torch.device:
    """Check the batch splits evenly over the listed GPUs, log them and return the first one."""
    if len(ids) > 1 and batch_size > 0 and batch_size % len(ids):
        raise DeviceError(f'batch-size {batch_size} not a multiple of the number of GPUs {len(ids)}')
    for i in ids:
        p = torch.cuda.get_device_properties(i)
        LOGGER.info(f'torch-{torch.__version__} CUDA:{i} ({p.name}, {p.total_memory / (1 << 20):.0f}MiB)')
    return torch.device(f'cuda:{ids[0]}')


def training_memory_format(device: torch.device) -> torch.memory_format:
    """Channels-last on CPU, where one training step at 256 px, batch 16, 2 threads took 19 % (EfficientViT-M0) and
    24 % (yolov5n) less time (depthwise-conv backward above all; README "Where we differ"); CUDA keeps YOLOv5's
    contiguous layout, which is not measured here."""
    return torch.channels_last if torch.device(device).type == 'cpu' else torch.contiguous_format


def _to_channels_last(grad: torch.Tensor) -> torch.Tensor:
    return grad.contiguous(memory_format=torch.channels_last)


def channels_last_grad(x: torch.Tensor) -> torch.Tensor:
    """``x`` unchanged, but its gradient reaches the layer before in channels-last layout when ``x`` is channels-last.

    Gradients that come back through ``split``/``chunk``/``cat`` or matmul views arrive in NCHW layout; a
    BatchNorm backward with a channels-last input and an NCHW gradient takes a slow mixed-layout kernel (measured
    9 ms instead of 1.4 ms for one EfficientViT attention BN at 256 px, batch 16). One copy of the gradient is cheaper.
    """
    if x.requires_grad and x.dim() == 4 and not x.is_contiguous() \
            and x.is_contiguous(memory_format=torch.channels_last):
        x.register_hook(_to_channels_last)  # a tensor hook, so in-place ops on x afterwards stay allowed
    return x


def _to_contiguous(grad: torch.Tensor) -> torch.Tensor:
    return grad.contiguous()


def nchw_grad(x: torch.Tensor) -> torch.Tensor:
    """``x`` unchanged, but its gradient reaches the layer before in NCHW layout when ``x`` is NCHW: the mirror of
    ``channels_last_grad`` for a layer computed in NCHW inside a channels-last network, whose gradient comes back
    channels-last (EfficientViT's 8-channel stem BatchNorm: its backward 2.2x faster with one NCHW copy of the
    gradient, bf16, 112x112, batch 16)."""
    if x.requires_grad and x.dim() == 4 and x.is_contiguous() and x.shape[1] > 1:
        x.register_hook(_to_contiguous)
    return x


def available_cpus() -> int:
    """Cores this process may run on (its affinity mask, what a container or ``taskset`` grants), not the machine's."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no affinity API (macOS, Windows)
        return os.cpu_count() or 1


def init_seeds(seed: int = 0, deterministic: bool = False) -> None:
    """Seed python, numpy and torch (all devices); optionally ask torch for deterministic algorithms."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        # Deterministic mode also fills every new tensor with NaN (a debugging aid: it exposes kernels that read
        # memory they never wrote). Our kernels write what they read, so it changes no result, and it cost 24 % of an
        # EfficientViT-M0 CPU training step (benchmarks/results/train_profile.md). Determinism does not depend on it.
        torch.utils.deterministic.fill_uninitialized_memory = False
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        os.environ['CUBLAS_WORKSPACE_CONFIG'] = ':4096:8'
        os.environ['PYTHONHASHSEED'] = str(seed)


def is_parallel(model: nn.Module) -> bool:
    """True for DataParallel / DistributedDataParallel wrappers."""
    return isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel))


def de_parallel(model: nn.Module) -> nn.Module:
    """The wrapped model of a DP/DDP wrapper, or the model itself."""
    return model.module if is_parallel(model) else model


def time_sync() -> float:
    """time.time() after waiting for pending CUDA work, so timings measure the work and not its launch."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.time()


def smart_inference_mode() -> Callable[[Callable], Callable]:
    """Decorator: run the function under torch.inference_mode()."""

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with torch.inference_mode():
                return fn(*args, **kwargs)

        return wrapper

    return decorate


@torch.no_grad()
def fuse_conv_and_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """Fold an eval-mode BatchNorm into the preceding conv: W' = W*g/sqrt(var+eps), b' = (b-mu)*g/sqrt(var+eps)+beta."""
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, kernel_size=conv.kernel_size, stride=conv.stride,
                      padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True,
                      padding_mode=conv.padding_mode).to(device=conv.weight.device, dtype=conv.weight.dtype)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    fused.weight.requires_grad_(False)
    fused.bias.requires_grad_(False)
    return fused


def initialize_weights(model: nn.Module) -> None:
    """YOLOv5's init: BatchNorm eps=1e-3, momentum=0.03; activations in place. Conv keeps PyTorch's default init."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 1e-3
            m.momentum = 0.03
        elif isinstance(m, (nn.Hardswish, nn.LeakyReLU, nn.ReLU, nn.ReLU6, nn.SiLU)):
            m.inplace = True


# Activations whose in-place form makes autograd save a copy of the input (their gradient needs it): in training,
# in place costs one more pass over every activation map and saves no memory (tests/core/test_torch_utils.py checks
# the list against autograd). ReLU, LeakyReLU, ELU, CELU and SELU differentiate through their output: in place is free.
CLONING_INPLACE_ACTIVATIONS = (nn.SiLU, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Mish)  # Hardtanh: ReLU6 too


def out_of_place_for_training(model: nn.Module) -> int:
    """Run ``CLONING_INPLACE_ACTIVATIONS`` out of place; returns how many were in place. The values and gradients are
    bit-identical; one forward + backward of yolov5n (320 px, batch 16) ran 1-2 % faster on 2 AVX2 cores (40
    alternating pairs; whole epochs cannot resolve that). YOLOv5 sets every SiLU in place (``initialize_weights``),
    which only pays where no gradient is recorded."""
    changed = 0
    for m in model.modules():
        if isinstance(m, CLONING_INPLACE_ACTIVATIONS) and getattr(m, 'inplace', False):
            m.inplace = False
            changed += 1
    return changed


def _input_channels(model: nn.Module) -> int:
    """Input channels the model expects: its yaml 'ch', else the first conv's input width."""
    yaml = getattr(model, 'yaml', None)
    if isinstance(yaml, dict) and 'ch' in yaml:
        return int(yaml['ch'])
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    return 3


def meta_copy(model: nn.Module) -> nn.Module:
    """A deep copy whose parameters and buffers are shape-only meta tensors (copies no tensor data)."""
    memo: dict[int, Any] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device='meta'), requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = torch.empty_like(b, device='meta')
    for m in model.modules():  # plain tensor attributes (e.g. Detect's grid caches) are not copied either
        for v in vars(m).values():
            for t in (v if isinstance(v, (list, tuple)) else [v]):
                if isinstance(t, torch.Tensor) and id(t) not in memo:
                    memo[id(t)] = torch.empty_like(t, device='meta')
    return copy.deepcopy(model, memo)


def _count(model: nn.Module, x: torch.Tensor) -> int:
    """Total FLOPs (FlopCounterMode: 2 per multiply-accumulate) of one forward of x."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    return counter.get_total_flops()


def flops(model: nn.Module, imgsz: int | tuple[int, int] = 640) -> float:
    """GFLOPs of one forward at imgsz (int or (h, w)), counted by torch.utils.flop_counter.

    FlopCounterMode counts 2 FLOPs per multiply-accumulate of convs/matmuls (what YOLOv5 reports as thop MACs x 2);
    elementwise ops (BN, activations, pooling) are not counted. Returns 0.0 when the model cannot be run.
    """
    model = de_parallel(model)
    h, w = (imgsz, imgsz) if isinstance(imgsz, int) else imgsz
    ch = _input_channels(model)
    p = next((t for t in itertools.chain(model.parameters(), model.buffers()) if t.is_floating_point()), None)
    device, dtype = (p.device, p.dtype) if p is not None else (torch.device('cpu'), torch.float32)
    try:
        meta = meta_copy(model).train()  # train mode: no caches, same conv/matmul work as eval
        return _count(meta, torch.zeros(1, ch, h, w, device='meta', dtype=dtype)) / 1e9
    except Exception:  # an op without a meta kernel: count a real forward instead (slower, still exact)
        pass
    try:
        real = copy.deepcopy(model).eval()  # a copy, so BN statistics and caches of the model stay untouched
        return _count(real, torch.zeros(1, ch, h, w, device=device, dtype=dtype)) / 1e9
    except Exception as e:
        LOGGER.warning(f'WARNING: GFLOPs not computed: {type(e).__name__}: {e}')
        return 0.0


def model_name(model: nn.Module) -> str:
    """YOLOv5's summary name: the yaml stem with 'yolov5' written 'YOLOv5', else 'Model'."""
    yaml_file = getattr(model, 'yaml_file', '') or ''
    stem = Path(str(yaml_file)).stem
    return stem.replace('yolov5', 'YOLOv5') if stem else 'Model'


def model_info(model: nn.Module, verbose: bool = False,
               imgsz: int | tuple[int, int] = 640) -> tuple[int, int, int, float]:
    """Log '<Name> summary: L layers, P parameters, G gradients, F GFLOPs'; return (L, P, G, F).

    verbose=True first lists every parameter (name, shape, mean, std), as YOLOv5's model_info does.
    """
    model = de_parallel(model)
    n_p = sum(p.numel() for p in model.parameters())
    n_g = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_l = len(list(model.modules()))
    if verbose:
        LOGGER.info(f"{'layer':>5} {'name':>40} {'gradient':>9} {'parameters':>12} {'shape':>20} "
                    f"{'mu':>10} {'sigma':>10}")
        for i, (name, p) in enumerate(model.named_parameters()):
            sd = p.float().std().item() if p.numel() > 1 else 0.0
            LOGGER.info(f'{i:5g} {name:>40} {p.requires_grad!s:>9} {p.numel():12g} {list(p.shape)!s:>20} '
                        f'{p.float().mean().item():10.3g} {sd:10.3g}')
    gflops = flops(model, imgsz)
    fs = f', {gflops:.1f} GFLOPs' if gflops else ''
    LOGGER.info(f'{model_name(model)} summary: {n_l} layers, {n_p} parameters, {n_g} gradients{fs}')
    return n_l, n_p, n_g, gflops


class Timer:
    """Accumulated wall time of a code block, synchronising CUDA so GPU work is counted where it happens."""

    def __init__(self, device: torch.device):
        self.cuda, self.t = device.type == 'cuda', 0.0

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *args):
        if self.cuda:
            torch.cuda.synchronize()
        self.t += time.perf_counter() - self.start
