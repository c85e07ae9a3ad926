"""What a training run records besides checkpoints: results.csv (YOLOv5's padded layout; the one reader and writer,
also used for evolve.csv), its plots, TensorBoard scalars and the console progress columns."""
from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from utils.core.logging import LOGGER, colorstr

TRAIN_LOSS_KEYS = ('train/box_loss', 'train/obj_loss', 'train/cls_loss')
# the seven numbers of a validation (EvalResults.as_tuple()), first in every evolve.csv row too
VAL_KEYS = ('metrics/precision', 'metrics/recall', 'metrics/mAP_0.5', 'metrics/mAP_0.5:0.95',
            'val/box_loss', 'val/obj_loss', 'val/cls_loss')
LR_KEYS = ('x/lr0', 'x/lr1', 'x/lr2')  # param-group LRs: biases, decayed weights, undecayed weights
RESULT_KEYS = (*TRAIN_LOSS_KEYS, *VAL_KEYS, *LR_KEYS)  # results.csv after its 'epoch' column
PROGRESS_COLUMNS = ('Epoch', 'GPU_mem', 'box_loss', 'obj_loss', 'cls_loss', 'Instances', 'Size')


def progress_header() -> str:
    """The line printed above each epoch's progress bar (each column ``%11s``, as YOLOv5)."""
    return ('%11s' * len(PROGRESS_COLUMNS)) % PROGRESS_COLUMNS


def progress_row(epoch: int, epochs: int | None, mem_gb: float, losses, instances: int, size: int) -> str:
    """One progress description: ``epoch/epochs-1`` (``epoch/?`` while --time has not fixed the count yet), GPU
    memory like ``3.2G``, then 5 values ``%11.4g``."""
    last = '?' if epochs is None else epochs - 1
    return ('%11s' * 2 + '%11.4g' * 5) % (f'{epoch}/{last}', f'{mem_gb:.3g}G', *losses, instances, size)


def csv_header(names: Sequence[str]) -> str:
    """A results.csv / evolve.csv header line: every name right-aligned to 20 characters (``%20s``), comma separated."""
    return ('%20s,' * len(names) % tuple(names)).rstrip(',') + '\n'


def csv_row(values: Sequence[float]) -> str:
    """A results.csv / evolve.csv row: ``%20.5g`` per value, padded with leading spaces as YOLOv5 writes them."""
    return ('%20.5g,' * len(values) % tuple(values)).rstrip(',') + '\n'


def read_results_csv(file: str | Path) -> tuple[list[str], np.ndarray]:
    """Column names (stripped) and float rows (n, columns) of a results.csv or evolve.csv (fields padded with spaces,
    as YOLOv5 writes them); blank lines are skipped. The one reader of both files: an empty file, a row whose length
    differs from the header's or a field that is not a number is a ValueError naming the line."""
    with open(file, newline='') as f:
        rows = [[x.strip() for x in row] for row in csv.reader(f) if any(x.strip() for x in row)]
    if not rows:
        raise ValueError('empty file')
    header = [x for x in rows[0] if x]
    values = []
    for i, row in enumerate(rows[1:], 2):
        row = row[:len(header)] if len(row) > len(header) and not any(row[len(header):]) else row
        if len(row) != len(header):
            raise ValueError(f'line {i} has {len(row)} values, header has {len(header)}')
        try:
            values.append([float(x) for x in row])
        except ValueError:
            raise ValueError(f'line {i} holds a non-number') from None
    return header, np.array(values, dtype=np.float64).reshape(-1, len(header))


class RunLogger:
    """Appends one results.csv row per epoch and mirrors it to TensorBoard when tensorboard is installed."""

    def __init__(self, save_dir: Path, tensorboard: bool = True):
        self.csv = Path(save_dir) / 'results.csv'
        self.tb = _tensorboard_writer(save_dir) if tensorboard else None

    def truncate(self, start_epoch: int) -> None:
        """Drop rows for epochs >= start_epoch (a resumed run may have logged an epoch it never checkpointed)."""
        if not self.csv.exists():
            return
        keys, rows = read_results_csv(self.csv)
        kept = [r for r in rows if r[0] < start_epoch]
        if len(kept) != len(rows):
            self.csv.write_text(csv_header(keys) + ''.join(csv_row((int(r[0]), *r[1:])) for r in kept))

    def log_epoch(self, epoch: int, values) -> None:
        """Write one row (values in RESULT_KEYS order)."""
        values = [float(v) for v in values]
        head = '' if self.csv.exists() else csv_header(('epoch', *RESULT_KEYS))
        with open(self.csv, 'a') as f:
            f.write(head + csv_row((epoch, *values)))
        if self.tb:
            for k, v in zip(RESULT_KEYS, values):
                self.tb.add_scalar(k, v, epoch)

    def close(self) -> None:
        if self.tb:
            self.tb.close()


def _tensorboard_writer(save_dir: Path):
    """A SummaryWriter when tensorboard is installed (it is optional), else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    LOGGER.info(f"{colorstr('TensorBoard: ')}Start with 'tensorboard --logdir {Path(save_dir).parent}'")
    return SummaryWriter(str(save_dir))
