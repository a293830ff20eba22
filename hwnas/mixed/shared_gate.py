"""ProxylessNAS's binary gates over candidates that share one set of weights.

The gates, the weight step (one sampled path) and the two-path architecture step are those of
``BinaryGatedOp`` (Cai et al. 2019, Sec. 3.2, eq. 2-4); only where a candidate's weights live differs.
In the paper every candidate of a layer has its own weights. Here a layer whose candidates form a
kernel x expansion grid (k3[/k5[/k7]] x e3/e6, optionally skip) holds one ``k{max}e{max}`` MBConv, and
candidate ``k{k}e{e}`` runs the centre ``k x k`` of its depthwise kernel on the first ``e/e_max`` of its
expansion channels, with those channels' BatchNorm entries: the elastic kernel and width of
Once-for-All (Cai et al. ICLR 2020, Sec. 3.2, without the kernel transformation matrices) and the
superkernel of Single-Path NAS (Stamoulis et al. 2019, Sec. 3.1), but sampled as ProxylessNAS samples
and computed at the candidate's own cost (sliced weights, not masks). Every step then trains weights
that every candidate uses. Why: with separate weights each candidate moves only on the steps that
sample it, and on a small proxy (digits, ~500 steps) the sampled supernet stays at chance while its
shared-weight form learns (docs/methods.md, "Shared- vs separate-weight supernets"). A layer that is not such a grid keeps separate
weights (``build`` returns a ``BinaryGatedOp``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hwnas.distributed import CrossRankBatchNorm2d, cross_rank_batch_norm, syncs
from hwnas.mixed.binary_gate import BinaryGatedOp
from hwnas.mixed.superkernel import candidate_cut, crop_child_state, grid_of
from hwnas.spaces.tokens import SKIP


def sliced_batch_norm(bn: nn.BatchNorm2d, x: torch.Tensor, n: int) -> torch.Tensor:
    """``bn`` applied to ``x``, whose channels are the first ``n`` of ``bn``'s: the same arithmetic and
    running-statistics update as ``nn.BatchNorm2d.forward`` (momentum, or the cumulative average when
    ``momentum`` is None), on the first ``n`` entries of its buffers and affine parameters."""
    factor = 0.0
    if bn.training:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    if isinstance(bn, CrossRankBatchNorm2d) and syncs(x, bn.training):  # torchrun: the global batch's statistics
        return cross_rank_batch_norm(x, bn.running_mean[:n], bn.running_var[:n], bn.weight[:n], bn.bias[:n],
                                     factor, bn.eps)
    return F.batch_norm(x, bn.running_mean[:n], bn.running_var[:n], bn.weight[:n], bn.bias[:n],
                        bn.training, factor, bn.eps)


class SharedBinaryGatedOp(BinaryGatedOp):
    """Binary-gated candidates cut out of one MBConv, ``block`` (see the module docstring); it has no
    ``candidates`` modules: ``path(j, x)`` runs candidate ``j``."""

    def __init__(self, tokens: tuple[str, ...], block: nn.Module, k_max: int, e_max: int):
        nn.Module.__init__(self)
        self.tokens = tuple(tokens)
        self.block = block
        self.k_max, self.e_max = k_max, e_max
        self.active = 0
        self.gated_paths: tuple[int, ...] | None = None
        self.gates: torch.Tensor | None = None
        expand, dw, project = block.body
        for conv, bn in ((expand[0], expand[1]), (dw[0], dw[1]), (project[0], project[1])):
            if conv.bias is not None or not bn.track_running_stats or not bn.affine:
                raise ValueError("shared candidate weights need bias-free convs and affine BatchNorm with running statistics")
        mid_max = dw[0].weight.shape[0]
        self._cuts = [candidate_cut(t, k_max, e_max, mid_max) for t in self.tokens]

    @classmethod
    def build(cls, tokens, make) -> BinaryGatedOp:
        try:
            kernels, expands = grid_of(tokens, "shared candidate weights")
        except ValueError:
            return BinaryGatedOp.build(tokens, make)
        block = make(f"k{kernels[-1]}e{expands[-1]}")
        if SKIP in tokens and not block.use_residual:  # a projecting skip is a module of its own
            return BinaryGatedOp.build(tokens, make)
        return cls(tuple(tokens), block, kernels[-1], expands[-1])

    def path(self, j: int, x: torch.Tensor) -> torch.Tensor:
        cut = self._cuts[j]
        if cut is None:  # skip: the block is dropped, its residual stays (ProxylessNAS's zero op)
            return x
        k, off, mid = cut
        expand, dw, project = self.block.body
        h = expand[2](sliced_batch_norm(expand[1], F.conv2d(x, expand[0].weight[:mid]), mid))
        conv = dw[0]
        h = F.conv2d(h, conv.weight[:mid, :, off:off + k, off:off + k], None, conv.stride, k // 2, 1, mid)
        h = dw[2](sliced_batch_norm(dw[1], h, mid))
        out = project[1](F.conv2d(h, project[0].weight[:, :mid]))
        return x + out if self.block.use_residual else out

    def child_state_dict(self, token: str) -> dict[str, torch.Tensor]:
        return crop_child_state(self.block, token, self.k_max, self.e_max)
