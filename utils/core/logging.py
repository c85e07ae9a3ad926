"""Project logger, coloured console strings and run-directory naming (YOLOv5's `runs/<task>/exp{N}`)."""
from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

LOGGER = logging.getLogger('yolov5evit')
if not LOGGER.handlers:  # one handler on the library logger only; the root logger is left alone
    _handler = logging.StreamHandler(sys.stdout)
    _handler.setFormatter(logging.Formatter('%(message)s'))
    LOGGER.addHandler(_handler)
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False

TQDM_BAR_FORMAT = '{l_bar}{bar:10}{r_bar}'  # every progress bar: a 10-character bar, as YOLOv5

_COLOURS = {
    'black': '\033[30m', 'red': '\033[31m', 'green': '\033[32m', 'yellow': '\033[33m', 'blue': '\033[34m',
    'magenta': '\033[35m', 'cyan': '\033[36m', 'white': '\033[37m', 'bright_blue': '\033[94m',
    'bold': '\033[1m', 'underline': '\033[4m', 'end': '\033[0m',
}


def colorstr(*parts: str) -> str:
    """Colour a string as YOLOv5 does: ``colorstr('blue', 'bold', 'text')``; the last part is the text.

    Colour is applied only when stdout is a terminal, so log files and captured test output stay plain.
    """
    *styles, text = parts if len(parts) > 1 else ('blue', 'bold', parts[0])
    if not sys.stdout.isatty():
        return text
    return ''.join(_COLOURS[s] for s in styles) + text + _COLOURS['end']


def increment_path(path: str | Path, exist_ok: bool = False, sep: str = '', mkdir: bool = False) -> Path:
    """Return ``path`` if it is free (or ``exist_ok``), else the next free ``path{sep}{N}`` with N >= 2.

    ``runs/train/exp`` → ``runs/train/exp2`` → ``runs/train/exp3`` …, as YOLOv5 names its run directories.
    """
    path = Path(path)
    if path.exists() and not exist_ok:
        stem, suffix = (path.with_suffix(''), path.suffix) if path.is_file() else (path, '')
        pattern = re.compile(re.escape(stem.name + sep) + r'(\d+)$')
        taken = [int(m.group(1)) for p in stem.parent.glob(stem.name + sep + '*')
                 if (m := pattern.match(p.with_suffix('').name if suffix else p.name))]
        n = max([1, *taken]) + 1
        path = stem.parent / f'{stem.name}{sep}{n}{suffix}'
    if mkdir:
        path.mkdir(parents=True, exist_ok=True)
    return path
