"""ProxylessNAS's path-level binarized mixed op (Cai et al. 2019, Sec. 3.2).

The output is ``m_O^Binary(x) = sum_i g_i o_i(x)`` with binary gates ``g`` (eq. 3) that have exactly
one active path. In the weight step only the active path runs (memory of one path); in the
architecture step the strategy samples two paths and this op computes both, with the gates as a
leaf tensor, so autograd yields ``dL/dg_j = <dL/dm, o_j(x)>``, the quantity of eq. 4.
"""
from __future__ import annotations

import torch

from hwnas.mixed.base import MixedOp


class BinaryGatedOp(MixedOp):
    """One active path (``active``), or, when ``gated_paths`` is set, the gated sum over those paths.

    State set by the strategy before each forward:
      ``active``       index (into ``tokens``) of the path whose gate is 1.
      ``gated_paths``  None (weight step / evaluation: run only ``active``), or a tuple of indices to
                       run and weight by ``gates`` (architecture step). After the forward, ``gates``
                       holds the leaf gate tensor (one entry per gated path) to differentiate against.
    """

    def __init__(self, tokens, candidates):
        super().__init__(tokens, candidates)
        self.active = 0
        self.gated_paths: tuple[int, ...] | None = None
        self.gates: torch.Tensor | None = None

    def select(self, index: int) -> None:
        self.gated_paths, self.active = None, int(index)

    def path(self, j: int, x: torch.Tensor) -> torch.Tensor:
        """The output of candidate ``j`` alone, ``o_j(x)``."""
        return self.candidates[j](x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated_paths is None:
            self.gates = None
            return self.path(self.active, x)
        if self.active not in self.gated_paths:
            raise RuntimeError("the active path must be one of the gated paths")
        gates = torch.tensor([1.0 if j == self.active else 0.0 for j in self.gated_paths],
                             device=x.device, dtype=x.dtype, requires_grad=True)
        self.gates = gates
        out = None
        for g, j in zip(gates, self.gated_paths):
            term = g * self.path(j, x)
            out = term if out is None else out + term
        return out
