"""The DenseNAS strategy's optimizer settings (hwnas/strategies/densenas.py): the weight step clips the
weight gradients' norm to ``weight_grad_clip`` (the dense forward's route sums grew the first step's gradient
norm to 1172 on digits, and the search diverged without it), ``weight_grad_clip=0`` leaves them as they are,
the architecture optimizer is the released code's Adam (lr 3e-4, betas (0.5, 0.999), weight decay 1e-3),
and ``hwnas compare`` runs the method beside random search on the dense space."""
import pytest
import torch

from hwnas.spaces import get_space
from hwnas.strategies import get_strategy
from tests.test_registry import SMALL


def _weight_step(clip):
    sp = get_space("densenas")
    cfg = sp.resolve_config(SMALL["densenas"])
    torch.manual_seed(0)
    s = get_strategy("densenas").build(sp, cfg, 32, 4, weight_grad_clip=clip)
    opt = s.make_weight_optimizer(0.05, 0.9, 0.0)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 4, (8,))
    out = s.weight_step((x, y), opt)
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in s.weight_parameters() if p.grad is not None]))
    return s, out, float(norm)


def test_the_weight_step_clips_the_gradient_norm_to_the_option():
    _, out, unclipped = _weight_step(0)
    assert unclipped > 1e-2 and out["seen"] == 8
    _, _, clipped = _weight_step(1e-2)
    assert clipped == pytest.approx(1e-2, rel=1e-4)
    s, _, default = _weight_step(get_strategy("densenas").defaults["weight_grad_clip"])
    assert s.options["weight_grad_clip"] == 5.0 and default == pytest.approx(min(unclipped, 5.0), rel=1e-4)


def test_the_architecture_optimizer_is_the_released_adam():
    s, _, _ = _weight_step(0)
    group = s.arch_opt.param_groups[0]
    assert isinstance(s.arch_opt, torch.optim.Adam)
    assert (group["lr"], group["betas"], group["weight_decay"]) == (3e-4, (0.5, 0.999), 1e-3)


@pytest.mark.slow  # 54 s on the 2-core VM: a search, two trainings, two exports
def test_compare_runs_densenas_beside_random_search(tmp_path):
    """``hwnas compare --space densenas --methods densenas``: the searched network and a random one in the same
    window, each trained, exported and measured; the derived network keeps the [0.9 T, T] promise."""
    from hwnas.compare import CompareConfig, compare
    from tests.test_compare import table

    cfg = CompareConfig(methods=["densenas"], space="densenas", latency_target="50%", epochs=1, warmup_epochs=0,
                        batch_size=128, train_epochs=1, random_archs=1, config=SMALL["densenas"])
    rows = compare(cfg, tmp_path / "cmp", table)
    assert [r["entry"] for r in rows] == ["densenas", "random-0"]
    for r in rows:
        assert 0.9 * r["target_ms"] - 1e-9 <= r["predicted_ms"] <= r["target_ms"] + 1e-9
        assert r["measured_ms"] > 0 and 0 <= r["test_acc"] <= 1 and r["params"] > 0 and r["macs"] > 0
    assert rows[0]["step_ms"] > 0 and rows[0]["step_mib"] > 0
    assert "densenas" in (tmp_path / "cmp" / "report.md").read_text()
