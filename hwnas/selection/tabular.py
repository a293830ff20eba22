"""Tabular evaluation: a benchmark file that holds every architecture's result, so a trial costs a lookup
(NAS-Bench-201, Dong & Yang 2020; with HW-NAS-Bench's latencies, Li et al. 2021), and random search's
expected best is known exactly.

The file is a CSV with a column ``arch`` (the space's own architecture strings: NAS-Bench-201's
``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|`` on ``nb201``, the tokens separated by spaces elsewhere), the
accuracy column named by ``--metric``, and optionally a latency column in ms (``--latency-column``) that
then replaces the LUT. Every architecture the space has must be in it exactly once (a selector may
propose any of them); a malformed file is refused in one line naming the row.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np

from hwnas.selection.evaluate import Evaluator


class BenchmarkError(ValueError):
    """A benchmark file that cannot be used (one line, naming the file and the problem)."""


def space_size(space, config) -> int | None:
    """How many architectures ``space`` has, when its decisions are independent (None otherwise)."""
    if space.decision_groups() is not None:
        return None
    return math.prod(len(d.choices) for d in space.decisions(config))


class TabularBenchmark:
    """The rows of a benchmark file: architecture (tokens) -> (metric, latency or None)."""

    def __init__(self, path, space, config: dict, metric: str, latency_column: str | None = None):
        import pandas as pd

        self.path, self.space, self.metric, self.latency_column = Path(path), space, metric, latency_column
        try:
            frame = pd.read_csv(self.path)
        except FileNotFoundError:
            raise BenchmarkError(f"--benchmark {self.path}: no such file") from None
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise BenchmarkError(f"--benchmark {self.path}: not a CSV file ({str(e).splitlines()[0]})") from None
        for col, what in (("arch", "the architecture strings"), (metric, "--metric"),
                          (latency_column, "--latency-column")):
            if col is not None and col not in frame.columns:
                raise BenchmarkError(f"--benchmark {self.path}: no column {col!r} ({what}); it has "
                                     f"{', '.join(map(str, frame.columns))}")
        self.rows: dict[tuple[str, ...], tuple[float, float | None]] = {}
        for i, row in enumerate(frame.itertuples(index=False), start=2):  # line 1 is the header
            rec = dict(zip(frame.columns, row))
            where = f"--benchmark {self.path}:{i}"
            try:
                layers = tuple(space.parse_arch_string(rec["arch"], where))
            except ValueError as e:  # ArchError
                raise BenchmarkError(str(e)) from None
            if layers in self.rows:
                raise BenchmarkError(f"{where}: {rec['arch']} appears twice")
            value = _number(rec[metric], f"{where}: {metric}")
            lat = None
            if latency_column is not None:
                lat = _number(rec[latency_column], f"{where}: {latency_column}")
                if lat <= 0:
                    raise BenchmarkError(f"{where}: {latency_column} = {lat} is not a positive latency in ms")
            self.rows[layers] = (value, lat)
        if not self.rows:
            raise BenchmarkError(f"--benchmark {self.path}: no rows")
        size = space_size(space, config)
        if size is not None and len(self.rows) != size:
            missing = next(a for a in space.all_archs(config) if tuple(a) not in self.rows)
            raise BenchmarkError(f"--benchmark {self.path}: holds {len(self.rows)} of the {size} architectures of space "
                                 f"{space.name!r} (missing e.g. {space.arch_string(missing)}); a tabular search needs "
                                 f"every one")
        if size is None:
            raise BenchmarkError(f"--benchmark {self.path}: space {space.name!r} cannot be tabulated whole "
                                 f"(its decisions constrain each other); tabular search runs on spaces like nb201")

    def value(self, layers) -> float:
        try:
            return self.rows[tuple(layers)][0]
        except KeyError:
            raise BenchmarkError(f"--benchmark {self.path}: no row for {self.space.arch_string(list(layers))}") from None

    def digest(self) -> str:
        h = hashlib.sha1()
        with open(self.path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()[:12]


def _number(value, where: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if not math.isfinite(v):
        raise BenchmarkError(f"{where} = {value!r} is not a finite number")
    return v


class TabularLatency:
    """A benchmark's latency column as the selectors' latency model: ``of_tokens`` looks an architecture up,
    ``extremes`` gives the fastest and the slowest (the target's range), ``feasible(T)`` lists those within T
    (random search draws uniformly among them)."""

    def __init__(self, bench: TabularBenchmark):
        if bench.latency_column is None:
            raise ValueError("a tabular latency model needs --latency-column")
        self.bench = bench
        self._sorted = sorted(bench.rows.items(), key=lambda kv: kv[1][1])

    def of_tokens(self, layers) -> float:
        try:
            return self.bench.rows[tuple(layers)][1]
        except KeyError:
            raise BenchmarkError(f"--benchmark {self.bench.path}: no row for "
                                 f"{self.bench.space.arch_string(list(layers))}") from None

    def extremes(self):
        (fast, (_, lo)), (slow, (_, hi)) = self._sorted[0], self._sorted[-1]
        return (lo, list(fast)), (hi, list(slow))

    def feasible(self, upper_ms: float) -> list[tuple[str, ...]]:
        return [a for a, (_, lat) in self._sorted if lat <= upper_ms]


class Tabular(Evaluator):
    """A trial is a lookup of the benchmark's ``metric`` (returned as ``accuracy``)."""

    def __init__(self, bench: TabularBenchmark):
        self.bench = bench
        self._digest = bench.digest()

    def evaluate(self, layers: list[str], seed: int) -> dict:
        return {"accuracy": self.bench.value(layers)}

    def settings(self) -> dict:
        return {"evaluator": "tabular", "benchmark": str(self.bench.path), "sha1": self._digest,
                "metric": self.bench.metric, "latency_column": self.bench.latency_column}


def expected_best_of_random(values, n: int, moment: int = 1) -> float:
    """E[max] of ``n`` distinct draws, uniform without replacement, from ``values`` (random search's best
    after ``n`` trials over the feasible set; the loop never evaluates an architecture twice). With the
    values sorted ``v_1 <= ... <= v_M``, ``P(max = v_k) = (C(k-1, n-1)) / C(M, n)``, so
    ``E = sum_k v_k C(k-1, n-1) / C(M, n)``; computed with log-gammas. ``n >= M`` gives the maximum.
    ``moment=2`` gives ``E[max^2]`` (for the spread: ``std_best_of_random``)."""
    v = np.sort(np.asarray(values, dtype=np.float64))
    m = len(v)
    if m == 0 or n < 1:
        raise ValueError("the expectation needs at least one value and n >= 1")
    if n >= m:
        return float(v[-1]) ** moment
    lg = math.lgamma
    log_total = lg(m + 1) - lg(n + 1) - lg(m - n + 1)
    w = np.array([math.exp(lg(k) - lg(n) - lg(k - n + 1) - log_total) for k in range(n, m + 1)])
    return float(np.sum(v[n - 1:] ** moment * w))


def std_best_of_random(values, n: int) -> float:
    """The standard deviation of random search's best after ``n`` distinct uniform draws (exact)."""
    mean = expected_best_of_random(values, n)
    return float(np.sqrt(max(0.0, expected_best_of_random(values, n, 2) - mean**2)))
