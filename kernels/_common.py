"""Helpers shared by the kernels in this package: the Triton import guard, the dispatch rule, output
allocation (with the test-only NaN poisoning), and the layout checks that decide what gets copied.

Dispatch rule (every public op): the Triton kernel runs when the tensors are on CUDA, or when they are
on the CPU and ``TRITON_INTERPRET=1`` is set (then Triton's interpreter runs the same kernel code with
numpy, which is how CI checks the kernels on machines without a GPU). Otherwise the pure-torch
``*_reference`` runs. ``TRITON_INTERPRET`` is read by ``@triton.jit`` when it decorates a function:
triton's own library at ``import triton``, our kernels when their module is imported. So it must be set
before triton is first imported; :func:`use_triton` raises if our kernels were decorated without it
(instead of silently running the reference).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import Tensor

try:  # triton is a Linux-only dependency (pyproject.toml); elsewhere the references run.
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised only on machines without triton
    from types import SimpleNamespace

    HAS_TRITON = False

    def _jit(fn=None, **_kwargs):
        return fn if fn is not None else (lambda f: f)

    triton = SimpleNamespace(jit=_jit, cdiv=lambda a, b: -(-a // b))
    tl = SimpleNamespace(constexpr=object)

__all__ = [
    "HAS_TRITON",
    "KERNEL_DTYPES",
    "as_layout",
    "candidate_grads",
    "empty",
    "empty_like",
    "empty_strided",
    "interpret_requested",
    "is_dense",
    "layout_key",
    "next_pow2",
    "on_interpreter",
    "same_layout",
    "split_candidates",
    "tl",
    "triton",
    "unify_layout",
    "use_triton",
]

# Dtypes the kernels accept; anything else (float64 above all) runs the reference.
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Tests set this to True: every buffer a kernel must fully write is then allocated filled with NaN, so an
# element the kernel forgets to write shows up as NaN instead of as stale memory that happens to match.
POISON = False


def empty(shape, *, dtype: torch.dtype, device) -> Tensor:
    if POISON:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def empty_like(t: Tensor, *, dtype: torch.dtype | None = None) -> Tensor:
    """Like ``torch.empty_like`` (same strides when ``t`` is dense), NaN-filled when poisoning."""
    out = torch.empty_like(t, dtype=dtype)
    if POISON:
        out.fill_(float("nan"))
    return out


def next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def on_interpreter(t: Tensor) -> bool:
    """Whether a launch on ``t`` runs in Triton's CPU interpreter; launchers then pick big blocks
    (fewer programs), since each program costs Python time there."""
    return not t.is_cuda


def interpret_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def _is_interpreted(kernel) -> bool:
    return type(kernel).__name__ == "InterpretedFunction"


def use_triton(tensors: Sequence[Tensor], kernel) -> bool:
    """Whether the public op should run its Triton kernel for these tensors (see the module docstring).

    ``kernel`` is one of the calling module's ``@triton.jit`` functions; it tells how the module was
    decorated (compiled for the GPU, or for Triton's CPU interpreter).
    """
    if not HAS_TRITON:
        return False
    devices = {t.device.type for t in tensors}
    if devices == {"cuda"}:
        if _is_interpreted(kernel) and not interpret_requested():
            raise RuntimeError("hwnas.kernels was imported with TRITON_INTERPRET=1; CUDA tensors need it unset")
        return True
    if devices == {"cpu"} and interpret_requested():
        if not _is_interpreted(kernel):
            raise RuntimeError(
                "TRITON_INTERPRET=1 was set after hwnas.kernels was imported, so its kernels were compiled "
                "for the GPU; set it before the first import (tests/kernels/conftest.py does)"
            )
        return True
    return False


def is_dense(t: Tensor) -> bool:
    """True when ``t`` covers its memory exactly once (any dim order: contiguous, channels_last, ...)."""
    expected = 1
    dims = sorted((s, n) for n, s in zip(t.shape, t.stride()) if n != 1)
    for stride, size in dims:
        if stride != expected:
            return False
        expected *= size
    return True


def layout_key(shape, stride) -> tuple[int, ...]:
    """Strides with those of size-1 dims zeroed: they never change which element sits where."""
    return tuple(s if n != 1 else 0 for n, s in zip(shape, stride))


def _layout(t: Tensor) -> tuple[int, ...]:
    return layout_key(t.shape, t.stride())


def same_layout(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and _layout(a) == _layout(b)


def unify_layout(tensors: Sequence[Tensor]) -> tuple[list[Tensor], int]:
    """Give every tensor the memory layout of the first dense one, so that the i-th element in memory
    order is the same logical element in all of them (what a flat elementwise kernel needs).

    Returns the tensors (unchanged where already in that layout, else copied once into it) and the
    number of copies made. If none is dense, the layout is plain contiguous.
    """
    ref = next((t for t in tensors if is_dense(t)), None)
    out, copies = [], 0
    for t in tensors:
        if ref is None:
            t2 = t.contiguous()
            copies += int(t2 is not t)
        elif same_layout(t, ref):
            t2 = t
        else:
            t2 = torch.empty_like(ref, dtype=t.dtype)
            t2.copy_(t)
            copies += 1
        out.append(t2)
    return out, copies


def split_candidates(outputs: Sequence[Tensor] | Tensor) -> tuple[Tensor | None, list[Tensor]]:
    """``outputs`` as (stacked tensor or None, list of the N candidate tensors); views, no copies."""
    if isinstance(outputs, Tensor):
        if outputs.dim() < 1 or outputs.shape[0] < 1:
            raise ValueError(f"stacked candidates need shape (N, ...) with N >= 1, got {tuple(outputs.shape)}")
        return outputs, list(outputs.unbind(0))
    cands = list(outputs)
    if not cands:
        raise ValueError("need at least one candidate output")
    for i, t in enumerate(cands):
        if not isinstance(t, Tensor):
            raise TypeError(f"candidate {i} is a {type(t).__name__}, not a Tensor")
    return None, cands


def empty_strided(shape, stride, *, dtype: torch.dtype, device) -> Tensor:
    out = torch.empty_strided(tuple(shape), tuple(stride), dtype=dtype, device=device)
    if POISON:
        out.fill_(float("nan"))
    return out


def candidate_grads(
    n: int, shape, stride, dtype: torch.dtype, device, stacked: bool, need: Sequence[bool]
) -> tuple[Tensor | None, list[Tensor | None]]:
    """Gradient buffers for N candidates, each with the dense layout ``(shape, stride)``.

    Stacked candidates get one ``(N, *shape)`` buffer (returned first) whose slices are the
    per-candidate buffers; listed candidates get one buffer each, ``None`` where ``need`` is False.
    """
    shape, stride = tuple(shape), tuple(stride)
    if stacked:
        if not any(need):
            return None, [None] * n
        numel = 1
        for d in shape:
            numel *= d
        buf = empty_strided((n, *shape), (numel, *stride), dtype=dtype, device=device)
        return buf, list(buf.unbind(0))
    return None, [empty_strided(shape, stride, dtype=dtype, device=device) if nd else None for nd in need]


def as_layout(t: Tensor, shape, stride) -> Tensor:
    """``t`` itself if it already has this dense layout, else a copy of it in that layout."""
    if tuple(t.shape) == tuple(shape) and is_dense(t) and _layout(t) == layout_key(shape, stride):
        return t
    out = torch.empty_strided(tuple(shape), tuple(stride), dtype=t.dtype, device=t.device)
    out.copy_(t)
    return out
