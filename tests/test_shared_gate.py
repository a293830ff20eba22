"""SharedBinaryGatedOp: ProxylessNAS's gates over candidates cut out of one MBConv. Each candidate must
be exactly its plain child (forward, gradients, BatchNorm statistics) so that the search trains, and
the derived network inherits, what is deployed."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hwnas.blocks import MBConv
from hwnas.mixed.binary_gate import BinaryGatedOp
from hwnas.mixed.factory import CandidateFactory
from hwnas.mixed.shared_gate import SharedBinaryGatedOp, sliced_batch_norm
from hwnas.spaces import get_space
from hwnas.strategies import get_strategy

GRID = ("k3e3", "k3e6", "k5e3", "k5e6", "k7e3", "k7e6", "skip")


def layer(cin, cout, stride, tokens=GRID):
    def make(token, divide=1):
        if token == "skip":
            return nn.Identity()
        k, e = int(token[1]), int(token[3])
        return MBConv(cin, cout, k, e, stride)
    torch.manual_seed(0)
    op = SharedBinaryGatedOp.build(tokens, CandidateFactory(make, cin, cout, stride))
    for m in op.modules():  # non-trivial BN state, so that slicing the wrong entries shows
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.5, 0.5)
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2)
    return op.double(), make


@pytest.mark.parametrize("cin,cout,stride", [(8, 8, 1), (8, 16, 2), (6, 10, 1)])
def test_every_candidate_is_its_plain_child_forward_backward_and_bn_statistics(cin, cout, stride):
    op, make = layer(cin, cout, stride, GRID if (cin == cout and stride == 1) else GRID[:-1])
    assert isinstance(op, SharedBinaryGatedOp)
    x = torch.randn(3, cin, 9, 9, dtype=torch.float64)  # odd size: padding and stride must match
    for j, token in enumerate(op.tokens):
        child = make(token).double()
        child.load_state_dict(op.child_state_dict(token))
        for training in (True, False):
            op.train(training), child.train(training)
            op.zero_grad(set_to_none=True), child.zero_grad(set_to_none=True)
            xo, xc = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
            out_op, out_child = op.path(j, xo), child(xc)
            assert out_op.shape == out_child.shape
            torch.testing.assert_close(out_op, out_child, rtol=1e-12, atol=1e-12)
            w = torch.randn_like(out_op)
            (out_op * w).sum().backward(), (out_child * w).sum().backward()
            torch.testing.assert_close(xo.grad, xc.grad, rtol=1e-12, atol=1e-12)
            if token == "skip":
                continue
            grads = {n: p.grad for n, p in op.block.named_parameters()}
            cut = {n: g for n, g in op.child_state_dict(token).items()}
            for n, p in child.named_parameters():  # the block's gradient, cut like its weights, is the child's
                full = grads[n]
                got = _cut_like(full, cut[n].shape)
                torch.testing.assert_close(got, p.grad, rtol=1e-12, atol=1e-12)
                assert float(full.abs().sum()) == pytest.approx(float(got.abs().sum()), rel=1e-12)  # nothing outside
        if token != "skip":  # one training forward moved the same running statistics
            for n, v in child.state_dict().items():
                torch.testing.assert_close(op.child_state_dict(token)[n], v, rtol=1e-12, atol=1e-12)


def _cut_like(full, shape):
    """The entries of a block tensor that a child tensor of ``shape`` takes (centred in the kernel dims)."""
    idx = []
    for d, (n_full, n) in enumerate(zip(full.shape, shape)):
        off = (n_full - n) // 2 if d >= 2 else 0
        idx.append(slice(off, off + n))
    return full[tuple(idx)]


def test_sliced_batch_norm_is_batch_norm_on_the_first_channels_and_leaves_the_rest():
    torch.manual_seed(1)
    for momentum in (0.1, None):  # None: the cumulative average of recalibrate_bn
        full, ref = nn.BatchNorm2d(8, momentum=momentum), nn.BatchNorm2d(5, momentum=momentum)
        full.weight.data.uniform_(0.5, 1.5), full.bias.data.uniform_(-1, 1)
        ref.weight.data.copy_(full.weight.data[:5]), ref.bias.data.copy_(full.bias.data[:5])
        for _ in range(3):
            x = torch.randn(4, 5, 3, 3) * 3 + 1
            torch.testing.assert_close(sliced_batch_norm(full, x, 5), ref(x))
        torch.testing.assert_close(full.running_mean[:5], ref.running_mean)
        torch.testing.assert_close(full.running_var[:5], ref.running_var)
        assert torch.equal(full.running_mean[5:], torch.zeros(3)) and torch.equal(full.running_var[5:], torch.ones(3))
        full.eval(), ref.eval()
        x = torch.randn(2, 5, 3, 3)
        torch.testing.assert_close(sliced_batch_norm(full, x, 5), ref(x))


def test_layers_that_are_not_a_grid_keep_separate_weights():
    op, _ = layer(8, 8, 1, ("k3e1", "k3e3", "k5e6"))  # e1 is not cut out of an e6 block
    assert type(op) is BinaryGatedOp and len(op.candidates) == 3
    sp = get_space("fbnet")
    s = get_strategy("proxyless").build(sp, sp.resolve_config({"width_mult": 0.25}), 32, 4)
    assert all(type(op) is BinaryGatedOp for op in s.supernet.mixed if "k3e1" in op.tokens)


def test_weights_option_is_checked_and_both_forms_share_the_architecture_state():
    sp = get_space("proxyless")
    cfg = sp.resolve_config({"width_mult": 0.25, "num_classes": 4})
    with pytest.raises(ValueError, match="weights must be one of shared, separate, got 'tied'"):
        get_strategy("proxyless").build(sp, cfg, 32, 4, weights="tied")
    shared = get_strategy("proxyless").build(sp, cfg, 32, 4)
    separate = get_strategy("proxyless").build(sp, cfg, 32, 4, weights="separate")
    assert all(isinstance(op, SharedBinaryGatedOp) for op in shared.supernet.mixed)
    assert not any(isinstance(op, SharedBinaryGatedOp) for op in separate.supernet.mixed)
    n_shared = sum(p.numel() for p in shared.supernet.parameters())
    n_separate = sum(p.numel() for p in separate.supernet.parameters())
    assert n_shared < n_separate / 2
    assert shared.supernet.choices == separate.supernet.choices


def _sampled_accuracy(weights: str, seed: int) -> float:
    """60 sampled weight steps on four Gaussian blobs, then the accuracy of four sampled paths."""
    sp = get_space("proxyless")
    cfg = sp.resolve_config({"width_mult": 0.25, "num_classes": 4})
    centers = torch.randn(4, 3, 1, 1, generator=torch.Generator().manual_seed(seed)) * 2
    torch.manual_seed(seed)
    s = get_strategy("proxyless").build(sp, cfg, 16, 4, weights=weights)
    opt = torch.optim.SGD(s.supernet.parameters(), lr=0.02, momentum=0.9)
    gen = torch.Generator().manual_seed(seed + 1)
    for _ in range(60):
        y = torch.randint(0, 4, (32,), generator=gen)
        x = centers[y] + torch.randn(32, 3, 16, 16, generator=gen)
        s.sample_weight_path()
        loss = F.cross_entropy(s.supernet(x), y)
        opt.zero_grad(set_to_none=True), loss.backward(), opt.step()
    y = torch.randint(0, 4, (256,), generator=gen)
    x = centers[y] + torch.randn(256, 3, 16, 16, generator=gen)
    hits = 0
    with torch.no_grad():
        for _ in range(4):  # four sampled paths, batch statistics
            s.sample_weight_path()
            hits += int((s.supernet(x).argmax(1) == y).sum())
    return hits / 1024


def test_a_sampled_shared_supernet_learns_a_task_its_separate_form_does_not_in_as_many_steps():
    """The reason for shared weights (docs/methods.md): 60 sampled steps on an easy task. Measured with
    torch 2.14.1 on 1 thread (2-core AMD EPYC VM, 2026-12-03), seeds 0-3: shared 0.64 / 1.00 / 0.88 / 1.00,
    separate 0.26 / 0.29 / 0.32 / 0.25. One seed's figure moves with the torch build (seed 0 gave 0.78+
    before), so the test holds the gap on two seeds and their mean, not one seed's accuracy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same arithmetic whatever the suite ran before
    try:
        acc = {(w, seed): _sampled_accuracy(w, seed) for seed in (0, 1) for w in ("shared", "separate")}
    finally:
        torch.set_num_threads(threads)
    for seed in (0, 1):
        assert acc["shared", seed] > acc["separate", seed] + 0.3, acc
    assert (acc["shared", 0] + acc["shared", 1]) / 2 > 0.75, acc
    assert max(acc["separate", 0], acc["separate", 1]) < 0.5, acc
