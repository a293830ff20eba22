"""Single-Path NAS masked superkernel depthwise convolution, fused, forward and backward.

Single-Path NAS (Stamoulis et al., ECML-PKDD 2019), Sec. 3.2: one ``k_max x k_max`` depthwise
"superkernel" per MBConv layer holds every candidate. The kernel-size decision keeps the inner 3x3 and
adds the outer ring ``w_{5x5 \\ 3x3}`` only when its squared norm beats a learned threshold::

    w_k = w_3x3 + 1(||w_{5x5 \\ 3x3}||^2 > t_k5) * w_{5x5 \\ 3x3}

and the expansion decision (ratio 3 vs 6: the first vs the second half of the depthwise channels) adds
the second half only when its squared norm, taken on the kernel-size-masked ``w_k``, beats ``t_e6``::

    w_{k,e} = w_{k,e3} + 1(||w_{k, e6 \\ e3}||^2 > t_e6) * w_{k, e6 \\ e3}

``1(.)`` is the hard step in the forward pass; its gradient is that of ``sigmoid(.)``
(straight-through), exactly as the authors' ``Indicator(x) = stop_gradient(1(x>=0) - sigmoid(x)) +
sigmoid(x)`` in ``dstamoulis/single-path-nas`` (``nas-search/superkernel.py``). Two documented
differences from that code: we use the paper's squared norm (the code uses the plain L2 norm, so its
thresholds live on a different scale) and the paper's strict ``>`` (the code uses ``>=``).

Extension to ``k_max = 7`` (not in the paper, whose superkernel is 5x5): the rings nest,
``w_k = w_3x3 + d5 * (w_{5x5\\3x3} + d7 * w_{7x7\\5x5})`` with ``d7 = 1(||w_{7x7\\5x5}||^2 > t_k7)``, so
a 7x7 without its 5x5 ring cannot be chosen.

Not here: the skip decision (the paper's ``1(||w_{k,e3}||^2 > t_e3)`` that drops the whole layer). The
authors' code multiplies the whole depthwise kernel by it, which zeroes the depthwise output but not the
block's (BatchNorm shifts, projection); dropping the layer means gating the MBConv block's residual
branch, so the block owns that gate. :func:`superkernel_gates` returns the kernel-size and expansion
indicators (straight-through, the same values the kernel uses) for the latency term of the loss.

Kernel layout: a one-program "gates" kernel reduces ``w^2`` into a 2x3 table (channel half x ring),
decides the indicators and writes a per-(half, tap) multiplier table; the convolution kernels read the
raw weight and multiply each tap by its table entry, so no masked weight is ever materialized. Backward:
``dL/dx`` by a transposed depthwise kernel; ``dL/dw_eff`` by a reduction over (batch, space) into
per-program partials; then a one-program kernel sums the partials in fixed order (deterministic), forms
the 2x3 table of ``sum(dL/dw_eff * w)`` and applies the chain rule through the masks, norms and
indicators, writing ``dL/dw`` and ``dL/dt``. All arithmetic is fp32.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import KERNEL_DTYPES, empty, next_pow2, on_interpreter, tl, triton, use_triton

__all__ = ["indicator", "masked_dwconv", "masked_dwconv_reference", "superkernel_gates", "superkernel_margins"]

# stats buffer written by the gates kernel (fp32): the indicator arguments z = s - t, the indicators,
# and the 2x3 table S[half, ring] = sum of w^2 (ring 0: inner 3x3, 1: 5x5 minus 3x3, 2: 7x7 minus 5x5).
_Z5, _Z7, _ZE, _D5, _D7, _DE, _S00 = 0, 1, 2, 3, 4, 5, 6
_N_STATS = 12


# ----------------------------------------------------------------------------------------- kernels


@triton.jit
def _sp_gates_fwd_kernel(
    w_ptr, tk_ptr, te_ptr, stats_ptr, tapmult_ptr, C, C_SPLIT,
    K: tl.constexpr, HAS_TK: tl.constexpr, HAS_TE: tl.constexpr, BLOCK_C: tl.constexpr, KK_P2: tl.constexpr,
):
    # Single program. w: (C, K*K) contiguous. tapmult: (2, K*K), the multiplier of each tap for the
    # first (row 0) and second (row 1) channel group.
    cols = tl.arange(0, KK_P2)
    col_ok = cols < K * K
    ring = tl.maximum(tl.maximum(tl.abs(cols // K - K // 2), tl.abs(cols % K - K // 2)) - 1, 0)
    lo = tl.zeros([KK_P2], dtype=tl.float32)  # per-tap sum over channels < C_SPLIT of w^2
    hi = tl.zeros([KK_P2], dtype=tl.float32)  # same over channels >= C_SPLIT
    for c0 in range(0, C, BLOCK_C):
        rows = c0 + tl.arange(0, BLOCK_C)
        m = (rows < C)[:, None] & col_ok[None, :]
        w = tl.load(w_ptr + rows[:, None] * (K * K) + cols[None, :], mask=m, other=0.0).to(tl.float32)
        is_hi = (rows >= C_SPLIT)[:, None]
        hi += tl.sum(tl.where(is_hi, w * w, 0.0), axis=0)
        lo += tl.sum(tl.where(is_hi, 0.0, w * w), axis=0)
    s00 = tl.sum(tl.where(ring == 0, lo, 0.0), axis=0)
    s01 = tl.sum(tl.where(ring == 1, lo, 0.0), axis=0)
    s02 = tl.sum(tl.where(ring == 2, lo, 0.0), axis=0)
    s10 = tl.sum(tl.where(ring == 0, hi, 0.0), axis=0)
    s11 = tl.sum(tl.where(ring == 1, hi, 0.0), axis=0)
    s12 = tl.sum(tl.where(ring == 2, hi, 0.0), axis=0)
    z5 = s00 * 0.0
    z7 = s00 * 0.0
    ze = s00 * 0.0
    d5 = z5 + 1.0
    d7 = z5 + 1.0
    de = z5 + 1.0
    if HAS_TK:
        z5 = s01 + s11 - tl.load(tk_ptr).to(tl.float32)
        d5 = (z5 > 0).to(tl.float32)
        if K == 7:
            z7 = s02 + s12 - tl.load(tk_ptr + 1).to(tl.float32)
            d7 = (z7 > 0).to(tl.float32)
    if HAS_TE:
        # ||w_k restricted to the second channel group||^2, with d in {0, 1}
        ze = s10 + d5 * s11 + d5 * d7 * s12 - tl.load(te_ptr).to(tl.float32)
        de = (ze > 0).to(tl.float32)
    tl.store(stats_ptr + 0, z5)
    tl.store(stats_ptr + 1, z7)
    tl.store(stats_ptr + 2, ze)
    tl.store(stats_ptr + 3, d5)
    tl.store(stats_ptr + 4, d7)
    tl.store(stats_ptr + 5, de)
    tl.store(stats_ptr + 6, s00)
    tl.store(stats_ptr + 7, s01)
    tl.store(stats_ptr + 8, s02)
    tl.store(stats_ptr + 9, s10)
    tl.store(stats_ptr + 10, s11)
    tl.store(stats_ptr + 11, s12)
    mk = tl.where(ring == 0, 1.0, tl.where(ring == 1, d5, d5 * d7))
    tl.store(tapmult_ptr + cols, mk, mask=col_ok)
    tl.store(tapmult_ptr + K * K + cols, mk * de, mask=col_ok)


@triton.jit
def _dwconv_fwd_kernel(
    x_ptr, w_ptr, tapmult_ptr, y_ptr, C, H, W, HO, WO, C_SPLIT,
    sxb, sxc, sxh, sxw,
    K: tl.constexpr, STRIDE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):
    # One program: BLOCK_C channels x BLOCK_HW output positions of one image. y: contiguous (B, C, HO, WO).
    pid_bc = tl.program_id(0)
    n_cblk = tl.cdiv(C, BLOCK_C)
    b = (pid_bc // n_cblk).to(tl.int64)
    c = (pid_bc % n_cblk) * BLOCK_C + tl.arange(0, BLOCK_C)
    hw = tl.program_id(1) * BLOCK_HW + tl.arange(0, BLOCK_HW)
    c_ok = c < C
    hw_ok = hw < HO * WO
    oh = hw // WO
    ow = hw % WO
    half = (c >= C_SPLIT).to(tl.int32)
    x_base = x_ptr + b * sxb + c.to(tl.int64)[:, None] * sxc
    acc = tl.zeros([BLOCK_C, BLOCK_HW], dtype=tl.float32)
    for kh in tl.static_range(K):
        ih = oh * STRIDE + (kh - K // 2)
        h_ok = hw_ok & (ih >= 0) & (ih < H)
        for kw in tl.static_range(K):
            iw = ow * STRIDE + (kw - K // 2)
            ok = h_ok & (iw >= 0) & (iw < W)
            wt = tl.load(w_ptr + c * (K * K) + (kh * K + kw), mask=c_ok, other=0.0).to(tl.float32)
            wt = wt * tl.load(tapmult_ptr + half * (K * K) + (kh * K + kw), mask=c_ok, other=0.0)
            xv = tl.load(x_base + (ih * sxh + iw * sxw)[None, :], mask=c_ok[:, None] & ok[None, :], other=0.0)
            acc += xv.to(tl.float32) * wt[:, None]
    y_offs = (b * C + c[:, None]) * (HO * WO) + hw[None, :]
    tl.store(y_ptr + y_offs, acc.to(y_ptr.dtype.element_ty), mask=c_ok[:, None] & hw_ok[None, :])


@triton.jit
def _dwconv_bwd_x_kernel(
    g_ptr, w_ptr, tapmult_ptr, gx_ptr, C, H, W, HO, WO, C_SPLIT,
    sgb, sgc, sgh, sgw,
    K: tl.constexpr, STRIDE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):
    # Transposed depthwise conv: gx[b, c, ih, iw] = sum over taps with ih = oh*STRIDE + kh - K//2 of
    # g[b, c, oh, ow] * w_eff[c, kh, kw]. One program: BLOCK_C channels x BLOCK_HW input positions.
    pid_bc = tl.program_id(0)
    n_cblk = tl.cdiv(C, BLOCK_C)
    b = (pid_bc // n_cblk).to(tl.int64)
    c = (pid_bc % n_cblk) * BLOCK_C + tl.arange(0, BLOCK_C)
    hw = tl.program_id(1) * BLOCK_HW + tl.arange(0, BLOCK_HW)
    c_ok = c < C
    hw_ok = hw < H * W
    ih = hw // W
    iw = hw % W
    half = (c >= C_SPLIT).to(tl.int32)
    g_base = g_ptr + b * sgb + c.to(tl.int64)[:, None] * sgc
    acc = tl.zeros([BLOCK_C, BLOCK_HW], dtype=tl.float32)
    for kh in tl.static_range(K):
        th = ih + (K // 2 - kh)  # = oh * STRIDE; only non-negative multiples of STRIDE hit an output
        h_ok = hw_ok & (th >= 0) & (th % STRIDE == 0)
        oh = tl.where(h_ok, th, 0) // STRIDE
        h_ok = h_ok & (oh < HO)
        for kw in tl.static_range(K):
            tw = iw + (K // 2 - kw)
            ok = h_ok & (tw >= 0) & (tw % STRIDE == 0)
            ow = tl.where(ok, tw, 0) // STRIDE
            ok = ok & (ow < WO)
            wt = tl.load(w_ptr + c * (K * K) + (kh * K + kw), mask=c_ok, other=0.0).to(tl.float32)
            wt = wt * tl.load(tapmult_ptr + half * (K * K) + (kh * K + kw), mask=c_ok, other=0.0)
            gv = tl.load(g_base + (oh * sgh + ow * sgw)[None, :], mask=c_ok[:, None] & ok[None, :], other=0.0)
            acc += gv.to(tl.float32) * wt[:, None]
    gx_offs = (b * C + c[:, None]) * (H * W) + hw[None, :]
    tl.store(gx_ptr + gx_offs, acc.to(gx_ptr.dtype.element_ty), mask=c_ok[:, None] & hw_ok[None, :])


@triton.jit
def _dwconv_bwd_w_kernel(
    x_ptr, g_ptr, partial_ptr, B, C, H, W, HO, WO, n_split,
    sxb, sxc, sxh, sxw,
    sgb, sgc, sgh, sgw,
    K: tl.constexpr, KK_P2: tl.constexpr, STRIDE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):
    # dL/dw_eff[c, tap] = sum over (b, oh, ow) of g[b, c, oh, ow] * x[b, c, oh*S + kh - K//2, ow*S + kw - K//2].
    # Program (channel block, split) sums the (image, position-block) tiles split, split + n_split, ...
    # and writes partial[split, c, tap]; the gates-backward kernel adds the splits in order.
    pid_c = tl.program_id(0)
    split = tl.program_id(1)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    taps = tl.arange(0, KK_P2)
    n_hw = tl.cdiv(HO * WO, BLOCK_HW)
    acc = tl.zeros([BLOCK_C, KK_P2], dtype=tl.float32)
    for t in range(split, B * n_hw, n_split):
        b = (t // n_hw).to(tl.int64)
        hw = (t % n_hw) * BLOCK_HW + tl.arange(0, BLOCK_HW)
        hw_ok = hw < HO * WO
        oh = hw // WO
        ow = hw % WO
        gm = c_ok[:, None] & hw_ok[None, :]
        g_offs = b * sgb + c.to(tl.int64)[:, None] * sgc + (oh * sgh + ow * sgw)[None, :]
        gv = tl.load(g_ptr + g_offs, mask=gm, other=0.0).to(tl.float32)
        x_base = x_ptr + b * sxb + c.to(tl.int64)[:, None] * sxc
        for kh in tl.static_range(K):
            ih = oh * STRIDE + (kh - K // 2)
            h_ok = hw_ok & (ih >= 0) & (ih < H)
            for kw in tl.static_range(K):
                iw = ow * STRIDE + (kw - K // 2)
                ok = h_ok & (iw >= 0) & (iw < W)
                xv = tl.load(x_base + (ih * sxh + iw * sxw)[None, :], mask=c_ok[:, None] & ok[None, :], other=0.0)
                v = tl.sum(gv * xv.to(tl.float32), axis=1)
                acc = tl.where(taps[None, :] == kh * K + kw, acc + v[:, None], acc)
    offs = (split * C + c[:, None]) * (K * K) + taps[None, :]
    tl.store(partial_ptr + offs, acc, mask=c_ok[:, None] & (taps < K * K)[None, :])


@triton.jit
def _sp_gates_bwd_kernel(
    partial_ptr, w_ptr, stats_ptr, tapmult_ptr, gw_ptr, gt_ptr, C, C_SPLIT, n_split,
    K: tl.constexpr, HAS_TK: tl.constexpr, HAS_TE: tl.constexpr, BLOCK_C: tl.constexpr, KK_P2: tl.constexpr,
):
    # Single program. G = dL/dw_eff = sum over splits of partial. With P[h, r] = sum G*w over half h and
    # ring r, and d in {0, 1} (forward values):
    #   dL/dde = P10 + d5 P11 + d5 d7 P12          dL/dd5 = P01 + de P11 + d7 (P02 + de P12) [+ via s_e]
    #   dL/dd7 = d5 (P02 + de P12) [+ via s_e]     s_e = S10 + d5^2 S11 + d5^2 d7^2 S12
    #   dL/dz = dL/dd * sigmoid'(z) (straight-through), dL/dt = -dL/dz, and
    #   dL/dw = G * mult[h, tap] + 2 w (dL/dz5 [ring 1] + dL/dz7 [ring 2] + dL/dze * mk[tap] [half 1]).
    cols = tl.arange(0, KK_P2)
    col_ok = cols < K * K
    ring = tl.maximum(tl.maximum(tl.abs(cols // K - K // 2), tl.abs(cols % K - K // 2)) - 1, 0)
    lo = tl.zeros([KK_P2], dtype=tl.float32)
    hi = tl.zeros([KK_P2], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        rows = c0 + tl.arange(0, BLOCK_C)
        m = (rows < C)[:, None] & col_ok[None, :]
        offs = rows[:, None] * (K * K) + cols[None, :]
        g = tl.zeros([BLOCK_C, KK_P2], dtype=tl.float32)
        for s in range(0, n_split):
            g += tl.load(partial_ptr + s * C * (K * K) + offs, mask=m, other=0.0)
        gw = g * tl.load(w_ptr + offs, mask=m, other=0.0).to(tl.float32)
        is_hi = (rows >= C_SPLIT)[:, None]
        hi += tl.sum(tl.where(is_hi, gw, 0.0), axis=0)
        lo += tl.sum(tl.where(is_hi, 0.0, gw), axis=0)
    p01 = tl.sum(tl.where(ring == 1, lo, 0.0), axis=0)
    p02 = tl.sum(tl.where(ring == 2, lo, 0.0), axis=0)
    p10 = tl.sum(tl.where(ring == 0, hi, 0.0), axis=0)
    p11 = tl.sum(tl.where(ring == 1, hi, 0.0), axis=0)
    p12 = tl.sum(tl.where(ring == 2, hi, 0.0), axis=0)
    d5 = tl.load(stats_ptr + 3)
    d7 = tl.load(stats_ptr + 4)
    de = tl.load(stats_ptr + 5)
    g_d5 = p01 + de * p11 + d7 * (p02 + de * p12)
    g_d7 = d5 * (p02 + de * p12)
    g_ze = p01 * 0.0
    g_z5 = p01 * 0.0
    g_z7 = p01 * 0.0
    if HAS_TE:
        sig_e = tl.sigmoid(tl.load(stats_ptr + 2))
        g_ze = (p10 + d5 * p11 + d5 * d7 * p12) * sig_e * (1.0 - sig_e)
        s11 = tl.load(stats_ptr + 10)
        s12 = tl.load(stats_ptr + 11)
        g_d5 += g_ze * 2.0 * d5 * (s11 + d7 * s12)
        g_d7 += g_ze * 2.0 * d5 * d7 * s12
    if HAS_TK:
        sig5 = tl.sigmoid(tl.load(stats_ptr + 0))
        g_z5 = g_d5 * sig5 * (1.0 - sig5)
        if K == 7:
            sig7 = tl.sigmoid(tl.load(stats_ptr + 1))
            g_z7 = g_d7 * sig7 * (1.0 - sig7)
    tl.store(gt_ptr + 0, -g_z5)
    tl.store(gt_ptr + 1, -g_z7)
    tl.store(gt_ptr + 2, -g_ze)
    mk = tl.load(tapmult_ptr + cols, mask=col_ok, other=0.0)
    mult_hi = tl.load(tapmult_ptr + K * K + cols, mask=col_ok, other=0.0)
    coef_lo = tl.where(ring == 1, g_z5, 0.0) + tl.where(ring == 2, g_z7, 0.0)
    coef_hi = coef_lo + g_ze * mk
    for c0 in range(0, C, BLOCK_C):
        rows = c0 + tl.arange(0, BLOCK_C)
        m = (rows < C)[:, None] & col_ok[None, :]
        offs = rows[:, None] * (K * K) + cols[None, :]
        g = tl.zeros([BLOCK_C, KK_P2], dtype=tl.float32)
        for s in range(0, n_split):
            g += tl.load(partial_ptr + s * C * (K * K) + offs, mask=m, other=0.0)
        w = tl.load(w_ptr + offs, mask=m, other=0.0).to(tl.float32)
        is_hi = (rows >= C_SPLIT)[:, None]
        mult = tl.where(is_hi, mult_hi[None, :], mk[None, :])
        coef = tl.where(is_hi, coef_hi[None, :], coef_lo[None, :])
        tl.store(gw_ptr + offs, (g * mult + 2.0 * w * coef).to(gw_ptr.dtype.element_ty), mask=m)


# --------------------------------------------------------------------------------------- launchers


@functools.lru_cache(maxsize=None)
def _num_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _conv_blocks(C: int, plane: int, interpreted: bool) -> tuple[int, int, int]:
    """(BLOCK_C, BLOCK_HW, num_warps): about 1024 outputs per program on a GPU, channels stacked when
    maps are small (7x7 layers have many channels); not yet tuned on hardware. Interpreter: as few
    programs as possible (each costs Python time)."""
    if interpreted:
        bhw = min(next_pow2(plane), 4096)
        return min(next_pow2(C), max(1, 16384 // bhw)), bhw, 1
    bhw = min(max(next_pow2(plane), 16), 512)
    return min(next_pow2(C), max(1, 1024 // bhw)), bhw, 4


def _gates_block(C: int, interpreted: bool) -> int:
    return min(next_pow2(C), 256) if interpreted else 32


def _check_conv(x: Tensor, w2d: Tensor, tapmult: Tensor, K: int) -> None:
    C = x.shape[1]
    if w2d.shape != (C, K * K) or not w2d.is_contiguous():
        raise ValueError(f"weight must be contiguous (C, K*K) = {(C, K * K)}, got {tuple(w2d.shape)}")
    if tapmult.shape != (2, K * K) or tapmult.dtype != torch.float32 or not tapmult.is_contiguous():
        raise ValueError("tapmult must be a contiguous fp32 (2, K*K) tensor")


def _launch_gates_fwd(w2d, t_kernel, t_expand, c_split, K, stats, tapmult) -> None:
    C = w2d.shape[0]
    _sp_gates_fwd_kernel[(1,)](
        w2d, t_kernel if t_kernel is not None else w2d, t_expand if t_expand is not None else w2d,
        stats, tapmult, C, c_split,
        K=K, HAS_TK=t_kernel is not None, HAS_TE=t_expand is not None,
        BLOCK_C=_gates_block(C, on_interpreter(w2d)), KK_P2=next_pow2(K * K), num_warps=4,
    )


def _launch_conv_fwd(x, w2d, tapmult, c_split, K, stride, y) -> None:
    _check_conv(x, w2d, tapmult, K)
    B, C, H, W = x.shape
    HO, WO = y.shape[2:]
    if y.shape != (B, C, (H - 1) // stride + 1, (W - 1) // stride + 1) or not y.is_contiguous():
        raise ValueError("y must be contiguous (B, C, ceil(H/stride), ceil(W/stride))")
    bc, bhw, warps = _conv_blocks(C, HO * WO, on_interpreter(x))
    grid = (B * triton.cdiv(C, bc), triton.cdiv(HO * WO, bhw))
    _dwconv_fwd_kernel[grid](
        x, w2d, tapmult, y, C, H, W, HO, WO, c_split, *x.stride(),
        K=K, STRIDE=stride, BLOCK_C=bc, BLOCK_HW=bhw, num_warps=warps,
    )


def _launch_conv_bwd_x(g, w2d, tapmult, c_split, K, stride, gx) -> None:
    _check_conv(gx, w2d, tapmult, K)
    B, C, H, W = gx.shape
    HO, WO = g.shape[2:]
    if not gx.is_contiguous():
        raise ValueError("gx must be contiguous")
    bc, bhw, warps = _conv_blocks(C, H * W, on_interpreter(g))
    grid = (B * triton.cdiv(C, bc), triton.cdiv(H * W, bhw))
    _dwconv_bwd_x_kernel[grid](
        g, w2d, tapmult, gx, C, H, W, HO, WO, c_split, *g.stride(),
        K=K, STRIDE=stride, BLOCK_C=bc, BLOCK_HW=bhw, num_warps=warps,
    )


def _launch_bwd_w(x, g, w2d, stats, tapmult, t_kernel, t_expand, c_split, K, stride, gw2d, gt) -> None:
    """Writes dL/dw into ``gw2d`` ((C, K*K), the weight's dtype) and [dL/dt_k5, dL/dt_k7, dL/dt_e6] (fp32)
    into ``gt``."""
    _check_conv(x, w2d, tapmult, K)
    B, C, H, W = x.shape
    HO, WO = g.shape[2:]
    interpreted = on_interpreter(x)
    bc, bhw, warps = _conv_blocks(C, HO * WO, interpreted)
    n_cblk, n_tiles = triton.cdiv(C, bc), B * triton.cdiv(HO * WO, bhw)
    # enough programs to fill the GPU (4 per SM), each summing whole tiles; the split count is fixed for
    # a given device and shape, so the fixed-order sum of the splits is deterministic.
    n_split = 1 if interpreted else max(1, min(n_tiles, triton.cdiv(4 * _num_sms(x.device.index or 0), n_cblk)))
    partial = empty((n_split, C, K * K), dtype=torch.float32, device=x.device)
    _dwconv_bwd_w_kernel[(n_cblk, n_split)](
        x, g, partial, B, C, H, W, HO, WO, n_split, *x.stride(), *g.stride(),
        K=K, KK_P2=next_pow2(K * K), STRIDE=stride, BLOCK_C=bc, BLOCK_HW=bhw, num_warps=warps,
    )
    _sp_gates_bwd_kernel[(1,)](
        partial, w2d, stats, tapmult, gw2d, gt, C, c_split, n_split,
        K=K, HAS_TK=t_kernel is not None, HAS_TE=t_expand is not None,
        BLOCK_C=_gates_block(C, interpreted), KK_P2=next_pow2(K * K), num_warps=4,
    )


# --------------------------------------------------------------------------------------- reference


def _check_inputs(x, weight, t_kernel, t_expand, stride, channel_split) -> tuple[int, int]:
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"x must be a floating (B, C, H, W) tensor, got {tuple(x.shape)} {x.dtype}")
    C = x.shape[1]
    if weight.dim() != 4 or weight.shape[0] != C or weight.shape[1] != 1 or weight.shape[2] != weight.shape[3]:
        raise ValueError(f"weight must be (C, 1, K, K) with C={C}, got {tuple(weight.shape)}")
    K = weight.shape[2]
    if K not in (3, 5, 7):
        raise ValueError(f"k_max must be 3, 5 or 7, got {K}")
    if t_kernel is not None and (K == 3 or t_kernel.shape != (K // 2 - 1,)):
        raise ValueError(f"t_kernel must be None or of shape ({K // 2 - 1},) for k_max={K} (>= 5), got "
                         f"{tuple(t_kernel.shape)}")
    if t_expand is not None and t_expand.numel() != 1:
        raise ValueError(f"t_expand must be None or hold one value, got shape {tuple(t_expand.shape)}")
    if stride not in (1, 2):
        raise ValueError(f"stride must be 1 or 2, got {stride!r}")
    split = C // 2 if channel_split is None else channel_split
    if not 0 <= split <= C:
        raise ValueError(f"channel_split must be in [0, {C}], got {split}")
    for name, t in (("weight", weight), ("t_kernel", t_kernel), ("t_expand", t_expand)):
        if t is not None and (t.device != x.device or not t.is_floating_point()):
            raise ValueError(f"{name} must be floating point on {x.device}, got {t.dtype} on {t.device}")
    return K, split


def _ring_masks(K: int, dtype: torch.dtype, device) -> Tensor:
    """(3, K, K): the inner 3x3, the 5x5 minus 3x3 ring, the 7x7 minus 5x5 ring (empty if K < 7)."""
    d = (torch.arange(K, device=device) - K // 2).abs()
    ring = (torch.maximum(d[:, None], d[None, :]) - 1).clamp(min=0)
    return torch.stack([(ring == r).to(dtype) for r in range(3)])


def _st_step(z: Tensor) -> Tensor:
    """1(z > 0) in the forward pass, d sigmoid(z)/dz in the backward pass (straight-through)."""
    s = torch.sigmoid(z)
    return (z > 0).to(z.dtype) + (s - s.detach())


def superkernel_margins(
    weight: Tensor, t_kernel: Tensor | None, t_expand: Tensor | None, channel_split: int | None = None,
    t_skip: Tensor | None = None,
) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """The indicator arguments ``z = ||.||^2 - t`` of a ``(C, 1, K, K)`` superkernel: ``(z5, z7, z_e6, z_skip)``,
    differentiable in ``weight`` and the thresholds; ``None`` where there is no such threshold (or no
    7x7 ring). ``z_e6`` and ``z_skip`` are taken on the kernel-size-masked weight ``w_k`` (hard masks,
    straight-through): ``z_e6`` on its channels from ``channel_split`` on, ``z_skip`` on the channels
    before it -- the paper's skip decision ``1(||w_{k,e3}||^2 > t_e3)``, which a block applies to its
    residual branch (see the module docstring).
    """
    K = weight.shape[-1]
    C = weight.shape[0]
    split = C // 2 if channel_split is None else channel_split
    masks = _ring_masks(K, weight.dtype, weight.device)
    sq = weight.square().sum(dim=1)  # (C, K, K)
    one = torch.ones((), dtype=weight.dtype, device=weight.device)
    z5 = z7 = ze = zs = None
    d5 = d7 = one
    if t_kernel is not None:
        z5 = (sq * masks[1]).sum() - t_kernel[0].to(weight.dtype)
        d5 = _st_step(z5)
        if K == 7:
            z7 = (sq * masks[2]).sum() - t_kernel[1].to(weight.dtype)
            d7 = _st_step(z7)
    if t_expand is not None or t_skip is not None:
        mk = masks[0] + d5 * masks[1] + d5 * d7 * masks[2]
        if t_expand is not None:
            ze = (weight[split:] * mk).square().sum() - t_expand.reshape(()).to(weight.dtype)
        if t_skip is not None:
            zs = (weight[:split] * mk).square().sum() - t_skip.reshape(()).to(weight.dtype)
    return z5, z7, ze, zs


def indicator(z: Tensor | None) -> Tensor | None:
    """``1(z > 0)`` in value with the gradient of ``sigmoid(z)`` (the straight-through indicator of
    Single-Path NAS); ``None`` stays ``None``."""
    return None if z is None else _st_step(z)


def superkernel_gates(
    weight: Tensor, t_kernel: Tensor | None, t_expand: Tensor | None, channel_split: int | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """The Single-Path NAS indicators ``(d5, d7, d_e6)`` of a ``(C, 1, K, K)`` superkernel, as 0-dim
    tensors in the weight's dtype: 0/1 in value, straight-through sigmoid gradients to ``weight`` and the
    thresholds. An indicator without a threshold (``None``, or d7 when K < 7) is a constant 1.

    ``d5 = 1(||w_{5x5\\3x3}||^2 > t_kernel[0])``, ``d7 = 1(||w_{7x7\\5x5}||^2 > t_kernel[1])``,
    ``d_e6 = 1(||w_k[channel_split:]||^2 > t_expand)`` with ``w_k`` the kernel-size-masked weight.
    The latency term of the search loss (and a block's skip gate) uses these; the masked_dwconv kernel
    computes the same values internally.
    """
    one = torch.ones((), dtype=weight.dtype, device=weight.device)
    z5, z7, ze, _ = superkernel_margins(weight, t_kernel, t_expand, channel_split)
    return tuple(one if z is None else _st_step(z) for z in (z5, z7, ze))


def masked_dwconv_reference(
    x: Tensor, weight: Tensor, t_kernel: Tensor | None, t_expand: Tensor | None, *,
    stride: int = 1, channel_split: int | None = None,
) -> Tensor:
    """Pure-torch masked superkernel depthwise conv; same contract as :func:`masked_dwconv`.

    Materializes ``w_eff = w * (M3 + d5 R5 + d5 d7 R7) * (1 | d_e6 on the second channel group)`` and
    calls ``F.conv2d(groups=C)``; autograd (with the straight-through indicators) gives the backward.
    """
    K, split = _check_inputs(x, weight, t_kernel, t_expand, stride, channel_split)
    d5, d7, de = superkernel_gates(weight, t_kernel, t_expand, split)
    masks = _ring_masks(K, weight.dtype, weight.device)
    mk = masks[0] + d5 * masks[1] + d5 * d7 * masks[2]
    C = weight.shape[0]
    e = torch.cat([torch.ones(split, dtype=weight.dtype, device=weight.device), de.expand(C - split)])
    w_eff = weight * mk * e[:, None, None, None]
    return F.conv2d(x, w_eff.to(x.dtype), stride=stride, padding=K // 2, groups=C)


# ---------------------------------------------------------------------------------------- autograd


class _MaskedDWConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, t_kernel, t_expand, stride, c_split):
        B, C, H, W = x.shape
        K = weight.shape[-1]
        w2d = weight.reshape(C, K * K).contiguous()  # a view for the usual contiguous weight
        t_kernel = t_kernel.contiguous() if t_kernel is not None else None
        stats = empty((_N_STATS,), dtype=torch.float32, device=x.device)
        tapmult = empty((2, K * K), dtype=torch.float32, device=x.device)
        _launch_gates_fwd(w2d, t_kernel, t_expand, c_split, K, stats, tapmult)
        y = empty((B, C, (H - 1) // stride + 1, (W - 1) // stride + 1), dtype=x.dtype, device=x.device)
        _launch_conv_fwd(x, w2d, tapmult, c_split, K, stride, y)
        need_param_grad = any(ctx.needs_input_grad[1:4])
        ctx.save_for_backward(x if need_param_grad else None, w2d, stats, tapmult, t_kernel, t_expand)
        ctx.meta = (stride, c_split, K, tuple(x.shape), tuple(weight.shape), weight.dtype)
        return y

    @staticmethod
    def backward(ctx, g):
        x, w2d, stats, tapmult, t_kernel, t_expand = ctx.saved_tensors
        stride, c_split, K, x_shape, w_shape, w_dtype = ctx.meta
        need_x, need_w, need_tk, need_te = ctx.needs_input_grad[:4]
        gx = gw = gtk = gte = None
        if need_x:
            gx = empty(x_shape, dtype=g.dtype, device=g.device)
            _launch_conv_bwd_x(g, w2d, tapmult, c_split, K, stride, gx)
        if need_w or need_tk or need_te:
            gw2d = empty(w2d.shape, dtype=w_dtype, device=g.device)
            gt = empty((3,), dtype=torch.float32, device=g.device)
            _launch_bwd_w(x, g, w2d, stats, tapmult, t_kernel, t_expand, c_split, K, stride, gw2d, gt)
            gw = gw2d.view(w_shape) if need_w else None
            if need_tk:
                gtk = gt[: K // 2 - 1].to(t_kernel.dtype)
            if need_te:
                gte = gt[2].to(t_expand.dtype).reshape(t_expand.shape)
        return gx, gw, gtk, gte, None, None


# ------------------------------------------------------------------------------------------ public


def masked_dwconv(
    x: Tensor, weight: Tensor, t_kernel: Tensor | None, t_expand: Tensor | None, *,
    stride: int = 1, channel_split: int | None = None,
) -> Tensor:
    """Single-Path NAS superkernel depthwise conv with the kernel-size and expansion decisions fused in.

    Args:
        x: ``(B, C, H, W)``, fp32 / fp16 / bf16, any strides (read in place).
        weight: ``(C, 1, K, K)`` depthwise superkernel, ``K = k_max`` in {5, 7} (3: expansion decision
            only); any floating dtype, read as fp32.
        t_kernel: kernel-size thresholds ``[t_k5]`` (K=5) or ``[t_k5, t_k7]`` (K=7), shape ``(K//2 - 1,)``;
            ``None`` keeps the full KxK kernel.
        t_expand: the expansion threshold ``t_e6`` (one element, any shape); ``None`` keeps every channel.
        stride: 1 or 2. Padding is ``K // 2`` on every side (``nn.Conv2d(padding=K//2)``; the output is
            ``ceil(H / stride) x ceil(W / stride)``; note TF's SAME pads asymmetrically for stride 2).
        channel_split: first channel of the expansion-6-only group (default ``C // 2``: expansion 3 keeps
            the first half of the 6x expanded channels).

    Returns:
        ``(B, C, ceil(H/stride), ceil(W/stride))`` contiguous, x's dtype:
        ``conv2d(x, w_eff, stride, padding=K//2, groups=C)`` with ``w_eff`` as in the module docstring
        (hard 0/1 indicators), accumulated in fp32.

    Backward: ``dL/dx`` (x's dtype), ``dL/dweight`` and ``dL/dt`` (their dtypes), the indicators'
    gradients being those of ``sigmoid(||.||^2 - t)`` (straight-through, as in the paper's code).
    Copies: ``weight`` is reshaped to ``(C, K*K)`` (a view when it is contiguous); nothing else.
    Kept for backward: the weight, x only when a weight or threshold gradient is needed, and 12 + 2*K*K
    floats of gate state.

    Runs the Triton kernels on CUDA (or on CPU under ``TRITON_INTERPRET=1``), else
    :func:`masked_dwconv_reference`.
    """
    K, split = _check_inputs(x, weight, t_kernel, t_expand, stride, channel_split)
    tensors = [x, weight, *(t for t in (t_kernel, t_expand) if t is not None)]
    if x.dtype not in KERNEL_DTYPES or x.numel() == 0 or not use_triton(tensors, _dwconv_fwd_kernel):
        return masked_dwconv_reference(x, weight, t_kernel, t_expand, stride=stride, channel_split=split)
    return _MaskedDWConv.apply(x, weight, t_kernel, t_expand, stride, split)
