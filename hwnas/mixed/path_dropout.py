"""The summed mixed op of One-Shot (Bender, Kindermans, Zoph, Vasudevan, Le. "Understanding and Simplifying
One-Shot Architecture Search", ICML 2018, Sec. 3): every candidate of a layer runs and their outputs are
summed, with *path dropout* during training.

Path dropout: each of a layer's ``k`` candidates (the zero op excluded) is dropped independently with
probability ``r ** (1 / k)``, so that all of them are dropped with probability ``r`` (the rate the strategy
sets and ramps); should every candidate be dropped, one drawn uniformly is kept, so that the layer
never outputs nothing. The draw is per batch; a dropped candidate is not run, so its weights get no
gradient in that step (and no weight decay from the search loop's SGD: the paper regularizes only the
paths in use). Outputs are summed as they are, not rescaled. ``select(j)`` runs candidate ``j`` alone:
a child inside the one-shot model, its other candidates zeroed (how the paper evaluates an architecture).
"""
from __future__ import annotations

import torch

from hwnas.mixed.base import MixedOp


def drop_probability(rate: float, k: int) -> float:
    """The per-candidate drop probability ``rate ** (1 / k)`` (all ``k`` dropped w.p. ``rate``)."""
    return 0.0 if rate <= 0 else float(rate) ** (1.0 / k)


def keep_mask(rate: float, k: int, generator: torch.Generator | None = None) -> list[bool]:
    """Which of ``k`` candidates run: each kept with probability ``1 - rate^(1/k)``; never none."""
    p = drop_probability(rate, k)
    keep = (torch.rand(k, generator=generator) >= p).tolist()
    if not any(keep):
        keep[int(torch.randint(k, (1,), generator=generator))] = True
    return keep


class PathDropoutSumOp(MixedOp):
    """The sum of a layer's candidates under path dropout (see the module docstring).

    State set by the strategy: ``rate`` (the drop rate ``r``, used in training mode) and ``selected``
    (None: the sum; an index: only that candidate, for evaluation).
    """

    def __init__(self, tokens, candidates):
        super().__init__(tokens, candidates)
        self.rate = 0.0
        self.selected: int | None = None
        self.live = [i for i, c in enumerate(self.candidates) if not getattr(c, "is_zero", False)]
        self.last_kept: list[int] = []

    def select(self, index: int | None) -> None:
        self.selected = None if index is None else int(index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.selected is not None:
            return self.candidates[self.selected](x)
        live = self.live or [0]
        if self.training and self.rate > 0:
            mask = keep_mask(self.rate, len(live))
            live = [i for i, keep in zip(live, mask) if keep]
        self.last_kept = live
        out = self.candidates[live[0]](x)
        for i in live[1:]:
            out = out + self.candidates[i](x)
        return out
