"""Mixed ops — the *op* half of a supernet: how the candidates of one layer are combined, given the
weights, masks or active paths a strategy (hwnas.strategies) produces. Mixed ops never update those
weights; strategies never touch candidate modules. M mixed ops x N strategies cost M + N classes.
"""
from __future__ import annotations

from torch import nn


class MixedOp(nn.Module):
    """The candidates of one searchable layer, in the order of ``tokens`` (the layer's choices)."""

    def __init__(self, tokens: tuple[str, ...], candidates: list[nn.Module]):
        super().__init__()
        if len(tokens) != len(candidates) or not tokens:
            raise ValueError("a mixed op needs one candidate module per token, and at least one")
        self.tokens = tuple(tokens)
        self.candidates = nn.ModuleList(candidates)

    def __len__(self) -> int:
        return len(self.tokens)
