"""PC-DARTS (Xu, Xie, Zhang, Chen, Qi, Tian, Xiong. PC-DARTS: Partial Channel Connections for
Memory-Efficient Architecture Search. ICLR 2020).

DARTS with two changes:

- Partial channel connections (Sec. 3.2, eq. 2): an edge sends ``1/K`` of its channels (``K = 4``)
  through the mixed op and bypasses the rest, then shuffles channels (``PartialChannelOp`` on
  ``hwnas.kernels.partial_channel_mix``). Candidates hold ``C/K`` channels, so a step's activation memory
  drops by about ``K``; the paper uses that to raise the batch size.
- Edge normalization (Sec. 3.3, eq. 4): a node sums its incoming edges weighted by
  ``softmax(beta)`` over them, ``beta`` learned with alpha; the derivation ranks an edge by its strongest
  op's weight times its normalized ``beta`` (Sec. 3.3: "multiplying the edge and operation weights").

On a chain space a layer has one input, so there is no edge normalization, and a layer whose shape
changes (other channels or stride) runs all its channels (``K = 1`` there; ``partial_layers`` in the
log says how many layers run partially). The paper's optimizer settings for CIFAR: alpha by Adam lr
6e-4, betas (0.5, 0.999), weight decay 1e-3.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hwnas.mixed.partial_channel import PartialChannelOp
from hwnas.strategies.base import register
from hwnas.strategies.darts import DARTS

log = logging.getLogger("hwnas.search")


@register
class PCDARTS(DARTS):
    name = "pcdarts"
    mixed_op = PartialChannelOp
    defaults = {**DARTS.defaults, "arch_lr": 6e-4, "k": 4}

    @classmethod
    def mixed_op_for(cls, **options):
        k = int(options.get("k", cls.defaults["k"]))
        if k < 1:
            raise ValueError(f"method 'pcdarts': k must be a positive integer, got {k}")
        return type(f"PartialChannelOp{k}", (PartialChannelOp,), {"K": k})

    def __init__(self, supernet, latency=None, target_ms=None, **options):
        groups = supernet.space.decision_groups()  # a node's incoming edges, or None (a chain of layers)
        super().__init__(supernet, latency, target_ms, **options)
        # beta: one logit per decision (edge); normalized over each node's incoming edges
        self.beta = nn.ParameterList(nn.Parameter(torch.full((1,), 1e-3) * torch.randn(1)) for _ in self.alpha) \
            if groups is not None else nn.ParameterList()
        self.arch_opt = torch.optim.Adam(self.arch_parameters(), lr=self.options["arch_lr"], betas=(0.5, 0.999),
                                         weight_decay=self.options["arch_weight_decay"])
        self.partial_layers = sum(1 for i in range(len(self.alpha)) for op in supernet.decision_ops(i)[:1] if op.k > 1)
        log.info("pcdarts: %d of %d decisions send 1/%d of their channels through the candidates (the others "
                 "change shape and run them all)", self.partial_layers, len(self.alpha), int(self.options["k"]))

    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self.alpha) + list(getattr(self, "beta", []))

    def edge_weights(self) -> list[torch.Tensor] | None:
        """``softmax(beta)`` over each node's incoming edges, one scalar per decision (None on chains)."""
        if not len(self.beta):
            return None
        out: list[torch.Tensor | None] = [None] * len(self.alpha)
        for group in self.space.decision_groups():
            w = F.softmax(torch.cat([self.beta[i] for i in group]), dim=0)
            for k, i in enumerate(group):
                out[i] = w[k]
        return out

    def configure(self, weights: list[torch.Tensor]) -> None:
        super().configure(weights)
        ew = self.edge_weights()
        if ew is not None:
            self.supernet.set_edge_weights(ew)

    def set_eval_path(self, tokens: list[str]) -> None:
        super().set_eval_path(tokens)
        if len(self.beta):
            self.supernet.set_edge_weights(None)

    def expected_latency(self) -> torch.Tensor | None:
        if self.latency is None:
            return None
        return self.latency.expected(self.probabilities(), self.edge_weights())

    def edge_log_weights(self) -> list[float] | None:
        ew = self.edge_weights()
        return None if ew is None else [float(torch.log(w.detach())) for w in ew]

    def log_probabilities(self) -> list[np.ndarray]:
        """Per decision: log of (op weight x normalized edge weight), so ranking edges by their strongest
        op here is the paper's derivation, and the constrained derivation scores genotypes the same way."""
        lp = super().log_probabilities()
        elw = self.edge_log_weights()
        return lp if elw is None else [row + e for row, e in zip(lp, elw)]
