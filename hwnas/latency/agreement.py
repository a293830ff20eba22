"""Do two profiles of one latency table agree? Row by row, at one statistic.

Issue 3 asks that two profiles of the same table agree within 5% on the median of each row. This module
holds two tables' rows against each other: the share of common rows whose statistic differs by at most
``tolerance``, the largest difference, the ratio of the row sums, and the same share after dividing out
the median ratio -- "within 5%" is symmetric, ``1/1.05 <= b/a <= 1.05``, so the answer does not depend on
which table is first. A machine that ran uniformly slower during one profile moves every row alike (that is
drift, which the table's reference networks compensate at prediction time), while rows that disagree
after the common factor is gone are the profile's own noise.

    hwnas latency agreement --table A.csv --other B.csv [--statistic p50] [--tolerance 0.05]
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from hwnas.latency.reference import machine_factor
from hwnas.latency.table import LatencyTable, LatencyTableError

# sidecar keys that must match for rows to be the same measurement; the others are reported, not refused
MUST_MATCH = ("space", "resolution", "batch", "dtype")
REPORTED = ("device", "backend", "provider", "mode", "threads", "context", "statistic", "iterations", "rounds")
STATISTICS = ("p10", "p50", "mean", "p90")


@dataclass
class Agreement:
    """Row-by-row comparison of table ``b`` against table ``a`` at one statistic."""

    statistic: str
    tolerance: float
    ratios: pd.Series  # b / a per common signature
    only_a: list[str]
    only_b: list[str]
    differences: dict  # sidecar key -> (a's value, b's value) for REPORTED keys that differ
    sum_ratio: float  # sum of b's common rows / sum of a's

    @property
    def rows(self) -> int:
        return len(self.ratios)

    def _count_within(self, ratios: np.ndarray) -> int:
        return int((np.abs(np.log(ratios)) <= np.log1p(self.tolerance) + 1e-12).sum())

    @property
    def within(self) -> int:
        return self._count_within(self.ratios.to_numpy())

    @property
    def share(self) -> float:
        return self.within / self.rows

    @property
    def largest(self) -> tuple[str, float]:
        """The signature whose ratio is farthest from 1 (in log: x2 as far as /2), and that ratio."""
        return self.worst(1)[0]

    @property
    def common_factor(self) -> float:
        """Median ratio b / a over the common rows: the machine-wide difference between the two profiles
        (``reference.machine_factor``, the same median the drift compensation takes)."""
        return machine_factor(self.ratios.to_numpy(), np.ones(self.rows))

    @property
    def within_after_common(self) -> int:
        return self._count_within(self.ratios.to_numpy() / self.common_factor)

    def worst(self, n: int) -> list[tuple[str, float]]:
        order = np.log(self.ratios).abs().sort_values(ascending=False, kind="stable").index[:n]
        return [(str(s), float(self.ratios[s])) for s in order]

    def summary(self) -> str:
        sig, ratio = self.largest
        return (f"{self.statistic}: {self.within}/{self.rows} rows ({self.share:.0%}) agree within "
                f"+-{self.tolerance * 100:g}%; largest difference {ratio - 1:+.1%} ({sig}); sum of rows {self.sum_ratio:.3f}x; "
                f"after dividing out the common factor {self.common_factor:.3f}: {self.within_after_common}/{self.rows} "
                f"({self.within_after_common / self.rows:.0%})")


def _meta(table: LatencyTable, key: str):
    value = table.meta.get(key)
    return value.get("slug") if key == "device" and isinstance(value, dict) else value


def _name(table: LatencyTable) -> str:
    return str(table.path) if table.path is not None else "(unsaved)"


def compare_tables(a: LatencyTable, b: LatencyTable, statistic: str | None = None,
                   tolerance: float = 0.05) -> Agreement:
    """Hold ``b``'s rows against ``a``'s at ``statistic`` (default: ``a``'s own statistic).

    Refuses tables of different space / resolution / batch / dtype (their rows are not the same blocks) and
    tables with no signature in common; other sidecar differences (backend, threads, ...) are listed in
    ``differences``.
    """
    if not 0 < tolerance < 1:
        raise ValueError(f"agreement tolerance must be in (0, 1), got {tolerance}")
    statistic = statistic or a.statistic
    if statistic not in STATISTICS:
        raise ValueError(f"agreement statistic {statistic!r} must be one of {STATISTICS}")
    for key in MUST_MATCH:
        if str(a.meta.get(key)) != str(b.meta.get(key)):
            raise LatencyTableError(f"tables {_name(a)} and {_name(b)} are not profiles of one table: {key} "
                                    f"{a.meta.get(key)!r} vs {b.meta.get(key)!r}")
    common = [s for s in a.df.index if s in b.df.index]
    if not common:
        raise LatencyTableError(f"tables {_name(a)} and {_name(b)} have no row in common")
    va = a.df.loc[common, statistic].astype(float)
    vb = b.df.loc[common, statistic].astype(float)
    for name, v in ((_name(a), va), (_name(b), vb)):
        bad = v[~(v > 0)]
        if len(bad):
            raise LatencyTableError(f"table {name}: row {bad.index[0]!r} has {statistic} {float(bad.iloc[0])!r}; agreement "
                                    f"needs positive rows ({len(bad)} not)")
    differences = {k: (_meta(a, k), _meta(b, k)) for k in REPORTED if _meta(a, k) != _meta(b, k)}
    return Agreement(statistic=statistic, tolerance=tolerance, ratios=vb / va,
                     only_a=[s for s in a.df.index if s not in b.df.index],
                     only_b=[s for s in b.df.index if s not in a.df.index],
                     differences=differences, sum_ratio=float(vb.sum() / va.sum()))
