"""The training state a checkpoint carries besides weights and optimizer, as plain data (weights_only-safe): the
scheduler without its lambdas and the python / numpy / torch / loader / sampler (data order and augmentation seeds)
RNG states, so a resumed run continues exactly, with any number of workers."""
from __future__ import annotations

import random

import numpy as np
import torch

from utils.engine.options import plain_data


def scheduler_state(state: dict) -> dict:
    """A LambdaLR state dict without ``lr_lambdas`` (the resumed run builds its own)."""
    return {k: v for k, v in state.items() if k != 'lr_lambdas'}


def rng_state(loader=None) -> dict:
    """python / numpy / torch / loader / sampler RNG states as plain data (weights_only-safe): a resumed run then
    draws exactly what the uninterrupted run would have drawn (the augmentation seeds come from the sampler, so this
    holds for any number of workers)."""
    np_state = np.random.get_state()
    gen = getattr(loader, 'generator', None)
    sampler = getattr(loader, 'sampler', None)
    return {'python': plain_data(random.getstate()), 'numpy': [np_state[0], np_state[1].tolist(), *np_state[2:]],
            'torch': torch.get_rng_state(), 'loader': gen.get_state() if gen is not None else None,
            'sampler': sampler.state() if hasattr(sampler, 'state') else None}


def set_rng_state(state: dict | None, loader=None) -> None:
    if not state:
        return
    py = state['python']
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state['numpy']
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), *n[2:]))
    torch.set_rng_state(state['torch'])
    gen = getattr(loader, 'generator', None)
    if gen is not None and state.get('loader') is not None:
        gen.set_state(state['loader'])
    sampler = getattr(loader, 'sampler', None)
    if hasattr(sampler, 'set_state') and state.get('sampler') is not None:
        sampler.set_state(state['sampler'])

