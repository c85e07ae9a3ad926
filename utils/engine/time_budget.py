"""``--time H``: train for a wall-clock budget, with an epoch count that ``--epochs N`` reproduces exactly.

YOLOv8's ``time=`` re-estimates the epoch count after every epoch and rebuilds the LR schedule each time, so two runs
with the same seed differ by how fast the machine happened to be. Here the count is decided once, after epoch 0,
from that epoch's duration (its first steps' one-off costs left out): the linear (or one-cycle) LR factor of epoch 0
is 1 whatever the total, and the warm-up counts iterations, so a budgeted run is step for step the run ``--epochs N``
makes with the N it printed.

The budget covers the whole run the trainer sees: setup (dataset generation on first use, caching, AutoAnchor),
every epoch with its validation and its checkpoints (last.pt, best.pt), and the final validation of best.pt with its
plots, for which twice one validation's duration plus a fixed allowance is reserved. The checkpoints' time is
measured on epoch 0's own save, which must record the count, so the trainer decides, saves, and decides once more
with the save's time (saving again only if that lowered the count). Later epochs that run slower than epoch 0 (a
busy host) overrun the budget by that much; the count is not revised, by design.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

FINISH_ALLOWANCE_S = 10.0  # stripping the optimizer from last/best.pt, results.png, the final val's extra plots
SETTLE_ITERATIONS = 3  # epoch 0's first steps pay one-off costs (kernel choice, allocation, train_batch*.jpg)


class EpochTimer:
    """Times a training epoch as a later epoch will take it: from the start of iteration ``SETTLE_ITERATIONS`` to the
    end, scaled to every batch (epochs of fewer than twice that many batches are timed whole)."""

    def __init__(self, batches: int):
        self.batches = batches
        self.settle = SETTLE_ITERATIONS if batches > 2 * SETTLE_ITERATIONS else 0
        self.t_settled: float | None = None
        self.t0 = time.perf_counter()

    def step(self, i: int) -> None:
        """Call at the top of iteration ``i``."""
        if i == self.settle and self.settle:
            self.t_settled = time.perf_counter()

    def steady_s(self) -> float:
        """Seconds one epoch takes at the rate measured after settling (the whole time if it never settled)."""
        now = time.perf_counter()
        if self.t_settled is None:
            return now - self.t0
        return (now - self.t_settled) * self.batches / (self.batches - self.settle)


@dataclass(frozen=True)
class BudgetDecision:
    """The epoch count a ``--time`` budget allows, and the measurements it was decided from (seconds)."""

    epochs: int
    budget_s: float
    elapsed_s: float  # since the trainer started, setup and epoch 0 with its validation included
    epoch_s: float  # one epoch as measured: training plus (unless --noval) validation plus saving
    reserve_s: float  # kept for the final validation of best.pt
    save_s: float = 0.0  # of epoch_s: writing last.pt (and best.pt), as epoch 0's save took

    def describe(self, hours: float) -> str:
        """One log line: what was measured, what was decided, how to repeat it."""
        saving = f' ({self.save_s:.1f} s of it saving checkpoints)' if self.save_s else ''
        return (f'--time {hours:g} ({self.budget_s / 60:.1f} min): setup and epoch 0 took {self.elapsed_s:.1f} s, '
                f'one epoch {self.epoch_s:.1f} s{saving}, {self.reserve_s:.0f} s kept for the final validation, so '
                f'{self.epochs} epoch{"s" * (self.epochs != 1)} in all (~{self.planned_s / 60:.1f} min). This run is '
                f'the run --epochs {self.epochs} makes')

    @property
    def planned_s(self) -> float:
        """The run's expected length if every later epoch takes as long as the measured one."""
        return self.elapsed_s + (self.epochs - 1) * self.epoch_s + self.reserve_s


def final_reserve(val_s: float) -> float:
    """Seconds kept for the end of the run: best.pt validated with plots (about two plain validations) and the rest."""
    return 2.0 * val_s + FINISH_ALLOWANCE_S


def decide_epochs(hours: float, elapsed_s: float, train_s: float, val_s: float, validate_every_epoch: bool = True,
                  save_s: float = 0.0) -> BudgetDecision:
    """The most epochs (at least 1, epoch 0 included) that fit ``hours`` after ``elapsed_s`` seconds, if each later
    epoch takes ``train_s`` plus (when every epoch is validated) ``val_s`` plus ``save_s``."""
    if not hours > 0:
        raise ValueError(f'--time must be a positive number of hours, got {hours}')
    budget_s = hours * 3600.0
    epoch_s = max(train_s + (val_s if validate_every_epoch else 0.0) + save_s, 1e-6)
    reserve_s = final_reserve(val_s)
    more = math.floor((budget_s - elapsed_s - reserve_s) / epoch_s)
    return BudgetDecision(epochs=1 + max(more, 0), budget_s=budget_s, elapsed_s=elapsed_s, epoch_s=epoch_s,
                          reserve_s=reserve_s, save_s=save_s)
