"""partial_channel_mix: the Triton kernel (CUDA, or CPU interpreter) against a float64 reference."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F
from kernel_testing import DTYPES, assert_close

from hwnas.kernels import _common, channel_shuffle, mixed_op_sum, partial_channel_mix, partial_channel_mix_reference

mod = importlib.import_module("hwnas.kernels.partial_channel_mix")


def _inputs(B, C, H, W, k, stride, n, dtype, device, seed, *, ints=False):
    gen = torch.Generator().manual_seed(seed)
    ho, wo = (H, W) if stride == 1 else (H // 2, W // 2)

    def rnd(*shape):
        if ints:
            t = torch.randint(0, 3, shape, generator=gen).double()
        else:
            t = torch.randn(shape, generator=gen, dtype=torch.float64)
        return t.to(dtype).to(device)

    x = rnd(B, C, H, W)
    ops = [rnd(B, C // k, ho, wo) for _ in range(n)]
    w = torch.softmax(torch.randn(n, generator=gen), 0).to(device)
    g = torch.randn((B, C, ho, wo), generator=gen, dtype=torch.float64).to(dtype)
    return x, ops, w, g


def _compare(x, ops, w, g, k, stride, dtype, *, stacked=False, req=(True, True, True)):
    rx, rops, rw = req
    x = x.detach().requires_grad_(rx)
    ops = [o.detach().requires_grad_(rops) for o in ops]
    w = w.detach().requires_grad_(rw)
    ref_x = x.detach().double().cpu().requires_grad_(rx)
    ref_ops = [o.detach().double().cpu().requires_grad_(rops) for o in ops]
    ref_w = w.detach().double().cpu().requires_grad_(rw)

    if stacked:
        st = torch.stack([o.detach() for o in ops]).requires_grad_(rops)
        out = partial_channel_mix(x, st, w, k, stride=stride)
        inputs = [t for t in (x, st, w) if t.requires_grad]
    else:
        out = partial_channel_mix(x, ops, w, k, stride=stride)
        inputs = [t for t in (x, *ops, w) if t.requires_grad]
    ref = partial_channel_mix_reference(ref_x, ref_ops, ref_w, k, stride=stride)
    assert out.dtype == dtype and out.is_contiguous()
    assert_close(out, ref, dtype, "out")

    ref_inputs = [t for t in (ref_x, *ref_ops, ref_w) if t.requires_grad]
    grads = list(torch.autograd.grad(out, inputs, g.to(x.device)))
    ref_grads = list(torch.autograd.grad(ref, ref_inputs, g.double().cpu()))
    if stacked and rops:
        i = int(rx)
        grads[i : i + 1] = list(grads[i].unbind(0))
    for j, (a, b) in enumerate(zip(grads, ref_grads)):
        is_w = rw and j == len(grads) - 1
        assert_close(a, b, w.dtype if is_w else dtype, f"grad {j}")


def test_kernel_path_is_exercised(device):
    assert _common.use_triton([torch.ones(1, device=device)], mod._pc_mix_fwd_kernel)


CASES = [  # B, C, H, W, k, stride, N
    (2, 8, 6, 5, 4, 1, 3),
    (1, 3, 1, 1, 3, 1, 1),  # size-1 everything, N=1
    (2, 12, 7, 9, 4, 2, 2),  # odd H, W at stride 2: last row/column never pooled
    (3, 6, 4, 4, 1, 2, 2),  # k=1: no bypass at all
    (2, 10, 5, 3, 2, 1, 9),  # non-power-of-two channels, N=9
    (1, 4, 2, 2, 4, 2, 3),  # 1x1 output
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}C{}H{}W{}k{}s{}N{}".format(*c))
def test_matches_float64_reference(case, dtype, device):
    B, C, H, W, k, stride, n = case
    x, ops, w, g = _inputs(B, C, H, W, k, stride, n, dtype, device, seed=sum(case))
    _compare(x, ops, w, g, k, stride, dtype)


@pytest.mark.parametrize("stride", [1, 2])
def test_max_pool_ties_go_to_first_maximum(stride, device):
    """Integer-valued inputs make many 2x2 windows tie; the gradient must go where torch sends it."""
    x, ops, w, g = _inputs(2, 8, 6, 6, 2, stride, 2, torch.float32, device, seed=11, ints=True)
    _compare(x, ops, w, g, 2, stride, torch.float32)


@pytest.mark.parametrize("stride", [1, 2])
def test_strided_inputs_and_stacked_ops(stride, device):
    x, ops, w, g = _inputs(2, 8, 6, 4, 4, stride, 3, torch.float32, device, seed=12)
    x = x.contiguous(memory_format=torch.channels_last)
    ops = [ops[0].contiguous(memory_format=torch.channels_last), *ops[1:]]  # mixed layouts: one is copied
    g = g.transpose(2, 3).contiguous().transpose(2, 3)  # non-contiguous grad_output
    _compare(x, ops, w, g, 4, stride, torch.float32)
    _compare(x, ops, w, g, 4, stride, torch.float32, stacked=True)


def test_size_one_batch_with_odd_strides(device):
    """B=1: an op output whose batch stride differs is the same layout, read in place."""
    x, ops, w, g = _inputs(1, 8, 5, 3, 2, 1, 3, torch.float32, device, seed=16)
    ops[1] = ops[1][0].unsqueeze(1).transpose(0, 1)  # (1, 4, 5, 3), batch stride 15 instead of 60
    assert ops[1].stride() != ops[0].stride()
    _compare(x, ops, w, g, 2, 1, torch.float32)


@pytest.mark.parametrize("req", [(True, False, False), (False, True, False), (False, False, True), (True, True, False)])
@pytest.mark.parametrize("stride", [1, 2])
def test_partial_requires_grad(req, stride, device):
    x, ops, w, g = _inputs(2, 6, 4, 6, 3, stride, 2, torch.float16, device, seed=13)
    _compare(x, ops, w, g, 3, stride, torch.float16, req=req)


def test_edge_normalization_composes_with_mixed_op_sum(device):
    """PC-DARTS node: sum_j softmax(beta)_j * edge_j; beta stays out of the partial-channel kernel."""
    gen = torch.Generator().manual_seed(14)
    xs = [torch.randn(2, 8, 4, 4, generator=gen).to(device) for _ in range(3)]
    alpha = torch.randn(3, 2, generator=gen).to(device).requires_grad_()
    beta = torch.randn(3, generator=gen).to(device).requires_grad_()

    def node(pc, ms):
        edges = []
        for j, x in enumerate(xs):
            ops = [F.avg_pool2d(x[:, :4], 3, 1, 1), x[:, :4] * 2]
            edges.append(pc(x, ops, torch.softmax(alpha[j], 0), 2))
        return ms(edges, torch.softmax(beta, 0))

    out = node(partial_channel_mix, mixed_op_sum)
    ga, gb = torch.autograd.grad(out.square().sum(), [alpha, beta])
    ref = node(partial_channel_mix_reference, lambda e, w: sum(wi * ei for wi, ei in zip(w, e)))
    ra, rb = torch.autograd.grad(ref.square().sum(), [alpha, beta])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ga, ra, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gb, rb, rtol=1e-4, atol=1e-5)


def test_channel_shuffle_layout():
    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert channel_shuffle(x, 3).flatten().tolist() == [0.0, 2.0, 4.0, 1.0, 3.0, 5.0]


@pytest.mark.parametrize("stride", [1, 2])
def test_reference_gradcheck(stride):
    x, ops, w, _ = _inputs(1, 6, 4, 4, 3, stride, 2, torch.float64, "cpu", seed=15)
    x, w = x.requires_grad_(), w.double().requires_grad_()
    ops = [o.requires_grad_() for o in ops]
    assert torch.autograd.gradcheck(
        lambda x, w, *o: partial_channel_mix_reference(x, list(o), w, 3, stride=stride), (x, w, *ops)
    )


@pytest.mark.parametrize(
    "shape_fn, k, stride, match",
    [
        (lambda B, C, H, W: (B, C, H, W), 0, 1, "k must be"),
        (lambda B, C, H, W: (B, C // 2, H, W), 3, 1, "expected \\(2, 2, 5, 4\\)"),  # C//k = 2 channels, not 3
        (lambda B, C, H, W: (B, C // 2, H, W), 4, 1, "k must be a positive int dividing"),
        (lambda B, C, H, W: (B, C // 2, (H + 1) // 2, W // 2), 2, 2, "floor"),  # ceil-size op outputs refused
        (lambda B, C, H, W: (B, C // 2, H, W), 2, 3, "stride must be"),
    ],
)
def test_bad_inputs_raise(shape_fn, k, stride, match, device):
    x = torch.randn(2, 6, 5, 4, device=device)
    ops = [torch.randn(shape_fn(2, 6, 5, 4), device=device)]
    with pytest.raises(ValueError, match=match):
        partial_channel_mix(x, ops, torch.ones(1, device=device), k, stride=stride)
