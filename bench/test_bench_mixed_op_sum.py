"""mixed_op_sum: Triton vs eager PyTorch (the DARTS idiom ``sum(w * o for w, o in zip(weights, outs))``)
vs torch.compile of that idiom; forward, and forward+backward (candidate and arch-weight gradients).

GPU shapes: the chain spaces' mixed layers (FBNet / ProxylessNAS: 112x112 stages with 16 channels,
32x32 with 64..192), batch 64 and 256, N = 7 (FBNet-like k/e choices) or 9 candidates.
Bytes: forward reads N candidates and writes one output; backward reads g and the N candidates and
writes N candidate gradients: (3N + 2) tensors for forward+backward (the minimum; eager moves more).
"""

from __future__ import annotations

import pytest
import torch
from bench_utils import CUDA, IMPLS, MODES, bytes_of, check_close, compiled, label, skip_unless_runnable

from hwnas.kernels import mixed_op_sum, mixed_op_sum_reference

DEVICE = "cuda" if CUDA else "cpu"
BF16, FP32 = torch.bfloat16, torch.float32
GPU_CASES = [  # N, B, C, H, W, dtype
    (7, 64, 16, 112, 112, BF16),
    (7, 256, 16, 112, 112, BF16),
    (9, 64, 64, 32, 32, FP32),
    (9, 256, 192, 32, 32, BF16),
]
CPU_CASES = [(3, 2, 8, 16, 16, FP32), (9, 1, 4, 8, 8, FP32)]
CASES = GPU_CASES if CUDA else CPU_CASES


def eager(outs, weights):
    return sum(w * o for w, o in zip(weights, outs))


IMPL_FN = {"triton": mixed_op_sum, "eager": eager, "compile": lambda *args: compiled(eager)(*args)}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: label(N=c[0], B=c[1], C=c[2], H=c[3], W=c[4], dtype=c[5]))
def test_mixed_op_sum(case, impl, mode, measure):
    skip_unless_runnable(impl)
    n, B, C, H, W, dtype = case
    fn = IMPL_FN[impl]
    torch.manual_seed(0)
    cands = [torch.randn(B, C, H, W, device=DEVICE, dtype=dtype) for _ in range(n)]
    alpha = torch.randn(n, device=DEVICE)
    group = f"mixed_op_sum {mode} {label(N=n, B=B, C=C, H=H, W=W, dtype=dtype)}"
    if mode == "fwd":
        w = torch.softmax(alpha, 0)
        expect = mixed_op_sum_reference(cands, w)

        def check(out):
            check_close(out, expect, dtype, f"{impl} out")

        measure(lambda: fn(cands, w), group=group, nbytes=bytes_of(*cands) + bytes_of(cands[0]), check=check)
        return

    leaves = [c.requires_grad_() for c in cands]
    a = alpha.requires_grad_()
    g = torch.randn_like(cands[0])
    ref = mixed_op_sum_reference(leaves, torch.softmax(a, 0))
    ref_ga, ref_g0 = torch.autograd.grad(ref, [a, leaves[0]], g)

    def run():
        out = fn(leaves, torch.softmax(a, 0))
        return (out, *torch.autograd.grad(out, [a, *leaves], g))

    def check(res):
        check_close(res[0], ref.detach(), dtype, f"{impl} out")
        check_close(res[1], ref_ga, dtype, f"{impl} d alpha")
        check_close(res[2], ref_g0, dtype, f"{impl} d out_0")

    measure(run, group=group, nbytes=(3 * n + 2) * bytes_of(cands[0]), check=check)
