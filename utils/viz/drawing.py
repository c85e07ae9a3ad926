"""Drawing on images with OpenCV: the class palette, box labels (``Annotator``), batch mosaics with their boxes
(``train_batch*.jpg``, ``val_batch*.jpg``), the box-shape canvas of ``labels.jpg`` and crops, with YOLOv5 v7.0's
layouts. Charts (matplotlib) are in utils/viz/charts.py.
"""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import torch

from utils.core.logging import LOGGER, increment_path
from utils.core.safety import names_dict
from utils.ops.boxes import clip_boxes, xywh2xyxy, xyxy2xywh
from utils.viz.imagefile import write_image

# YOLOv5's class colour palette (RGB hex)
_PALETTE_HEX = ('FF3838', 'FF9D97', 'FF701F', 'FFB21D', 'CFD231', '48F90A', '92CC17', '3DDB86', '1A9334', '00D4BB',
                '2C99A8', '00C2FF', '344593', '6473FF', '0018EC', '8438FF', '520085', 'CB38FF', 'FF95C8', 'FF37C7')
_PALETTE = tuple(tuple(int(h[i:i + 2], 16) for i in (0, 2, 4)) for h in _PALETTE_HEX)


def colors(i: int, bgr: bool = False) -> tuple[int, int, int]:
    """Colour of class ``i`` (cycling through 20), as RGB or BGR."""
    c = _PALETTE[int(i) % len(_PALETTE)]
    return (c[2], c[1], c[0]) if bgr else c


class Annotator:
    """Draws boxes with labels and text onto a uint8 HxWx3 image (in place when it is contiguous)."""

    def __init__(self, im: np.ndarray, line_width: int | None = None, example: str = 'abc'):
        if not isinstance(im, np.ndarray) or im.ndim != 3 or im.dtype != np.uint8:
            raise ValueError('Annotator: image must be a uint8 HxWxC numpy array; '
                             'convert tensors with .permute(1, 2, 0).numpy() first')
        self.im = im if im.flags.c_contiguous else np.ascontiguousarray(im)
        self.lw = line_width or max(round(sum(im.shape) / 2 * 0.003), 2)  # line width grows with image size
        self.example = example

    def _text_size(self, text: str) -> tuple[int, int, int, float]:
        tf = max(self.lw - 1, 1)  # font thickness
        fs = self.lw / 3  # font scale
        (w, h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, fs, tf)
        return w, h, tf, fs

    def box_label(self, box, label: str = '', color=(128, 128, 128), txt_color=None) -> None:
        """Rectangle for ``box`` (xyxy) and, if given, ``label`` on a filled tab above it (inside if no room)."""
        p1, p2 = (int(box[0]), int(box[1])), (int(box[2]), int(box[3]))
        color = tuple(int(c) for c in color)
        cv2.rectangle(self.im, p1, p2, color, thickness=self.lw, lineType=cv2.LINE_AA)
        if not label:
            return
        w, h, tf, fs = self._text_size(label)
        outside = p1[1] - h - 3 >= 0  # room for the tab above the box
        q2 = (p1[0] + w, p1[1] - h - 3 if outside else p1[1] + h + 3)
        cv2.rectangle(self.im, p1, q2, color, -1, cv2.LINE_AA)  # filled
        cv2.putText(self.im, label, (p1[0], p1[1] - 2 if outside else p1[1] + h + 2), cv2.FONT_HERSHEY_SIMPLEX,
                    fs, txt_color or self.text_color(color), thickness=tf, lineType=cv2.LINE_AA)

    @staticmethod
    def text_color(bg) -> tuple[int, int, int]:
        """Black text on light fills, white on dark ones (BT.601 luma; the order RGB/BGR barely matters)."""
        luma = 0.299 * bg[0] + 0.587 * bg[1] + 0.114 * bg[2]
        return (0, 0, 0) if luma > 150 else (255, 255, 255)

    def rectangle(self, xy, fill=None, outline=None, width: int = 1) -> None:
        """Plain rectangle (xyxy); ``fill`` fills it, ``outline`` draws the border."""
        p1, p2 = (int(xy[0]), int(xy[1])), (int(xy[2]), int(xy[3]))
        if fill is not None:
            cv2.rectangle(self.im, p1, p2, tuple(int(c) for c in fill), -1)
        if outline is not None:
            cv2.rectangle(self.im, p1, p2, tuple(int(c) for c in outline), width)

    def text(self, xy, text: str, txt_color=(255, 255, 255), anchor: str = 'top') -> None:
        """Text whose top-left (``anchor='top'``) or bottom-left corner is at ``xy``."""
        w, h, tf, fs = self._text_size(text)
        y = int(xy[1]) + h if anchor == 'top' else int(xy[1])
        cv2.putText(self.im, text, (int(xy[0]), y), cv2.FONT_HERSHEY_SIMPLEX, fs, tuple(int(c) for c in txt_color),
                    thickness=tf, lineType=cv2.LINE_AA)

    def result(self) -> np.ndarray:
        """The annotated image."""
        return self.im


def detection_summary(det: torch.Tensor, names: dict) -> str:
    """``2 circles, 1 square, `` as YOLOv5 prints per image (its naive plural: one 's' appended)."""
    s = ''
    for c in det[:, 5].unique():
        n = int((det[:, 5] == c).sum())
        s += f"{n} {names[int(c)]}{'s' * (n > 1)}, "
    return s


def output_to_target(output: list[torch.Tensor], max_det: int = 300) -> np.ndarray:
    """NMS output (per image (n, 6) xyxy conf cls) -> (N, 7) [batch_id, cls, cx, cy, w, h, conf] for plot_images."""
    rows = []
    for i, o in enumerate(output):
        o = torch.as_tensor(o)[:max_det, :6].detach().cpu().float()
        box, conf, cls = o.split((4, 1, 1), 1)
        rows.append(torch.cat((torch.full_like(conf, i), cls, xyxy2xywh(box), conf), 1))
    return torch.cat(rows, 0).numpy() if rows else np.zeros((0, 7), dtype=np.float32)


def _mosaic(images: np.ndarray, ns: int) -> np.ndarray:
    """White (ns*h, ns*w, 3) canvas with the images placed column by column, as YOLOv5 lays them out."""
    _, _, h, w = images.shape
    mosaic = np.full((ns * h, ns * w, 3), 255, dtype=np.uint8)
    for i, im in enumerate(images):
        x, y = w * (i // ns), h * (i % ns)
        mosaic[y:y + h, x:x + w] = im.transpose(1, 2, 0)
    return mosaic


def plot_images(images, targets, paths=None, fname: str | Path = 'images.jpg', names=None,
                max_size: int = 1920, max_subplots: int = 16) -> Path:
    """Save a mosaic of a batch with its boxes: labels (targets (N, 6) [batch_id, cls, cx, cy, w, h], normalised or
    pixels), or predictions when a 7th conf column is present (drawn only above conf 0.25). Images are RGB (B,3,H,W),
    uint8 or float 0-1; at most ``max_subplots`` images, the mosaic shrunk to fit ``max_size``. Raises ``OSError``
    naming ``fname`` when it cannot be written (``imagefile.plot_or_warn`` for plots made during a run)."""
    images = images.detach().cpu().float().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    targets = targets.detach().cpu().numpy() if isinstance(targets, torch.Tensor) else np.asarray(targets)
    targets = targets.reshape(-1, targets.shape[-1] if targets.size else 6)
    if images.size and images.max() <= 1:
        images = images * 255  # de-normalise
    images = images[:max_subplots].clip(0, 255).astype(np.uint8)
    bs, _, h, w = images.shape
    ns = max(math.ceil(bs ** 0.5), 1)  # grid side
    mosaic = _mosaic(images, ns)
    scale = max_size / ns / max(h, w)
    if scale < 1:
        h, w = math.ceil(scale * h), math.ceil(scale * w)
        mosaic = cv2.resize(mosaic, (w * ns, h * ns), interpolation=cv2.INTER_AREA)
    fs = int((h + w) * ns * 0.01)  # font size
    annotator = Annotator(mosaic, line_width=round(fs / 10))
    names = names_dict(names)
    for i in range(bs):
        x, y = w * (i // ns), h * (i % ns)
        annotator.rectangle([x, y, x + w, y + h], outline=(255, 255, 255), width=2)  # tile border
        if paths is not None and i < len(paths):
            annotator.text((x + 5, y + 5), Path(paths[i]).name[:40], txt_color=(220, 220, 220))
        _draw_targets(annotator, targets[targets[:, 0] == i] if len(targets) else targets, x, y, w, h, scale, names)
    fname = Path(fname)
    fname.parent.mkdir(parents=True, exist_ok=True)
    return write_image(fname, annotator.result()[..., ::-1])  # RGB -> BGR for OpenCV


def _draw_targets(annotator: Annotator, ti: np.ndarray, x: int, y: int, w: int, h: int, scale: float,
                  names: dict[int, str]) -> None:
    """Draw one tile's boxes: labels always, predictions (7 columns) only above conf 0.25."""
    if not len(ti):
        return
    boxes = xywh2xyxy(ti[:, 2:6].astype(np.float64))
    is_labels = ti.shape[1] == 6
    if boxes.max() <= 1.01:  # normalised
        boxes[:, [0, 2]] *= w
        boxes[:, [1, 3]] *= h
    elif scale < 1:  # pixels of the un-shrunk image
        boxes *= scale
    boxes[:, [0, 2]] += x
    boxes[:, [1, 3]] += y
    for j, box in enumerate(boxes.tolist()):
        c = int(ti[j, 1])
        name = names.get(c, str(c))
        if is_labels:
            annotator.box_label(box, name, color=colors(c))
        elif ti[j, 6] > 0.25:
            annotator.box_label(box, f'{name} {ti[j, 6]:.1f}', color=colors(c))


def box_shapes_canvas(c: np.ndarray, b: np.ndarray, size: int = 1000, n: int = 1000) -> np.ndarray:
    """Up to ``n`` boxes drawn with a common centre on a white canvas: the spread of shapes at a glance."""
    canvas = np.full((size, size, 3), 255, dtype=np.uint8)
    if len(b):
        wh = b[:n, 2:4]
        xyxy = np.concatenate((0.5 - wh / 2, 0.5 + wh / 2), 1) * size
        for cls, box in zip(c[:n].tolist(), xyxy.round().astype(int).tolist()):
            cv2.rectangle(canvas, tuple(box[:2]), tuple(box[2:]), colors(cls), 1)
    return canvas


def save_one_box(xyxy, im: np.ndarray, file: str | Path = Path('im.jpg'), gain: float = 1.02, pad: int = 10,
                 square: bool = False, BGR: bool = False, save: bool = True) -> np.ndarray:
    """Crop ``xyxy`` from ``im`` enlarged by ``gain`` and ``pad`` pixels; returns the crop in BGR and, with ``save``,
    writes it to ``file`` as JPEG (numbered if the name is taken; ``OSError`` when it cannot be written). ``BGR`` says
    the channel order of ``im``."""
    xyxy = torch.as_tensor(np.asarray(xyxy, dtype=np.float64)).view(-1, 4)
    b = xyxy2xywh(xyxy)
    if square:
        b[:, 2:] = b[:, 2:].max(1, keepdim=True)[0]
    b[:, 2:] = b[:, 2:] * gain + pad
    box = clip_boxes(xywh2xyxy(b).long(), im.shape)[0].tolist()
    crop = im[box[1]:box[3], box[0]:box[2], ::(1 if BGR else -1)]
    if save:
        if crop.size == 0:
            LOGGER.warning(f'WARNING ⚠️ save_one_box: empty crop for box {xyxy[0].tolist()}, {file} not written')
            return crop
        file = Path(file)
        file.parent.mkdir(parents=True, exist_ok=True)
        f = increment_path(file).with_suffix('.jpg')
        write_image(f, np.ascontiguousarray(crop), (cv2.IMWRITE_JPEG_QUALITY, 95))
    return crop
