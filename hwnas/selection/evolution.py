"""Regularized (aging) evolution: Real, Aggarwal, Huang & Le, "Regularized Evolution for Image Classifier
Architecture Search", AAAI 2019, Algorithm 1.

The population is a queue of the ``population`` most recent trials. Until it is full, a proposal is a
random architecture; then each proposal samples ``sample`` members of the population uniformly *with
replacement* (as Algorithm 1 does), takes the most accurate of them as the parent and applies one
mutation (``Space.mutate``: one decision set to another of its tokens). Each told result joins the queue
on the right and, once the queue holds ``population``, the *oldest* member dies (left), not the worst:
the aging that regularizes the search (Sec. 3). The paper ran P=100, S=25 over 20,000 models; here the
defaults scale to the budget: ``population = clip(n_trials / 5, 4, 100)`` and ``sample = max(2, P / 4)``
(the paper's S/P), so that at 100 trials four fifths of them evolve.

With a latency target the initial population is random search's (``RandomSelector``: uniform over the
architectures predicted within T), and a mutant predicted above T is never evaluated: the
mutation is *resampled* (up to ``tries`` draws from the same parent), and if none of them meets T the
proposal is a fresh random architecture within T. Resampling, not repair: a repair (moving decisions
to faster tokens until the mutant fits) would change several decisions at once and always toward the
fastest tokens, where one resampled mutation keeps the child a single step from its parent, which is
what the tournament's selection pressure acts through. Mutants faster than 0.9T are allowed: the
window's lower edge is a promise of the one-shot derivation, while here every trial below T is a legal
answer and the most accurate one is returned.

``pareto=true`` replaces the aging queue by NSGA-II's selection (Deb, Pratap, Agarwal & Meyarivan, "A Fast
and Elitist Multiobjective Genetic Algorithm: NSGA-II", IEEE TEC 2002), steady state: the population is the
``population`` best of every evaluated trial by (non-domination rank, then crowding distance, larger first)
on the two objectives accuracy (max) and predicted latency (min), the parent the winner of a binary
tournament on that order (Sec. III-C, the crowded-comparison operator), the child one mutation as above.
The run then keeps a Pareto front (``pareto.json``, ``pareto.png``) beside the most accurate architecture.
"""
from __future__ import annotations

import random
from collections import deque

import numpy as np

from hwnas.selection.random_search import RandomSelector
from hwnas.selection.selector import Selector, register


def scaled_population(n_trials: int) -> int:
    """The population for a budget of ``n_trials``: a fifth of it, between 4 and the paper's 100."""
    return int(min(100, max(4, round(n_trials / 5))))


@register
class RegularizedEvolution(Selector):
    name = "evolution"

    def __init__(self, space, config: dict, seed: int = 0, latency=None, window: tuple[float, float] | None = None,
                 *, population: int = 20, sample: int | None = None, tries: int = 20, metric: str = "accuracy",
                 pareto: bool = False):
        population, sample = int(population), int(sample if sample is not None else max(2, round(population / 4)))
        if population < 2 or not 1 <= sample or tries < 1:
            raise ValueError(f"evolution needs population >= 2, sample >= 1 and tries >= 1 "
                             f"(got {population}, {sample}, {tries})")
        self.space, self.config, self.seed, self.latency, self.window = space, config, int(seed), latency, window
        self.population_size, self.sample_size, self.tries, self.metric = population, sample, int(tries), metric
        self.rng = random.Random(self.seed)
        self.random = RandomSelector(space, config, seed=self.seed + 1, latency=latency, window=window)
        self.population: deque[tuple[list[str], float]] = deque()
        self.told = 0
        if not isinstance(pareto, bool):
            raise ValueError(f"evolution's pareto must be true or false, got {pareto!r}")
        self.pareto = pareto
        if self.pareto and latency is None:
            raise ValueError("evolution with pareto=true needs a latency table (its second objective)")
        self.evaluated: list[tuple[list[str], float, float]] = []  # pareto: every (arch, accuracy, latency)
        self.order: list[int] = []  # pareto: the population, best first

    @classmethod
    def budget_defaults(cls, n_trials: int) -> dict:
        return {"population": scaled_population(n_trials)}

    def _meets(self, layers: list[str]) -> bool:
        return self.window is None or self.latency.of_tokens(layers) <= self.window[1]

    def parent(self) -> list[str]:
        """The most accurate of ``sample`` members drawn with replacement (ties: the first drawn)."""
        drawn = [self.population[self.rng.randrange(len(self.population))] for _ in range(self.sample_size)]
        return max(drawn, key=lambda member: member[1])[0]

    def ask(self) -> list[str]:
        if self.told < self.population_size:
            return self.random.ask()
        parent = self.pareto_parent() if self.pareto else self.parent()
        for _ in range(self.tries):
            child = self.space.mutate(parent, self.rng, self.config)
            if self._meets(child):
                return child
        return self.random.ask()

    def pareto_parent(self) -> list[str]:
        """NSGA-II's binary tournament: of two members drawn uniformly, the one earlier in the crowded order."""
        a, b = self.rng.randrange(len(self.order)), self.rng.randrange(len(self.order))
        return self.evaluated[self.order[min(a, b)]][0]

    def tell(self, layers: list[str], result: dict) -> None:
        if self.pareto:
            self.evaluated.append((list(layers), float(result[self.metric]), float(self.latency.of_tokens(layers))))
            objectives = np.array([[-acc, lat] for _, acc, lat in self.evaluated])
            self.order = crowded_order(objectives)[: self.population_size]
        self.population.append((list(layers), float(result[self.metric])))
        if len(self.population) > self.population_size:
            self.population.popleft()  # the oldest dies, however accurate
        self.told += 1

    def settings(self) -> dict:
        return {"selector": self.name, "seed": self.seed, "population": self.population_size,
                "sample": self.sample_size, "tries": self.tries, "metric": self.metric, "pareto": self.pareto,
                "window": None if self.window is None else list(self.window)}


def non_dominated_ranks(objectives: np.ndarray) -> np.ndarray:
    """NSGA-II's fast non-dominated sort (Sec. III-A) of ``objectives`` (rows, all minimized): rank 0 is the
    Pareto front, rank 1 the front once rank 0 is removed, and so on."""
    n = len(objectives)
    leq = (objectives[:, None, :] <= objectives[None, :, :]).all(-1)
    lt = (objectives[:, None, :] < objectives[None, :, :]).any(-1)
    dominates = leq & lt  # [i, j]: i dominates j
    count = dominates.sum(0)  # how many dominate j
    ranks = np.full(n, -1)
    front, r = np.flatnonzero(count == 0), 0
    while front.size:
        ranks[front] = r
        count = count - dominates[front].sum(0)
        count[ranks >= 0] = -1
        front, r = np.flatnonzero(count == 0), r + 1
    return ranks


def crowding_distance(objectives: np.ndarray) -> np.ndarray:
    """NSGA-II's crowding distance within one front (Sec. III-B): per objective, the normalized gap between
    a point's two neighbours, summed; the extremes get infinity."""
    n, m = objectives.shape
    d = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for k in range(m):
        idx = np.argsort(objectives[:, k], kind="stable")
        span = objectives[idx[-1], k] - objectives[idx[0], k]
        d[idx[0]] = d[idx[-1]] = np.inf
        if span > 0:
            d[idx[1:-1]] += (objectives[idx[2:], k] - objectives[idx[:-2], k]) / span
    return d


def crowded_order(objectives: np.ndarray) -> list[int]:
    """Indices best first by NSGA-II's crowded comparison: lower rank, then larger crowding distance."""
    ranks = non_dominated_ranks(objectives)
    dist = np.zeros(len(objectives))
    for r in np.unique(ranks):
        members = np.flatnonzero(ranks == r)
        dist[members] = crowding_distance(objectives[members])
    return sorted(range(len(objectives)), key=lambda i: (ranks[i], -dist[i], i))
