"""YOLOv5 v7.0 training loss: anchor/cell target assignment, CIoU box loss, IoU-valued objectness, BCE class loss.

Gains: the loss owns them (``LossGains``). By default they are ``hyp['box']``, ``hyp['obj']`` and ``hyp['cls']`` as
found; the trainer passes ``LossGains.scaled``, YOLOv5's train.py rescaling (``box * 3/nl``, ``cls * nc/80 * 3/nl``,
``obj * (imgsz/640)**2 * 3/nl``), and ``label_smoothing``, so the hyperparameters themselves are never rewritten.
The returned total is multiplied by the batch size, which is what YOLOv5's default hyps are tuned for.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn as nn

from utils.core.torch_utils import de_parallel
from utils.ops.boxes import bbox_iou

REQUIRED_HYP = ('box', 'obj', 'cls', 'cls_pw', 'obj_pw', 'anchor_t', 'fl_gamma')
# neighbour offsets in cell units * g: centre, left, up, right, down (a target may also claim 2 neighbours)
_G = 0.5
_OFFSETS = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], dtype=torch.float32) * _G


def smooth_bce(eps: float = 0.1) -> tuple[float, float]:
    """Label-smoothed BCE targets (positive, negative) = (1 - eps/2, eps/2) (Müller et al., 2019)."""
    return 1.0 - 0.5 * eps, 0.5 * eps


class FocalLoss(nn.Module):
    """Wrap a ``BCEWithLogitsLoss``: scale each element by alpha_t * (1 - p_t)**gamma (Lin et al., 2017)."""

    def __init__(self, loss_fcn: nn.BCEWithLogitsLoss, gamma: float = 1.5, alpha: float = 0.25):
        super().__init__()
        self.loss_fcn = loss_fcn
        self.gamma = gamma
        self.alpha = alpha
        self.reduction = loss_fcn.reduction
        self.loss_fcn.reduction = 'none'  # the focal factor is applied per element, then reduced here

    def forward(self, pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
        loss = self.loss_fcn(pred, true)
        p = torch.sigmoid(pred)
        p_t = true * p + (1 - true) * (1 - p)
        alpha_t = true * self.alpha + (1 - true) * (1 - self.alpha)
        loss = loss * alpha_t * (1.0 - p_t) ** self.gamma
        if self.reduction == 'mean':
            return loss.mean()
        return loss.sum() if self.reduction == 'sum' else loss


@dataclass(frozen=True)
class LossGains:
    """The multipliers of the box, objectness and class losses."""

    box: float
    obj: float
    cls: float

    @classmethod
    def from_hyp(cls, hyp: Mapping[str, float]) -> LossGains:
        """The gains as the hyperparameters state them."""
        return cls(hyp['box'], hyp['obj'], hyp['cls'])

    @classmethod
    def scaled(cls, hyp: Mapping[str, float], nl: int, nc: int, imgsz: int) -> LossGains:
        """YOLOv5's scaling to the number of detection layers, classes and the image size (its train.py)."""
        return cls(hyp['box'] * (3 / nl), hyp['obj'] * ((imgsz / 640) ** 2 * 3 / nl), hyp['cls'] * (nc / 80 * 3 / nl))


class ComputeLoss:
    """YOLOv5 v7.0 loss for a model whose last layer is ``Detect`` (anchors in grid units) and with ``model.hyp``.

    Build it after the model is on its device (the BCE ``pos_weight`` tensors are created there).

    When two targets claim the same cell and anchor, the objectness target is the IoU written last (YOLOv5's
    ``sort_obj_iou=False``).
    """

    def __init__(self, model: nn.Module, autobalance: bool = False, gains: LossGains | None = None,
                 label_smoothing: float | None = None):
        """``gains`` default to the hyperparameters' own; ``label_smoothing`` to ``hyp.get('label_smoothing', 0)``."""
        model = de_parallel(model)
        h = getattr(model, 'hyp', None)
        if not isinstance(h, dict):
            raise ValueError('ComputeLoss: model.hyp must be a dict of hyperparameters (set by the trainer)')
        missing = [k for k in REQUIRED_HYP if k not in h]
        if missing:
            raise ValueError(f'ComputeLoss: model.hyp is missing key(s) {missing}')
        det = model.model[-1]
        device = det.anchors.device
        bce_cls = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([float(h['cls_pw'])], device=device))
        bce_obj = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([float(h['obj_pw'])], device=device))
        eps = h.get('label_smoothing', 0.0) if label_smoothing is None else label_smoothing
        self.cp, self.cn = smooth_bce(eps=float(eps))
        self.gains = gains or LossGains.from_hyp(h)
        if h['fl_gamma'] > 0:
            bce_cls, bce_obj = FocalLoss(bce_cls, h['fl_gamma']), FocalLoss(bce_obj, h['fl_gamma'])
        self.BCEcls, self.BCEobj = bce_cls, bce_obj
        self.balance = {3: [4.0, 1.0, 0.4]}.get(det.nl, [4.0, 1.0, 0.25, 0.06, 0.02])[:det.nl]
        self.ssi = [int(s) for s in det.stride].index(16) if autobalance else 0  # stride-16 level stays at 1.0
        self.gr = 1.0  # objectness target = (1 - gr) + gr * IoU
        self.hyp = h
        self.autobalance = autobalance
        self.na, self.nc, self.nl = det.na, det.nc, det.nl
        self.det = det  # anchors are read from Detect at every call (AutoAnchor or .half().float() may replace them)
        self.device = device

    def __call__(self, p: list[torch.Tensor], targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """p: nl raw outputs (bs, na, ny, nx, 5+nc); targets (nt, 6) [img, cls, x, y, w, h] normalised.

        Returns ((box + obj + cls) * bs as a 1-element tensor, tensor([box, obj, cls]) detached).
        """
        device = p[0].device
        targets = targets.to(device)
        lcls, lbox, lobj = (torch.zeros(1, device=device) for _ in range(3))
        tcls, tbox, indices, anchors = self.build_targets(p, targets)
        for i, pi in enumerate(p):
            b, a, gj, gi = indices[i]
            tobj = torch.zeros(pi.shape[:4], dtype=pi.dtype, device=device)
            n = b.shape[0]
            if n:
                pxy, pwh, _, pcls = pi[b, a, gj, gi].split((2, 2, 1, self.nc), 1)
                pxy = pxy.sigmoid() * 2 - 0.5  # offset in [-0.5, 1.5] from the cell corner
                pwh = (pwh.sigmoid() * 2) ** 2 * anchors[i]  # in (0, 4) x anchor
                iou = bbox_iou(torch.cat((pxy, pwh), 1), tbox[i], CIoU=True).squeeze(-1)
                lbox = lbox + (1.0 - iou).mean()
                iou = iou.detach().clamp(0).type(tobj.dtype)
                if self.gr < 1:
                    iou = (1.0 - self.gr) + self.gr * iou
                tobj[b, a, gj, gi] = iou
                if self.nc > 1:  # a single-class model has no class loss
                    t = torch.full_like(pcls, self.cn)
                    t[torch.arange(n, device=device), tcls[i]] = self.cp
                    lcls = lcls + self.BCEcls(pcls, t)
            obji = self.BCEobj(pi[..., 4], tobj)
            lobj = lobj + obji * self.balance[i]
            if self.autobalance:
                self.balance[i] = self.balance[i] * 0.9999 + 0.0001 / obji.detach().item()
        if self.autobalance:
            self.balance = [x / self.balance[self.ssi] for x in self.balance]
        lbox = lbox * self.gains.box
        lobj = lobj * self.gains.obj
        lcls = lcls * self.gains.cls
        bs = p[0].shape[0]
        return (lbox + lobj + lcls) * bs, torch.cat((lbox, lobj, lcls)).detach()

    def build_targets(self, p: list[torch.Tensor], targets: torch.Tensor) -> tuple[list, list, list, list]:
        """Assign every target to anchors (wh ratio < anchor_t) and to up to 3 cells per level.

        Returns per level: tcls (n,), tbox (n, 4) [x - gi, y - gj, w, h] in grid units, indices (b, a, gj, gi),
        anchors (n, 2) grid units.
        """
        na, nt = self.na, targets.shape[0]
        device = targets.device
        tcls, tbox, indices, anch = [], [], [], []
        ai = torch.arange(na, device=device, dtype=targets.dtype).view(na, 1).repeat(1, nt)
        targets = torch.cat((targets.repeat(na, 1, 1), ai[..., None]), 2)  # (na, nt, 7): img cls x y w h anchor
        off = _OFFSETS.to(device, targets.dtype)
        gain = torch.ones(7, device=device, dtype=targets.dtype)
        for i in range(self.nl):
            anchors, shape = self.det.anchors[i].to(device, targets.dtype), p[i].shape  # (na, 2) grid units
            gain[2:6] = torch.tensor(shape, device=device, dtype=targets.dtype)[[3, 2, 3, 2]]  # nx ny nx ny
            t = targets * gain  # to grid units
            if nt:
                r = t[..., 4:6] / anchors[:, None]  # wh ratio to each anchor
                t = t[torch.max(r, 1 / r).max(2)[0] < self.hyp['anchor_t']]
                gxy = t[:, 2:4]
                gxi = gain[[2, 3]] - gxy  # distance to the right/bottom edge
                left, up = ((gxy % 1 < _G) & (gxy > 1)).T
                right, down = ((gxi % 1 < _G) & (gxi > 1)).T
                keep = torch.stack((torch.ones_like(left), left, up, right, down))
                t = t.repeat((5, 1, 1))[keep]
                offsets = (torch.zeros_like(gxy)[None] + off[:, None])[keep]
            else:
                t, offsets = targets[0], 0
            b, c = t[:, :2].long().T
            gxy, gwh, a = t[:, 2:4], t[:, 4:6], t[:, 6].long()
            gij = (gxy - offsets).long()
            gij[:, 0].clamp_(0, shape[3] - 1)
            gij[:, 1].clamp_(0, shape[2] - 1)
            gi, gj = gij.T
            indices.append((b, a, gj, gi))
            tbox.append(torch.cat((gxy - gij, gwh), 1))
            anch.append(anchors[a])
            tcls.append(c)
        return tcls, tbox, indices, anch
