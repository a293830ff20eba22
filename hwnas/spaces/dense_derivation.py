"""Deriving a network from the DenseNAS space's distributions (Fang et al. 2020, Sec. 3.4; ``DenseSpace``'s
``derive``, ``derive_within`` and ``extremes`` call these): the Viterbi path over the route scores, then every
layer's best op; under a latency window the most probable (path, ops) inside it, by dynamic programming over
the DAG on a latency grid. Every function reads the graph from the decisions' choices alone (``layout``).
"""
from __future__ import annotations

import numpy as np

from hwnas.spaces.dense_graph import OFF, Structure, layout, real_indices


def extremes(choices, layer_ms):
    """The fastest and the slowest network: the shortest and the longest path of the DAG in table ms."""
    lo = _best(choices, [-np.asarray(x, float) for x in layer_ms])
    hi = _best(choices, [np.asarray(x, float) for x in layer_ms])
    return lo, hi

# -- derivation -------------------------------------------------------------------------------
def derive(choices, log_probs, edge_log_weights=None) -> list[str]:
    """Sec. 3.4: the Viterbi path of the route (connection) weights alone, then every layer's argmax.
    A route token's log-probability is ``log beta_j + log alpha_o``; the path maximizes the sum over its
    routes of ``max_o`` of it (the head op is chosen with the route)."""
    return _best(choices, [np.asarray(x, float) for x in log_probs], stacks=False)

def _best(choices, score, stacks: bool = True) -> list[str]:
    """The path and tokens maximizing the summed ``score`` (a route's and, with ``stacks``, the stacked
    layers' scores), by dynamic programming backward over the DAG."""
    st = layout(choices)
    value, pick = [0.0] * len(st.nodes), [None] * len(st.nodes)
    for n in range(len(st.nodes) - 1, -1, -1):
        own = sum(float(score[i][real_indices(choices[i])].max()) for i in st.stack[n]) if stacks else 0.0
        r = st.route[n]
        if r is None:
            value[n] = own
            continue
        best, arg = -np.inf, None
        for k, j in enumerate(st.successor[r]):
            if j is not None and score[r][k] + value[j] > best:
                best, arg = score[r][k] + value[j], k
        value[n], pick[n] = own + best, arg
    return _tokens(choices, score, st, pick)

def _tokens(choices, score, st: Structure, pick: list) -> list[str]:
    out = [OFF] * len(choices)
    n = 0
    while True:
        for i in st.stack[n]:
            real = real_indices(choices[i])
            out[i] = choices[i][real[int(np.argmax(np.asarray(score[i])[real]))]]
        r = st.route[n]
        if r is None:
            return out
        out[r] = choices[r][pick[n]]
        n = st.successor[r][pick[n]]

def derive_within(choices, log_probs, layer_ms, fixed_ms, lower_ms, upper_ms, bins: int = 20000) -> list[str]:
    """The most probable (path, ops) with table sum in ``[lower_ms, upper_ms]``: the unconstrained
    derivation if it lies there, else dynamic programming over the DAG on a latency grid of
    ``upper / bins`` (latencies rounded up, so the result never exceeds ``upper``); if nothing reaches
    ``lower_ms`` under ``upper_ms``, the most probable under ``upper_ms``."""
    from hwnas.objective import LatencyTargetError

    st = layout(choices)
    lat = [np.asarray(x, float) for x in layer_ms]
    lp = [np.asarray(x, float) for x in log_probs]
    plain = derive(choices, lp)
    total = fixed_ms + sum(float(lat[i][choices[i].index(t)]) for i, t in enumerate(plain))
    if lower_ms <= total <= upper_ms:
        return plain
    budget = upper_ms - fixed_ms
    if budget <= 0:
        raise LatencyTargetError(f"no architecture fits under {upper_ms:.3f} ms")
    width = budget / bins
    cost = lambda ms: int(np.ceil(ms / width - 1e-9))  # noqa: E731

    def add(score, c, s):
        """``score`` shifted by ``c`` bins plus ``s``: a candidate for the max."""
        out = np.full(bins + 1, -np.inf)
        if c <= bins:
            out[c:] = score[: bins + 1 - c] + s
        return out

    # value[n]: best log-prob of block n's stacked layers and everything after, per latency bin;
    # back[n]: per stacked layer and for the route the argmax choice per bin (to trace the tokens back)
    value, back = [None] * len(st.nodes), [None] * len(st.nodes)
    for n in range(len(st.nodes) - 1, -1, -1):
        r = st.route[n]
        if r is None:
            score = np.full(bins + 1, -np.inf)
            score[0] = 0.0
            route_back = None
        else:
            score, route_back = np.full(bins + 1, -np.inf), np.full(bins + 1, -1, dtype=np.int32)
            for k, j in enumerate(st.successor[r]):
                if j is None:
                    continue
                cand = add(value[j], cost(lat[r][k]), lp[r][k])
                better = cand > score
                score[better], route_back[better] = cand[better], k
        layer_back = []
        for i in reversed(st.stack[n]):
            new, b = np.full(bins + 1, -np.inf), np.full(bins + 1, -1, dtype=np.int32)
            for k in real_indices(choices[i]):
                cand = add(score, cost(lat[i][k]), lp[i][k])
                better = cand > new
                new[better], b[better] = cand[better], k
            score = new
            layer_back.append((i, b))
        value[n], back[n] = score, (layer_back[::-1], route_back)
    slack = sum(len(s) for s in st.stack) + len(st.nodes)  # each rounding-up adds less than one bin
    lo_bin = int(np.ceil((lower_ms - fixed_ms) / width)) + slack
    window = value[0].copy()
    window[: max(0, min(lo_bin, bins + 1))] = -np.inf
    end = int(np.argmax(window)) if np.isfinite(window).any() else int(np.argmax(value[0]))
    if not np.isfinite(value[0][end]):
        raise LatencyTargetError(f"no architecture fits under {upper_ms:.3f} ms")
    out, n = [OFF] * len(choices), 0
    while True:
        layer_back, route_back = back[n]
        for i, b in layer_back:
            k = int(b[end])
            out[i] = choices[i][k]
            end -= cost(lat[i][k])
        if route_back is None:
            return out
        k = int(route_back[end])
        out[st.route[n]] = choices[st.route[n]][k]
        end -= cost(lat[st.route[n]][k])
        n = st.successor[st.route[n]][k]
