"""The latency table of a search space: which blocks it needs, where it lives, and profiling what is
missing. Used by ``hwnas profile`` and by ``hwnas search`` on a machine with no table yet."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from hwnas.device import device_slug
from hwnas.latency.measure.blocks import BlockSpec, profile_blocks
from hwnas.latency.measure.in_network import NETWORK_SETS
from hwnas.latency.measure.runtimes import runtime, runtime_label
from hwnas.latency.lookup import Located, load_layers, load_located, locate, table_roots
from hwnas.latency.table import LatencyTable, LatencyTableError, check_compatible, table_files, table_path
from hwnas.spaces.base import Space

log = logging.getLogger("hwnas.latency")
# How blocks are timed unless told otherwise: 100 calls per block after 10 warm-up calls, taken in 5
# interleaved rounds of at least a second each (see ``profile_blocks``).
WARMUP, ITERATIONS, ROUNDS = 10, 100, 5
# The statistic predictions read: the 10th percentile, the latency without interference from other
# work on the machine (on a shared VM, ``hwnas latency validate`` held out more networks within +-10% with
# p10 than with p50; measurements: docs/measurements.md, 'Which statistic (p10/p50)').
STATISTIC = "p10"
# How blocks are placed when timed (``profile_space``); how many sets of covering networks an in-network
# profile times by default (each set runs every (layer, candidate) once, next to other neighbours) is
# ``hwnas.latency.measure.in_network.NETWORK_SETS``.
CONTEXTS = ("alone", "network")


def default_threads() -> int:
    """The threads a table is profiled and looked up with when ``--threads`` is not given: torch's count;
    under torchrun (which sets ``OMP_NUM_THREADS=1`` for the training ranks) the machine's CPU count, as a
    process of its own would have (the deploy target is not a training rank)."""
    if "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return max(1, os.cpu_count() or 1)
    return max(1, torch.get_num_threads())


def space_blocks(space: Space, config: dict, batch: int = 1) -> list[BlockSpec]:
    """One BlockSpec per distinct block of the space at the config's deploy resolution
    (``Space.profiled_blocks``: a chain's fixed parts and every candidate of every layer, a cell's every op
    at every shape it runs at); identities cost nothing and are not listed."""
    cfg = space.resolve_config(config)
    return [BlockSpec(sig, build, (batch, *shape)) for sig, build, shape in space.profiled_blocks(cfg)]


def default_context(space, backend: str, device, mode: str | None = None, provider: str | None = None) -> str:
    """``"network"`` where in-network profiling runs (torch eager on a CPU, chain spaces), else ``"alone"``.
    In-network rows' plain sums came within +-10% of more held-out whole networks, before any calibration,
    than rows timed alone did on the same measurements (measurements: docs/measurements.md, 'In-network
    profiling vs blocks alone')."""
    return "network" if space.chained_blocks and host_clock_runtime(backend, device, mode, provider) else "alone"


def host_clock_runtime(backend: str, device, mode: str | None = None, provider: str | None = None) -> bool:
    """True where the host clock brackets a block's work (torch eager on a CPU): in-network profiling's
    condition. A CUDA block needs a sync to be bracketed, which changes what is measured; ONNX Runtime and
    compiled / CUDA-graph torch run a network as one call with no block boundary to hook."""
    mode, _ = runtime(backend, device, mode, provider)
    return backend == "torch" and mode == "eager" and torch.device(device).type == "cpu"


def needed_signatures(space: Space, config: dict) -> list[str]:
    return [b.signature for b in space_blocks(space, config)]


def table_name(space: str, *, device: torch.device, backend: str, resolution: int = 224, batch: int = 1,
               dtype: str = "fp32", threads: int | None = None, mode: str | None = None,
               provider: str | None = None) -> Path:
    """``<device slug>/<runtime label>/<space>-r<res>-b<batch>-<dtype>.csv`` (see ``runtime_label``): a table's
    name under any table directory (``hwnas.latency.lookup``)."""
    threads = threads or default_threads()
    slug = device_slug(device, threads if device.type == "cpu" else None)
    mode, provider = runtime(backend, device, mode, provider)
    return Path(table_path("", slug, runtime_label(backend, mode, provider), space, resolution, batch, dtype))


def default_table_path(space: str, *, root: str | os.PathLike | None = None, **name) -> Path:
    """Where a new table of this machine goes: ``table_name(space, **name)`` under the writable directory
    of the lookup for ``root`` (``--tables``; ``hwnas.latency.lookup.table_roots``)."""
    return table_roots(root).write / table_name(space, **name)


def find_table(space: str, *, root: str | os.PathLike | None = None, **name) -> Located:
    """Where this machine's table of ``space`` is read from under the lookup for ``root`` (its own file, or
    a shipped table and the user's overlay of it); the files need not exist."""
    return locate(table_name(space, **name), table_roots(root))


def profile_space(space: Space, config: dict, path: str | os.PathLike, *, device: torch.device, backend: str,
                  batch: int = 1, dtype: str = "fp32", threads: int | None = None, warmup: int = WARMUP,
                  iterations: int = ITERATIONS, progress=None, mode: str | None = None,
                  provider: str | None = None, rounds: int = ROUNDS, statistic: str = STATISTIC,
                  context: str | None = None, network_sets: int | None = None,
                  like: LatencyTable | None = None) -> LatencyTable:
    """Profile every block of ``space`` (at ``config``'s deploy shape) missing from the table at ``path``.

    ``context`` is how a block is timed: ``"alone"`` (each block its own module or ONNX model; every
    backend) or ``"network"`` (in place inside ``network_sets`` sets of covering networks,
    ``hwnas.latency.measure.in_network``; torch eager on a CPU, chain spaces). By default an existing table keeps
    its own context (and its own ``network_sets``) and a new one gets ``default_context`` (and
    ``NETWORK_SETS``).

    ``like`` is the table ``path`` is an overlay of (``hwnas.latency.lookup``): its rows are not profiled
    again, and the new rows are measured its way (context, network sets, statistic)."""
    cfg = space.resolve_config(config)
    meta = {"space": space.name, "resolution": cfg["resolution"], "batch": batch, "config": cfg}
    csv_path = table_files(path)[0]
    existing = LatencyTable.load(csv_path).meta if csv_path.exists() else {}
    present: frozenset[str] = frozenset()
    if like is not None:
        present = frozenset(like.df.index)
        meta["overlay_of"] = str(like.path)
        statistic = like.statistic
        existing = existing or like.meta
    if context is None:
        context = (existing.get("context", "alone") if existing
                   else default_context(space, backend, device, mode, provider))
    if context not in CONTEXTS:
        raise ValueError(f"unknown profile context {context!r}; choose from {', '.join(CONTEXTS)}")
    if context == "network":
        if not host_clock_runtime(backend, device, mode, provider):
            label = runtime_label(backend, *runtime(backend, device, mode, provider))
            raise ValueError(f"--context network times blocks in place with the host clock: torch eager on a CPU "
                             f"only, not {label} on {device}")
        from hwnas.latency.measure.in_network import profile_in_network
        if network_sets is None:  # rows added to an existing table are measured the way its others were
            network_sets = int(existing.get("network_sets") or NETWORK_SETS)
        return profile_in_network(space, cfg, path, threads=threads or default_threads(), meta=meta,
                                  reps=network_sets, warmup=warmup, iterations=iterations, rounds=rounds,
                                  statistic=statistic, dtype=dtype, batch=batch, progress=progress, present=present)
    blocks = [b for b in space_blocks(space, cfg, batch) if b.signature not in present]
    return profile_blocks(blocks, path, backend=backend, device=device,
                          threads=threads or default_threads(), warmup=warmup, iterations=iterations, dtype=dtype,
                          meta=meta, progress=progress, mode=mode, provider=provider, rounds=rounds,
                          statistic=statistic)


def load_table_for(space: Space, config: dict, path, *, batch: int = 1, dtype: str = "fp32") -> LatencyTable:
    """Load a table (a path, a list of a table and its overlays, or a ``Located``: ``load_layers``) and
    refuse it if it does not match the search (space, resolution, batch, dtype) or lacks rows the space
    needs; each refusal a one-line LatencyTableError."""
    cfg = space.resolve_config(config)
    table = load_layers(path)
    check_compatible(table, space=space.name, resolution=cfg["resolution"], batch=batch, dtype=dtype)
    table.require(needed_signatures(space, cfg))
    return table


def ensure_table(space: Space, config: dict, *, device: torch.device, backend: str, batch: int = 1,
                 dtype: str = "fp32", threads: int | None = None, root: str | os.PathLike | None = None,
                 progress=None, profile_missing: bool = True, warmup: int = WARMUP,
                 iterations: int = ITERATIONS, mode: str | None = None,
                 provider: str | None = None, rounds: int = ROUNDS) -> LatencyTable:
    """This machine's table for ``space`` under the lookup for ``root`` (``hwnas.latency.lookup``), the
    blocks it lacks profiled first when allowed: into the table itself, or, where it is a shipped table,
    into the user's overlay of it. ``.layers`` of the result names the files it was read from."""
    cfg = space.resolve_config(config)
    name = table_name(space.name, device=device, backend=backend, resolution=cfg["resolution"], batch=batch,
                      dtype=dtype, threads=threads, mode=mode, provider=provider)
    roots = table_roots(root)
    where = locate(name, roots)
    if where.overlays or table_files(where.own)[0].exists():
        table = load_located(where)
        missing = table.missing(needed_signatures(space, cfg))
        if not missing:
            return table
        if not profile_missing:
            table.require(missing)
        log.info("latency table %s lacks %d block(s) of this config: profiling them%s", table.name, len(missing),
                 f" into the overlay {where.own}" if where.overlays else "")
    elif not profile_missing:
        raise LatencyTableError(f"no latency table {name} under {' or '.join(map(str, roots.read))}; "
                                f"run `hwnas profile --space {space.name}` first")
    profile_space(space, cfg, where.own, device=device, backend=backend, batch=batch, dtype=dtype,
                  threads=threads, warmup=warmup, iterations=iterations, progress=progress,
                  mode=mode, provider=provider, rounds=rounds,
                  like=LatencyTable.load(where.base) if where.overlays else None)
    return load_located(where)
