"""Sampling, mutation, crossover and covering walks over the DenseNAS space's paths (``hwnas.spaces.dense``;
``DenseSpace``'s ``sample``, ``sample_spread``, ``mutate``, ``crossover`` and ``cover`` call these). A network is
one path from the source to the sink plus an op for every layer on it; every block off the path is ``-``.
"""
from __future__ import annotations

import random
from typing import TYPE_CHECKING

import numpy as np

from hwnas.spaces.base import _rank_weights

from hwnas.spaces.dense_graph import OFF, real_indices

if TYPE_CHECKING:
    from hwnas.spaces.dense import DenseSpace
    from hwnas.spaces.dense_graph import Structure


def sample(space: DenseSpace, rng: random.Random, config: dict | None = None) -> list[str]:
    """A path (every route uniform among the reachable blocks) and ops uniform per layer."""
    decisions = space.decisions(config)
    st = space.structure(config)
    out, n = [OFF] * len(decisions), 0
    while True:
        for i in st.stack[n]:
            out[i] = rng.choice(_real_tokens(decisions[i].choices))
        r = st.route[n]
        if r is None:
            return out
        j = rng.choice(st.nodes[n].successors)
        out[r] = _route_to(decisions[r].choices, j, rng)
        n = j

def sample_spread(space: DenseSpace, rng, config, layer_ms, width: float = 0.2):
    """A network spread over the latency range (``Space.sample_spread``): a level ``q ~ U(0, 1)``, then
    along the walk every decision's real choice weighted by ``exp(-(r - q)^2 / (2 width^2))``, ``r`` its
    latency rank; a route's latency counts its head op and the mean cost of what follows (a route that
    skips blocks is fast)."""
    decisions = space.decisions(config)
    st = space.structure(config)
    lat = [np.asarray(x, float) for x in layer_ms]
    ahead = [0.0] * len(st.nodes)  # mean cost from a node's stacked layers on, under uniform choices
    for n in range(len(st.nodes) - 1, -1, -1):
        own = sum(float(lat[i][real_indices(decisions[i].choices)].mean()) for i in st.stack[n])
        r = st.route[n]
        if r is not None:
            ks = real_indices(decisions[r].choices)
            own += float(np.mean([lat[r][k] + ahead[st.successor[r][k]] for k in ks]))
        ahead[n] = own
    q = rng.random()
    out, n = [OFF] * len(decisions), 0
    while True:
        for i in st.stack[n]:
            ks = real_indices(decisions[i].choices)
            out[i] = decisions[i].choices[rng.choices(ks, weights=_rank_weights(lat[i][ks], q, width))[0]]
        r = st.route[n]
        if r is None:
            return out
        ks = real_indices(decisions[r].choices)
        cost = [lat[r][k] + ahead[st.successor[r][k]] for k in ks]
        k = rng.choices(ks, weights=_rank_weights(cost, q, width))[0]
        out[r] = decisions[r].choices[k]
        n = st.successor[r][k]

def mutate(space: DenseSpace, layers: list[str], rng: random.Random, config: dict | None = None) -> list[str]:
    """A neighbour: one layer's op changed, or one route sent to another block (the new blocks' ops
    drawn uniformly, the blocks left behind set to ``-``)."""
    decisions = space.decisions(config)
    st = space.structure(config)
    path = space.path_nodes(config, layers)
    live = [i for n in path for i in ([st.route[n]] if st.route[n] is not None else []) + list(st.stack[n])
            if len(_real_tokens(decisions[i].choices)) > 1]
    if not live:
        return list(layers)
    i = rng.choice(live)
    out = list(layers)
    if i not in st.route:
        out[i] = rng.choice([t for t in _real_tokens(decisions[i].choices) if t != layers[i]])
        return out
    n = st.route.index(i)
    out[i] = rng.choice([t for t in _real_tokens(decisions[i].choices) if t != layers[i]])
    j = int(out[i].split(":", 1)[0][2:])
    old_next = dict(zip(path, path[1:]))
    new_path = path[:path.index(n) + 1] + [j]
    while st.route[new_path[-1]] is not None:  # walk on until the old path is met, then follow it
        m = new_path[-1]
        new_path.append(old_next[m] if m in old_next else rng.choice(st.nodes[m].successors))
    new = [OFF] * len(layers)
    for m, nxt in zip(new_path, new_path[1:] + [None]):
        for k in st.stack[m]:
            new[k] = layers[k] if m in path else rng.choice(_real_tokens(decisions[k].choices))
        if nxt is not None:
            r = st.route[m]
            new[r] = out[r] if m == n else layers[r] if old_next.get(m) == nxt else \
                _route_to(decisions[r].choices, nxt, rng)
    return new


def cover(space: DenseSpace, rng: random.Random, config: dict | None, reps: int) -> list[list[str]]:
    """``reps`` sets of networks; within a set every token of every decision appears (``Space.cover``'s
    promise, for in-network profiling; ``-`` where a path avoids the block): greedy walks that take a
    token not yet covered wherever they can, then, for what is left, a network through every node up to
    that decision (consecutive nodes are always linked), or for a ``-`` one that jumps over its block."""
    if reps < 1:
        raise ValueError(f"a covering needs reps >= 1, got {reps}")
    decisions = space.decisions(config)
    st = space.structure(config)
    archs = []
    for _ in range(reps):
        todo = {(i, t) for i, d in enumerate(decisions) for t in d.choices}
        for _attempt in range(4 * max(len(d.choices) for d in decisions)):
            if not todo:
                break
            archs.append(_walk(decisions, st, rng, todo))
        while todo:
            archs.append(_walk(decisions, st, rng, todo, target=min(todo)))
    return archs

def _walk(decisions, st: Structure, rng: random.Random, todo: set, target=None) -> list[str]:
    """One network, preferring tokens in ``todo`` (removed as they are used); with ``target`` ``(i, t)``,
    through every node up to decision ``i``'s, which takes ``t``."""
    goal, jump = None, None
    if target is not None:
        goal = next(n for n in range(len(st.nodes)) if target[0] in st.stack[n] or st.route[n] == target[0])
        if target[1] == OFF:  # the last link over the block, reached node by node
            jump = max((a, b) for a in range(goal) for b in st.nodes[a].successors if b > goal)
    out, n = [OFF] * len(decisions), 0
    while True:
        for i in list(st.stack[n]) + ([st.route[n]] if st.route[n] is not None else []):
            real = _real_tokens(decisions[i].choices)
            if jump is not None and i == st.route[n] and n <= jump[0]:
                pick = _route_to(decisions[i].choices, jump[1] if n == jump[0] else n + 1, rng)
            elif jump is None and target is not None and i == target[0]:
                pick = target[1]
            elif jump is None and goal is not None and i == st.route[n] and n < goal:
                pick = _route_to(decisions[i].choices, n + 1, rng)
            else:
                fresh = [t for t in real if (i, t) in todo]
                pick = rng.choice(fresh or real)
            out[i] = pick
        if st.route[n] is None:
            break
        n = st.successor[st.route[n]][decisions[st.route[n]].choices.index(out[st.route[n]])]
    todo.difference_update(enumerate(out))
    return out

def crossover(space: DenseSpace, a: list[str], b: list[str], rng: random.Random, config: dict | None = None) -> list[str]:
    """A child of two networks: ``a`` up to a node both paths visit (drawn uniformly among the shared
    ones), ``b`` from there on (that node's stacked layers and route included)."""
    st = space.structure(config)
    pa, pb = space.path_nodes(config, a), space.path_nodes(config, b)
    c = rng.choice([n for n in pa if n in pb])
    out = [OFF] * len(a)
    for path, src in ((pa[:pa.index(c)], a), (pb[pb.index(c):], b)):
        for n in path:
            for i in ([st.route[n]] if st.route[n] is not None else []) + list(st.stack[n]):
                out[i] = src[i]
    return out


def _route_to(choices, j: int, rng: random.Random) -> str:
    """A route token into node ``j``, its head op drawn uniformly."""
    return rng.choice([t for t in choices if t.startswith(f"to{j}:")])


def _real_tokens(choices) -> list[str]:
    return [t for t in choices if t != OFF]
