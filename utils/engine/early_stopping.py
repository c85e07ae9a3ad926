"""Early stopping (``--patience``): stop when fitness has not improved for that many epochs, as YOLOv5."""
from __future__ import annotations

from utils.core.logging import LOGGER


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
