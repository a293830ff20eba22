"""Bayesian optimization by Optuna's tree-structured Parzen estimator through ask/tell (Bergstra, Bardenet,
Bengio & Kégl, "Algorithms for Hyper-Parameter Optimization", NeurIPS 2011; Optuna: Akiba et al., KDD 2019).

Every decision of the space is one categorical parameter. TPE splits the told trials into the best
``gamma`` share and the rest, fits a Parzen (kernel) density to each, and proposes, among
``candidates`` draws from the good density, the one maximizing l(x)/g(x) (the expected improvement under
that split, eq. 15 of the paper); ``multivariate`` models the decisions jointly instead of one by one. The
first ``startup`` proposals are random (Optuna's default 10). Why Optuna and not our own GP or BANANAS
ensemble: its TPE handles categorical spaces of any size in milliseconds, carries a constraint model
(``Trial.set_constraint``: infeasible trials rank below every feasible one), is deterministic given a seed,
and its storages are what parallel workers share (the distributed issue), all maintained upstream.

The latency target is a hard constraint: a proposal predicted above T is never evaluated. It is told to
the study at once as infeasible (constraint ``LAT - T > 0``, a placeholder value that the constrained
ranking puts below every feasible trial), so TPE learns where the infeasible region lies at no cost, and
the next proposal is drawn; after ``tries`` infeasible draws in a row the proposal is random search's
(uniform within T). A proposal equal to an architecture already told is told its known result and redrawn,
so the loop never has to discard one (which would leave a trial running in the study).
"""
from __future__ import annotations

import logging

from hwnas.selection.random_search import RandomSelector
from hwnas.selection.selector import Selector, register

INFEASIBLE_VALUE = -1.0  # told for a proposal above T: below any accuracy, and ranked by its constraint anyway


@register
class TPESelector(Selector):
    name = "bo"

    def __init__(self, space, config: dict, seed: int = 0, latency=None, window: tuple[float, float] | None = None,
                 *, startup: int = 10, candidates: int = 24, multivariate: bool = True, tries: int = 50,
                 metric: str = "accuracy"):
        try:
            import optuna
        except ImportError:
            raise ValueError("--method bo needs Optuna: pip install optuna") from None
        if startup < 1 or candidates < 1 or tries < 1:
            raise ValueError(f"bo needs startup, candidates and tries >= 1 (got {startup}, {candidates}, {tries})")
        optuna.logging.set_verbosity(logging.WARNING)
        self.optuna = optuna
        self.space, self.config, self.seed, self.latency, self.window = space, config, int(seed), latency, window
        self.startup, self.candidates, self.multivariate = int(startup), int(candidates), bool(multivariate)
        self.tries, self.metric = int(tries), metric
        # Optuna >= 5 reads constraints set on the trial (Trial.set_constraint), and warns that the
        # multivariate TPE is experimental
        import warnings

        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning, module="optuna")
        sampler = optuna.samplers.TPESampler(n_startup_trials=self.startup, n_ei_candidates=self.candidates,
                                             multivariate=self.multivariate, seed=self.seed)
        self.study = optuna.create_study(direction="maximize", sampler=sampler)
        self.decisions = space.decisions(config)
        self.random = RandomSelector(space, config, seed=self.seed + 1, latency=latency, window=window)
        self.pending: dict[tuple[str, ...], object] = {}
        self.told: dict[tuple[str, ...], float] = {}

    def _routed(self) -> bool:
        """Whether the space's decisions form a path (DenseNAS's routes): then TPE suggests, define-by-run,
        only the decisions of the blocks the chosen routes reach, among their real tokens (Optuna's
        conditional parameters), and every other decision is ``-``."""
        return "routes" in self.space.capabilities

    def _suggest(self, trial) -> list[str]:
        if not self._routed():
            return [trial.suggest_categorical(f"{i}:{d.name}", list(d.choices)) for i, d in enumerate(self.decisions)]
        st = self.space.structure(self.config)
        layers, n = ["-"] * len(self.decisions), 0
        while True:
            for i in list(st.stack[n]) + ([st.route[n]] if st.route[n] is not None else []):
                layers[i] = trial.suggest_categorical(f"{i}:{self.decisions[i].name}", self._real(i))
            if st.route[n] is None:
                return layers
            n = st.successor[st.route[n]][self.decisions[st.route[n]].choices.index(layers[st.route[n]])]

    def _real(self, i: int) -> list[str]:
        return [t for t in self.decisions[i].choices if t != "-"] if self._routed() else list(self.decisions[i].choices)

    def _draw(self):
        trial = self.study.ask()
        layers = self._suggest(trial)
        excess = None
        if self.window is not None:
            excess = float(self.latency.of_tokens(layers)) - self.window[1]
            trial.set_constraint("latency_ms_over_target", excess)
        return trial, layers, excess

    def ask(self) -> list[str]:
        for _ in range(self.tries):
            trial, layers, excess = self._draw()
            key = tuple(layers)
            if excess is not None and excess > 0:
                self.study.tell(trial, INFEASIBLE_VALUE)  # never evaluated
            elif key in self.told:
                self.study.tell(trial, self.told[key])
            elif key in self.pending:
                self.study.tell(trial, state=self.optuna.trial.TrialState.FAIL)
            else:
                self.pending[key] = trial
                return layers
        return self.random.ask()

    def tell(self, layers: list[str], result: dict) -> None:
        key, value = tuple(layers), float(result[self.metric])
        trial = self.pending.pop(key, None)
        if trial is None:  # random search's fallback proposal: added as a trial of its own
            optuna = self.optuna
            keep = [i for i, t in enumerate(layers) if not (self._routed() and t == "-")]
            params = {f"{i}:{self.decisions[i].name}": layers[i] for i in keep}
            dists = {k: optuna.distributions.CategoricalDistribution(self._real(i)) for k, i in zip(params, keep)}
            constraints = ({"latency_ms_over_target": float(self.latency.of_tokens(layers)) - self.window[1]}
                           if self.window is not None else None)
            self.study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=value,
                                                           constraints=constraints))
        else:
            self.study.tell(trial, value)
        self.told[key] = value

    def settings(self) -> dict:
        return {"selector": self.name, "seed": self.seed, "startup": self.startup, "candidates": self.candidates,
                "multivariate": self.multivariate, "tries": self.tries, "metric": self.metric,
                "window": None if self.window is None else list(self.window)}
