"""Exponential moving average of model weights (YOLOv5's ``ModelEMA``): validation and checkpoints use the EMA."""
from __future__ import annotations

import math
from collections.abc import Iterable
from copy import deepcopy

import torch
import torch.nn as nn

from models.yolo import DetectionModel
from utils.core.torch_utils import de_parallel


def copy_attr(dst: object, src: object, include: Iterable[str] = (), exclude: Iterable[str] = ()) -> None:
    """Copy public instance attributes of ``src`` onto ``dst`` (only ``include`` if given, never ``exclude``).

    ``training`` is never copied, so an EMA stays in eval mode whatever mode the model is in.
    """
    include, exclude = tuple(include), (*exclude, 'training')
    for k, v in src.__dict__.items():
        if (include and k not in include) or k.startswith('_') or k in exclude:
            continue
        setattr(dst, k, v)


class ModelEMA:
    """Keep ``ema = d * ema + (1 - d) * model`` over every floating-point state_dict entry (weights and BN stats).

    The decay ramps up as ``d = decay * (1 - exp(-updates / tau))`` so the first updates follow the model closely
    (early weights are poor) and later ones average over ~1/(1-decay) steps. The EMA copy is kept in eval mode with
    gradients off; it is a copy of the unwrapped model, so DP/DDP wrappers never reach checkpoints. A
    DetectionModel's frozen entries are copied, not averaged: ``d*v + (1-d)*v`` is not always ``v`` in floating point.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000, updates: int = 0):
        self.ema = deepcopy(de_parallel(model)).eval()
        self.updates = updates  # number of EMA updates so far (one per optimizer step)
        self.decay_max = decay
        self.tau = tau
        for p in self.ema.parameters():
            p.requires_grad_(False)

    def decay(self, updates: int) -> float:
        """The decay used for update number ``updates`` (1-based)."""
        return self.decay_max * (1 - math.exp(-updates / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the current model weights into the EMA (call after each optimizer step)."""
        self.updates += 1
        d = self.decay(self.updates)
        model = de_parallel(model)
        msd = model.state_dict()
        frozen = model.frozen_state_keys() if isinstance(model, DetectionModel) else set()
        averaged, current = [], []
        for k, v in self.ema.state_dict().items():
            if k in frozen:
                v.copy_(msd[k])
            elif v.dtype.is_floating_point:
                averaged.append(v)
                current.append(msd[k].detach().to(v.dtype))
        if averaged:  # one fused call per op over all tensors, the same arithmetic as v.mul_(d).add_(m, alpha=1-d)
            torch._foreach_mul_(averaged, d)
            torch._foreach_add_(averaged, current, alpha=1 - d)

    def update_attr(self, model: nn.Module, include: Iterable[str] = (),
                    exclude: Iterable[str] = ('process_group', 'reducer')) -> None:
        """Copy plain attributes (e.g. ``yaml, nc, hyp, names, stride, class_weights``) from the model to the EMA."""
        copy_attr(self.ema, de_parallel(model), include, exclude)
