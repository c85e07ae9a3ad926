"""YOLOv5's Python-API wrapper: ``AutoShape`` takes images in any usual form and returns ``Detections``.

    model = AutoShape(load_model('best.pt'))          # or torch.hub.load('.', 'custom', path='best.pt', source='local')
    results = model(['a.jpg', pil_image, rgb_array], size=640)
    results.print(); results.save(); results.xyxy[0]  # (n, 6) x1 y1 x2 y2 conf cls, original-image pixels

Inputs: file paths (``str``/``Path``; URLs are refused, nothing is downloaded), PIL images, numpy arrays (HWC **RGB**
uint8, as in YOLOv5; CHW and grayscale are accepted, and other dtypes mean what they say: 0-1 floats, uint16, bool),
or a list of these. A torch tensor is passed straight to the
model. All images of one call are letterboxed to one shape (``size`` for the long side, rounded up to the stride),
run as one batch, filtered by NMS with the attributes ``conf``, ``iou``, ``classes``, ``agnostic``, ``multi_label``,
``max_det`` (YOLOv5's defaults), and their boxes mapped back to each image's own pixels.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn as nn
from PIL import Image, ImageOps

from utils.core.logging import LOGGER, colorstr, increment_path
from utils.core.safety import inside, names_dict, path_component
from utils.data.augmentations import letterbox
from utils.data.images import read_image_with_note
from utils.ops.boxes import xyxy2xywh
from utils.ops.postprocess import postprocess
from utils.viz.drawing import Annotator, colors, detection_summary, save_one_box
from utils.viz.imagefile import writable_name, write_image


def _to_uint8(arr: np.ndarray, i: int) -> np.ndarray:
    """Pixel values as uint8 0-255 without wrapping: floats in [0, 1] (a max of at most 1) are scaled by 255, other
    floats and integers are clipped to 0-255 and rounded, uint16 is scaled from 0-65535, bool is 0 or 255. A plain
    cast wrapped uint16 values modulo 256 and turned 0-1 floats into a black image; NaN or inf is an error."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if arr.dtype == np.uint16:
        return np.round(arr / 257.0).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ValueError(f'image {i}: NaN or infinite pixel values')
        if arr.max() <= 1.0:
            arr = arr * 255.0
    elif not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f'image {i}: unsupported array dtype {arr.dtype}')
    return np.round(np.clip(arr, 0, 255)).astype(np.uint8)


def _as_rgb_array(im, i: int) -> tuple[np.ndarray, str]:
    """One input -> (HWC RGB uint8 array, file name used when saving)."""
    if isinstance(im, (str, Path)):
        if str(im).startswith(('http:', 'https:', 'rtsp:', 'rtmp:')):
            raise ValueError(f'{im}: URLs are not downloaded; save the image and pass its path')
        path = Path(im)
        if not path.is_file():
            raise FileNotFoundError(f'{im}: image not found')
        try:
            bgr, note = read_image_with_note(path)  # detect.py's reader: the same pixels and the same warning
        except ValueError as e:  # the header is checked against the pixel limit before decoding
            raise ValueError(f'{im}: cannot read image ({e})') from None
        if note:
            LOGGER.warning(f'WARNING ⚠️ {im}: {note}')
        return np.ascontiguousarray(bgr[..., ::-1]), path.with_suffix('.jpg').name  # BGR -> RGB
    if isinstance(im, Image.Image):
        name = Path(getattr(im, 'filename', '') or f'image{i}').with_suffix('.jpg').name
        return np.asarray(ImageOps.exif_transpose(im).convert('RGB')), name
    if isinstance(im, np.ndarray):
        arr = im
        if arr.ndim == 3 and arr.shape[0] < 5 and arr.shape[2] >= 5:  # CHW (a dataloader's layout)
            arr = arr.transpose(1, 2, 0)
        if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 1):
            arr = np.repeat(arr.reshape(arr.shape[0], arr.shape[1], 1), 3, axis=2)
        if arr.ndim != 3 or arr.shape[2] < 3:
            raise ValueError(f'image {i}: expected an HxWx3 array, got shape {im.shape}')
        if not arr.shape[0] or not arr.shape[1]:
            raise ValueError(f'image {i}: empty array of shape {im.shape}')
        return _to_uint8(np.ascontiguousarray(arr[..., :3]), i), f'image{i}.jpg'
    raise TypeError(f'image {i}: unsupported input type {type(im).__name__} (path, PIL image or numpy array)')


class AutoShape(nn.Module):
    """Images in, ``Detections`` out: letterbox, batch, inference, NMS, boxes in original pixels (eval mode)."""

    conf = 0.25  # NMS confidence threshold
    iou = 0.45  # NMS IoU threshold
    agnostic = False  # class-agnostic NMS
    multi_label = False  # several labels per box
    classes = None  # keep only these class indices
    max_det = 1000  # detections per image
    amp = False  # autocast on CUDA

    def __init__(self, model: nn.Module, verbose: bool = True):
        super().__init__()
        if verbose:
            LOGGER.info('Adding AutoShape... ')
        self.model = model.eval()
        self.stride = int(model.stride.max())
        self.names = names_dict(model.names)

    @torch.inference_mode()
    def forward(self, ims, size: int | tuple[int, int] = 640, augment: bool = False) -> Detections | torch.Tensor:
        p = next(self.model.parameters())
        autocast = self.amp and p.device.type == 'cuda'
        if isinstance(ims, torch.Tensor):
            with torch.autocast('cuda', enabled=autocast):
                return self.model(ims.to(p.device).type_as(p), augment=augment)
        t0 = time.perf_counter()
        items = list(ims) if isinstance(ims, (list, tuple)) else [ims]
        if not items:
            raise ValueError('AutoShape: no images given')
        loaded = [_as_rgb_array(im, i) for i, im in enumerate(items)]
        arrays, files = [a for a, _ in loaded], [f for _, f in loaded]
        size = (size, size) if isinstance(size, int) else tuple(size)
        shape1 = self._batch_shape([a.shape[:2] for a in arrays], size)
        x = np.stack([letterbox(a, shape1, auto=False)[0] for a in arrays])  # (B, H, W, 3) RGB
        x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(p.device).type_as(p) / 255
        t1 = time.perf_counter()
        with torch.autocast('cuda', enabled=autocast):
            y = self.model(x, augment=augment)
        y = y[0] if isinstance(y, (list, tuple)) else y
        t2 = time.perf_counter()
        pred = postprocess(y, shape1, [a.shape for a in arrays], conf_thres=self.conf, iou_thres=self.iou,
                           classes=self.classes, agnostic=self.agnostic, multi_label=self.multi_label,
                           max_det=self.max_det).detections
        t3 = time.perf_counter()
        times = tuple((b - a) * 1000 / len(arrays) for a, b in ((t0, t1), (t1, t2), (t2, t3)))
        return Detections(arrays, pred, files, times, self.names, tuple(x.shape))

    def _batch_shape(self, shapes: list[tuple[int, int]], size: tuple[int, int]) -> tuple[int, int]:
        """One inference shape for the batch: each image scaled so its long side fits ``size``, the largest of
        them, rounded up to the stride (YOLOv5's AutoShape rule)."""
        scaled = [(h * max(size) / max(h, w), w * max(size) / max(h, w)) for h, w in shapes]
        return tuple(math.ceil(max(s[k] for s in scaled) / self.stride) * self.stride for k in (0, 1))


class Detections:
    """The results of one AutoShape call: per image ``xyxy``/``xywh`` in pixels and ``xyxyn``/``xywhn``
    normalised, each an (n, 6) tensor ``[box, conf, cls]``; plus print, save, crop, render, pandas and tolist."""

    def __init__(self, ims: list[np.ndarray], pred: list[torch.Tensor], files: list[str], times: tuple = (0, 0, 0),
                 names: dict | None = None, shape: tuple | None = None):
        d = pred[0].device if pred else 'cpu'
        gn = [torch.tensor([*(im.shape[1], im.shape[0]) * 2, 1, 1], device=d, dtype=torch.float32) for im in ims]
        self.ims, self.pred, self.files, self.names = ims, pred, files, names or {}
        self.xyxy = pred
        self.xywh = [torch.cat((xyxy2xywh(x[:, :4]), x[:, 4:]), 1) for x in pred]
        self.xyxyn = [x / g for x, g in zip(self.xyxy, gn)]
        self.xywhn = [x / g for x, g in zip(self.xywh, gn)]
        self.n = len(pred)
        self.t = tuple(times)  # ms per image: pre-process, inference, NMS
        self.s = shape  # inference BCHW shape

    def _annotated(self, i: int, labels: bool = True) -> np.ndarray:
        """Image i (RGB) with its boxes drawn."""
        im, det = self.ims[i], self.pred[i]
        annotator = Annotator(np.ascontiguousarray(im), example=str(self.names))
        for *box, conf, cls in reversed(det.tolist()):
            label = f'{self.names.get(int(cls), int(cls))} {conf:.2f}' if labels else ''
            annotator.box_label(box, label, color=colors(int(cls)))
        return annotator.result()

    def __str__(self) -> str:
        lines = [f'image {i + 1}/{self.n}: {im.shape[0]}x{im.shape[1]} '
                 + (detection_summary(det, self.names).rstrip(', ') if len(det) else '(no detections)')
                 for i, (im, det) in enumerate(zip(self.ims, self.pred))]
        pre, inference, nms = self.t
        lines.append(f'Speed: {pre:.1f}ms pre-process, {inference:.1f}ms inference, {nms:.1f}ms NMS per image at '
                     f'shape {self.s}')
        return '\n'.join(lines)

    def __repr__(self) -> str:
        return f'YOLOv5 {self.__class__} instance\n' + str(self)

    def __len__(self) -> int:
        return self.n

    def print(self) -> None:
        LOGGER.info(str(self))

    def show(self, labels: bool = True) -> None:
        LOGGER.warning('WARNING ⚠️ Detections.show() needs a display; use save() or render() instead')

    def render(self, labels: bool = True) -> list[np.ndarray]:
        """Draw the boxes into ``self.ims`` (RGB) and return them."""
        self.ims = [self._annotated(i, labels) for i in range(self.n)]
        return self.ims

    def save(self, labels: bool = True, save_dir: str | Path = 'runs/detect/exp', exist_ok: bool = False) -> Path:
        """Annotated images into ``save_dir`` (numbered exp2, exp3... unless ``exist_ok``); returns the directory."""
        save_dir = increment_path(save_dir, exist_ok=exist_ok, mkdir=True)
        saved = 0
        for i, f in enumerate(self.files):
            out = writable_name(inside(save_dir, save_dir / path_component(f)))  # x.dng -> x.jpg
            try:
                write_image(out, cv2.cvtColor(self._annotated(i, labels), cv2.COLOR_RGB2BGR))
                saved += 1
            except OSError as e:  # one warning per image; the others are still saved
                LOGGER.warning(f'WARNING ⚠️ {e}')
        LOGGER.info(f"Saved {saved} image{'s' * (saved != 1)} to {colorstr('bold', str(save_dir))}")
        return save_dir

    def crop(self, save: bool = True, save_dir: str | Path = 'runs/detect/exp', exist_ok: bool = False) -> list[dict]:
        """One dict per detection (box, conf, cls, label, im: the BGR crop); saved to save_dir/crops/<class>/."""
        save_dir = increment_path(save_dir, exist_ok=exist_ok, mkdir=save) if save else Path(save_dir)
        crops = []
        for im, det, f in zip(self.ims, self.pred, self.files):
            for *box, conf, cls in reversed(det.tolist()):
                name = self.names.get(int(cls), str(int(cls)))
                file = inside(save_dir, save_dir / 'crops' / path_component(name) / path_component(f))
                try:
                    crop = save_one_box(torch.tensor(box), im, file=file, BGR=False, save=save)
                except OSError as e:  # the crop is still returned
                    LOGGER.warning(f'WARNING ⚠️ {e}')
                    crop = save_one_box(torch.tensor(box), im, file=file, BGR=False, save=False)
                crops.append({'box': box, 'conf': conf, 'cls': cls, 'label': f'{name} {conf:.2f}', 'im': crop})
        if save:
            LOGGER.info(f"Saved results to {colorstr('bold', str(save_dir))}")
        return crops

    def pandas(self):
        """The boxes as pandas DataFrames (``.xyxy``, ``.xywh``, ``.xyxyn``, ``.xywhn``, one per image), as YOLOv5.

        pandas is optional here (not in requirements.txt); without it this raises ImportError saying so."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError('Detections.pandas() needs pandas (pip install pandas); '
                              'the same numbers are in .xyxy / .xywh / .xyxyn / .xywhn') from None
        new = Detections(self.ims, self.pred, self.files, self.t, self.names, self.s)
        ca = 'xmin', 'ymin', 'xmax', 'ymax', 'confidence', 'class', 'name'
        cb = 'xcenter', 'ycenter', 'width', 'height', 'confidence', 'class', 'name'
        for k, c in zip(('xyxy', 'xyxyn', 'xywh', 'xywhn'), (ca, ca, cb, cb)):
            rows = [[[*x[:5], int(x[5]), self.names.get(int(x[5]), str(int(x[5])))] for x in t.tolist()]
                    for t in getattr(self, k)]
            setattr(new, k, [pd.DataFrame(r, columns=list(c)) for r in rows])
        return new

    def tolist(self) -> list[Detections]:
        """One single-image Detections per image."""
        return [Detections([self.ims[i]], [self.pred[i]], [self.files[i]], self.t, self.names, self.s)
                for i in range(self.n)]
