"""Random search (Li & Talwalkar 2019, "Random Search and Reproducibility for Neural Architecture
Search"): the baseline every search method must beat.

``mode="uniform"`` (what ``hwnas search --method random`` runs): every architecture that meets the target
(predicted at most T) equally likely. When the latency model can list its architectures (a tabular
benchmark's column) the draw is uniform over that feasible list, exactly; otherwise it is rejection
sampling: ``Space.sample`` (uniform over the space) until a sample meets T, which is uniform over the
feasible set by construction. If ``tries`` samples in a row miss (a target in the space's fast tail), the
proposal falls back to the window mode below and the log says so once. Without a target, ``Space.sample``.

``mode="window"``: the most probable architecture in ``[lower, upper]`` under random per-decision Gumbel
scores (``LatencyModel.derive_within``, the derivation every one-shot method uses), so random
architectures answer to the same ``[0.9 T, T]`` promise as a derived one (``hwnas compare``'s baseline).
Not uniform: it favours architectures near the window's edges that many score draws reach."""
from __future__ import annotations

import logging
import random

import numpy as np

from hwnas.selection.selector import Selector, register

log = logging.getLogger("hwnas.selection")
MODES = ("uniform", "window")


@register
class RandomSelector(Selector):
    name = "random"

    def __init__(self, space, config: dict, seed: int = 0, latency=None, window: tuple[float, float] | None = None,
                 *, mode: str = "uniform", tries: int = 1000):
        if window is not None and latency is None:
            raise ValueError("random search in a latency window needs a latency table")
        if mode not in MODES:
            raise ValueError(f"random search mode must be one of {', '.join(MODES)}, got {mode!r}")
        if tries < 1:
            raise ValueError(f"random search needs tries >= 1, got {tries}")
        self.space, self.config, self.seed, self.latency = space, config, int(seed), latency
        self.window = None if window is None else (float(window[0]), float(window[1]))
        self.mode, self.tries = mode, int(tries)
        self.rng = random.Random(self.seed)
        self.gumbel = np.random.default_rng(self.seed)
        self.pool = None
        if self.window is not None and mode == "uniform" and hasattr(latency, "feasible"):
            self.pool = latency.feasible(self.window[1])
            if not self.pool:
                raise ValueError(f"no architecture of the benchmark meets the target {self.window[1]:.4g} ms")
        self.fell_back = False

    def _window_draw(self) -> list[str]:
        scores = [self.gumbel.gumbel(size=len(c)) for c in self.latency.choices]
        return self.latency.derive_within(scores, *self.window)

    def ask(self) -> list[str]:
        if self.window is None:
            return self.space.sample(self.rng, self.config)
        if self.mode == "window":
            return self._window_draw()
        if self.pool is not None:
            return list(self.pool[self.rng.randrange(len(self.pool))])
        for _ in range(self.tries):
            layers = self.space.sample(self.rng, self.config)
            if self.latency.of_tokens(layers) <= self.window[1]:
                return layers
        if not self.fell_back:
            log.warning("random search: %d uniform samples in a row missed the target %.4g ms; proposing the most "
                        "probable architecture in [%.4g, %.4g] ms under random scores instead (not uniform)",
                        self.tries, self.window[1], *self.window)
            self.fell_back = True
        return self._window_draw()

    def settings(self) -> dict:
        return {"selector": self.name, "seed": self.seed, "mode": self.mode, "tries": self.tries,
                "window": None if self.window is None else list(self.window)}
