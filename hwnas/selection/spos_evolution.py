"""The evolutionary search of Single Path One-Shot (Guo et al., ECCV 2020, Sec. 3.4 and Algorithm 1 of the
supplement; its released ``src/Search/search.py``), as an ask/tell selector.

Generational, not aging: generation 0 is ``population`` random architectures; after a generation is
evaluated, the ``topk`` most accurate of *all* architectures evaluated so far are the parents of the next,
which is ``mutations`` mutants (a parent drawn from the top-k, each decision resampled with probability
``mutation_prob``), ``crossovers`` crossovers (two parents from the top-k, each decision from either at
random) and random architectures to fill the generation up to ``population``; ``iterations`` generations
follow the first. The paper's values are population 50, top-k 10, 20 iterations, 25 mutants and 25
crossovers (``population / 2`` each), mutation probability 0.1: about 1,050 evaluations.

Every proposal is checked before it is evaluated (the code's ``is_legal``): it must be new (never proposed
before) and, with a latency window ``[lo, hi]`` (SPOS's hardware constraint: ``[0.9 T, T]``), predicted
inside it; a child that is not is discarded and another drawn (up to ``10 x`` the count asked for, as the
code does), and a random architecture in the window fills any shortfall (rejection from ``Space.sample``;
after ``tries`` misses the most probable architecture in the window under random scores,
``LatencyModel.derive_within``).

On a space whose decisions constrain each other (the darts cell: two edges per node) mutation and crossover
act on ``Space.decision_groups`` (a node's edges together) instead of single decisions, so children stay
legal; a mutated group is copied from a fresh ``Space.sample``.
"""
from __future__ import annotations

import random

import numpy as np

from hwnas.selection.selector import Selector


class SPOSEvolution(Selector):
    name = "spos-evolution"

    def __init__(self, space, config: dict, seed: int = 0, latency=None, window: tuple[float, float] | None = None,
                 *, population: int = 50, topk: int = 10, iterations: int = 20, mutation_prob: float = 0.1,
                 mutations: int | None = None, crossovers: int | None = None, tries: int = 1000):
        population, topk, iterations = int(population), int(topk), int(iterations)
        mutations = population // 2 if mutations is None else int(mutations)
        crossovers = population // 2 if crossovers is None else int(crossovers)
        if population < 2 or not 1 <= topk <= population or iterations < 0 or not 0 < mutation_prob <= 1 \
                or mutations < 0 or crossovers < 0 or mutations + crossovers > population or tries < 1:
            raise ValueError(f"spos evolution needs population >= 2, 1 <= topk <= population, iterations >= 0, "
                             f"0 < mutation_prob <= 1 and mutations + crossovers <= population (got population "
                             f"{population}, topk {topk}, iterations {iterations}, mutation_prob {mutation_prob}, "
                             f"mutations {mutations}, crossovers {crossovers})")
        if window is not None and latency is None:
            raise ValueError("spos evolution in a latency window needs a latency table")
        self.space, self.config, self.seed, self.latency = space, config, int(seed), latency
        self.window = None if window is None else (float(window[0]), float(window[1]))
        self.population, self.topk, self.iterations = population, topk, iterations
        self.mutation_prob, self.mutations, self.crossovers, self.tries = float(mutation_prob), mutations, crossovers, int(tries)
        self.rng = random.Random(self.seed)
        self.gumbel = np.random.default_rng(self.seed)
        n = len(space.decisions(config))
        self.groups = space.decision_groups() or [[i] for i in range(n)]
        self.proposed: set[tuple[str, ...]] = set()
        self.scores: dict[tuple[str, ...], float] = {}
        self.pending: list[list[str]] = []
        self.generation = -1
        self.outstanding = 0

    @classmethod
    def budget(cls, population: int = 50, iterations: int = 20, **_) -> int:
        """The most evaluations the search makes: ``population * (iterations + 1)``."""
        return int(population) * (int(iterations) + 1)

    # -- legality --------------------------------------------------------------------------------------------
    def legal(self, layers: list[str]) -> bool:
        if tuple(layers) in self.proposed:
            return False
        if self.window is None:
            return True
        ms = self.latency.of_tokens(layers)
        return self.window[0] - 1e-9 <= ms <= self.window[1] + 1e-9

    def random_legal(self) -> list[str] | None:
        for _ in range(self.tries):
            layers = self.space.sample(self.rng, self.config)
            if self.legal(layers):
                return layers
        if self.window is not None:
            for _ in range(self.tries):
                scores = [self.gumbel.gumbel(size=len(c)) for c in self.latency.choices]
                layers = self.latency.derive_within(scores, *self.window)
                if self.legal(layers):
                    return layers
        return None

    # -- operators ---------------------------------------------------------------------------------------------
    def mutate(self, parent: list[str]) -> list[str]:
        """Each decision group resampled with probability ``mutation_prob`` (from a fresh sample); a space
        whose decisions form no such groups (DenseNAS's routes) takes its own ``mutate`` step."""
        if self.space.decision_groups() == []:
            return self.space.mutate(parent, self.rng, self.config)
        fresh = self.space.sample(self.rng, self.config)
        child = list(parent)
        for group in self.groups:
            if self.rng.random() < self.mutation_prob:
                for i in group:
                    child[i] = fresh[i]
        return child

    def crossover(self, a: list[str], b: list[str]) -> list[str]:
        """Each decision group from ``a`` or ``b`` with probability 1/2 (the space's own ``crossover`` where
        its decisions form no groups)."""
        if self.space.decision_groups() == []:
            return self.space.crossover(a, b, self.rng, self.config)
        child = list(a)
        for group in self.groups:
            if self.rng.random() < 0.5:
                for i in group:
                    child[i] = b[i]
        return child

    def _fill(self, count: int, make) -> list[list[str]]:
        out = []
        for _ in range(10 * count):
            if len(out) >= count:
                break
            child = make()
            if self.legal(child):
                self.proposed.add(tuple(child))
                out.append(child)
        return out

    def next_generation(self) -> list[list[str]]:
        self.generation += 1
        children: list[list[str]] = []
        if self.generation > 0:
            parents = [list(a) for a, _ in sorted(self.scores.items(), key=lambda kv: -kv[1])[: self.topk]]
            children += self._fill(self.mutations, lambda: self.mutate(self.rng.choice(parents)))
            children += self._fill(self.crossovers, lambda: self.crossover(self.rng.choice(parents),
                                                                           self.rng.choice(parents)))
        while len(children) < self.population:
            layers = self.random_legal()
            if layers is None:
                break
            self.proposed.add(tuple(layers))
            children.append(layers)
        return children

    # -- ask / tell ------------------------------------------------------------------------------------------
    def ask(self) -> list[str] | None:
        if not self.pending:
            if self.outstanding or self.generation >= self.iterations:
                return None
            self.pending = self.next_generation()
            self.outstanding = len(self.pending)
            if not self.pending:
                return None
        return self.pending.pop(0)

    def tell(self, layers: list[str], result: dict) -> None:
        self.scores[tuple(layers)] = float(result["accuracy"])
        self.outstanding = max(0, self.outstanding - 1)

    def settings(self) -> dict:
        return {"selector": self.name, "seed": self.seed, "population": self.population, "topk": self.topk,
                "iterations": self.iterations, "mutation_prob": self.mutation_prob, "mutations": self.mutations,
                "crossovers": self.crossovers, "tries": self.tries,
                "window": None if self.window is None else list(self.window)}
