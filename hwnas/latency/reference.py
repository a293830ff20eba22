"""Reference networks: drift compensation between a table's validation and a later measurement.

A latency table's calibration is fitted on whole networks measured during ``hwnas latency validate``; its
predictions describe the machine as it ran then. A shared machine does not stay that machine: the same
exported model, timed twice minutes apart, can read far apart, and derived models can land well off their
predictions although the table's held-out networks were all within 10%. Networks measured in the same
rounds move together (three networks of the validation re-timed beside a model drifted by nearly the same
factor at one moment, and by another common factor at another), so the validation keeps ``REFERENCES`` of
its fit networks with their measured latency (``calibration["references"]``), and a later measurement
times the model in the same interleaved rounds as those networks rebuilt: the median ratio now/then is
the state of the measurement relative to the validation (``machine_factor``: the machine's drift, and any
steady difference between the validation's rounds of ~100 networks and an export's few), and
``measured / factor`` is the model's latency as the validation would have measured it, the state the
prediction describes. Measured this way (``tools/drift_references.py``,
``bench/results/cpu-amd-epyc-2t/drift-references.md``), the same model's error against its prediction
came much closer to zero than in its raw repeats (measurements: docs/measurements.md, 'Machine drift').

The references are rebuilt with fresh weights from the table's own space config and deploy shape: weights do not change
the latency (checked: a searched child with inherited weights and the same architecture with fresh
weights measured the same p10 interleaved, within noise; no denormals in either).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

REFERENCES = 3


def pick_references(rows: Sequence[Mapping], n: int = REFERENCES) -> list[dict]:
    """``n`` of the validation's fit rows (``arch``, ``measured_ms``) at evenly spaced quantiles of their
    measured latency (the 25th, 50th and 75th percentiles for 3), as ``{"arch": tokens, "ms": measured}``."""
    ordered = sorted(rows, key=lambda r: float(r["measured_ms"]))
    if not ordered or n < 1:
        return []
    picks = sorted({int(round(q * (len(ordered) - 1))) for q in np.linspace(0, 1, n + 2)[1:-1]})
    return [{"arch": str(ordered[i]["arch"]), "ms": float(ordered[i]["measured_ms"])} for i in picks]


def check_references(refs) -> None:
    def ok(r) -> bool:
        ms = r.get("ms") if isinstance(r, Mapping) else None
        return (isinstance(r, Mapping) and isinstance(r.get("arch"), str) and isinstance(ms, (int, float))
                and not isinstance(ms, bool) and math.isfinite(ms) and ms > 0)

    if not isinstance(refs, list) or not all(ok(r) for r in refs):
        raise ValueError("latency table calibration references must be a list of {arch: 'tok tok ...', ms: > 0}, "
                         f"got {refs!r:.120}")


def unusable(table, *, backend: str, provider: str, threads: int, batch: int, resolution: int,
             dtype: str = "fp32") -> str | None:
    """Why ``table``'s references cannot compensate a measurement taken with these settings (None when
    they can): they were timed on the table's runtime, thread count, batch, resolution, dtype and device,
    and only mean the same thing there."""
    meta = getattr(table, "meta", None) or {}
    cal = meta.get("calibration") or {}
    if not cal.get("references"):
        return "the table's calibration has no reference networks (re-run `hwnas latency validate`, or --refit)"
    stat = getattr(table, "statistic", "p50")
    if cal.get("statistic", stat) != stat:
        return f"the references were measured at {cal['statistic']}, the table reads {stat}"
    if meta.get("backend") != backend or (meta.get("provider") or "CPUExecutionProvider") != provider:
        return f"the table was validated on {meta.get('backend')} ({meta.get('provider')}), this measures {backend} ({provider})"
    if int(meta.get("threads", 1)) != int(threads):
        return f"the table was validated with {meta.get('threads')} threads, this measures with {threads}"
    if int(meta.get("batch", 1)) != int(batch):
        return f"the table was validated at batch {meta.get('batch')}, this measures batch {batch}"
    if int(meta.get("resolution", 0)) != int(resolution):
        return f"the table was validated at {meta.get('resolution')}x{meta.get('resolution')}, this measures {resolution}x{resolution}"
    if meta.get("dtype", "fp32") != dtype:
        return f"the table was validated in {meta.get('dtype', 'fp32')}, this measures {dtype}"
    from hwnas.device import device_slug

    here, there = device_slug("cpu", threads), (meta.get("device") or {}).get("slug")
    if there and there != here:
        return f"the table was validated on {there}, this is {here}"
    return None


def reference_networks(table) -> list[tuple[object, float]]:
    """The table's reference networks rebuilt (fresh weights, the table's space config), each with its
    latency measured at validation time; the caller times them at the table's deploy shape."""
    from hwnas.spaces import Arch, get_space
    from hwnas.spaces.builder import build_child

    meta = table.meta
    refs = meta["calibration"]["references"]
    check_references(refs)
    space = get_space(meta.get("space"))
    config = space.resolve_config({**(meta.get("config") or {}), "resolution": meta["resolution"]})
    return [(build_child(Arch(space.name, config, r["arch"].split(" "))).eval(), float(r["ms"])) for r in refs]


def machine_factor(now: Sequence[float], then: Sequence[float]) -> float:
    """Median of now/then over the references: > 1 when the machine runs slower than at validation."""
    now, then = np.asarray(now, float), np.asarray(then, float)
    if len(now) != len(then) or len(now) == 0 or np.any(now <= 0) or np.any(then <= 0):
        raise ValueError(f"machine_factor needs matching positive latencies, got {list(now)} and {list(then)}")
    return float(np.median(now / then))
