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
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from hwnas.distributed import cross_rank_batch_norm, syncs


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


class CrossRankGhostBatchNorm2d(GhostBatchNorm2d):
    """Ghost batch norm (One-Shot's) on N ranks, the same steps as one process on
    the global batch. Ghost batches normalize on their own, so each rank cuts its slice into
    ``ceil(b / ghost_size)`` ghost batches and normalizes them with no communication; the running statistics,
    which one process updates once per ghost batch in order, are updated here from every rank's ghost-batch
    statistics (all-gathered, in rank order: the order of the contiguous slices), so they are equal on every
    rank and equal to one process's. A global batch of at most ``ghost_size`` is one batch, normalized across
    the ranks (``cross_rank_batch_norm``), as one process does. Exact when each rank's slice is a multiple of
    ``ghost_size`` (or the global batch is at most one): otherwise one process's ``tensor_split`` of the
    global batch puts the ghost boundaries elsewhere than the ranks' slices do."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not syncs(x, self.training):
            return super().forward(x)
        world = dist.get_world_size()
        track = self.track_running_stats and self.running_mean is not None

        def factor() -> float:
            self.num_batches_tracked.add_(1)
            return 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum

        if x.shape[0] * world <= self.ghost_size:
            return cross_rank_batch_norm(x, self.running_mean if track else None, self.running_var if track else None,
                                         self.weight, self.bias, factor() if track else 0.0, self.eps)
        parts = x.tensor_split(math.ceil(x.shape[0] / self.ghost_size), dim=0)
        out = torch.cat([F.batch_norm(p, None, None, self.weight, self.bias, True, 0.0, self.eps) for p in parts])
        if track:
            dims = [0] + list(range(2, x.dim()))
            with torch.no_grad():
                local = torch.stack([torch.cat([p.mean(dims), p.var(dims, unbiased=True)]) for p in parts])
                gathered = [torch.empty_like(local) for _ in range(world)]
                dist.all_gather(gathered, local.contiguous())
                c = x.shape[1]
                for stat in torch.cat(gathered):
                    f = factor()
                    self.running_mean.mul_(1 - f).add_(f * stat[:c].to(self.running_mean.dtype))
                    self.running_var.mul_(1 - f).add_(f * stat[c:].to(self.running_var.dtype))
        return out


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
