"""PC-DARTS partial channel connection as one Triton kernel, forward and backward.

PC-DARTS (Xu et al., ICLR 2020), Sec. 3.2, Eq. (2): an edge sends only the channels picked by the mask
``S`` (the first ``C/k``) through the mixed op and bypasses the rest::

    f_PC(x; S) = sum_o softmax(alpha)_o * o(S * x)  +  (1 - S) * x

followed, as in the authors' ``MixedOp.forward``, by ``channel_shuffle(groups=k)`` so that the next edge
samples different channels. In a reduction cell (ops of stride 2) the bypassed channels go through
``MaxPool2d(2, 2)`` first. The caller runs the ops (``op_outputs[i] = op_i(x[:, :C//k])``); this kernel
does the weighted sum, the concatenation, the optional max-pool and the shuffle in one pass that writes
the final layout: ``out[:, c*k + g] = cat[:, g*(C//k) + c]`` (for ``g < k``, ``c < C//k``).

Edge normalization (Sec. 3.3, the ``beta`` weights) is *not* in this kernel. ``beta`` scales a whole
edge output and combines the edges that enter a node: ``node = sum_j softmax(beta)_j * edge_j``. That is
:func:`hwnas.kernels.mixed_op_sum` over the edges, which reads each edge output once anyway, so folding
``beta_j`` in here would save no memory traffic and would tie a per-node reduction to a per-edge op.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import (
    KERNEL_DTYPES,
    candidate_grads,
    empty,
    layout_key,
    next_pow2,
    on_interpreter,
    same_layout,
    split_candidates,
    tl,
    triton,
    unify_layout,
    use_triton,
)
from .mixed_op_sum import mixed_op_sum_reference

__all__ = ["channel_shuffle", "partial_channel_mix", "partial_channel_mix_reference"]


# ----------------------------------------------------------------------------------------- kernels


@triton.jit
def _pc_mix_fwd_kernel(
    x_ptr, ops, w_ptr, out_ptr,
    C, CP, HO, WO,
    sxb, sxc, sxh, sxw,
    sob, soc, soh, sow,
    N: tl.constexpr, KG: tl.constexpr, POOL: tl.constexpr, BLOCK: tl.constexpr,
):
    # One program: a block of one output plane (b, co); out is contiguous (B, C, HO, WO).
    pid_bc = tl.program_id(0)
    b = (pid_bc // C).to(tl.int64)
    co = pid_bc % C
    grp = co % KG  # which of the k channel groups of cat(mixed, bypass) this channel comes from
    c2 = co // KG
    hw = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = hw < HO * WO
    oh = hw // WO
    ow = hw % WO
    out_offs = pid_bc.to(tl.int64) * (HO * WO) + hw
    if grp == 0:  # weighted sum of the op outputs at channel c2
        src = b * sob + c2 * soc + oh * soh + ow * sow
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for i in tl.static_range(N):
            o = tl.load(ops[i] + src, mask=mask, other=0.0, eviction_policy="evict_first")
            acc += tl.load(w_ptr + i).to(tl.float32) * o.to(tl.float32)
        tl.store(out_ptr + out_offs, acc.to(out_ptr.dtype.element_ty), mask=mask)
    else:  # bypassed channel ci of x, copied or 2x2/2 max-pooled
        xb = x_ptr + b * sxb + (grp * CP + c2) * sxc
        if POOL:
            # compared in fp32 (exact for every storage dtype); torch's rule: first max wins, NaN wins
            best = tl.load(xb + (2 * oh) * sxh + (2 * ow) * sxw, mask=mask, other=0.0).to(tl.float32)
            for j in tl.static_range(1, 4):
                v = tl.load(xb + (2 * oh + j // 2) * sxh + (2 * ow + j % 2) * sxw, mask=mask, other=0.0)
                v = v.to(tl.float32)
                best = tl.where((v > best) | (v != v), v, best)
        else:
            best = tl.load(xb + oh * sxh + ow * sxw, mask=mask, other=0.0)
        tl.store(out_ptr + out_offs, best.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _pc_mix_bwd_kernel(
    g_ptr, x_ptr, ops, gops, w_ptr, gx_ptr, partial_ptr,
    C, CP, H, W, HO, WO, n_blk, n_part,
    sgb, sgc, sgh, sgw,
    sxb, sxc, sxh, sxw,
    sob, soc, soh, sow,
    sdb, sdc, sdh, sdw,
    N: tl.constexpr, KG: tl.constexpr, POOL: tl.constexpr,
    GRAD_MASK: tl.constexpr, NEED_W: tl.constexpr, NEED_X: tl.constexpr, BLOCK: tl.constexpr,
):
    # One program: a block of one input plane (b, ci) of x. Channels ci < CP are op channels: write the
    # op-output grads (w_i * g at output channel ci*KG), the weight-grad partials, and zeros into dL/dx.
    # Channels ci >= CP are bypassed: route g back (through the max-pool's argmax when POOL).
    pid_bc = tl.program_id(0)
    pid_s = tl.program_id(1)
    b = (pid_bc // C).to(tl.int64)
    ci = pid_bc % C
    hw = pid_s * BLOCK + tl.arange(0, BLOCK)
    in_x = hw < H * W
    h = hw // W
    w = hw % W
    gx_offs = b * sdb + ci * sdc + h * sdh + w * sdw
    if ci < CP:
        in_o = hw < HO * WO
        oh = hw // WO
        ow = hw % WO
        gm = tl.load(g_ptr + b * sgb + (ci * KG) * sgc + oh * sgh + ow * sgw, mask=in_o, other=0.0)
        gm = gm.to(tl.float32)
        src = b * sob + ci * soc + oh * soh + ow * sow
        part = (b * CP + ci) * n_blk + pid_s
        for i in tl.static_range(N):
            if (GRAD_MASK >> i) & 1:
                wi = tl.load(w_ptr + i).to(tl.float32)
                tl.store(gops[i] + src, (wi * gm).to(gops[i].dtype.element_ty), mask=in_o)
            if NEED_W:
                o = tl.load(ops[i] + src, mask=in_o, other=0.0, eviction_policy="evict_first")
                tl.store(partial_ptr + i * n_part + part, tl.sum(gm * o.to(tl.float32), axis=0))
        if NEED_X:
            tl.store(gx_ptr + gx_offs, tl.zeros([BLOCK], dtype=gx_ptr.dtype.element_ty), mask=in_x)
    else:
        if NEED_X:
            grp = ci // CP
            co = (ci % CP) * KG + grp
            gb = g_ptr + b * sgb + co * sgc
            if POOL:
                oh = h // 2
                ow = w // 2
                valid = in_x & (oh < HO) & (ow < WO)  # odd H/W: the last row/column is never pooled
                xb = x_ptr + b * sxb + ci * sxc
                best = tl.load(xb + (2 * oh) * sxh + (2 * ow) * sxw, mask=valid, other=0.0).to(tl.float32)
                arg = tl.zeros([BLOCK], dtype=tl.int32)
                for j in tl.static_range(1, 4):
                    v = tl.load(xb + (2 * oh + j // 2) * sxh + (2 * ow + j % 2) * sxw, mask=valid, other=0.0)
                    v = v.to(tl.float32)
                    take = (v > best) | (v != v)
                    best = tl.where(take, v, best)
                    arg = tl.where(take, j, arg)
                mine = (h - 2 * oh) * 2 + (w - 2 * ow)
                hit = valid & (arg == mine)
                gv = tl.load(gb + oh * sgh + ow * sgw, mask=hit, other=0.0)
                gv = tl.where(hit, gv, 0.0)
            else:
                gv = tl.load(gb + h * sgh + w * sgw, mask=in_x, other=0.0)
            tl.store(gx_ptr + gx_offs, gv.to(gx_ptr.dtype.element_ty), mask=in_x)


# --------------------------------------------------------------------------------------- launchers


def _block(plane: int, interpreted: bool) -> tuple[int, int]:
    """(BLOCK, num_warps) for one (b, c) plane of ``plane`` elements: the whole plane up to 1024 on a
    GPU (not yet tuned on hardware); up to 16384 in the interpreter, where each program costs Python time."""
    if interpreted:
        return min(next_pow2(plane), 1 << 14), 1
    block = min(max(next_pow2(plane), 32), 1024)
    return block, max(1, min(4, block // 128))


def _launch_fwd(x: Tensor, ops: list[Tensor], weights: Tensor, k: int, pool: bool, out: Tensor) -> None:
    B, C, _, _ = x.shape
    _, CP, HO, WO = ops[0].shape
    if out.shape != (B, C, HO, WO) or not out.is_contiguous():
        raise ValueError("out must be a contiguous (B, C, HO, WO) tensor")
    if not all(same_layout(o, ops[0]) for o in ops) or not weights.is_contiguous():
        raise ValueError("op outputs must share one layout and weights must be contiguous")
    block, warps = _block(HO * WO, on_interpreter(x))
    grid = (B * C, triton.cdiv(HO * WO, block))
    _pc_mix_fwd_kernel[grid](
        x, tuple(ops), weights, out, C, CP, HO, WO, *x.stride(), *ops[0].stride(),
        N=len(ops), KG=k, POOL=pool, BLOCK=block, num_warps=warps,
    )


def _launch_bwd(
    g: Tensor, x: Tensor, ops: list[Tensor], gops: list[Tensor | None], weights: Tensor,
    gx: Tensor | None, k: int, pool: bool, need_w: bool, op_shape, op_stride,
) -> Tensor | None:
    """Writes ``gops[i]`` (where not None) and every element of ``gx`` (if given); returns the fp32
    weight gradient ``[sum(dL/dmixed * o_i)]_i`` if ``need_w`` (else ``ops`` are never read).
    ``op_shape``/``op_stride``: the layout shared by the op outputs and their gradient buffers."""
    B, C, H, W = x.shape
    _, CP, HO, WO = op_shape
    if g.shape != (B, C, HO, WO):
        raise ValueError(f"grad_output must be {(B, C, HO, WO)}, got {tuple(g.shape)}")
    want = (tuple(op_shape), layout_key(op_shape, op_stride))
    for t in [*(ops if need_w else ()), *(o for o in gops if o is not None)]:
        if (tuple(t.shape), layout_key(t.shape, t.stride())) != want:
            raise ValueError("op outputs and their gradients must share one layout")
    block, warps = _block(H * W, on_interpreter(x))
    n_blk = triton.cdiv(H * W, block)
    n_part = B * CP * n_blk
    partial = empty((len(ops), n_part), dtype=torch.float32, device=x.device) if need_w else weights
    mask = sum(1 << i for i, t in enumerate(gops) if t is not None)
    gops_arg = tuple(t if t is not None else g for t in gops)
    gx_arg = gx if gx is not None else x
    _pc_mix_bwd_kernel[(B * C, n_blk)](
        g, x, tuple(ops), gops_arg, weights, gx_arg, partial,
        C, CP, H, W, HO, WO, n_blk, n_part,
        *g.stride(), *x.stride(), *op_stride, *gx_arg.stride(),
        N=len(ops), KG=k, POOL=pool, GRAD_MASK=mask, NEED_W=need_w, NEED_X=gx is not None,
        BLOCK=block, num_warps=warps,
    )
    return partial.sum(dim=1) if need_w else None


# --------------------------------------------------------------------------------------- reference


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """ShuffleNet / PC-DARTS channel shuffle of a (B, C, H, W) tensor: ``out[:, c*groups + g] =
    x[:, g*(C//groups) + c]``. Returns a contiguous copy."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).contiguous().view(b, c, h, w)


def _check_inputs(x: Tensor, ops: Sequence[Tensor], weights: Tensor, k: int, stride: int) -> None:
    if x.dim() != 4:
        raise ValueError(f"x must be (B, C, H, W), got {tuple(x.shape)}")
    B, C, H, W = x.shape
    if not isinstance(k, int) or k < 1 or C % k:
        raise ValueError(f"k must be a positive int dividing C={C}, got {k!r}")
    if stride not in (1, 2):
        raise ValueError(f"stride must be 1 or 2, got {stride!r}")
    want = (B, C // k, H, W) if stride == 1 else (B, C // k, H // 2, W // 2)
    if stride == 2 and (H < 2 or W < 2):
        raise ValueError(f"stride 2 max-pools the bypass 2x2 and needs H, W >= 2, got {H}x{W}")
    for i, o in enumerate(ops):
        if tuple(o.shape) != want:
            raise ValueError(
                f"op output {i} is {tuple(o.shape)}, expected {want} for stride {stride} (ops of stride 2 "
                f"must give floor(H/2) x floor(W/2), the size of the max-pooled bypass)"
            )
        if o.dtype != x.dtype or o.device != x.device:
            raise ValueError(f"op output {i} is {o.dtype} on {o.device}; x is {x.dtype} on {x.device}")
    if not x.is_floating_point():
        raise TypeError(f"x must be floating point, got {x.dtype}")
    if weights.dim() != 1 or weights.shape[0] != len(ops) or not weights.is_floating_point():
        raise ValueError(f"weights must be a floating tensor of shape ({len(ops)},), got {tuple(weights.shape)}")
    if weights.device != x.device:
        raise ValueError(f"weights are on {weights.device}, x on {x.device}")


def partial_channel_mix_reference(
    x: Tensor, op_outputs: Sequence[Tensor] | Tensor, weights: Tensor, k: int, *, stride: int = 1
) -> Tensor:
    """Pure-torch PC-DARTS ``MixedOp`` tail; same contract as :func:`partial_channel_mix`."""
    _, ops = split_candidates(op_outputs)
    _check_inputs(x, ops, weights, k, stride)
    mixed = mixed_op_sum_reference(ops, weights)
    bypass = x[:, x.shape[1] // k :]
    if stride == 2 and bypass.shape[1]:
        bypass = F.max_pool2d(bypass, 2, 2)
    elif stride == 2:  # k=1: nothing bypassed (torch's max_pool2d rejects 0 channels)
        bypass = bypass[:, :, : x.shape[2] // 2, : x.shape[3] // 2]
    return channel_shuffle(torch.cat([mixed, bypass], dim=1), k)


# ---------------------------------------------------------------------------------------- autograd


class _PartialChannelMix(torch.autograd.Function):
    """``apply(x, weights, k, stride, stacked, *tensors)``; ``tensors`` as in ``_MixedOpSum``."""

    @staticmethod
    def forward(ctx, x, weights, k, stride, stacked, *tensors):
        ops = list(tensors[0].unbind(0)) if stacked else list(tensors)
        ops, _ = unify_layout(ops)
        w = weights.contiguous()
        B, C, _, _ = x.shape
        _, _, HO, WO = ops[0].shape
        out = empty((B, C, HO, WO), dtype=x.dtype, device=x.device)
        _launch_fwd(x, ops, w, k, stride == 2, out)
        ctx.k, ctx.pool, ctx.stacked, ctx.n = k, stride == 2, stacked, len(ops)
        ctx.w_dtype = weights.dtype
        ctx.op_layout = (tuple(ops[0].shape), tuple(ops[0].stride()), ops[0].dtype)
        need_w = ctx.needs_input_grad[1]
        # x is needed in backward only to find the max-pool's argmax; the ops only for dL/dweights.
        keep_x = x if (ctx.pool and ctx.needs_input_grad[0]) else None
        ctx.save_for_backward(w, keep_x, *(ops if need_w else ()))
        ctx.x_meta = (tuple(x.shape), x.dtype, x.device)
        return out

    @staticmethod
    def backward(ctx, g):
        w, x, *ops = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_in = list(ctx.needs_input_grad[5:])
        if ctx.stacked:
            need_in = need_in * ctx.n
        shape, stride, dtype = ctx.op_layout
        x_shape, x_dtype, device = ctx.x_meta
        stacked_buf, gops = candidate_grads(ctx.n, shape, stride, dtype, device, ctx.stacked, need_in)
        if not ops:  # NEED_W is off: the kernel never reads them, any pointer of that dtype will do
            ops = [g] * ctx.n
        gx = empty(x_shape, dtype=x_dtype, device=device) if need_x else None
        if x is None:  # read only to find the max-pool's argmax for dL/dx; a 0-stride stand-in otherwise
            x = g.new_empty(1).expand(x_shape)
        gw = None
        if need_x or need_w or any(need_in):
            gw = _launch_bwd(g, x, ops, gops, w, gx, ctx.k, ctx.pool, need_w, shape, stride)
        gw = gw.to(ctx.w_dtype) if gw is not None else None
        tail = (stacked_buf,) if ctx.stacked else tuple(gops)
        return (gx, gw, None, None, None, *tail)


# ------------------------------------------------------------------------------------------ public


def partial_channel_mix(
    x: Tensor, op_outputs: Sequence[Tensor] | Tensor, weights: Tensor, k: int, *, stride: int = 1
) -> Tensor:
    """PC-DARTS partial channel mixed op: ``channel_shuffle(cat(sum_i w_i * op_i, bypass), k)``.

    Args:
        x: ``(B, C, H, W)`` edge input, fp32 / fp16 / bf16, any strides; ``C % k == 0``.
        op_outputs: N tensors ``op_outputs[i] = op_i(x[:, :C//k])`` of shape ``(B, C//k, H', W')`` with
            x's dtype and device, or one ``(N, B, C//k, H', W')`` tensor holding them stacked.
        weights: ``(N,)`` floating, e.g. ``softmax(alpha)`` for this edge; read as fp32.
        k: the PC-DARTS channel proportion 1/k (k=1: every channel goes through the ops).
        stride: 1 -- the ops keep the size (``H' = H``, ``W' = W``) and ``bypass = x[:, C//k:]``;
            2 -- reduction edge: ``H' = H // 2``, ``W' = W // 2`` and ``bypass = max_pool2d(x[:, C//k:], 2, 2)``
            as in the PC-DARTS code (ties go to the first maximum in row-major window order, as in torch).

    Returns:
        ``(B, C, H', W')`` contiguous, x's dtype, with ``out[:, c*k] = sum_i w_i * op_i[:, c]`` and
        ``out[:, c*k + g] = bypass[:, (g-1)*(C//k) + c]`` for ``1 <= g < k``. The sum is fp32.

    Backward: ``dL/dx`` (zero on the first C//k channels, whose gradient reaches x through the ops'
    own graphs; routed through the max-pool's argmax for stride 2, recomputed from x), ``dL/dop_i =
    w_i * dL/dout[:, ::k]`` (laid out like the op outputs; one stacked tensor for stacked input), and
    ``dL/dw_i = sum(dL/dout[:, ::k] * op_i)`` (two-stage deterministic reduction, fp32).

    Copies: none when the op outputs share one dense layout (x and ``dL/dout`` may have any strides);
    an op output in another layout is copied once. The op outputs are kept for backward only when
    ``weights`` requires grad, and x only for stride 2 when x requires grad.

    Edge normalization (``beta``) is not applied here; see the module docstring.
    Runs the Triton kernel on CUDA (or on CPU under ``TRITON_INTERPRET=1``), else the reference.
    """
    stacked, ops = split_candidates(op_outputs)
    _check_inputs(x, ops, weights, k, stride)
    if (
        x.dtype not in KERNEL_DTYPES
        or ops[0].numel() == 0
        or not use_triton([x, *ops, weights], _pc_mix_fwd_kernel)
    ):
        return partial_channel_mix_reference(x, op_outputs, weights, k, stride=stride)
    if stacked is not None:
        return _PartialChannelMix.apply(x, weights, k, stride, True, stacked)
    return _PartialChannelMix.apply(x, weights, k, stride, False, *ops)
