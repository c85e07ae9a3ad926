"""Calibration images for post-training INT8 quantization (ONNX Runtime and NNCF).

Up to a few hundred images of one dataset split (train by default, as YOLOv5 and Ultralytics calibrate), spread
evenly over the split, read and letterboxed exactly as ``val.py`` feeds a fixed-size export: BGR read by our own
reader (utils.data.images.read_image, which checks the header before decoding), letterboxed to the export size without
``auto`` padding, RGB, CHW, float32 in [0, 1]. Images are read lazily, one at a time, so a 640 px calibration set
costs one image of memory; the set is scanned once up front so that an unreadable set fails before any work.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from utils.core.logging import LOGGER
from utils.data.augmentations import letterbox
from utils.data.config import ConfigError, check_dataset, image_files_in
from utils.data.images import read_image_or_none

CALIB_IMAGES = 300  # ORT and NNCF both recommend a few hundred; NNCF's own default subset is 300
MIN_IMAGES = 20  # fewer readable images than this: a warning (the ranges will be noisy), not an error


class CalibrationError(ConfigError):
    """A calibration set that cannot be used: missing, empty, or with no readable image (one line, naming it)."""


def split_files(data: dict, split: str) -> tuple[list[Path], str]:
    """Image files of ``data[split]`` (its dirs and .txt lists), sorted; and a text naming where they came from."""
    value = data.get(split)
    entries = [] if value is None else [value] if isinstance(value, (str, dict)) else list(value)
    # a COCO JSON / VOC XML split (a mapping) calibrates on its images folder: labels are not needed here
    paths = [str(e.get('images') or '') if isinstance(e, dict) else str(e) for e in entries]
    where = f'{data.get("yaml_file", "dataset")} {split} split ({", ".join(paths) or "not set"})'
    missing = [p or "(no images folder given)" for p in paths if not p or not Path(p).exists()]
    if not paths or missing:
        raise CalibrationError(f'calibration set {where} is missing' + (f': {missing[0]} does not exist'
                                                                        if missing else ''))
    files = sorted({f for p in paths for f in image_files_in(Path(p))})
    if not files:
        raise CalibrationError(f'calibration set {where} is empty: no images to calibrate INT8 with')
    return files, where


def spread(files: list, n: int) -> list:
    """``n`` items spread evenly over ``files`` (all of them when there are no more than ``n``), order kept."""
    if len(files) <= n:
        return list(files)
    return [files[int(i * len(files) / n)] for i in range(n)]


def prepare(im: np.ndarray, imgsz: tuple[int, int], stride: int) -> np.ndarray:
    """BGR HWC uint8 -> (1, 3, h, w) float32 RGB in [0, 1], letterboxed to exactly ``imgsz`` (h, w)."""
    im = letterbox(im, imgsz, stride=stride, auto=False)[0]
    im = np.ascontiguousarray(im.transpose((2, 0, 1))[::-1], dtype=np.float32)
    return (im / 255.0)[None]


class CalibrationSet:
    """The calibration images of one split: ``len()``, and iteration yielding (1, 3, h, w) float32 arrays."""

    def __init__(self, data: str | Path | dict, imgsz: tuple[int, int] | list[int], stride: int = 32,
                 n: int = CALIB_IMAGES, split: str = 'train'):
        """Reads ``data`` (a dataset YAML or dict, checked by check_dataset) and keeps the readable ones of up to
        ``n`` images of ``split``; raises CalibrationError when the split is missing, empty or all unreadable."""
        try:
            data = check_dataset(data)
        except ConfigError as e:
            raise CalibrationError(f'calibration set: {e}') from None
        files, where = split_files(data, split)
        chosen = spread(files, n)
        # decode once: the header check alone is not enough
        self.files = [f for f in chosen if read_image_or_none(f) is not None]
        if not self.files:
            raise CalibrationError(f'calibration set {where}: none of its {len(chosen)} images could be read '
                                   '(all corrupt or unsupported)')
        bad = len(chosen) - len(self.files)
        if bad:
            LOGGER.warning(f'WARNING ⚠️ calibration: {bad} of {len(chosen)} images in {where} unreadable, skipped')
        if len(self.files) < MIN_IMAGES:
            LOGGER.warning(f'WARNING ⚠️ calibration: only {len(self.files)} images in {where}; INT8 ranges from so '
                           f'few images may cost accuracy (a few hundred are usual)')
        self.imgsz, self.stride, self.where = tuple(imgsz), int(stride), where

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self) -> Iterator[np.ndarray]:
        for f in self.files:
            im = read_image_or_none(f)
            if im is not None:  # changed since the scan: skip rather than fail half-way through
                yield prepare(im, self.imgsz, self.stride)
