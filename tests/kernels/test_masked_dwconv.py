"""masked_dwconv: the Triton kernels (CUDA, or CPU interpreter) against a float64 reference.

Thresholds are placed ``MARGIN`` away from the norms they are compared with, so the hard indicators
agree between fp32 and float64 while the straight-through gradients (sigmoid'(+-MARGIN) ~ 0.2) stay large.
"""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F
from kernel_testing import DTYPES, assert_close

from hwnas.kernels import _common, masked_dwconv, masked_dwconv_reference, superkernel_gates

mod = importlib.import_module("hwnas.kernels.masked_dwconv")
MARGIN = 0.5


def _thresholds(w: torch.Tensor, on5: bool, on7: bool, on_e: bool, split: int | None = None):
    """(t_kernel, t_expand) that switch the indicators to the requested states for weight ``w``."""
    K, C = w.shape[-1], w.shape[0]
    split = C // 2 if split is None else split
    rings = mod._ring_masks(K, torch.float64, "cpu")
    w = w.detach().double().cpu()
    sq = w.square().sum(1)
    s5, s7 = (sq * rings[1]).sum(), (sq * rings[2]).sum()
    d5, d7 = float(on5), (float(on7) if K == 7 else 1.0)
    t5 = s5 - MARGIN if on5 else s5 + MARGIN
    t7 = s7 - MARGIN if on7 else s7 + MARGIN
    mk = rings[0] + d5 * rings[1] + d5 * d7 * rings[2]
    se = (w[split:] * mk).square().sum()
    te = se - MARGIN if on_e else se + MARGIN
    return torch.stack([t5, t7])[: K // 2 - 1].float(), te.float().reshape(())


def _compare(x, w, tk, te, stride, dtype, split=None, g=None):
    """Kernel vs float64 reference: output and the gradients of x, w and both thresholds."""
    leaves = [x, w, tk, te]
    kern = [t.detach().requires_grad_() if t is not None else None for t in leaves]
    ref = [t.detach().double().cpu().requires_grad_() if t is not None else None for t in leaves]
    out = masked_dwconv(*kern, stride=stride, channel_split=split)
    expect = masked_dwconv_reference(*ref, stride=stride, channel_split=split)
    assert out.dtype == x.dtype and out.is_contiguous()
    assert_close(out, expect, dtype, "out")
    if g is None:
        g = torch.randn(expect.shape, dtype=torch.float64).to(dtype)
    got = torch.autograd.grad(out, [t for t in kern if t is not None], g.to(x.device))
    want = torch.autograd.grad(expect, [t for t in ref if t is not None], g.double())
    names = [n for n, t in zip(["x", "weight", "t_kernel", "t_expand"], leaves) if t is not None]
    for name, a, b in zip(names, got, want):
        # dL/dx is in x's dtype; the parameter grads are fp32 reductions (the params are fp32)
        assert_close(a, b, dtype if name == "x" else torch.float32, f"grad {name}")
    return out


def _make(B, C, H, W, K, dtype, device, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, H, W, generator=gen, dtype=torch.float64).to(dtype).to(device)
    w = (0.3 * torch.randn(C, 1, K, K, generator=gen)).to(device)
    return x, w


def test_kernel_path_is_exercised(device):
    assert _common.use_triton([torch.ones(1, device=device)], mod._dwconv_fwd_kernel)


GATES = [(1, 1, 1), (0, 1, 1), (1, 0, 0), (0, 0, 1)]  # (d5, d7, d_e6)


@pytest.mark.parametrize("gates", GATES, ids=lambda g: "d5{}d7{}de{}".format(*g))
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("K", [5, 7])
def test_matches_float64_reference(K, stride, gates, device):
    x, w = _make(2, 6, 7, 5, K, torch.float32, device, seed=K * 10 + stride)
    tk, te = _thresholds(w, *gates)
    _compare(x, w, tk.to(device), te.to(device), stride, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("K, stride", [(5, 1), (7, 2)])
def test_low_precision_activations(K, stride, dtype, device):
    x, w = _make(2, 4, 6, 6, K, dtype, device, seed=3)
    tk, te = _thresholds(w, True, False, True)
    _compare(x, w, tk.to(device), te.to(device), stride, dtype)


@pytest.mark.parametrize(
    "B, C, H, W, K, stride",
    [
        (1, 3, 1, 1, 7, 1),  # 1x1 map: only the centre tap ever sees data
        (1, 5, 2, 3, 5, 2),  # odd channels (split 2 | 3), map smaller than the kernel
        (3, 1, 4, 9, 5, 2),  # one channel: it is all in the second group
        (2, 12, 3, 17, 7, 2),
    ],
    ids=str,
)
def test_awkward_shapes(B, C, H, W, K, stride, device):
    x, w = _make(B, C, H, W, K, torch.float32, device, seed=B + C + H + W)
    tk, te = _thresholds(w, True, True, False)
    _compare(x, w, tk.to(device), te.to(device), stride, torch.float32)


@pytest.mark.parametrize("which", ["no_t_kernel", "no_t_expand", "neither", "k3_expand_only", "split_1"])
def test_optional_decisions(which, device):
    K = 3 if which == "k3_expand_only" else 5
    x, w = _make(2, 6, 5, 5, K, torch.float32, device, seed=4)
    split = 1 if which == "split_1" else None
    tk, te = _thresholds(w, False, True, True, split) if K > 3 else (None, _thresholds_k3(w))
    tk = None if which in ("no_t_kernel", "neither", "k3_expand_only") else tk.to(device)
    te = None if which in ("no_t_expand", "neither") else te.to(device)
    _compare(x, w, tk, te, 1, torch.float32, split=split)


def _thresholds_k3(w):
    return (w[w.shape[0] // 2 :].double().square().sum() - MARGIN).float().reshape(()).cpu()


def test_strided_x_and_grad(device):
    x, w = _make(2, 6, 5, 7, 7, torch.float32, device, seed=5)
    tk, te = _thresholds(w, True, True, True)
    x = x.contiguous(memory_format=torch.channels_last)
    g = torch.randn(2, 6, 7, 5, dtype=torch.float64).float().transpose(2, 3)  # non-contiguous dL/dy
    _compare(x, w, tk.to(device), te.to(device), 1, torch.float32, g=g)


def test_weight_grad_is_deterministic(device):
    x, w = _make(4, 8, 9, 9, 5, torch.float32, device, seed=6)
    tk, te = _thresholds(w, True, True, True)
    w.requires_grad_()
    g = torch.randn(4, 8, 9, 9).to(device)
    a = torch.autograd.grad(masked_dwconv(x, w, tk.to(device), te.to(device)), w, g)[0]
    b = torch.autograd.grad(masked_dwconv(x, w, tk.to(device), te.to(device)), w, g)[0]
    assert torch.equal(a, b)


def test_known_answer_threshold_gradient():
    """Straight-through: dL/dt_k5 = -sigmoid'(z5) * dL/dd5, with dL/dd5 = sum(dL/dw_eff * w) over the
    5x5 ring, computed here from a plain conv's weight gradient (no t_expand: nothing else feeds d5)."""
    x, w = _make(2, 4, 6, 6, 5, torch.float64, "cpu", seed=7)
    w = w.double()
    tk, _ = _thresholds(w, True, True, True)
    tk = tk.double().requires_grad_()
    y = masked_dwconv_reference(x, w, tk, None)
    g = torch.randn_like(y)
    (gt,) = torch.autograd.grad(y, tk, g)
    w_eff = w.clone().requires_grad_()  # d5 = 1: the effective weight is w itself
    (g_weff,) = torch.autograd.grad(F.conv2d(x, w_eff, padding=2, groups=4), w_eff, g)
    ring5 = mod._ring_masks(5, torch.float64, "cpu")[1]
    z5 = (w.square().sum(1) * ring5).sum() - tk.detach()[0]
    sig = torch.sigmoid(z5)
    expect = -sig * (1 - sig) * (g_weff * w * ring5).sum()
    torch.testing.assert_close(gt[0], expect)


def test_gates_values_and_forward_is_hard():
    w = torch.zeros(4, 1, 5, 5, dtype=torch.float64)
    w[:, :, 1:4, 1:4] = 1.0  # inner 3x3 only: ring norm 0
    w[:, :, 0, 0] = 0.5  # ring norm 4 * 0.25 = 1
    d5, d7, de = superkernel_gates(w, torch.tensor([0.9]), torch.tensor(100.0))
    assert (d5.item(), d7.item(), de.item()) == (1.0, 1.0, 0.0)
    d5, _, _ = superkernel_gates(w, torch.tensor([1.1]), None)
    assert d5.item() == 0.0
    # the forward uses the hard 0/1 value: with d5 = 0 the ring taps do not contribute at all
    x = torch.randn(1, 4, 5, 5, dtype=torch.float64)
    y = masked_dwconv_reference(x, w, torch.tensor([1.1], dtype=torch.float64), None)
    w3 = w.clone()
    w3[:, :, 0, 0] = 0.0
    torch.testing.assert_close(y, F.conv2d(x, w3, padding=2, groups=4))


@pytest.mark.parametrize("stride", [1, 2])
def test_reference_gradcheck(stride):
    """gradcheck sees the step's true (zero) derivative, so it checks x exactly and w with thresholds
    far from the norms (sigmoid' ~ e^-40, the indicators locally constant); the straight-through part is
    checked against the kernel above and by the known-answer test."""
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(1, 2, 5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    w = (0.3 * torch.randn(2, 1, 7, 7, generator=gen, dtype=torch.float64)).requires_grad_()
    sq = w.detach().square().sum(1)
    rings = mod._ring_masks(7, torch.float64, "cpu")
    tk = torch.stack([(sq * rings[1]).sum() - 40, (sq * rings[2]).sum() + 40])  # d5 = 1, d7 = 0
    te = torch.tensor(-40.0, dtype=torch.float64)  # d_e6 = 1
    assert torch.autograd.gradcheck(lambda x, w: masked_dwconv_reference(x, w, tk, te, stride=stride), (x, w))


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(weight=torch.ones(6, 1, 4, 4)), "k_max must be"),
        (dict(weight=torch.ones(5, 1, 5, 5)), "weight must be"),
        (dict(t_kernel=torch.zeros(2)), "t_kernel must be"),
        (dict(t_expand=torch.zeros(2)), "t_expand must be"),
        (dict(stride=3), "stride must be"),
        (dict(channel_split=7), "channel_split"),
    ],
)
def test_bad_inputs_raise(kw, match, device):
    args = dict(
        x=torch.ones(1, 6, 4, 4), weight=torch.ones(6, 1, 5, 5), t_kernel=torch.zeros(1), t_expand=torch.zeros(())
    )
    args.update(kw)
    args = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    with pytest.raises(ValueError, match=match):
        masked_dwconv(**args)


def test_dtypes_listed():
    assert set(DTYPES) == set(_common.KERNEL_DTYPES)
