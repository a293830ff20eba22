"""DenseNAS presets and the released ``net_config`` format (hwnas.spaces.dense_presets).

DenseNAS-C is checked three ways: a closed-form count written here from the released MBConv definition
(``JaminFong/DenseNAS models/operations.py``), the built child, and the figures the released code printed
for the released weights (6.13M parameters, 360.81M multiply-adds).
"""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from hwnas.exporting import resolve_arch
from hwnas.spaces import Arch
from hwnas.spaces.builder import build_child, count_params
from hwnas.spaces.chain import ArchError
from hwnas.spaces.dense_presets import (DENSE_PRESETS, DENSE_PUBLISHED, DENSENAS_C_NET_CONFIG,
                                        arch_from_net_config, parse_net_config)


def _bn(c):
    return 2 * c


def _mbconv(cin, cout, k, t):
    mid = cin * t
    expand = cin * mid + _bn(mid) if t > 1 else 0
    return expand + mid * k * k + _bn(mid) + mid * cout + _bn(cout)


def formula_params(net_config: str, stem: int = 16, classes: int = 1000) -> int:
    """Parameters straight from the net_config lines: stem 3x3 conv, every line's head and stacked MBConvs,
    the 1x1 conv and the classifier (every conv bias-free and followed by a BN)."""
    n = 3 * stem * 9 + _bn(stem)
    *blocks, last = parse_net_config(net_config)
    for (cin, cout), head, stacked, _, _ in blocks:
        k, t = int(head.split("_")[1][1:]), int(head.split("_")[2][1:])
        n += _mbconv(cin, cout, k, t)
        for op in stacked:
            n += _mbconv(cout, cout, int(op.split("_")[1][1:]), int(op.split("_")[2][1:]))
    cin, head = last[0]
    return n + cin * head + _bn(head) + head * classes + classes


def test_formula_known_answer():
    # one MBConv k3 t6 16 -> 24: 1x1 16->96, dw 3x3 96, 1x1 96->24, three BNs
    assert _mbconv(16, 24, 3, 6) == 16 * 96 + 192 + 96 * 9 + 192 + 96 * 24 + 48 == 5136
    # t1 has no expansion conv
    assert _mbconv(16, 16, 3, 1) == 16 * 9 + 32 + 16 * 16 + 32


def test_densenas_c_matches_the_released_figures():
    pub = DENSE_PUBLISHED["densenas_c"]
    arch = Arch.from_dict(DENSE_PRESETS["densenas_c"], "densenas_c")
    model = build_child(arch).eval()
    built = count_params(model)
    assert built == formula_params(DENSENAS_C_NET_CONFIG) == 6_134_144
    assert abs(built / 1e6 - pub["params_m"]) < pub["rounding_m"]
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        out = model(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 1000)
    assert abs(fc.get_total_flops() / 2 / 1e6 - pub["madds_m"]) < pub["rounding_m"]


def test_densenas_c_path_and_blocks():
    arch = Arch.from_dict(DENSE_PRESETS["densenas_c"])
    space = arch.space_obj
    assert [space.nodes()[n].width for n in space.path_nodes(arch.config, arch.layers)] == \
        [16, 24, 48, 72, 128, 160, 176, 384, 1984]
    chain_cfg, tokens = space.to_chain(arch.layers, arch.config)
    assert [(s["c"], s["s"]) for s in chain_cfg["stages"]] == \
        [(24, 2), (48, 2), (72, 2), (128, 1), (160, 2), (176, 1), (384, 1)]
    # head op first, then the released stacked ops, padded with skip to the block's 3 layers
    assert tokens[4:8] == ["k7e6", "k3e3", "skip", "skip"]
    assert tokens[-1] == "k7e6"


def test_net_config_file_and_preset_resolve(tmp_path):
    f = tmp_path / "net_config"
    f.write_text(DENSENAS_C_NET_CONFIG)
    from_file = resolve_arch(str(f)).arch
    assert from_file.layers == resolve_arch("densenas_c").arch.layers == DENSE_PRESETS["densenas_c"]["layers"]


def _replace(line: int, new: str) -> str:
    lines = DENSENAS_C_NET_CONFIG.split("|")
    lines[line - 1] = "\n" + new
    return "|".join(lines)


@pytest.mark.parametrize("line,new,message", [
    (3, "[[24, 50], 'mbconv_k7_t6', ['mbconv_k3_t3'], 1, 2]", "line 3: no link from block 1"),
    (3, "[[24, 48], 'mbconv_k7_t6', ['mbconv_k3_t3'], 1, 1]", "line 3: stride 1"),
    (3, "[[24, 48], 'sep_conv_3x3', ['mbconv_k3_t3'], 1, 2]", "op 'sep_conv_3x3'"),
    (3, "[[24, 48], 'mbconv_k7_t6', ['mbconv_k3_t3'] * 4, 4, 2]", "line 3: .*is not a"),
    (3, "[[24, 48], 'mbconv_k7_t6', ['mbconv_k3_t3', 'mbconv_k3_t3', 'mbconv_k3_t3', 'mbconv_k3_t3'], 4, 2]",
     "4 stacked ops"),
    (4, "[[40, 72], 'mbconv_k5_t6', [], 0, 2]", "input width 40"),
    (1, "[[32, 16], 'mbconv_k3_t1', [], 0, 1]", "line 1"),
    (9, "[[384, 1280], 'conv1_1']", "last line"),
])
def test_bad_net_config_names_the_line(line, new, message):
    with pytest.raises(ArchError, match=message.replace("[", r"\[")) as e:
        arch_from_net_config(_replace(line, new))
    assert "\n" not in str(e.value)


def test_net_config_path_must_reach_the_head_conv():
    # ending at 176 (a stage-5 block): no link from there to the 1x1 conv, which follows the last stage
    text = "|".join(DENSENAS_C_NET_CONFIG.split("|")[:7]) + "|\n[[176, 1984], 'conv1_1']"
    with pytest.raises(ArchError, match="no link to the head conv"):
        arch_from_net_config(text)
