"""utils.core.torch_utils: seeding for reproducible training without the NaN-fill cost, and the usable core count."""
import os

import torch

from utils.core.torch_utils import available_cpus, init_seeds


def test_deterministic_seeding_skips_the_nan_fill():
    """Deterministic algorithms stay on; filling every new tensor with NaN (24 % of an M0 CPU step) stays off."""
    before = torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory
    try:
        init_seeds(0, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.utils.deterministic.fill_uninitialized_memory is False
        a = torch.rand(3)
        init_seeds(0, deterministic=True)
        assert torch.equal(a, torch.rand(3))
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.utils.deterministic.fill_uninitialized_memory = before[1]


def test_available_cpus_is_the_affinity_mask():
    assert available_cpus() == len(os.sched_getaffinity(0))
