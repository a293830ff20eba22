"""The Space protocol: everything a search, a profiler or a selector needs of a search space.

A space is a list of *decisions*, each a choice among tokens (a chain layer's ``k3e6`` / ``skip``, a cell
edge's ``sep_conv_3x3`` / ``none``); an architecture is one token per decision (``Arch.layers``). Code
outside ``hwnas/spaces/`` reaches a space only through this interface and never asks which kind of space
it is. The defaults below treat the decisions as independent (a chain: any token of every layer is
legal); a space whose decisions constrain each other (the DARTS cell: two kept edges per node) overrides
the sampler, the mutation, the derivations and the latency expectation.

Adding a space: subclass ``Space`` in its own module, implement the abstract methods (config, decisions,
validation, the child and supernet builders, the latency terms and the profiled blocks), override what
its structure changes, and register it in ``hwnas.spaces.definitions.SPACES``. The registry-wide tests
(tests/test_space_protocol.py) then check it like every other space.
"""
from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Decision:
    """One searchable choice of a space: a readable ``name`` and its allowed tokens."""

    name: str
    choices: tuple[str, ...]


@dataclass(frozen=True)
class LatencyTerms:
    """What a latency table is read for to predict any architecture of a space config: per decision and
    choice the table signatures that choice runs (empty: it costs nothing), and the fixed parts every
    network has as ``(part, signatures)``."""

    choices: list[tuple[str, ...]]
    signatures: list[list[list[str]]]
    fixed: list[tuple[str, list[str]]]


class Space(ABC):
    """A search space (see the module docstring). ``capabilities`` name what the space offers strategies
    (a strategy lists the ones it needs); ``search_epochs`` is (epochs, weight-only warm-up) of a search
    when the user gives none; ``train_defaults`` the from-scratch recipe (``hwnas.training``)."""

    name: str
    paper: str
    defaults: dict
    capabilities: frozenset[str] = frozenset()
    search_epochs: tuple[int, int] = (16, 8)
    train_defaults: dict = {"lr": 0.05, "weight_decay": 4e-5, "grad_clip": None, "nesterov": True}
    #: the token of a decision that contributes nothing to the network (an absent cell edge), if any
    absent_token: str | None = None
    #: whether every network is a chain of top-level blocks that in-network profiling can hook
    chained_blocks: bool = False

    # -- config, decisions, validation ---------------------------------------------------------
    @abstractmethod
    def resolve_config(self, config: dict | None = None) -> dict:
        """Defaults overlaid with ``config``, validated (``ArchError`` naming the bad field)."""

    @abstractmethod
    def decisions(self, config: dict | None = None) -> tuple[Decision, ...]:
        """The searchable decisions of ``config``, in the order of ``Arch.layers``."""

    @abstractmethod
    def check_layers(self, config: dict, layers) -> None:
        """Raise ``ArchError`` naming the first decision whose token is not allowed."""

    def num_layers(self, config: dict | None = None) -> int:
        return len(self.decisions(config))

    def describe(self, layers: list[str]) -> str:
        """A readable form of an architecture (a chain: its tokens; a cell: the paper's genotype)."""
        return f"{self.name}[{' '.join(layers)}]"

    def label(self, layers: list[str]) -> str:
        """An architecture in one line, its space named (``str(Arch)``)."""
        return self.describe(layers)

    #: whether the space has a notation of its own (``arch_string``) that arch.json and summaries show
    has_notation: bool = False

    def arch_string(self, layers: list[str]) -> str:
        """An architecture as one string (a tabular benchmark's ``arch`` column): by default its tokens
        separated by spaces; a space with a notation of its own (NAS-Bench-201's) overrides it."""
        return " ".join(layers)

    def parse_arch_string(self, text: str, source: str = "arch") -> list[str]:
        """The tokens of ``arch_string``'s form (``ArchError`` naming the problem); accepts ``describe``'s
        ``name[tok tok ...]`` too."""
        from hwnas.spaces.chain import ArchError

        if not isinstance(text, str):
            raise ArchError(f"{source}: an architecture string must be text, got {type(text).__name__}")
        body = text.strip()
        if body.startswith(f"{self.name}[") and body.endswith("]"):
            body = body[len(self.name) + 1:-1]
        layers = body.split()
        try:
            self.check_layers(self.resolve_config(None), layers)
        except ArchError as e:
            raise ArchError(f"{source}: {e}") from None
        return layers

    def layers_from_genotype(self, genotype, source: str = "genotype") -> list[str]:
        from hwnas.spaces.chain import ArchError

        raise ArchError(f"{source}: space {self.name!r} has no genotype form; give 'layers'")

    def figures(self, layers: list[str]) -> dict:
        """Summary figures of an architecture worth reporting beside its accuracy (none by default)."""
        return {}

    def history_record(self, layers: list[str]) -> dict:
        """What a search's arch_history.jsonl records of an architecture beside its tokens (none by default)."""
        return {}

    def derived_arch_summary(self, layers: list[str]) -> str:
        """What the search prints for a derived architecture."""
        return f"derived architecture: {self.describe(layers)}"

    # -- building -------------------------------------------------------------------------------
    @abstractmethod
    def build_child(self, layers: list[str], config: dict, resolution: int | None = None):
        """The plain child network (an ``nn.Module`` with no search code) of ``layers``."""

    @abstractmethod
    def build_supernet(self, config: dict, mixed_op, resolution: int | None = None,
                       num_classes: int | None = None, **options):
        """The supernet: one ``mixed_op`` per place a decision configures (``supernet.decision_ops(i)``)."""

    # -- latency ---------------------------------------------------------------------------------
    @abstractmethod
    def latency_terms(self, config: dict) -> LatencyTerms:
        """The table signatures of every choice of every decision and of the fixed parts."""

    @abstractmethod
    def profiled_blocks(self, config: dict | None = None) -> list[tuple[str, object, tuple[int, ...]]]:
        """``(signature, build, input shape without batch)`` of every distinct block a table needs."""

    def block_positions(self, config: dict, layers: list[str]) -> list[tuple[str, str | None]]:
        """``(module path, signature)`` of the top-level blocks of a child, for in-network profiling."""
        raise ValueError(f"in-network profiling times the top-level blocks of a chain of blocks; space "
                         f"{self.name!r} is not one: profile its blocks alone (--context alone)")

    def allowed_choices(self, config: dict | None, i: int, so_far: list[int]) -> list[int] | None:
        """The choice indices decision ``i`` may take given the indices chosen for decisions ``0..i-1``, for
        a sampler that draws the decisions in order (ENAS's and NAS-RL's controllers); None: all of them."""
        return None

    def decision_groups(self) -> list[list[int]] | None:
        """Decisions that constrain each other (a cell node's incoming edges), or None (independent)."""
        return None

    def expected_latency(self, probs: list, layer_ms: list, fixed_ms: float, edge_weights=None,
                         config: dict | None = None):
        """E[LAT] of independent per-decision distributions (ProxylessNAS eq. 5, FBNet eq. 4):
        ``sum_l sum_i p_{l,i} LAT_{l,i} + LAT_fixed``; differentiable in ``probs``. ``config`` is the space
        config the latencies belong to (a space whose expectation follows its structure reads it)."""
        total = sum((p * lat.to(p.dtype)).sum() for p, lat in zip(probs, layer_ms, strict=True))
        return total + fixed_ms

    def extremes(self, choices: list[tuple[str, ...]], layer_ms: list) -> tuple[list[str], list[str]]:
        """The fastest and the slowest architecture (tokens) for per-decision latencies ``layer_ms``."""
        lo = [c[int(np.argmin(np.asarray(lat, float)))] for c, lat in zip(choices, layer_ms)]
        hi = [c[int(np.argmax(np.asarray(lat, float)))] for c, lat in zip(choices, layer_ms)]
        return lo, hi

    def derive(self, choices: list[tuple[str, ...]], log_probs, edge_log_weights=None) -> list[str]:
        """The unconstrained derivation: the most probable token of every decision."""
        return [c[int(np.asarray(lp).argmax())] for c, lp in zip(choices, log_probs, strict=True)]

    def derive_within(self, choices: list[tuple[str, ...]], log_probs, layer_ms: list, fixed_ms: float,
                      lower_ms: float, upper_ms: float) -> list[str]:
        """The most probable architecture whose predicted latency lies in ``[lower_ms, upper_ms]`` (the
        multiple-choice knapsack of ``hwnas.objective.most_probable_within``)."""
        from hwnas.objective import most_probable_within

        lat = [np.asarray(x, dtype=np.float64) for x in layer_ms]
        idx = most_probable_within(log_probs, lat, fixed_ms, lower_ms, upper_ms)
        return [c[j] for c, j in zip(choices, idx)]

    # -- sampling, mutation, encoding --------------------------------------------------------------
    def sample(self, rng: random.Random, config: dict | None = None) -> list[str]:
        """One architecture, each decision's token uniform among its choices."""
        return [rng.choice(d.choices) for d in self.decisions(config)]

    def sample_spread(self, rng: random.Random, config: dict | None, layer_ms: list, width: float = 0.2) -> list[str]:
        """One architecture spread over the latency range: draw a level ``q ~ U(0, 1)``, then each decision's
        token with weight ``exp(-(r - q)^2 / (2 width^2))``, ``r`` the token's latency rank in its decision
        scaled to [0, 1]. Samples then cover fast to slow (uniform ones cluster near the mean latency) while
        every token keeps a chance everywhere."""
        q = rng.random()
        return [rng.choices(d.choices, weights=_rank_weights(lat, q, width))[0]
                for d, lat in zip(self.decisions(config), layer_ms, strict=True)]

    def mutate(self, layers: list[str], rng: random.Random, config: dict | None = None) -> list[str]:
        """A neighbour: one decision (with at least two choices) set to another of its tokens."""
        decisions = self.decisions(config)
        free = [i for i, d in enumerate(decisions) if len(d.choices) > 1]
        if not free:
            return list(layers)
        i = rng.choice(free)
        out = list(layers)
        out[i] = rng.choice([t for t in decisions[i].choices if t != layers[i]])
        return out

    def encode(self, layers: list[str], config: dict | None = None) -> np.ndarray:
        """A fixed-length vector for predictors: every decision's token one-hot, concatenated."""
        parts = []
        for d, t in zip(self.decisions(config), layers, strict=True):
            v = np.zeros(len(d.choices))
            v[d.choices.index(t)] = 1.0
            parts.append(v)
        return np.concatenate(parts) if parts else np.zeros(0)

    def all_archs(self, config: dict | None = None) -> list[list[str]]:
        """Every architecture of a space of independent decisions, in lexicographic order of the tokens
        (choice order); ValueError where decisions constrain each other."""
        import itertools

        if self.decision_groups() is not None:
            raise ValueError(f"space {self.name!r}: its decisions constrain each other; no plain enumeration")
        return [list(t) for t in itertools.product(*(d.choices for d in self.decisions(config)))]

    def cover(self, rng: random.Random, config: dict | None, reps: int) -> list[list[str]]:
        """``reps`` sets of architectures; within a set every token of every decision appears at least once
        (a set has as many networks as the decision with the most choices), in an order drawn anew per
        decision and set, so a block meets other neighbours in each set."""
        if reps < 1:
            raise ValueError(f"a covering needs reps >= 1, got {reps}")
        decisions = self.decisions(config)
        width = max(len(d.choices) for d in decisions)
        archs = []
        for _ in range(reps):
            orders = [rng.sample(list(d.choices), len(d.choices)) for d in decisions]
            archs += [[order[j % len(order)] for order in orders] for j in range(width)]
        return archs


def _rank_weights(lat, q: float, width: float) -> list[float]:
    lat = np.asarray(lat, float)
    r = np.argsort(np.argsort(lat, kind="stable"), kind="stable") / max(1, len(lat) - 1)
    return np.exp(-((r - q) ** 2) / (2 * width**2)).tolist()
