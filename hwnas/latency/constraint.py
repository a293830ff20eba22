"""A latency target that is honoured: target parsing, range checks, and the constrained derivation.

Deriving an architecture from per-layer probabilities under a latency budget is a multiple-choice
knapsack: choose one candidate per layer maximizing ``sum_l log p_l(c_l)`` subject to
``LAT_fixed + sum_l LAT_l(c_l)`` in ``[lower, upper]``. It is solved exactly (up to the latency
quantization) by dynamic programming over latency in ``bins`` steps of ``upper / bins``; each
candidate's latency is rounded *up*, so the result never exceeds ``upper``, and the lower bound is
checked with the rounding slack taken against it. The unconstrained argmax is returned unchanged
whenever it already lies inside the window.
"""
from __future__ import annotations

import re

import numpy as np


class LatencyTargetError(ValueError):
    """An unreachable or malformed latency target."""


_TARGET = re.compile(r"^\s*(?P<v>\d+(?:\.\d*)?|\.\d+)\s*(?P<u>ms|us|s|%)?\s*$")


def parse_target(text: str | float | None, fastest_ms: float, slowest_ms: float) -> float | None:
    """``"20ms"``, ``"20"`` (ms), ``"800us"``, ``"0.02s"`` or ``"40%"`` (that far from the fastest
    to the slowest architecture of the space on this table) -> milliseconds; None stays None."""
    if text is None:
        return None
    if isinstance(text, (int, float)):
        return float(text)
    m = _TARGET.match(str(text))
    if m is None:
        raise LatencyTargetError(f"latency target {text!r} is not a number with unit ms, us, s or % (e.g. 20ms, 40%)")
    v, unit = float(m["v"]), m["u"] or "ms"
    if unit == "%":
        if not 0 <= v <= 100:
            raise LatencyTargetError(f"latency target {text!r}: a percentage must be within 0..100")
        return fastest_ms + v / 100.0 * (slowest_ms - fastest_ms)
    return v * {"ms": 1.0, "us": 1e-3, "s": 1e3}[unit]


def check_target(target_ms: float | None, fastest_ms: float, slowest_ms: float, where: str = "") -> bool:
    """True if the target binds. Raises LatencyTargetError below the fastest architecture."""
    if target_ms is None:
        return False
    if target_ms <= 0:
        raise LatencyTargetError(f"latency target must be positive, got {target_ms:g} ms")
    if target_ms < fastest_ms:
        raise LatencyTargetError(
            f"latency target {target_ms:.3f} ms is below the fastest architecture of the space{where} "
            f"({fastest_ms:.3f} ms; slowest {slowest_ms:.3f} ms)")
    return target_ms < slowest_ms


def most_probable_within(log_probs: list[np.ndarray], latencies: list[np.ndarray], fixed_ms: float,
                         lower_ms: float, upper_ms: float, bins: int = 20000) -> list[int]:
    """Indices (one per layer) maximizing the summed log-probability with predicted latency in
    ``[lower_ms, upper_ms]``; if no architecture reaches ``lower_ms`` under ``upper_ms``, the most
    probable one under ``upper_ms``. Raises LatencyTargetError if even that is impossible."""
    budget = upper_ms - fixed_ms
    lat = [np.asarray(x, dtype=np.float64) for x in latencies]
    lp = [np.asarray(x, dtype=np.float64) for x in log_probs]
    if budget < sum(float(x.min()) for x in lat) - 1e-12:
        raise LatencyTargetError(f"no architecture fits under {upper_ms:.3f} ms")
    greedy = [int(np.argmax(x)) for x in lp]
    total = fixed_ms + sum(float(lat[i][j]) for i, j in enumerate(greedy))
    if lower_ms <= total <= upper_ms:
        return greedy
    width = max(budget, 1e-12) / bins
    score = np.full(bins + 1, -np.inf)
    score[0] = 0.0
    back = np.zeros((len(lat), bins + 1), dtype=np.int16)
    for i, (costs, logp) in enumerate(zip(lat, lp)):
        new = np.full(bins + 1, -np.inf)
        for j, (c, s) in enumerate(zip(costs, logp)):
            k = int(np.ceil(c / width - 1e-9))
            if k > bins:
                continue
            cand = np.full(bins + 1, -np.inf)
            cand[k:] = score[: bins + 1 - k] + s
            better = cand > new
            new[better] = cand[better]
            back[i, better] = j
        score = new
    slack = len(lat)  # each rounding-up adds less than one bin
    lo_bin = int(np.ceil((lower_ms - fixed_ms) / width)) + slack
    window = score.copy()
    window[: max(0, min(lo_bin, bins + 1))] = -np.inf
    end = int(np.argmax(window)) if np.isfinite(window).any() else int(np.argmax(score))
    if not np.isfinite(score[end]):
        raise LatencyTargetError(f"no architecture fits under {upper_ms:.3f} ms")
    choice = []
    for i in range(len(lat) - 1, -1, -1):
        j = int(back[i, end])
        choice.append(j)
        end -= int(np.ceil(lat[i][j] / width - 1e-9))
    return choice[::-1]


def most_probable_cell_within(log_probs: list[np.ndarray], latencies: list[np.ndarray], fixed_ms: float,
                              lower_ms: float, upper_ms: float, groups: list[list[int]], keep: int = 2,
                              none: int = 0, bins: int = 20000) -> list[int]:
    """``most_probable_within`` for a cell space: indices (one per edge decision) where every node keeps
    exactly ``keep`` incoming edges with an op other than ``none`` (index ``none``) and the rest are
    ``none``. Each node becomes one super-layer whose options are every choice of ``keep`` edges and of
    their ops (at most C(5, 2) * 7^2 = 490), scored by the sum of the chosen ops' log-probabilities, so
    the unconstrained optimum is the paper's derivation (the strongest edges with their strongest ops)."""
    from itertools import combinations, product

    options, node_lp, node_lat = [], [], []
    for group in groups:
        opts, lps, lats = [], [], []
        for edges in combinations(group, keep):
            op_lists = [[j for j in range(len(log_probs[i])) if j != none] for i in edges]
            for ops in product(*op_lists):
                opts.append(tuple(zip(edges, ops)))
                lps.append(sum(float(log_probs[i][j]) for i, j in zip(edges, ops)))
                lats.append(sum(float(latencies[i][j]) for i, j in zip(edges, ops)))
        options.append(opts)
        node_lp.append(np.asarray(lps))
        node_lat.append(np.asarray(lats))
    picks = most_probable_within(node_lp, node_lat, fixed_ms, lower_ms, upper_ms, bins=bins)
    out = [none] * len(log_probs)
    for opts, k in zip(options, picks):
        for i, j in opts[k]:
            out[i] = j
    return out
