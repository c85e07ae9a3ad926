"""``--time H``: train for a wall-clock budget, with an epoch count that ``--epochs N`` reproduces exactly unless
the host's speed changes in the run.

The count is decided after epoch 0, from that epoch's duration (its first steps' one-off costs left out): the linear
(or one-cycle) LR factor of epoch 0 is 1 whatever the total, and the warm-up counts iterations, so a budgeted run is
step for step the run ``--epochs N`` makes with the N it printed. YOLOv8's ``time=`` instead re-estimates the count
after every epoch and rebuilds the LR schedule each time, so two runs with the same seed differ by how fast the machine
happened to be.

The budget covers the whole run the trainer sees: setup (dataset generation on first use, caching, AutoAnchor),
every epoch with its validation and its checkpoints (last.pt, best.pt), and the final validation of best.pt with its
plots, for which twice one validation's duration plus a fixed allowance is reserved. Epoch 0's validation is timed
after an untimed forward pass over the val loader (``evaluator.warm_up``): the first pass after training pays one-off
costs that later validations do not (2.7 s against ~1.6 s in the quick start). The checkpoints' time is measured on
epoch 0's own save, which must record the count, so the trainer decides, saves, and decides once more with the save's
time (saving again only if that changed the count).

One timing cannot see a host that slows down or speeds up later: on the 2-core VM the quick start's epochs took 12.4
to 17.1 s of training within one run, and a count fixed after epoch 0 ended runs 80 s early or 85 s late. So from
epoch 4 on, while more than ``FINAL_EPOCHS_KEPT`` epochs are left, the trainer projects the run's end from the median of
the recent epochs and revises the count when that end misses the budget by more than half an epoch or 5 % of the time
left, whichever is more (late), or by that plus one epoch (early): the steady case keeps YOLOv5's schedule and the
exact ``--epochs N`` repeat; a revised run logs it, its LRs follow the new count from the next epoch (results.csv
lists every epoch's LRs), and last.pt records the count.
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


REVISE_FROM_EPOCH = 4  # revisions use whole epochs after epoch 0 (whose duration holds one-off costs), 4 at least
RECENT_EPOCHS = 8  # a revision's epoch duration: the median of the last epochs, so that a slow minute moves little
FINAL_EPOCHS_KEPT = 3  # the count is not revised with this few epochs left: the LR's last decay stays smooth
PACE_TOLERANCE = 0.05  # a projection over many epochs is kept while it misses by up to this part of the time left


@dataclass(frozen=True)
class BudgetRevision:
    """A running budget's new epoch count: the host's speed changed since epoch 0 was timed."""

    epoch: int  # the epoch just finished
    old: int
    new: int
    epoch_s: float  # what epochs take now (the median of the recent ones)
    planned_s: float  # the run's expected length with the new count

    def describe(self, hours: float) -> str:
        """One log line: what changed, what was decided, what it means for repeating the run."""
        return (f'--time {hours:g}: after epoch {self.epoch} epochs take {self.epoch_s:.1f} s, so {self.new} epochs '
                f'in all instead of {self.old} (~{self.planned_s / 60:.1f} min); LRs from epoch {self.epoch + 1} on '
                f'follow the new count')

    @staticmethod
    def summary(revisions: int, epochs: int) -> str:
        """The end-of-run line of a budget whose count was revised: what ``--epochs N`` still repeats."""
        return (f'the epoch count was revised {revisions} time{"s" * (revisions != 1)} as the host\'s speed changed, '
                f'so --epochs {epochs} repeats this run\'s length and epoch 0, not every epoch\'s LR (results.csv '
                f'lists them)')


def recent_epoch_s(durations: list[float]) -> float:
    """The median of the last ``RECENT_EPOCHS`` epoch durations (seconds)."""
    recent = sorted(durations[-RECENT_EPOCHS:])
    mid = len(recent) // 2
    return recent[mid] if len(recent) % 2 else (recent[mid - 1] + recent[mid]) / 2


def late_tolerance_s(epoch_s: float, left_epochs: int) -> float:
    """How far a projected end may miss the budget before the count is revised: half an epoch, or ``PACE_TOLERANCE``
    of the time left when that is more. The host's pace wanders by several percent over a few minutes, so a
    projection over 60 epochs (yolov5n in the learning benchmark: 15 revisions with a fixed half epoch) is kept until
    it misses by more than that; the tolerance shrinks with the time left, so the end still lands within half an
    epoch of the budget."""
    return max(0.5, PACE_TOLERANCE * left_epochs) * epoch_s


def revise_epochs(hours: float, elapsed_s: float, epoch: int, epochs: int, durations: list[float],
                  val_s: float) -> BudgetRevision | None:
    """After ``epoch`` (``elapsed_s`` seconds into the run, its validation and checkpoint included), with later
    epochs taking the median of the recent ``durations`` (epochs 1 to ``epoch``) and the end ``final_reserve(val_s)``:
    None while the run is projected to end within ``late_tolerance_s`` after the budget or that plus one epoch (what
    a whole count leaves over) before it, else the most epochs that fit (at least ``epoch + 1``: stop after this one).
    Epoch 0's one timing cannot see a host that slows down or speeds up later (quick-start epochs took 12.4-17.1 s of
    training within one run)."""
    left_epochs = epochs - 1 - epoch
    if epoch < REVISE_FROM_EPOCH or left_epochs < FINAL_EPOCHS_KEPT or not durations:
        return None
    epoch_s, reserve_s = max(recent_epoch_s(durations), 1e-6), final_reserve(val_s)
    left_s = hours * 3600.0 - elapsed_s - reserve_s
    slack = left_s - left_epochs * epoch_s  # seconds the run would end before the budget
    tolerance_s = late_tolerance_s(epoch_s, left_epochs)
    if -tolerance_s <= slack <= tolerance_s + epoch_s:
        return None
    new = epoch + 1 + max(math.floor(left_s / epoch_s), 0)
    return BudgetRevision(epoch, epochs, new, epoch_s, elapsed_s + (new - 1 - epoch) * epoch_s + reserve_s)
