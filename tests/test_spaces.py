import json

import pytest
import torch

from hwnas.blocks import MBConv
from hwnas.spaces import Arch, ArchError, get_space
from hwnas.spaces.definitions import CHAIN_SPACES as SPACES
from hwnas.spaces.builder import build_child, count_params
from hwnas.spaces.tokens import parse_token

MOBILENETV2 = {"space": "proxyless", "config": {"stages": [
    {"c": 24, "n": 2, "s": 2}, {"c": 32, "n": 3, "s": 2}, {"c": 64, "n": 4, "s": 2},
    {"c": 96, "n": 3, "s": 1}, {"c": 160, "n": 3, "s": 2}, {"c": 320, "n": 1, "s": 1}]}, "layers": ["k3e6"] * 16}


def test_tokens_parse_and_reject():
    assert parse_token("k5e6").kernel == 5 and parse_token("k5e6").expand == 6
    assert parse_token("k3e1_g2").groups == 2
    assert parse_token("skip").is_skip
    for bad in ["k4e6", "k5", "e6", "K5E6", "k5e6_g", "", "skip2"]:
        with pytest.raises(ValueError, match="token"):
            parse_token(bad)


def test_mobilenetv2_matches_torchvision_exactly():
    tv = pytest.importorskip("torchvision")
    ours = build_child(MOBILENETV2)
    assert count_params(ours) == count_params(tv.models.mobilenet_v2()) == 3_504_872


@pytest.mark.parametrize("name", sorted(SPACES))
def test_space_default_plan_shapes(name):
    space = get_space(name)
    plan = space.plan()
    assert plan.layers[-1].out_res == 7  # 224 / 32
    assert sum(s["n"] for s in plan.config["stages"]) == len(plan.layers)
    for part in plan.layers:
        assert ("skip" in part.choices) == (space.skip_where == "everywhere" or
                                             (space.skip_where == "inner" and part.position > 0))


@pytest.mark.parametrize("name", sorted(SPACES))
def test_every_candidate_builds_and_runs(name):
    """Each token of every layer builds a child that runs forward and backward at 32x32."""
    space = get_space(name)
    plan = space.plan()
    n_choices = max(len(p.choices) for p in plan.layers)
    for j in range(n_choices):
        layers = [p.choices[j % len(p.choices)] for p in plan.layers]
        model = build_child(Arch(name, {"num_classes": 10}, layers), resolution=32)
        out = model(torch.randn(2, 3, 32, 32))
        assert out.shape == (2, 10)
        out.sum().backward()
        assert all(p.grad is not None for p in model.parameters())


def test_small_resolution_adapts_strides_but_not_shapes():
    arch = Arch.from_dict(MOBILENETV2)
    big, small = build_child(arch), build_child(arch, resolution=32)
    assert [p.shape for p in big.parameters()] == [p.shape for p in small.parameters()]
    small.load_state_dict(big.state_dict())
    plan = arch.plan(32)
    assert plan.stem.stride == 1 and plan.layers[0].stride == 2 and plan.layers[-1].out_res == 2
    assert arch.plan(28).layers[-1].out_res >= 2 and arch.plan(64).layers[-1].out_res == 2
    assert arch.plan(64).stem.stride == 2 and arch.plan(224).layers[-1].out_res == 7


def test_arch_errors_name_layer_token_and_allowed():
    layers = ["k3e6"] * 21
    layers[0] = "skip"  # first of its stage: not allowed in proxyless
    with pytest.raises(ArchError, match=r"layer 0 \(stage 0, position 0\): token 'skip' .* allowed: k3e3, k3e6"):
        Arch("proxyless", {}, layers)
    layers[0] = "k9e6"
    with pytest.raises(ArchError, match=r"layer 0 .*'k9e6' is not a candidate here"):
        Arch("proxyless", {}, layers)
    with pytest.raises(ArchError, match="has 20 layers but"):
        Arch("proxyless", {}, ["k3e6"] * 20)
    with pytest.raises(ArchError, match="unknown space 'nope'"):
        Arch("nope", {}, [])
    with pytest.raises(ArchError, match="unknown config key"):
        Arch("proxyless", {"widht_mult": 1.0}, ["k3e6"] * 21)
    with pytest.raises(ArchError, match="stage 1"):
        Arch("proxyless", {"stages": [{"c": 24, "n": 1, "s": 2}, {"c": 40, "n": 0, "s": 2}]}, ["k3e6"])


def test_arch_json_roundtrip_and_bad_file(tmp_path):
    arch = Arch("fbnet", {"num_classes": 10}, ["skip"] * 22, {"provenance": {"method": "x"}})
    arch.save(tmp_path / "a.json")
    back = Arch.load(tmp_path / "a.json")
    assert back.layers == arch.layers and back.config == arch.config and back.meta == arch.meta
    assert not list(tmp_path.glob(".*tmp"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ArchError, match="not valid JSON"):
        Arch.load(tmp_path / "bad.json")
    (tmp_path / "tok.json").write_text(json.dumps({"space": "spnas", "layers": ["k7e6"] * 21}))
    with pytest.raises(ArchError, match=r"tok.json: layer 0 .*'k7e6'.*allowed: k3e3, k3e6, k5e3, k5e6"):
        Arch.load(tmp_path / "tok.json")


def test_fbnet_skip_on_stage_start_is_a_projection_and_e1_keeps_pw():
    space = get_space("fbnet")
    plan = space.plan()
    first_of_c24 = plan.layers[1]
    proj = space.make_module(first_of_c24, "skip", plan.config)
    assert proj(torch.randn(1, 16, 112, 112)).shape == (1, 24, 56, 56)
    assert space.signature(first_of_c24, "skip", plan.config) is not None
    assert space.signature(plan.layers[2], "skip", plan.config) is None  # identity: free
    block = space.make_module(plan.layers[2], "k3e1", plan.config)
    assert isinstance(block, MBConv) and len(block.body) == 3  # pw, dw, pwl
    grouped = space.make_module(plan.layers[2], "k3e1_g2", plan.config)
    assert grouped.body[0][0].groups == 2


def test_width_mult_rounds_to_eight_and_head_only_grows():
    space = get_space("proxyless")
    half = space.plan({"width_mult": 0.5})
    assert half.stem.cout == 16 and half.head.cout == 1280
    assert all(p.cout % 8 == 0 for p in half.layers)
    wide = space.plan({"width_mult": 1.4})
    assert wide.head.cout == 1792
