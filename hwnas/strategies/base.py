"""Search strategies — the *algorithm* half: how a supernet's weights are trained and how an architecture
is chosen. One file per method, registered by name (``@register``); a new method subclasses the closest
one and overrides only what differs.

``Strategy`` is the minimal seam the search loop (``hwnas.searching``) drives, an ``nn.Module`` that owns
its supernet, so ``.to(device)`` and ``state_dict()`` cover both:

- ``weight_step(batch, optimizer)`` on every training batch: the method's weight update (one sampled path
  for ProxylessNAS, several for FairNAS), returning its loss and how many it classified right;
- ``arch_step(x, y)`` on a validation batch, only for a method with ``arch_steps = True`` (after warm-up);
- ``set_eval_path(tokens)`` to run one child inside the supernet (evaluation, BN recalibration);
- ``current_arch()`` the architecture it would derive now (logged per epoch); ``derive(context)`` the final
  one, given a ``DeriveContext`` (the data, the latency model and the target) so that a method which
  selects after training (SPOS: evolution over paths with recalibrated BN) has what it needs;
- ``on_epoch_start(epoch)`` before each epoch; True means it replaced its supernet (P-DARTS's stages) and
  the loop makes a new weight optimizer; ``structure()`` / ``restore_structure()`` rebuild that shape on
  resume.

A strategy names the space capabilities it needs (``needs``; a space lists its ``capabilities``) or the
spaces it runs on (``spaces``), and the space ``hwnas search --method NAME`` uses by default. The methods
with one logit vector per decision (ProxylessNAS, FBNet, Single-Path NAS, the DARTS family) share
``hwnas.strategies.factorized.FactorizedStrategy``.
"""
from __future__ import annotations

from abc import ABCMeta, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hwnas.mixed.base import MixedOp

STRATEGIES: dict[str, type["Strategy"]] = {}


def register(cls: type["Strategy"]) -> type["Strategy"]:
    STRATEGIES[cls.name] = cls
    return cls


def get_strategy(name: str) -> type["Strategy"]:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown search method {name!r}; available: {', '.join(sorted(STRATEGIES))}") from None


@dataclass
class DeriveContext:
    """What ``Strategy.derive`` may use: the latency model (None without a table), the binding target and
    the lower edge of its window (None when no target binds), the loaders and the device; the run
    directory, where a method that selects after training records its trials (resumable), and a
    ``progress(done, total)`` callback for that selection."""

    latency: Any = None
    target_ms: float | None = None
    lower_ms: float | None = None
    train_loader: Any = None
    val_loader: Any = None
    device: Any = None
    run_dir: Any = None
    progress: Any = None

    @property
    def window(self) -> tuple[float, float] | None:
        """``(lower, target)`` when a target binds, else None."""
        if self.target_ms is None or self.latency is None:
            return None
        return (float(self.lower_ms if self.lower_ms is not None else 0.0), float(self.target_ms))


class Strategy(nn.Module, metaclass=ABCMeta):
    """The minimal strategy (see the module docstring)."""

    name = ""
    mixed_op: type[MixedOp] = MixedOp
    #: the space capabilities the method needs (``Space.capabilities``); ``spaces`` names spaces instead
    needs: frozenset[str] = frozenset({"layers"})
    spaces: tuple[str, ...] | None = None
    #: the space ``hwnas search --method NAME`` uses when no --space is given
    default_space = "proxyless"
    #: whether the loop calls ``arch_step`` (gradient methods); a sampling method selects in ``derive``
    arch_steps = False
    #: set by the loop before the first epoch: the run's total epochs and the weight steps of an epoch
    num_epochs: int | None = None
    steps_per_epoch: int | None = None
    #: what ``current_arch()`` is, as the per-epoch log names it
    current_arch_label = "argmax path"
    #: option name -> default; the CLI exposes them as --opt KEY=VALUE and records them in the run.
    defaults: dict = {}

    def __init__(self, supernet: nn.Module, **options):
        super().__init__()
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            raise ValueError(f"method {self.name!r}: unknown option(s) {unknown}; allowed: {sorted(self.defaults)}")
        self.options = {**self.defaults, **options}
        self.supernet = supernet
        self.space = supernet.space

    # -- where the method applies ---------------------------------------------------------------
    @classmethod
    def applies_to(cls, space) -> bool:
        return space.name in cls.spaces if cls.spaces is not None else cls.needs <= space.capabilities

    @classmethod
    def check_space(cls, space) -> None:
        """Raise ValueError (one line) when the method does not apply to ``space``."""
        if cls.applies_to(space):
            return
        from hwnas.spaces.definitions import SPACES

        where = ", ".join(cls.spaces) if cls.spaces is not None else \
            ", ".join(n for n, s in SPACES.items() if cls.needs <= s.capabilities)
        others = sorted(n for n, c in STRATEGIES.items() if c.applies_to(space))
        raise ValueError(f"method {cls.name!r} does not apply to space {space.name!r} (it runs on {where}); "
                         f"methods for {space.name!r}: {', '.join(others)}")

    @classmethod
    def default_epochs(cls, space) -> tuple[int, int]:
        """(search epochs, weight-only warm-up epochs) when the user gives none: the space's
        ``search_epochs``."""
        return tuple(space.search_epochs)

    # -- building ------------------------------------------------------------------------------------
    @classmethod
    def build(cls, space, config: dict, resolution: int, num_classes: int, **kwargs) -> "Strategy":
        cls.check_space(space)
        return cls(cls.make_supernet(space, config, resolution, num_classes, **kwargs), **kwargs)

    @classmethod
    def mixed_op_for(cls, **options) -> type[MixedOp]:
        """The mixed op class the supernet is built of, given the method's options (default ``mixed_op``)."""
        return cls.mixed_op

    @classmethod
    def make_supernet(cls, space, config: dict, resolution: int, num_classes: int, **kwargs) -> nn.Module:
        return space.build_supernet(config, cls.mixed_op_for(**kwargs), resolution, num_classes)

    def weight_parameters(self) -> list[nn.Parameter]:
        return list(self.supernet.parameters())

    def make_weight_optimizer(self, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
        """The optimizer of the weight steps, given the loop's ``--lr``, momentum and weight decay: SGD with
        Nesterov momentum (a method whose paper trains its weights otherwise overrides this: SMASH)."""
        return torch.optim.SGD(self.weight_parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay,
                               nesterov=True)

    # -- more than one process (hwnas.distributed) ------------------------------------------------------
    #: the torchrun process group the loop runs in (``hwnas.distributed.Distributed``), None in one process
    distributed = None

    def attach_ddp(self, wrapped: nn.Module | None) -> None:
        """Run weight steps' forwards through ``wrapped`` (the supernet inside DDP). Kept out of the module
        tree, so the state dict is the same in 1 and N processes."""
        self.__dict__["_ddp"] = wrapped

    def train_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The supernet's forward in a weight step (through DDP under torchrun: its backward averages the
        weight gradients over the ranks). Architecture steps and evaluation call ``supernet`` itself."""
        return (self.__dict__.get("_ddp") or self.supernet)(x)

    def average_(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Average ``tensors`` (architecture gradients) over the ranks in place; nothing in one process."""
        return self.distributed.average_(tensors) if self.distributed is not None else tensors

    # -- steps ----------------------------------------------------------------------------------------
    @abstractmethod
    def weight_step(self, batch: tuple[torch.Tensor, torch.Tensor], optimizer: torch.optim.Optimizer) -> dict:
        """Update the supernet's weights on a training batch; returns ``loss`` (float), ``correct`` and
        ``seen`` (ints) for the epoch's figures."""

    def arch_step(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        """One architecture update on a validation batch (only with ``arch_steps``); scalar metrics."""
        return {}

    @abstractmethod
    def set_eval_path(self, tokens: list[str]) -> None:
        """Configure the supernet to run exactly the child ``tokens``."""

    # -- reading the architecture --------------------------------------------------------------------
    @abstractmethod
    def current_arch(self) -> list[str]:
        """The architecture the method would derive now, without a latency target."""

    def derive(self, context: DeriveContext | None = None) -> list[str]:
        """The final architecture (default ``current_arch()``)."""
        return self.current_arch()

    def epoch_record(self) -> dict:
        """What ``arch_history.jsonl`` records per epoch beside the architecture (e.g. probabilities)."""
        return {}

    def expected_latency(self) -> torch.Tensor | None:
        """E[LAT] of the method's distribution over architectures, if it has one."""
        return None

    # -- schedules and resumable structure ------------------------------------------------------------
    def on_epoch_start(self, epoch: int) -> bool | None:
        """Called before epoch ``epoch`` (0-based), on resume too; schedules live here. Returns True when
        it replaced the supernet's parameters (P-DARTS's stages): the loop then makes a new optimizer."""

    def structure(self) -> dict | None:
        """What a checkpoint needs to rebuild the supernet's shape before loading it (None: fixed)."""
        return None

    def restore_structure(self, structure: dict | None) -> bool:
        """Rebuild to ``structure`` (from ``structure()``); True when the parameters changed."""
        return False

    def arch_optimizer_state(self) -> dict:
        return {}

    def load_arch_optimizer_state(self, state: dict) -> None:
        pass
