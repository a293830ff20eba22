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

    @classmethod
    def build(cls, tokens: tuple[str, ...], make) -> "MixedOp":
        """The mixed op of a layer; ``make(token)`` builds the plain child module of a candidate."""
        return cls(tokens, [make(t) for t in tokens])

    def select(self, index: int) -> None:
        """Run only candidate ``index`` from now on (a sampled path, or one child inside the supernet)."""
        raise NotImplementedError(f"{type(self).__name__} cannot run a single path")

    def child_state_dict(self, token: str) -> dict:
        """The state dict of the plain child module ``token`` (``make(token)``'s layout)."""
        return {k: v.clone() for k, v in self.candidates[self.tokens.index(token)].state_dict().items()}
