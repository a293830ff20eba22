"""Selectors: the ask/tell half of multi-trial search. A selector proposes architectures (``ask``) and is
told how each one scored (``tell``); an ``Evaluator`` (``hwnas.selection.evaluate``) scores them and
``run_trials`` (``hwnas.selection.loop``) runs the two, recording every trial.

Adding a selector (regularized evolution, Bayesian optimization, ...): a module in this package with a
``Selector`` subclass decorated with ``@register``, implementing ``ask``, ``tell`` and ``settings``. It
must be deterministic given its settings: the loop resumes a killed run by building it again with the
same settings and replaying the recorded trials (re-asking, re-telling). It reaches a space only through
``hwnas.spaces.base.Space`` (``sample``, ``mutate``, ``encode``) and the latency model's
``derive_within``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

SELECTORS: dict[str, type["Selector"]] = {}


def register(cls: type["Selector"]) -> type["Selector"]:
    SELECTORS[cls.name] = cls
    return cls


def get_selector(name: str) -> type["Selector"]:
    try:
        return SELECTORS[name]
    except KeyError:
        raise ValueError(f"unknown selector {name!r}; available: {', '.join(sorted(SELECTORS))}") from None


class Selector(ABC):
    """Proposes architectures and learns from their results (see the module docstring)."""

    name = ""

    @abstractmethod
    def ask(self) -> list[str] | None:
        """The next architecture to evaluate (one token per decision), or None when it has no more."""

    def tell(self, layers: list[str], result: dict) -> None:
        """The result of evaluating ``layers`` (the evaluator's dict); ignored by default."""

    @classmethod
    def budget_defaults(cls, n_trials: int) -> dict:
        """Options that default to a function of the trial budget (none by default)."""
        return {}

    @abstractmethod
    def settings(self) -> dict:
        """What fixes the proposals (JSON): recorded with the trials, checked on resume."""
