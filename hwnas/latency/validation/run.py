"""Predicted vs measured latency of whole networks, and the calibration that closes the gap.

``validate`` samples random architectures of a space (``sampling.sample_archs``: spread over the latency
range by default, or uniform per layer), predicts each with the table (the sum of its blocks) and measures
each whole network end to end on the table's runtime, at the table's deploy shape, in interleaved rounds,
reading the same statistic the table's rows use (``p10`` for tables profiled since the statistic became an
option: the low quantile is the latency without interference from whatever else the machine runs; on a
shared VM the median carries such noise in every measurement; measurements: docs/measurements.md, 'Which
statistic (p10/p50)'). The samples are split in two: a calibration (``hwnas.latency.calibration``: the
affine ``measured ~ a + b * sum``, or per-block-type scales, whichever predicts the fit part better when
each fit network is left out in turn) is fitted on the first part only, and every figure is reported on
the held-out part, before and after calibration (and for the affine form beside a grouped one): the share
within +-5% and +-10%, the mean absolute percentage error and Kendall's tau (``figures``). The sum of
per-block latencies misses what lies between blocks (per-call
overhead of each block's session, memory traffic between blocks, fusion across block boundaries): the
offset absorbs what is the same in every network, the scales what grows with the blocks. ``refit`` fits
again on an earlier run's measurements. ``statistic.pick_statistic`` chooses the quantile a table is read
at (p10 or p50) by the fit part alone; ``figures.repeatability`` and ``figures.tau_ceiling`` give the
measurement's own noise and the figures a perfect predictor would reach under it.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import time
from pathlib import Path

from hwnas.latency.measure.timing import Runner, measure_interleaved
from hwnas.latency.predictor import LatencyModel
from hwnas.latency.validation.figures import ValidationReport, _scatter, _with_tau_ceiling, repeatability
from hwnas.latency.validation.sampling import sample_archs
from hwnas.latency.validation.statistic import (_STATISTIC_COLUMNS, _fit_and_report, _on_common_level, _split,
                                                anchor_positions, chunk_factors, fit_rows, pick_statistic)
from hwnas.onnx import PROVIDERS
from hwnas.spaces import Arch, atomic_write_text
from hwnas.spaces.builder import build_child
from hwnas.spaces.chain import ChainSpace

log = logging.getLogger("hwnas.latency")

# torch eager on a CPU is validated 10 networks at a time: with all 100 alive and interleaved, each network
# measured well above what it measures alone in a fresh process, more the more networks were alive, so a
# calibration fitted there over-predicted a deployed model by about that much; among 10 a network measured
# about what it does alone. ONNX Runtime sessions do not show it (measurements: docs/measurements.md,
# 'Validating torch eager networks in chunks of 10').
TORCH_CPU_CHUNK = 10
# Networks timed in every chunk, whose median ratio between chunks is each chunk's machine speed.
ANCHORS = 3


def table_runtime(meta: dict) -> tuple[str | None, str | None]:
    """``(mode, provider)`` a table was profiled with, as ``measure_module`` takes them."""
    if meta.get("backend") == "torch":
        return meta.get("mode") or "eager", None
    names = {v: k for k, v in PROVIDERS.items()}
    return None, names.get(meta.get("provider"), "cpu")


def validate(table, space: ChainSpace, config: dict, out_dir: str | os.PathLike, *, samples: int = 100,
             fit_fraction: float = 0.5, seed: int = 0, warmup: int = 10, iterations: int = 50, rounds: int = 5,
             sampling: str = "spread", chunk: int | None = None, min_round_s: float = 1.0,
             repeats: int = 10, choose_statistic=None, progress=None) -> ValidationReport:
    """Measure ``samples`` random architectures (``sample_archs`` with ``sampling``) end to end and write
    ``samples.csv``, ``report.json`` and ``scatter.png`` into ``out_dir``. Networks are taken ``chunk`` at
    a time (default: all at once, except torch eager on a CPU: ``TORCH_CPU_CHUNK``): prepared (exported,
    session opened), then timed in ``rounds`` interleaved rounds of at least ``min_round_s``
    (``measure_interleaved``), then released. Interleaving is what makes the figures comparable: a shared
    VM's speed drifts over minutes, and chunks timed one after another once turned that drift into a
    residual correlated with the sample index, and fewer held-out networks within +-10% (measurements:
    docs/measurements.md, 'Drift between chunks timed one after another'). So when there are several
    chunks, ``ANCHORS`` networks spread over the predicted range are built once and timed in every chunk,
    and each chunk's measurements are divided by its factor (``chunk_factors``: the anchors' median ratio
    to their own median over all chunks), one factor per quantile, each divided out of that quantile (the
    factors are in the report and each sample's row, the anchors' own timings in ``anchor_timings``). The
    fit half is drawn at random (``fit_rows``).
    Every ``samples / repeats``-th network is also built a second time and timed as a separate network in the
    same rounds: how often two instances of one network agree (``repeatability``: share within +-5% and
    +-10%, median and largest difference) is the noise of the measurement itself. Two measurements differ
    by about sqrt(2) times one measurement's own error, so a perfect predictor would land within +-10% of a
    single measurement about as often as the twins differ by at most 10% x sqrt(2) (``perfect_within_5pct``,
    ``perfect_within_10pct``): the ceiling of the figures above on this machine, at this moment.
    ``choose_statistic`` (a sequence such as ``STATISTIC_CANDIDATES``): read table and networks at whichever of
    them the fit rows predict best (``pick_statistic``; the choice is in the report and the calibration)
    instead of the table's own statistic; ``table.meta["statistic"]`` is left at the chosen one.
    Refuses (ValueError) a table profiled on another machine (``machine_problem``); ``refit`` does not
    measure and takes any.
    ``progress(done, total)`` counts networks prepared and network-rounds timed. Returns the report;
    the caller decides whether to store the calibration in the table (``table.meta["calibration"]``)."""
    from hwnas.latency.drift import machine_problem

    meta = table.meta
    why = machine_problem(meta)
    if why:  # its networks would measure this machine, and the calibration stored would describe it
        raise ValueError(f"{getattr(table, 'path', 'the table')}: cannot validate here: {why} (profile this "
                         "machine's own table with `hwnas profile`, then validate that)")
    backend, threads = meta["backend"], int(meta.get("threads", 1))
    mode, provider = table_runtime(meta)
    device = (meta.get("device") or {}).get("type") or ("cpu" if provider in (None, "cpu") else "cuda")
    res, batch = int(meta["resolution"]), int(meta.get("batch", 1))
    model = LatencyModel(table, space, config, calibrated=False)
    _split(samples, fit_fraction)  # refuse too few samples before measuring anything
    archs = sample_archs(space, config, samples, seed, sampling=sampling, model=model)
    if repeats < 0:
        raise ValueError(f"repeats must be >= 0, got {repeats}")
    if chunk is not None and chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    n = len(archs)
    repeats = min(int(repeats), n)
    twins_of = {round(k * n / repeats) for k in range(repeats)} if repeats else set()  # spread over the chunks
    chunk = chunk or (TORCH_CPU_CHUNK if backend == "torch" and device == "cpu" else n)
    chunks = [list(range(first, min(first + chunk, n))) for first in range(0, n, chunk)]
    stat = getattr(table, "statistic", "p50")  # measured networks are read with the table's own statistic
    anchors = anchor_positions([model.of_tokens(a) for a in archs], ANCHORS) if len(chunks) > 1 else []
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    total = (n + repeats + len(anchors)) + rounds * (n + repeats + len(anchors) * len(chunks))
    done, stats, repeat_stats, anchor_stats = 0, [], {}, []

    def tick(_d=None, _n=None):
        nonlocal done
        done += 1
        if progress:
            progress(done, total)

    def runner(tokens):
        net = build_child(Arch(space.name, config, tokens))
        r = Runner(net, (batch, 3, res, res), backend=backend, device=device, threads=threads,
                   dtype=meta.get("dtype", "fp32"), mode=mode, provider=provider)
        tick()
        return r

    anchor_runners = [runner(archs[i]) for i in anchors]  # built once, timed in every chunk
    for indices in chunks:
        runners = [runner(archs[i]) for i in indices]
        twins = [i for i in indices if i in twins_of]
        runners += [runner(archs[i]) for i in twins]  # second instances, timed in the same rounds
        measured = measure_interleaved(runners + anchor_runners, warmup=warmup, iterations=iterations, rounds=rounds,
                                       min_round_s=min_round_s, progress=tick)
        stats += measured[:len(indices)]
        repeat_stats.update(zip(twins, measured[len(indices):len(indices) + len(twins)], strict=True))
        anchor_stats.append(measured[len(runners):])
        del runners
    del anchor_runners
    # one factor per chunk and quantile: on a host with an intermittent fast mode the anchors' p10 can catch
    # it in a chunk where their p50 does not, and a p10 factor divided into the p50 measurements then puts
    # every network of that chunk above its prediction (measurements: docs/measurements.md, 'Chunk factors
    # per quantile')
    factors_by = ({q: chunk_factors([[a[q] for a in chunk] for chunk in anchor_stats]) for q in _STATISTIC_COLUMNS}
                  if anchors else {q: [1.0] * len(chunks) for q in _STATISTIC_COLUMNS})
    chunk_of = {i: c for c, indices in enumerate(chunks) for i in indices}
    factors_of = {i: {q: f[chunk_of[i]] for q, f in factors_by.items()} for i in chunk_of}
    # every statistic of a network is put on the anchors' common level (its chunk's factor at that statistic)
    stats = [_on_common_level(st, factors_of[i]) for i, st in enumerate(stats)]
    repeat_stats = {i: _on_common_level(st, factors_of[i]) for i, st in repeat_stats.items()}
    rows = [{"index": i, "predicted_sum_ms": model.of_tokens(tokens), "measured_ms": st[stat],
             "measured_p10_ms": st["p10"], "measured_p50_ms": st["p50"], "measured_p90_ms": st["p90"],
             "arch": " ".join(tokens), "repeat_ms": repeat_stats[i][stat] if i in repeat_stats else "",
             **{f"repeat_{q}_ms": repeat_stats[i][q] if i in repeat_stats else "" for q in ("p10", "p50", "p90")},
             "chunk_factor": factors_of[i][stat], **{f"chunk_factor_{q}": factors_of[i][q] for q in _STATISTIC_COLUMNS}}
            for i, (tokens, st) in enumerate(zip(archs, stats, strict=True))]
    _write_samples(rows, out)  # the measurements are kept even if the fit below fails (--refit recovers them)
    fit_at = fit_rows(len(rows), fit_fraction, seed)
    try:
        choice = None
        if choose_statistic:
            choice = pick_statistic(table, space, config, rows, fit_at, choose_statistic)
            stat, model = choice["chosen"], LatencyModel(table, space, config, calibrated=False)
        report = _fit_and_report(table, space, config, model, rows, fit_at, seed=seed, stat=stat)
        if choice:
            report.calibration["anchor_weight"] = choice["anchor_weight"]
    except ValueError as e:
        raise ValueError(f"{e} (the measurements are kept in {out / 'samples.csv'}; `hwnas latency validate "
                         f"--refit {out}` fits again without measuring)") from None
    report.seconds = time.perf_counter() - started
    report.sampling, report.rounds, report.iterations = sampling, rounds, iterations
    report.repeatability, report.statistic_choice = _with_tau_ceiling(repeatability(rows, stat), rows), choice
    report.chunk = chunk
    if anchors:
        report.chunk_factors = [float(f) for f in factors_by[stat]]
        report.chunk_factors_by_statistic = {q: [float(x) for x in f] for q, f in factors_by.items()}
        report.anchor_timings = [[{q: float(a[q]) for q in _STATISTIC_COLUMNS} for a in chunk] for chunk in anchor_stats]
    _write(report, rows, out, meta, stat)
    return report


def _write_samples(rows: list[dict], out: Path) -> None:
    with open(out / "samples.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        w.writeheader()
        w.writerows(rows)


def _write(report: ValidationReport, rows: list[dict], out: Path, meta: dict, stat: str) -> None:
    _write_samples(rows, out)
    atomic_write_text(out / "report.json", json.dumps(report.to_dict(), indent=2) + "\n")
    _scatter(rows, out / "scatter.png", f"{report.space} on {meta.get('device', {}).get('slug', '?')} ({report.backend})", stat)


def refit(table, space, config, run_dir: str | os.PathLike, *, choose_statistic=None) -> ValidationReport:
    """Fit the calibration again on the measurements of an earlier ``validate`` run (its ``samples.csv``),
    without measuring anything: for a table whose calibration forms have changed since, or a run whose fit
    failed. The run's own split is kept (its ``split`` column), the plain sums are recomputed from the
    table as it is now, the measured column is the table's statistic (``measured_<stat>_ms``; a table whose
    statistic was changed since, ``hwnas latency validate --statistic``, is refitted on that column), the
    report, samples and scatter plot are rewritten in place, and the run's timing facts (seconds, rounds,
    iterations) are kept; the noise floor is read again at the statistic when the run stored its twins at
    every statistic (runs since 2026-11-27), else kept as the run read it. ``choose_statistic``: as in
    ``validate`` (``pick_statistic`` on the run's fit rows)."""
    out = Path(run_dir)
    path = out / "samples.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: --refit takes the directory of an earlier validate run")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    need = {"index", "predicted_sum_ms", "measured_ms", "arch"}
    if not rows or need - set(rows[0]):
        raise ValueError(f"{path} is not a validate samples file (needs columns {', '.join(sorted(need))})")
    stat = getattr(table, "statistic", "p50")
    old = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else {}
    run_stat = old.get("calibration", {}).get("statistic")
    column = f"measured_{stat}_ms"
    if column not in rows[0]:
        if run_stat not in (None, stat):
            raise ValueError(f"{path} has no {column} column and its measured_ms was read at {run_stat}: "
                             f"to read the table at {stat}, validate again instead of --refit")
        column = "measured_ms"
    model = LatencyModel(table, space, config, calibrated=False)
    for r in rows:
        try:
            r["index"] = int(r["index"])
            for k in ("predicted_sum_ms", "measured_ms", "measured_p10_ms", "measured_p50_ms", "measured_p90_ms"):
                if r.get(k) not in (None, ""):
                    r[k] = float(r[k])
        except ValueError as e:
            raise ValueError(f"{path} row {r.get('index')}: {e}") from None
        r["measured_ms"] = float(r[column])
        tokens = r["arch"].split(" ")
        if len(tokens) != model.num_layers:
            raise ValueError(f"{path} row {r['index']}: {len(tokens)} layers, the table's space has {model.num_layers}")
        bad = [t for t, c in zip(tokens, model.choices, strict=True) if t not in c]
        if bad:
            raise ValueError(f"{path} row {r['index']}: {bad[0]!r} is not a choice of {space.name} at that layer")
        r["predicted_sum_ms"] = model.of_tokens(tokens)  # the table as it is now
    rows.sort(key=lambda r: r["index"])
    splits = [r.get("split") for r in rows]
    if not set(splits) <= {"fit", "held_out"}:
        raise ValueError(f"{path}: its split column holds {sorted(set(map(str, splits)) - {'fit', 'held_out'})}; "
                         "expected fit / held_out (this is not a validate run's samples file)")
    fit_at = {k for k, sp in enumerate(splits) if sp == "fit"}
    n_fit = len(fit_at)
    if len(rows) - n_fit < 2 or n_fit < 3:
        raise ValueError(f"{path}: {n_fit} fit and {len(rows) - n_fit} held-out rows; need at least 3 and 2")
    choice = None
    if choose_statistic:
        choice = pick_statistic(table, space, config, rows, fit_at, choose_statistic)
        stat, model = choice["chosen"], LatencyModel(table, space, config, calibrated=False)
    report = _fit_and_report(table, space, config, model, rows, fit_at,
                             seed=int(old.get("calibration", {}).get("samples_seed", 0)), stat=stat)
    if choice:
        report.calibration["anchor_weight"] = choice["anchor_weight"]
    for key in ("seconds", "sampling", "rounds", "iterations", "repeatability", "chunk", "chunk_factors",
                "chunk_factors_by_statistic", "anchor_timings"):
        if key in old:
            setattr(report, key, old[key])
    if rows and f"repeat_{stat}_ms" in rows[0]:
        report.repeatability = repeatability(rows, stat)
    if report.chunk_factors_by_statistic and stat in report.chunk_factors_by_statistic:
        report.chunk_factors = report.chunk_factors_by_statistic[stat]
    report.repeatability = _with_tau_ceiling(report.repeatability, rows)
    report.statistic_choice = choice
    _write(report, rows, out, table.meta, stat)
    return report
