"""Hyperparameter evolution (``train.py --evolve``): YOLOv5 v7.0's mutation scheme, reproducible.

Each generation picks a parent among the 5 fittest rows of ``evolve.csv`` (weighted by fitness above the 5th), mutates
every evolvable key by a factor ``clip(1 + gain * [U < 0.8] * N(0, 1) * U * 0.2, 0.3, 3.0)`` (one U for all keys per
generation, as YOLOv5), clips to the key's bounds, rounds to 5 digits, trains, and appends the results and the
hyperparameters as a row. The first generation trains the starting hyperparameters unchanged (only clipped).

Unlike YOLOv5 (which seeds NumPy with the wall-clock time), the random draws come from a generator seeded with
``--seed`` and the number of rows already in ``evolve.csv``: the same command reproduces the same generations, and
continuing an evolution (``--resume`` or ``--exist-ok`` on the same run dir) draws new ones.

This module is the pure part (mutation, parent choice, files); the loop that trains is ``utils.engine.launch.evolve``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from utils.engine.runlog import VAL_KEYS, csv_header, csv_row, read_results_csv
from utils.ops.metrics import fitness

# key: (mutation gain, lower bound, upper bound) -- YOLOv5 v7.0's table; gain 0 means the key is never mutated
META: dict[str, tuple[float, float, float]] = {
    'lr0': (1, 1e-5, 1e-1), 'lrf': (1, 0.01, 1.0), 'momentum': (0.3, 0.6, 0.98), 'weight_decay': (1, 0.0, 0.001),
    'warmup_epochs': (1, 0.0, 5.0), 'warmup_momentum': (1, 0.0, 0.95), 'warmup_bias_lr': (1, 0.0, 0.2),
    'box': (1, 0.02, 0.2), 'cls': (1, 0.2, 4.0), 'cls_pw': (1, 0.5, 2.0), 'obj': (1, 0.2, 4.0),
    'obj_pw': (1, 0.5, 2.0), 'iou_t': (0, 0.1, 0.7), 'anchor_t': (1, 2.0, 8.0), 'anchors': (2, 2.0, 10.0),
    'fl_gamma': (0, 0.0, 2.0), 'hsv_h': (1, 0.0, 0.1), 'hsv_s': (1, 0.0, 0.9), 'hsv_v': (1, 0.0, 0.9),
    'degrees': (1, 0.0, 45.0), 'translate': (1, 0.0, 0.9), 'scale': (1, 0.0, 0.9), 'shear': (1, 0.0, 10.0),
    'perspective': (0, 0.0, 0.001), 'flipud': (1, 0.0, 1.0), 'fliplr': (0, 0.0, 1.0), 'mosaic': (1, 0.0, 1.0),
    'mixup': (1, 0.0, 1.0), 'copy_paste': (1, 0.0, 1.0)}
MUTATION_PROB, MUTATION_SIGMA, FACTOR_RANGE, TOP_PARENTS = 0.8, 0.2, (0.3, 3.0), 5


class EvolveError(ValueError):
    """An evolve.csv that cannot continue this evolution; the message is one line naming the file."""


def evolvable_keys(hyp: dict, meta: dict = META) -> list[str]:
    """The keys of ``hyp`` that evolution mutates (those with bounds in ``meta``), in the hyp file's order."""
    return [k for k in hyp if k in meta]


def constrain(hyp: dict, meta: dict = META) -> dict:
    """Clip every bounded key into [lower, upper] and round it to 5 digits (YOLOv5 does both after mutating)."""
    out = dict(hyp)
    for k, (_, lo, hi) in meta.items():
        if k in out:
            out[k] = round(min(max(float(out[k]), lo), hi), 5)
    return out


def mutate(hyp: dict, keys: list[str], rng: np.random.Generator, meta: dict = META) -> dict:
    """Multiply each of ``keys`` by its random factor (at least one factor differs from 1), then ``constrain``."""
    gain = np.array([meta[k][0] for k in keys], dtype=np.float64)
    factors = np.ones(len(keys))
    if gain.any():
        while (factors == 1).all():
            mask = rng.random(len(keys)) < MUTATION_PROB
            factors = (gain * mask * rng.standard_normal(len(keys)) * rng.random() * MUTATION_SIGMA + 1)
            factors = factors.clip(*FACTOR_RANGE)
    out = dict(hyp)
    for k, f in zip(keys, factors):
        out[k] = float(hyp[k]) * float(f)
    return constrain(out, meta)


def select_parent(rows: np.ndarray, rng: np.random.Generator, top: int = TOP_PARENTS) -> np.ndarray:
    """One row among the ``top`` fittest, chosen with weight (fitness - the lowest of them + 1e-6)."""
    rows = np.asarray(rows, dtype=np.float64).reshape(len(rows), -1)
    best = rows[np.argsort(-fitness(rows))][:min(top, len(rows))]
    w = fitness(best) - fitness(best).min() + 1e-6
    return best[rng.choice(len(best), p=w / w.sum())]


def next_hyp(rows: np.ndarray, base: dict, keys: list[str], rng: np.random.Generator, meta: dict = META) -> dict:
    """The next generation's hyperparameters: ``base`` (clipped) when there is no row yet, else a mutation of a
    parent chosen from ``rows`` (keys not evolved keep ``base``'s values)."""
    if not len(rows):
        return constrain(base, meta)
    parent = select_parent(rows, rng)
    return mutate({**base, **dict(zip(keys, parent[len(VAL_KEYS):].tolist()))}, keys, rng, meta)


def read_evolve_csv(file: str | Path, keys: list[str]) -> np.ndarray:
    """The rows of an existing ``evolve.csv`` as (n, 7 + len(keys)); empty if there is no file yet.

    Its columns must be exactly VAL_KEYS + ``keys``: rows of another evolution (other keys, another hyp file)
    cannot seed this one, and mixing them silently would mutate the wrong values."""
    file = Path(file)
    want = [*VAL_KEYS, *keys]
    if not file.is_file():
        return np.zeros((0, len(want)))
    try:
        header, rows = read_results_csv(file)  # the same padded layout as results.csv
    except (OSError, ValueError) as e:
        raise EvolveError(f'{file}: cannot read ({e})') from None
    if header != want:
        extra, missing = sorted(set(header) - set(want)), sorted(set(want) - set(header))
        raise EvolveError(f'{file}: columns do not match this evolution (extra {extra}, missing {missing}); '
                          'use another --name or the same --hyp and --noautoanchor as before')
    return rows


def append_evolve_row(file: str | Path, keys: list[str], results: tuple | list, hyp: dict) -> None:
    """Add one generation to ``evolve.csv`` (header first if new), padded like YOLOv5: ``%20s`` / ``%20.5g``."""
    file = Path(file)
    cols = [*VAL_KEYS, *keys]
    values = [*(float(x) for x in results), *(float(hyp[k]) for k in keys)]
    if len(values) != len(cols):
        raise ValueError(f'expected {len(VAL_KEYS)} results, got {len(results)}')
    new = not file.is_file() or file.stat().st_size == 0
    with open(file, 'a') as f:
        f.write((csv_header(cols) if new else '') + csv_row(values))


def write_best_hyp(rows: np.ndarray, keys: list[str], base: dict, file: str | Path) -> tuple[int, dict]:
    """``hyp_evolve.yaml``: ``base`` with the fittest row's values, ready for ``--hyp``; returns (row index, hyp).

    The comment header names the best and last generation and the best row's results."""
    fit = fitness(rows)
    i = int(np.argmax(fit))
    best = dict(base)
    best.update({k: round(float(v), 5) for k, v in zip(keys, rows[i, len(VAL_KEYS):])})
    head = [f'# Hyperparameter evolution results ({len(rows)} generations)',
            f'# Best generation: {i} (fitness {fit[i]:.5g}, 0.1 mAP@0.5 + 0.9 mAP@0.5:0.95); last: {len(rows) - 1}',
            '# ' + ', '.join(f'{k} {v:.5g}' for k, v in zip(VAL_KEYS, rows[i, :len(VAL_KEYS)])),
            f'# Use: python train.py --hyp {Path(file).as_posix()}', '']
    Path(file).write_text('\n'.join(head) + '\n' + yaml.safe_dump(best, sort_keys=False))
    return i, best
