"""Validating a latency table: predicted against measured latency of whole networks, and the calibration
that closes the gap.

``run`` measures and refits (``validate``, ``refit``); ``statistic`` fits the calibration and chooses the
statistic it is read at; ``figures`` holds the reported figures and the noise floor; ``sampling`` draws
the architectures. The public names of all four are importable from here.
"""
from hwnas.latency.validation.figures import ValidationReport, error_figures, kendall_tau, repeatability, tau_ceiling
from hwnas.latency.validation.run import ANCHORS, TORCH_CPU_CHUNK, refit, table_runtime, validate
from hwnas.latency.validation.sampling import SAMPLINGS, sample_archs
from hwnas.latency.validation.statistic import (ANCHOR_WEIGHTS, STATISTIC_CANDIDATES, anchor_positions, chunk_factors,
                                                fit_rows, pick_statistic)

__all__ = [
    "ANCHORS",
    "ANCHOR_WEIGHTS",
    "SAMPLINGS",
    "STATISTIC_CANDIDATES",
    "TORCH_CPU_CHUNK",
    "ValidationReport",
    "anchor_positions",
    "chunk_factors",
    "error_figures",
    "fit_rows",
    "kendall_tau",
    "pick_statistic",
    "refit",
    "repeatability",
    "sample_archs",
    "table_runtime",
    "tau_ceiling",
    "validate",
]
