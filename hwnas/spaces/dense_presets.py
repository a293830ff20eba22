"""Published DenseNAS networks as ``densenas``-space Arch data, and the released ``net_config`` format.

The DenseNAS code (``JaminFong/DenseNAS``, Fang et al. CVPR 2020) describes a derived network as a
``net_config``: one line per block, ``|``-separated, ``[[c_in, c_out], head op, [stacked ops], n, stride]``,
the first line the fixed first block and the last ``[[c, head], 'conv1_1']``. ``arch_from_net_config``
turns one into the Arch of the path it takes through the dense super network (a stacked layer the
network does not have is ``skip``; a block's stacked layers run in their order, so where the skips go
does not change the network).

Which networks can be presets: only DenseNAS-C's ``net_config`` is public in text. It is the default of
the repository's ``configs/imagenet_train_cfg.py`` and is printed in ``output/log.txt``, the log of the
released DenseNAS-C weights being validated (``load_path='../model_path/DenseNAS-C'``, "Params = 6.13MB",
"Mult-Adds = 360.81MB", top-1 75.28). The README table gives DenseNAS-C 361M FLOPs, 17.9 ms on a
TITAN-XP, 75.3 top-1. DenseNAS-A/B/Large are published only as weights and ``net_config`` files on
Google Drive and as a figure (``imgs/archs.png``); the paper's and README's tables give their FLOPs
(251M / 314M / 479M) and top-1 but no parameter counts, so they are not presets here.
"""
from __future__ import annotations

import ast

from hwnas.spaces.chain import ArchError

#: DenseNAS-C as released (``configs/imagenet_train_cfg.py`` and ``output/log.txt`` of JaminFong/DenseNAS).
DENSENAS_C_NET_CONFIG = """[[16, 16], 'mbconv_k3_t1', [], 0, 1]|
[[16, 24], 'mbconv_k3_t6', [], 0, 2]|
[[24, 48], 'mbconv_k7_t6', ['mbconv_k3_t3'], 1, 2]|
[[48, 72], 'mbconv_k5_t6', ['mbconv_k3_t6', 'mbconv_k3_t3'], 2, 2]|
[[72, 128], 'mbconv_k3_t6', ['mbconv_k3_t3', 'mbconv_k3_t3'], 2, 1]|
[[128, 160], 'mbconv_k3_t6', ['mbconv_k7_t3', 'mbconv_k5_t6', 'mbconv_k7_t3'], 3, 2]|
[[160, 176], 'mbconv_k3_t3', ['mbconv_k3_t6', 'mbconv_k3_t6', 'mbconv_k3_t6'], 3, 1]|
[[176, 384], 'mbconv_k7_t6', [], 0, 1]|
[[384, 1984], 'conv1_1']"""


def _op(name: str, where: str) -> str:
    """``mbconv_k5_t6`` -> ``k5e6``."""
    parts = name.split("_") if isinstance(name, str) else []
    if len(parts) != 3 or parts[0] != "mbconv" or not parts[1][1:].isdigit() or not parts[2][1:].isdigit():
        raise ArchError(f"net_config {where}: op {name!r} is not an 'mbconv_k<k>_t<t>'")
    return f"k{parts[1][1:]}e{parts[2][1:]}"


def parse_net_config(text: str) -> list[list]:
    """The released ``net_config`` string -> its block lines (Python literals)."""
    lines = [ln.strip() for ln in text.replace("\n", "").split("|") if ln.strip()]
    out = []
    for k, ln in enumerate(lines, start=1):
        try:
            out.append(ast.literal_eval(ln))
        except (ValueError, SyntaxError):
            raise ArchError(f"net_config line {k}: {ln[:60]!r} is not a [[c_in, c_out], op, [ops], n, stride] "
                            f"list") from None
    return out


def arch_from_net_config(text: str, space=None, config: dict | None = None) -> dict:
    """A released DenseNAS ``net_config`` -> the Arch dict (``space``, ``config``, ``layers``) of its path
    in ``space`` (default: ``densenas``). Raises ArchError naming the first line that the space cannot
    produce (a width no block has, a link the space lacks, a wrong stride, more stacked layers than the
    block holds)."""
    if space is None:
        from hwnas.spaces.definitions import SPACES

        space = SPACES["densenas"]
    cfg = space.resolve_config(config)
    st = space.structure(cfg)
    nodes = st.nodes
    lines = parse_net_config(text)
    if len(lines) < 3:
        raise ArchError(f"net_config has {len(lines)} lines; it needs the first block, blocks and the 1x1 conv")
    first, *blocks, last = lines
    want_first = [[cfg["stem"], cfg["first"]["c"]], f"mbconv_k{cfg['first']['token'][1]}_t1", [], 0, 1]
    if first != want_first:
        raise ArchError(f"net_config line 1: {first!r} is not the space's fixed first block {want_first!r}")
    if (not isinstance(last, list) or len(last) != 2 or last[1] != "conv1_1" or not isinstance(last[0], list)
            or last[0][1] != cfg["head"]):
        raise ArchError(f"net_config last line: {last!r} is not [[c, {cfg['head']}], 'conv1_1']")
    layers = ["-"] * len(space.decisions(cfg))
    n = 0
    for k, line in enumerate(blocks, start=2):
        where = f"line {k}"
        if not (isinstance(line, list) and len(line) == 5 and isinstance(line[0], list) and len(line[0]) == 2
                and isinstance(line[2], list)):
            raise ArchError(f"net_config {where}: {line!r} is not [[c_in, c_out], op, [ops], n, stride]")
        (c_in, c_out), head, stacked, count, stride = line
        if c_in != nodes[n].width:
            raise ArchError(f"net_config {where}: input width {c_in} is not the previous block's {nodes[n].width}")
        j = next((j for j in nodes[n].successors if nodes[j].width == c_out and j != len(nodes) - 1), None)
        if j is None:
            raise ArchError(f"net_config {where}: no link from block {n} (width {nodes[n].width}) to a block of "
                            f"width {c_out}; it links to widths {[nodes[s].width for s in nodes[n].successors]}")
        link_stride = space.part(cfg, n, j).stride
        if stride != link_stride:
            raise ArchError(f"net_config {where}: stride {stride}, but the link {n}->{j} has stride {link_stride}")
        if count != len(stacked) or len(stacked) > nodes[j].layers:
            raise ArchError(f"net_config {where}: {len(stacked)} stacked ops (n={count}); block {j} holds "
                            f"{nodes[j].layers}")
        layers[st.route[n]] = f"to{j}:{_op(head, where)}"
        ops = [_op(o, where) for o in stacked] + ["skip"] * (nodes[j].layers - len(stacked))
        for i, tok in zip(st.stack[j], ops):
            layers[i] = tok
        n = j
    sink = len(nodes) - 1
    if last[0][0] != nodes[n].width or sink not in nodes[n].successors:
        raise ArchError(f"net_config last line: the 1x1 conv from width {last[0][0]}, but the path ends at block "
                        f"{n} (width {nodes[n].width}){'' if sink in nodes[n].successors else ', which has no link to the head conv'}")
    layers[st.route[n]] = f"to{sink}:1x1"
    arch = {"space": space.name, "config": dict(config or {}), "layers": layers}
    space.check_layers(cfg, layers)
    return arch


DENSE_PRESETS: dict[str, dict] = {
    "densenas_c": arch_from_net_config(DENSENAS_C_NET_CONFIG),
}

#: published figures: parameters and multiply-adds as the released code prints them (millions, two decimals).
DENSE_PUBLISHED: dict[str, dict] = {
    "densenas_c": {
        "params_m": 6.13, "madds_m": 360.81, "rounding_m": 0.005, "top1": 75.3,
        "source": "JaminFong/DenseNAS output/log.txt (DenseNAS-C: 'Params = 6.13MB', 'Mult-Adds = 360.81MB', "
                  "top-1 75.28); README table (361M FLOPs, 17.9 ms TITAN-XP, top-1 75.3)",
    },
}
