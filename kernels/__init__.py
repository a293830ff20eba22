"""Fused Triton kernels for supernet mixed ops, installed as ``hwnas.kernels``.

Each op has a pure-torch ``*_reference`` beside it, supports autograd, and runs its Triton kernel on
CUDA tensors (or on CPU under ``TRITON_INTERPRET=1``, which must be set before triton is first
imported), the reference otherwise. Exact signatures, shapes and copies are in each function's
docstring. Also exported: ``channel_shuffle`` (PC-DARTS), and ``superkernel_gates``,
``superkernel_margins`` and ``indicator`` (the Single-Path NAS indicators and their arguments, for the
skip decision and the latency term).
"""

from .masked_dwconv import indicator, masked_dwconv, masked_dwconv_reference, superkernel_gates, superkernel_margins
from .mixed_op_sum import mixed_op_sum, mixed_op_sum_reference
from .partial_channel_mix import channel_shuffle, partial_channel_mix, partial_channel_mix_reference

__all__ = [
    "channel_shuffle",
    "indicator",
    "masked_dwconv",
    "masked_dwconv_reference",
    "mixed_op_sum",
    "mixed_op_sum_reference",
    "partial_channel_mix",
    "partial_channel_mix_reference",
    "superkernel_gates",
    "superkernel_margins",
]
