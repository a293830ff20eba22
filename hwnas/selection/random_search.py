"""Random search (Li & Talwalkar 2019, "Random Search and Reproducibility for Neural Architecture
Search"): the baseline every search method must beat.

In a latency window ``[lower, upper]`` a proposal is the most probable architecture in the window under
random per-decision Gumbel scores (``LatencyModel.derive_within``, the derivation every method uses), so
random search answers to the same target as the methods; without one, ``Space.sample`` (uniform)."""
from __future__ import annotations

import random

import numpy as np

from hwnas.selection.selector import Selector, register


@register
class RandomSelector(Selector):
    name = "random"

    def __init__(self, space, config: dict, seed: int = 0, latency=None, window: tuple[float, float] | None = None):
        if window is not None and latency is None:
            raise ValueError("random search in a latency window needs a latency table")
        self.space, self.config, self.seed, self.latency = space, config, int(seed), latency
        self.window = None if window is None else (float(window[0]), float(window[1]))
        self.rng = np.random.default_rng(self.seed) if window is not None else random.Random(self.seed)

    def ask(self) -> list[str]:
        if self.window is None:
            return self.space.sample(self.rng, self.config)
        scores = [self.rng.gumbel(size=len(c)) for c in self.latency.choices]
        return self.latency.derive_within(scores, *self.window)

    def settings(self) -> dict:
        return {"selector": self.name, "seed": self.seed, "window": None if self.window is None else list(self.window)}
