"""SMASH (hwnas.mixed.hyper, hwnas.strategies.smash): the 1x1 weights generated from the architecture's
encoding, the derived child equal to its path in the supernet (float64), gradients reaching the
hypernetwork (checked against finite differences), and bad inputs refused in one line."""
import random

import pytest
import torch

from hwnas.mixed.hyper import HyperGatedOp, HyperNet
from hwnas.spaces import Arch, get_space
from hwnas.spaces.builder import build_child
from hwnas.strategies import get_strategy

CFG = {"width_mult": 0.25, "num_classes": 4}


def smash(space="proxyless", **options):
    sp = get_space(space)
    cfg = sp.resolve_config(CFG)
    torch.manual_seed(0)
    return get_strategy("smash").build(sp, cfg, 32, 4, **options).double(), sp, cfg


def test_the_derived_child_is_its_path_in_the_supernet_with_the_generated_weights():
    s, sp, cfg = smash()
    opt = torch.optim.SGD(s.weight_parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):  # trained a little: BN statistics and generated weights away from their start
        x, y = torch.randn(8, 3, 32, 32, generator=g, dtype=torch.float64), torch.randint(0, 4, (8,), generator=g)
        s.weight_step((x, y), opt)
    x = torch.randn(4, 3, 32, 32, generator=g, dtype=torch.float64)
    rng = random.Random(3)
    for _ in range(3):
        tokens = sp.sample(rng, cfg)
        child = build_child(Arch("proxyless", cfg, tokens), 32).double()
        child.load_state_dict(s.supernet.child_state_dict(tokens))  # strict: every key, none left over
        s.set_eval_path(tokens)
        s.supernet.eval(), child.eval()
        torch.testing.assert_close(s.supernet(x), child(x), rtol=1e-10, atol=1e-10)


def test_the_weights_depend_on_the_layer_and_the_one_before_it():
    s, sp, cfg = smash()
    net = s.supernet
    tokens = ["k3e6"] * len(net.mixed)
    i = next(j for j, op in enumerate(net.mixed) if "k3e3" in op.tokens and j > 0)
    mid3 = net.mixed[i]._cuts[net.mixed[i].tokens.index("k3e3")][2]
    other = tokens[:i] + ["k3e3"] + tokens[i + 1:]
    assert torch.equal(net.hyper(tokens)[i][0][:mid3], net.hyper(other)[i][0][:mid3])  # at the start: shared
    with torch.no_grad():
        net.hyper.condition.weight.normal_()  # as after training: the encoding matters
    w6 = net.hyper(tokens)[i][0]
    w3 = net.hyper(other)[i][0]
    assert w6.shape == w3.shape and not torch.allclose(w6[:mid3], w3[:mid3])  # not a slice of the e6 weights
    before = net.hyper(tokens[:i - 1] + ["k5e3"] + tokens[i:])[i][0]
    assert not torch.allclose(before, w6)  # the candidate before it changes what the layer gets
    assert torch.equal(net.hyper(tokens)[i][0], w6)  # and the same architecture, the same weights


def test_each_layer_generates_exactly_its_1x1_shapes_and_owns_no_1x1_weights():
    s, _, _ = smash(block=5)  # chunks that do not divide the channels: the last row and column cropped
    net = s.supernet
    weights = net.hyper(net.current_tokens())
    for i, op in enumerate(net.mixed):
        assert isinstance(op, HyperGatedOp)
        assert [tuple(w.shape) for w in weights[i]] == [op.shapes[0], op.shapes[1]]
        names = [n for n, _ in op.block.named_parameters()]
        assert "body.0.0.weight" not in names and "body.2.0.weight" not in names and "body.1.0.weight" in names


def test_a_weight_step_trains_the_hypernetwork():
    s, _, _ = smash()
    opt = torch.optim.SGD(s.weight_parameters(), lr=0.05)
    before = {n: p.detach().clone() for n, p in s.supernet.hyper.named_parameters()}
    s.weight_step((torch.randn(8, 3, 32, 32, dtype=torch.float64), torch.randint(0, 4, (8,))), opt)
    moved = [n for n, p in s.supernet.hyper.named_parameters() if not torch.equal(p, before[n])]
    assert {"z", "condition.weight"} <= set(moved) and any(n.startswith("mlp.") for n in moved)


def test_the_hypernetwork_gradient_matches_finite_differences():
    """d<probe, H(z, c)>/dz and d/d(the encoding's weights), float64 gradcheck (central differences)."""
    torch.manual_seed(0)
    h = HyperNet([((6, 4), (5, 6)), None, ((3, 5), (5, 3))], [("k3e3", "skip"), ("k3e3",), ("k3e3", "k5e6")],
                 block=4, z_dim=3, hidden=5).double()
    tokens = ["k3e3", "k3e3", "k5e6"]
    probe = {i: [torch.randn_like(w) for w in ws] for i, ws in h(tokens).items()}
    first = "condition.weight"
    with torch.no_grad():
        h.condition.weight.normal_()

    def score(z, v):
        ws = torch.func.functional_call(h, {"z": z, first: v}, (tokens,))
        return sum((w * p).sum() for i, layer in ws.items() for w, p in zip(layer, probe[i]))

    z = h.z.detach().clone().requires_grad_()
    v = h.get_parameter(first).detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(score, (z, v))


def test_bad_inputs_are_refused_in_one_line():
    with pytest.raises(ValueError, match=r"method 'smash' does not apply to space 'fbnet' \(it runs on proxyless, spnas\)"):
        smash("fbnet")
    s, _, _ = smash()
    with pytest.raises(ValueError, match=r"smash: unknown candidate 'k9e9' at layer 0"):
        s.supernet.hyper(["k9e9"] + s.supernet.current_tokens()[1:])
    with pytest.raises(ValueError, match=r"method 'smash': unknown option\(s\) \['weights'\]"):
        smash(weights="shared")
    with pytest.raises(ValueError, match="smash: block, z_dim and hidden must be positive"):
        smash(block=0)


@pytest.mark.parametrize("rank", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_smash_searches_to_a_path_in_the_window_then_exports_and_ranks(quick_tables, capsys, rank):
    """As a user runs it: a search with a target (the best of the sampled paths by generated-weight accuracy,
    every one in [0.9 T, T]), the derived child with its generated weights exported and checked, and (slow)
    ``hwnas rank`` on the run (generated-weight accuracy beside trained accuracy)."""
    import json

    import hwnas
    from hwnas.cli import main
    from hwnas.selection import read_trials

    r = hwnas.search("smash", latency_target="50%", epochs=1, batch_size=128, config={"width_mult": 0.25},
                     options={"samples": 5}, profile_missing=False)
    s = r.summary
    lo, hi = 0.9 * s["target_ms"], s["target_ms"]
    assert lo - 1e-9 <= s["predicted_latency_ms"] <= hi + 1e-9
    trials = read_trials(r.run_dir / "selection" / "trials.jsonl")
    assert len(trials) == 5 and all(lo - 1e-9 <= t["predicted_ms"] <= hi + 1e-9 for t in trials)
    assert s["arch"] == max(trials, key=lambda t: (t["result"]["accuracy"], -t["trial"]))["arch"]
    assert (r.run_dir / "child.pt").exists()
    assert main(["export", "--arch", str(r.run_dir), "--onnx", "--iterations", "3"]) == 0
    assert "onnx.checker ok" in capsys.readouterr().out
    assert json.loads((r.run_dir / "export.json").read_text())["rel_diff"] <= 1e-4
    if rank:
        assert main(["rank", str(r.run_dir), "--archs", "3", "--trial-epochs", "1"]) == 0
        assert "Kendall tau" in capsys.readouterr().out
        assert json.loads((r.run_dir / "rank-trained" / "rank.json").read_text())["archs"] == 3


@pytest.mark.slow
def test_compare_runs_smash_beside_random_search(tmp_path):
    from hwnas.compare import CompareConfig, compare
    from tests.test_compare import TINY, table

    cfg = CompareConfig(methods=["smash"], **{**TINY, "warmup_epochs": 0, "random_archs": 1})
    rows = compare(cfg, tmp_path / "cmp", table)
    assert [r["entry"] for r in rows] == ["smash", "random-0"]
    assert rows[0]["step_ms"] > 0 and rows[0]["measured_ms"] > 0 and 0 <= rows[0]["test_acc"] <= 1
    assert 0.9 * rows[0]["target_ms"] - 1e-9 <= rows[0]["predicted_ms"] <= rows[0]["target_ms"] + 1e-9
    assert "smash" in (tmp_path / "cmp" / "report.md").read_text()
