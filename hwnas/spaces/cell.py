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
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from hwnas.spaces.cell_ops import NONE, OPS, AuxiliaryHead, FactorizedReduce, ReLUConvBN, drop_path, make_op
from hwnas.spaces.chain import ArchError

STEPS = 4  # intermediate nodes per cell
KEEP = 2  # incoming edges each intermediate node keeps
CELL_TYPES = ("normal", "reduce")
CONFIG_KEYS = ("C", "layers", "search_C", "search_layers", "stem_multiplier", "auxiliary", "auxiliary_weight",
               "drop_path", "resolution", "num_classes")


def cell_edges() -> list[tuple[int, int]]:
    """(node, input) of the 14 edges of a cell, in the Arch's order."""
    return [(node, src) for node in range(2, 2 + STEPS) for src in range(node)]


EDGES = cell_edges()


@dataclass(frozen=True)
class Edge:
    """One searchable decision: the op on edge ``source -> node`` of every cell of ``cell_type``."""

    cell_type: str
    node: int
    source: int
    choices: tuple[str, ...] = OPS
    kind: str = "edge"

    @property
    def name(self) -> str:
        return f"{self.cell_type} {self.source}->{self.node}"


@dataclass(frozen=True)
class CellPosition:
    """One cell of a network: its type, channels (``c`` per node; inputs ``c_pp``/``c_p``) and the
    resolutions of its two inputs (``r_pp``, ``r_p``)."""

    index: int
    reduction: bool
    reduction_prev: bool
    c_pp: int
    c_p: int
    c: int
    r_pp: int
    r_p: int

    @property
    def cell_type(self) -> str:
        return "reduce" if self.reduction else "normal"

    @property
    def out_res(self) -> int:
        return (self.r_p - 1) // 2 + 1 if self.reduction else self.r_p

    def edge_shape(self, source: int) -> tuple[int, int]:
        """(stride, input resolution) of an edge from ``source``."""
        if self.reduction and source < 2:
            return 2, self.r_p
        return 1, self.out_res


@dataclass(frozen=True)
class FixedPart:
    """A part every network of the space has: ``kind`` (stem, preprocess, classifier), its table
    signature, the input shape without batch, and how to build it."""

    kind: str
    signature: str
    in_shape: tuple[int, ...]
    build: object  # () -> nn.Module


@dataclass(frozen=True)
class CellPlan:
    config: dict
    resolution: int
    positions: tuple[CellPosition, ...]
    layers: tuple[Edge, ...]
    fixed: tuple[FixedPart, ...]
    final_channels: int
    final_res: int


def network_positions(C: int, layers: int, stem_multiplier: int, resolution: int) -> tuple[list[CellPosition], int, int]:
    """The cells of a DARTS CIFAR network (``NetworkCIFAR`` / the search ``Network`` of the paper's code):
    reductions at ``layers // 3`` and ``2 * layers // 3``; returns (positions, final channels, final res)."""
    c_curr = stem_multiplier * C
    c_pp, c_p, c = c_curr, c_curr, C
    r_pp = r_p = resolution
    out, reduction_prev = [], False
    for i in range(layers):
        reduction = i in (layers // 3, 2 * layers // 3)
        if reduction:
            c *= 2
        pos = CellPosition(i, reduction, reduction_prev, c_pp, c_p, c, r_pp, r_p)
        out.append(pos)
        c_pp, c_p = c_p, STEPS * c
        r_pp, r_p = r_p, pos.out_res
        reduction_prev = reduction
    return out, c_p, r_p


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class GlobalPoolClassifier(nn.Module):
    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x.mean((2, 3)))


class Stem(nn.Sequential):
    def __init__(self, cout: int):
        super().__init__(nn.Conv2d(3, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout))


class CellSpace:
    """The ``darts`` space. Duck-types ``ChainSpace`` where the rest of hwnas needs it (``name``,
    ``resolve_config``, ``plan``, ``signatures``, ``check_layers``, ``build_network``)."""

    kind = "cell"
    name = "darts"
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
    def decisions() -> tuple[Edge, ...]:
        return tuple(Edge(t, node, src) for t in CELL_TYPES for node, src in EDGES)

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

    def build_network(self, layers: list[str], config: dict, resolution: int | None = None) -> "DartsNetwork":
        return DartsNetwork(layers, self.resolve_config(config), resolution)


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


class EvalCell(nn.Module):
    """A cell of the evaluation network: only the kept edges, each its op (BatchNorms affine)."""

    def __init__(self, layers: list[str], pos: CellPosition):
        super().__init__()
        self.reduction = pos.reduction
        self.preprocess0 = (FactorizedReduce(pos.c_pp, pos.c) if pos.reduction_prev
                            else ReLUConvBN(pos.c_pp, pos.c, 1, 1, 0))
        self.preprocess1 = ReLUConvBN(pos.c_p, pos.c, 1, 1, 0)
        ops, sources, nodes = [], [], []
        for token, e in zip(layers, CellSpace.decisions()):
            if e.cell_type == pos.cell_type and token != NONE:
                ops.append(make_op(token, pos.c, pos.edge_shape(e.source)[0]))
                sources.append(e.source)
                nodes.append(e.node)
        self.ops = nn.ModuleList(ops)
        self.sources, self.nodes = sources, nodes

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float = 0.0) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for node in range(2, 2 + STEPS):
            total = None
            for op, src, n in zip(self.ops, self.sources, self.nodes):
                if n != node:
                    continue
                h = op(states[src])
                if self.training and drop_prob > 0 and not isinstance(op, nn.Identity):
                    h = drop_path(h, drop_prob)
                total = h if total is None else total + h
            states.append(total)
        return torch.cat(states[2:], dim=1)


class DartsNetwork(nn.Module):
    """The evaluation network of a genotype (``NetworkCIFAR`` of the DARTS code): stem, ``layers`` cells,
    the optional auxiliary head after the second reduction (training only; its logits are left in
    ``aux_logits``), global pooling and the classifier. ``drop_path_prob`` is read at every forward."""

    def __init__(self, layers: list[str], config: dict, resolution: int | None = None):
        super().__init__()
        space = CellSpace()
        plan = space.plan(config, resolution)
        cfg = plan.config
        self.stem = Stem(cfg["stem_multiplier"] * cfg["C"])
        self.cells = nn.ModuleList(EvalCell(layers, p) for p in plan.positions)
        self.aux_at = 2 * cfg["layers"] // 3
        self.auxiliary = (AuxiliaryHead(STEPS * plan.positions[self.aux_at].c, cfg["num_classes"])
                          if cfg["auxiliary"] else None)
        self.head = GlobalPoolClassifier(plan.final_channels, cfg["num_classes"])
        self.drop_path_prob = float(cfg["drop_path"])
        self.auxiliary_weight = float(cfg["auxiliary_weight"])
        self.aux_logits: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        self.aux_logits = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self.aux_at and self.auxiliary is not None and self.training:
                self.aux_logits = self.auxiliary(s1)
        return self.head(s1)


SPACE = CellSpace()
