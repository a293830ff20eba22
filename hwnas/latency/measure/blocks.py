"""Profile blocks into a latency table, resumably.

A search space hands ``profile_blocks`` one ``BlockSpec`` per (layer, candidate): a signature, a factory
that builds the block, and the input shape at the deploy shape (batch included). Each block is measured
with ``hwnas.latency.measure.timing.measure_module`` and its row saved atomically at once, so a killed profile
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
from hwnas.latency.measure.allocator import keep_heap
from hwnas.latency.measure.runtimes import runtime
from hwnas.latency.measure.timing import Runner, measure_interleaved, summarize
from hwnas.latency.table import LatencyTable, LatencyTableError, library_versions, table_files
from hwnas.onnx import PROVIDERS

__all__ = ["BlockSpec", "profile_blocks", "provider_name"]

log = logging.getLogger(__name__)

# Sidecar keys that must agree between an existing table and a resumed profile: mixing rows measured
# under different settings in one table would make it silently wrong.
_RESUME_KEYS = ("space", "resolution", "batch", "dtype", "backend", "mode", "provider", "threads", "allocator")


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


_CONTEXT_WORDS = {"alone": "alone", "network": "in place inside networks"}


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
    have_ctx, want_ctx = table.meta.get("context", "alone"), meta.get("context", "alone")
    if have_ctx != want_ctx:  # blocks timed alone and in place inside networks are different quantities
        raise LatencyTableError(f"latency table {csv_path} holds blocks profiled {_CONTEXT_WORDS[have_ctx]}; rows "
                                f"profiled {_CONTEXT_WORDS[want_ctx]} must go to a table of their own (another --out)")
    have_slug = (table.meta.get("device") or {}).get("slug")
    want_slug = meta["device"]["slug"]
    if have_slug != want_slug:
        diffs.append(f"device {have_slug!r} (table) != {want_slug!r} (now)")
    if diffs:
        raise LatencyTableError(
            f"latency table {csv_path} was profiled with other settings: {'; '.join(diffs)}; "
            "write to another path or delete it"
        )
    for key in ("warmup", "iterations", "rounds"):
        if key in meta and table.meta.get(key) != meta[key]:
            log.warning("resuming %s with %s=%s (its rows so far used %s)", csv_path, key, meta[key], table.meta.get(key))
    now_versions = {k: v for k, v in library_versions().items() if k != "hwnas"}
    old_versions = {k: v for k, v in (table.meta.get("versions") or {}).items() if k != "hwnas"}
    if old_versions and old_versions != now_versions:
        log.warning("resuming %s with other library versions (%s now, %s in the table)", csv_path, now_versions, old_versions)
    for key, value in meta.items():
        table.meta.setdefault(key, value)  # new caller keys join; the table's own settings stay
    return table


def _note_failure(e: BaseException, block: BlockSpec, done: int, total: int, path) -> None:
    log.error("profiling block %r failed (%d of %d measured this run)", block.signature, done, total)
    if hasattr(e, "add_note"):  # python >= 3.11
        e.add_note(f"while profiling block {block.signature!r} into {table_files(path)[0]}")


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
    rounds: int = 1,
    chunk: int = 32,
    min_round_s: float = 1.0,
    statistic: str = "p50",
) -> LatencyTable:
    """Measure ``blocks`` into the table at ``path`` (its .csv, .json or stem) and return the table.

    ``meta`` supplies the caller's sidecar keys (at least ``space``, ``resolution``, ``batch``; any extra
    keys are kept); the profiler adds backend, mode (torch), provider, the ``statistic`` predictions read
    (``p10``/``p50``/...), device (``device_info``), threads, dtype,
    warmup, iterations and provenance. If the table exists it is resumed: it must have been profiled
    with the same space/shape/dtype/backend/provider/threads/device (else ``LatencyTableError``), and
    with ``only_missing`` only the signatures it lacks are measured. Blocks are deduplicated by
    signature. ``progress(i, n, signature)`` is called after the i-th of the n blocks being measured
    (1-based; with rounds, after it is prepared).

    With ``rounds == 1`` each block is timed in one burst of ``iterations`` calls and saved at once.
    With ``rounds > 1`` the blocks are prepared ``chunk`` at a time and each chunk is timed by
    ``measure_interleaved`` (``rounds`` rounds, each at least ``min_round_s`` long, ``iterations`` calls
    per block in all), then its rows are saved together: a slow spell of the machine then lands in a
    few rounds of many blocks instead of all the calls of one, and a killed profile loses at most one
    chunk.
    """
    mode, provider = runtime(backend, device, mode, provider)
    if rounds < 1 or chunk < 1:
        raise ValueError(f"profile needs rounds >= 1 and chunk >= 1, got {rounds} and {chunk}")
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
        "rounds": int(rounds),
        "statistic": statistic,
    }
    if backend == "torch" and device.type == "cpu":  # how torch's activations were allocated (allocator.py)
        full_meta["allocator"] = keep_heap()
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
    done = 0
    for first in range(0, len(todo), chunk):
        part = todo[first:first + chunk]
        runners = []
        for block in part:
            try:
                runner = Runner(block.build(), block.input_shape, backend=backend, device=device,
                                threads=threads, dtype=dtype, mode=mode, provider=provider)
                if rounds > 1:
                    runners.append(runner)
                else:  # one burst per block, measured and saved as soon as it is ready
                    table.add(block.signature, summarize(runner.samples(iterations, warmup)))
                    table.save(path)
                    done += 1
                    if progress is not None:
                        progress(done, len(todo), block.signature)
            except Exception as e:
                _note_failure(e, block, done, len(todo), path)
                raise
            if rounds > 1 and progress is not None:  # preparing (export, session) is the slow part
                progress(first + len(runners), len(todo), block.signature)
        if rounds == 1:
            continue
        try:
            stats = measure_interleaved(runners, warmup=warmup, iterations=iterations, rounds=rounds,
                                        min_round_s=min_round_s)
        except Exception as e:
            _note_failure(e, part[0], done, len(todo), path)
            raise
        for block, row in zip(part, stats, strict=True):
            table.add(block.signature, row)
            log.debug("%s: p50 %.4f ms (p10 %.4f, p90 %.4f)", block.signature, row["p50"], row["p10"], row["p90"])
        table.save(path)  # the chunk's rows at once, atomically
        done += len(part)
    log.info("profiled %d blocks in %.1f s into %s", len(todo), time.perf_counter() - started, table.path)
    return table
