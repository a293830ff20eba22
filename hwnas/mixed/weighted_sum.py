"""The weighted-sum mixed op of the softmax-relaxed methods, on the fused kernel.

``m(x) = sum_i w_i o_i(x)`` over all candidates of a layer: DARTS (Liu et al. 2019) eq. 2 with
``w = softmax(alpha)``, FBNet (Wu et al. 2019) eq. 5 with ``w`` the Gumbel-softmax sample ``m_l``.
The sum runs through ``hwnas.kernels.mixed_op_sum`` (one pass over the candidates, no stacked copy;
Triton on CUDA, the reference elsewhere) or, with ``fused = False``, through its pure-torch
reference, so the two can be compared on one run.
"""
from __future__ import annotations

import torch

from hwnas.kernels import mixed_op_sum, mixed_op_sum_reference
from hwnas.mixed.base import MixedOp


class WeightedSumOp(MixedOp):
    """All candidates weighted by ``weights``, or the single path ``active`` when it is set.

    State set by the strategy before each forward:
      ``weights``  a ``(N,)`` tensor (it may require grad: the architecture step differentiates it).
      ``active``   None (weighted sum), or the index of the only candidate to run (evaluating a child).
    """

    def __init__(self, tokens, candidates, fused: bool = True):
        super().__init__(tokens, candidates)
        self.fused = fused
        self.weights: torch.Tensor | None = None
        self.active: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.active is not None:
            return self.candidates[self.active](x)
        if self.weights is None:
            raise RuntimeError("WeightedSumOp: the strategy set neither weights nor an active path")
        outputs = [c(x) for c in self.candidates]
        combine = mixed_op_sum if self.fused else mixed_op_sum_reference
        return combine(outputs, self.weights.to(device=outputs[0].device))
