"""masked_dwconv: Triton (masks fused into the depthwise conv) vs eager PyTorch (masked weight +
``F.conv2d(groups=C)``, i.e. cuDNN: what a plain PyTorch Single-Path NAS does) vs torch.compile of it.

GPU shapes: Single-Path NAS MBConv depthwise layers (expanded channels 96..192 at 112x112, 32x32),
batch 64 and 256, k_max 5 and 7, strides 1 and 2; thresholds 0 (the paper's initialization: every
indicator on). Bytes (minimum): forward reads x and writes y; backward reads g and x and writes dL/dx.
"""

from __future__ import annotations

import pytest
import torch
from bench_utils import CUDA, IMPLS, MODES, bytes_of, check_close, compiled, label, skip_unless_runnable

from hwnas.kernels import masked_dwconv, masked_dwconv_reference

DEVICE = "cuda" if CUDA else "cpu"
BF16, FP32 = torch.bfloat16, torch.float32
GPU_CASES = [  # B, C, H, W, K, stride, dtype
    (64, 96, 112, 112, 5, 2, BF16),
    (256, 144, 32, 32, 7, 1, BF16),
    (64, 192, 32, 32, 5, 1, FP32),
]
CPU_CASES = [(2, 12, 16, 16, 5, 1, FP32), (2, 12, 16, 16, 7, 2, FP32)]
CASES = GPU_CASES if CUDA else CPU_CASES


def eager(x, w, tk, te, stride):
    return masked_dwconv_reference(x, w, tk, te, stride=stride)


IMPL_FN = {
    "triton": lambda x, w, tk, te, s: masked_dwconv(x, w, tk, te, stride=s),
    "eager": eager,
    "compile": lambda *args: compiled(eager)(*args),
}


def _case_id(c):
    return label(B=c[0], C=c[1], H=c[2], W=c[3], k=c[4], s=c[5], dtype=c[6])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_masked_dwconv(case, impl, mode, measure):
    skip_unless_runnable(impl)
    B, C, H, W, K, stride, dtype = case
    fn = IMPL_FN[impl]
    torch.manual_seed(0)
    x = torch.randn(B, C, H, W, device=DEVICE, dtype=dtype)
    w = 0.1 * torch.randn(C, 1, K, K, device=DEVICE)
    tk = torch.zeros(K // 2 - 1, device=DEVICE)
    te = torch.zeros((), device=DEVICE)
    y_bytes = bytes_of(x) // (stride * stride)
    group = f"masked_dwconv {mode} {_case_id(case)}"
    # the check's reference runs in fp32 on the same (rounded) input
    ref_args = (x.float(), w, tk, te)
    if mode == "fwd":
        expect = masked_dwconv_reference(*ref_args, stride=stride)
        measure(
            lambda: fn(x, w, tk, te, stride),
            group=group,
            nbytes=bytes_of(x) + y_bytes,
            check=lambda out: check_close(out, expect, dtype, f"{impl} out"),
        )
        return

    leaves = [t.clone().requires_grad_() for t in (x, w, tk, te)]
    ref_leaves = [t.detach().float().requires_grad_() for t in leaves]
    ref = masked_dwconv_reference(*ref_leaves, stride=stride)
    g = torch.randn(ref.shape, device=DEVICE, dtype=dtype)
    ref_grads = torch.autograd.grad(ref, ref_leaves, g.float())

    def run():
        out = fn(*leaves, stride)
        return (out, *torch.autograd.grad(out, leaves, g))

    def check(res):
        check_close(res[0], ref.detach(), dtype, f"{impl} out")
        for name, got, want in zip(("dx", "dw", "dt_kernel", "dt_expand"), res[1:], ref_grads):
            check_close(got, want, dtype, f"{impl} {name}")

    measure(run, group=group, nbytes=2 * bytes_of(x) + y_bytes + y_bytes + bytes_of(x), check=check)
