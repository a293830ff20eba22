"""Search strategies — the *algorithm* half: how the weights, masks or paths that mixed ops combine
are produced and updated. One file per method, registered by name; a new method subclasses the
closest one and overrides only what differs.

A strategy is an ``nn.Module`` that owns the supernet and its architecture parameters, so
``.to(device)`` and ``state_dict()`` cover both. The loop in ``hwnas.search`` only calls:

- ``sample_weight_path()`` then ``supernet(x)`` for a weight step on a training batch,
- ``arch_step(x, y)`` for an architecture step on a validation batch (after warm-up),
- ``set_eval_path(tokens)`` to evaluate one child inside the supernet,
- ``log_probabilities()`` / ``derive()`` to read the architecture,
- ``on_epoch_start(epoch)`` before each epoch (schedules such as FBNet's temperature); a True return
  means the strategy replaced its supernet (P-DARTS's stages) and the loop makes a new optimizer;
  ``structure()`` / ``restore_structure()`` let a checkpoint rebuild that shape before loading.

The loop also sets ``num_epochs``, ``weight_lr`` and ``last_train_batch`` (second-order DARTS unrolls
one weight step on it). A strategy names the spaces it applies to (``spaces``; None: every chain
space) and its default space; ``build`` refuses the others in one line. It reaches its mixed ops only
through ``supernet.decision_ops(i)`` (one op per chain layer; one per cell of a type for a cell edge)
and derives with ``supernet.derive(log_probs)``, so one strategy runs on chain and cell supernets.

The latency term is shared: ``objective(ce)`` returns the method's own loss form without a target
(``unconstrained_loss``) and, with ``--latency-target``, the method's targeted form
(``targeted_loss``) plus the Lagrange multiplier's penalty (``hwnas.latency.multiplier``), which a
strategy advances with ``update_multiplier(E[LAT])`` after each architecture step.
"""
from __future__ import annotations

from abc import ABCMeta, abstractmethod

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hwnas.latency.multiplier import LatencyMultiplier
from hwnas.latency.penalty import LatencyModel, latency_loss
from hwnas.mixed.base import MixedOp
from hwnas.mixed.supernet import ChainSupernet

STRATEGIES: dict[str, type["Strategy"]] = {}


def register(cls: type["Strategy"]) -> type["Strategy"]:
    STRATEGIES[cls.name] = cls
    return cls


def get_strategy(name: str) -> type["Strategy"]:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown search method {name!r}; available: {', '.join(sorted(STRATEGIES))}") from None


class Strategy(nn.Module, metaclass=ABCMeta):
    """Base: one architecture logit vector ``alpha_l`` per searchable layer, ``p_l = softmax(alpha_l)``."""

    name = ""
    mixed_op: type[MixedOp] = MixedOp
    #: the spaces the method applies to (None: every chain space); others are refused by ``build``
    spaces: tuple[str, ...] | None = None
    #: the space ``hwnas search --method NAME`` uses when no --space is given
    default_space = "proxyless"
    #: set by the search loop: total epochs, the weights' current learning rate, the last training batch
    num_epochs: int | None = None
    weight_lr: float | None = None
    last_train_batch: tuple[torch.Tensor, torch.Tensor] | None = None
    #: option name -> default; the CLI exposes them as --opt KEY=VALUE and records them in the run.
    defaults: dict = {}

    def __init__(self, supernet: ChainSupernet, latency: LatencyModel | None = None,
                 target_ms: float | None = None, **options):
        super().__init__()
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            raise ValueError(f"method {self.name!r}: unknown option(s) {unknown}; allowed: {sorted(self.defaults)}")
        self.options = {**self.defaults, **options}
        self.supernet = supernet
        self.latency = latency
        self.target_ms = target_ms
        self.alpha = nn.ParameterList(nn.Parameter(torch.zeros(len(c))) for c in supernet.choices)
        self.multiplier = (LatencyMultiplier(target_ms, step=self.options.get("target_step", 0.05))
                           if latency is not None and target_ms is not None else None)

    @classmethod
    def check_space(cls, space) -> None:
        """Raise ValueError (one line) when the method does not apply to ``space``."""
        kind = getattr(space, "kind", "chain")
        allowed = cls.spaces
        if (allowed is None and kind != "chain") or (allowed is not None and space.name not in allowed):
            where = "every chain space (proxyless, fbnet, spnas)" if allowed is None else ", ".join(allowed)
            others = sorted(n for n, c in STRATEGIES.items()
                            if (c.spaces is None and kind == "chain") or (c.spaces and space.name in c.spaces))
            raise ValueError(f"method {cls.name!r} does not apply to space {space.name!r} (it runs on {where}); "
                             f"methods for {space.name!r}: {', '.join(others)}")

    @classmethod
    def default_epochs(cls, space) -> tuple[int, int]:
        """(search epochs, weight-only warm-up epochs) when the user gives none: 16/8 on a chain space;
        on the cell space 2/0 (its search network costs ~5-8 s a batch-32 step on a 2-core CPU, and the
        DARTS family updates alpha from the first epoch)."""
        return (2, 0) if getattr(space, "kind", "chain") == "cell" else (16, 8)

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
        op = cls.mixed_op_for(**kwargs)
        if getattr(space, "kind", "chain") == "cell":
            from hwnas.mixed.cell_supernet import CellSupernet

            return CellSupernet(space, config, op, resolution, num_classes)
        return ChainSupernet(space, config, op, resolution, num_classes)

    # -- reading the architecture -------------------------------------------------------------
    def probabilities(self) -> list[torch.Tensor]:
        return [F.softmax(a, dim=-1) for a in self.alpha]

    def log_probabilities(self) -> list[np.ndarray]:
        return [F.log_softmax(a.detach().double(), dim=-1).cpu().numpy() for a in self.alpha]

    def derive(self) -> list[str]:
        """The supernet's derivation from ``log_probabilities()`` (chain: the most probable candidate of
        every layer; cell: the strongest two edges per node, see ``CellSupernet.derive``)."""
        return self.supernet.derive(self.log_probabilities())

    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self.alpha)

    def weight_parameters(self) -> list[nn.Parameter]:
        return list(self.supernet.parameters())

    # -- the latency-aware objective ------------------------------------------------------------
    def expected_latency(self) -> torch.Tensor | None:
        return None if self.latency is None else self.latency.expected(self.probabilities())

    def objective(self, ce: torch.Tensor, expected: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(loss, E[LAT]). ``expected`` defaults to ``expected_latency()`` (a method whose latency term uses
        its samples rather than ``p``, like FBNet, passes its own). No table: ``ce``. No target: the
        method's ``unconstrained_loss``. A target: ``targeted_loss`` plus the multiplier's penalty."""
        if expected is None:
            expected = self.expected_latency()
        if expected is None:
            return ce, None
        if self.target_ms is None:
            return self.unconstrained_loss(ce, expected), expected
        return self.targeted_loss(ce, expected) + self._target_multiplier().penalty(expected), expected

    def _target_multiplier(self) -> LatencyMultiplier:
        if self.multiplier is None or self.multiplier.target_ms != float(self.target_ms):  # target set later
            self.multiplier = LatencyMultiplier(self.target_ms, step=self.options.get("target_step", 0.05)).to(
                self.arch_parameters()[0].device)
        return self.multiplier

    def unconstrained_loss(self, ce: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
        """The method's loss when no target is given (default: accuracy alone)."""
        return ce

    def targeted_loss(self, ce: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
        """The method's loss with a target, before the multiplier's penalty (default: ProxylessNAS's
        forms with T as the reference latency, ``options["loss"]``)."""
        return latency_loss(ce, expected, self.target_ms, self.options.get("loss", "mul#log"),
                            self.options.get("loss_params"))

    def update_multiplier(self, expected: torch.Tensor | None) -> dict:
        """Advance the latency multiplier after an architecture step; the metrics to log."""
        if self.target_ms is None or expected is None:
            return {}
        return {"latency_multiplier": self._target_multiplier().update(expected)}

    def on_epoch_start(self, epoch: int) -> bool | None:
        """Called before epoch ``epoch`` (0-based), on resume too; schedules live here. Returns True when
        it replaced the supernet's parameters (P-DARTS's stages): the loop then makes a new optimizer."""

    def structure(self) -> dict | None:
        """What a checkpoint needs to rebuild the supernet's shape before loading it (None: fixed)."""
        return None

    def restore_structure(self, structure: dict | None) -> bool:
        """Rebuild to ``structure`` (from ``structure()``); True when the parameters changed."""
        return False

    # -- steps (every method defines them) ---------------------------------------------------------
    @abstractmethod
    def sample_weight_path(self) -> None:
        """Configure the mixed ops for a weight step on a training batch."""

    @abstractmethod
    def arch_step(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        """One architecture update on a validation batch; returns scalar metrics."""

    @abstractmethod
    def set_eval_path(self, tokens: list[str]) -> None:
        """Configure the mixed ops to run exactly the child ``tokens``."""

    # -- shared plumbing of architecture steps ---------------------------------------------------------
    #: the optimizer of ``arch_parameters()``; a strategy sets it in its ``__init__``.
    arch_opt: torch.optim.Optimizer | None = None

    def apply_arch_grads(self, grads) -> None:
        """Set each architecture parameter's gradient (None: zero) and take one ``arch_opt`` step."""
        for p, g in zip(self.arch_parameters(), grads, strict=True):
            p.grad = torch.zeros_like(p) if g is None else g
        self.arch_opt.step()
        self.arch_opt.zero_grad(set_to_none=True)

    def arch_metrics(self, loss: torch.Tensor, ce: torch.Tensor, expected: torch.Tensor | None, **extra) -> dict:
        """The scalars an architecture step reports; advances the latency multiplier (after the step)."""
        out = {"arch_loss": float(loss.detach()), "arch_ce": float(ce.detach()), **extra}
        if expected is not None:
            out.setdefault("expected_latency_ms", float(expected.detach()))
        out.update(self.update_multiplier(expected))
        return out

    def arch_optimizer_state(self) -> dict:
        return self.arch_opt.state_dict() if self.arch_opt is not None else {}

    def load_arch_optimizer_state(self, state: dict) -> None:
        if state and self.arch_opt is not None:
            self.arch_opt.load_state_dict(state)
