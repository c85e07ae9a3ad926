"""Sizes rounded to multiples, each rounding under a name that says which way it goes: channel widths
(``round_up_to_multiple``, YOLOv5's width scaling; ``round_to_nearest_multiple``, timm's SE bottleneck) and image sizes
(``check_img_size``: up to a multiple of the model stride, with YOLOv5's warning)."""
from __future__ import annotations

import math

from utils.core.logging import LOGGER


def round_up_to_multiple(x: float, divisor: int) -> int:
    """Smallest multiple of ``divisor`` that is >= ``x`` (YOLOv5's ``make_divisible``: 17 -> 24 for 8)."""
    return int(math.ceil(x / divisor) * divisor)


def round_to_nearest_multiple(x: float, divisor: int = 8) -> int:
    """Nearest multiple of ``divisor``, ties rounded up, at least ``divisor`` (timm's ``make_divisible``: 17 -> 16,
    20 -> 24 for 8)."""
    return max(divisor, int(x + divisor / 2) // divisor * divisor)


def check_img_size(imgsz: int | list[int], s: int = 32, floor: int = 0) -> int | list[int]:
    """Image size(s) rounded up to a multiple of the stride ``s`` and at least ``floor`` (training asks 2 x stride),
    with YOLOv5's warning when that changes them; sizes below 1 are a ValueError."""
    if any(int(x) < 1 for x in ([imgsz] if isinstance(imgsz, int) else imgsz)):
        raise ValueError(f'--img-size must be positive, got {imgsz}')

    def up(x: int) -> int:
        return max(round_up_to_multiple(int(x), s), floor)

    new = up(imgsz) if isinstance(imgsz, int) else [up(x) for x in imgsz]
    if new != imgsz:
        LOGGER.warning(f'WARNING ⚠️ --img-size {imgsz} must be multiple of max stride {s}, updating to {new}')
    return new
