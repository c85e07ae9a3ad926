"""Exponential moving average of model weights (YOLOv5's ``ModelEMA``): validation and checkpoints use the EMA."""
from __future__ import annotations

import math
import weakref
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
        self._source, self._cached = None, ([], [])  # (model, EMA module) the cached slot pairs belong to
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
        copied, averaged = self._pairs(model)
        for (ema_slots, ema_name), (model_slots, model_name) in copied:
            ema_slots[ema_name].copy_(model_slots[model_name])
        ema_tensors, model_tensors = [], []
        for (ema_slots, ema_name), (model_slots, model_name) in averaged:
            v, m = ema_slots[ema_name], model_slots[model_name]
            ema_tensors.append(v)
            model_tensors.append(m if m.dtype == v.dtype else m.to(v.dtype))
        if ema_tensors:  # one fused call per op over all tensors, the same arithmetic as v.mul_(d).add_(m, alpha=1-d)
            torch._foreach_mul_(ema_tensors, d)
            torch._foreach_add_(ema_tensors, model_tensors, alpha=1 - d)

    def _pairs(self, model: nn.Module) -> tuple[list, list]:
        """(copied, averaged): pairs of state-dict slots, EMA's first, as ``(owner dict, name)``; built once per model.

        Two ``state_dict()`` calls and the frozen-key walk cost ~12 ms per step for M0 (~2 % of a quick-start step).
        Slots are looked up again at every update, so tensors a ``.to()`` replaces are still followed (a model whose
        submodules are replaced must not reuse its EMA). A module with state-dict hooks is paired afresh each update.
        """
        if self._source is not None and self._source[0]() is model and self._source[1] is self.ema:
            return self._cached
        model_slots, ema_slots = state_slots(model), state_slots(self.ema)
        reusable = model_slots is not None and ema_slots is not None
        if not reusable:  # this step's state_dict() tensors, as before: fresh every update
            model_slots, ema_slots = ({k: (sd, k) for k in sd} for sd in (model.state_dict(), self.ema.state_dict()))
        frozen = model.frozen_state_keys() if isinstance(model, DetectionModel) else set()
        copied, averaged = [], []
        for key, ema_slot in ema_slots.items():
            if key in frozen:
                copied.append((ema_slot, model_slots[key]))
            elif ema_slot[0][ema_slot[1]].dtype.is_floating_point:
                averaged.append((ema_slot, model_slots[key]))
        if reusable:
            self._source, self._cached = (weakref.ref(model), self.ema), (copied, averaged)
        return copied, averaged

    def update_attr(self, model: nn.Module, include: Iterable[str] = (),
                    exclude: Iterable[str] = ('process_group', 'reducer')) -> None:
        """Copy plain attributes (e.g. ``yaml, nc, hyp, names, stride, class_weights``) from the model to the EMA."""
        copy_attr(self.ema, de_parallel(model), include, exclude)


def state_slots(module: nn.Module) -> dict[str, tuple[dict, str]] | None:
    """``module.state_dict()``'s entries as ``key -> (owner's _parameters or _buffers dict, name)``, in its order.

    None when the walk does not reproduce ``state_dict()`` exactly (a module with its own ``_save_to_state_dict`` or
    state-dict hooks): callers then cannot use slots for that module.
    """
    slots = {}
    for prefix, m in module.named_modules(remove_duplicate=False):
        head = f'{prefix}.' if prefix else ''
        for name, p in m._parameters.items():
            if p is not None:
                slots[f'{head}{name}'] = (m._parameters, name)
        for name, b in m._buffers.items():
            if b is not None and name not in m._non_persistent_buffers_set:
                slots[f'{head}{name}'] = (m._buffers, name)
    reference = module.state_dict()
    if list(reference) != list(slots) or any(
            reference[k].data_ptr() != owner[name].data_ptr() for k, (owner, name) in slots.items()):
        return None
    return slots
