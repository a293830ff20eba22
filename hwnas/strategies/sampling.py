"""Sampling one-shot methods — SPOS, FairNAS, One-Shot (Bender), ENAS: a supernet without architecture
logits, trained on sampled paths, and an architecture chosen *afterwards* from evaluations of paths of the
trained supernet (``hwnas.selection.evaluate.SupernetPath``: the path's weights inherited, BatchNorm
recalibrated on training batches).

``SamplingStrategy`` holds what they share:

- the supernet: on a space of chain layers one binary-gated op per layer, its candidates cut out of one
  shared MBConv (``weights=shared``: ``hwnas.mixed.shared_gate``) or each with its own weights
  (``weights=separate``, the papers' form); on a cell space (darts, nb201) one weighted-sum op per edge run
  as a single path (``WeightedSumOp.select``), separate weights only. ``weights=auto`` (the default) is
  shared on chains and separate on cells;
- ``set_path(tokens)``: every mixed op runs only its chosen candidate (``MixedOp.select``);
- ``sample_path()``: one architecture uniformly over the space (``Space.sample``, so a cell keeps two edges
  per node), drawn from torch's generator so that a resumed search (its RNG state restored from the
  checkpoint) draws the same paths;
- ``current_arch()``: a fixed reference child (a seeded sample), whose per-epoch validation accuracy
  tracks the supernet's training; it is not a derivation;
- ``derive(context)``: a selector (``make_selector``, the method's) proposes architectures, each held to
  the window ``[0.9 T, T]`` by the table before it is evaluated, each scored by ``SupernetPath``, every
  trial recorded in ``RUN/selection/trials.jsonl`` (``hwnas.selection.loop.run_trials``: a killed
  selection resumes without evaluating a finished candidate again); the most accurate path in the window
  is the architecture.
"""
from __future__ import annotations

import logging
import random
from pathlib import Path

import torch
import torch.nn.functional as F

from hwnas.mixed.binary_gate import BinaryGatedOp
from hwnas.mixed.shared_gate import SharedBinaryGatedOp
from hwnas.mixed.weighted_sum import WeightedSumOp
from hwnas.selection.spos_evolution import SPOSEvolution
from hwnas.strategies.base import DeriveContext, Strategy

log = logging.getLogger("hwnas.search")

WEIGHTS = ("auto", "shared", "separate")
#: options of the selection phase every sampling method has
SELECTION_DEFAULTS = {"calibration_batches": 8}


class SamplingStrategy(Strategy):
    """The shared half of the sampling methods (see the module docstring)."""

    needs = frozenset()  # every space: chains through binary gates, cells through single-path weighted sums
    defaults = {"weights": "auto", **SELECTION_DEFAULTS}
    current_arch_label = "reference path"
    #: whether the method can cut candidates out of shared weights (One-Shot sums them all: it cannot)
    shared_weights = True

    @classmethod
    def default_epochs(cls, space) -> tuple[int, int]:
        """The space's search epochs, no warm-up (these methods have no architecture parameters to hold)."""
        return (space.search_epochs[0], 0)

    @classmethod
    def _chain(cls, space) -> bool:
        """Whether the space's mixed ops are MBConv grids (chains, DenseNAS's routing blocks)."""
        return bool({"layers", "routes"} & space.capabilities)

    @classmethod
    def make_supernet(cls, space, config: dict, resolution: int, num_classes: int, **kwargs):
        weights = kwargs.get("weights", cls.defaults.get("weights", "auto"))
        if weights not in WEIGHTS:
            raise ValueError(f"method {cls.name!r}: weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
        if weights == "shared" and not cls.shared_weights:
            raise ValueError(f"method {cls.name!r} runs every candidate at once; it needs weights=separate")
        if not cls._chain(space):
            if weights == "shared":
                raise ValueError(f"method {cls.name!r}: space {space.name!r} has no shared-weight candidates "
                                 f"(its ops differ in kind); use weights=separate or auto")
            return space.build_supernet(config, cls.cell_op(), resolution, num_classes)
        shared = weights == "shared" or (weights == "auto" and cls.shared_weights)
        return space.build_supernet(config, SharedBinaryGatedOp if shared else cls.chain_op(), resolution, num_classes)

    @classmethod
    def chain_op(cls):
        """The separate-weight mixed op on a chain space."""
        return BinaryGatedOp

    @classmethod
    def cell_op(cls):
        """The mixed op on a cell space."""
        return WeightedSumOp

    def __init__(self, supernet, latency=None, target_ms=None, **options):
        super().__init__(supernet, **options)
        self.latency, self.target_ms = latency, target_ms
        self.config = supernet.config
        self.decisions = self.space.decisions(self.config)
        self.reference = self.space.sample(random.Random(0), self.config)

    # -- paths ----------------------------------------------------------------------------------------
    def set_path(self, tokens: list[str]) -> None:
        if hasattr(self.supernet, "set_child"):  # decisions that are not one op each (DenseNAS's routes)
            return self.supernet.set_child(tokens)
        for i, t in enumerate(tokens):
            for op in self.supernet.decision_ops(i):
                op.select(op.tokens.index(t))

    def set_eval_path(self, tokens: list[str]) -> None:
        self.set_path(tokens)

    def python_rng(self) -> random.Random:
        """A ``random.Random`` seeded from torch's generator (restored on resume: the same draws)."""
        return random.Random(int(torch.randint(0, 2**62, ())))

    def sample_path(self) -> list[str]:
        """One architecture uniformly over the space (SPOS, Guo et al. 2020, eq. 7 with a uniform Gamma)."""
        return self.space.sample(self.python_rng(), self.config)

    def train_path(self, tokens: list[str], x, y, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward and backward of the child ``tokens`` on ``(x, y)``, gradients of ``scale`` times its
        cross-entropy accumulating: (loss, logits)."""
        self.set_path(tokens)
        logits = self.train_forward(x)
        loss = F.cross_entropy(logits, y)
        (loss * scale if scale != 1.0 else loss).backward()
        return loss.detach(), logits.detach()

    def weight_step(self, batch, optimizer) -> dict:
        """One uniformly sampled path, cross-entropy, one step. Candidates off the path get no gradient
        (``None``), so SGD leaves them alone: no momentum, no weight decay (the SPOS code's ``grad = None``)."""
        x, y = batch
        optimizer.zero_grad(set_to_none=True)
        loss, logits = self.train_path(self.sample_path(), x, y)
        optimizer.step()
        return {"loss": float(loss), "correct": int((logits.argmax(1) == y).sum()), "seen": len(y)}

    # -- choosing the architecture ------------------------------------------------------------------------
    def current_arch(self) -> list[str]:
        return list(self.reference)

    def selection_budget(self) -> int:
        """The most trials ``make_selector``'s selector proposes."""
        raise NotImplementedError

    def make_selector(self, context: DeriveContext):
        """The selector of the selection phase (``hwnas.selection.selector.Selector``)."""
        raise NotImplementedError

    def derive(self, context: DeriveContext | None = None) -> list[str]:
        """The most accurate path the selector found in the window (see the module docstring); without a
        run directory (a bare strategy) the reference child."""
        if context is None or context.run_dir is None or context.val_loader is None:
            return self.current_arch()
        from hwnas.selection.evaluate import SupernetPath
        from hwnas.selection.loop import run_trials

        window = context.window
        evaluator = SupernetPath(self, context.val_loader, context.train_loader, context.device,
                                 self.options["calibration_batches"])
        out = Path(context.run_dir) / "selection"
        budget = self.selection_budget()
        log.info("%s: selecting among paths of the trained supernet (at most %d evaluations%s) into %s", self.name,
                 budget, f", each predicted within [{window[0]:.4g}, {window[1]:.4g}] ms" if window else "", out)
        trials = run_trials(self.make_selector(context), evaluator, out, budget, latency=context.latency,
                            progress=context.progress)
        legal = [t for t in trials if window is None or window[0] - 1e-9 <= t["predicted_ms"] <= window[1] + 1e-9]
        if not legal:
            raise ValueError(f"{out}: no evaluated path lies in [{window[0]:.4g}, {window[1]:.4g}] ms")
        best = max(legal, key=lambda t: (t["result"]["accuracy"], -t["trial"]))
        self.selection = {"trials": len(trials), "best_trial": best["trial"], "accuracy": best["result"]["accuracy"]}
        log.info("%s: best of %d evaluated paths: trial %d, supernet accuracy %.4f", self.name, len(trials),
                 best["trial"], best["result"]["accuracy"])
        return list(best["arch"])

    selection: dict | None = None


class RandomPathSelection:
    """The selection of One-Shot and SMASH: ``samples`` paths drawn uniformly in the window, the most accurate
    one chosen (no evolution: a population of ``samples`` and no generations). Mixed in before
    ``SamplingStrategy``."""

    def selection_budget(self) -> int:
        return int(self.options["samples"])

    def make_selector(self, context: DeriveContext):
        return SPOSEvolution(self.space, self.config, seed=0, latency=context.latency, window=context.window,
                             population=int(self.options["samples"]), topk=1, iterations=0, mutations=0,
                             crossovers=0)
