"""Memory measurement of a training step, device-independent.

``activation_bytes`` counts the bytes of the tensors autograd saves for backward during ``fn`` (each
storage once): the memory a step holds between forward and backward, which is what grows with the
number of candidates a mixed op evaluates. On CUDA, ``peak_cuda_bytes`` gives the allocator's peak.
"""
from __future__ import annotations

from typing import Callable

import torch


def activation_bytes(fn: Callable[[], torch.Tensor]) -> int:
    """Bytes saved for backward while running ``fn`` (the graph it builds is released afterwards)."""
    seen: dict[tuple, int] = {}

    def pack(t: torch.Tensor):
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            st = t.untyped_storage()
            seen[(t.device.type, st.data_ptr())] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())


def peak_cuda_bytes(fn: Callable[[], object], device: torch.device) -> int:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base
