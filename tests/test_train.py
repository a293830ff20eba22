"""`hwnas train`'s recipe: per-space defaults, overrides, gradient clipping and the drop-path ramp."""

import json

import pytest
import torch

from hwnas.data import load_data
from hwnas.spaces import Arch, get_space
from hwnas.spaces.cell_presets import CELL_PRESETS
from hwnas.training import train_child, train_settings

# A DARTS evaluation network small enough to train in seconds on digits (8x8 upsampled to 32x32).
TINY_CELL = {"C": 4, "layers": 3, "num_classes": 10}


def _cell_arch(**config) -> Arch:
    layers = Arch.from_dict(CELL_PRESETS["darts_v2"]).layers
    return Arch("darts", {**TINY_CELL, **config}, list(layers))


def _chain_arch() -> Arch:
    return Arch("proxyless", {"width_mult": 0.25, "num_classes": 10}, ["k3e3"] * 21)


def test_defaults_follow_the_space():
    assert train_settings(_cell_arch()) == get_space("darts").train_defaults
    assert train_settings(_cell_arch())["grad_clip"] == 5.0 and train_settings(_cell_arch())["lr"] == 0.025
    assert train_settings(_chain_arch()) == get_space("proxyless").train_defaults
    assert train_settings(_chain_arch())["grad_clip"] is None
    assert train_settings(_cell_arch(), grad_clip=0)["grad_clip"] is None  # 0 turns it off
    assert train_settings(_chain_arch(), lr=0.1, grad_clip=2)["lr"] == 0.1
    assert train_settings(_chain_arch(), lr=0.1, grad_clip=2)["grad_clip"] == 2.0
    from hwnas.spaces.dense_presets import DENSE_PRESETS

    dense = Arch.from_dict(DENSE_PRESETS["densenas_c"])  # a DenseNAS child: the chain recipe clipped at 5 (dense.py says why)
    assert train_settings(dense) == {**get_space("proxyless").train_defaults, "grad_clip": 5.0}
    assert train_settings(dense, grad_clip=0)["grad_clip"] is None


@pytest.mark.parametrize("kwargs, message", [
    ({"lr": 0.0}, "lr=0.0"), ({"lr": -1.0}, "lr=-1.0"), ({"grad_clip": -1.0}, "grad_clip=-1.0"),
    ({"weight_decay": float("nan")}, "weight_decay=nan"),
])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        train_settings(_chain_arch(), **kwargs)


def _params(path) -> dict:
    state = torch.load(path)
    return {k: v for k, v in state.items() if "running" not in k and "num_batches" not in k}


def test_gradient_clip_bounds_every_update(tmp_path):
    """With the norm clipped to 1e-6 and no weight decay, SGD with momentum 0.9 moves the parameters by at
    most lr * clip * sum_{t<=N} (1 + .9 + ... ) <= lr * clip * 10 * N over N steps; without the clip the
    same run moves them by orders of magnitude more. So the clip is applied, to the whole gradient."""
    torch.manual_seed(0)
    arch = _cell_arch()
    init = tmp_path / "init"
    r0 = train_child(arch, init, epochs=1, batch_size=256, lr=1e-12, weight_decay=0, grad_clip=0)
    start = _params(init / "trained.pt")  # lr 1e-12: the initial weights (same seed) up to 1e-12 steps
    clipped = train_child(arch, tmp_path / "clip", epochs=1, batch_size=256, lr=0.025, weight_decay=0,
                          grad_clip=1e-6)
    free = train_child(arch, tmp_path / "free", epochs=1, batch_size=256, lr=0.025, weight_decay=0, grad_clip=0)
    steps = -(-len(load_data("digits", seed=0).train) // 256)
    moved = lambda d: sum(float((_params(tmp_path / d / "trained.pt")[k] - v).norm() ** 2)  # noqa: E731
                          for k, v in start.items()) ** 0.5
    bound = 0.025 * 1e-6 * 10 * steps
    assert moved("clip") <= bound, (moved("clip"), bound)
    assert moved("free") > 1000 * bound
    assert clipped["grad_clip"] == 1e-6 and free["grad_clip"] is None and r0["lr"] == 1e-12
    assert json.loads((tmp_path / "clip" / "train.json").read_text())["grad_clip"] == 1e-6


def test_drop_path_ramps_to_the_configured_probability(tmp_path, monkeypatch):
    """DARTS sets drop_path_prob = drop_path * epoch / epochs at the start of each epoch."""
    seen = []
    import hwnas.spaces.cell_network as cell  # EvalCell lives there since the cell module split

    real = cell.drop_path

    def spy(h, p):
        seen.append(round(p, 6))
        return real(h, p)

    monkeypatch.setattr(cell, "drop_path", spy)
    train_child(_cell_arch(drop_path=0.3), tmp_path, epochs=3, batch_size=512)
    assert sorted(set(seen)) == [0.1, 0.2]  # epoch 0 runs at 0 (drop_path skipped), then 0.1, 0.2
