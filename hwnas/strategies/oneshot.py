"""One-Shot (Bender, Kindermans, Zoph, Vasudevan, Le. "Understanding and Simplifying One-Shot Architecture
Search", ICML 2018).

- The one-shot model (Sec. 3): every candidate of every layer (edge) active, their outputs summed
  (``hwnas.mixed.path_dropout.PathDropoutSumOp``), trained by the search loop's SGD with no architecture
  parameters and no controller.
- Path dropout (Sec. 3.1): each of a layer's ``k`` candidates dropped with probability ``r^(1/k)``, the
  rate ``r`` rising linearly with the training step from 0 to ``path_dropout`` at the end of the search
  (the paper ramps it linearly; its maximum and the ramp's length were not re-read from its text here: 0.5
  over the whole search is this toolkit's default). A dropped candidate does not run, so it takes no
  gradient and no weight decay in that step: L2 on the paths in use only, as the paper regularizes.
- Ghost batch normalization (Sec. 3.1; Hoffer et al. 2017): every BatchNorm of the one-shot model normalizes
  ghost batches of ``ghost_size`` examples (``hwnas.mixed.ghost_bn``), which keeps the statistics of a
  model whose active paths change from batch to batch from being dominated by one batch.
- Selection (Sec. 4): architectures drawn at random, each held to ``[0.9 T, T]`` by the table first
  (uniform rejection sampling, then the window's random-score draw), evaluated as the one-shot model
  with the candidates outside the architecture zeroed (``select``), BatchNorm recalibrated on training
  batches (the paper evaluates with batch statistics), ranked by that one-shot accuracy; the best is
  the architecture (``samples`` of them, default 50).
- Weights: separate only (summing candidates cut out of one kernel means nothing).
"""
from __future__ import annotations

import torch.nn.functional as F

from hwnas.mixed.ghost_bn import ghost_batch_norm
from hwnas.mixed.path_dropout import PathDropoutSumOp
from hwnas.strategies.base import register
from hwnas.strategies.sampling import RandomPathSelection, SamplingStrategy


def linear_rate(step: int, total_steps: int, final: float) -> float:
    """The path-dropout rate at training step ``step`` (0-based) of ``total_steps``: ``final * step /
    (total_steps - 1)``, from 0 at the first step to ``final`` at the last."""
    if total_steps <= 1:
        return float(final)
    return float(final) * min(step, total_steps - 1) / (total_steps - 1)


@register
class OneShot(RandomPathSelection, SamplingStrategy):
    name = "oneshot"
    shared_weights = False
    defaults = {"weights": "auto", "calibration_batches": 8, "path_dropout": 0.5, "ghost_size": 16,
                "samples": 50}

    @classmethod
    def chain_op(cls):
        return PathDropoutSumOp

    @classmethod
    def cell_op(cls):
        return PathDropoutSumOp

    def __init__(self, supernet, latency=None, target_ms=None, **options):
        super().__init__(supernet, latency, target_ms, **options)
        if not 0 <= float(self.options["path_dropout"]) < 1:
            raise ValueError(f"method 'oneshot': path_dropout must be in [0, 1), got {self.options['path_dropout']!r}")
        ghost_batch_norm(self.supernet, int(self.options["ghost_size"]))
        self.epoch = 0
        self.step_in_epoch = 0
        self.rate = 0.0

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch, self.step_in_epoch = epoch, 0

    def current_rate(self) -> float:
        per = self.steps_per_epoch or 1
        return linear_rate(self.epoch * per + self.step_in_epoch, (self.num_epochs or 1) * per,
                           self.options["path_dropout"])

    def weight_step(self, batch, optimizer) -> dict:
        """All candidates summed under path dropout at the scheduled rate, cross-entropy, one step."""
        x, y = batch
        self.rate = self.current_rate()
        for op in self.supernet.modules():
            if isinstance(op, PathDropoutSumOp):
                op.select(None)
                op.rate = self.rate
        optimizer.zero_grad(set_to_none=True)
        logits = self.train_forward(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        optimizer.step()
        self.step_in_epoch += 1
        return {"loss": float(loss.detach()), "correct": int((logits.argmax(1) == y).sum()), "seen": len(y)}

    def epoch_record(self) -> dict:
        return {"path_dropout": round(self.rate, 4)}
