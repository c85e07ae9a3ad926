"""Optimizer parameter groups, LR schedules and warmup as YOLOv5 v7.0 trains.

YOLOv5 splits parameters into three groups and builds the optimizer with the biases first, so
``param_groups[0]`` = biases (no decay, warmed up from ``warmup_bias_lr`` down), ``[1]`` = weights with decay,
``[2]`` = weights without decay (normalisation weights, plus whatever the model names in ``no_weight_decay()``, as
timm asks its models: EfficientViT's ``attention_biases``, a learned positional table, not a weight to shrink). The
``x/lr0..2`` columns of results.csv follow this order. Which layers ``--freeze`` means is here; freezing itself is
the model's (``DetectionModel.freeze``).
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from utils.core.logging import LOGGER, colorstr
from utils.engine.options import OPTIMIZERS  # the names train.py accepts, defined once (without torch)

NOMINAL_BATCH = 64  # YOLOv5's nbs: gradients are accumulated up to this many images per optimizer step


def is_norm(module: nn.Module) -> bool:
    """True for any normalisation layer: a torch.nn class named '*Norm*' or a custom class with 'Norm' in its name."""
    return isinstance(module, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm,
                               nn.RMSNorm)) or 'Norm' in type(module).__name__


def split_params(model: nn.Module, skip_decay: Iterable[str] = ()) -> tuple[list[nn.Parameter], list[nn.Parameter],
                                                                         list[nn.Parameter]]:
    """Return (decay, no_decay, biases): every parameter of ``model`` exactly once.

    - biases: every parameter named ``bias`` (norm biases included);
    - no_decay: weights of normalisation layers and the parameters named (full names) in ``skip_decay``;
    - decay: everything else (conv / linear weights, anchors-free extras).
    """
    skip = set(skip_decay)
    decay, no_decay, biases = [], [], []
    for prefix, module in model.named_modules():
        norm = is_norm(module)
        for name, p in module.named_parameters(recurse=False):
            if name == 'bias':
                biases.append(p)
            elif norm or (f'{prefix}.{name}' if prefix else name) in skip:
                no_decay.append(p)
            else:
                decay.append(p)
    return decay, no_decay, biases


def build_optimizer(model: nn.Module, name: str = 'SGD', lr: float = 0.01, momentum: float = 0.937,
                    decay: float = 5e-4, skip_decay: Iterable[str] = ()) -> torch.optim.Optimizer:
    """YOLOv5's smart_optimizer: groups [biases, decayed weights, undecayed weights] in that order.

    ``skip_decay``: the model's ``no_weight_decay()`` names. SGD uses Nesterov momentum; Adam/AdamW use
    ``betas=(momentum, 0.999)``. Frozen parameters stay in the groups (as YOLOv5); they never receive a gradient,
    and torch's optimizers leave a parameter without a gradient untouched (no decay, no momentum step).
    The step kernel is chosen by ``use_fast_step``: fused on the CPU, foreach elsewhere.
    """
    decay_p, no_decay_p, bias_p = split_params(model, skip_decay)
    if name == 'SGD':
        optimizer = torch.optim.SGD(bias_p, lr=lr, momentum=momentum, nesterov=True)
    elif name == 'Adam':
        optimizer = torch.optim.Adam(bias_p, lr=lr, betas=(momentum, 0.999))
    elif name == 'AdamW':
        optimizer = torch.optim.AdamW(bias_p, lr=lr, betas=(momentum, 0.999), weight_decay=0.0)
    else:
        raise ValueError(f'optimizer {name!r} not supported; choose one of {", ".join(OPTIMIZERS)}')
    optimizer.add_param_group({'params': decay_p, 'weight_decay': decay})
    optimizer.add_param_group({'params': no_decay_p, 'weight_decay': 0.0})
    use_fast_step(optimizer)
    LOGGER.info(f"{colorstr('optimizer:')} {type(optimizer).__name__}(lr={lr}) with parameter groups "
                f'{len(no_decay_p)} weight(decay=0.0), {len(decay_p)} weight(decay={decay}), {len(bias_p)} bias')
    return optimizer


def use_fast_step(optimizer: torch.optim.Optimizer) -> None:
    """Give every group the fastest step kernel torch has where its parameters live.

    On the CPU: torch's fused kernel (one C++ pass per tensor; M0's AdamW step 19.4 -> 6.6 ms on 2 AVX2 cores). Fused
    and foreach agree to ~1 ulp, not bit for bit (tested), so training's last bits differ from checkouts before
    2026-12-06; a run stays deterministic. Elsewhere: foreach, one call per group instead of one per parameter (torch
    picks it by itself only on CUDA; bit-identical to the per-parameter loop, tested). Also applied after a resume
    loads a checkpoint's groups, whose flags are those of the machine that saved it.
    """
    for group in optimizer.param_groups:
        on_cpu = all(p.device.type == 'cpu' for p in group['params'])
        group['fused'], group['foreach'] = (True, False) if on_cpu else (None, True)


class LinearLambda:
    """``lf(x) = (1 - x/epochs) * (1 - lrf) + lrf``: YOLOv5's default LR factor, from 1 at epoch 0 to lrf at the end.

    A class (not a closure) so LambdaLR.state_dict() records its numbers.
    """

    def __init__(self, epochs: int, lrf: float):
        self.epochs, self.lrf = epochs, lrf

    def __call__(self, x: float) -> float:
        return (1 - x / self.epochs) * (1.0 - self.lrf) + self.lrf


class OneCycleLambda:
    """``one_cycle(y1, y2, steps)``: half a cosine from y1 to y2 over ``steps`` (``--cos-lr`` uses y1=1, y2=lrf)."""

    def __init__(self, y1: float = 0.0, y2: float = 1.0, steps: int = 100):
        self.y1, self.y2, self.steps = y1, y2, steps

    def __call__(self, x: float) -> float:
        return ((1 - math.cos(x * math.pi / self.steps)) / 2) * (self.y2 - self.y1) + self.y1


def lr_lambda(epochs: int, lrf: float, cos: bool = False) -> LinearLambda | OneCycleLambda:
    """The per-epoch LR factor YOLOv5 uses: linear by default, one-cycle cosine with ``--cos-lr``."""
    return OneCycleLambda(1.0, lrf, epochs) if cos else LinearLambda(epochs, lrf)


def build_scheduler(optimizer: torch.optim.Optimizer, lf) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR stepped once per epoch, so group LR = initial_lr * lf(epoch)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lf)


def reschedule(scheduler: torch.optim.lr_scheduler.LambdaLR, lf) -> None:
    """Give a running LambdaLR a new factor ``lf`` (--time fixes the epoch count after epoch 0): the groups' LRs
    become what a scheduler built with ``lf`` would have set at its current epoch."""
    scheduler.lr_lambdas = [lf] * len(scheduler.optimizer.param_groups)
    lrs = [base * lf(scheduler.last_epoch) for base in scheduler.base_lrs]
    for group, lr in zip(scheduler.optimizer.param_groups, lrs):
        group['lr'] = lr
    scheduler._last_lr = lrs  # what get_last_lr() and the saved state report


def nominal_batch(hyp: dict) -> int:
    """Images per optimizer step: the optional hyp key ``nbs`` (our addition; YOLOv5 fixes it at 64).

    A short CPU budget gets four times the optimizer steps from ``nbs: 16`` at batch 16.
    """
    return int(hyp.get('nbs', NOMINAL_BATCH))  # load_hyp has checked it is a positive integer


def accumulate_steps(batch_size: int, nbs: int = NOMINAL_BATCH) -> int:
    """Batches per optimizer step so one step sees about ``nbs`` images: ``max(round(nbs / batch_size), 1)``."""
    return max(round(nbs / batch_size), 1)


def scaled_weight_decay(weight_decay: float, batch_size: int, nbs: int = NOMINAL_BATCH) -> float:
    """YOLOv5 rescales decay by the images per optimizer step: ``wd * batch_size * accumulate / nbs``."""
    return weight_decay * batch_size * accumulate_steps(batch_size, nbs) / nbs


def warmup_iterations(warmup_epochs: float, nb: int, minimum: int = 100) -> int:
    """Number of warmup iterations: ``max(round(warmup_epochs * nb), 100)`` (at least 100, as YOLOv5)."""
    return max(round(warmup_epochs * nb), minimum)


def _interp(x: float, x1: float, y0: float, y1: float) -> float:
    """np.interp on the segment [0, x1] (clamped)."""
    t = min(max(x / x1, 0.0), 1.0) if x1 > 0 else 1.0
    return y0 + t * (y1 - y0)


def warmup(optimizer: torch.optim.Optimizer, ni: int, nw: int, epoch: int, lf, hyp: dict, batch_size: int,
           nbs: int = NOMINAL_BATCH) -> int:
    """Apply YOLOv5's warmup at iteration ``ni`` (<= nw) and return the gradient-accumulation count to use.

    Linear over [0, nw]: accumulate 1 -> nbs/batch_size; group 0 (biases) LR warmup_bias_lr -> initial_lr*lf(epoch);
    other groups 0 -> initial_lr*lf(epoch); SGD momentum warmup_momentum -> momentum.
    """
    accumulate = max(1, round(_interp(ni, nw, 1.0, nbs / batch_size)))
    target = lf(epoch)
    for j, group in enumerate(optimizer.param_groups):
        start = hyp['warmup_bias_lr'] if j == 0 else 0.0
        group['lr'] = _interp(ni, nw, start, group['initial_lr'] * target)
        if 'momentum' in group:
            group['momentum'] = _interp(ni, nw, hyp['warmup_momentum'], hyp['momentum'])
    return accumulate


def group_lrs(optimizer: torch.optim.Optimizer) -> list[float]:
    """Current LR of each param group (results.csv ``x/lr0 x/lr1 x/lr2``)."""
    return [g['lr'] for g in optimizer.param_groups]


def freeze_indices(freeze: Iterable[int]) -> list[int]:
    """``--freeze`` as YOLOv5 reads it: one value N -> layers 0..N-1; several values -> exactly those layers.

    ``--freeze 5`` is the whole EfficientViT or Timm backbone (layers 0-4); ``--freeze 0`` (the default) nothing.
    """
    freeze = [int(i) for i in freeze]
    return list(range(freeze[0])) if len(freeze) == 1 else sorted(set(freeze))
