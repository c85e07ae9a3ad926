"""Detection metrics as YOLOv5 v7.0 computes them: matching at 10 IoU thresholds, per-class AP, P/R/F1 at the
max-F1 confidence, the confusion matrix and the fitness used to pick best.pt. Numbers only: utils/viz/charts.py
draws them.

AP note: YOLOv5 integrates the interpolated precision envelope with the trapezoid rule over 101 recall points
(``method='interp'``), so a perfect detector scores 0.995, not 1.0. ``method='coco'`` gives pycocotools' 101-point
step average (a perfect detector scores 1.0); it is offered for cross-checks, YOLOv5 numbers use 'interp'.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from utils.ops.boxes import box_iou

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)


def fitness(x: np.ndarray) -> np.ndarray:
    """Model fitness for best.pt: weights [P, R, mAP@0.5, mAP@0.5:0.95] = [0, 0, 0.1, 0.9]; x (n, >=4) -> (n,)."""
    w = np.array([0.0, 0.0, 0.1, 0.9])
    return (np.asarray(x, dtype=np.float64)[:, :4] * w).sum(1)


def smooth(y: np.ndarray, f: float = 0.05) -> np.ndarray:
    """Box-filter smoothing with edge padding; the filter spans fraction ``f`` of the points on each side."""
    nf = round(len(y) * f * 2) // 2 + 1  # odd number of filter elements
    p = np.ones(nf // 2)
    yp = np.concatenate((p * y[0], y, p * y[-1]), 0)
    return np.convolve(yp, np.ones(nf) / nf, mode='valid')


def _match(iou: np.ndarray, ok: np.ndarray, label_by_iou: bool = False) -> np.ndarray:
    """Unique (label, detection) pairs among those allowed by ``ok``, as YOLOv5 v7.0 pairs them.

    Each detection first keeps its highest-IoU label. Each label then keeps one of the detections that chose it: the
    earliest (``process_batch``: NMS output is sorted by confidence, so the most confident) or, with ``label_by_iou``,
    the highest-IoU one (``ConfusionMatrix``). Returns (k, 2) int [label, detection].
    """
    li, di = np.nonzero(ok)
    if not len(li):
        return np.zeros((0, 2), dtype=int)
    order = np.argsort(-iou[li, di], kind='stable')  # best IoU first
    li, di = li[order], di[order]
    _, first = np.unique(di, return_index=True)  # per detection: its best label; rows now by detection index
    li, di = li[first], di[first]
    if label_by_iou:
        order = np.argsort(-iou[li, di], kind='stable')
        li, di = li[order], di[order]
    _, first = np.unique(li, return_index=True)  # per label: its first remaining detection
    return np.stack((li[first], di[first]), 1)


def process_batch(detections: torch.Tensor, labels: torch.Tensor, iouv: torch.Tensor) -> torch.Tensor:
    """Which detections are true positives at each IoU threshold.

    Args:
        detections: (n, 6) [x1, y1, x2, y2, conf, cls], sorted by confidence (as NMS returns them).
        labels: (m, 5) [cls, x1, y1, x2, y2] in the same pixel space.
        iouv: (t,) IoU thresholds, normally linspace(0.5, 0.95, 10).

    Returns:
        (n, t) bool tensor on iouv's device.
    """
    iouv_np = np.asarray(torch.as_tensor(iouv).cpu(), dtype=np.float64)
    correct = np.zeros((detections.shape[0], len(iouv_np)), dtype=bool)
    if detections.shape[0] and labels.shape[0]:
        iou = box_iou(labels[:, 1:5], detections[:, :4]).cpu().double().numpy()
        same_cls = (labels[:, 0:1].cpu() == detections[:, 5].cpu()).numpy()
        for k, thr in enumerate(iouv_np):
            m = _match(iou, (iou >= thr) & same_cls)
            correct[m[:, 1], k] = True
    return torch.tensor(correct, dtype=torch.bool, device=torch.as_tensor(iouv).device)


def compute_ap(recall: np.ndarray, precision: np.ndarray, method: str = 'interp') -> tuple[float, np.ndarray,
                                                                                             np.ndarray]:
    """Average precision of one PR curve (cumulative recall and precision, in confidence order).

    Returns (ap, mpre, mrec): the precision envelope and recall with sentinels (recall 0 -> precision 1 at the start,
    recall 1 -> precision 0 at the end) used for plotting. ``method``: 'interp' (YOLOv5: trapezoid over 101 linearly
    interpolated points), 'coco' (pycocotools: mean over 101 recall points of the best precision at recall >= r),
    'continuous' (area under the envelope at the recall change points).
    """
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([1.0], precision, [0.0]))
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))  # precision envelope, non-increasing
    x = np.linspace(0, 1, 101)
    if method == 'interp':
        ap = np.trapezoid(np.interp(x, mrec, mpre), x)
    elif method == 'coco':
        env = np.flip(np.maximum.accumulate(np.flip(np.asarray(precision, dtype=np.float64))))
        idx = np.searchsorted(recall, x, side='left')  # first point reaching each recall level
        q = np.zeros_like(x)
        q[idx < len(env)] = env[idx[idx < len(env)]]
        ap = q.mean()
    elif method == 'continuous':
        i = np.where(mrec[1:] != mrec[:-1])[0]
        ap = np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])
    else:
        raise ValueError(f"compute_ap: unknown method '{method}', use 'interp', 'coco' or 'continuous'")
    return float(ap), mpre, mrec


@dataclass(frozen=True)
class APCurves:
    """What the PR/F1/P/R charts draw (utils.viz.charts.plot_ap_curves): one row per class with labels."""

    px: np.ndarray  # (1000,) the confidence axis, also the recall axis of precision_at_recall
    precision_at_recall: np.ndarray  # (nc, 1000) the precision envelope at recall px (zeros: class never predicted)
    precision: np.ndarray  # (nc, 1000) precision at confidence px
    recall: np.ndarray  # (nc, 1000)
    f1: np.ndarray  # (nc, 1000)
    ap: np.ndarray  # (nc, t) AP at each IoU threshold
    classes: np.ndarray  # (nc,) int: the class of each row


@dataclass(frozen=True)
class APResult:
    """Per-class metrics at the confidence that maximises the mean F1, and the curves behind them."""

    tp: np.ndarray  # (nc,) true positives at that confidence
    fp: np.ndarray  # (nc,)
    p: np.ndarray  # (nc,) precision
    r: np.ndarray  # (nc,) recall
    f1: np.ndarray  # (nc,)
    ap: np.ndarray  # (nc, t) AP at each IoU threshold
    classes: np.ndarray  # (nc,) int
    curves: APCurves

    def as_tuple(self) -> tuple[np.ndarray, ...]:
        """YOLOv5's return value: (tp, fp, p, r, f1, ap, classes)."""
        return self.tp, self.fp, self.p, self.r, self.f1, self.ap, self.classes


def ap_per_class(tp: np.ndarray, conf: np.ndarray, pred_cls: np.ndarray, target_cls: np.ndarray, eps: float = 1e-16,
                 method: str = 'interp') -> APResult:
    """Per-class AP at each IoU threshold, and P, R, F1 at the single confidence that maximises the mean F1.

    Args:
        tp: (n, t) bool/0-1 true-positive flags per detection and IoU threshold. conf, pred_cls: (n,).
        target_cls: (m,) class of every ground-truth box; only classes present here are evaluated (nc of them).

    Returns the metrics and their curves; drawing them is the caller's (utils.viz.charts.plot_ap_curves).
    """
    tp = np.asarray(tp, dtype=np.float64).reshape(len(conf), -1) if len(conf) else np.zeros((0, np.shape(tp)[-1]))
    conf, pred_cls, target_cls = (np.asarray(a, dtype=np.float64).ravel() for a in (conf, pred_cls, target_cls))
    i = np.argsort(-conf, kind='stable')
    tp, conf, pred_cls = tp[i], conf[i], pred_cls[i]
    unique_classes, nt = np.unique(target_cls, return_counts=True)
    nc, nthr = unique_classes.shape[0], tp.shape[1]
    px, py = np.linspace(0, 1, 1000), []  # confidence axis for the P, R, F1 curves; PR curves at recall px
    ap, p, r = np.zeros((nc, nthr)), np.zeros((nc, 1000)), np.zeros((nc, 1000))
    for ci, c in enumerate(unique_classes):
        k = pred_cls == c
        n_l, n_p = nt[ci], k.sum()
        if n_p == 0:
            py.append(np.zeros(1000))
            continue
        tpc, fpc = tp[k].cumsum(0), (1 - tp[k]).cumsum(0)
        recall = tpc / (n_l + eps)
        precision = tpc / (tpc + fpc)
        r[ci] = np.interp(-px, -conf[k], recall[:, 0], left=0)  # conf decreases, so interpolate on -conf
        p[ci] = np.interp(-px, -conf[k], precision[:, 0], left=1)
        for j in range(nthr):
            ap[ci, j], mpre, mrec = compute_ap(recall[:, j], precision[:, j], method)
            if j == 0:
                py.append(np.interp(px, mrec, mpre))  # precision at recall px, for the PR curve
    f1 = 2 * p * r / (p + r + eps)
    classes = unique_classes.astype(int)
    curves = APCurves(px, np.stack(py, 0) if py else np.zeros((0, 1000)), p, r, f1, ap, classes)
    if nc == 0:
        z = np.zeros(0)
        return APResult(z, z, z, z, z, np.zeros((0, nthr)), classes, curves)
    i = smooth(f1.mean(0), 0.1).argmax()  # the confidence of max (smoothed) mean F1
    p, r, f1 = p[:, i], r[:, i], f1[:, i]
    tp = (r * nt).round()
    fp = (tp / (p + eps) - tp).round()
    return APResult(tp, fp, p, r, f1, ap, classes, curves)


class ConfusionMatrix:
    """(nc+1) x (nc+1) counts, rows = predicted class, columns = true class; the last row/column is background."""

    def __init__(self, nc: int, conf: float = 0.25, iou_thres: float = 0.45):
        self.matrix = np.zeros((nc + 1, nc + 1))
        self.nc = nc
        self.conf = conf
        self.iou_thres = iou_thres

    def process_batch(self, detections: torch.Tensor | None, labels: torch.Tensor) -> None:
        """Add one image: detections (n, 6) [x1, y1, x2, y2, conf, cls] or None; labels (m, 5) [cls, x1, y1, x2, y2]
        (or (m,) classes when detections is None). Matching is class-agnostic at IoU > iou_thres, as YOLOv5 does."""
        labels = torch.as_tensor(labels).cpu()
        if detections is None or not len(detections):
            gt = labels.int() if labels.ndim == 1 else labels[:, 0].int()
            for gc in gt.tolist():
                self.matrix[self.nc, gc] += 1  # missed: true class predicted as background
            return
        detections = torch.as_tensor(detections).cpu()
        detections = detections[detections[:, 4] > self.conf]
        gt = labels[:, 0].int().tolist() if len(labels) else []
        dc = detections[:, 5].int().tolist()
        if len(gt) and len(dc):
            iou = box_iou(labels[:, 1:5].float(), detections[:, :4].float()).numpy()
            m = _match(iou, iou > self.iou_thres, label_by_iou=True)
        else:
            m = np.zeros((0, 2), dtype=int)
        label_to_det = dict(zip(m[:, 0].tolist(), m[:, 1].tolist()))
        for i, gc in enumerate(gt):
            row = dc[label_to_det[i]] if i in label_to_det else self.nc
            self.matrix[row, gc] += 1
        matched = set(m[:, 1].tolist())
        for j, c in enumerate(dc):
            if j not in matched:
                self.matrix[c, self.nc] += 1  # background predicted as class c

    def tp_fp(self) -> tuple[np.ndarray, np.ndarray]:
        """True and false positives per class (background excluded)."""
        tp = self.matrix.diagonal()
        fp = self.matrix.sum(1) - tp
        return tp[:-1], fp[:-1]
