"""P-DARTS (Chen, Xie, Wu, Tian. Progressive Differentiable Architecture Search: Bridging the Depth Gap
between Search and Evaluation. ICCV 2019).

DARTS in stages that deepen the search network while shrinking the candidate set (Sec. 3.2):

- Progressive depth: stage ``s`` searches a network of ``depths[s]`` cells (5 -> 11 -> 17 by default,
  the paper's CIFAR setting), each stage a fresh network (weights and alphas re-initialized).
- Search space approximation: at the end of a stage, each edge keeps its ``keep[s+1]`` most probable
  ops (8 -> 5 -> 3), the next stage searches only those.
- Search space regularization (Sec. 3.3): dropout after every skip-connect, the rate of stage ``s``
  ``skip_dropout[s]`` (0.0 -> 0.4 -> 0.7 for CIFAR-10), decayed linearly to 0 over the stage (the
  released code: ``p * (stage_epochs - e - 1) / stage_epochs``); and the final genotype's normal cell
  keeps at most ``max_skip = 2`` skip-connects: while it has more, the weakest skip-connect edge loses
  that op and the cell is derived again.

The stages split ``--epochs`` evenly (one epoch each by default on a CPU). Latency target, derivation
and the optimizer are DARTS's; the candidate probabilities are reported over all 8 ops (0 for the
dropped ones), so the latency model and the constrained derivation read them unchanged.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hwnas.spaces.cell_ops import OPS
from hwnas.strategies.base import register
from hwnas.strategies.darts import DARTS

DROPPED = -1e9  # log-probability of an op a stage removed


@register
class PDARTS(DARTS):
    name = "pdarts"
    spaces = ("darts",)
    defaults = {**DARTS.defaults, "arch_lr": 6e-4, "depths": [5, 11, 17], "keep": [8, 5, 3],
                "skip_dropout": [0.0, 0.4, 0.7], "max_skip": 2}

    @classmethod
    def default_epochs(cls, space) -> tuple[int, int]:
        return 3, 0  # one epoch per stage

    @classmethod
    def make_supernet(cls, space, config, resolution, num_classes, **kwargs):
        depths = kwargs.get("depths", cls.defaults["depths"])
        return space.build_supernet(config, cls.mixed_op_for(**kwargs), resolution, num_classes,
                                    layers=int(depths[0]), skip_dropout=True)

    def __init__(self, supernet, latency=None, target_ms=None, **options):
        super().__init__(supernet, latency, target_ms, **options)
        o = self.options
        if not (len(o["depths"]) == len(o["keep"]) == len(o["skip_dropout"]) >= 1):
            raise ValueError("method 'pdarts': depths, keep and skip_dropout need one entry per stage")
        if o["keep"][0] != len(OPS) or any(b > a for a, b in zip(o["keep"], o["keep"][1:])) or min(o["keep"]) < 2:
            raise ValueError(f"method 'pdarts': keep must start at {len(OPS)} and shrink, each >= 2; got {o['keep']}")
        self.stage = 0
        self.kept = [list(range(len(OPS))) for _ in self.alpha]
        self.normal_edges = [i for i, e in enumerate(self.space.decisions()) if e.cell_type == "normal"]

    # -- stages ------------------------------------------------------------------------------------------
    def stage_of(self, epoch: int) -> tuple[int, int, int]:
        """(stage, first epoch of the stage, epochs in the stage)."""
        n = len(self.options["depths"])
        total = max(self.num_epochs or n, n)
        bounds = [round(total * s / n) for s in range(n + 1)]
        stage = max(s for s in range(n) if bounds[s] <= epoch) if epoch >= 0 else 0
        return stage, bounds[stage], bounds[stage + 1] - bounds[stage]

    def structure(self) -> dict:
        return {"stage": self.stage, "kept": [list(k) for k in self.kept]}

    def restore_structure(self, structure: dict | None) -> bool:
        if not structure or (structure["stage"] == self.stage and structure["kept"] == self.kept):
            return False
        self._rebuild(structure["stage"], structure["kept"])
        return True

    def on_epoch_start(self, epoch: int) -> bool:
        stage, first, length = self.stage_of(epoch)
        rebuilt = False
        if stage != self.stage:
            keep = int(self.options["keep"][stage])
            kept = []
            for k, a in zip(self.kept, self.alpha):
                order = torch.argsort(a.detach(), descending=True)[:keep].tolist()
                kept.append(sorted(k[j] for j in order))
            self._rebuild(stage, kept)
            rebuilt = True
        rate = float(self.options["skip_dropout"][stage]) * (length - (epoch - first) - 1) / max(length, 1)
        self.supernet.set_skip_dropout(max(rate, 0.0))
        return rebuilt

    def _rebuild(self, stage: int, kept: list[list[int]]) -> None:
        old = self.supernet
        device = next(old.parameters()).device
        choices = [tuple(OPS[j] for j in k) for k in kept]
        res = old.resolution
        self.supernet = self.space.build_supernet(old.config, self.mixed_op_for(**self.options), res,
                                                  old.config["num_classes"], layers=int(self.options["depths"][stage]),
                                                  choices=choices, skip_dropout=True).to(device)
        for i in range(len(kept)):
            for op in self.supernet.decision_ops(i):
                op.fused = bool(self.options["fused"])
        self.alpha = nn.ParameterList(nn.Parameter(1e-3 * torch.randn(len(k), device=device)) for k in kept)
        self.arch_opt = torch.optim.Adam(self.arch_parameters(), lr=self.options["arch_lr"], betas=(0.5, 0.999),
                                         weight_decay=self.options["arch_weight_decay"])
        self.stage, self.kept = stage, [list(k) for k in kept]

    # -- probabilities over all 8 ops -------------------------------------------------------------------
    def mix_weights(self) -> list[torch.Tensor]:
        return [F.softmax(a, dim=-1) for a in self.alpha]

    def probabilities(self) -> list[torch.Tensor]:
        out = []
        for a, k in zip(self.alpha, self.kept):
            full = a.new_zeros(len(OPS))
            out.append(full.index_put((torch.tensor(k, device=a.device),), F.softmax(a, dim=-1)))
        return out

    def log_probabilities(self) -> list[np.ndarray]:
        out = []
        for a, k in zip(self.alpha, self.kept):
            row = np.full(len(OPS), DROPPED)
            row[k] = F.log_softmax(a.detach().double(), dim=-1).cpu().numpy()
            out.append(row)
        return out

    def current_arch(self) -> list[str]:
        """DARTS's derivation, then at most ``max_skip`` skip-connects in the normal cell (Sec. 3.3)."""
        return self.limit_skips(self.log_probabilities())

    def derive(self, context=None) -> list[str]:
        """``current_arch()``; with a binding target the skip limit wraps the constrained derivation (at
        most ``max_skip`` skip-connects, target or not)."""
        if context is None or context.target_ms is None:
            return self.current_arch()
        return self.limit_skips(self.log_probabilities(),
                                lambda lp: context.latency.derive_within(lp, context.lower_ms, context.target_ms))

    def limit_skips(self, log_probs: list[np.ndarray], derive=None) -> list[str]:
        """Derive (``derive(lp)``, default the supernet's), and while the normal cell has more than
        ``max_skip`` skip-connects remove the weakest one's skip option and derive again. The search
        passes its constrained derivation here when a latency target binds."""
        derive = derive or self.supernet.derive
        lp = [row.copy() for row in log_probs]
        skip = OPS.index("skip_connect")
        while True:
            tokens = derive(lp)
            normal_skips = [i for i in self.normal_edges if tokens[i] == "skip_connect"]
            if len(normal_skips) <= int(self.options["max_skip"]):
                return tokens
            weakest = min(normal_skips, key=lambda i: lp[i][skip])
            lp[weakest][skip] = DROPPED
