"""From a detector's raw predictions to detections in each original image: NMS, then the boxes mapped from the
letterboxed network input back to the image's own pixels. ``postprocess`` is the one function detect.py, the
evaluator (val.py and training) and AutoShape call for it; ``write_label_lines`` is the one writer of YOLO label
lines (``cls cx cy w h [conf]``, normalised, YOLOv5's ``%g`` format) for detect.py and the evaluator.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch

from utils.ops.boxes import scale_boxes, xyxy2xywh
from utils.ops.nms import non_max_suppression


class Postprocessed(NamedTuple):
    """Per image, the rows NMS kept: ``detections`` with boxes in the original image's pixels, ``letterboxed`` the
    same rows with the boxes as NMS returned them (network-input pixels, what batch mosaics draw)."""

    detections: list[torch.Tensor]  # (n, 6) x1 y1 x2 y2 conf cls
    letterboxed: list[torch.Tensor]


def postprocess(prediction: torch.Tensor, input_hw: Sequence[int], image_shapes: Sequence[Sequence[int]],
                ratio_pads: Sequence | None = None, *, conf_thres: float = 0.25, iou_thres: float = 0.45,
                classes: Sequence[int] | None = None, agnostic: bool = False, multi_label: bool = False,
                labels: Sequence = (), max_det: int = 300) -> Postprocessed:
    """NMS over ``prediction`` (B, N, 5+nc) of an input of size ``input_hw``, then each image's boxes rescaled (and
    clipped) to ``image_shapes[i]`` ((h, w, ...)). ``ratio_pads[i]`` is the dataloader's ((gain_h, gain_w), (padw,
    padh)) when known; without it the letterbox is recomputed from the two shapes. The NMS arguments are
    ``utils.ops.nms.non_max_suppression``'s."""
    kept = non_max_suppression(prediction, conf_thres, iou_thres, classes, agnostic, multi_label, labels=labels,
                               max_det=max_det)
    detections = []
    for i, det in enumerate(kept):
        out = det.clone()
        scale_boxes(input_hw, out[:, :4], image_shapes[i], None if ratio_pads is None else ratio_pads[i])
        detections.append(out)
    return Postprocessed(detections, kept)


def write_label_lines(file: str | Path, detections: torch.Tensor, image_hw: Sequence[int], save_conf: bool) -> None:
    """Append one ``cls cx cy w h [conf]`` line per row of ``detections`` (original-image pixels, in the given order),
    normalised by the image's (h, w); nothing is written (no file made) when there are no rows."""
    if not len(detections):
        return
    gn = torch.tensor(tuple(image_hw)[:2], dtype=torch.float32)[[1, 0, 1, 0]]
    with open(file, 'a') as f:
        for *xyxy, conf, cls in detections.tolist():
            xywh = (xyxy2xywh(torch.tensor(xyxy).view(1, 4)) / gn).view(-1).tolist()
            line = (cls, *xywh, conf) if save_conf else (cls, *xywh)
            f.write(('%g ' * len(line)).rstrip() % line + '\n')
