"""FairNAS (Chu, Zhang, Xu. "FairNAS: Rethinking Evaluation Fairness of Weight Sharing Neural Architecture
Search", ICCV 2021), supernet training with strict fairness (Sec. 3.3, Algorithm 1).

- Strict fairness (Definition 3.2): in one weight step every candidate of every layer is trained exactly
  once. Each layer draws a random permutation of its ``m`` candidates; model ``k`` (``k = 1..m``) takes
  the ``k``-th entry of every layer's permutation; the ``m`` models run forward and backward on the step's
  batch, their gradients accumulate (a sum, not a mean), and the optimizer steps once (Algorithm 1).
- Layers with fewer than ``m = max_l m_l`` candidates (a layer without ``skip``, say) take consecutive
  random permutations of their own candidates cut to ``m`` entries: each candidate runs ``floor(m/m_l)``
  or ``ceil(m/m_l)`` times a step, the closest to equal that ``m`` models allow (the paper's spaces have
  equal ``m_l``). A space whose decisions constrain each other (the darts cell: two edges per node) has no
  per-decision permutation that keeps every model legal; the method refuses it.
- Selection: that of SPOS (``hwnas.strategies.spos``; the paper searches with a multi-objective
  evolution on the trained supernet, Sec. 4.3; with a latency target every candidate is held to
  ``[0.9 T, T]`` instead).
- Option ``gradients``: ``mean`` (default) scales each model's loss by ``1/m``, ``sum`` is Algorithm 1's plain
  sum. The two differ only by the factor ``m`` on the learning rate; the parts every model runs (stem,
  head, and with shared weights every layer) take ``m`` gradients a step, and at the search loop's lr 0.05
  the sum diverged on digits (loss 10.6, chance accuracy after two epochs, separate weights; the mean
  reached 0.72 validation accuracy on the reference child: docs/measurements.md). Fairness is the same.
- Cost: a weight step is ``m`` child steps' forwards and backwards plus one optimizer step.
"""
from __future__ import annotations

import torch

from hwnas.strategies.base import register
from hwnas.strategies.spos import SPOS


def fair_paths(sizes: list[int], generator: torch.Generator | None = None) -> list[list[int]]:
    """``m = max(sizes)`` paths (candidate indices, one per layer) in which every candidate of a layer of
    ``m`` candidates appears exactly once (consecutive permutations cut to ``m`` for smaller layers)."""
    m = max(sizes)
    columns = []
    for n in sizes:
        reps = -(-m // n)
        seq = torch.cat([torch.randperm(n, generator=generator) for _ in range(reps)])[:m]
        columns.append(seq.tolist())
    return [[col[k] for col in columns] for k in range(m)]


@register
class FairNAS(SPOS):
    name = "fairnas"

    @classmethod
    def applies_to(cls, space) -> bool:
        return space.decision_groups() is None

    @classmethod
    def check_space(cls, space) -> None:
        if not cls.applies_to(space):
            raise ValueError(f"method 'fairnas' does not apply to space {space.name!r}: it needs independent "
                             f"decisions, and {space.name!r} constrains them (two edges per node), so no "
                             f"permutation of each decision's candidates keeps every path legal; use spos or oneshot")

    def fair_paths(self) -> list[list[str]]:
        """The step's ``m`` paths as tokens (``fair_paths`` over the decisions)."""
        idx = fair_paths([len(d.choices) for d in self.decisions])
        return [[d.choices[j] for d, j in zip(self.decisions, path)] for path in idx]

    defaults = {**SPOS.defaults, "gradients": "mean"}

    def weight_step(self, batch, optimizer) -> dict:
        x, y = batch
        if self.options["gradients"] not in ("sum", "mean"):
            raise ValueError(f"method 'fairnas': gradients must be sum or mean, got {self.options['gradients']!r}")
        optimizer.zero_grad(set_to_none=True)
        losses, correct = [], 0
        paths = self.fair_paths()
        scale = 1.0 if self.options["gradients"] == "sum" else 1.0 / len(paths)
        for tokens in paths:
            loss, logits = self.train_path(tokens, x, y, scale)
            losses.append(float(loss))
            correct += int((logits.argmax(1) == y).sum())
        optimizer.step()
        return {"loss": sum(losses) / len(losses), "correct": correct, "seen": len(y) * len(losses)}
