"""SMASH (Brock, Lim, Ritchie, Weston. "SMASH: One-Shot Model Architecture Search through HyperNetworks",
ICLR 2018).

- The one-shot model (Sec. 3): a HyperNet ``H`` generates the main network's weights from the
  architecture's encoding, ``W = H(c)``; the 1x1 convolutions are generated, the others freely learned
  and shared (``hwnas.mixed.hyper``: the encoding, what is generated and what is not, on a chain space).
- Training (Sec. 3, Alg. 1): at every batch an architecture drawn at random (uniform over the space, as
  ``SamplingStrategy.sample_path``), its weights generated, the loss back-propagated into ``H`` and the
  shared weights, by Adam as the paper's code trains them (``optimizer=adam``: betas (0.5, 0.999), eps 1e-4, weight decay 1e-4 on the main network's weights and none on the hypernet's;
  the loop's cosine schedule; lr ``adam_lr`` 3e-3, where the code has 1e-3: on digits 3e-3 learned faster
  in 5-epoch trials). ``optimizer=sgd`` takes the loop's SGD (``--lr``), which the code also
  ships; on digits the generated weights learn far more slowly under it (docs/methods.md).
- Selection (Sec. 3, Alg. 1, and the code's README): many random architectures scored by their
  validation accuracy with generated weights, the best one trained normally. The paper samples 500 and
  perturbs the best; here ``samples`` architectures (default 100), each first held to the target's window
  ``[0.9 T, T]`` by the table (the same selection layer as SPOS and One-Shot: ``RUN/selection/``,
  resumable), BatchNorm recalibrated on training batches (the freely learned BN statistics were gathered
  under other architectures' weights), ranked by that accuracy. ``hwnas rank RUN`` sets the generated-weight
  accuracy beside trained accuracy (SMASH's Fig. 3 question: does the SMASH score predict the trained one?).
- Spaces: the chain spaces whose layers are kernel x expansion grids (proxyless, spnas); on fbnet the
  grouped and expansion-1 candidates have no shared MBConv to cut, and the cell spaces' ops are not
  1x1-dominated (SMASH's memory-bank encoding does not carry over): not supported.
"""
from __future__ import annotations

import torch

from hwnas.mixed.hyper import HyperChainSupernet
from hwnas.strategies.base import register
from hwnas.strategies.sampling import SELECTION_DEFAULTS, RandomPathSelection, SamplingStrategy

HYPER_DEFAULTS = {"block": 4, "z_dim": 16, "hidden": 64}
OPTIMIZERS = ("adam", "sgd")


@register
class SMASH(RandomPathSelection, SamplingStrategy):
    name = "smash"
    spaces = ("proxyless", "spnas")
    defaults = {**SELECTION_DEFAULTS, "samples": 100, **HYPER_DEFAULTS, "optimizer": "adam", "adam_lr": 3e-3}

    @classmethod
    def make_supernet(cls, space, config: dict, resolution: int, num_classes: int, **kwargs):
        hyper = {k: int(kwargs.get(k, v)) for k, v in HYPER_DEFAULTS.items()}
        try:
            return HyperChainSupernet(space, config, resolution, num_classes, **hyper)
        except ValueError as e:
            raise ValueError(f"method 'smash': {e}") from None

    def __init__(self, supernet, latency=None, target_ms=None, **options):
        super().__init__(supernet, latency, target_ms, **options)
        if self.options["optimizer"] not in OPTIMIZERS:
            raise ValueError(f"method 'smash': optimizer must be one of {', '.join(OPTIMIZERS)}, "
                             f"got {self.options['optimizer']!r}")

    def make_weight_optimizer(self, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
        if self.options["optimizer"] == "sgd":
            return super().make_weight_optimizer(lr, momentum, weight_decay)
        hyper = list(self.supernet.hyper.parameters())
        ids = {id(p) for p in hyper}
        main = [p for p in self.supernet.parameters() if id(p) not in ids]
        return torch.optim.Adam([{"params": main, "weight_decay": 1e-4}, {"params": hyper, "weight_decay": 0.0}],
                                lr=float(self.options["adam_lr"]), betas=(0.5, 0.999), eps=1e-4)
