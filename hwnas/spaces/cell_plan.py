"""The DARTS cell space's structure as data (Liu et al., ICLR 2019, Sec. 2.1 and Appendix A.1): the edges
of a cell, the cells of a network with their channels and resolutions, the fixed parts every network has,
and the two small modules (stem, pooled classifier) the plans build. ``hwnas.spaces.cell`` is the space."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hwnas.spaces.cell_ops import OPS

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


