"""Non-maximum suppression over raw YOLOv5 head outputs (YOLOv5 v7.0 semantics), on ``torchvision.ops``."""
from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
import torchvision

from utils.core.logging import LOGGER
from utils.ops.boxes import xywh2xyxy

NMS_CHUNK = 1024  # boxes per step of the early-stopping NMS (batched_nms runs per class above 1,000 boxes)


def _check_thresholds(conf_thres: float, iou_thres: float) -> None:
    """Reject thresholds outside [0, 1] with a one-line message (a common CLI mistake is passing 25 for 0.25)."""
    for name, value in (('conf_thres', conf_thres), ('iou_thres', iou_thres)):
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f'non_max_suppression: {name}={value} is invalid, valid values are between 0.0 and 1.0')


def _as_prediction(prediction) -> torch.Tensor:
    """The (bs, n, 5+nc) tensor from a bare tensor, an ndarray, or the eval-mode ``(pred, train_out)`` tuple."""
    if isinstance(prediction, (list, tuple)):
        prediction = prediction[0]
    if isinstance(prediction, np.ndarray):
        prediction = torch.from_numpy(prediction)
    if prediction.ndim != 3 or prediction.shape[-1] < 6:
        raise ValueError(f'non_max_suppression: expected predictions of shape (batch, n, 5 + nc), '
                         f'got {tuple(prediction.shape)}')
    return prediction


def _append_labels(x: torch.Tensor, lb, nc: int) -> torch.Tensor:
    """Append ground-truth rows [cls, x, y, w, h] (pixels) as predictions with objectness and class score 1."""
    lb = torch.as_tensor(lb, device=x.device, dtype=x.dtype)
    if not len(lb):
        return x
    v = torch.zeros((len(lb), nc + 5), device=x.device, dtype=x.dtype)
    v[:, :4] = lb[:, 1:5]
    v[:, 4] = 1.0
    v[torch.arange(len(lb), device=x.device), lb[:, 0].long() + 5] = 1.0
    return torch.cat((x, v), 0)


def _candidates(x: torch.Tensor, conf_thres: float, multi_label: bool, classes) -> torch.Tensor:
    """Rows (k, 6) [x1, y1, x2, y2, conf, cls] with conf = obj * cls above ``conf_thres``, for one image."""
    scores = x[:, 5:] * x[:, 4:5]  # final confidence = objectness x class probability
    box = xywh2xyxy(x[:, :4])
    if multi_label:  # one row per (box, class) pair above the threshold
        i, j = (scores > conf_thres).nonzero(as_tuple=False).T
        out = torch.cat((box[i], scores[i, j, None], j[:, None].to(x.dtype)), 1)
    else:  # the best class only
        conf, j = scores.max(1, keepdim=True)
        out = torch.cat((box, conf, j.to(x.dtype)), 1)[conf.view(-1) > conf_thres]
    if classes is not None:
        out = out[(out[:, 5:6] == torch.as_tensor(classes, device=out.device, dtype=out.dtype).view(1, -1)).any(1)]
    return out


def _nms_per_group(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, idx: torch.Tensor,
                   iou_thres: float) -> torch.Tensor:
    """The entries of ``idx`` that NMS keeps, run separately per group (as batched_nms does above 1,000 boxes), in
    ascending order."""
    kept = [sel[torchvision.ops.nms(boxes[sel], scores[sel], iou_thres)]
            for sel in (idx[groups[idx] == g] for g in groups[idx].unique())]
    return torch.cat(kept).sort().values if kept else idx


def _nms_first(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou_thres: float,
               max_det: int, chunk: int = NMS_CHUNK) -> torch.Tensor:
    """``torchvision.ops.batched_nms(boxes, scores, groups, iou_thres)[:max_det]`` for boxes sorted by descending
    score, without running NMS past the ``max_det``-th kept box. Greedy NMS keeps a box when no kept box of its group
    ranked above it overlaps it, so the first ``max_det`` are known once that many are kept: the boxes are taken
    ``chunk`` at a time, those that a box kept from an earlier chunk suppresses are dropped, and NMS runs on the rest
    of the chunk. An epoch-1 quick-start model puts ~4,000 (box, class) pairs over conf 0.001 on a val image and NMS
    keeps ~2,000 of them: 10.7 ms an image, 2.1 ms when it stops at the 300th."""
    if len(boxes) <= chunk:
        return torchvision.ops.batched_nms(boxes, scores, groups, iou_thres)[:max_det]
    kept = boxes.new_zeros(0, dtype=torch.long)
    for start in range(0, len(boxes), chunk):
        idx = torch.arange(start, min(start + chunk, len(boxes)), device=boxes.device)
        if len(kept):  # dropped: overlapped by a kept, higher-ranked box of the same group
            overlap = torchvision.ops.box_iou(boxes[idx], boxes[kept]) > iou_thres
            idx = idx[~(overlap & (groups[idx, None] == groups[None, kept])).any(1)]
        kept = torch.cat((kept, _nms_per_group(boxes, scores, groups, idx, iou_thres)))
        if len(kept) >= max_det:
            break
    return kept[:max_det]


def non_max_suppression(prediction, conf_thres: float = 0.25, iou_thres: float = 0.45,
                        classes: Sequence[int] | None = None, agnostic: bool = False, multi_label: bool = False,
                        labels: Sequence = (), max_det: int = 300, max_nms: int = 30000,
                        time_limit: float | None = None) -> list[torch.Tensor]:
    """Filter by confidence and suppress overlapping boxes per class; one (n, 6) tensor per image.

    Args:
        prediction: (bs, n, 5+nc) raw decoded head output [cx, cy, w, h, obj, cls...] or the ``(pred, train_out)``
            tuple of an eval-mode model.
        conf_thres: minimum objectness and minimum obj x cls score. iou_thres: IoU above which boxes are suppressed.
        classes: keep only these class indices. agnostic: suppress across classes.
        multi_label: keep every class above ``conf_thres`` per box (val.py uses it; ignored when nc == 1).
        labels: per image, ground truth (m, 5) [cls, cx, cy, w, h] in pixels appended with confidence 1 (autolabel).
        max_det: detections kept per image. max_nms: boxes passed to NMS per image (highest confidence first).
        time_limit: seconds before giving up on the batch with a warning (default 0.5 + 0.05 * bs, as YOLOv5).

    Returns:
        list of (n, 6) tensors [x1, y1, x2, y2, conf, cls] sorted by confidence, in the input dtype and device.
    """
    _check_thresholds(conf_thres, iou_thres)
    prediction = _as_prediction(prediction)
    device = prediction.device
    if device.type == 'mps':  # torchvision NMS is not fully supported there
        prediction = prediction.cpu()
    bs, nc = prediction.shape[0], prediction.shape[2] - 5
    multi_label = multi_label and nc > 1
    time_limit = 0.5 + 0.05 * bs if time_limit is None else time_limit
    t0 = time.time()
    output = [torch.zeros((0, 6), device=device, dtype=prediction.dtype) for _ in range(bs)]
    keep_obj = prediction[..., 4] > conf_thres
    for xi, x in enumerate(prediction):
        x = x[keep_obj[xi]]
        if labels is not None and len(labels) > xi and len(labels[xi]):
            x = _append_labels(x, labels[xi], nc)
        if not x.shape[0]:
            continue
        x = _candidates(x, conf_thres, multi_label, classes)
        if not x.shape[0]:
            continue
        x = x[x[:, 4].argsort(descending=True)[:max_nms]]
        # fp32 for NMS: fp16 overflows and the CPU kernels want float
        boxes, scores = x[:, :4].float(), x[:, 4].float()
        groups = torch.zeros_like(x[:, 5], dtype=torch.long) if agnostic else x[:, 5].long()
        i = _nms_first(boxes, scores, groups, iou_thres, max_det)
        output[xi] = x[i].to(device)
        if time.time() - t0 > time_limit:
            LOGGER.warning(f'WARNING ⚠️ NMS time limit {time_limit:.3f}s exceeded')
            break
    return output
