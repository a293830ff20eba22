"""The CPU heap regime torch latencies are measured in (and should be deployed in).

glibc's malloc serves a request above its mmap threshold (128 KiB at start, raised as mmapped chunks are
freed, up to 32 MiB) with a fresh ``mmap``, and returns free memory at the top of the heap to the kernel
above its trim threshold. Torch eager allocates every activation anew on every call, so a 224x224 network
maps and unmaps megabytes per inference: each new page faults and is zeroed by the kernel, at a cost that
depends on what was allocated and freed before -- a source of run-to-run variance and of blocks that do
not add up inside a network. With the heap kept (``mallopt``: mmap threshold 1 GiB, trim threshold 1 GiB,
top pad 256 MiB) activations are recycled from the heap instead.

Measured on a shared VM (``tools/torch_heap_effect.py``: proxyless networks, each timed whole and block
by block in place, several runs per regime, alternating), the kept heap ran a little faster on average,
varied less from run to run, and its in-place block sums stayed closer to the whole network than with
glibc's defaults. The effect is real but smaller than that VM's own noise (the same network built several
times and timed interleaved), which is what limits the torch tables (docs/latency.md; measurements:
docs/measurements.md, 'Heap allocator'; ``bench/results/cpu-amd-epyc-2t/torch-heap.md``).

So torch on the CPU is timed with the heap kept (``keep_heap``, called by ``timing.Runner``), the table's
sidecar records it (``"allocator"``), and a deployment that wants the latency the table predicts sets the
same (``DEPLOY_ENV`` as environment variables before the process starts, or a caching allocator such as
jemalloc or tcmalloc, which behave alike). The setting is process-wide and stays once made.
``HWNAS_KEEP_HEAP=0`` in the environment leaves glibc's defaults alone (for a table that matches a deployment
that keeps them; such a table records ``"allocator": "default"`` and cannot be resumed by the other regime).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

__all__ = ["DEPLOY_ENV", "KEPT_HEAP", "keep_heap", "heap_regime"]

log = logging.getLogger("hwnas.latency")

# mallopt parameters (malloc.h): M_TRIM_THRESHOLD -1, M_TOP_PAD -2, M_MMAP_THRESHOLD -3.
_SETTINGS = ((-3, 1 << 30, "MALLOC_MMAP_THRESHOLD_"), (-1, 1 << 30, "MALLOC_TRIM_THRESHOLD_"),
             (-2, 1 << 28, "MALLOC_TOP_PAD_"))
# The same regime as environment variables, for the deployed process (glibc reads them at start-up).
DEPLOY_ENV = {env: str(value) for _, value, env in _SETTINGS}
KEPT_HEAP = "glibc-kept-heap"
DEFAULT_HEAP = "default"

_state: str | None = None


def _libc():
    if platform.system() != "Linux":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version") else None


def keep_heap() -> str:
    """Keep freed memory in the process heap from now on (glibc only; idempotent). Returns the regime
    now in force: ``KEPT_HEAP``, or ``DEFAULT_HEAP`` where there is no glibc ``mallopt`` (macOS, musl),
    in which case latencies are measured with whatever the platform's allocator does."""
    global _state
    if _state is not None:
        return _state
    if os.environ.get("HWNAS_KEEP_HEAP", "1").strip().lower() in ("0", "false", "no", "off"):
        _state = DEFAULT_HEAP
        return _state
    libc = _libc()
    if libc is None:
        log.info("no glibc mallopt on this platform: torch CPU latencies are measured with its default allocator")
        _state = DEFAULT_HEAP
        return _state
    failed = [env for param, value, env in _SETTINGS if libc.mallopt(param, value) != 1]
    if failed:
        log.warning("glibc mallopt refused %s: torch CPU latencies measured with its defaults", ", ".join(failed))
        _state = DEFAULT_HEAP
    else:
        _state = KEPT_HEAP
    return _state


def heap_regime() -> str:
    """The regime in force in this process, without changing it."""
    return _state or DEFAULT_HEAP
