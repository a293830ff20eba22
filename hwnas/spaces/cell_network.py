"""The DARTS evaluation network of a genotype (``NetworkCIFAR`` of the DARTS code; Liu et al., ICLR 2019,
Sec. 3.3 / A.2): stem, stacked cells that run only their kept edges, the optional auxiliary head, global
pooling and the classifier. The cell space itself (decisions, plans, latency keys) is ``hwnas.spaces.cell``."""
from __future__ import annotations

import torch
from torch import nn

from hwnas.spaces.cell import CellSpace
from hwnas.spaces.cell_plan import STEPS, CellPosition, GlobalPoolClassifier, Stem
from hwnas.spaces.cell_ops import NONE, AuxiliaryHead, FactorizedReduce, ReLUConvBN, drop_path, make_op


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


