"""How fast this machine runs now against the day a table was validated: the table's reference networks
(``hwnas.latency.reference``) timed again, on the table's own runtime and deploy shape.

A calibrated table predicts the machine as it ran during its validation. A cloud VM does not keep that
speed: a day later a table's references can run well off their validation latency, networks the
validation never saw (each alone in a fresh process) then miss their predictions by about that factor,
and land close to them once divided by it (``tools/independent_check.py``; measurements:
docs/measurements.md, 'Machine drift'). ``hwnas latency drift`` measures the factor in
seconds, so a user sees before a search whether the table still describes the machine: a factor far from
1 means either re-profiling, or stating an absolute target on the table's scale (``target / factor``;
``hwnas search --machine-factor``).
"""
from __future__ import annotations

import torch

from hwnas.latency.reference import machine_factor, reference_networks


def drift_problem(table) -> str | None:
    """Why this machine cannot time ``table``'s references now (None when it can)."""
    meta = table.meta
    cal = meta.get("calibration") or {}
    if not cal.get("references"):
        return ("the table's calibration has no reference networks (run `hwnas latency validate` on it, or "
                "--refit an earlier validation)")
    if cal.get("statistic", table.statistic) != table.statistic:
        return f"the references were measured at {cal['statistic']}, the table reads {table.statistic}"
    return machine_problem(meta, "validated")


def machine_problem(meta: dict, done: str = "profiled") -> str | None:
    """Why this machine is not the one a table (its sidecar ``meta``) was ``done`` on: another device slug
    (CPU model and thread count, or GPU name), or a CUDA table on a machine without CUDA. None when it is
    the same. Timing a table's networks elsewhere measures another machine: its validation would store that
    machine's calibration in the table, and drift would be the two machines' ratio."""
    from hwnas.device import device_slug

    dev = meta.get("device") or {}
    threads = int(meta.get("threads", 1))
    if dev.get("type") == "cuda":
        if not torch.cuda.is_available():
            return f"the table was {done} on {dev.get('slug')} (CUDA) and this machine has no CUDA device"
        here = device_slug("cuda:0")
    else:
        here = device_slug("cpu", threads)
    if dev.get("slug") and dev["slug"] != here:
        return f"the table was {done} on {dev['slug']}, this is {here}"
    return None


def measure_drift(table, *, warmup: int = 10, iterations: int = 100, rounds: int = 5,
                  min_round_s: float = 1.0) -> dict:
    """Time ``table``'s reference networks now, interleaved, at the table's statistic, runtime, threads and
    deploy shape. Returns ``{"factor", "ratios", "now_ms", "then_ms", "statistic"}``: ``factor`` is the
    median ratio now/then (> 1: the machine runs slower than at validation, and measured latencies now are
    about ``factor`` x the table's calibrated predictions). Raises ValueError (``drift_problem``) when the
    references cannot be timed here."""
    from hwnas.latency.measure.timing import Runner, measure_interleaved
    from hwnas.latency.validation.run import table_runtime

    why = drift_problem(table)
    if why:
        raise ValueError(f"{getattr(table, 'path', 'the table')}: cannot measure drift: {why}")
    meta = table.meta
    mode, provider = table_runtime(meta)
    threads, res, batch = int(meta.get("threads", 1)), int(meta["resolution"]), int(meta.get("batch", 1))
    device = "cuda:0" if (meta.get("device") or {}).get("type") == "cuda" else "cpu"
    saved_threads = torch.get_num_threads()  # timed at the table's threads; the caller's setting restored after
    if device == "cpu":
        torch.set_num_threads(threads)
    try:
        nets = reference_networks(table)
        runners = [Runner(net, (batch, 3, res, res), backend=meta["backend"], device=device, threads=threads,
                          dtype=meta.get("dtype", "fp32"), mode=mode, provider=provider) for net, _ in nets]
        stats = measure_interleaved(runners, warmup=warmup, iterations=iterations, rounds=rounds,
                                    min_round_s=min_round_s)
    finally:
        torch.set_num_threads(saved_threads)
    stat = table.statistic
    now, then = [float(s[stat]) for s in stats], [ms for _, ms in nets]
    return {"factor": machine_factor(now, then), "ratios": [n / t for n, t in zip(now, then, strict=True)],
            "now_ms": now, "then_ms": then, "statistic": stat}
