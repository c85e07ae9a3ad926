"""The one image reader: a file -> upright 3-channel uint8 BGR, its header checked before any pixel is decoded.

Used by the dataset, the inference sources (detect.py) and AutoShape, so one file gives the same pixels everywhere.
``np.fromfile`` + ``cv2.imdecode`` instead of ``cv2.imread``: non-ASCII paths work on every platform. ``IMREAD_COLOR``
applies the EXIF orientation, drops alpha, repeats gray and maps 16-bit values v to v >> 8. A JPEG without its end
marker is completed in memory; the file itself is never rewritten.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from utils.core.safety import image_header_size

IMG_FORMATS = ('bmp', 'dng', 'jpeg', 'jpg', 'mpo', 'png', 'tif', 'tiff', 'webp', 'pfm')
VID_FORMATS = ('asf', 'avi', 'gif', 'm4v', 'mkv', 'mov', 'mp4', 'mpeg', 'mpg', 'ts', 'wmv')


def with_jpeg_end(buf: np.ndarray) -> np.ndarray:
    """``buf`` with the FFD9 end marker appended when it is a JPEG that lacks one (a new array), else ``buf`` itself."""
    if buf[:2].tobytes() == b'\xff\xd8' and buf[-2:].tobytes() != b'\xff\xd9':
        return np.concatenate([buf, np.array([0xFF, 0xD9], np.uint8)])
    return buf


TRUNCATED_JPEG = 'truncated JPEG (no end marker): decoded as far as its data goes'


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as upright BGR uint8 after checking its header; raises ValueError (UnsafeFileError for one
    over the pixel limit) with a short reason, never cv2.error."""
    return read_image_with_note(path)[0]


def read_image_with_note(path: str | Path) -> tuple[np.ndarray, str]:
    """``read_image`` and what a user should hear about a file that did decode: ``TRUNCATED_JPEG`` for a JPEG
    completed in memory (its missing rows come out gray, so detections there are lost), else ''."""
    try:
        buf = np.fromfile(str(path), dtype=np.uint8)
    except OSError as e:
        raise ValueError(f'cannot read file ({e.strerror or type(e).__name__})') from None
    if not buf.size:
        raise ValueError('empty file')
    image_header_size(buf)
    complete = with_jpeg_end(buf)
    try:
        im = cv2.imdecode(complete, cv2.IMREAD_COLOR)
    except cv2.error as e:
        raise ValueError(f'OpenCV cannot decode it ({" ".join(str(e).split())[-80:]})') from None
    if im is None:
        raise ValueError('unreadable or corrupt image')
    return im, '' if complete is buf else TRUNCATED_JPEG


def read_image_or_none(path: str | Path) -> np.ndarray | None:
    """``read_image``, or None when the file cannot be read (for callers that skip bad images quietly)."""
    try:
        return read_image(path)
    except ValueError:
        return None
