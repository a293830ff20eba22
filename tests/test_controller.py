"""The NAS-RL controller (Zoph & Le 2017): MnasNet's reward values, the REINFORCE gradient against its closed
form, a two-choice toy it must solve, and that its reward rises on a structured task."""
import math

import numpy as np
import pytest
import torch

from hwnas.selection import get_selector
from hwnas.selection.controller import ControllerSelector, mnas_reward
from hwnas.spaces.base import Decision
from tests.helpers import assert_selector_resumes_by_replay
from tests.test_evolution import Structured, _setup


class Toy:
    """A space of one decision with two choices."""

    name = "toy"

    def decisions(self, config=None):
        return (Decision("d0", ("a", "b")),)


def test_mnas_reward_values():
    # MnasNet eq. 2: ACC * (LAT/T)^w; soft alpha = beta = -0.07, hard alpha = 0, beta = -1
    assert mnas_reward(0.8, 10, 10) == pytest.approx(0.8)
    assert mnas_reward(0.8, 20, 10) == pytest.approx(0.8 * 2 ** -0.07) == pytest.approx(0.762110, abs=1e-6)
    assert mnas_reward(0.8, 5, 10) == pytest.approx(0.8 * 0.5 ** -0.07) == pytest.approx(0.839773, abs=1e-6)
    assert mnas_reward(0.8, 5, 10, "hard") == pytest.approx(0.8)
    assert mnas_reward(0.8, 20, 10, "hard") == pytest.approx(0.4)
    with pytest.raises(ValueError, match="rl reward must be one of soft, hard"):
        ControllerSelector(Toy(), {}, reward="linear")


def test_the_reinforce_gradient_is_the_closed_form():
    """For one decision, d/dz [-(R - b) log p_c] = -(R - b) (e_c - p) at the head's logits z."""
    sel = ControllerSelector(Toy(), {}, seed=0, entropy_weight=0.0)
    sel.baseline = 0.25
    ctl = sel.controller
    head = ctl.heads[0]
    captured = {}
    handle = head.register_forward_hook(lambda m, i, o: captured.setdefault("z", o))
    _, logp, _ = ctl([1])
    handle.remove()
    z = captured["z"]
    z.retain_grad()
    reward = 1.0
    loss = -(reward - 0.25) * logp
    loss.backward()
    p = torch.softmax(z.detach(), -1)
    expected = -(reward - 0.25) * (torch.tensor([0.0, 1.0], dtype=p.dtype) - p)
    assert torch.allclose(z.grad, expected, atol=1e-12)
    # and update() takes that step with the moving-average baseline: b <- 0.95 b + 0.05 R
    sel.update(["b"], reward)
    assert sel.baseline == pytest.approx(0.95 * 0.25 + 0.05 * reward) and sel.rewards == [reward]


def test_the_controller_solves_a_two_choice_toy():
    sel = ControllerSelector(Toy(), {}, seed=1, lr=0.05)
    for _ in range(150):
        layers = sel.sample()
        sel.update(layers, 1.0 if layers == ["b"] else 0.0)
    with torch.no_grad():
        _, logp, _ = sel.controller([1])
    assert math.exp(float(logp)) > 0.95


def test_the_controller_learns_its_reward_rises_over_the_trials():
    space, cfg, model, window = _setup()
    task = Structured(space, cfg, seed=7)
    sel = ControllerSelector(space, cfg, seed=0, latency=model, window=window, lr=0.01)
    for _ in range(150):
        layers = sel.ask()
        sel.tell(layers, task.evaluate(layers, 0))
    first, last = np.mean(sel.rewards[:30]), np.mean(sel.rewards[-30:])
    assert last > first + 1.0, (first, last)
    assert get_selector("rl") is ControllerSelector
    assert sel.settings()["reward"] == "soft" and sel.settings()["window"] == list(window)


def test_the_controller_resumes_by_replay(tmp_path):
    space, cfg, model, window = _setup()
    assert_selector_resumes_by_replay(lambda: ControllerSelector(space, cfg, seed=3, latency=model, window=window),
                                      lambda: Structured(space, cfg), tmp_path, 12, 5, latency=model)
