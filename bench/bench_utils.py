"""Constants and helpers for bench/ (imported by name: pytest puts bench/ on sys.path)."""

from __future__ import annotations

import os

import pytest
import torch

CUDA = torch.cuda.is_available()
TIER = "gpu" if CUDA else "cpu-small"
ROUNDS, WARMUP = (30, 5) if CUDA else (5, 1)
CPU_THREADS = int(os.environ.get("HWNAS_BENCH_THREADS", "1"))
IMPLS = ("triton", "eager", "compile")
MODES = ("fwd", "fwd+bwd")

def skip_unless_runnable(impl: str) -> None:
    """Skip the variants that are not timed on this machine (see bench/conftest.py)."""
    if impl == "triton" and not CUDA:
        pytest.skip("Triton kernels are timed on CUDA only; on CPU they run in the interpreter (tests/kernels)")
    if impl == "compile" and not CUDA and os.environ.get("HWNAS_BENCH_CPU_COMPILE") != "1":
        pytest.skip("torch.compile on CPU builds C++ per shape (slow); HWNAS_BENCH_CPU_COMPILE=1 runs it")


def tolerance(dtype: torch.dtype) -> dict:
    """Loose on purpose (the strict checks are tests/kernels): fp32 references on a GPU may use TF32."""
    return {torch.float32: dict(rtol=2e-3, atol=2e-3), torch.float16: dict(rtol=1e-2, atol=1e-2)}.get(
        dtype, dict(rtol=4e-2, atol=4e-2)
    )


_COMPILED: dict = {}


def compiled(fn):
    """``torch.compile(fn, dynamic=False)``, made on first use: importing torch._dynamo imports triton,
    which must not happen while pytest collects (tests/kernels/conftest.py sets TRITON_INTERPRET first)."""
    if fn not in _COMPILED:
        _COMPILED[fn] = torch.compile(fn, dynamic=False)
    return _COMPILED[fn]


def bytes_of(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


_SHORT = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def label(**kw) -> str:
    """``label(N=7, B=64, dtype=torch.bfloat16)`` -> ``"N7-B64-bf16"`` (a benchmark id / group name)."""
    return "-".join(_SHORT.get(v, str(v)) if k == "dtype" else f"{k}{v}" for k, v in kw.items())


def check_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    """Benchmark results must be right: ``actual`` against ``expected`` (fp32 or better), atol scaled
    by the magnitude of ``expected``."""
    tol = tolerance(dtype)
    scale = max(1.0, expected.abs().max().item())
    torch.testing.assert_close(
        actual.float(), expected.float(), rtol=tol["rtol"], atol=tol["atol"] * scale, msg=lambda m: f"{what}: {m}"
    )
