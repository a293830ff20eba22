"""Random architectures of a space to validate a latency table on (``sample_archs``): the space's own
samplers (``Space.sample``, ``Space.sample_spread``), without repeats."""
from __future__ import annotations

import random

import numpy as np

from hwnas.latency.predictor import LatencyModel
from hwnas.spaces.base import Space

SAMPLINGS = ("spread", "uniform")


def sample_archs(space: Space, config: dict, n: int, seed: int = 0, *, sampling: str = "uniform",
                 model: LatencyModel | None = None, width: float = 0.2) -> list[list[str]]:
    """``n`` distinct random architectures of the space.

    ``"uniform"`` (``Space.sample``): each decision's token drawn uniformly. Sums of ~20 independent
    layers concentrate around the space's mean latency, so such samples say little about the ranking
    across the range a search really explores. ``"spread"`` (``Space.sample_spread``, needs ``model`` to
    rank the tokens by latency) covers the range from fast to slow while every token keeps a chance."""
    if sampling not in SAMPLINGS:
        raise ValueError(f"unknown sampling {sampling!r}; use one of {', '.join(SAMPLINGS)}")
    if sampling == "spread" and model is None:
        raise ValueError("sampling 'spread' needs the latency model to rank the tokens")
    rng = random.Random(seed)
    cfg = space.resolve_config(config)
    layer_ms = None if model is None else [np.asarray(x.detach().cpu(), float) for x in model.layer_ms()]
    out, seen = [], set()
    while len(out) < n:
        tokens = space.sample(rng, cfg) if sampling == "uniform" else space.sample_spread(rng, cfg, layer_ms, width)
        if tuple(tokens) not in seen:
            seen.add(tuple(tokens))
            out.append(tokens)
    return out
