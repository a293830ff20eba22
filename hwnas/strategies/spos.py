"""Single Path One-Shot (Guo, Zhang, Mu, Heng, Liu, Wei, Sun. "Single Path One-Shot Neural Architecture Search
with Uniform Sampling", ECCV 2020).

- Supernet training (Sec. 3.2, eq. 7-8): no architecture parameters; every weight step trains one path
  drawn uniformly (``Gamma(a)`` uniform), each decision independently (a cell: uniform over its legal
  genotypes), with the search loop's SGD. Candidates off the path get no gradient (``None``), so they take
  no momentum or weight-decay step, as the released code sets their gradients to ``None``.
- Selection (Sec. 3.4): evolution over paths of the trained supernet
  (``hwnas.selection.spos_evolution.SPOSEvolution``: generations of mutants and crossovers of the top-k,
  filled with random), each candidate first held to the latency window ``[0.9 T, T]`` by the table
  (the code's ``is_legal``), then scored with its BatchNorm statistics recalibrated on training batches
  (Sec. 3.3; ``calibration_batches``, the code's 200 x 128 images scaled to the proxy) on the validation
  split. The paper's search runs population 50, top-k 10, 20 iterations, mutation probability 0.1 (about
  1,050 evaluations); the defaults here are that search scaled to a proxy budget (population 20, top-k 5,
  5 iterations: at most 120 evaluations, about a minute on digits on a 2-core CPU); ``--opt population=50
  topk=10 iterations=20`` runs the paper's.
- Weights: ``shared`` (default on chain spaces) cuts a layer's kernel x expansion candidates out of one
  MBConv (``hwnas.mixed.shared_gate``), ``separate`` gives each its own, as the paper does; on a small
  proxy the separate-weight supernet learns far more slowly (docs/methods.md).
"""
from __future__ import annotations

from hwnas.selection.spos_evolution import SPOSEvolution
from hwnas.strategies.base import register
from hwnas.strategies.sampling import SamplingStrategy

EVOLUTION_DEFAULTS = {"population": 20, "topk": 5, "iterations": 5, "mutation_prob": 0.1}


@register
class SPOS(SamplingStrategy):
    name = "spos"
    defaults = {**SamplingStrategy.defaults, **EVOLUTION_DEFAULTS}

    def evolution_options(self) -> dict:
        return {k: self.options[k] for k in EVOLUTION_DEFAULTS}

    def selection_budget(self) -> int:
        return SPOSEvolution.budget(**self.evolution_options())

    def make_selector(self, context):
        return SPOSEvolution(self.space, self.config, seed=0, latency=context.latency, window=context.window,
                             **self.evolution_options())
