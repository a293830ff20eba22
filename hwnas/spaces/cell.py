"""The DARTS cell space (Liu, Simonyan, Yang. DARTS: Differentiable Architecture Search. ICLR 2019,
Sec. 2.1 and Appendix A.1): a network of stacked cells, each a DAG of 2 input nodes (the outputs of the
two previous cells), 4 intermediate nodes and an output that concatenates the intermediate nodes. Every
edge ``(j -> i)``, ``j < i``, carries one of the 8 ops of ``hwnas.spaces.cell_ops.OPS``. All normal
cells share one genotype and all reduction cells another; reduction cells sit at 1/3 and 2/3 of the
depth and their edges from the input nodes have stride 2.

An Arch of this space lists one token per edge (28 = 14 normal-cell edges then 14 reduction-cell
edges, each cell's edges ordered by node then by input: node 2 <- 0, 1; node 3 <- 0, 1, 2; ...):
the edge's op, or ``none`` for an edge the cell does not have. Every intermediate node keeps exactly
2 incoming edges (the paper's derivation, Sec. 2.4). ``genotype`` converts to the paper's
``Genotype(normal=[(op, input), ...], normal_concat=[2, 3, 4, 5], reduce=..., reduce_concat=...)``
and an Arch JSON may give ``"genotype": {"normal": [[op, input], ...], "reduce": [...]}`` instead of
``layers``.

Config (``CellSpace.resolve_config``)::

    C                initial channels of the evaluation (deployed) network     36
    layers           cells of the evaluation network                           20
    search_C         initial channels of the search network                    16
    search_layers    cells of the search network                               8
    stem_multiplier  stem channels = stem_multiplier * C                       3
    auxiliary        auxiliary head after the second reduction (training only) false
    auxiliary_weight weight of its loss                                       0.4
    drop_path        drop-path probability of the evaluation network           0.0
    resolution       deploy input resolution (CIFAR: 32)                       32
    num_classes                                                                10

Latency: each edge op is profiled at every (cell, edge) shape it runs at in the evaluation network
(signature ``sep_conv_3x3:c36:s1:r32``), and an Arch's predicted latency sums, over the kept edges,
the op's latency at every cell of that type, plus the fixed parts (stem, each cell's two 1x1
preprocessing convs or factorized reductions, pooling and classifier). Node sums and the output
concatenation are not profiled (a calibration by ``hwnas latency validate`` absorbs them).
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from hwnas.spaces.base import LatencyTerms, Space, _rank_weights
from hwnas.spaces.cell_ops import NONE, OPS, FactorizedReduce, ReLUConvBN, make_op
from hwnas.spaces.cell_plan import (CELL_TYPES, CONFIG_KEYS, EDGES, KEEP, STEPS, CellPlan, CellPosition,  # noqa: F401
                                    Edge, FixedPart, GlobalPoolClassifier, Stem, _is_int, cell_edges,
                                    network_positions)
from hwnas.spaces.chain import ArchError

class CellSpace(Space):
    """The ``darts`` space (the ``Space`` protocol). Its 28 decisions are not independent: every node
    keeps ``KEEP`` of its incoming edges (``decision_groups``), so sampling, mutation, the derivations and
    the expected latency are the cell's own."""

    name = "darts"
    capabilities = frozenset({"cells"})
    # its search network costs seconds a batch-32 step on a small CPU (measurements: docs/measurements.md,
    # 'DARTS cell search cost'), and the DARTS family updates alpha from the first epoch
    search_epochs = (2, 0)
    # the DARTS evaluation recipe (Liu et al. 2019, Sec. 3.3 / A.2); without the clip the 20-cell network's
    # first epoch diverges at lr 0.05
    train_defaults = {"lr": 0.025, "weight_decay": 3e-4, "grad_clip": 5.0, "nesterov": False}
    absent_token = NONE
    paper = "Liu, Simonyan, Yang. DARTS: Differentiable Architecture Search. ICLR 2019."
    defaults = {"C": 36, "layers": 20, "search_C": 16, "search_layers": 8, "stem_multiplier": 3,
                "auxiliary": False, "auxiliary_weight": 0.4, "drop_path": 0.0, "resolution": 32, "num_classes": 10}
    candidates = OPS

    # -- config ---------------------------------------------------------------------------------------
    def resolve_config(self, config: dict | None = None) -> dict:
        config = dict(config or {})
        unknown = sorted(set(config) - set(CONFIG_KEYS))
        if unknown:
            raise ArchError(f"space 'darts': unknown config key(s) {unknown}; allowed: {list(CONFIG_KEYS)}")
        cfg = {**copy.deepcopy(self.defaults), **copy.deepcopy(config)}
        where = "space 'darts' config"
        for key in ("C", "layers", "search_C", "search_layers", "stem_multiplier", "resolution", "num_classes"):
            if not _is_int(cfg[key]) or cfg[key] < 1:
                raise ArchError(f"{where}: {key}={cfg[key]!r} must be a positive integer")
        for key in ("layers", "search_layers"):
            if cfg[key] < 3:
                raise ArchError(f"{where}: {key}={cfg[key]} must be at least 3 (a normal cell and two reductions)")
        for key in ("C", "search_C"):
            if cfg[key] % 2:
                raise ArchError(f"{where}: {key}={cfg[key]} must be even (factorized reductions halve it)")
        if cfg["resolution"] < 8:
            raise ArchError(f"{where}: resolution {cfg['resolution']} is too small (minimum 8)")
        if not isinstance(cfg["auxiliary"], bool):
            raise ArchError(f"{where}: auxiliary={cfg['auxiliary']!r} must be true or false")
        for key in ("drop_path", "auxiliary_weight"):
            if not isinstance(cfg[key], (int, float)) or isinstance(cfg[key], bool) or not 0 <= cfg[key] < 1:
                raise ArchError(f"{where}: {key}={cfg[key]!r} must be a number in [0, 1)")
        return cfg

    # -- decisions and plans --------------------------------------------------------------------------
    @staticmethod
    def decisions(config: dict | None = None) -> tuple[Edge, ...]:
        return tuple(Edge(t, node, src) for t in CELL_TYPES for node, src in EDGES)

    def decision_groups(self) -> list[list[int]]:
        return self.node_groups()

    @staticmethod
    def node_groups() -> list[list[int]]:
        """Decision indices of the incoming edges of each intermediate node (normal cell's first)."""
        groups: dict[tuple[str, int], list[int]] = {}
        for i, e in enumerate(CellSpace.decisions()):
            groups.setdefault((e.cell_type, e.node), []).append(i)
        return list(groups.values())

    def num_layers(self, config: dict | None = None) -> int:
        return len(self.decisions())

    def plan(self, config: dict | None = None, resolution: int | None = None, search: bool = False) -> CellPlan:
        """The deploy (evaluation) network of ``config`` at ``resolution`` (default the config's), or with
        ``search=True`` the search network (``search_C``, ``search_layers``)."""
        cfg = self.resolve_config(config)
        res = int(resolution or cfg["resolution"])
        C, layers = (cfg["search_C"], cfg["search_layers"]) if search else (cfg["C"], cfg["layers"])
        positions, c_final, r_final = network_positions(C, layers, cfg["stem_multiplier"], res)
        stem_c = cfg["stem_multiplier"] * C
        fixed = [FixedPart("stem", f"dstem:3>{stem_c}:r{res}", (3, res, res), lambda: Stem(stem_c))]
        for p in positions:
            if p.reduction_prev:
                fixed.append(FixedPart("preprocess", f"fred:{p.c_pp}>{p.c}:r{p.r_pp}", (p.c_pp, p.r_pp, p.r_pp),
                                       lambda p=p: FactorizedReduce(p.c_pp, p.c)))
            else:
                fixed.append(FixedPart("preprocess", f"rcb:{p.c_pp}>{p.c}:r{p.r_pp}", (p.c_pp, p.r_pp, p.r_pp),
                                       lambda p=p: ReLUConvBN(p.c_pp, p.c, 1, 1, 0)))
            fixed.append(FixedPart("preprocess", f"rcb:{p.c_p}>{p.c}:r{p.r_p}", (p.c_p, p.r_p, p.r_p),
                                   lambda p=p: ReLUConvBN(p.c_p, p.c, 1, 1, 0)))
        n = cfg["num_classes"]
        fixed.append(FixedPart("classifier", f"gapfc:{c_final}>{n}:r{r_final}", (c_final, r_final, r_final),
                               lambda: GlobalPoolClassifier(c_final, n)))
        return CellPlan(cfg, res, tuple(positions), self.decisions(), tuple(fixed), c_final, r_final)

    # -- latency-table keys ---------------------------------------------------------------------------
    @staticmethod
    def op_signature(op: str, pos: CellPosition, source: int) -> str | None:
        """The table key of ``op`` on an edge from ``source`` in cell ``pos``; None when it costs nothing."""
        stride, res = pos.edge_shape(source)
        if op == NONE or (op == "skip_connect" and stride == 1):
            return None
        return f"{op}:c{pos.c}:s{stride}:r{res}"

    def signatures(self, part, token: str | None = None, config: dict | None = None) -> list[str]:
        """Every table key ``part`` (an Edge with ``token``, or a FixedPart) runs in the deploy network:
        an edge's op once per cell of its type (repeats included: each is run)."""
        if isinstance(part, FixedPart):
            return [part.signature]
        plan = self.plan(config)
        out = []
        for pos in plan.positions:
            if pos.cell_type == part.cell_type:
                sig = self.op_signature(token, pos, part.source)
                if sig is not None:
                    out.append(sig)
        return out

    def profiled_blocks(self, config: dict | None = None) -> list[tuple[str, object, tuple[int, ...]]]:
        """(signature, build, input shape without batch) of every distinct block the deploy network of
        any genotype can run: the fixed parts and every op at every edge shape."""
        plan = self.plan(config)
        out, seen = [], set()
        for f in plan.fixed:
            if f.signature not in seen:
                seen.add(f.signature)
                out.append((f.signature, f.build, f.in_shape))
        for pos in plan.positions:
            for source in range(STEPS + 1):
                stride, res = pos.edge_shape(source)
                for op in OPS:
                    sig = self.op_signature(op, pos, source)
                    if sig is None or sig in seen:
                        continue
                    seen.add(sig)
                    out.append((sig, lambda op=op, c=pos.c, s=stride: make_op(op, c, s), (pos.c, res, res)))
        return out

    # -- architectures --------------------------------------------------------------------------------
    def check_layers(self, config: dict, layers) -> None:
        """Raise ArchError naming the first problem of a genotype's edge tokens."""
        edges = self.decisions()
        if not isinstance(layers, list):
            raise ArchError(f"arch layers must be a list of tokens, got {type(layers).__name__}")
        if len(layers) != len(edges):
            raise ArchError(f"a 'darts' arch has {len(edges)} edge tokens (14 normal, 14 reduce), got {len(layers)}")
        for token, e in zip(layers, edges):
            if token not in OPS:
                raise ArchError(f"{e.cell_type} cell, edge {e.source}->{e.node}: unknown op {token!r}; "
                                f"the ops are {', '.join(OPS)}")
        for group in self.node_groups():
            kept = [i for i in group if layers[i] != NONE]
            if len(kept) != KEEP:
                e = edges[group[0]]
                raise ArchError(f"{e.cell_type} cell, node {e.node}: {len(kept)} incoming edges are not 'none' "
                                f"({', '.join(f'{edges[i].source}:{layers[i]}' for i in kept) or 'none'}); "
                                f"every node keeps exactly {KEEP}")

    def genotype(self, layers: list[str]) -> dict:
        """The paper's Genotype as a dict: per cell type the kept ``[op, input]`` pairs, node by node."""
        out = {}
        for t in CELL_TYPES:
            pairs = [[tok, e.source] for tok, e in zip(layers, self.decisions()) if e.cell_type == t and tok != NONE]
            out[t] = pairs
            out[f"{t}_concat"] = list(range(2, 2 + STEPS))
        return out

    def layers_from_genotype(self, genotype: dict, source: str = "genotype") -> list[str]:
        """Edge tokens of a genotype dict ``{"normal": [[op, input], ...], "reduce": [...]}`` (8 pairs
        each, two per node in node order; ``*_concat`` if given must be [2, 3, 4, 5])."""
        if not isinstance(genotype, dict):
            raise ArchError(f"{source}: a genotype must be an object with 'normal' and 'reduce'")
        layers = [NONE] * len(self.decisions())
        index = {(e.cell_type, e.node, e.source): i for i, e in enumerate(self.decisions())}
        for t in CELL_TYPES:
            pairs = genotype.get(t)
            if not isinstance(pairs, (list, tuple)) or len(pairs) != KEEP * STEPS:
                raise ArchError(f"{source}: '{t}' must list {KEEP * STEPS} [op, input] pairs (2 per node), "
                                f"got {pairs!r:.60}")
            concat = genotype.get(f"{t}_concat", list(range(2, 2 + STEPS)))
            if list(concat) != list(range(2, 2 + STEPS)):
                raise ArchError(f"{source}: {t}_concat={list(concat)} is not supported (must be [2, 3, 4, 5])")
            for k, pair in enumerate(pairs):
                node = 2 + k // KEEP
                if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                    raise ArchError(f"{source}: {t} cell, node {node}: {pair!r} is not an [op, input] pair")
                op, src = pair
                if op not in OPS or op == NONE:
                    raise ArchError(f"{source}: {t} cell, node {node}: unknown op {op!r}; the ops are "
                                    f"{', '.join(o for o in OPS if o != NONE)}")
                if not _is_int(src) or not 0 <= src < node:
                    raise ArchError(f"{source}: {t} cell, node {node}: input {src!r} does not exist "
                                    f"(node {node} reads from nodes 0..{node - 1})")
                i = index[(t, node, src)]
                if layers[i] != NONE:
                    raise ArchError(f"{source}: {t} cell, node {node}: two ops from input {src} "
                                    f"(a node keeps two distinct incoming edges)")
                layers[i] = op
        return layers

    def describe(self, layers: list[str]) -> str:
        g = self.genotype(layers)
        fmt = lambda pairs: "[" + ", ".join(f"('{o}', {s})" for o, s in pairs) + "]"  # noqa: E731
        return (f"Genotype(normal={fmt(g['normal'])}, normal_concat={g['normal_concat']}, "
                f"reduce={fmt(g['reduce'])}, reduce_concat={g['reduce_concat']})")

    def label(self, layers: list[str]) -> str:
        return f"{self.name}:{self.describe(layers)}"

    def history_record(self, layers: list[str]) -> dict:
        return {"genotype": self.describe(layers)}

    def derived_arch_summary(self, layers: list[str]) -> str:
        return f"derived genotype: {self.describe(layers)}"

    def figures(self, layers: list[str]) -> dict:
        """The DARTS collapse: the share of the normal cell's kept edges that are skip-connects."""
        normal = self.genotype(layers)["normal"]
        return {"normal_skip_share": sum(op == "skip_connect" for op, _ in normal) / len(normal)}

    # -- building -------------------------------------------------------------------------------------
    def build_child(self, layers: list[str], config: dict, resolution: int | None = None) -> nn.Module:
        from hwnas.spaces.cell_network import DartsNetwork

        return DartsNetwork(layers, self.resolve_config(config), resolution)

    def build_supernet(self, config: dict, mixed_op, resolution: int | None = None, num_classes: int | None = None,
                       **options) -> nn.Module:
        """The search network (``hwnas.mixed.cell_supernet.CellSupernet``); ``options`` are its ``layers``,
        ``choices`` and ``skip_dropout`` (P-DARTS's stages)."""
        from hwnas.mixed.cell_supernet import CellSupernet

        return CellSupernet(self, config, mixed_op, resolution, num_classes, **options)

    # -- latency --------------------------------------------------------------------------------------
    def latency_terms(self, config: dict) -> LatencyTerms:
        plan = self.plan(config)
        return LatencyTerms(choices=[e.choices for e in plan.layers],
                            signatures=[[self.signatures(e, t, config) for t in e.choices] for e in plan.layers],
                            fixed=[(f.kind, [f.signature]) for f in plan.fixed])

    def expected_latency(self, probs: list, layer_ms: list, fixed_ms: float, edge_weights=None,
                         config: dict | None = None):
        """E[LAT] of a cell: an edge's op is drawn from its probabilities given that the edge is kept, and a
        node keeps ``KEEP`` of its incoming edges, edge ``e`` with probability ``min(1, KEEP * w_e /
        sum_node w)``, ``w_e = 1 - p_e(none)`` (times PC-DARTS's edge weight when ``edge_weights`` is given).
        At a converged (one-hot) architecture this is the derived genotype's latency; while the weights are
        soft it is a smooth stand-in whose gradient moves the ops and the edges the way the derivation will
        read them."""
        total = 0.0
        for group in self.node_groups():
            mass = torch.stack([(probs[i] * layer_ms[i].to(probs[i].dtype)).sum() for i in group])
            kept = torch.stack([1 - probs[i][0] for i in group]).clamp_min(1e-6)  # OPS[0] is none
            w = kept if edge_weights is None else kept * torch.stack([edge_weights[i] for i in group])
            share = torch.clamp(KEEP * w / w.sum(), max=1.0)
            total = total + (share * mass / kept).sum()
        return total + fixed_ms

    def extremes(self, choices, layer_ms) -> tuple[list[str], list[str]]:
        """Per node the ``KEEP`` edges whose cheapest / dearest op is cheapest / dearest."""
        return self._extreme(choices, layer_ms, min), self._extreme(choices, layer_ms, max)

    def _extreme(self, choices, layer_ms, pick) -> list[str]:
        tokens = [NONE] * len(choices)
        for group in self.node_groups():
            best = []
            for i in group:
                lat = np.asarray(layer_ms[i], float)[1:]  # every op but none
                j = int(np.argmin(lat) if pick is min else np.argmax(lat)) + 1
                best.append((float(layer_ms[i][j]), i, j))
            best.sort(reverse=pick is max)
            for _, i, j in best[:KEEP]:
                tokens[i] = choices[i][j]
        return tokens

    def derive(self, choices, log_probs, edge_log_weights=None) -> list[str]:
        """The paper's derivation (Sec. 2.4): ``derive_genotype``."""
        return derive_genotype(log_probs, edge_log_weights)

    def derive_within(self, choices, log_probs, layer_ms, fixed_ms, lower_ms, upper_ms) -> list[str]:
        """The most probable genotype (two edges per node) in ``[lower_ms, upper_ms]``
        (``hwnas.objective.most_probable_cell_within``)."""
        from hwnas.objective import most_probable_cell_within

        lat = [np.asarray(x, dtype=np.float64) for x in layer_ms]
        idx = most_probable_cell_within(log_probs, lat, fixed_ms, lower_ms, upper_ms, self.node_groups(), keep=KEEP)
        return [c[j] for c, j in zip(choices, idx)]

    # -- sampling and mutation ------------------------------------------------------------------------
    def sample(self, rng, config: dict | None = None) -> list[str]:
        """A random genotype: per node ``KEEP`` distinct incoming edges drawn uniformly, each an op other
        than ``none`` drawn uniformly."""
        return self._sample(rng, lambda i, ops: rng.choice(ops))

    def sample_spread(self, rng, config, layer_ms, width: float = 0.2) -> list[str]:
        """A random genotype whose ops are drawn by their latency rank around a per-genotype level (see
        ``Space.sample_spread``)."""
        q = rng.random()
        return self._sample(rng, lambda i, ops: rng.choices(ops, weights=_rank_weights(
            np.asarray(layer_ms[i], float)[1:], q, width))[0])

    def _sample(self, rng, pick_op) -> list[str]:
        decisions = self.decisions()
        tokens = [NONE] * len(decisions)
        for group in self.node_groups():
            for i in rng.sample(group, KEEP):
                tokens[i] = pick_op(i, [o for o in decisions[i].choices if o != NONE])
        return tokens

    def mutate(self, layers: list[str], rng, config: dict | None = None) -> list[str]:
        """A neighbouring genotype (Real et al. 2019, Sec. 3: an op mutation or a hidden-state mutation):
        a random kept edge either takes another op, or moves to another input of its node with its op."""
        out = list(layers)
        group = rng.choice(self.node_groups())
        kept = [i for i in group if layers[i] != NONE]
        i = rng.choice(kept)
        free = [j for j in group if layers[j] == NONE]
        if free and rng.random() < 0.5:
            j = rng.choice(free)
            out[j], out[i] = layers[i], NONE
        else:
            out[i] = rng.choice([o for o in OPS if o not in (NONE, layers[i])])
        return out

    def cover(self, rng, config, reps):
        raise ValueError("space 'darts' has no covering design (its networks are cells, not a chain of blocks)")


def derive_genotype(log_probs, edge_log_weights=None) -> list[str]:
    """The paper's derivation (DARTS, Sec. 2.4): per intermediate node keep the ``KEEP`` incoming edges
    whose strongest op other than ``none`` is strongest, each with that op; every other edge is ``none``.
    ``log_probs`` holds one vector over ``OPS`` per decision (28: the normal cell's edges, then the
    reduction cell's; ``-inf`` for an op pruned away); ``edge_log_weights`` (PC-DARTS, Sec. 3.3: log of
    the normalized edge weights, one per decision) are added to an edge's strength. One token per
    decision; ties go to the earlier edge and the earlier op."""
    n = len(CellSpace.decisions())
    if len(log_probs) != n:
        raise ValueError(f"derive_genotype needs one op vector per edge ({n}), got {len(log_probs)}")
    none = OPS.index(NONE)
    layers = [NONE] * n
    for group in CellSpace.node_groups():
        best = []
        for i in group:
            lp = np.asarray(log_probs[i], dtype=np.float64).copy()
            if lp.shape != (len(OPS),):
                raise ValueError(f"derive_genotype: edge {i} has {lp.size} op weights, expected {len(OPS)} (one per op)")
            lp[none] = -np.inf
            j = int(lp.argmax())
            strength = lp[j] + (0.0 if edge_log_weights is None else float(edge_log_weights[i]))
            best.append((strength, i, j))
        for _, i, j in sorted(best, key=lambda t: -t[0])[:KEEP]:
            layers[i] = OPS[j]
    return layers


SPACE = CellSpace()
