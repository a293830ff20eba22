"""Selection: multi-trial search as ask/tell (``Selector``) x ``Evaluator``, run by ``run_trials``.

A new black-box method (regularized evolution, Bayesian optimization) is one ``Selector`` module here
(see ``hwnas.selection.selector``); a new way to score an architecture (a tabular benchmark) is one
``Evaluator`` (``hwnas.selection.evaluate``)."""
from hwnas.selection.evaluate import Evaluator, SupernetPath, TrainFromScratch, evaluate_path, recalibrate_bn
from hwnas.selection.loop import read_trials, run_trials
from hwnas.selection.bayesian import TPESelector
from hwnas.selection.controller import ControllerSelector
from hwnas.selection.evolution import RegularizedEvolution
from hwnas.selection.random_search import RandomSelector
from hwnas.selection.selector import SELECTORS, Selector, get_selector, register

__all__ = ["SELECTORS", "ControllerSelector", "Evaluator", "RandomSelector", "RegularizedEvolution", "TPESelector", "Selector", "SupernetPath", "TrainFromScratch",
           "evaluate_path", "get_selector", "read_trials", "recalibrate_bn", "register", "run_trials"]
