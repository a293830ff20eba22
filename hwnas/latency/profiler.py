"""Profile blocks into a latency table, resumably.

A search space hands ``profile_blocks`` one ``BlockSpec`` per (layer, candidate): a signature, a factory
that builds the block, and the input shape at the deploy shape (batch included). Each block is measured
with ``hwnas.latency.timing.measure_module`` and its row saved atomically at once, so a killed profile
loses at most the block in flight and the next run measures only what is missing.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from hwnas.device import device_info
from hwnas.latency.table import LatencyTable, LatencyTableError, library_versions, table_files
from hwnas.latency.timing import PROVIDERS, measure_module, runtime

__all__ = ["BlockSpec", "profile_blocks", "provider_name"]

log = logging.getLogger(__name__)

# Sidecar keys that must agree between an existing table and a resumed profile: mixing rows measured
# under different settings in one table would make it silently wrong.
_RESUME_KEYS = ("space", "resolution", "batch", "dtype", "backend", "mode", "provider", "threads")


@dataclass
class BlockSpec:
    """One block to profile: its signature, how to build it, and its input shape (batch included)."""

    signature: str
    build: Callable[[], torch.nn.Module]
    input_shape: tuple[int, ...]


def provider_name(backend: str, device: str | torch.device, mode: str | None = None,
                  provider: str | None = None) -> str:
    """What runs the blocks: an ONNX Runtime execution provider, or ``torch-<mode>-<cpu|cuda>``."""
    mode, provider = runtime(backend, device, mode, provider)
    if backend == "onnxruntime":
        return PROVIDERS[provider]
    return f"torch-{mode}-{torch.device(device).type}"


def _dedupe(blocks: Sequence[BlockSpec]) -> list[BlockSpec]:
    unique: dict[str, BlockSpec] = {}
    for block in blocks:
        seen = unique.get(block.signature)
        if seen is None:
            unique[block.signature] = block
        elif tuple(seen.input_shape) != tuple(block.input_shape):
            raise ValueError(
                f"block signature {block.signature!r} is given with two input shapes "
                f"{tuple(seen.input_shape)} and {tuple(block.input_shape)}; a signature must name one block"
            )
    return list(unique.values())


def _warn_if_busy(threads: int, cpus: int) -> None:
    """Warn when other processes keep the CPUs busy: CPU latencies measured then are inflated."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return
    if load > cpus - threads + 0.5:
        log.warning(
            "load average %.1f on %d CPUs before profiling with %d threads: other processes compete for the "
            "CPU and the latencies will be inflated; profile on an idle machine for a table to keep",
            load, cpus, threads,
        )


def _open_table(path, meta: dict) -> LatencyTable:
    csv_path, _ = table_files(path)
    if not csv_path.exists():
        return LatencyTable.empty(meta)
    table = LatencyTable.load(csv_path)
    if table.meta.get("backend") == "torch":
        table.meta.setdefault("mode", "eager")  # tables written before modes existed were eager
    diffs = [
        f"{key} {table.meta.get(key)!r} (table) != {meta[key]!r} (now)"
        for key in _RESUME_KEYS
        if key in meta and str(table.meta.get(key)) != str(meta[key])
        and not (key == "threads" and meta["device"].get("type") == "cuda")  # CPU threads barely matter there
    ]
    have_slug = (table.meta.get("device") or {}).get("slug")
    want_slug = meta["device"]["slug"]
    if have_slug != want_slug:
        diffs.append(f"device {have_slug!r} (table) != {want_slug!r} (now)")
    if diffs:
        raise LatencyTableError(
            f"latency table {csv_path} was profiled with other settings: {'; '.join(diffs)}; "
            "write to another path or delete it"
        )
    for key in ("warmup", "iterations"):
        if key in meta and table.meta.get(key) != meta[key]:
            log.warning("resuming %s with %s=%s (its rows so far used %s)", csv_path, key, meta[key], table.meta.get(key))
    now_versions = {k: v for k, v in library_versions().items() if k != "hwnas"}
    old_versions = {k: v for k, v in (table.meta.get("versions") or {}).items() if k != "hwnas"}
    if old_versions and old_versions != now_versions:
        log.warning("resuming %s with other library versions (%s now, %s in the table)", csv_path, now_versions, old_versions)
    for key, value in meta.items():
        table.meta.setdefault(key, value)  # new caller keys join; the table's own settings stay
    return table


def profile_blocks(
    blocks: Sequence[BlockSpec],
    path: str | os.PathLike,
    *,
    backend: str,
    device: str | torch.device,
    threads: int,
    warmup: int,
    iterations: int,
    dtype: str,
    meta: dict,
    progress: Callable[[int, int, str], None] | None = None,
    only_missing: bool = True,
    mode: str | None = None,
    provider: str | None = None,
) -> LatencyTable:
    """Measure ``blocks`` into the table at ``path`` (its .csv, .json or stem) and return the table.

    ``meta`` supplies the caller's sidecar keys (at least ``space``, ``resolution``, ``batch``; any extra
    keys are kept); the profiler adds backend, mode (torch), provider, device (``device_info``), threads, dtype,
    warmup, iterations and provenance. If the table exists it is resumed: it must have been profiled
    with the same space/shape/dtype/backend/provider/threads/device (else ``LatencyTableError``), and
    with ``only_missing`` only the signatures it lacks are measured. Blocks are deduplicated by
    signature. The table is saved after every block. ``progress(i, n, signature)`` is called after the
    i-th of the n blocks being measured (1-based).
    """
    mode, provider = runtime(backend, device, mode, provider)
    device = torch.device(device)
    full_meta = {
        **meta,
        "dtype": dtype,
        "backend": backend,
        "mode": mode,
        "provider": provider_name(backend, device, mode, provider),
        "device": device_info(device, threads),
        "threads": int(threads),
        "warmup": int(warmup),
        "iterations": int(iterations),
    }
    table = _open_table(path, full_meta)
    unique = _dedupe(blocks)
    todo = [b for b in unique if not (only_missing and b.signature in table)]
    if device.type == "cpu" and todo:
        _warn_if_busy(int(threads), full_meta["device"].get("usable_cpus") or os.cpu_count() or 1)
    log.info(
        "profiling %d of %d blocks into %s (%s on %s, %d threads, %s)",
        len(todo), len(unique), table_files(path)[0], backend, full_meta["device"]["slug"], threads, dtype,
    )
    if not todo:
        if table.path is None:
            table.save(path)
        return table

    started = time.perf_counter()
    for i, block in enumerate(todo, start=1):
        t0 = time.perf_counter()
        try:
            module = block.build()
            stats = measure_module(
                module, block.input_shape, backend=backend, device=device, threads=threads,
                warmup=warmup, iterations=iterations, dtype=dtype, mode=mode, provider=provider,
            )
        except Exception as e:
            log.error("profiling block %r failed (%d of %d measured this run)", block.signature, i - 1, len(todo))
            if hasattr(e, "add_note"):  # python >= 3.11
                e.add_note(f"while profiling block {block.signature!r} into {table_files(path)[0]}")
            raise
        table.add(block.signature, stats)
        table.save(path)
        log.debug(
            "%s: p50 %.4f ms (p10 %.4f, p90 %.4f) in %.2f s",
            block.signature, stats["p50"], stats["p10"], stats["p90"], time.perf_counter() - t0,
        )
        if progress is not None:
            progress(i, len(todo), block.signature)
    log.info("profiled %d blocks in %.1f s into %s", len(todo), time.perf_counter() - started, table.path)
    return table
