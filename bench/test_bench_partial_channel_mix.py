"""partial_channel_mix: Triton vs eager PyTorch (the PC-DARTS ``MixedOp.forward`` tail: weighted sum,
``torch.cat`` with the bypass, max-pool on reduction edges, ``channel_shuffle``) vs torch.compile of it.

GPU shapes: the PC-DARTS search (k = 4, the 8 DARTS ops): CIFAR cells at 32x32 with batch 256 and
16 / 64 channels, a reduction edge (stride 2), and a 112x112 map at batch 64.
Bytes (minimum): forward reads N op outputs and the bypassed channels of x, writes the output; backward
reads g, the N op outputs (arch-weight gradient) and, for stride 2, the bypass again (argmax), and writes
N op-output gradients and dL/dx.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from bench_utils import CUDA, IMPLS, MODES, bytes_of, check_close, compiled, label, skip_unless_runnable

from hwnas.kernels import channel_shuffle, partial_channel_mix, partial_channel_mix_reference

DEVICE = "cuda" if CUDA else "cpu"
BF16, FP32 = torch.bfloat16, torch.float32
GPU_CASES = [  # N, B, C, H, W, k, stride, dtype
    (8, 256, 16, 32, 32, 4, 1, BF16),
    (8, 256, 64, 32, 32, 4, 2, BF16),
    (8, 64, 48, 112, 112, 4, 1, FP32),
]
CPU_CASES = [(3, 2, 8, 16, 16, 4, 1, FP32), (3, 2, 8, 16, 16, 4, 2, FP32)]
CASES = GPU_CASES if CUDA else CPU_CASES


def eager(x, ops, weights, k, stride):
    mixed = sum(w * o for w, o in zip(weights, ops))
    bypass = x[:, x.shape[1] // k :]
    if stride == 2:
        bypass = F.max_pool2d(bypass, 2, 2)
    return channel_shuffle(torch.cat([mixed, bypass], dim=1), k)


IMPL_FN = {"triton": partial_channel_mix, "eager": eager, "compile": lambda *args: compiled(eager)(*args)}


def _case_id(c):
    return label(N=c[0], B=c[1], C=c[2], H=c[3], W=c[4], k=c[5], s=c[6], dtype=c[7])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_partial_channel_mix(case, impl, mode, measure):
    skip_unless_runnable(impl)
    n, B, C, H, W, k, stride, dtype = case
    fn = IMPL_FN[impl]
    if impl == "triton":
        fn = lambda x, ops, w, k, s: partial_channel_mix(x, ops, w, k, stride=s)  # noqa: E731
    torch.manual_seed(0)
    ho, wo = H // stride, W // stride
    x = torch.randn(B, C, H, W, device=DEVICE, dtype=dtype)
    ops = [torch.randn(B, C // k, ho, wo, device=DEVICE, dtype=dtype) for _ in range(n)]
    alpha = torch.randn(n, device=DEVICE)
    bypass_bytes = bytes_of(x) * (k - 1) // k
    out_bytes = bytes_of(ops[0]) * k
    group = f"partial_channel_mix {mode} {_case_id(case)}"
    if mode == "fwd":
        w = torch.softmax(alpha, 0)
        expect = partial_channel_mix_reference(x, ops, w, k, stride=stride)
        measure(
            lambda: fn(x, ops, w, k, stride),
            group=group,
            nbytes=n * bytes_of(ops[0]) + bypass_bytes + out_bytes,
            check=lambda out: check_close(out, expect, dtype, f"{impl} out"),
        )
        return

    x.requires_grad_()
    ops = [o.requires_grad_() for o in ops]
    a = alpha.requires_grad_()
    g = torch.randn(B, C, ho, wo, device=DEVICE, dtype=dtype)
    ref = partial_channel_mix_reference(x, ops, torch.softmax(a, 0), k, stride=stride)
    ref_grads = torch.autograd.grad(ref, [a, x, ops[0]], g)

    def run():
        out = fn(x, ops, torch.softmax(a, 0), k, stride)
        return (out, *torch.autograd.grad(out, [a, x, *ops], g))

    def check(res):
        check_close(res[0], ref.detach(), dtype, f"{impl} out")
        for name, got, want in zip(("d alpha", "dx", "d op_0"), res[1:4], ref_grads):
            check_close(got, want, dtype, f"{impl} {name}")

    fwd = n * bytes_of(ops[0]) + bypass_bytes + out_bytes
    bwd = out_bytes + 2 * n * bytes_of(ops[0]) + bytes_of(x) + (bypass_bytes if stride == 2 else 0)
    measure(run, group=group, nbytes=fwd + bwd, check=check)
