"""The weighted-sum mixed op of the softmax-relaxed methods, on the fused kernel.

``m(x) = sum_i w_i o_i(x)`` over all candidates of a layer: DARTS (Liu et al. 2019) eq. 2 with
``w = softmax(alpha)``, FBNet (Wu et al. 2019) eq. 5 with ``w`` the Gumbel-softmax sample ``m_l``.
The sum runs through ``hwnas.kernels.mixed_op_sum`` (one pass over the candidates, no stacked copy;
Triton on CUDA, the reference elsewhere) or, with ``fused = False``, through its pure-torch
reference, so the two can be compared on one run. A ``none`` candidate (the zero op of the DARTS
cell space) adds nothing and is not run.

GDAS's hard sample (Dong & Yang, CVPR 2019, eq. 5 and its released code): with ``active`` *and*
``weights`` set, only the active candidate runs and the output is ``h_a o_a(x) + sum_{i != a} h_i``
with ``h`` the straight-through one-hot (``h_i = 0`` in value for ``i != a``; the added scalars give
those entries the gradient ``sum(dL/dm)``, as the released GDAS code does, instead of running every
candidate to differentiate ``h_i o_i(x)``).
"""
from __future__ import annotations

import torch

from hwnas.kernels import mixed_op_sum, mixed_op_sum_reference
from hwnas.mixed.base import MixedOp


class WeightedSumOp(MixedOp):
    """All candidates weighted by ``weights``, or the single path ``active`` when it is set.

    State set by the strategy before each forward:
      ``weights``  a ``(N,)`` tensor (it may require grad: the architecture step differentiates it).
      ``active``   None (weighted sum), or the index of the only candidate to run: alone it evaluates a
                   child; together with ``weights`` it is GDAS's straight-through hard sample.
    """

    def __init__(self, tokens, candidates, fused: bool = True):
        super().__init__(tokens, candidates)
        self.fused = fused
        self.weights: torch.Tensor | None = None
        self.active: int | None = None
        self.live = [i for i, c in enumerate(self.candidates) if not getattr(c, "is_zero", False)]

    def select(self, index: int) -> None:
        self.weights, self.active = None, int(index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.active is not None:
            out = self.candidates[self.active](x)
            if self.weights is None:
                return out
            h = self.weights.to(device=out.device, dtype=out.dtype)
            return h[self.active] * out + (h.sum() - h[self.active])
        if self.weights is None:
            raise RuntimeError("WeightedSumOp: the strategy set neither weights nor an active path")
        outputs = [self.candidates[i](x) for i in self.live]
        w = self.weights.to(device=outputs[0].device)
        if len(self.live) != len(self.candidates):
            w = w[self.live]
        combine = mixed_op_sum if self.fused else mixed_op_sum_reference
        return combine(outputs, w)
