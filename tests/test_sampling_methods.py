"""The weight-sharing sampling methods (SPOS, FairNAS, One-Shot, ENAS) as units: FairNAS's strict fairness and
its gradients against single paths in float64, path dropout's schedule, ghost BatchNorm against hand
computation, the ENAS controller's probabilities and its REINFORCE gradient, SPOS's evolution held to the
window and resumed by replay, and the spaces each method takes or refuses."""
import itertools
import random

import pytest
import torch

from hwnas.latency.predictor import LatencyModel
from hwnas.mixed.binary_gate import BinaryGatedOp
from hwnas.mixed.ghost_bn import GhostBatchNorm2d, ghost_batch_norm
from hwnas.mixed.path_dropout import PathDropoutSumOp, drop_probability, keep_mask
from hwnas.selection.controller import Controller
from hwnas.selection.spos_evolution import SPOSEvolution
from hwnas.spaces import get_space
from hwnas.strategies import get_strategy
from hwnas.strategies.enas import MicroEncoding, encoding_for
from hwnas.strategies.fairnas import fair_paths
from hwnas.strategies.oneshot import linear_rate
from tests.helpers import assert_selector_resumes_by_replay, synthetic_table
from tests.test_evolution import Structured

SMALL = {"width_mult": 0.25, "num_classes": 4}


class NoStep:
    """An optimizer stand-in: zero_grad clears, step does nothing (the gradients stay to be read)."""

    def __init__(self, params):
        self.params = list(params)
        self.param_groups = [{"lr": 0.0}]

    def zero_grad(self, set_to_none=True):
        for p in self.params:
            p.grad = None

    def step(self):
        pass


def _build(method, space="proxyless", config=SMALL, resolution=16, **opts):
    sp = get_space(space)
    return get_strategy(method).build(sp, sp.resolve_config(config), resolution, 4, **opts)


# -- FairNAS ------------------------------------------------------------------------------------------------
def test_fair_paths_run_every_candidate_exactly_once_per_step():
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        paths = fair_paths([6, 6, 7, 3, 1], gen)
        assert len(paths) == 7
        cols = list(zip(*paths))
        assert sorted(cols[2]) == list(range(7))  # the widest layer: each candidate once
        for n, col in zip([6, 6, 3, 1], [cols[0], cols[1], cols[3], cols[4]]):
            counts = [col.count(j) for j in range(n)]
            assert sum(counts) == 7 and max(counts) - min(counts) <= 1  # the closest to equal m allows


def test_fairnas_step_gradient_is_the_sum_of_its_single_path_gradients_in_float64():
    torch.manual_seed(0)
    s = _build("fairnas", weights="separate", gradients="sum", resolution=8).double()
    x, y = torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    paths = s.fair_paths()
    s.fair_paths = lambda: paths
    params = dict(s.supernet.named_parameters())
    # reference: each path alone, from the same weights (BN in train mode: batch statistics, so running
    # statistics do not change the gradient)
    expected = {k: torch.zeros_like(p) for k, p in params.items()}
    for tokens in paths:
        s.supernet.zero_grad(set_to_none=True)
        s.set_path(tokens)
        torch.nn.functional.cross_entropy(s.supernet(x), y).backward()
        for k, p in params.items():
            if p.grad is not None:
                expected[k] += p.grad
    opt = NoStep(params.values())
    s.weight_step((x, y), opt)
    for k, p in params.items():
        got = torch.zeros_like(p) if p.grad is None else p.grad
        torch.testing.assert_close(got, expected[k], rtol=1e-10, atol=1e-12, msg=k)
    # strict fairness on the supernet: every candidate of every 7-candidate layer got a gradient
    for i, op in enumerate(s.supernet.mixed):
        if len(op.tokens) == len(paths):
            assert all(c.weight.grad is not None for c in _first_convs(op)), i


def _first_convs(op):
    for cand in op.candidates:
        convs = [m for m in cand.modules() if isinstance(m, torch.nn.Conv2d)]
        if convs:
            yield convs[0]


def test_fairnas_mean_is_the_sum_over_m():
    torch.manual_seed(1)
    a = _build("fairnas", weights="separate", gradients="sum", resolution=8).double()
    b = _build("fairnas", weights="separate", gradients="mean", resolution=8).double()
    b.load_state_dict(a.state_dict())
    paths = a.fair_paths()
    a.fair_paths = b.fair_paths = lambda: paths
    x, y = torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    a.weight_step((x, y), NoStep(a.supernet.parameters()))
    b.weight_step((x, y), NoStep(b.supernet.parameters()))
    pa, pb = next(a.supernet.stem.parameters()), next(b.supernet.stem.parameters())
    torch.testing.assert_close(pa.grad / len(paths), pb.grad)


def test_spos_step_leaves_candidates_off_the_path_without_gradient():
    torch.manual_seed(0)
    s = _build("spos", weights="separate")
    tokens = s.sample_path()
    s.sample_path = lambda: tokens
    s.weight_step((torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])), NoStep(s.supernet.parameters()))
    for op, t in zip(s.supernet.mixed, tokens):
        for tok, cand in zip(op.tokens, op.candidates):
            grads = [p.grad for p in cand.parameters()]
            if tok == t:
                assert all(g is not None for g in grads) or not grads
            else:
                assert all(g is None for g in grads)  # no momentum, no weight decay: SGD skips them


def test_spos_paths_are_uniform_per_decision():
    torch.manual_seed(0)
    s = _build("spos")
    counts = {}
    for _ in range(3000):
        counts[s.sample_path()[3]] = counts.get(s.sample_path()[3], 0) + 1
    choices = s.decisions[3].choices
    assert set(counts) == set(choices)
    for c in choices:
        assert abs(counts[c] / 3000 - 1 / len(choices)) < 0.04


# -- One-Shot: path dropout and ghost BN -------------------------------------------------------------------
def test_path_dropout_drops_all_k_with_probability_r_and_keeps_one():
    for r, k in [(0.5, 7), (0.2, 3), (0.9, 2)]:
        assert drop_probability(r, k) ** k == pytest.approx(r)
    gen = torch.Generator().manual_seed(0)
    r, k, n = 0.5, 4, 20000
    kept = [keep_mask(r, k, gen) for _ in range(n)]
    assert all(any(m) for m in kept)
    p_keep = 1 - r ** (1 / k)
    singles = sum(sum(m) == 1 for m in kept) / n
    # exactly one kept: C(k,1) p (1-p)^(k-1), plus the all-dropped case turned into one kept (prob r)
    assert singles == pytest.approx(k * p_keep * (1 - p_keep) ** (k - 1) + r, abs=0.015)
    assert drop_probability(0.0, 5) == 0.0 and keep_mask(0.0, 5) == [True] * 5


def test_path_dropout_rate_rises_linearly_over_the_search():
    assert linear_rate(0, 10, 0.5) == 0.0 and linear_rate(9, 10, 0.5) == pytest.approx(0.5)
    assert linear_rate(3, 7, 0.6) == pytest.approx(0.3)
    s = _build("oneshot", path_dropout=0.4)
    s.num_epochs, s.steps_per_epoch = 2, 3
    rates = []
    for epoch in range(2):
        s.on_epoch_start(epoch)
        for _ in range(3):
            rates.append(s.current_rate())
            s.step_in_epoch += 1
    assert rates == pytest.approx([0.0, 0.08, 0.16, 0.24, 0.32, 0.4])


def test_path_dropout_op_sums_candidates_and_selects_one():
    torch.manual_seed(0)
    cands = [torch.nn.Linear(3, 3) for _ in range(3)]
    op = PathDropoutSumOp(("a", "b", "c"), cands)
    x = torch.randn(2, 3)
    torch.testing.assert_close(op(x), sum(c(x) for c in cands))
    op.select(1)
    torch.testing.assert_close(op(x), cands[1](x))
    op.select(None)
    op.rate = 0.99
    out = op(x)
    assert 1 <= len(op.last_kept) <= 3
    torch.testing.assert_close(out, sum(cands[i](x) for i in op.last_kept))


def test_ghost_batch_norm_normalizes_each_ghost_batch_and_updates_running_statistics_in_turn():
    torch.manual_seed(0)
    bn = GhostBatchNorm2d(2, ghost_size=4, momentum=0.1).double()
    x = torch.randn(10, 2, 3, 3, dtype=torch.float64) * 3 + 1
    out = bn(x)
    parts = [x[0:4], x[4:7], x[7:10]]  # chunk(ceil(10/4) = 3): 4, 3, 3
    mean, var = torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    start = 0
    for p in parts:
        m = p.mean((0, 2, 3))
        v = p.var((0, 2, 3), unbiased=False)
        ref = (p - m[None, :, None, None]) / torch.sqrt(v[None, :, None, None] + bn.eps)
        torch.testing.assert_close(out[start:start + len(p)], ref)
        n = p.numel() / 2
        mean = 0.9 * mean + 0.1 * m
        var = 0.9 * var + 0.1 * v * n / (n - 1)
        start += len(p)
    torch.testing.assert_close(bn.running_mean, mean)
    torch.testing.assert_close(bn.running_var, var)
    bn.eval()
    torch.testing.assert_close(bn(x), (x - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + bn.eps))


def test_ghost_batch_norm_swap_keeps_state_and_the_child_layout():
    s = _build("oneshot")
    ghosts = [m for m in s.supernet.modules() if isinstance(m, GhostBatchNorm2d)]
    plain = [m for m in s.supernet.modules() if type(m) is torch.nn.BatchNorm2d]
    assert ghosts and not plain
    tokens = s.sample_path()
    state = s.supernet.child_state_dict(tokens)
    from hwnas.spaces import Arch
    from hwnas.spaces.builder import build_child

    child = build_child(Arch("proxyless", s.config, tokens), resolution=16)
    child.load_state_dict(state)  # same keys: a ghost BN's state dict is a BatchNorm2d's
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2))
    net[1].running_mean.fill_(3.0)
    assert ghost_batch_norm(net, 8) == 1 and isinstance(net[1], GhostBatchNorm2d)
    assert float(net[1].running_mean[0]) == 3.0


# -- the ENAS controller -------------------------------------------------------------------------------------
def test_controller_probabilities_of_every_architecture_sum_to_one_under_masks_and_shaping():
    torch.manual_seed(0)
    c = Controller([3, 2, 3], hidden=8, layers=1, temperature=5.0, tanh_constant=2.5).double()
    allowed = lambda i, so_far: [j for j in range(3) if j != so_far[0]] if i == 2 else None  # noqa: E731
    total = 0.0
    for choices in itertools.product(range(3), range(2), range(3)):
        _, logp, _ = c(list(choices), allowed=allowed)
        if choices[2] == choices[0]:
            assert float(logp.detach()) == float("-inf")
        else:
            total += float(logp.exp())
    assert total == pytest.approx(1.0, abs=1e-12)
    # by hand for the first decision: C tanh(W h / t + b / t) from the LSTM's first output
    h, _ = c.lstm(c.start.unsqueeze(0))
    logits = 2.5 * torch.tanh(c.heads[0](h[0, 0]) / 5.0)
    _, logp0, _ = Controller.forward(c, [1, 0, 0], allowed=None)
    c1 = Controller([3], hidden=8, layers=1, temperature=5.0, tanh_constant=2.5).double()
    c1.load_state_dict({k: v for k, v in c.state_dict().items() if not k.startswith(("embed.1", "embed.2",
                                                                                       "heads.1", "heads.2"))})
    assert float(c1([1])[1]) == pytest.approx(float(torch.log_softmax(logits, -1)[1]), abs=1e-12)
    assert torch.isfinite(logp0)


def test_reinforce_gradient_matches_the_exact_gradient_and_finds_the_optimum():
    torch.manual_seed(0)
    c = Controller([3, 3], hidden=8, layers=1, temperature=5.0, tanh_constant=2.5).double()
    best = (2, 0)
    reward = lambda ch: 1.0 if tuple(ch) == best else 0.2 * (ch[0] == 2)  # noqa: E731
    params = list(c.parameters())
    exact = torch.zeros(())
    for ch in itertools.product(range(3), range(3)):
        _, logp, _ = c(list(ch))
        exact = exact + logp.exp() * reward(ch)
    grad = lambda out: [torch.zeros_like(p) if g is None else g  # noqa: E731  (the last embedding feeds nothing)
                        for p, g in zip(params, torch.autograd.grad(out, params, allow_unused=True))]
    g_exact = grad(exact)
    gen = torch.Generator().manual_seed(1)
    n, est = 4000, [torch.zeros_like(p) for p in params]
    for _ in range(n):
        ch, logp, _ = c(generator=gen)
        for e, g in zip(est, grad(reward(ch) * logp)):
            e += g / n
    flat_exact = torch.cat([g.flatten() for g in g_exact])
    flat_est = torch.cat([g.flatten() for g in est])
    cos = float(flat_exact @ flat_est / (flat_exact.norm() * flat_est.norm()))
    assert cos > 0.95, cos
    opt, baseline = torch.optim.Adam(c.parameters(), lr=0.05), 0.0
    for _ in range(300):
        ch, logp, _ = c(generator=gen)
        r = reward(ch)
        baseline = 0.9 * baseline + 0.1 * r
        opt.zero_grad()
        (-(r - baseline) * logp).backward()
        opt.step()
    probs = {ch: float(c(list(ch))[1].exp()) for ch in itertools.product(range(3), range(3))}
    assert max(probs, key=probs.get) == best and probs[best] > 0.5


def test_enas_micro_encoding_samples_legal_darts_cells():
    space = get_space("darts")
    enc = encoding_for(space, space.resolve_config({}))
    assert isinstance(enc, MicroEncoding) and len(enc.sizes) == 4 * 8
    c = Controller(enc.sizes, hidden=16, layers=1, temperature=5.0, tanh_constant=2.5)
    gen = torch.Generator().manual_seed(0)
    for _ in range(100):
        choices, logp, _ = c(generator=gen, allowed=enc.allowed)
        tokens = enc.tokens(choices)
        space.check_layers(space.resolve_config({}), tokens)
        for group in space.decision_groups():
            assert sum(tokens[i] != "none" for i in group) == 2
        assert torch.isfinite(logp)


def test_enas_arch_step_moves_the_controller_and_the_baseline():
    torch.manual_seed(0)
    s = _build("enas", aggregate=2)
    before = [p.detach().clone() for p in s.controller.parameters()]
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 4, (8,))
    running = s.supernet.stem[1].running_mean.clone() if hasattr(s.supernet.stem, "__getitem__") else None
    out1 = s.arch_step(x, y)
    assert all(torch.equal(a, b) for a, b in zip(before, s.controller.parameters()))  # aggregating
    out2 = s.arch_step(x, y)
    assert any(not torch.equal(a, b) for a, b in zip(before, s.controller.parameters()))
    assert out1["baseline"] == pytest.approx(out1["reward"])
    assert out2["baseline"] == pytest.approx(out1["baseline"] - 0.01 * (out1["baseline"] - out2["reward"]))
    if running is not None:  # the reward's forward leaves BN running statistics alone
        torch.testing.assert_close(s.supernet.stem[1].running_mean, running)
    assert s.current_arch() == s.current_arch()


# -- SPOS's evolution -------------------------------------------------------------------------------------
def _window_setup():
    space = get_space("proxyless")
    cfg = space.resolve_config(SMALL)
    model = LatencyModel(synthetic_table(space, cfg), space, cfg)
    (fast, _), (slow, _) = model.extremes()
    target = fast + 0.4 * (slow - fast)
    return space, cfg, model, (0.9 * target, target)


def test_spos_evolution_generations_stay_in_the_window_and_improve():
    space, cfg, model, window = _window_setup()
    task = Structured(space, cfg)
    from hwnas.selection import run_trials

    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        sel = SPOSEvolution(space, cfg, seed=0, latency=model, window=window, population=10, topk=3, iterations=4)
        trials = run_trials(sel, task, Path(d), SPOSEvolution.budget(10, 4), latency=model)
    assert len(trials) == 50 and len({tuple(t["arch"]) for t in trials}) == 50
    assert all(window[0] - 1e-9 <= t["predicted_ms"] <= window[1] + 1e-9 for t in trials)
    first = max(t["result"]["accuracy"] for t in trials[:10])
    last = sorted(t["result"]["accuracy"] for t in trials[40:])[-3:]
    assert min(last) > first - 0.5 and max(t["result"]["accuracy"] for t in trials) > first


def test_spos_evolution_mutation_and_crossover_follow_their_parents():
    space, cfg, model, window = _window_setup()
    sel = SPOSEvolution(space, cfg, seed=0, population=4, topk=2, iterations=1, mutation_prob=0.1)
    a, b = space.sample(random.Random(1), cfg), space.sample(random.Random(2), cfg)
    diffs = [sum(x != y for x, y in zip(a, sel.mutate(a))) for _ in range(400)]
    n = len(a)
    expected = sum(0.1 * (1 - 1 / len(d.choices)) for d in space.decisions(cfg))
    assert sum(diffs) / 400 == pytest.approx(expected, rel=0.25) and max(diffs) < n
    for _ in range(50):
        child = sel.crossover(a, b)
        assert all(c in (x, y) for c, x, y in zip(child, a, b))


def test_spos_evolution_resumes_by_replay(tmp_path):
    space, cfg, model, window = _window_setup()
    assert_selector_resumes_by_replay(
        lambda: SPOSEvolution(space, cfg, seed=3, latency=model, window=window, population=6, topk=2, iterations=2),
        lambda: Structured(space, cfg), tmp_path, n=18, killed_after=8, latency=model)


def test_spos_evolution_rejects_bad_settings():
    space, cfg, model, window = _window_setup()
    with pytest.raises(ValueError, match="topk"):
        SPOSEvolution(space, cfg, population=4, topk=5)
    with pytest.raises(ValueError, match="latency table"):
        SPOSEvolution(space, cfg, window=window)


# -- where each method applies --------------------------------------------------------------------------------
def test_methods_take_their_spaces_and_refuse_the_others_in_one_line():
    with pytest.raises(ValueError, match="fairnas.*does not apply.*independent") as e:
        get_strategy("fairnas").check_space(get_space("darts"))
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="weights=separate"):
        _build("oneshot", weights="shared")
    with pytest.raises(ValueError, match="no shared-weight candidates"):
        _build("spos", space="nb201", config={"C": 4, "N": 1, "num_classes": 4}, weights="shared")
    with pytest.raises(ValueError, match="weights must be"):
        _build("spos", weights="sliced")
    with pytest.raises(ValueError, match="unknown option"):
        _build("enas", population=3)
    shared = _build("spos")
    assert any(type(op).__name__ == "SharedBinaryGatedOp" for op in shared.supernet.mixed)
    assert all(type(op) is BinaryGatedOp for op in _build("spos", weights="separate").supernet.mixed)


@pytest.mark.parametrize("method,space,config", [
    ("spos", "nb201", {"C": 4, "N": 1, "num_classes": 4}),
    ("fairnas", "nb201", {"C": 4, "N": 1, "num_classes": 4}),
    ("oneshot", "nb201", {"C": 4, "N": 1, "num_classes": 4}),
    ("enas", "nb201", {"C": 4, "N": 1, "num_classes": 4}),
    ("spos", "darts", {"search_C": 4, "search_layers": 3, "num_classes": 4}),
    ("oneshot", "darts", {"search_C": 4, "search_layers": 3, "num_classes": 4}),
    ("enas", "darts", {"search_C": 4, "search_layers": 3, "num_classes": 4}),
    ("enas", "fbnet", {"width_mult": 0.25, "num_classes": 4}),
])
def test_each_method_steps_on_its_spaces(method, space, config):
    torch.manual_seed(0)
    s = _build(method, space=space, config=config, resolution=8)
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 4, (4,))
    opt = torch.optim.SGD(s.weight_parameters(), lr=0.01)
    out = s.weight_step((x, y), opt)
    assert out["seen"] >= 4 and out["loss"] > 0
    if s.arch_steps:
        assert "reward" in s.arch_step(x, y)
    tokens = s.sample_path()
    s.space.check_layers(s.config, tokens)
    s.set_eval_path(tokens)
    assert s.supernet(x).shape == (4, 4)
