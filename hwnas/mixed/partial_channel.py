"""PC-DARTS's partial channel mixed op (Xu et al., ICLR 2020, Sec. 3.2, eq. 2), on the fused kernel.

Only the first ``C / K`` channels of the input go through the candidates (built on ``C / K`` channels);
the rest bypass them (max-pooled 2x2 on a stride-2 edge), and the result is channel-shuffled with ``K``
groups so the next edge samples other channels: ``hwnas.kernels.partial_channel_mix`` does the weighted
sum, concatenation, pooling and shuffle in one pass (``fused = False``: its pure-torch reference).

A layer whose output shape differs from its input (a chain space's first layer of a stage: other
channel count) cannot bypass channels; there the op runs every channel as a plain weighted sum
(``K = 1`` for that layer), which the strategy reports.
"""
from __future__ import annotations

import torch

from hwnas.kernels import mixed_op_sum, mixed_op_sum_reference, partial_channel_mix, partial_channel_mix_reference
from hwnas.mixed.weighted_sum import WeightedSumOp


class PartialChannelOp(WeightedSumOp):
    #: the channel proportion 1/K used by ``build`` (the strategy sets it before building the supernet)
    K = 4

    def __init__(self, tokens, candidates, k: int, stride: int, fused: bool = True):
        super().__init__(tokens, candidates, fused)
        self.k, self.stride = k, stride

    @classmethod
    def build(cls, tokens, make) -> "PartialChannelOp":
        k = cls.K
        if make.cin != make.cout or make.cin % k or make.stride not in (1, 2):
            k = 1
        return cls(tokens, [make(t, divide=k) for t in tokens], k, make.stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.k == 1:
            return super().forward(x)
        part = x[:, : x.shape[1] // self.k]
        if self.active is not None:  # one candidate (a child inside the supernet): the same partial layout
            outputs = [self.candidates[self.active](part)]
            w = x.new_ones(1) if self.weights is None else self.weights[self.active:self.active + 1].to(x)
        elif self.weights is None:
            raise RuntimeError("PartialChannelOp: the strategy set neither weights nor an active path")
        else:
            outputs = [self.candidates[i](part) for i in self.live]
            w = self.weights.to(device=x.device, dtype=x.dtype)
            if len(self.live) != len(self.candidates):
                w = w[self.live]
        mix = partial_channel_mix if self.fused else partial_channel_mix_reference
        return mix(x, outputs, w, self.k, stride=self.stride)

    def child_state_dict(self, token: str) -> dict:
        if self.k != 1:
            raise ValueError("a partial-channel candidate holds C/K channels: its weights do not fit the child")
        return super().child_state_dict(token)


__all__ = ["PartialChannelOp", "mixed_op_sum", "mixed_op_sum_reference"]
