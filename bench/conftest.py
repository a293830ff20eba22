"""pytest-benchmark setup shared by bench/test_bench_*.py.

* Machine info: GPU name, SM count, driver, CUDA runtime, cuDNN, Triton and torch versions, and the CPU
  thread count, through the ``pytest_benchmark_update_machine_info`` hook, so every saved JSON says what
  it was measured on (``--benchmark-compare`` is only meaningful between runs on the same machine).
* ``measure``: runs one benchmark with ``benchmark.pedantic``, a device sync inside the timed function,
  a checked untimed first call (warm-up, torch.compile's compile), a check of the timed result too, and
  the achieved GB/s (minimum bytes moved / median time) in ``extra_info``.

On a machine without CUDA the suites run their eager-PyTorch path at small "cpu-small" shapes (a smoke
run that keeps the code paths alive; CPU timings say nothing about GPU speed); the Triton variants are
skipped (the CPU interpreter is a correctness tool, not something to time) and so is torch.compile
(it builds C++ for every shape; set HWNAS_BENCH_CPU_COMPILE=1 to run it anyway).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from bench_utils import CPU_THREADS, CUDA, ROUNDS, TIER, WARMUP


def _driver_version() -> str | None:
    try:
        import pynvml  # nvidia-ml-py

        pynvml.nvmlInit()
        v = pynvml.nvmlSystemGetDriverVersion()
        return v.decode() if isinstance(v, bytes) else str(v)
    except Exception:
        pass
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        )
        return out.stdout.strip().splitlines()[0]
    except Exception:
        return None


def _git_commit() -> str | None:
    """The checkout's commit (pytest-benchmark's own commit_info looks at the working directory, which
    gpu_check.sh may move out of the checkout)."""
    try:
        git = ["git", "-C", str(Path(__file__).resolve().parent)]
        out = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() + (" (dirty)" if dirty.stdout.strip() else "") if out.returncode == 0 else None
    except Exception:
        return None


def pytest_benchmark_update_machine_info(config, machine_info):
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    info = {
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "tier": TIER,
        "commit": _git_commit(),
        "torch_threads": torch.get_num_threads() if CUDA else CPU_THREADS,  # CPU: fixed by a fixture
    }
    if CUDA:
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name,
            sm_count=props.multi_processor_count,
            capability=f"{props.major}.{props.minor}",
            memory_gib=round(props.total_memory / 2**30, 1),
            driver=_driver_version(),
        )
    else:
        info["gpu"] = None
    machine_info["hwnas"] = info


@pytest.fixture(autouse=True)
def _fixed_cpu_threads():
    """A fixed thread count on CPU (HWNAS_BENCH_THREADS, default 1), restored afterwards."""
    if CUDA:
        yield
        return
    saved = torch.get_num_threads()
    torch.set_num_threads(CPU_THREADS)
    yield
    torch.set_num_threads(saved)


@pytest.fixture
def measure(benchmark):
    """``measure(fn, group=..., nbytes=..., check=...)``: time ``fn`` (which returns its result) and return it."""

    def _measure(fn, *, group: str, nbytes: int, check):
        sync = torch.cuda.synchronize if CUDA else (lambda: None)

        def timed():
            out = fn()
            sync()  # inside the timed region: the time covers the GPU work, not just the launches
            return out

        check(timed())  # untimed first call: warm-up, compilation, and a correctness check
        benchmark.group = group
        benchmark.extra_info.update(tier=TIER, bytes=nbytes)
        out = benchmark.pedantic(timed, rounds=ROUNDS, iterations=1, warmup_rounds=WARMUP)
        check(out)  # what was timed was right too
        stats = getattr(benchmark, "stats", None)
        if stats is not None:
            median = stats.stats.median
            benchmark.extra_info["GB/s"] = round(nbytes / median / 1e9, 2) if median > 0 else None
        return out

    return _measure
