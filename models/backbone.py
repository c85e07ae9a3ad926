"""The backbone contract: what ``parse_model``, ``DetectionModel``, the optimizer, the trainer and export rely on.

A backbone is the first row of a model YAML and returns several feature maps. It says what it returns as data, in
``__init__`` (``feature_info``: channels and stride per output, validated there), so nothing has to build it, probe
it with a dummy image or inspect its methods to wire the head. It owns its freezing (``freeze``), says which of its
parameters must not be weight-decayed (``no_weight_decay``, as timm's models do) and how to fuse itself for inference
(``fuse``). Register a subclass (or a factory returning one) with ``@register_module(kind='backbone')`` and
``tests/models/test_backbones.py`` checks it against this contract with no test edit.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class FeatureInfo:
    """One output of a backbone: its channel count and its stride (input pixels per output pixel)."""

    channels: int
    stride: int


def check_feature_info(channels: Sequence[int], strides: Sequence[int]) -> tuple[FeatureInfo, ...]:
    """Validate declared outputs: one stride per channel count, channels positive, strides strictly increasing."""
    channels, strides = list(channels), list(strides)
    if not channels or len(channels) != len(strides):
        raise ValueError(f'a backbone declares one stride per output: got channels {channels} and strides {strides}')
    if not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in channels):
        raise ValueError(f'backbone output channels must be positive integers, got {channels}')
    ok = all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in strides)
    if not ok or any(a >= b for a, b in zip(strides, strides[1:])):
        raise ValueError(f'backbone output strides must be positive integers in increasing order, got {strides}')
    return tuple(FeatureInfo(c, s) for c, s in zip(channels, strides))


class Backbone(nn.Module):
    """Base class of every multi-output backbone (EfficientViT M0-M5, ``Timm``).

    Subclasses call ``super().__init__(channels, strides)`` first and implement ``forward`` (a list of maps, in the
    declared order) and ``stages`` (the freezable parts in forward order, together holding every parameter).
    ``frozen_stages`` only ever grows: freezing from the YAML and from ``--freeze`` add up and never undo each other.
    """

    def __init__(self, channels: Sequence[int], strides: Sequence[int]):
        super().__init__()
        self.feature_info: tuple[FeatureInfo, ...] = check_feature_info(channels, strides)
        self.frozen_stages = 0

    @property
    def out_channels(self) -> list[int]:
        return [f.channels for f in self.feature_info]

    @property
    def strides(self) -> list[int]:
        return [f.stride for f in self.feature_info]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError(f'{type(self).__name__} must implement forward(x) -> list[Tensor]')

    def stages(self) -> list[nn.Module]:
        """The freezable parts in forward order (``freeze(n)`` freezes the first n)."""
        raise NotImplementedError(f'{type(self).__name__} must implement stages()')

    def freeze(self, stages: int) -> Backbone:
        """Freeze the first ``stages`` parts: no gradients, BatchNorm statistics fixed (eval mode even in training).

        Adds to what is frozen already and never unfreezes; ``stages == len(self.stages())`` is the whole backbone.
        """
        n = len(self.stages())
        if isinstance(stages, bool) or not isinstance(stages, int) or not 0 <= stages <= n:
            raise ValueError(f'frozen_stages must be 0..{n} (0 none, {n} whole backbone), got {stages!r}')
        self.frozen_stages = max(self.frozen_stages, stages)
        for m in self.frozen_modules():
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)
        return self

    def frozen_modules(self) -> list[nn.Module]:
        """The frozen parts (the whole backbone once every stage is frozen, so no parameter can escape)."""
        parts = self.stages()
        if self.frozen_stages >= len(parts):
            return [self]
        return parts[:self.frozen_stages]

    def train(self, mode: bool = True) -> Backbone:
        """Train mode everywhere except the frozen parts, whose BatchNorm statistics must not move."""
        super().train(mode)
        if mode:
            for m in self.frozen_modules():
                m.eval()
        return self

    def no_weight_decay(self) -> set[str]:
        """Names (relative to this module) of parameters the optimizer must not decay; biases and norm weights are
        never decayed anyway, so list only what else must be spared (e.g. learned position tables)."""
        return set()

    def input_size_note(self, height: int, width: int) -> str | None:
        """One line the trainer shows about this input size (e.g. work it wastes on padding), or None; the base
        class has nothing to say."""
        return None

    def fuse(self, exact: bool = False) -> Backbone:
        """Prepare for inference (fold BatchNorms into convolutions, in place); returns self.

        The default is the fastest path that computes the same function; ``exact=True`` asks for the plain path's
        arithmetic (only BN folded) where a backbone has both. The base class has nothing to fold.
        """
        return self
