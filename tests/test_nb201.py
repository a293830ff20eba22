"""The NAS-Bench-201 space (Dong & Yang, ICLR 2020): the benchmark's string notation for all 15,625 cells,
parameter counts against a count by hand from the paper's description, the DARTS family on it, profiling
and export from the command line."""
import json

import pytest
import torch

from hwnas.spaces import Arch, ArchError, get_space
from hwnas.spaces.builder import count_params
from hwnas.spaces.nb201 import EDGES, OPS
from tests.test_cli import assert_one_line_error, run

SPACE = get_space("nb201")
PAPER_EXAMPLE = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"


def test_string_round_trip_for_all_15625_cells():
    archs = SPACE.all_archs()
    assert len(archs) == 5**6 == 15625
    strings = [SPACE.arch_string(a) for a in archs]
    assert len(set(strings)) == 15625
    assert all(SPACE.parse_arch_string(s) == a for s, a in zip(strings, archs))
    assert SPACE.parse_arch_string(PAPER_EXAMPLE) == ["nor_conv_3x3", "nor_conv_3x3", "avg_pool_3x3", "skip_connect",
                                                      "nor_conv_3x3", "skip_connect"]
    assert SPACE.arch_string(SPACE.parse_arch_string(PAPER_EXAMPLE)) == PAPER_EXAMPLE


@pytest.mark.parametrize("text, message", [
    ("|nor_conv_3x3~0|+|none~0|none~1|", "has 2 node(s)"),
    ("|nor_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|conv~2|", "unknown op 'conv'"),
    ("|nor_conv_3x3~0|+|none~1|none~0|+|none~0|none~1|none~2|", "expected op~0"),
    ("|nor_conv_3x3~0|+|none~0|+|none~0|none~1|none~2|", "node 2 has 1 incoming edge"),
    ("nor_conv_3x3~0+|none~0|none~1|+|none~0|none~1|none~2|", "must be written |op~input|"),
])
def test_bad_strings_are_named_in_one_line(text, message):
    with pytest.raises(ArchError, match=message.replace("|", r"\|").replace("(", r"\(").replace(")", r"\)")) as e:
        SPACE.parse_arch_string(text)
    assert "\n" not in str(e.value)


def hand_count(cell: list[str], C: int = 16, N: int = 5, classes: int = 10) -> int:
    """Parameters from the paper's description (Sec. 2.1, Fig. 1): a 3x3 conv stem with BN; per stage N cells
    whose conv edges are ReLU-conv(k x k, c -> c, no bias)-BN (2c affine parameters); residual reduction blocks
    of two 3x3 ReLU-conv-BN and a 1x1 conv shortcut; BN and a linear classifier at the end."""
    total = 3 * C * 9 + 2 * C
    for c in (C, 2 * C, 4 * C):
        per_cell = sum(c * c * (9 if op == "nor_conv_3x3" else 1) + 2 * c for op in cell
                       if op in ("nor_conv_1x1", "nor_conv_3x3"))
        total += N * per_cell
    for c0, c1 in ((C, 2 * C), (2 * C, 4 * C)):
        total += 9 * c0 * c1 + 2 * c1 + 9 * c1 * c1 + 2 * c1 + c0 * c1
    return total + 2 * 4 * C + 4 * C * classes + classes


@pytest.mark.parametrize("text, known", [
    ("|none~0|+|none~0|none~1|+|none~0|none~1|none~2|", 73306),  # the benchmark's smallest: 0.073306 M
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|", 1531546),
    (PAPER_EXAMPLE, None),
    ("|nor_conv_1x1~0|+|skip_connect~0|nor_conv_1x1~1|+|avg_pool_3x3~0|none~1|nor_conv_3x3~2|", None),
])
def test_parameter_counts_match_the_hand_count(text, known):
    cell = SPACE.parse_arch_string(text)
    n = count_params(SPACE.build_child(cell, SPACE.resolve_config({})))
    assert n == hand_count(cell)
    if known is not None:  # the benchmark's range of sizes, 0.07 M to 1.53 M
        assert n == known


def test_the_network_computes_the_cell_as_described():
    """Node i sums its edges from nodes j < i; a cell of skip edges only is x -> 1x, 2x, 4x (node 3 = x + x + 2x)."""
    from hwnas.spaces.nb201 import Cell, make_op

    cell = Cell([make_op("skip_connect", 2) for _ in EDGES]).double()
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    assert torch.equal(cell(x), 4 * x)
    only_last = Cell([None] * 5 + [make_op("skip_connect", 2)])  # node 2 has no input: zeros, so node 3 is 0
    assert torch.equal(only_last(x.float()), torch.zeros_like(x.float()))
    pool = Cell([make_op("avg_pool_3x3", 1)] + [None] * 4 + [make_op("skip_connect", 1)]).double()
    ones = torch.ones(1, 1, 3, 3, dtype=torch.float64)
    assert torch.allclose(pool(ones), torch.zeros_like(ones))  # 3 <- 2 only, and node 2 is empty
    sm = Cell([None, None, None, make_op("avg_pool_3x3", 1), None, None]).double()
    assert torch.allclose(sm(ones), ones)  # padding not counted: the mean of ones is one at the border too


def test_arch_json_carries_the_benchmark_string_and_loads_from_it(tmp_path):
    a = Arch("nb201", {}, SPACE.parse_arch_string(PAPER_EXAMPLE))
    d = a.to_dict()
    assert d["arch_string"] == PAPER_EXAMPLE
    assert Arch.from_dict(d).layers == a.layers
    assert Arch.from_dict({"space": "nb201", "arch_string": PAPER_EXAMPLE}).layers == a.layers
    assert Arch.from_dict({"space": "nb201", "genotype": PAPER_EXAMPLE}).layers == a.layers
    with pytest.raises(ArchError, match="unknown op 'conv_3x3'"):
        Arch.from_dict({"space": "nb201", "arch_string": PAPER_EXAMPLE.replace("nor_conv_3x3~1", "conv_3x3~1")})
    with pytest.raises(ArchError, match="resolution 30 must be a multiple of 4"):
        Arch("nb201", {"resolution": 30}, a.layers)


def test_unconstrained_derivation_may_keep_none():
    """The benchmark's DARTS derivation is each edge's argmax over all 5 ops, none included."""
    import numpy as np

    lp = [np.log([0.6, 0.1, 0.1, 0.1, 0.1])] + [np.log([0.1, 0.1, 0.1, 0.6, 0.1])] * 5
    assert SPACE.derive([OPS] * 6, lp) == ["none"] + ["nor_conv_3x3"] * 5


TINY = ["--space", "nb201", "--config", "C=4", "--config", "N=1", "--train-resolution", "8", "--batch-size", "256",
        "--backend", "torch", "--tables", "tables"]


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_profile_search_export_train_on_nb201(here, capsys):
    code, out, err = run(capsys, "profile", "--space", "nb201", "--config", "C=4", "--config", "N=1", "--device", "cpu",
                         "--backend", "torch", "--warmup", "1", "--iterations", "3", "--rounds", "2", "--out", "tables")
    assert code == 0, err
    # the tiny network runs in under 1 ms: DARTS's target term (the multiplier) takes any target
    code, out, err = run(capsys, "search", "--method", "darts", "--epochs", "1", "--latency-target", "50%", *TINY)
    assert code == 0, err
    assert "derived cell: |" in out
    run_dir = next((here / "runs").iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert SPACE.parse_arch_string(summary["arch_string"]) == summary["arch"]
    assert 0.9 * summary["target_ms"] <= summary["predicted_latency_ms"] <= summary["target_ms"]
    arch = json.loads((run_dir / "arch.json").read_text())
    assert arch["arch_string"] == summary["arch_string"]
    code, out, err = run(capsys, "export", "--arch", str(run_dir), "--onnx", "--tables", "tables", "--iterations", "3")
    assert code == 0, err
    assert "onnx.checker ok" in out and (run_dir / "model.onnx").exists()
    code, out, err = run(capsys, "train", "--arch", str(run_dir), "--epochs", "1", "--batch-size", "256")
    assert code == 0 and "test accuracy" in out, err


@pytest.mark.parametrize("method", ["gdas", "pcdarts"])
def test_gdas_and_pcdarts_run_on_nb201(here, capsys, method):
    code, out, err = run(capsys, "search", "--method", method, "--epochs", "1", "--no-latency", *TINY)
    assert code == 0, err
    assert "derived cell: |" in out


def test_methods_that_do_not_apply_are_refused(here, capsys):
    code, _, err = run(capsys, "search", "--method", "proxyless", *TINY)
    assert_one_line_error(code, err, "'proxyless' does not apply to space 'nb201'", "darts, enas, fairnas, gdas, oneshot, pcdarts, spos")
