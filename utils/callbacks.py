"""What a training run records besides checkpoints: results.csv (YOLOv5 layout), TensorBoard scalars, the console
progress columns, and early stopping.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from utils.core.logging import LOGGER, colorstr
from utils.ops.metrics import fitness
from utils.viz.charts import RESULTS_PANELS, evolution_chart, results_chart

RESULT_KEYS = ('train/box_loss', 'train/obj_loss', 'train/cls_loss',  # train loss
               'metrics/precision', 'metrics/recall', 'metrics/mAP_0.5', 'metrics/mAP_0.5:0.95',  # metrics
               'val/box_loss', 'val/obj_loss', 'val/cls_loss',  # val loss
               'x/lr0', 'x/lr1', 'x/lr2')  # param-group LRs: biases, decayed weights, undecayed weights
PROGRESS_COLUMNS = ('Epoch', 'GPU_mem', 'box_loss', 'obj_loss', 'cls_loss', 'Instances', 'Size')


def progress_header() -> str:
    """The line printed above each epoch's progress bar (each column ``%11s``, as YOLOv5)."""
    return ('%11s' * len(PROGRESS_COLUMNS)) % PROGRESS_COLUMNS


def progress_row(epoch: int, epochs: int, mem_gb: float, losses, instances: int, size: int) -> str:
    """One progress description: ``epoch/epochs-1``, GPU memory like ``3.2G``, then 5 values ``%11.4g``."""
    return ('%11s' * 2 + '%11.4g' * 5) % (f'{epoch}/{epochs - 1}', f'{mem_gb:.3g}G', *losses, instances, size)


def csv_header(keys=RESULT_KEYS) -> str:
    """results.csv header: every field right-aligned to 20 characters (``%20s``), comma separated."""
    return ('%20s,' * (len(keys) + 1) % ('epoch', *keys)).rstrip(',') + '\n'


def csv_row(epoch: int, values) -> str:
    """results.csv row: ``%20.5g`` per value, so numbers are padded with leading spaces as YOLOv5 writes them."""
    return ('%20.5g,' * (len(values) + 1) % (epoch, *values)).rstrip(',') + '\n'


def read_results_csv(file: str | Path) -> tuple[list[str], np.ndarray]:
    """Column names (stripped) and float rows (n, columns) of a results.csv or evolve.csv (fields padded with spaces,
    as YOLOv5 writes them); blank lines are skipped, an empty file is a ValueError."""
    with open(file, newline='') as f:
        rows = [[x.strip() for x in row] for row in csv.reader(f) if any(x.strip() for x in row)]
    if not rows:
        raise ValueError('empty file')
    header = [x for x in rows[0] if x]
    data = np.array([[float(x) for x in r[:len(header)]] for r in rows[1:]], dtype=np.float64).reshape(-1, len(header))
    return header, data


def plot_results(file: str | Path = 'path/to/results.csv', dir: str | Path = '') -> Path | None:
    """results.png beside ``file`` (utils.viz.charts.results_chart); every ``results*.csv`` in ``dir`` is overlaid when
    no file is given. A file that cannot be read gets a one-line warning and is left out."""
    file = Path(file) if file else None
    save_dir = file.parent if file else Path(dir)
    files = [file] if file and file.is_file() else sorted(save_dir.glob('results*.csv'))
    if not files:
        LOGGER.warning(f'WARNING ⚠️ No results.csv files found in {save_dir.resolve()}, nothing to plot.')
        return None
    runs = []
    for f in files:
        try:
            header, data = read_results_csv(f)
            if data.shape[1] <= max(RESULTS_PANELS):
                raise ValueError(f'expected at least {max(RESULTS_PANELS) + 1} columns, found {data.shape[1]}')
            runs.append((f.stem, header, data))
        except Exception as e:
            LOGGER.warning(f'WARNING ⚠️ Plotting error for {f}: {e}')
    return results_chart(runs, save_dir / 'results.png')


def plot_evolve(evolve_csv: str | Path = 'path/to/evolve.csv', n_results: int = 7) -> Path | None:
    """evolve.png beside ``evolve_csv`` (utils.viz.charts.evolution_chart): each evolved hyperparameter against the
    fitness of every generation; an unreadable or empty file gets a one-line warning."""
    file = Path(evolve_csv)
    try:
        keys, data = read_results_csv(file)
    except (OSError, ValueError) as e:
        LOGGER.warning(f'WARNING ⚠️ {file}: cannot plot evolution ({e})')
        return None
    if not len(data) or not keys[n_results:]:
        LOGGER.warning(f'WARNING ⚠️ {file}: no generations to plot')
        return None
    out = evolution_chart(keys[n_results:], data[:, n_results:], fitness(data), file.with_suffix('.png'))
    LOGGER.info(f'Saved {out}')
    return out


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
            self.csv.write_text(csv_header(keys[1:]) + ''.join(csv_row(int(r[0]), r[1:]) for r in kept))

    def log_epoch(self, epoch: int, values) -> None:
        """Write one row (values in RESULT_KEYS order)."""
        values = [float(v) for v in values]
        head = '' if self.csv.exists() else csv_header()
        with open(self.csv, 'a') as f:
            f.write(head + csv_row(epoch, values))
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


class EarlyStopping:
    """Stop when fitness has not improved for ``patience`` epochs (0 = never), as YOLOv5's EarlyStopping."""

    def __init__(self, patience: int = 30):
        self.best_fitness = 0.0
        self.best_epoch = 0
        self.patience = patience or float('inf')
        self.possible_stop = False  # True when the next epoch may stop training (forces validation)

    def __call__(self, epoch: int, fitness: float) -> bool:
        if fitness >= self.best_fitness:  # >= so a zero fitness early in training still moves best_epoch
            self.best_epoch = epoch
            self.best_fitness = fitness
        delta = epoch - self.best_epoch
        self.possible_stop = delta >= (self.patience - 1)
        stop = delta >= self.patience
        if stop:
            LOGGER.info(f'Stopping training early as no improvement observed in last {self.patience} epochs. '
                        f'Best results observed at epoch {self.best_epoch}, best model saved as best.pt.\n'
                        f'To update EarlyStopping(patience={self.patience}) pass a new patience value, '
                        f'i.e. `python train.py --patience 300` or use `--patience 0` to disable EarlyStopping.')
        return stop

    def state_dict(self) -> dict:
        return {'best_fitness': float(self.best_fitness), 'best_epoch': int(self.best_epoch)}

    def load_state_dict(self, state: dict) -> None:
        self.best_fitness, self.best_epoch = state['best_fitness'], state['best_epoch']
