"""Several trained detectors run as one (``--weights a.pt b.pt`` in detect.py and val.py, as YOLOv5).

YOLOv5's "NMS ensemble": every model sees the same input, their decoded predictions are concatenated along the box
axis, and the usual NMS then keeps the best of all of them. The models must agree on the classes.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class Ensemble(nn.ModuleList):
    """Eval-mode detectors with the same ``nc``; forward returns (predictions of all models, None)."""

    def __init__(self, models: list[nn.Module]):
        super().__init__(models)
        if len(models) < 2:
            raise ValueError('an ensemble needs at least two models')
        ncs = [int(m.nc) for m in models]
        if len(set(ncs)) > 1:
            raise ValueError(f'ensemble models disagree on the number of classes: {ncs}')
        self.nc, self.names = ncs[0], models[0].names
        self.stride = max((m.stride for m in models), key=lambda s: float(s.max()))

    def forward(self, x: torch.Tensor, augment: bool = False) -> tuple[torch.Tensor, None]:
        outs = [m(x, augment=augment) if augment else m(x) for m in self]
        return torch.cat([o[0] if isinstance(o, (list, tuple)) else o for o in outs], 1), None
