"""The loader over utils.data.dataset.LoadImagesAndLabels: batching (collate, ``--quad``), per-worker seeding,
persistent workers and the DDP sampler, as YOLOv5's ``create_dataloader``."""
from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler, Sampler, SequentialSampler, distributed

from utils.core.logging import LOGGER
from utils.core.torch_utils import available_cpus
from utils.data.dataset import LoadImagesAndLabels


def collate_fn(batch: list) -> tuple[torch.Tensor, torch.Tensor, tuple, tuple]:
    """Stack images; concatenate targets with their image index in column 0."""
    im, label, path, shapes = zip(*batch)
    for i, lb in enumerate(label):
        lb[:, 0] = i
    return torch.stack(im, 0), torch.cat(label, 0), path, shapes


def collate_fn4(batch: list) -> tuple[torch.Tensor, torch.Tensor, tuple, tuple]:
    """``--quad``: every 4 images become one 2x-size image (a 2x2 tile, or image 0 upsampled, 50/50)."""
    im, label, path, shapes = zip(*batch)
    n = len(shapes) // 4
    im4, label4 = [], []
    ho = torch.tensor([[0.0, 0, 0, 1, 0, 0]])
    wo = torch.tensor([[0.0, 0, 1, 0, 0, 0]])
    s = torch.tensor([[1, 1, 0.5, 0.5, 0.5, 0.5]])
    for i in range(0, 4 * n, 4):
        if random.random() < 0.5:
            im1 = torch.nn.functional.interpolate(im[i].unsqueeze(0).float(), scale_factor=2.0, mode='bilinear',
                                                  align_corners=False)[0].type(im[i].type())
            lb = label[i]
        else:
            im1 = torch.cat((torch.cat((im[i], im[i + 1]), 1), torch.cat((im[i + 2], im[i + 3]), 1)), 2)
            lb = torch.cat((label[i], label[i + 1] + ho, label[i + 2] + wo, label[i + 3] + ho + wo), 0) * s
        im4.append(im1)
        label4.append(lb)
    for i, lb in enumerate(label4):
        lb[:, 0] = i
    return torch.stack(im4, 0), torch.cat(label4, 0), path[:n], shapes[:n]


def single_threaded_opencv_for_workers() -> None:
    """OpenCV without its thread pool in this process, before the loader forks its workers (they inherit it): each
    worker is already one of the busy processes, and OpenCV's pool (one thread per core) inside every worker
    oversubscribes the cores the main process's torch threads compute on (on 2 cores: 2 workers x 2 OpenCV threads
    beside 2 torch threads; quick-start epochs ~1.07x faster without). YOLOv5 sets the same at import. Results do
    not change: OpenCV's parallel loops split rows, not sums. Called here, in the parent, never in a worker (see
    ``seed_worker``)."""
    cv2.setNumThreads(0)


def seed_worker(worker_id: int) -> None:
    """Seed numpy and random in each worker from torch's per-worker seed (itself derived from the generator). The
    augmentation itself is seeded per sample (SeededSampler). Do not call cv2.setNumThreads here: in a forked worker
    it waits forever on the parent's OpenCV pool lock (seen in tests/engine/test_train.py)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class SeededSampler(Sampler):
    """Yields ``(index, seed)``: the order of ``sampler`` with one augmentation seed per sample, drawn in the main
    process from ``generator``. YOLOv5 seeds each worker once, so which augmentation a sample gets depends on the
    number of workers (batch k goes to worker k % workers), and that number follows the machine's core count; here it
    depends only on ``--seed``. The order and the seeds have generators of their own (the loader's also seeds its
    workers, once per iterator, which differs with persistent workers), saved and restored with ``state``."""

    def __init__(self, sampler: Sampler, generator: torch.Generator):
        self.sampler, self.generator = sampler, generator

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in self.sampler:
            yield index, int(torch.randint(2**62, (1,), generator=self.generator))

    def __len__(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int) -> None:
        """Forwarded to a DistributedSampler (the trainer calls it each epoch)."""
        if hasattr(self.sampler, 'set_epoch'):
            self.sampler.set_epoch(epoch)

    def state(self) -> dict[str, torch.Tensor | None]:
        """The generators' states (seeds, and order when the inner sampler shuffles with its own generator)."""
        order = getattr(self.sampler, 'generator', None)
        return {'seeds': self.generator.get_state(), 'order': None if order is None else order.get_state()}

    def set_state(self, state: dict) -> None:
        self.generator.set_state(state['seeds'])
        order = getattr(self.sampler, 'generator', None)
        if order is not None and state.get('order') is not None:
            order.set_state(state['order'])


def _generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


class InfiniteDataLoader(DataLoader):
    """DataLoader whose workers live for the whole run (``persistent_workers``), so epochs do not re-spawn them.

    YOLOv5 repeated its batch sampler for this; persistent workers give the same saving while letting a
    ``DistributedSampler.set_epoch`` take effect exactly at each epoch boundary.
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault('persistent_workers', kwargs.get('num_workers', 0) > 0)
        super().__init__(*args, **kwargs)


def _distributed_ready() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def create_dataloader(path: str | Path | list, imgsz: int, batch_size: int, stride: int, single_cls: bool = False,
                      hyp: dict | None = None, augment: bool = False, cache: str | bool | None = None,
                      pad: float = 0.0, rect: bool = False, rank: int = -1, workers: int = 8,
                      image_weights: bool = False, quad: bool = False, prefix: str = '', shuffle: bool = False,
                      seed: int = 0, nc: int | None = None,
                      root: str | Path | None = None) -> tuple[DataLoader, LoadImagesAndLabels]:
    """Build the dataset and its loader as YOLOv5's ``create_dataloader``; ``nc`` drops labels with class >= nc;
    ``root`` (the dataset YAML's ``path:``) bounds where the label ``.cache`` may be written.

    Rank 0 builds the label cache first in DDP (other ranks wait, then read it); rank != -1 uses a
    DistributedSampler; workers = min(cores this process may use per device, batch size, ``workers``),
    seeded per worker.
    """
    if rect and shuffle:
        LOGGER.warning('WARNING ⚠️ --rect is incompatible with DataLoader shuffle, setting shuffle=False')
        shuffle = False
    if rank > 0 and _distributed_ready():
        torch.distributed.barrier()
    try:  # rank 0 releases the others even when the data is bad, so every rank reports the error
        dataset = LoadImagesAndLabels(path, imgsz, batch_size, augment=augment, hyp=hyp, rect=rect,
                                      image_weights=image_weights, cache_images=cache, single_cls=single_cls,
                                      stride=int(stride), pad=pad, prefix=prefix, nc=nc, verbose=rank in (-1, 0),
                                      root=root)
    finally:
        if rank == 0 and _distributed_ready():
            torch.distributed.barrier()
    batch_size = min(batch_size, len(dataset))
    nd = torch.cuda.device_count()
    nw = min(available_cpus() // max(nd, 1), batch_size if batch_size > 1 else 0, workers)
    base = 6148914691236517205 + seed + max(rank, 0)
    generator = _generator(base)  # the loader's: seeds its workers
    if rank != -1:
        sampler = distributed.DistributedSampler(dataset, shuffle=shuffle)
    else:
        sampler = RandomSampler(dataset, generator=_generator(base + 1)) if shuffle else SequentialSampler(dataset)
    if augment:  # per-sample augmentation seeds: the same draws whatever the number of workers
        sampler = SeededSampler(sampler, _generator(base + 2))
    if nw:
        single_threaded_opencv_for_workers()
    pin = os.getenv('PIN_MEMORY', 'true').lower() == 'true' and torch.cuda.is_available()
    loader = DataLoader if image_weights else InfiniteDataLoader  # image weights re-read dataset.indices per epoch
    return loader(dataset, batch_size=batch_size, num_workers=nw, sampler=sampler, pin_memory=pin,
                  collate_fn=collate_fn4 if quad else collate_fn, worker_init_fn=seed_worker, generator=generator,
                  drop_last=quad), dataset
