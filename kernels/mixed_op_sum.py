"""Mixed-op weighted sum ``y = sum_i w_i * o_i`` in one Triton pass, forward and backward.

This is the combination step of every weighted-sum supernet:

* DARTS (Liu et al., ICLR 2019), Eq. (2): the mixed operation
  ``o_bar(x) = sum_{o in O} softmax(alpha)_o * o(x)``; here ``w = softmax(alpha)``.
* FBNet (Wu et al., CVPR 2019), Sec. 3.3: a layer's output ``x_{l+1} = sum_i m_{l,i} * b_{l,i}(x_l)``
  with ``m`` the Gumbel-softmax sample of the layer's sampling parameters ``theta_l``.
* PC-DARTS edge normalization (Xu et al., ICLR 2020, Sec. 3.3): a node ``sum_j softmax(beta)_j * f_j``
  over its incoming edges is the same sum with the edges as candidates.

Forward reads each candidate once and writes ``y`` once: the N candidate pointers reach the kernel as
a tuple argument (specialized per N, unrolled with ``tl.static_range``), so nothing is stacked.
Backward is one pass as well: it reads ``g = dL/dy`` once, writes ``dL/do_i = w_i * g`` for each
candidate that needs it and, when the weights need a gradient, reads each candidate once more for
``dL/dw_i = sum(g * o_i)``: per-program partial sums (fp32) written to an ``(N, programs)`` buffer and
summed by ``torch.sum`` -- a fixed-order two-stage reduction, so the result is deterministic.
All arithmetic is fp32 whatever the storage dtype (fp32 / fp16 / bf16).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ._common import (
    KERNEL_DTYPES,
    as_layout,
    candidate_grads,
    empty,
    empty_like,
    next_pow2,
    on_interpreter,
    same_layout,
    split_candidates,
    tl,
    triton,
    unify_layout,
    use_triton,
)

__all__ = ["mixed_op_sum", "mixed_op_sum_reference"]


# ----------------------------------------------------------------------------------------- kernels


@triton.jit
def _mixed_sum_fwd_kernel(cands, w_ptr, out_ptr, numel, N: tl.constexpr, BLOCK: tl.constexpr):
    # cands: tuple of N pointers to equally laid-out buffers; out has that layout too.
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for i in tl.static_range(N):
        w = tl.load(w_ptr + i).to(tl.float32)
        o = tl.load(cands[i] + offs, mask=mask, other=0.0, eviction_policy="evict_first")
        acc += w * o.to(tl.float32)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _mixed_sum_bwd_kernel(
    g_ptr, cands, grads, w_ptr, partial_ptr, numel, n_prog,
    N: tl.constexpr, GRAD_MASK: tl.constexpr, NEED_W: tl.constexpr, BLOCK: tl.constexpr,
):
    # grads[i] is written iff bit i of GRAD_MASK is set; partial[i, pid] = sum over this block of g*o_i.
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    for i in tl.static_range(N):
        if (GRAD_MASK >> i) & 1:
            w = tl.load(w_ptr + i).to(tl.float32)
            tl.store(grads[i] + offs, (w * g).to(grads[i].dtype.element_ty), mask=mask)
        if NEED_W:
            o = tl.load(cands[i] + offs, mask=mask, other=0.0, eviction_policy="evict_first")
            tl.store(partial_ptr + i * n_prog + pid, tl.sum(g * o.to(tl.float32), axis=0))


# --------------------------------------------------------------------------------------- launchers


def _block(numel: int, interpreted: bool) -> tuple[int, int]:
    """(BLOCK, num_warps). GPU: 1024 elements / 4 warps, the usual memory-bound elementwise choice
    (not yet tuned on hardware). Interpreter: one big block, since each program costs Python time."""
    if interpreted:
        return min(next_pow2(numel), 1 << 14), 1
    return 1024, 4


def _check_launch(cands: Sequence[Tensor], weights: Tensor, like: Tensor) -> None:
    if weights.dim() != 1 or weights.shape[0] != len(cands) or not weights.is_contiguous():
        raise ValueError(f"weights must be contiguous with shape ({len(cands)},), got {tuple(weights.shape)}")
    for i, c in enumerate(cands):
        if not same_layout(c, like) or c.dtype != like.dtype:
            raise ValueError(f"candidate {i} does not share the output's dtype and dense layout")


def _launch_fwd(cands: list[Tensor], weights: Tensor, out: Tensor) -> None:
    _check_launch(cands, weights, out)
    numel = out.numel()
    block, warps = _block(numel, on_interpreter(out))
    grid = (triton.cdiv(numel, block),)
    _mixed_sum_fwd_kernel[grid](tuple(cands), weights, out, numel, N=len(cands), BLOCK=block, num_warps=warps)


def _launch_bwd(
    g: Tensor, cands: list[Tensor], grads: list[Tensor | None], weights: Tensor, need_w: bool
) -> Tensor | None:
    """Writes ``grads[i] = w_i * g`` (where not None); returns ``[sum(g * o_i)]_i`` in fp32 if need_w."""
    _check_launch(cands, weights, cands[0])
    if not same_layout(g, cands[0]):
        raise ValueError("grad_output must share the candidates' dense layout")
    numel = g.numel()
    block, warps = _block(numel, on_interpreter(g))
    n_prog = triton.cdiv(numel, block)
    mask = sum(1 << i for i, gr in enumerate(grads) if gr is not None)
    # Unused tuple slots need some pointer of the right dtype; the kernel never touches them.
    grads_arg = tuple(gr if gr is not None else g for gr in grads)
    partial = empty((len(cands), n_prog), dtype=torch.float32, device=g.device) if need_w else weights
    _mixed_sum_bwd_kernel[(n_prog,)](
        g, tuple(cands), grads_arg, weights, partial, numel, n_prog,
        N=len(cands), GRAD_MASK=mask, NEED_W=need_w, BLOCK=block, num_warps=warps,
    )
    return partial.sum(dim=1) if need_w else None


# --------------------------------------------------------------------------------------- reference


def _check_inputs(cands: Sequence[Tensor], weights: Tensor) -> None:
    ref = cands[0]
    for i, c in enumerate(cands):
        if c.shape != ref.shape or c.dtype != ref.dtype or c.device != ref.device:
            raise ValueError(
                f"candidate {i} is {tuple(c.shape)} {c.dtype} on {c.device}; candidate 0 is "
                f"{tuple(ref.shape)} {ref.dtype} on {ref.device}: all must match"
            )
    if not ref.is_floating_point():
        raise TypeError(f"candidates must be floating point, got {ref.dtype}")
    if weights.dim() != 1 or weights.shape[0] != len(cands):
        raise ValueError(f"weights must have shape ({len(cands)},), got {tuple(weights.shape)}")
    if not weights.is_floating_point() or weights.device != ref.device:
        raise ValueError(f"weights must be floating point on {ref.device}, got {weights.dtype} on {weights.device}")


def mixed_op_sum_reference(outputs: Sequence[Tensor] | Tensor, weights: Tensor) -> Tensor:
    """Pure-torch ``sum_i weights[i] * outputs[i]``; same contract as :func:`mixed_op_sum`.

    Accumulates in ``promote(dtype, float32)`` (fp32 for fp16/bf16, float64 for float64) and returns the
    candidates' dtype, like the kernel. Autograd provides the backward.
    """
    _, cands = split_candidates(outputs)
    _check_inputs(cands, weights)
    acc_dtype = torch.promote_types(cands[0].dtype, torch.float32)
    acc = weights[0].to(acc_dtype) * cands[0].to(acc_dtype)
    for i in range(1, len(cands)):
        acc = acc + weights[i].to(acc_dtype) * cands[i].to(acc_dtype)
    return acc.to(cands[0].dtype)


# ---------------------------------------------------------------------------------------- autograd


class _MixedOpSum(torch.autograd.Function):
    """``apply(weights, stacked, *tensors)``: ``tensors`` is ``(stacked_candidates,)`` if ``stacked``,
    else the N candidates. Stacked candidates get one stacked gradient (no ``torch.stack`` in backward)."""

    @staticmethod
    def forward(ctx, weights: Tensor, stacked: bool, *tensors: Tensor) -> Tensor:
        cands = list(tensors[0].unbind(0)) if stacked else list(tensors)
        cands, _ = unify_layout(cands)  # copies only candidates whose layout differs from the first dense one
        w = weights.contiguous()
        out = empty_like(cands[0])
        _launch_fwd(cands, w, out)
        ctx.stacked, ctx.n = stacked, len(cands)
        ctx.layout = (tuple(out.shape), tuple(out.stride()))
        ctx.w_dtype = weights.dtype
        # The candidates are needed only for dL/dw; keep them alive only then (eager autograd keeps them too).
        ctx.save_for_backward(w, *(cands if ctx.needs_input_grad[0] else ()))
        return out

    @staticmethod
    def backward(ctx, g: Tensor):
        w, *cands = ctx.saved_tensors
        need_w = ctx.needs_input_grad[0]
        need_in = list(ctx.needs_input_grad[2:])
        if ctx.stacked:
            need_in = need_in * ctx.n
        if not need_w and not any(need_in):
            return (None, None, *([None] * (1 if ctx.stacked else ctx.n)))
        shape, stride = ctx.layout
        g = as_layout(g, shape, stride)  # copies g only if its layout differs (e.g. expanded from .sum())
        stacked_buf, grads = candidate_grads(ctx.n, shape, stride, g.dtype, g.device, ctx.stacked, need_in)
        if not need_w:
            cands = [g] * ctx.n  # never read: NEED_W is off
        gw = _launch_bwd(g, cands, grads, w, need_w)
        gw = gw.to(ctx.w_dtype) if gw is not None else None
        if ctx.stacked:
            return (gw, None, stacked_buf)
        return (gw, None, *grads)


# ------------------------------------------------------------------------------------------ public


def mixed_op_sum(outputs: Sequence[Tensor] | Tensor, weights: Tensor) -> Tensor:
    """Weighted sum of N candidate outputs: ``y = sum_i weights[i] * outputs[i]``.

    Args:
        outputs: a sequence of N tensors of one shape, dtype and device, any shape, or one tensor of
            shape ``(N, *shape)`` holding them stacked. N >= 1 (the kernel is specialized per N).
        weights: shape ``(N,)``, any floating dtype, same device; may or may not require grad
            (``softmax(alpha)``, Gumbel samples, binary gates...). Read as fp32.

    Returns:
        ``y`` of ``shape`` in the candidates' dtype, computed in fp32 (float64 inputs run the reference,
        in float64). Its memory layout is that of the first dense candidate (contiguous,
        channels_last, ...), contiguous if none is dense.

    Backward gives ``dL/do_i = w_i * g`` (candidates' dtype; one ``(N, *shape)`` tensor for stacked
    input) and ``dL/dw_i = sum(g * o_i)`` (weights' dtype), each only if required.

    Copies: none when all candidates share one dense layout. A candidate that is not dense or whose
    layout differs from the first dense one is copied once into that layout (forward); in backward ``g``
    is copied once if its layout differs from ``y``'s (e.g. the expanded gradient of ``y.sum()``).
    The candidates are kept for backward only when ``weights`` requires grad.

    Runs the Triton kernel on CUDA (or on CPU under ``TRITON_INTERPRET=1``), else
    :func:`mixed_op_sum_reference`.
    """
    stacked, cands = split_candidates(outputs)
    _check_inputs(cands, weights)
    if (
        cands[0].dtype not in KERNEL_DTYPES
        or cands[0].numel() == 0
        or not use_triton([*cands, weights], _mixed_sum_fwd_kernel)
    ):
        return mixed_op_sum_reference(outputs, weights)
    if stacked is not None:
        return _MixedOpSum.apply(weights, True, stacked)
    return _MixedOpSum.apply(weights, False, *cands)
