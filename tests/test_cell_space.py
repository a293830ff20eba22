"""The DARTS cell space: genotypes as Archs, the evaluation network, presets and their parameter counts."""
import json

import pytest
import torch

from hwnas.spaces import Arch, ArchError, get_space
from hwnas.spaces.builder import build_child, count_params
from hwnas.spaces.cell import EDGES, CellSpace, network_positions
from hwnas.spaces.cell_ops import OPS, FactorizedReduce, make_op
from hwnas.spaces.cell_presets import CELL_PRESETS, CELL_PUBLISHED

SPACE = get_space("darts")


def _genotype(normal, reduce):
    return {"normal": [list(p) for p in normal], "reduce": [list(p) for p in reduce]}


SMALL = {"C": 8, "layers": 5}


def test_edges_and_decisions():
    assert len(EDGES) == 14 and EDGES[:5] == [(2, 0), (2, 1), (3, 0), (3, 1), (3, 2)]
    d = CellSpace.decisions()
    assert len(d) == 28 and d[14].cell_type == "reduce" and all(e.choices == OPS for e in d)
    assert [len(g) for g in CellSpace.node_groups()] == [2, 3, 4, 5] * 2


def test_network_positions_match_darts_code():
    pos, c_final, r_final = network_positions(36, 20, 3, 32)
    assert [p.index for p in pos if p.reduction] == [6, 13]
    assert pos[0].c_pp == pos[0].c_p == 108 and pos[0].c == 36
    assert pos[6].c == 72 and pos[7].reduction_prev and pos[7].c_pp == 144 and pos[7].r_pp == 32
    assert (c_final, r_final) == (4 * 144, 8)


@pytest.mark.parametrize("name", list(CELL_PRESETS))
def test_presets_build_and_match_published_params(name):
    arch = Arch.from_dict(CELL_PRESETS[name], name)
    model = build_child(arch)
    n = count_params(model)
    assert count_params(model, auxiliary=True) > n  # the auxiliary head exists and is left out
    pub = CELL_PUBLISHED[name]
    if pub.get("built_differs"):
        assert round(n / 1e6, 1) == 3.2  # released DARTS_V1 genotype (see the preset's note)
    else:
        assert round(n / 1e6, 1) == pub["params_m"], (name, n)


def test_darts_v2_exact_count_and_genotype_roundtrip():
    arch = Arch.from_dict(CELL_PRESETS["darts_v2"])
    assert count_params(build_child(arch)) == 3_349_342  # DARTS code: "param size = 3.349342MB"
    again = Arch.from_dict(json.loads(json.dumps(arch.to_dict())))
    assert again.layers == arch.layers
    g = SPACE.genotype(arch.layers)
    assert sorted(map(tuple, g["normal"][:2])) == [("sep_conv_3x3", 0), ("sep_conv_3x3", 1)]
    assert SPACE.layers_from_genotype(g) == arch.layers
    assert str(arch).startswith("darts:Genotype(normal=[('sep_conv_3x3', 0)")


def test_forward_shapes_aux_and_drop_path():
    arch = Arch.from_dict({**CELL_PRESETS["pdarts"], "config": {**SMALL, "auxiliary": True, "drop_path": 0.2}})
    model = build_child(arch)
    x = torch.randn(3, 3, 32, 32)
    model.train()
    assert model(x).shape == (3, 10) and model.aux_logits.shape == (3, 10)
    model.eval()
    y1, y2 = model(x), model(x)
    assert model.aux_logits is None and torch.equal(y1, y2)  # no drop-path, no aux in eval


def test_factorized_reduce_odd_sizes_and_ops_shapes():
    fr = FactorizedReduce(6, 8)
    assert fr(torch.randn(1, 6, 7, 7)).shape == (1, 8, 4, 4)
    for op in OPS:
        for stride in (1, 2):
            out = make_op(op, 8, stride)(torch.randn(2, 8, 8, 8))
            assert out.shape == (2, 8, 8 // stride, 8 // stride), (op, stride)
    assert float(make_op("none", 8, 1)(torch.randn(1, 8, 4, 4)).abs().sum()) == 0.0


@pytest.mark.parametrize("bad, message", [
    ({"normal": [["conv_9x9", 0]] + [["sep_conv_3x3", 1]] * 7, "reduce": []}, "unknown op 'conv_9x9'"),
    (_genotype([("sep_conv_3x3", 0), ("sep_conv_3x3", 7)] + [("skip_connect", 0), ("skip_connect", 1)] * 3,
               [("max_pool_3x3", 0), ("max_pool_3x3", 1)] * 4), "input 7 does not exist"),
    (_genotype([("sep_conv_3x3", 0), ("sep_conv_3x3", 0)] + [("skip_connect", 0), ("skip_connect", 1)] * 3,
               [("max_pool_3x3", 0), ("max_pool_3x3", 1)] * 4), "two ops from input 0"),
    ({"normal": [["sep_conv_3x3", 0]]}, "must list 8"),
])
def test_bad_genotypes_are_one_line_errors(bad, message):
    with pytest.raises(ArchError, match=message) as e:
        Arch.from_dict({"space": "darts", "genotype": bad}, "g.json")
    assert "\n" not in str(e.value) and str(e.value).startswith("g.json")


def test_bad_layers():
    layers = Arch.from_dict(CELL_PRESETS["darts_v2"]).layers
    with pytest.raises(ArchError, match="unknown op 'conv'"):
        Arch("darts", {}, ["conv"] + layers[1:])
    three = list(layers)
    three[2] = "sep_conv_3x3"  # node 3 <- 0 was kept already? make node 2 have three inputs
    node3 = [i for i, (n, s) in enumerate(EDGES) if n == 3]
    three = list(layers)
    for i in node3:
        three[i] = "sep_conv_3x3"
    with pytest.raises(ArchError, match="normal cell, node 3: 3 incoming edges"):
        Arch("darts", {}, three)
    with pytest.raises(ArchError, match="28 edge tokens"):
        Arch("darts", {}, layers[:5])
    with pytest.raises(ArchError, match="unknown config key"):
        Arch("darts", {"stages": []}, layers)


def test_deploy_signatures_sum_over_cells():
    cfg = SPACE.resolve_config({})
    plan = SPACE.plan(cfg)
    edge = plan.layers[0]  # normal cell, 0 -> 2
    sigs = SPACE.signatures(edge, "sep_conv_3x3", cfg)
    assert len(sigs) == 18  # every normal cell
    assert sorted(set(sigs)) == ["sep_conv_3x3:c144:s1:r8", "sep_conv_3x3:c36:s1:r32", "sep_conv_3x3:c72:s1:r16"]
    assert SPACE.signatures(edge, "skip_connect", cfg) == [] and SPACE.signatures(edge, "none", cfg) == []
    red = plan.layers[14]  # reduce cell, 0 -> 2: stride 2
    assert SPACE.signatures(red, "skip_connect", cfg) == ["skip_connect:c72:s2:r32", "skip_connect:c144:s2:r16"]
    blocks = SPACE.profiled_blocks(cfg)
    assert len({b[0] for b in blocks}) == len(blocks)
    for sig, build, shape in blocks[:6] + blocks[-4:]:
        build()(torch.randn(1, *shape))
