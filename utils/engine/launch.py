"""What train.py's ``main`` starts once the options are built: one training (single process or one DDP rank), or
``--evolve`` generations of them. The Trainer is utils/engine/trainer.py; mutation and evolve.csv are the pure
utils/engine/evolve.py.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from utils.core.logging import LOGGER, colorstr, increment_path
from utils.core.torch_utils import select_device
from utils.data.config import load_hyp
from utils.engine import evolve as evolution
from utils.engine.distributed import (
    DistInfo,
    broadcast_object,
    check_ddp_options,
    cleanup_distributed,
    dist_info,
    init_distributed,
)
from utils.engine.options import TrainError, TrainInterrupted, TrainOptions
from utils.engine.result_plots import plot_evolve
from utils.engine.trainer import Trainer
from utils.ops.metrics import fitness


def train(options: TrainOptions) -> Path:
    """Run one training, or ``--evolve`` generations of them; returns the run directory."""
    info = dist_info()
    if options.evolve:
        return evolve(options, info)
    try:
        check_ddp_options(info, options.batch_size, options.image_weights)
    except ValueError as e:
        raise TrainError(str(e)) from None
    device = init_distributed(info, select_device(options.device, options.batch_size))
    try:
        if not options.resume:  # rank 0 names the run dir; others use its choice (no race on exp{N})
            name = str(increment_path(Path(options.project) / options.name, exist_ok=options.exist_ok)) \
                if info.is_main else None
            options = options.with_run(broadcast_object(name, info))
        Trainer(options, device, info).fit()
    finally:
        if info.ddp:
            cleanup_distributed()
    return Path(options.save_dir)


def evolve(options: TrainOptions, info: DistInfo | None = None) -> Path:
    """``--evolve N``: N trainings in one run dir, each with hyperparameters mutated from the fittest so far.

    As YOLOv5: every generation trains with --noval and --nosave (validated and saved once, at its end), plots are
    off, ``anchors: 3`` joins the evolved keys unless --noautoanchor, and the results go to ``evolve.csv``,
    ``hyp_evolve.yaml`` (the fittest hyperparameters, a complete --hyp file) and ``evolve.png``."""
    info = info or DistInfo()
    try:
        check_ddp_options(info, options.batch_size, options.image_weights, evolve=True)
    except ValueError as e:
        raise TrainError(str(e)) from None
    device = select_device(options.device, options.batch_size)
    save_dir = Path(increment_path(Path(options.project) / options.name, exist_ok=options.exist_ok))
    save_dir.mkdir(parents=True, exist_ok=True)
    base, meta = evolution_space(options.hyp, options.noautoanchor)
    keys = evolution.evolvable_keys(base, meta)
    csv_file, yaml_file = save_dir / 'evolve.csv', save_dir / 'hyp_evolve.yaml'
    try:
        rows = evolution.read_evolve_csv(csv_file, keys)
    except evolution.EvolveError as e:
        raise TrainError(str(e)) from None
    rng = np.random.default_rng([int(options.seed), len(rows)])
    prefix = colorstr('evolve: ')
    LOGGER.info(f'{prefix}{options.evolve} generations of {len(keys)} hyperparameters in {save_dir}'
                + (f' (continuing after {len(rows)} rows of {csv_file.name})' if len(rows) else ''))
    for g in range(options.evolve):
        hyp = evolution.next_hyp(rows, base, keys, rng, meta)
        trainer = Trainer(options.with_run(save_dir, load_hyp(hyp)), device, info)  # checked as a --hyp file is
        try:
            trainer.fit()
        except TrainInterrupted:  # the generation's own message (its last.pt) does not apply here
            raise TrainInterrupted(f'interrupted in generation {g + 1} of {options.evolve}; {csv_file} keeps the '
                                   f'{len(rows)} finished generation{"s" * (len(rows) != 1)}. Continue with the same '
                                   f'command plus --exist-ok --name {save_dir.name}') from None
        evolution.append_evolve_row(csv_file, keys, trainer.results.as_tuple(), hyp)
        rows = evolution.read_evolve_csv(csv_file, keys)
        best, _ = evolution.write_best_hyp(rows, keys, base, yaml_file)
        fit = fitness(rows)
        LOGGER.info(f'{prefix}generation {g + 1}/{options.evolve} (row {len(rows) - 1}): fitness {fit[-1]:.5g}; '
                    f'best {fit[best]:.5g} at row {best}')
    plot_evolve(csv_file)
    LOGGER.info(f'Hyperparameter evolution finished {options.evolve} generations\n'
                f"Results saved to {colorstr('bold', str(save_dir))}\n"
                f'Usage example: $ python train.py --hyp {yaml_file}')
    return save_dir


def evolution_space(hyp: dict, noautoanchor: bool) -> tuple[dict, dict]:
    """YOLOv5: the anchor count (``anchors: 3`` unless the hyp file sets it) is evolved too, except with
    --noautoanchor, where placeholder anchors could not be replaced (the options have already dropped a hyp file's
    anchor count then: ``options.anchor_hyp``). Returns (starting hyp, bounds table)."""
    base, meta = dict(hyp), dict(evolution.META)
    if noautoanchor:
        meta.pop('anchors')
    else:
        base.setdefault('anchors', 3)
    return base, meta
