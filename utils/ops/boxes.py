"""Box formats, rescaling from letterboxed to original images, and IoU variants (YOLOv5 v7.0 semantics).

Conventions: ``xyxy`` = corners (x1, y1, x2, y2); ``xywh`` = centre and size; a trailing ``n`` means normalised to
[0, 1] by the image width/height. Shapes are ``(h, w)``. The conversion functions accept torch tensors and numpy
arrays and return the same kind; ``clip_boxes`` and ``scale_boxes`` work in place, as YOLOv5's do.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torchvision

Array = torch.Tensor | np.ndarray


def _copy(x: Array) -> Array:
    """A float copy of ``x`` of the same kind (tensor or ndarray)."""
    if isinstance(x, torch.Tensor):
        return x.clone() if x.is_floating_point() else x.float()
    return np.array(x, dtype=np.float64 if np.asarray(x).dtype == np.float64 else np.float32)


def xyxy2xywh(x: Array) -> Array:
    """Corners (x1, y1, x2, y2) -> centre and size (cx, cy, w, h)."""
    y = _copy(x)
    y[..., 0] = (x[..., 0] + x[..., 2]) / 2
    y[..., 1] = (x[..., 1] + x[..., 3]) / 2
    y[..., 2] = x[..., 2] - x[..., 0]
    y[..., 3] = x[..., 3] - x[..., 1]
    return y


def xywh2xyxy(x: Array) -> Array:
    """Centre and size (cx, cy, w, h) -> corners (x1, y1, x2, y2)."""
    y = _copy(x)
    y[..., 0] = x[..., 0] - x[..., 2] / 2
    y[..., 1] = x[..., 1] - x[..., 3] / 2
    y[..., 2] = x[..., 0] + x[..., 2] / 2
    y[..., 3] = x[..., 1] + x[..., 3] / 2
    return y


def xywhn2xyxy(x: Array, w: int = 640, h: int = 640, padw: float = 0, padh: float = 0) -> Array:
    """Normalised (cx, cy, w, h) -> pixel corners in an image of size w x h placed at offset (padw, padh)."""
    y = _copy(x)
    y[..., 0] = w * (x[..., 0] - x[..., 2] / 2) + padw
    y[..., 1] = h * (x[..., 1] - x[..., 3] / 2) + padh
    y[..., 2] = w * (x[..., 0] + x[..., 2] / 2) + padw
    y[..., 3] = h * (x[..., 1] + x[..., 3] / 2) + padh
    return y


def xyxy2xywhn(x: Array, w: int = 640, h: int = 640, clip: bool = False, eps: float = 0.0) -> Array:
    """Pixel corners -> normalised (cx, cy, w, h); with ``clip`` the input is first clipped (in place) to the image."""
    if clip:
        clip_boxes(x, (h - eps, w - eps))
    y = _copy(x)
    y[..., 0] = ((x[..., 0] + x[..., 2]) / 2) / w
    y[..., 1] = ((x[..., 1] + x[..., 3]) / 2) / h
    y[..., 2] = (x[..., 2] - x[..., 0]) / w
    y[..., 3] = (x[..., 3] - x[..., 1]) / h
    return y


def xyn2xy(x: Array, w: int = 640, h: int = 640, padw: float = 0, padh: float = 0) -> Array:
    """Normalised points (x, y) -> pixel points (used for polygon segments)."""
    y = _copy(x)
    y[..., 0] = w * x[..., 0] + padw
    y[..., 1] = h * x[..., 1] + padh
    return y


def clip_boxes(boxes: Array, shape: tuple) -> Array:
    """Clip xyxy boxes in place to an image of shape (h, w); returns ``boxes`` for chaining."""
    h, w = shape[0], shape[1]
    if isinstance(boxes, torch.Tensor):  # per-column clamp_ is faster than a gather/scatter on tensors
        boxes[..., 0].clamp_(0, w)
        boxes[..., 1].clamp_(0, h)
        boxes[..., 2].clamp_(0, w)
        boxes[..., 3].clamp_(0, h)
    else:
        boxes[..., [0, 2]] = boxes[..., [0, 2]].clip(0, w)
        boxes[..., [1, 3]] = boxes[..., [1, 3]].clip(0, h)
    return boxes


def scale_boxes(img1_shape: tuple, boxes: Array, img0_shape: tuple, ratio_pad: tuple | None = None) -> Array:
    """Map xyxy boxes (in place) from the letterboxed image ``img1_shape`` back to the original ``img0_shape``.

    ``ratio_pad = ((gain_h, gain_w), (padw, padh))`` as stored by the dataloader; without it the letterbox gain
    and centred padding are recomputed from the two shapes. The result is clipped to the original image.
    """
    if ratio_pad is None:
        gain = min(img1_shape[0] / img0_shape[0], img1_shape[1] / img0_shape[1])
        pad = (img1_shape[1] - img0_shape[1] * gain) / 2, (img1_shape[0] - img0_shape[0] * gain) / 2
    else:
        gain, pad = ratio_pad[0][0], ratio_pad[1]
    boxes[..., [0, 2]] -= pad[0]
    boxes[..., [1, 3]] -= pad[1]
    boxes[..., :4] /= gain
    return clip_boxes(boxes, img0_shape)


def box_area(box: Array) -> Array:
    """Area of xyxy boxes (N, 4) -> (N,)."""
    return (box[..., 2] - box[..., 0]) * (box[..., 3] - box[..., 1])


def box_iou(box1: Array, box2: Array) -> Array:
    """Pairwise IoU of xyxy boxes (N, 4) x (M, 4) -> (N, M), via ``torchvision.ops.box_iou``.

    Degenerate pairs (both areas zero) give 0, not NaN. Numpy inputs give a numpy result.
    """
    is_np = isinstance(box1, np.ndarray)
    b1, b2 = torch.as_tensor(box1), torch.as_tensor(box2)
    if b1.dtype != b2.dtype:
        b1, b2 = b1.float(), b2.float()
    if not b1.is_floating_point():
        b1, b2 = b1.float(), b2.float()
    iou = torchvision.ops.box_iou(b1, b2).nan_to_num_(0.0)
    return iou.numpy() if is_np else iou


def bbox_ioa(box1: np.ndarray, box2: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """Intersection over the area of ``box2``: box1 (4,) xyxy against box2 (n, 4) xyxy -> (n,). Used by cutout."""
    b1_x1, b1_y1, b1_x2, b1_y2 = box1
    b2_x1, b2_y1, b2_x2, b2_y2 = box2.T
    inter = (np.minimum(b1_x2, b2_x2) - np.maximum(b1_x1, b2_x1)).clip(0) * \
            (np.minimum(b1_y2, b2_y2) - np.maximum(b1_y1, b2_y1)).clip(0)
    return inter / ((b2_x2 - b2_x1) * (b2_y2 - b2_y1) + eps)


def bbox_iou(box1: torch.Tensor, box2: torch.Tensor, xywh: bool = True, GIoU: bool = False, DIoU: bool = False,
             CIoU: bool = False, eps: float = 1e-7) -> torch.Tensor:
    """Element-wise IoU (or GIoU/DIoU/CIoU) of box1 (1, 4) or (n, 4) against box2 (n, 4) -> (n, 1).

    CIoU = IoU - (rho^2 / c^2 + alpha * v) with v = 4/pi^2 (atan(w2/h2) - atan(w1/h1))^2 and
    alpha = v / (v - IoU + 1 + eps) taken without gradient, as in YOLOv5's box loss.
    """
    if xywh:
        (x1, y1, w1, h1), (x2, y2, w2, h2) = box1.chunk(4, -1), box2.chunk(4, -1)
        b1_x1, b1_x2, b1_y1, b1_y2 = x1 - w1 / 2, x1 + w1 / 2, y1 - h1 / 2, y1 + h1 / 2
        b2_x1, b2_x2, b2_y1, b2_y2 = x2 - w2 / 2, x2 + w2 / 2, y2 - h2 / 2, y2 + h2 / 2
    else:
        b1_x1, b1_y1, b1_x2, b1_y2 = box1.chunk(4, -1)
        b2_x1, b2_y1, b2_x2, b2_y2 = box2.chunk(4, -1)
        w1, h1 = b1_x2 - b1_x1, b1_y2 - b1_y1 + eps
        w2, h2 = b2_x2 - b2_x1, b2_y2 - b2_y1 + eps

    inter = (torch.min(b1_x2, b2_x2) - torch.max(b1_x1, b2_x1)).clamp(0) * \
            (torch.min(b1_y2, b2_y2) - torch.max(b1_y1, b2_y1)).clamp(0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    if not (GIoU or DIoU or CIoU):
        return iou
    cw = torch.max(b1_x2, b2_x2) - torch.min(b1_x1, b2_x1)  # width of the smallest enclosing box
    ch = torch.max(b1_y2, b2_y2) - torch.min(b1_y1, b2_y1)
    if GIoU and not (DIoU or CIoU):
        c_area = cw * ch + eps
        return iou - (c_area - union) / c_area
    c2 = cw ** 2 + ch ** 2 + eps  # squared diagonal of the enclosing box
    rho2 = ((b2_x1 + b2_x2 - b1_x1 - b1_x2) ** 2 + (b2_y1 + b2_y2 - b1_y1 - b1_y2) ** 2) / 4  # squared centre distance
    if CIoU:
        v = (4 / math.pi ** 2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)).pow(2)
        with torch.no_grad():
            alpha = v / (v - iou + (1 + eps))
        return iou - (rho2 / c2 + v * alpha)
    return iou - rho2 / c2
