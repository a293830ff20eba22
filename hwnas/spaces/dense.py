"""The DenseNAS space: densely connected routing blocks that search widths and depths (Fang et al.,
"Densely Connected Search Space for More Flexible Neural Architecture Search", CVPR 2020, Sec. 3).

The super network is a DAG (the released ``search_space_base.py``). Node 0 is the source (the stem and
the fixed first block); nodes 1..B are routing blocks, grouped in stages of alternative widths (a stage's
blocks share its resolution; its first block's link in halves it where the stage has stride 2); node
B+1 is the sink, the final 1x1 conv-bn-act (``head`` channels) before pooling. Node ``n`` links to the next
``reach`` nodes, up to the first that lies more than one stage ahead. A block is a *head layer* (the
paper's shape-alignment layer: an MBConv from the incoming block's width, one mixed op per link) followed
by its stage's ``n`` stacked layers at the block's width; every layer chooses among the MBConv candidates,
and a stacked layer may also be ``skip`` (depth). The sink's head layer is the 1x1 conv from the incoming
width. An architecture is one path from the source to the sink (which widths follow which) plus an
operation for every layer on it.

Decisions, in the order the network runs::

    route n      for every node but the sink: the next node on the path and the head layer's op there,
                 ``to<j>:<op>`` (``to<sink>:1x1`` into the sink)
    block j.l    for every block j, l = 1..n: a stacked layer's op (``skip`` allowed)

A block off the path takes ``-`` for its route and its layers (so that one network has one token list); a
node every path visits (the source, a stage of one width) has no ``-``.
Putting the head op into the route token makes every decision's latency one table row: the row of the
route token ``to<j>:<op>`` from node ``n`` is the chain row ``op:w_n>w_j:s:r_n`` (``hwnas.spaces.chain``
signatures), a row for every (block, width in, width out, candidate) the space can produce; ``-`` costs
nothing. The derived network is a chain (each block on the path a stage of ``layers`` layers), built,
profiled, exported and trained by ``ChainSpace``.

The chained cost estimation (Sec. 3.3, the backward recursion of the official ``dropped_model.py``)::

    cost_sink = 0
    cost_n = stack_n + sum_{(j, o)} q_n(j, o) * (LAT(head o: n -> j) + cost_j)     n = B .. 0
    E[LAT] = LAT_fixed + cost_0

with ``stack_n = sum_l sum_o p_{n,l}(o) LAT_{n,l}(o)`` the alpha-weighted stacked layers (``stack_0 = 0``)
and ``q_n(j, o) = softmax(beta_n)_j * softmax(alpha_{head j})_o`` the route token's probability. With one-hot
weights it is the table sum of the network on the path. The derivation (Sec. 3.4): the Viterbi path of
the connection weights, then every layer's most probable op; under a latency window the most probable
(path, ops) whose table sum lies in it, by dynamic programming over the DAG on a latency grid.
"""
from __future__ import annotations

import copy
import json
import random
from functools import lru_cache

import torch

from hwnas.spaces.base import Decision, LatencyTerms, Space
from hwnas.spaces import dense_derivation, dense_sampling
from hwnas.spaces.chain import ArchError, ChainSpace, Part
from hwnas.spaces.dense_graph import OFF, Node, Structure, check_config, nodes_of
from hwnas.spaces.tokens import SKIP

SINK_OP = "1x1"
CONFIG_KEYS = ("stem", "first", "stages", "reach", "head", "resolution", "num_classes", "act", "dropout")


class DenseSpace(Space):
    """The DenseNAS search space (module docstring). ``defaults`` is the MobileNetV2-based space."""

    capabilities = frozenset({"routes"})
    chained_blocks = True
    has_notation = False
    # the chain recipe with the gradient norm clipped to 5: a derived child is ~30 MBConv layers deep, and on
    # digits at 32x32 the unclipped recipe's loss went 3.12 / 4.36 / 2.39 in 3 epochs (val 0.156), clipped
    # 2.31 / 2.20 / 2.00 (val 0.270; docs/measurements.md, 'DenseNAS on digits')
    train_defaults = {**Space.train_defaults, "grad_clip": 5.0}
    # every residual MBConv (the supernet's and the child's) starts as the identity: two sampled 27-28 layer
    # children, clipped, reached val 0.340 / 0.490 in 3 epochs from the default init and 0.964 / 0.958 from
    # zero gamma, the first step's gradient norm 92 / 143 -> 19 / 12 (docs/measurements.md)
    zero_init_residual = True

    def __init__(self, name: str, candidates: tuple[str, ...], defaults: dict, paper: str):
        self.name, self.candidates, self.defaults, self.paper = name, tuple(candidates), defaults, paper
        self.chain = ChainSpace(name=f"{name}-child", candidates=self.candidates, skip_where="inner",
                                defaults=self.chain_defaults(defaults), paper=paper,
                                zero_init_residual=self.zero_init_residual)

    @staticmethod
    def chain_defaults(cfg: dict) -> dict:
        """A chain config through one block of every stage (one layer each): its stem, first block and
        classifier are every network's, and its plan at an input resolution gives every stage's stride
        there (small inputs drop the earliest stride-2 steps, ``hwnas.spaces.chain``), as every path
        crosses every stage."""
        return {"stem": cfg["stem"], "first": cfg["first"],
                "stages": [{"c": st["c"][0], "n": 1, "s": st["s"]} for st in cfg["stages"]],
                "head": cfg["head"], "width_mult": 1.0, "resolution": cfg["resolution"],
                "num_classes": cfg["num_classes"], "act": cfg["act"], "pw_at_e1": False, "dropout": cfg["dropout"]}

    def stage_resolutions(self, config: dict | None = None, resolution: int | None = None) -> list[int]:
        """The output resolution of the source (stage 0) and of every stage at ``resolution`` (default: the
        deploy one); the sink's is the last stage's."""
        plan = self.chain.plan(self.chain_defaults(self.resolve_config(config)), resolution)
        return [plan.layers[0].in_res] + [p.out_res for p in plan.layers]

    # -- config -----------------------------------------------------------------------------
    def resolve_config(self, config: dict | None = None) -> dict:
        config = dict(config or {})
        unknown = sorted(set(config) - set(CONFIG_KEYS))
        if unknown:
            raise ArchError(f"space {self.name!r}: unknown config key(s) {unknown}; allowed: {list(CONFIG_KEYS)}")
        out = copy.deepcopy(self.defaults)
        out.update(copy.deepcopy(config))
        check_config(self.name, out)
        return out

    def structure(self, config: dict | None = None) -> Structure:
        return _structure(_key(self.resolve_config(config)), self.candidates)

    def nodes(self, config: dict | None = None) -> tuple[Node, ...]:
        return self.structure(config).nodes

    def decisions(self, config: dict | None = None) -> tuple[Decision, ...]:
        return _decisions(_key(self.resolve_config(config)), self.candidates)

    def decision_groups(self) -> list[list[int]] | None:
        """Not independent (a block's decisions are ``-`` exactly when no route reaches it), and no group of
        decisions can be swapped alone: empty. Evolution uses ``mutate`` and ``crossover``."""
        return []

    def check_layers(self, config: dict, layers) -> None:
        decisions = self.decisions(config)
        if not isinstance(layers, list):
            raise ArchError(f"arch layers must be a list of tokens, got {type(layers).__name__}")
        if len(layers) != len(decisions):
            raise ArchError(f"arch has {len(layers)} layers (tokens) but its {self.name!r} config has {len(decisions)} "
                            f"decisions (a route per node and a token per stacked layer of every block)")
        for d, t in zip(decisions, layers):
            if t not in d.choices:
                raise ArchError(f"{d.name}: token {t!r} is not a candidate here; allowed: {', '.join(d.choices)}")
        st = self.structure(config)
        on = self.path_nodes(config, layers)
        for n in range(len(st.nodes)):
            want_off = n not in on
            tokens = ([layers[st.route[n]]] if st.route[n] is not None else []) + [layers[i] for i in st.stack[n]]
            bad = [t for t in tokens if (t == OFF) != want_off]
            if bad:
                where = "off the path" if want_off else "on the path"
                need = f"'{OFF}'" if want_off else "a real token"
                raise ArchError(f"block {n} is {where} (path {'->'.join(map(str, on))}) and needs {need} in "
                                f"every decision, got {bad[0]!r}")

    def allowed_choices(self, config: dict | None, i: int, so_far: list[int]) -> list[int] | None:
        """A block's decisions take ``-`` exactly when no route chosen so far reaches it (a node's route comes
        before the decisions of the blocks after it), a real token otherwise."""
        st = self.structure(config)
        decisions = self.decisions(config)
        node = next(n for n in range(len(st.nodes)) if i in st.stack[n] or st.route[n] == i)
        m = 0
        while m < node and st.route[m] is not None and st.route[m] < len(so_far):
            m = st.successor[st.route[m]][so_far[st.route[m]]]
        on = m == node
        return [k for k, t in enumerate(decisions[i].choices) if (t != OFF) == on]

    def path_nodes(self, config: dict | None, layers: list[str]) -> list[int]:
        """The nodes the routes of ``layers`` visit, from the source to the sink."""
        st = self.structure(config)
        path, n = [0], 0
        while st.route[n] is not None:
            i = st.route[n]
            j = st.successor[i][self.decisions(config)[i].choices.index(layers[i])]
            if j is None:
                raise ArchError(f"route {n}: block {n} is on the path but its route is '{OFF}'")
            path.append(j)
            n = j
        return path

    # -- the derived chain ------------------------------------------------------------------------
    def to_chain(self, layers: list[str], config: dict | None = None) -> tuple[dict, list[str]]:
        """The chain config (one stage per block on the path, its head layer first) and tokens of the
        network ``layers`` describe."""
        cfg = self.resolve_config(config)
        self.check_layers(cfg, layers)
        st = self.structure(cfg)
        path = self.path_nodes(cfg, layers)
        stages, tokens = [], []
        for prev, n in zip(path[:-2], path[1:-1]):  # the last link is the sink's 1x1 conv: the chain's head
            head = layers[st.route[prev]].split(":", 1)[1]
            stages.append({"c": st.nodes[n].width, "n": 1 + st.nodes[n].layers, "s": _stride(st.nodes, prev, n, cfg)})
            tokens += [head] + [layers[i] for i in st.stack[n]]
        chain_cfg = {**self.chain_defaults(cfg), "stages": stages}
        return chain_cfg, tokens

    def describe(self, layers: list[str]) -> str:
        """The tokens on the path, in the order they run (a route token names the next block and its head
        op; blocks off the path are left out)."""
        return f"{self.name}[{' '.join(t for t in layers if t != OFF)}]"

    def build_child(self, layers: list[str], config: dict, resolution: int | None = None):
        chain_cfg, tokens = self.to_chain(layers, config)
        return self.chain.build_child(tokens, chain_cfg, resolution)

    def build_supernet(self, config: dict, mixed_op, resolution: int | None = None, num_classes: int | None = None,
                       **options):
        """The dense super network (``hwnas.mixed.dense_supernet.DenseSupernet``)."""
        from hwnas.mixed.dense_supernet import DenseSupernet

        if options:
            raise ValueError(f"space {self.name!r}: the dense supernet takes no options, got {sorted(options)}")
        return DenseSupernet(self, config, mixed_op, resolution, num_classes)

    # -- latency ----------------------------------------------------------------------------
    def part(self, cfg: dict, n: int, j: int | None = None, res: list[int] | None = None) -> Part:
        """The chain part of node ``n``'s head layer into node ``j`` (into the sink: the 1x1 head conv), or
        (``j`` None) of block ``n``'s stacked layers; at the deploy shape, or at the stage resolutions
        ``res`` (``stage_resolutions``)."""
        nodes = self.structure(cfg).nodes
        r = res[nodes[n].stage] if res is not None else nodes[n].res
        if j is None:
            return Part("layer", nodes[n].width, nodes[n].width, 1, r)
        if j == len(nodes) - 1:
            return Part("head", nodes[n].width, nodes[j].width, 1, r)
        stride = _stride(nodes, n, j, cfg) if res is None else r // res[nodes[j].stage]
        return Part("layer", nodes[n].width, nodes[j].width, stride, r)

    def token_signature(self, cfg: dict, decision: int, token: str) -> str | None:
        """The table row of one decision's token (None: costs nothing)."""
        if token == OFF:
            return None
        st = self.structure(cfg)
        chain_cfg = self.chain_defaults(cfg)
        for n, r in enumerate(st.route):
            if r == decision:
                j, op = token.split(":", 1)
                j = int(j[2:])
                return self.chain.signature(self.part(cfg, n, j), None if j == len(st.nodes) - 1 else op, chain_cfg)
        n = next(n for n, s in enumerate(st.stack) if decision in s)
        return self.chain.signature(self.part(cfg, n), token, chain_cfg)

    def latency_terms(self, config: dict) -> LatencyTerms:
        cfg = self.resolve_config(config)
        decisions = self.decisions(cfg)
        keys = lambda s: [s] if s is not None else []  # noqa: E731
        sigs = [[keys(self.token_signature(cfg, i, t)) for t in d.choices] for i, d in enumerate(decisions)]
        # stem, first block, classifier; the 1x1 head conv is the route into the sink (its input width varies)
        fixed = [(p, ks) for p, ks in self.chain.latency_terms(self.chain_defaults(cfg)).fixed if p != "head"]
        return LatencyTerms(choices=[d.choices for d in decisions], signatures=sigs, fixed=fixed)

    def profiled_blocks(self, config: dict | None = None) -> list[tuple[str, object, tuple[int, ...]]]:
        """The fixed parts, every (node, successor, head candidate) and every (block, stacked candidate)."""
        from functools import partial

        cfg = self.resolve_config(config)
        chain_cfg = self.chain_defaults(cfg)
        plan = self.chain.plan(chain_cfg)
        items = [(p, None) for p in (plan.stem, plan.first, plan.classifier)]
        st = self.structure(cfg)
        sink = len(st.nodes) - 1
        for n, node in enumerate(st.nodes):
            for j in node.successors:
                items += [(self.part(cfg, n, j), None)] if j == sink else \
                    [(self.part(cfg, n, j), t) for t in self.candidates]
            if node.layers:
                items += [(self.part(cfg, n), t) for t in self.candidates + (SKIP,)]
        out, seen = [], set()
        for part, token in items:
            sig = self.chain.signature(part, token, chain_cfg)
            if sig is None or sig in seen:
                continue
            seen.add(sig)
            shape = (part.cin,) if part.kind == "classifier" else (part.cin, part.in_res, part.in_res)
            out.append((sig, partial(self.chain.make_module, part, token, chain_cfg), shape))
        return out

    def block_positions(self, config: dict, layers: list[str]) -> list[tuple[str, str | None]]:
        chain_cfg, tokens = self.to_chain(layers, config)
        return self.chain.block_positions(chain_cfg, tokens)

    def expected_latency(self, probs: list, layer_ms: list, fixed_ms: float, edge_weights=None,
                         config: dict | None = None):
        """The chained cost estimation (module docstring): differentiable in ``probs`` (one vector per
        decision over its choices, ``-`` included; a search gives ``-`` probability 0)."""
        st = self.structure(config)
        cost = [None] * len(st.nodes)
        for n in range(len(st.nodes) - 1, -1, -1):
            c = sum(((probs[i] * layer_ms[i].to(probs[i].dtype)).sum() for i in st.stack[n]),
                    torch.zeros((), dtype=torch.float64))
            r = st.route[n]
            if r is not None:
                p, lat = probs[r], layer_ms[r].to(probs[r].dtype)
                c = c + (p * lat).sum()
                for k, j in enumerate(st.successor[r]):
                    if j is not None:
                        c = c + p[k] * cost[j]
            cost[n] = c
        return cost[0] + fixed_ms

    # -- derivation (``hwnas.spaces.dense_derivation``) ------------------------------------------------
    def extremes(self, choices, layer_ms):
        return dense_derivation.extremes(choices, layer_ms)

    def derive(self, choices, log_probs, edge_log_weights=None) -> list[str]:
        return dense_derivation.derive(choices, log_probs, edge_log_weights)

    def derive_within(self, choices, log_probs, layer_ms, fixed_ms, lower_ms, upper_ms, bins: int = 20000) -> list[str]:
        return dense_derivation.derive_within(choices, log_probs, layer_ms, fixed_ms, lower_ms, upper_ms, bins)

    # -- sampling, mutation (``hwnas.spaces.dense_sampling``) ------------------------------------------
    def sample(self, rng: random.Random, config: dict | None = None) -> list[str]:
        return dense_sampling.sample(self, rng, config)

    def sample_spread(self, rng, config, layer_ms, width: float = 0.2):
        return dense_sampling.sample_spread(self, rng, config, layer_ms, width)

    def mutate(self, layers: list[str], rng: random.Random, config: dict | None = None) -> list[str]:
        return dense_sampling.mutate(self, layers, rng, config)

    def cover(self, rng: random.Random, config: dict | None, reps: int) -> list[list[str]]:
        return dense_sampling.cover(self, rng, config, reps)

    def crossover(self, a: list[str], b: list[str], rng: random.Random, config: dict | None = None) -> list[str]:
        return dense_sampling.crossover(self, a, b, rng, config)


def _key(cfg: dict) -> str:
    return json.dumps(cfg, sort_keys=True)


@lru_cache(maxsize=64)
def _structure(key: str, candidates: tuple[str, ...]) -> Structure:
    nodes = nodes_of(json.loads(key))
    route, stack, successor, i = [None] * len(nodes), [()] * len(nodes), {}, 0
    for n, node in enumerate(nodes):
        stack[n] = tuple(range(i, i + node.layers))
        i += node.layers
        if node.successors:
            route[n] = i
            successor[i] = tuple(int(t.split(":", 1)[0][2:]) for t in _route_choices(nodes, n, candidates)) + \
                (() if _always_on(nodes, n) else (None,))
            i += 1
    return Structure(tuple(nodes), tuple(route), tuple(stack), successor)


def _always_on(nodes, n: int) -> bool:
    """Whether every path visits node ``n`` (no link jumps over it): its decisions then have no ``-``."""
    return not any(a < n < b for a in range(n) for b in nodes[a].successors)


def _route_choices(nodes, n: int, candidates) -> tuple[str, ...]:
    sink = len(nodes) - 1
    return tuple(f"to{j}:{o}" for j in nodes[n].successors for o in ((SINK_OP,) if j == sink else candidates))


@lru_cache(maxsize=64)
def _decisions(key: str, candidates: tuple[str, ...]) -> tuple[Decision, ...]:
    st = _structure(key, candidates)
    out = [None] * (sum(len(s) for s in st.stack) + sum(r is not None for r in st.route))
    for n in range(len(st.nodes)):
        off = () if _always_on(st.nodes, n) else (OFF,)
        for l, i in enumerate(st.stack[n], start=1):
            out[i] = Decision(f"block {n}.{l}", candidates + (SKIP,) + off)
        if st.route[n] is not None:
            out[st.route[n]] = Decision(f"route {n}", _route_choices(st.nodes, n, candidates) + off)
    return tuple(out)


def _stride(nodes, n: int, j: int, cfg: dict) -> int:
    """The stride of the link ``n -> j`` at the deploy resolution: the next stage's stride, or 1 in a stage."""
    if nodes[j].stage == nodes[n].stage or nodes[j].stage > len(cfg["stages"]):
        return 1
    return cfg["stages"][nodes[j].stage - 1]["s"]
