"""Ghost batch normalization (Hoffer, Hubara, Soudry. "Train longer, generalize better", NeurIPS 2017,
Sec. 4; the variant One-Shot (Bender et al. 2018) trains its one-shot model with): in training a batch is
split into ghost batches of at most ``ghost_size`` examples (``tensor_split`` into ``ceil(N / ghost_size)``
near-equal parts), each normalized by its own mean and biased variance, and each updates the running
statistics in turn (``running <- (1 - momentum) running + momentum * stat``, the unbiased variance, as
``nn.BatchNorm2d`` does per batch). In evaluation it is ``nn.BatchNorm2d``; its state dict is the same,
so a child built from the supernet's weights loads it unchanged.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class GhostBatchNorm2d(nn.BatchNorm2d):
    def __init__(self, num_features: int, ghost_size: int = 16, **kwargs):
        super().__init__(num_features, **kwargs)
        if ghost_size < 2:
            raise ValueError(f"a ghost batch needs at least 2 examples, got ghost_size={ghost_size}")
        self.ghost_size = int(ghost_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.shape[0] <= self.ghost_size:
            return super().forward(x)
        parts = x.tensor_split(math.ceil(x.shape[0] / self.ghost_size), dim=0)
        return torch.cat([super(GhostBatchNorm2d, self).forward(p) for p in parts], dim=0)


def ghost_batch_norm(module: nn.Module, ghost_size: int) -> int:
    """Replace every ``nn.BatchNorm2d`` inside ``module`` by a ``GhostBatchNorm2d`` with the same settings
    and state; returns how many were replaced."""
    count = 0
    for name, child in list(module.named_children()):
        if type(child) is nn.BatchNorm2d:
            ghost = GhostBatchNorm2d(child.num_features, ghost_size, eps=child.eps, momentum=child.momentum,
                                     affine=child.affine, track_running_stats=child.track_running_stats)
            ghost.load_state_dict(child.state_dict())
            ghost.to(next(iter(child.buffers()), torch.zeros(())).device)
            setattr(module, name, ghost)
            count += 1
        else:
            count += ghost_batch_norm(child, ghost_size)
    return count
