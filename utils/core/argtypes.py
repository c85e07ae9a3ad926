"""argparse types for the command-line entry points: impossible values (``--imgsz 0``, ``--conf-thres 2``,
``--epochs 0``) stop at parsing with one line naming the flag, instead of failing later deep inside OpenCV or NMS."""
from __future__ import annotations

import argparse


def _number(text: str, kind: type, what: str) -> int | float:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected {what}, got {text!r}') from None


def _int_at_least(text: str, minimum: int, what: str) -> int:
    v = _number(text, int, what)
    if v < minimum:
        raise argparse.ArgumentTypeError(f'must be {what}, got {v}')
    return v


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return _int_at_least(text, 1, 'a positive integer')


def non_negative_int(text: str) -> int:
    """An integer >= 0 (e.g. dataloader workers)."""
    return _int_at_least(text, 0, 'an integer >= 0')


def train_batch_size(text: str) -> int:
    """A positive batch size, or -1 for AutoBatch (train.py)."""
    v = _number(text, int, 'a positive integer or -1 (AutoBatch)')
    if v < 1 and v != -1:
        raise argparse.ArgumentTypeError(f'must be positive, or -1 for AutoBatch; got {v}')
    return v


def positive_float(text: str) -> float:
    """A finite number > 0 (train.py --time, in hours)."""
    v = _number(text, float, 'a positive number')
    if not 0.0 < v < float('inf'):
        raise argparse.ArgumentTypeError(f'must be a positive number, got {text}')
    return v


def unit_interval(text: str) -> float:
    """A float in [0, 1] (confidence and IoU thresholds, label smoothing)."""
    v = _number(text, float, 'a number between 0 and 1')
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f'must be between 0 and 1, got {v:g}')
    return v
