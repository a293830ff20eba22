import pytest
import torch
import torch.nn.functional as F

from hwnas.latency.predictor import LatencyModel
from hwnas.memory import activation_bytes
from hwnas.mixed.shared_gate import SharedBinaryGatedOp
from hwnas.spaces import Arch, get_space
from hwnas.spaces.builder import build_child
from hwnas.strategies import get_strategy
from hwnas.strategies.proxyless import two_path_alpha_grad
from helpers import synthetic_table

SMALL = {"width_mult": 0.25, "num_classes": 4}


def make(target=None, space="proxyless", **opts):
    sp = get_space(space)
    cfg = sp.resolve_config(SMALL)
    lat = LatencyModel(synthetic_table(sp, cfg), sp, cfg)
    torch.manual_seed(0)
    return get_strategy("proxyless").build(sp, cfg, 32, 4, latency=lat, target_ms=target, **opts), lat


def count_calls(strategy):
    """(layer, candidate) of every candidate run from now on (shared or separate weights alike)."""
    calls = []
    for li, op in enumerate(strategy.supernet.mixed):
        def path(j, x, li=li, run=op.path):
            calls.append((li, j))
            return run(j, x)
        op.path = path
    return calls


def test_two_path_gradient_is_the_gradient_of_the_renormalized_expectation():
    """Eq. 4: with gate gradients G, the estimate equals d/dalpha of sum_j softmax(alpha[pair])_j G_j."""
    torch.manual_seed(1)
    alpha = torch.randn(6, dtype=torch.float64)
    pair, g = (4, 1), torch.tensor([0.7, -1.3], dtype=torch.float64)
    a = alpha.clone().requires_grad_(True)
    (torch.softmax(a[list(pair)], 0) * g).sum().backward()
    got = two_path_alpha_grad(alpha, pair, g)
    assert torch.allclose(got, a.grad)
    assert got[[0, 2, 3, 5]].abs().sum() == 0 and got[[4, 1]].abs().sum() > 0


@pytest.mark.parametrize("weights", ["shared", "separate"])
def test_weight_step_runs_exactly_one_path_per_layer(weights):
    s, _ = make(weights=weights)
    calls = count_calls(s)
    s.sample_weight_path()
    s.supernet(torch.randn(2, 3, 32, 32)).sum().backward()
    layers = [li for li, _ in calls]
    assert sorted(layers) == list(range(len(s.supernet.mixed)))
    if weights == "separate":
        grads = [(li, ci) for li, op in enumerate(s.supernet.mixed) for ci, c in enumerate(op.candidates)
                 if any(p.grad is not None for p in c.parameters())]
        assert set(grads) <= set(calls)  # only the active path gets weight gradients


def test_arch_step_runs_two_paths_and_keeps_unsampled_probabilities():
    s, _ = make(target=None)  # no latency term: only the two sampled logits may move
    before = [torch.softmax(a.detach(), 0).clone() for a in s.alpha]
    calls = count_calls(s)
    s.arch_step(torch.randn(8, 3, 32, 32), torch.randint(0, 4, (8,)))
    per_layer = {}
    for li, ci in calls:
        per_layer.setdefault(li, set()).add(ci)
    assert all(len(v) == 2 for v in per_layer.values()) and len(per_layer) == len(s.supernet.mixed)
    changed = 0
    for li, a in enumerate(s.alpha):
        after = torch.softmax(a.detach(), 0)
        unsampled = [i for i in range(len(a)) if i not in per_layer[li]]
        assert torch.allclose(after[unsampled], before[li][unsampled], atol=1e-6)
        changed += int(not torch.allclose(after, before[li]))
    assert changed > 0


def test_latency_term_moves_logits_towards_faster_candidates():
    s, lat = make(target=1.0, loss="add#linear", loss_params={"lambda": 50.0}, arch_lr=0.05)
    e0 = float(s.expected_latency().detach())
    for _ in range(5):
        s.arch_step(torch.randn(8, 3, 32, 32), torch.randint(0, 4, (8,)))
    assert float(s.expected_latency().detach()) < e0


def test_arch_parameters_follow_the_module():
    s, _ = make()
    keys = s.state_dict().keys()
    assert any(k.startswith("alpha.") for k in keys) and any(k.startswith("supernet.mixed.") for k in keys)
    s2, _ = make()
    s2.load_state_dict(s.state_dict())


def test_child_inherits_supernet_weights_exactly():
    s, _ = make()
    s.sample_weight_path()
    tokens = [op.tokens[op.active] for op in s.supernet.mixed]
    child = build_child(Arch("proxyless", s.supernet.config, tokens), resolution=32)
    child.load_state_dict(s.supernet.child_state_dict(tokens))
    s.set_eval_path(tokens)
    s.supernet.eval(), child.eval()
    x = torch.randn(3, 3, 32, 32)
    assert torch.allclose(s.supernet(x), child(x), atol=1e-6)


def test_weight_step_memory_is_one_path_not_all_candidates():
    """Saved-for-backward bytes of a ProxylessNAS weight step vs the sampled child, and vs running
    every candidate (a DARTS-style weighted sum over all paths)."""
    s, _ = make()
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 4, (16,))
    s.sample_weight_path()
    tokens = [op.tokens[op.active] for op in s.supernet.mixed]
    child = build_child(Arch("proxyless", s.supernet.config, tokens), resolution=32)
    one = activation_bytes(lambda: F.cross_entropy(s.supernet(x), y))
    ref = activation_bytes(lambda: F.cross_entropy(child(x), y))

    def all_paths():
        h = s.supernet.first(s.supernet.stem(x))
        for op in s.supernet.mixed:
            h = sum(op.path(j, h) for j in range(len(op))) / len(op)
        return F.cross_entropy(s.supernet.classifier(s.supernet.head(h)), y)

    every = activation_bytes(all_paths)
    assert one <= 1.5 * ref
    assert every > 4 * one


@pytest.mark.parametrize("space", ["proxyless", "fbnet", "spnas"])
def test_one_weight_and_arch_step_on_every_space(space):
    s, lat = make(target=None, space=space)
    s.target_ms = lat.extremes()[1][0] * 0.8  # a binding target: the latency term is in the loss
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 4, (4,))
    s.sample_weight_path()
    F.cross_entropy(s.supernet(x), y).backward()
    active = [op.block if isinstance(op, SharedBinaryGatedOp) else op.candidates[op.active]
              for op in s.supernet.mixed if op.tokens[op.active] != "skip"]
    assert active and all(p.grad is not None for m in active for p in m.parameters())
    before = [a.detach().clone() for a in s.alpha]
    metrics = s.arch_step(x, y)
    assert metrics["expected_latency_ms"] > 0 and metrics["arch_loss"] > 0
    assert all(not torch.equal(b, a.detach()) for b, a in zip(before, s.alpha))  # latency moves every layer
    tokens = s.derive()
    assert Arch(space, s.supernet.config, tokens).layers == tokens
