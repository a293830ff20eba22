"""Profile a chain space's blocks where they run: inside whole networks (torch eager on a CPU).

A block timed alone keeps its weights and its input in the caches between calls; inside a network the
blocks before it have evicted them. That difference makes torch eager networks measure well above the
sum of their blocks timed alone, by an amount that depends on the blocks (so even a calibrated sum missed
most held-out networks by more than +-10%), while the same networks' blocks timed in place sum to about the
whole network (measurements: docs/measurements.md, 'In-network profiling vs blocks alone';
``bench/results/cpu-amd-epyc-2t/torch-heap.md``). This profiler therefore times every block in place: it
builds covering networks -- ``reps`` sets of networks in which every (layer, candidate) of the space runs
once per set, each set with its own random pairing of neighbours -- times each network whole in
interleaved rounds with forward hooks reading the host clock before and after every top-level block (stem,
first block, each layer, head, classifier), and pools each signature's in-place times over every network
and position it ran in. The sum of a network's rows is then what its blocks cost in a network like it;
what the hooks cannot see (the network's own Python glue between blocks) is the validation's calibration
intercept.

Only torch eager on a CPU: the host clock brackets a CPU block exactly, while a CUDA block would need a
device sync around every block (changing what is measured), and a compiled graph or an ONNX Runtime
session has no block boundaries to hook (its fusion across blocks is the point of it).

Resumable: each set is measured and its samples saved to ``<table>.partial.json`` (atomically) before the
next starts; a rerun with the same space, config and seed continues after the last saved set; the rows
are written when every set is done, and the partial file removed.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from hwnas.device import device_info
from hwnas.fsio import atomic_write_text
from hwnas.latency.measure.allocator import keep_heap
from hwnas.latency.measure.blocks import _open_table, _warn_if_busy, provider_name
from hwnas.latency.measure.timing import Runner, measure_interleaved, summarize
from hwnas.latency.table import LatencyTable, table_files
from hwnas.spaces.arch import Arch
from hwnas.spaces.builder import build_child

__all__ = ["NETWORK_SETS", "covering_archs", "profile_in_network", "block_positions"]

log = logging.getLogger(__name__)
_clock = time.perf_counter_ns  # what the hooks read (tests replace it with a known clock)
# Sets of covering networks a profile times by default. With 3, the proxyless rows of the 112x112 stride-2
# blocks (each in 3-4 networks; memory-bound, their per-network medians move with the machine's memory speed
# within minutes) carried that drift and moved between two profiles, so fewer rows' medians agreed within 5%;
# with 9, two profiles agreed on every row but the classifier (a GEMV that runs in every network and moves
# with the machine's memory speed), at about three times the profiling time (measurements:
# docs/measurements.md, 'In-network network sets').
NETWORK_SETS = 9


def covering_archs(space, config: dict, reps: int, seed: int = 0) -> list[list[str]]:
    """``reps`` sets of covering architectures (``Space.cover``), drawn with ``random.Random(seed)``."""
    if reps < 1:
        raise ValueError(f"in-network profiling needs reps >= 1, got {reps}")
    return space.cover(random.Random(seed), config, reps)


def block_positions(space, config: dict, tokens: list[str]) -> list[tuple[str, str | None]]:
    """``(attribute path, signature)`` of every top-level block of the child of ``tokens``
    (``Space.block_positions``)."""
    return space.block_positions(config, tokens)


class _Clock:
    """Forward pre/post hooks that record each hooked block's wall time (ms) per call."""

    def __init__(self, n: int):
        self.started = [0] * n
        self.samples: list[list[float]] = [[] for _ in range(n)]

    def hook(self, module: torch.nn.Module, i: int) -> None:
        def before(_m, _args):
            self.started[i] = _clock()

        def after(_m, _args, _out):
            self.samples[i].append((_clock() - self.started[i]) / 1e6)

        module.register_forward_pre_hook(before)
        module.register_forward_hook(after)


class _HookedRunner:
    """A ``Runner`` whose ``samples`` also moves the in-place block times of its timed calls (not the
    warm-up ones, which run first) from its hooks' clock into ``pooled`` by signature."""

    def __init__(self, runner: Runner, clock: _Clock, positions: list, pooled: dict[str, list[float]]):
        self.runner, self.clock, self.positions, self.pooled = runner, clock, positions, pooled

    def samples(self, iterations: int, warmup: int = 0) -> np.ndarray:
        before = [len(x) for x in self.clock.samples]
        out = self.runner.samples(iterations, warmup)
        for i, (_name, sig) in enumerate(self.positions):
            if sig is not None:
                new = self.clock.samples[i][before[i]:]
                self.pooled.setdefault(sig, []).extend(new[len(new) - iterations:])
        return out


def _plan_key(space, config: dict, archs: list[list[str]], settings: dict) -> str:
    text = json.dumps({"space": space.name, "config": config, "archs": archs, **settings}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def profile_in_network(space, config: dict, path: str | os.PathLike, *, threads: int, meta: dict, reps: int = NETWORK_SETS,
                       warmup: int = 10, iterations: int = 100, rounds: int = 5, min_round_s: float = 1.0,
                       seed: int = 0, statistic: str = "p10", dtype: str = "fp32", batch: int = 1,
                       only_missing: bool = True, progress=None, present=frozenset()) -> LatencyTable:
    """Profile every row of ``space`` at ``config``'s deploy shape in place (see the module docstring) into
    the table at ``path`` and return it. Each covering network is timed for ``iterations`` calls (after
    ``warmup``) in ``rounds`` interleaved rounds of its set, at least ``min_round_s`` each; a row's
    statistics pool every in-place call of that block. With ``only_missing`` an existing table keeps its
    rows (the sets still run whole: a row is measured in networks, not alone); rows in ``present`` (those of
    the table ``path`` overlays) count as there already.
    ``progress(done, total, what)`` counts network-rounds."""
    if not space.chained_blocks:
        raise ValueError(f"in-network profiling covers chain spaces (networks that are a chain of blocks); "
                         f"{space.name!r} is not one (profile it block by block: --context alone)")
    cpu = torch.device("cpu")
    full_meta = {**meta, "dtype": dtype, "backend": "torch", "mode": "eager",
                 "provider": provider_name("torch", cpu, "eager"), "device": device_info(cpu, threads),
                 "threads": int(threads), "warmup": int(warmup), "iterations": int(iterations), "rounds": int(rounds),
                 "statistic": statistic, "context": "network", "network_sets": int(reps), "network_seed": int(seed)}
    full_meta["allocator"] = keep_heap()
    table = _open_table(path, full_meta)  # refuses a table of blocks profiled alone
    cfg = space.resolve_config(config)
    archs = covering_archs(space, cfg, reps, seed)
    positions = [block_positions(space, cfg, a) for a in archs]
    wanted = {sig for pos in positions for _, sig in pos if sig is not None}
    if only_missing and not table.missing(sorted(wanted - set(present))):
        if table.path is None:
            table.save(path)
        return table
    _warn_if_busy(int(threads), full_meta["device"].get("usable_cpus") or os.cpu_count() or 1)
    csv_path = table_files(path)[0]
    partial = Path(str(csv_path) + ".partial.json")
    key = _plan_key(space, cfg, archs, {k: full_meta[k] for k in ("warmup", "iterations", "rounds", "threads", "dtype")})
    pooled: dict[str, list[float]] = {}
    done_sets = 0
    if partial.exists():
        saved = json.loads(partial.read_text())
        if saved.get("key") == key:
            pooled, done_sets = {k: list(v) for k, v in saved["samples"].items()}, int(saved["sets_done"])
            log.info("resuming the in-network profile of %s after %d of %d sets", csv_path, done_sets, reps)
        else:
            log.warning("ignoring %s: it belongs to another profile plan", partial)
    width = len(archs) // reps
    total, ticks = reps * width * rounds, done_sets * width * rounds
    started = time.perf_counter()
    for s in range(done_sets, reps):
        runners = []
        for n in range(s * width, (s + 1) * width):
            net = build_child(Arch(space.name, cfg, archs[n]))
            clock = _Clock(len(positions[n]))
            for i, (name, _sig) in enumerate(positions[n]):
                clock.hook(net.get_submodule(name), i)
            runners.append(_HookedRunner(Runner(net, (batch, 3, cfg["resolution"], cfg["resolution"]), backend="torch",
                                                device=cpu, threads=threads, dtype=dtype, mode="eager"),
                                         clock, positions[n], pooled))
        # the rounds, their rotation and their padding are measure_interleaved's; the hooks fill ``pooled``
        measure_interleaved(runners, warmup=warmup, iterations=iterations, rounds=rounds, min_round_s=min_round_s,
                            progress=None if progress is None else
                            (lambda d, _n, s=s: progress(ticks + d, total, f"set {s + 1}/{reps}")))
        ticks += width * rounds
        del runners
        atomic_write_text(partial, json.dumps({"key": key, "sets_done": s + 1, "samples": pooled}) + "\n")
    for sig in sorted(wanted):
        if only_missing and (sig in table or sig in present):
            continue
        table.add(sig, summarize(np.asarray(pooled[sig])))
    table.meta["in_network_seconds"] = round(time.perf_counter() - started, 1)
    table.save(path)
    partial.unlink(missing_ok=True)
    log.info("profiled %d rows in place in %d networks into %s", len(wanted), len(archs), table.path)
    return table
