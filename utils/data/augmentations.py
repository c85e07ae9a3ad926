"""Image augmentations with YOLOv5 v7.0 semantics: letterbox, HSV, random perspective, mosaic placement, mixup.

Every function takes and returns BGR uint8 images (H, W, 3) and pixel-space ``[cls, x1, y1, x2, y2]`` label arrays,
so the dataset in ``utils/data/dataset.py`` can chain them exactly as YOLOv5's ``__getitem__`` does. Randomness comes
from the ``random`` and ``numpy.random`` modules, which the dataset seeds per sample
(``utils.data.loader.SeededSampler``).
"""
from __future__ import annotations

import math
import random

import cv2
import numpy as np

from utils.ops.boxes import bbox_ioa, xyn2xy, xywhn2xyxy

GRAY = (114, 114, 114)


def letterbox(im: np.ndarray, new_shape: int | tuple[int, int] = 640, color: tuple[int, int, int] = GRAY,
              auto: bool = True, scaleFill: bool = False, scaleup: bool = True,
              stride: int = 32) -> tuple[np.ndarray, tuple[float, float], tuple[float, float]]:
    """Resize keeping the aspect ratio and pad to ``new_shape`` (h, w); returns (im, (r_w, r_h), (dw, dh)).

    ``dw, dh`` are the padding on ONE side (half of the total), as YOLOv5 returns them for ``scale_boxes``.
    ``auto`` pads only to the next multiple of ``stride``; ``scaleFill`` stretches with no padding; ``scaleup=False``
    never enlarges (better val mAP).
    """
    h0, w0 = im.shape[:2]
    new_h, new_w = (int(new_shape), int(new_shape)) if np.isscalar(new_shape) else (int(x) for x in new_shape)
    r = min(new_h / h0, new_w / w0)
    if not scaleup:
        r = min(r, 1.0)
    ratio = (r, r)
    unpad_w, unpad_h = max(int(round(w0 * r)), 1), max(int(round(h0 * r)), 1)  # a 2000x3 image keeps 1 px
    dw, dh = new_w - unpad_w, new_h - unpad_h
    if auto:
        dw, dh = dw % stride, dh % stride
    elif scaleFill:
        dw, dh = 0.0, 0.0
        unpad_w, unpad_h = new_w, new_h
        ratio = (new_w / w0, new_h / h0)
    dw, dh = float(dw) / 2, float(dh) / 2
    if (w0, h0) != (unpad_w, unpad_h):
        im = cv2.resize(im, (unpad_w, unpad_h), interpolation=cv2.INTER_LINEAR)
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    im = cv2.copyMakeBorder(im, top, bottom, left, right, cv2.BORDER_CONSTANT, value=color)
    return im, ratio, (dw, dh)


def augment_hsv(im: np.ndarray, hgain: float = 0.5, sgain: float = 0.5, vgain: float = 0.5) -> None:
    """Random hue/saturation/value gains ``1 + U(-1, 1) * gain`` applied IN PLACE to a BGR uint8 image via LUTs."""
    if not (hgain or sgain or vgain):
        return
    r = np.random.uniform(-1, 1, 3) * [hgain, sgain, vgain] + 1
    hue, sat, val = cv2.split(cv2.cvtColor(im, cv2.COLOR_BGR2HSV))
    x = np.arange(0, 256, dtype=r.dtype)
    lut_hue = ((x * r[0]) % 180).astype(im.dtype)
    lut_sat = np.clip(x * r[1], 0, 255).astype(im.dtype)
    lut_val = np.clip(x * r[2], 0, 255).astype(im.dtype)
    im_hsv = cv2.merge((cv2.LUT(hue, lut_hue), cv2.LUT(sat, lut_sat), cv2.LUT(val, lut_val)))
    cv2.cvtColor(im_hsv, cv2.COLOR_HSV2BGR, dst=im)


def box_candidates(box1: np.ndarray, box2: np.ndarray, wh_thr: float = 2, ar_thr: float = 100,
                   area_thr: float = 0.1, eps: float = 1e-16) -> np.ndarray:
    """Boolean mask of boxes worth keeping after a warp: box1 before (4, n), box2 after (4, n), both xyxy.

    Keeps boxes wider and taller than ``wh_thr`` px, keeping > ``area_thr`` of their area and aspect < ``ar_thr``.
    """
    w1, h1 = box1[2] - box1[0], box1[3] - box1[1]
    w2, h2 = box2[2] - box2[0], box2[3] - box2[1]
    ar = np.maximum(w2 / (h2 + eps), h2 / (w2 + eps))
    return (w2 > wh_thr) & (h2 > wh_thr) & (w2 * h2 / (w1 * h1 + eps) > area_thr) & (ar < ar_thr)


def _perspective_matrix(h: int, w: int, out_h: int, out_w: int, degrees: float, translate: float, scale: float,
                        shear: float, perspective: float) -> tuple[np.ndarray, float]:
    """Random 3x3 matrix M = T @ S @ R @ P @ C (YOLOv5's order) and the sampled scale factor."""
    C = np.eye(3)
    C[0, 2], C[1, 2] = -w / 2, -h / 2  # move the image centre to the origin
    P = np.eye(3)
    P[2, 0] = random.uniform(-perspective, perspective)
    P[2, 1] = random.uniform(-perspective, perspective)
    R = np.eye(3)
    angle = random.uniform(-degrees, degrees)
    s = random.uniform(1 - scale, 1 + scale)
    R[:2] = cv2.getRotationMatrix2D(angle=angle, center=(0, 0), scale=s)
    S = np.eye(3)
    S[0, 1] = math.tan(random.uniform(-shear, shear) * math.pi / 180)
    S[1, 0] = math.tan(random.uniform(-shear, shear) * math.pi / 180)
    T = np.eye(3)
    T[0, 2] = random.uniform(0.5 - translate, 0.5 + translate) * out_w
    T[1, 2] = random.uniform(0.5 - translate, 0.5 + translate) * out_h
    return T @ S @ R @ P @ C, s


def resample_segments(segments: list[np.ndarray], n: int = 1000) -> list[np.ndarray]:
    """Each closed polygon (k, 2) resampled to ``n`` points evenly spaced along its vertex index (as YOLOv5)."""
    out = []
    for seg in segments:
        seg = np.concatenate((seg, seg[:1]), 0)
        x, xp = np.linspace(0, len(seg) - 1, n), np.arange(len(seg))
        out.append(np.stack([np.interp(x, xp, seg[:, j]) for j in range(2)], 1))
    return out


def segment2box(segment: np.ndarray, width: float, height: float) -> np.ndarray:
    """xyxy box of the polygon points inside the image (zeros when none is inside)."""
    x, y = segment.T
    inside = (x >= 0) & (y >= 0) & (x <= width) & (y <= height)
    x, y = x[inside], y[inside]
    return np.array([x.min(), y.min(), x.max(), y.max()]) if x.size else np.zeros(4)


def _warp_boxes(targets: np.ndarray, segments: list[np.ndarray] | None, M: np.ndarray, perspective: float,
                out_w: int, out_h: int) -> tuple[np.ndarray, bool]:
    """New xyxy boxes after warping by M: from resampled polygons when every target has one, else from corners."""
    n = len(targets)
    use_segments = segments is not None and len(segments) == n and any(len(x) for x in segments)
    if use_segments:
        new = np.zeros((n, 4))
        for i, seg in enumerate(resample_segments(segments)):
            xy = np.concatenate((seg, np.ones((len(seg), 1))), 1) @ M.T
            new[i] = segment2box(xy[:, :2] / xy[:, 2:3] if perspective else xy[:, :2], out_w, out_h)
        return new, True
    xy = np.ones((n * 4, 3))
    xy[:, :2] = targets[:, [1, 2, 3, 4, 1, 4, 3, 2]].reshape(n * 4, 2)  # corners x1y1, x2y2, x1y2, x2y1
    xy = xy @ M.T
    xy = (xy[:, :2] / xy[:, 2:3] if perspective else xy[:, :2]).reshape(n, 8)
    x, y = xy[:, [0, 2, 4, 6]], xy[:, [1, 3, 5, 7]]
    new = np.stack((x.min(1), y.min(1), x.max(1), y.max(1)), 1)
    new[:, [0, 2]] = new[:, [0, 2]].clip(0, out_w)
    new[:, [1, 3]] = new[:, [1, 3]].clip(0, out_h)
    return new, False


def random_perspective(im: np.ndarray, targets: np.ndarray | None = None, segments: list[np.ndarray] | None = None,
                       degrees: float = 10, translate: float = 0.1, scale: float = 0.1, shear: float = 10,
                       perspective: float = 0.0, border: tuple[int, int] = (0, 0)) -> tuple[np.ndarray, np.ndarray]:
    """Random rotation/scale/shear/translation/perspective of an image and its pixel xyxy targets (n, 5).

    ``border`` (negative for mosaics: -s/2) shrinks the output: out = in + 2 * border, so a 2s mosaic becomes s.
    Boxes are re-derived from their warped corners, or from the warped polygons when ``segments`` (pixel (k, 2)
    arrays, one per target) are given, then filtered with ``box_candidates`` (area ratio 0.01 with polygons, else 0.1).
    """
    out_h, out_w = im.shape[0] + border[0] * 2, im.shape[1] + border[1] * 2
    M, s = _perspective_matrix(im.shape[0], im.shape[1], out_h, out_w, degrees, translate, scale, shear, perspective)
    if border[0] or border[1] or (M != np.eye(3)).any():
        if perspective:
            im = cv2.warpPerspective(im, M, dsize=(out_w, out_h), borderValue=GRAY)
        else:
            im = cv2.warpAffine(im, M[:2], dsize=(out_w, out_h), borderValue=GRAY)
    if targets is None or not len(targets):
        return im, np.zeros((0, 5)) if targets is None else targets
    new, used_segments = _warp_boxes(targets, segments, M, perspective, out_w, out_h)
    keep = box_candidates(targets[:, 1:5].T * s, new.T, area_thr=0.01 if used_segments else 0.10)
    targets = targets[keep].copy()
    targets[:, 1:5] = new[keep]
    return im, targets


def copy_paste(im: np.ndarray, labels: np.ndarray, segments: list[np.ndarray],
               p: float = 0.5) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Copy-paste (arXiv:2012.07177) as YOLOv5: mirror a fraction ``p`` of the polygon objects left-right into the
    same image where the copy covers < 30 % of every existing box. Pixel xyxy labels and pixel polygons."""
    n = len(segments)
    if not (p and n) or n != len(labels):  # needs one polygon per label (not so in mosaics of mixed files)
        return im, labels, segments
    w = im.shape[1]
    segments = list(segments)
    mask = np.zeros(im.shape, np.uint8)
    for j in random.sample(range(n), k=round(p * n)):
        lb, seg = labels[j], segments[j]
        box = np.array([w - lb[3], lb[2], w - lb[1], lb[4]])
        if (bbox_ioa(box, labels[:, 1:5]) < 0.30).all():
            labels = np.concatenate((labels, [[lb[0], *box]]), 0)
            segments.append(np.concatenate((w - seg[:, 0:1], seg[:, 1:2]), 1))
            cv2.drawContours(mask, [seg.astype(np.int32)], -1, (1, 1, 1), cv2.FILLED)
    flipped = cv2.flip(im, 1)
    sel = cv2.flip(mask, 1).astype(bool)
    im[sel] = flipped[sel]
    return im, labels, segments


def mosaic_placements(s: int, xc: int, yc: int,
                      hw: list[tuple[int, int]]) -> list[tuple[tuple[int, int, int, int], tuple[int, int, int, int]]]:
    """Where each of 4 images (h, w) goes in a 2s x 2s mosaic centred at (xc, yc).

    Returns per image ((x1a, y1a, x2a, y2a) on the canvas, (x1b, y1b, x2b, y2b) in the image); the order is
    top-left, top-right, bottom-left, bottom-right, each touching the centre and cropped at the canvas border.
    """
    out = []
    for i, (h, w) in enumerate(hw):
        if i == 0:
            a = (max(xc - w, 0), max(yc - h, 0), xc, yc)
            b = (w - (a[2] - a[0]), h - (a[3] - a[1]), w, h)
        elif i == 1:
            a = (xc, max(yc - h, 0), min(xc + w, 2 * s), yc)
            b = (0, h - (a[3] - a[1]), min(w, a[2] - a[0]), h)
        elif i == 2:
            a = (max(xc - w, 0), yc, xc, min(2 * s, yc + h))
            b = (w - (a[2] - a[0]), 0, w, min(a[3] - a[1], h))
        else:
            a = (xc, yc, min(xc + w, 2 * s), min(2 * s, yc + h))
            b = (0, 0, min(w, a[2] - a[0]), min(a[3] - a[1], h))
        out.append((a, b))
    return out


def build_mosaic(ims: list[np.ndarray], labels: list[np.ndarray], s: int,
                 segments: list[list[np.ndarray]] | None = None) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Place 4 images (each long side ~s) with normalised labels (n, 5) on a 2s x 2s gray canvas.

    The centre is drawn from U(s/2, 3s/2) in x and y; returns (canvas, pixel xyxy labels clipped to [0, 2s], the
    images' normalised polygons (if given) moved to canvas pixels and clipped likewise).
    """
    yc, xc = (int(random.uniform(s // 2, 2 * s - s // 2)) for _ in range(2))
    canvas = np.full((2 * s, 2 * s, ims[0].shape[2]), 114, dtype=np.uint8)
    out, segs_out = [], []
    segments = segments or [[] for _ in ims]
    for im, lb, segs, (a, b) in zip(ims, labels, segments, mosaic_placements(s, xc, yc, [x.shape[:2] for x in ims])):
        canvas[a[1]:a[3], a[0]:a[2]] = im[b[1]:b[3], b[0]:b[2]]
        h, w = im.shape[:2]
        padw, padh = a[0] - b[0], a[1] - b[1]
        lb = lb.copy()
        if lb.size:
            lb[:, 1:] = xywhn2xyxy(lb[:, 1:], w, h, padw, padh)
        out.append(lb.reshape(-1, 5))
        segs_out += [xyn2xy(x, w, h, padw, padh) for x in segs]
    lab = np.concatenate(out, 0)
    for x in (lab[:, 1:], *segs_out):
        np.clip(x, 0, 2 * s, out=x)
    return canvas, lab, segs_out


def mixup(im: np.ndarray, labels: np.ndarray, im2: np.ndarray, labels2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MixUp (arXiv:1710.09412): blend with ratio r ~ Beta(32, 32) and concatenate both label sets."""
    r = np.random.beta(32.0, 32.0)
    im = (im * r + im2 * (1 - r)).astype(np.uint8)
    return im, np.concatenate((labels, labels2), 0)
