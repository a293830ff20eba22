"""The published architectures (hwnas.spaces.presets) against their published parameter counts.

Three independent counts must agree: the released implementations' (``PUBLISHED``), a closed-form
count written here from the block definition of the Arch format, and the built child network.
"""
from __future__ import annotations

import re

import pytest
import torch

from hwnas.spaces.builder import build_child
from hwnas.spaces.presets import PRESETS, PUBLISHED, get_preset

NAMES = ["proxyless_gpu", "proxyless_cpu", "proxyless_mobile", "fbnet_a", "fbnet_b", "fbnet_c", "spnas",
         "mobilenetv2"]

# The candidate sets of the three spaces, as the papers define them (not read from hwnas.spaces, so
# that a preset and a space definition that drift apart fail here).
CANDIDATES = {
    "proxyless": {"k3e3", "k3e6", "k5e3", "k5e6", "k7e3", "k7e6"},
    "fbnet": {"k3e1", "k3e1_g2", "k3e3", "k3e6", "k5e1", "k5e1_g2", "k5e3", "k5e6"},
    "spnas": {"k3e3", "k3e6", "k5e3", "k5e6"},
}
SKIP_ON_STAGE_FIRST = {"proxyless": False, "fbnet": True, "spnas": False}


def _conv_bn(cin: int, cout: int, k: int = 1, groups: int = 1) -> int:
    return cin // groups * cout * k * k + 2 * cout  # conv weight (no bias) + BN gamma/beta


def formula_params(arch: dict) -> int:
    """Parameter count of an Arch straight from the block definition of the format."""
    cfg = arch["config"]
    assert cfg["width_mult"] == 1.0
    n = _conv_bn(3, cfg["stem"], 3)
    cin = cfg["stem"]

    def block(cin, cout, token):
        k, e, g = re.fullmatch(r"k(\d)e(\d)(?:_g(\d))?", token).groups()
        k, e, g = int(k), int(e), int(g or 1)
        mid = cin * e
        total = _conv_bn(mid, mid, k, groups=mid) + _conv_bn(mid, cout, 1, g)
        if e != 1 or cfg["pw_at_e1"]:
            total += _conv_bn(cin, mid, 1, g)
        return total

    if cfg["first"] is not None:
        n += block(cin, cfg["first"]["c"], cfg["first"]["token"])
        cin = cfg["first"]["c"]
    layers = iter(arch["layers"])
    for stage in cfg["stages"]:
        for j in range(stage["n"]):
            token, cout = next(layers), stage["c"]
            if token == "skip":
                if j == 0 and (cin != cout or stage["s"] != 1):
                    n += _conv_bn(cin, cout)  # FBNet's projection
                    cin = cout
                continue
            n += block(cin, cout, token)
            cin = cout
    n += _conv_bn(cin, cfg["head"]) + cfg["head"] * cfg["num_classes"] + cfg["num_classes"]
    return n


def assert_matches_published(name: str, count: int) -> None:
    pub = PUBLISHED[name]
    if pub["params_exact"]:
        assert count == pub["params"], f"{name}: {count} != published {pub['params']}"
    if "params_rounded_m" in pub:
        assert abs(count / 1e6 - pub["params_rounded_m"]) < pub["rounding_m"], (
            f"{name}: {count} is not within {pub['rounding_m']}M of the published {pub['params_rounded_m']}M")


def test_registry_and_published_cover_the_same_nets():
    assert list(PRESETS) == NAMES
    assert set(PUBLISHED) == set(NAMES)
    for name, pub in PUBLISHED.items():
        assert isinstance(pub["params"], int) and pub["params"] > 1_000_000, name
        assert pub["includes_classifier"] is True, name
        assert 70.0 < pub["top1"] < 80.0, name
        assert pub["source"], name
        assert pub["params_exact"] or {"params_rounded_m", "rounding_m"} <= set(pub), name


@pytest.mark.parametrize("name", NAMES)
def test_layers_fit_config_and_space(name):
    arch = PRESETS[name]
    cfg = arch["config"]
    space = arch["space"]
    assert (cfg["resolution"], cfg["num_classes"], cfg["width_mult"]) == (224, 1000, 1.0)
    assert cfg["pw_at_e1"] is (space == "fbnet")
    assert len(arch["layers"]) == sum(s["n"] for s in cfg["stages"])
    i = 0
    for stage in cfg["stages"]:
        for j in range(stage["n"]):
            token = arch["layers"][i]
            if token == "skip":
                assert j > 0 or SKIP_ON_STAGE_FIRST[space], f"{name} layer {i}: skip on a stage's first layer"
            else:
                assert token in CANDIDATES[space], f"{name} layer {i}: {token!r} not a {space} candidate"
            i += 1
    if cfg["first"] is not None:
        assert cfg["first"]["token"] == "k3e1"


def test_searched_nets_keep_their_spaces_depths():
    """A net found in a space is an Arch of that space: its stage depths are the space's."""
    depths = {"proxyless": [4, 4, 4, 4, 4, 1], "fbnet": [1, 4, 4, 4, 4, 4, 1], "spnas": [4, 4, 4, 4, 4, 1]}
    for name in NAMES:
        if name == "mobilenetv2":
            continue
        arch = PRESETS[name]
        assert [s["n"] for s in arch["config"]["stages"]] == depths[arch["space"]], name
    assert [s["c"] for s in PRESETS["fbnet_c"]["config"]["stages"]] == [16, 24, 32, 64, 112, 184, 352]
    assert [s["s"] for s in PRESETS["spnas"]["config"]["stages"]] == [2, 2, 2, 1, 2, 1]


@pytest.mark.parametrize("name", NAMES)
def test_formula_count_matches_published(name):
    assert_matches_published(name, formula_params(PRESETS[name]))


# A hand-counted tiny FBNet-space Arch: a projecting skip and a group-2 e1 block. (Widths are
# multiples of 8: the builder rounds every width to a multiple of 8, as MobileNet code does.)
TINY = {"space": "fbnet",
        "config": {"stem": 8, "first": None, "stages": [{"c": 16, "n": 2, "s": 2}], "head": 16,
                   "width_mult": 1.0, "resolution": 224, "num_classes": 10, "act": "relu", "pw_at_e1": True},
        "layers": ["skip", "k3e1_g2"]}
TINY_PARAMS = (
    (3 * 8 * 9 + 2 * 8)                                           # stem 3x3 conv 3->8 + BN
    + (8 * 16 + 2 * 16)                                           # skip = 1x1 projection 8->16, stride 2
    + (8 * 16 + 2 * 16) + (16 * 9 + 2 * 16) + (8 * 16 + 2 * 16)   # k3e1_g2: grouped pw, dw 3x3, grouped pwl
    + (16 * 16 + 2 * 16)                                          # head 1x1 16->16
    + (16 * 10 + 10)                                              # classifier
)


def test_formula_known_answer():
    assert TINY_PARAMS == 1346
    assert formula_params(TINY) == TINY_PARAMS
    # FBNet-A's c16 skip (16 -> 16, stride 1) is an identity: dropping that stage changes nothing.
    a = get_preset("fbnet_a")
    b = get_preset("fbnet_a")
    del b["config"]["stages"][0], b["layers"][0]
    assert formula_params(a) == formula_params(b)


@pytest.mark.parametrize("name", NAMES)
def test_built_model_matches_published_and_formula(name):
    model = build_child(PRESETS[name])
    count = sum(p.numel() for p in model.parameters())
    assert count == formula_params(PRESETS[name])
    assert_matches_published(name, count)


@pytest.fixture
def one_thread():
    """Batch-1 forwards gain nothing from intra-op threads, and on a busy machine OpenMP threads
    spin for seconds; run them on one thread and restore the setting."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_built_fbnet_a_runs_at_224(one_thread):
    model = build_child(PRESETS["fbnet_a"]).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()


def test_builder_known_answer():
    assert sum(p.numel() for p in build_child(TINY).parameters()) == TINY_PARAMS


def test_mobilenetv2_is_torchvisions_network(one_thread):
    """Same parameter shapes in the same order, and with torchvision's weights the same outputs."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    ref = torchvision.models.mobilenet_v2().eval()
    ours = build_child(PRESETS["mobilenetv2"]).eval()
    assert [tuple(p.shape) for p in ours.parameters()] == [tuple(p.shape) for p in ref.parameters()]
    our_keys = list(ours.state_dict())
    assert len(our_keys) == len(ref.state_dict())
    for m in ref.modules():  # non-trivial BN statistics, so a misplaced BN cannot go unnoticed
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1), m.running_var.uniform_(0.5, 1.5)
    ours.load_state_dict(dict(zip(our_keys, ref.state_dict().values())))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-4)


def test_get_preset_is_a_copy():
    a = get_preset("fbnet_c")
    a["layers"][0] = "skip"
    a["config"]["stages"][0]["c"] = 8
    assert PRESETS["fbnet_c"]["layers"][0] == "k3e1"
    assert PRESETS["fbnet_c"]["config"]["stages"][0]["c"] == 16
    with pytest.raises(KeyError, match="available: proxyless_gpu"):
        get_preset("fbnet_d")
