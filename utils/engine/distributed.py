"""Distributed (DDP) helpers on PyTorch's own engine: ranks from the environment, process group, zero-first, wrapping.

Launch: ``python -m torch.distributed.run --nproc_per_node 2 train.py ... --device cpu`` (gloo) or ``--device 0,1``
(nccl). Ranks are read from the environment on every call instead of module-level globals, so nothing leaks
between runs in one process.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from utils.core.logging import LOGGER


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a torch.distributed.run launch (-1 / 1 when not launched that way)."""

    local_rank: int = -1
    rank: int = -1
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """True on the process that logs, validates and saves (rank 0, or the only process)."""
        return self.rank in (-1, 0)

    @property
    def ddp(self) -> bool:
        return self.local_rank != -1


def dist_info() -> DistInfo:
    """Read LOCAL_RANK, RANK, WORLD_SIZE as set by torch.distributed.run."""
    env = os.environ
    return DistInfo(int(env.get('LOCAL_RANK', -1)), int(env.get('RANK', -1)), int(env.get('WORLD_SIZE', 1)))


def check_ddp_options(info: DistInfo, batch_size: int, image_weights: bool = False, evolve: bool = False) -> None:
    """YOLOv5's DDP preconditions, as one-line ValueErrors."""
    if not info.ddp:
        return
    if batch_size == -1:
        raise ValueError('AutoBatch (--batch-size -1) is not supported with DDP; pass a valid --batch-size')
    if batch_size % info.world_size:
        raise ValueError(f'--batch-size {batch_size} must be a multiple of WORLD_SIZE {info.world_size}')
    if image_weights:
        raise ValueError('--image-weights is not supported with DDP')
    if evolve:
        raise ValueError('--evolve is not supported with DDP')


def init_distributed(info: DistInfo, device: torch.device) -> torch.device:
    """Join the process group: nccl on CUDA, gloo on CPU. Returns this rank's device."""
    if not info.ddp:
        return device
    if device.type == 'cuda':
        if torch.cuda.device_count() <= info.local_rank:
            raise ValueError(f'LOCAL_RANK {info.local_rank} has no CUDA device '
                             f'({torch.cuda.device_count()} visible); use fewer processes or --device cpu')
        torch.cuda.set_device(info.local_rank)
        device, backend = torch.device('cuda', info.local_rank), 'nccl'
    else:
        backend = 'gloo'
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=10800))
    LOGGER.info(f'DDP: rank {info.rank}/{info.world_size} on {device} ({backend})')
    return device


def cleanup_distributed() -> None:
    """Leave the process group if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op outside DDP)."""
    if info.ddp and dist.is_initialized():
        if dist.get_backend() == 'nccl':
            dist.barrier(device_ids=[info.local_rank])
        else:
            dist.barrier()


@contextmanager
def zero_first(info: DistInfo):
    """Rank 0 runs the block first (e.g. builds a dataset cache), the others wait, then run it themselves."""
    if info.rank not in (-1, 0):
        barrier(info)
    yield
    if info.rank == 0:
        barrier(info)


def broadcast_object(obj: Any, info: DistInfo, src: int = 0) -> Any:
    """Send a picklable object from rank ``src`` to every rank (returns it unchanged outside DDP)."""
    if not (info.ddp and dist.is_initialized()):
        return obj
    box = [obj if info.rank == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def wrap_ddp(model: nn.Module, info: DistInfo, device: torch.device, sync_bn: bool = False) -> nn.Module:
    """SyncBatchNorm on request (CUDA only), then DistributedDataParallel with a static graph (as YOLOv5)."""
    if not info.ddp:
        return model
    if sync_bn:
        if device.type == 'cuda':
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model).to(device)
            LOGGER.info('Using SyncBatchNorm()')
        else:
            LOGGER.warning('WARNING --sync-bn needs CUDA devices; ignored on CPU')
    ids = [info.local_rank] if device.type == 'cuda' else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, output_device=ids[0] if ids else None,
                                               static_graph=True)
