"""mixed_op_sum: the Triton kernel (CUDA, or CPU interpreter) against a float64 reference."""

from __future__ import annotations

import importlib
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from kernel_testing import DTYPES, assert_close

from hwnas.kernels import _common, mixed_op_sum, mixed_op_sum_reference

# the module (hwnas.kernels.mixed_op_sum as an attribute is the function of the same name)
mod = importlib.import_module("hwnas.kernels.mixed_op_sum")


def _rand(shape, dtype, device, gen):
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype).to(device)


def _run(cands, weights, g, *, stacked=False):
    """Kernel and float64-reference outputs and gradients for the inputs that require grad."""
    ref_cands = [c.detach().double().cpu().requires_grad_(c.requires_grad) for c in cands]
    ref_w = weights.detach().double().cpu().requires_grad_(weights.requires_grad)
    if stacked:
        st = torch.stack([c.detach() for c in cands]).requires_grad_(cands[0].requires_grad)
        out = mixed_op_sum(st, weights)
        inputs = [t for t in (st, weights) if t.requires_grad]
    else:
        out = mixed_op_sum(cands, weights)
        inputs = [t for t in (*cands, weights) if t.requires_grad]
    ref = mixed_op_sum_reference(ref_cands, ref_w)
    ref_inputs = [t for t in (*ref_cands, ref_w) if t.requires_grad]
    grads = torch.autograd.grad(out, inputs, g.to(device=out.device, dtype=out.dtype)) if inputs else ()
    ref_grads = torch.autograd.grad(ref, ref_inputs, g.to(out.dtype).double().cpu()) if ref_inputs else ()
    if stacked and cands[0].requires_grad:
        grads = (*grads[0].unbind(0), *grads[1:])
    return out, ref, list(grads), list(ref_grads)


def _check(cands, weights, g, dtype, **kw):
    out, ref, grads, ref_grads = _run(cands, weights, g, **kw)
    assert out.dtype == dtype and out.shape == ref.shape
    assert_close(out, ref, dtype, "out")
    assert len(grads) == len(ref_grads)
    for i, (a, b) in enumerate(zip(grads, ref_grads)):
        is_weight_grad = weights.requires_grad and i == len(grads) - 1
        # dL/dw is a sum reduced in fp32 and returned in the weights' dtype (fp32 here)
        assert_close(a, b, weights.dtype if is_weight_grad else dtype, f"grad {i}")


def test_kernel_path_is_exercised(device):
    x = torch.ones(3, device=device)
    assert _common.use_triton([x], mod._mixed_sum_fwd_kernel), "the tests would only compare the reference with itself"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", [1, 3, 9])
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1,), (1, 1, 1, 1), (3, 17, 1, 9), (4099,)], ids=str)
def test_matches_float64_reference(shape, n, dtype, device):
    gen = torch.Generator().manual_seed(n * 1000 + len(shape))
    cands = [_rand(shape, dtype, device, gen).requires_grad_() for _ in range(n)]
    weights = torch.softmax(torch.randn(n, generator=gen), 0).to(device).requires_grad_()
    g = _rand(shape, torch.float64, "cpu", gen)
    _check(cands, weights, g, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_stacked_input_gives_stacked_grad(dtype, device):
    gen = torch.Generator().manual_seed(1)
    cands = [_rand((2, 5, 3, 3), dtype, device, gen).requires_grad_() for _ in range(7)]
    weights = torch.randn(7, generator=gen).to(device).requires_grad_()
    g = _rand((2, 5, 3, 3), torch.float64, "cpu", gen)
    _check(cands, weights, g, dtype, stacked=True)


def test_twelve_candidates(device):
    gen = torch.Generator().manual_seed(2)
    cands = [_rand((2, 3, 4), torch.float32, device, gen).requires_grad_() for _ in range(12)]
    weights = torch.randn(12, generator=gen).to(device).requires_grad_()
    _check(cands, weights, _rand((2, 3, 4), torch.float64, "cpu", gen), torch.float32)


@pytest.mark.parametrize("case", ["channels_last", "mixed", "transposed", "sliced"])
def test_layouts(case, device):
    """Any strides in, the right values out; the copies are what the docstring says."""
    gen = torch.Generator().manual_seed(3)
    base = [_rand((2, 6, 5, 3), torch.float32, device, gen) for _ in range(4)]
    if case == "channels_last":
        cands = [c.contiguous(memory_format=torch.channels_last) for c in base]
    elif case == "mixed":  # first dense layout (channels_last) wins, the others are copied into it
        cands = [
            base[0].contiguous(memory_format=torch.channels_last),
            base[1],
            base[2].transpose(2, 3).contiguous().transpose(2, 3),
            base[3],
        ]
    elif case == "transposed":  # transposed views of contiguous tensors are dense: read in place
        cands = [c.transpose(0, 3) for c in base]
    else:  # non-dense views: copied
        cands = [torch.cat([c, c], dim=1)[:, ::2] for c in base]
    cands = [c.requires_grad_() for c in cands]
    weights = torch.randn(4, generator=gen).to(device).requires_grad_()
    g = _rand(cands[0].shape, torch.float64, "cpu", gen)
    out, *_ = _run(cands, weights, g)
    if case in ("channels_last", "mixed"):
        assert out.is_contiguous(memory_format=torch.channels_last)
    _check(cands, weights, g, torch.float32)


def test_unify_layout_copies_only_mismatches(device):
    a = torch.randn(2, 3, 4, 5, device=device).contiguous(memory_format=torch.channels_last)
    b = torch.randn(2, 3, 4, 5, device=device)
    c = torch.randn(2, 3, 4, 5, device=device).contiguous(memory_format=torch.channels_last)
    out, copies = _common.unify_layout([a, b, c])
    assert copies == 1 and out[0] is a and out[2] is c and torch.equal(out[1], b)


@pytest.mark.parametrize("which", ["weights_only", "cands_only", "some_cands", "none_of_cands_stacked"])
def test_partial_requires_grad(which, device):
    gen = torch.Generator().manual_seed(4)
    cands = [_rand((3, 4, 5), torch.float16, device, gen) for _ in range(3)]
    weights = torch.rand(3, generator=gen).to(device)
    if which == "weights_only":
        weights.requires_grad_()
    elif which == "cands_only":
        cands = [c.requires_grad_() for c in cands]
    elif which == "some_cands":
        cands[1].requires_grad_()
        weights.requires_grad_()
    else:
        weights.requires_grad_()
    g = _rand((3, 4, 5), torch.float64, "cpu", gen)
    _check(cands, weights, g, torch.float16, stacked=which == "none_of_cands_stacked")


def test_expanded_grad_from_sum(device):
    """loss = y.sum() hands backward a stride-0 gradient; it is copied, not misread."""
    gen = torch.Generator().manual_seed(5)
    cands = [_rand((4, 3, 2), torch.float32, device, gen).requires_grad_() for _ in range(3)]
    weights = torch.randn(3, generator=gen).to(device).requires_grad_()
    mixed_op_sum(cands, weights).sum().backward()
    for c, w in zip(cands, weights.detach()):
        torch.testing.assert_close(c.grad, torch.full_like(c, w.item()))
    expect = torch.stack([c.detach().double().sum() for c in cands]).float()
    torch.testing.assert_close(weights.grad, expect, rtol=1e-5, atol=1e-5)


def test_bf16_weights_and_fp32_candidates(device):
    gen = torch.Generator().manual_seed(6)
    cands = [_rand((5, 7), torch.float32, device, gen).requires_grad_() for _ in range(2)]
    weights = torch.randn(2, generator=gen).to(torch.bfloat16).to(device).requires_grad_()
    out = mixed_op_sum(cands, weights)
    out.backward(torch.ones_like(out))
    assert weights.grad.dtype == torch.bfloat16 and out.dtype == torch.float32
    ref = mixed_op_sum_reference([c.detach().double() for c in cands], weights.detach().double())
    assert_close(out, ref, torch.float32)


def test_weight_grad_is_deterministic(device):
    gen = torch.Generator().manual_seed(7)
    cands = [_rand((64, 129), torch.float32, device, gen) for _ in range(9)]
    weights = torch.randn(9, generator=gen).to(device).requires_grad_()
    g = _rand((64, 129), torch.float32, device, gen)
    g1 = torch.autograd.grad(mixed_op_sum(cands, weights), weights, g)[0]
    g2 = torch.autograd.grad(mixed_op_sum(cands, weights), weights, g)[0]
    assert torch.equal(g1, g2)


def test_poison_catches_an_unwritten_element(device, monkeypatch):
    """Canary for the NaN poisoning: a launch that covers too few elements must be caught."""
    monkeypatch.setattr(mod, "_block", lambda numel, interp: (128, 4))
    monkeypatch.setattr(mod, "triton", SimpleNamespace(cdiv=lambda a, b: -(-a // b) - 1))  # one program short
    gen = torch.Generator().manual_seed(8)
    cands = [_rand((300,), torch.float32, device, gen) for _ in range(2)]
    out = mixed_op_sum(cands, torch.ones(2, device=device))
    assert torch.isnan(out).any()


def test_empty_and_float64_use_the_reference(device):
    e = [torch.empty(0, 3, device=device)] * 2
    assert mixed_op_sum(e, torch.ones(2, device=device)).shape == (0, 3)
    d = [torch.randn(3, dtype=torch.float64, device=device) for _ in range(2)]
    torch.testing.assert_close(mixed_op_sum(d, torch.ones(2, device=device)), d[0] + d[1])


@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda d: ([torch.ones(2, 3, device=d), torch.ones(3, 2, device=d)], torch.ones(2, device=d)), "candidate 1"),
        (lambda d: ([torch.ones(2, device=d)] * 2, torch.ones(3, device=d)), "weights must have shape"),
        (lambda d: ([torch.ones(2, device=d), torch.ones(2, device=d).half()], torch.ones(2, device=d)), "candidate 1"),
        (lambda d: ([], torch.ones(0, device=d)), "at least one"),
    ],
)
def test_bad_inputs_raise(bad, match, device):
    cands, weights = bad(device)
    with pytest.raises(ValueError, match=match):
        mixed_op_sum(cands, weights)


def test_reference_gradcheck():
    gen = torch.Generator().manual_seed(9)
    cands = [torch.randn(2, 3, 2, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    weights = torch.randn(3, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w, *c: mixed_op_sum_reference(list(c), w), (weights, *cands))


class _TinyMixedLayer(nn.Module):
    """A DARTS-style mixed layer: conv 3x3, conv 5x5, dilated conv 3x3, avg-pool and skip, softmax(alpha)."""

    def __init__(self, c: int, combine):
        super().__init__()
        self.ops = nn.ModuleList(
            [nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 5, padding=2), nn.Conv2d(c, c, 3, padding=2, dilation=2)]
        )
        self.alpha = nn.Parameter(torch.zeros(5))
        self.combine = combine

    def forward(self, x):
        outs = [op(x) for op in self.ops] + [F.avg_pool2d(x, 3, 1, 1, count_include_pad=False), x]
        return self.combine(outs, torch.softmax(self.alpha, 0))


def test_mixed_layer_loss_and_arch_grads_match_reference(device):
    torch.manual_seed(10)
    kernel_layer = _TinyMixedLayer(4, mixed_op_sum).to(device)
    with torch.no_grad():
        kernel_layer.alpha.copy_(torch.randn(5))
    ref_layer = _TinyMixedLayer(4, mixed_op_sum_reference).double()
    ref_layer.load_state_dict({k: v.double().cpu() for k, v in kernel_layer.state_dict().items()})
    x = torch.randn(2, 4, 6, 6, device=device)
    target = torch.randn(2, 4, 6, 6, device=device)

    loss = F.mse_loss(kernel_layer(x), target)
    loss.backward()
    ref_loss = F.mse_loss(ref_layer(x.double().cpu()), target.double().cpu())
    ref_loss.backward()

    assert abs(loss.item() - ref_loss.item()) <= 1e-5 * max(1.0, abs(ref_loss.item()))
    assert_close(kernel_layer.alpha.grad, ref_layer.alpha.grad, torch.float32, "alpha.grad")
    for (name, p), rp in zip(kernel_layer.named_parameters(), ref_layer.parameters()):
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad.double().cpu(), rp.grad, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")
