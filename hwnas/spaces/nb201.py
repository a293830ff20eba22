"""The NAS-Bench-201 space (Dong & Yang. NAS-Bench-201: Extending the Scope of Reproducible Neural
Architecture Search. ICLR 2020, Sec. 2.1 and Fig. 1).

A cell is a DAG of 4 nodes; node 0 is the cell's input, every edge ``j -> i`` (``j < i``) carries one of
5 ops, node ``i`` sums its incoming edges and node 3 is the cell's output. That is 6 edges and
``5 ** 6 = 15,625`` cells, every one legal (unlike the DARTS cell, no node keeps a fixed number of
inputs, and an edge may be ``none``). The network (the paper's Fig. 1, top) is a 3x3 conv stem with
BatchNorm, three stages of ``N`` cells at ``C``, ``2C``, ``4C`` channels joined by a residual reduction
block (the ResNet basic block at stride 2: ReLU-conv3x3-BN twice, the shortcut a 2x2 average pool and a
1x1 conv), then BatchNorm, ReLU, global average pooling and the classifier. The benchmark's setting is
``C = 16``, ``N = 5`` at 32x32 (CIFAR). Every cell of the network runs the same genotype.

The ops (the paper's Sec. 2.1; its code's ``OPS``):

    none            zeros (the edge does not exist)
    skip_connect    identity
    nor_conv_1x1    ReLU, 1x1 conv, BN
    nor_conv_3x3    ReLU, 3x3 conv, BN
    avg_pool_3x3    3x3 average pooling, stride 1 (padding not counted)

An Arch lists one token per edge in the benchmark's order (1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2), and its
string form is the benchmark's own notation (``arch_string`` / ``parse_arch_string``)::

    |nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|

(``+`` separates the nodes; ``op~j`` is the edge from node ``j``). An Arch JSON may give that string as
``"genotype"`` instead of ``layers``.

Config: ``C`` (16), ``N`` (5 cells per stage), ``resolution`` (32), ``num_classes`` (10). The search
network of the DARTS family is the same network with a mixed op on every edge (as the benchmark's paper
searched: ``hwnas.mixed.nb201_supernet``).

Latency: each op is profiled at the shape of each stage (signature ``nb201:nor_conv_3x3:c16:r32``); an
Arch's predicted latency sums, over its edges, the op's latency in every cell (N per stage), plus the
fixed parts (stem, the two reduction blocks, the head). ``none`` and ``skip_connect`` cost nothing in the
table; node sums are not profiled (a calibration by ``hwnas latency validate`` absorbs them).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from hwnas.spaces.base import Decision, LatencyTerms, Space
from hwnas.spaces.cell_ops import ReLUConvBN
from hwnas.spaces.chain import ArchError

OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
NODES = 4
#: (node, input) of the 6 edges, in the benchmark's order
EDGES = tuple((node, src) for node in range(1, NODES) for src in range(node))
CONFIG_KEYS = ("C", "N", "resolution", "num_classes")
FREE_OPS = ("none", "skip_connect")  # cost nothing in a latency table


def arch_string(layers: list[str]) -> str:
    """The benchmark's notation of edge tokens ``layers`` (6, in ``EDGES`` order)."""
    nodes = []
    for node in range(1, NODES):
        nodes.append("|" + "|".join(f"{layers[k]}~{src}" for k, (n, src) in enumerate(EDGES) if n == node) + "|")
    return "+".join(nodes)


def parse_arch_string(text: str, source: str = "arch") -> list[str]:
    """Edge tokens of a string in the benchmark's notation; ``ArchError`` naming the first problem."""
    if not isinstance(text, str):
        raise ArchError(f"{source}: an nb201 architecture string must be text, got {type(text).__name__}")
    parts = text.strip().split("+")
    if len(parts) != NODES - 1:
        raise ArchError(f"{source}: {text!r} has {len(parts)} node(s); an nb201 cell string has {NODES - 1} "
                        f"separated by '+', like |nor_conv_3x3~0|+|none~0|skip_connect~1|+|...~0|...~1|...~2|")
    layers = []
    for node, part in enumerate(parts, start=1):
        if not (part.startswith("|") and part.endswith("|")):
            raise ArchError(f"{source}: node {node} {part!r} must be written |op~input|...|")
        edges = part[1:-1].split("|")
        if len(edges) != node:
            raise ArchError(f"{source}: node {node} has {len(edges)} incoming edge(s) in {part!r}; it has {node}")
        for src, edge in enumerate(edges):
            op, sep, inp = edge.partition("~")
            if not sep or inp != str(src):
                raise ArchError(f"{source}: node {node}, edge {edge!r}: expected op~{src}")
            if op not in OPS:
                raise ArchError(f"{source}: node {node}, edge from {src}: unknown op {op!r}; the ops are {', '.join(OPS)}")
            layers.append(op)
    return layers


# -- modules -------------------------------------------------------------------------------------------
def make_op(name: str, channels: int, affine: bool = True) -> nn.Module:
    """The module of op ``name`` on ``channels`` channels (in = out, stride 1: every cell edge)."""
    if name == "none":
        return Zero()
    if name == "skip_connect":
        return nn.Identity()
    if name in ("nor_conv_1x1", "nor_conv_3x3"):
        k = int(name[-1])
        return ReLUConvBN(channels, channels, k, 1, k // 2, affine)
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    raise ArchError(f"unknown op {name!r}; the nb201 ops are {', '.join(OPS)}")


class Zero(nn.Module):
    """The ``none`` op: zeros of the input's shape."""

    is_zero = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul(0.0)


class ResidualReduction(nn.Module):
    """The benchmark's reduction block (its code's ``ResNetBasicblock`` at stride 2): ReLU-conv3x3(stride
    2)-BN, ReLU-conv3x3-BN, plus a shortcut of 2x2 average pooling and a 1x1 conv (no BN)."""

    def __init__(self, cin: int, cout: int, affine: bool = True):
        super().__init__()
        self.conv_a = ReLUConvBN(cin, cout, 3, 2, 1, affine)
        self.conv_b = ReLUConvBN(cout, cout, 3, 1, 1, affine)
        self.downsample = nn.Sequential(nn.AvgPool2d(2, stride=2), nn.Conv2d(cin, cout, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(x) + self.conv_b(self.conv_a(x))


class Stem(nn.Sequential):
    def __init__(self, channels: int):
        super().__init__(nn.Conv2d(3, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels))


class Head(nn.Module):
    """BatchNorm, ReLU, global average pooling, the classifier (the benchmark's ``lastact`` and after)."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.lastact = nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=False))
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.lastact(x).mean((2, 3)))


class Cell(nn.Module):
    """One cell running edge modules ``ops`` (one per edge, ``EDGES`` order; None for an edge left out):
    node ``i`` sums its edges from earlier nodes, a node with none of them is zeros."""

    def __init__(self, ops: list[nn.Module | None]):
        super().__init__()
        self.ops = nn.ModuleDict({str(k): op for k, op in enumerate(ops) if op is not None})

    def edge(self, k: int, x: torch.Tensor) -> torch.Tensor | None:
        op = self.ops[str(k)] if str(k) in self.ops else None
        return None if op is None else op(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        states = [x]
        for node in range(1, NODES):
            total = None
            for k, (n, src) in enumerate(EDGES):
                if n == node:
                    h = self.edge(k, states[src])
                    if h is not None:
                        total = h if total is None else total + h
            states.append(x.mul(0.0) if total is None else total)
        return states[-1]


def stage_shapes(config: dict, resolution: int | None = None) -> list[tuple[int, int]]:
    """(channels, resolution) of the three stages."""
    res = int(resolution or config["resolution"])
    if res % 4:
        raise ArchError(f"space 'nb201': resolution {res} must be a multiple of 4 (two reductions halve it)")
    C = config["C"]
    return [(C, res), (2 * C, res // 2), (4 * C, res // 4)]


class NB201Network(nn.Module):
    """The benchmark's network (its code's ``TinyNetwork``) of one genotype, or with ``make_cell`` a search
    network whose cells are built by ``make_cell(stage, channels)``."""

    def __init__(self, config: dict, resolution: int | None = None, layers: list[str] | None = None,
                 make_cell=None, affine: bool = True):
        super().__init__()
        shapes = stage_shapes(config, resolution)
        if make_cell is None:
            make_cell = lambda stage, c: Cell([None if t == "none" else make_op(t, c) for t in layers])  # noqa: E731
        self.stem = Stem(config["C"])
        blocks = []
        for stage, (c, _) in enumerate(shapes):
            if stage:
                blocks.append(ResidualReduction(shapes[stage - 1][0], c))
            blocks += [make_cell(stage, c) for _ in range(config["N"])]
        self.cells = nn.Sequential(*blocks)
        self.head = Head(shapes[-1][0], config["num_classes"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.cells(self.stem(x)))


# -- the space ---------------------------------------------------------------------------------------------
class NB201Space(Space):
    """The ``nb201`` space (the ``Space`` protocol): 6 independent decisions of 5 ops, so the default
    (independent) sampling, mutation, derivations and expected latency apply; the unconstrained derivation
    is each edge's strongest op, ``none`` included (as the benchmark's DARTS code derives)."""

    name = "nb201"
    paper = ("Dong, Yang. NAS-Bench-201: Extending the Scope of Reproducible Neural Architecture Search. "
             "ICLR 2020.")
    defaults = {"C": 16, "N": 5, "resolution": 32, "num_classes": 10}
    absent_token = "none"
    search_epochs = (4, 0)
    # the benchmark's training recipe (Sec. 2.3): SGD, Nesterov momentum 0.9, lr 0.1 cosine, wd 5e-4
    train_defaults = {"lr": 0.1, "weight_decay": 5e-4, "grad_clip": None, "nesterov": True}
    candidates = OPS
    has_notation = True

    def resolve_config(self, config: dict | None = None) -> dict:
        config = dict(config or {})
        unknown = sorted(set(config) - set(CONFIG_KEYS))
        if unknown:
            raise ArchError(f"space 'nb201': unknown config key(s) {unknown}; allowed: {list(CONFIG_KEYS)}")
        cfg = {**copy.deepcopy(self.defaults), **config}
        for key in CONFIG_KEYS:
            v = cfg[key]
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ArchError(f"space 'nb201' config: {key}={v!r} must be a positive integer")
        if cfg["resolution"] < 4 or cfg["resolution"] % 4:
            raise ArchError(f"space 'nb201' config: resolution {cfg['resolution']} must be a multiple of 4 "
                            f"(two reductions halve it)")
        return cfg

    def decisions(self, config: dict | None = None) -> tuple[Decision, ...]:
        return tuple(Decision(f"edge {src}->{node}", OPS) for node, src in EDGES)

    def check_layers(self, config: dict, layers) -> None:
        if not isinstance(layers, list):
            raise ArchError(f"arch layers must be a list of tokens, got {type(layers).__name__}")
        if len(layers) != len(EDGES):
            raise ArchError(f"an 'nb201' arch has {len(EDGES)} edge tokens (1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2), "
                            f"got {len(layers)}")
        for token, (node, src) in zip(layers, EDGES):
            if token not in OPS:
                raise ArchError(f"edge {src}->{node}: unknown op {token!r}; the nb201 ops are {', '.join(OPS)}")

    def describe(self, layers: list[str]) -> str:
        return arch_string(layers)

    def label(self, layers: list[str]) -> str:
        return f"{self.name}:{arch_string(layers)}"

    def arch_string(self, layers: list[str]) -> str:
        return arch_string(layers)

    def parse_arch_string(self, text: str, source: str = "arch") -> list[str]:
        return parse_arch_string(text, source)

    def layers_from_genotype(self, genotype, source: str = "genotype") -> list[str]:
        return parse_arch_string(genotype, source)

    def history_record(self, layers: list[str]) -> dict:
        return {"arch_string": arch_string(layers)}

    def derived_arch_summary(self, layers: list[str]) -> str:
        return f"derived cell: {arch_string(layers)}"

    # -- building ----------------------------------------------------------------------------------------
    def build_child(self, layers: list[str], config: dict, resolution: int | None = None) -> nn.Module:
        return NB201Network(self.resolve_config(config), resolution, layers=list(layers))

    def build_supernet(self, config: dict, mixed_op, resolution: int | None = None, num_classes: int | None = None,
                       **options) -> nn.Module:
        from hwnas.mixed.nb201_supernet import NB201Supernet

        return NB201Supernet(self, config, mixed_op, resolution, num_classes, **options)

    # -- latency -------------------------------------------------------------------------------------------
    @staticmethod
    def op_signature(op: str, channels: int, res: int) -> str | None:
        return None if op in FREE_OPS else f"nb201:{op}:c{channels}:r{res}"

    def _fixed(self, cfg: dict) -> list[tuple[str, str, object, tuple[int, ...]]]:
        """(kind, signature, build, input shape) of the stem, the two reductions and the head."""
        shapes = stage_shapes(cfg)
        res, C = cfg["resolution"], cfg["C"]
        out = [("stem", f"nb201stem:3>{C}:r{res}", lambda: Stem(C), (3, res, res))]
        for (c0, r0), (c1, _) in zip(shapes, shapes[1:]):
            out.append(("reduction", f"nb201res:{c0}>{c1}:r{r0}", lambda c0=c0, c1=c1: ResidualReduction(c0, c1),
                        (c0, r0, r0)))
        c, r = shapes[-1]
        n = cfg["num_classes"]
        out.append(("classifier", f"nb201head:{c}>{n}:r{r}", lambda: Head(c, n), (c, r, r)))
        return out

    def latency_terms(self, config: dict) -> LatencyTerms:
        cfg = self.resolve_config(config)
        shapes = stage_shapes(cfg)
        sigs = []
        for _ in EDGES:
            sigs.append([[s for c, r in shapes for s in [self.op_signature(op, c, r)] * cfg["N"] if s is not None]
                         for op in OPS])
        return LatencyTerms(choices=[OPS] * len(EDGES), signatures=sigs,
                            fixed=[(kind, [sig]) for kind, sig, _, _ in self._fixed(cfg)])

    def profiled_blocks(self, config: dict | None = None) -> list[tuple[str, object, tuple[int, ...]]]:
        cfg = self.resolve_config(config)
        out = [(sig, build, shape) for _, sig, build, shape in self._fixed(cfg)]
        for c, r in stage_shapes(cfg):
            for op in OPS:
                sig = self.op_signature(op, c, r)
                if sig is not None:
                    out.append((sig, lambda op=op, c=c: make_op(op, c), (c, r, r)))
        return out

    def cover(self, rng, config, reps):
        raise ValueError("space 'nb201' has no covering design (its networks are cells, not a chain of blocks)")


SPACE = NB201Space()
