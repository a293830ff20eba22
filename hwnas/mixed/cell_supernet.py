"""The DARTS search network (Liu et al., ICLR 2019, Sec. 2.1-2.2 and the ``Network`` of its code): the
cell space's network at ``search_C`` channels and ``search_layers`` cells, every edge of every cell a
mixed op over the 8 ops. The 28 decisions (14 edges of the normal cell, 14 of the reduction cell) are
shared by all cells of a type, so decision ``i`` configures one mixed op per cell of its type
(``decision_ops``).

BatchNorms are not affine (the paper's search setting) and pooling ops are followed by one. A node
sums its incoming edges; PC-DARTS's edge normalization (Xu et al., ICLR 2020, Sec. 3.3) weights them
by ``edge_weights`` (one tensor of 14 per cell type, set by the strategy; None: plain sum), through
``hwnas.kernels.mixed_op_sum``.
"""
from __future__ import annotations

import torch
from torch import nn

from hwnas.kernels import mixed_op_sum
from hwnas.mixed.base import MixedOp
from hwnas.mixed.factory import CandidateFactory
from hwnas.spaces.cell import CellSpace
from hwnas.spaces.cell_plan import EDGES, STEPS, CellPosition, GlobalPoolClassifier, Stem, network_positions
from hwnas.spaces.cell_ops import OPS, FactorizedReduce, ReLUConvBN, make_op


class SkipDropout(nn.Dropout):
    """Dropout after a stride-1 ``skip_connect`` (P-DARTS's search regularization, Sec. 3.3); its rate
    is set by the strategy (``CellSupernet.set_skip_dropout``)."""


def _search_op(token: str, channels: int, stride: int, skip_dropout: bool) -> nn.Module:
    op = make_op(token, channels, stride, affine=False, search=True)
    if skip_dropout and token == "skip_connect" and stride == 1:
        return nn.Sequential(op, SkipDropout(0.0))
    return op


class SearchCell(nn.Module):
    def __init__(self, pos: CellPosition, mixed_op: type[MixedOp], choices: list[tuple[str, ...]] | None = None,
                 skip_dropout: bool = False):
        super().__init__()
        self.cell_type = pos.cell_type
        self.preprocess0 = (FactorizedReduce(pos.c_pp, pos.c, affine=False) if pos.reduction_prev
                            else ReLUConvBN(pos.c_pp, pos.c, 1, 1, 0, affine=False))
        self.preprocess1 = ReLUConvBN(pos.c_p, pos.c, 1, 1, 0, affine=False)
        edges = []
        for k, (_, src) in enumerate(EDGES):
            stride = pos.edge_shape(src)[0]
            factory = CandidateFactory(
                lambda t, d, c=pos.c, s=stride: _search_op(t, c // d, s, skip_dropout), pos.c, pos.c, stride)
            edges.append(mixed_op.build(choices[k] if choices else OPS, factory))
        self.edges = nn.ModuleList(edges)
        self.edge_weights: torch.Tensor | None = None

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        k = 0
        for node in range(2, 2 + STEPS):
            outs = [self.edges[k + j](states[j]) for j in range(node)]
            if self.edge_weights is None:
                states.append(sum(outs[1:], outs[0]))
            else:
                states.append(mixed_op_sum(outs, self.edge_weights[k:k + node].to(outs[0].dtype)))
            k += node
        return torch.cat(states[2:], dim=1)


class CellSupernet(nn.Module):

    def __init__(self, space: CellSpace, config: dict, mixed_op: type[MixedOp], resolution: int | None = None,
                 num_classes: int | None = None, layers: int | None = None,
                 choices: list[tuple[str, ...]] | None = None, skip_dropout: bool = False):
        """``layers`` overrides the config's ``search_layers`` (P-DARTS's stages); ``choices`` restricts
        each of the 28 decisions to a subset of the ops (P-DARTS's shrinking candidate sets)."""
        super().__init__()
        cfg = space.resolve_config({**config, **({"num_classes": num_classes} if num_classes else {})})
        self.space, self.config = space, cfg
        res = int(resolution or cfg["resolution"])
        self.resolution = res
        C = cfg["search_C"]
        positions, c_final, _ = network_positions(C, layers or cfg["search_layers"], cfg["stem_multiplier"], res)
        self.stem = Stem(cfg["stem_multiplier"] * C)
        self._decisions = space.decisions()
        self._choices = [tuple(c) for c in choices] if choices else [e.choices for e in self._decisions]
        per_type = {t: [c for c, e in zip(self._choices, self._decisions) if e.cell_type == t]
                    for t in {e.cell_type for e in self._decisions}}
        self.cells = nn.ModuleList(SearchCell(p, mixed_op, per_type[p.cell_type], skip_dropout) for p in positions)
        self.classifier = GlobalPoolClassifier(c_final, cfg["num_classes"])

    @property
    def choices(self) -> list[tuple[str, ...]]:
        return list(self._choices)

    def set_skip_dropout(self, p: float) -> None:
        for m in self.modules():
            if isinstance(m, SkipDropout):
                m.p = float(p)

    def decision_ops(self, i: int) -> list[MixedOp]:
        e = self._decisions[i]
        k = EDGES.index((e.node, e.source))
        return [cell.edges[k] for cell in self.cells if cell.cell_type == e.cell_type]

    def set_edge_weights(self, weights: list[torch.Tensor] | None) -> None:
        """PC-DARTS's node weights of the edges: one scalar per decision (28), or None (plain sums)."""
        per_type = None
        if weights is not None:
            per_type = {t: torch.stack([w for w, e in zip(weights, self._decisions, strict=True) if e.cell_type == t])
                        for t in {e.cell_type for e in self._decisions}}
        for cell in self.cells:
            cell.edge_weights = None if per_type is None else per_type[cell.cell_type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.classifier(s1)

    def derive(self, log_probs, edge_log_weights=None) -> list[str]:
        """The paper's derivation (Sec. 2.4), ``hwnas.spaces.cell.derive_genotype``: per node keep the
        ``KEEP`` incoming edges whose strongest op other than ``none`` is strongest, each with that op.
        ``edge_log_weights`` (PC-DARTS: log of the normalized edge weights, one per decision) are added
        to an edge's strength."""
        return self.space.derive(self.choices, log_probs, edge_log_weights)

    def child_state_dict(self, tokens) -> None:
        """None: the evaluation network (``C``, ``layers``) is another network than the search network
        (``search_C``, ``search_layers``); a derived genotype is trained from scratch, as in the paper."""
        return None
