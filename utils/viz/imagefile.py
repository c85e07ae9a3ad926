"""Writing pictures to disk with OpenCV, checked: ``cv2.imwrite`` returns False for a missing directory or a full
disk and raises a long ``cv2.error`` for an extension it has no writer for. Every picture the project saves goes
through ``write_image`` so that both become one ``OSError`` line naming the file."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np

from utils.core.logging import LOGGER

T = TypeVar('T')


def writable_name(path: str | Path, fallback: str = '.jpg') -> Path:
    """``path`` itself when OpenCV can write its format, else the same name with ``fallback``: a ``.dng`` or ``.mpo``
    source image (readable, not writable by OpenCV) is saved as ``.jpg``."""
    path = Path(path)
    return path if cv2.haveImageWriter(str(path)) else path.with_suffix(fallback)


def write_image(path: str | Path, im: np.ndarray, params: tuple[int, ...] | list[int] = ()) -> Path:
    """``cv2.imwrite(path, im, params)``; raises ``OSError`` naming the file when nothing was written."""
    path = Path(path)
    if not cv2.haveImageWriter(str(path)):
        raise OSError(f'could not write {path}: OpenCV has no writer for {path.suffix or "a name without suffix"!r}')
    if not path.parent.is_dir():
        raise OSError(f'could not write {path}: directory {path.parent} does not exist')
    try:
        ok = cv2.imwrite(str(path), im, list(params))
    except cv2.error as e:  # e.g. an array OpenCV cannot encode; its message is several lines of C++ context
        raise OSError(f'could not write {path}: {_last_line(str(e))}') from None
    if not ok:
        raise OSError(f'could not write {path} (OpenCV imwrite failed: disk full or not writable?)')
    return path


def _last_line(message: str) -> str:
    """The useful part of an OpenCV error, '(-215:Assertion failed) !_img.empty() in function 'imwrite'', without
    the build path of the C++ file that raised it."""
    lines = [x.strip() for x in message.strip().splitlines() if x.strip()]
    line = lines[-1] if lines else 'OpenCV error'
    return line.split(' error: ', 1)[-1]


def plot_or_warn(plot: Callable[..., T], *args, **kwargs) -> T | None:
    """``plot(*args, **kwargs)`` for the pictures training and validation make on the side (batches, labels.jpg,
    curves, confusion matrix, results.png): one that cannot be written (``OSError``: disk full, directory removed)
    is one warning line, not the end of the run."""
    try:
        return plot(*args, **kwargs)
    except OSError as e:
        LOGGER.warning(f'WARNING ⚠️ {e}; the run goes on without it')
        return None
