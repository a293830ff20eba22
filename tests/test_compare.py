"""The methods-side-by-side report: every entry searched, trained, exported and measured, a random
baseline in the same window, a report a person can read, and resume after an interruption."""
import csv
import dataclasses
import json

import pytest
import torch

from hwnas.compare import CompareConfig, compare, count_macs, random_archs_in_window
from hwnas.api import build_search
from hwnas.searching import SearchConfig
from hwnas.spaces import get_space
from hwnas.strategies import STRATEGIES
from helpers import synthetic_table

TINY = dict(space="spnas", latency_target="50%", epochs=2, warmup_epochs=1, batch_size=128, train_epochs=1,
            random_archs=2, config={"width_mult": 0.25})


def table(space, deploy_config):
    return synthetic_table(space, deploy_config)


def test_count_macs_known_answer():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1, bias=False),
                              torch.nn.Conv2d(8, 8, 3, padding=1, groups=8), torch.nn.Flatten(),
                              torch.nn.Linear(8 * 4 * 4, 5))
    assert count_macs(net, (1, 3, 4, 4)) == 8 * 16 * 3 * 9 + 8 * 16 * 1 * 9 + 5 * 128


def test_random_archs_land_in_the_window():
    s = build_search(SearchConfig(space="spnas", latency_target="40%", config={"width_mult": 0.25}, epochs=2,
                            warmup_epochs=1), "unused", table=table)
    archs = random_archs_in_window(s, 5, seed=1)
    assert len({tuple(a) for a in archs}) == 5
    for a in archs:
        assert 0.9 * s.target_ms <= s.latency.of_tokens(a) <= s.target_ms


@pytest.mark.slow
def test_compare_end_to_end_and_resume(tmp_path, monkeypatch):
    cfg = CompareConfig(methods=["proxyless", "fbnet", "spnas"], **TINY)
    rows = compare(cfg, tmp_path / "cmp", table)
    assert [r["entry"] for r in rows] == ["proxyless", "fbnet", "spnas", "random-0", "random-1"]
    for r in rows:
        assert 0.9 * r["target_ms"] <= r["predicted_ms"] <= r["target_ms"] + 1e-9
        assert r["measured_ms"] > 0 and 0 <= r["test_acc"] <= 1 and r["params"] > 0 and r["macs"] > 0
        assert (tmp_path / "cmp" / r["entry"] / "model.onnx").exists()
    for r in rows[:3]:
        assert r["search_s"] > 0 and r["step_ms"] > 0 and r["child_mib"] > 0 and r["largest_mib"] >= r["child_mib"]
    fb = rows[1]
    assert fb["step_mib"] > fb["largest_mib"]  # FBNet keeps every candidate's activations
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert "| spnas |" in report and "random median" in report and "weight step" in report
    assert (tmp_path / "cmp" / "accuracy_vs_latency.png").stat().st_size > 1000
    assert len(list(csv.DictReader(open(tmp_path / "cmp" / "report.csv")))) == 5

    import hwnas.compare as cmp_mod

    def no_training(*a, **k):
        raise AssertionError("a finished entry was trained again")

    monkeypatch.setattr(cmp_mod, "train_child", no_training)
    (tmp_path / "cmp" / "report.md").unlink()
    again = compare(cfg, tmp_path / "cmp", table)  # everything finished: nothing is redone
    assert [r["test_acc"] for r in again] == [r["test_acc"] for r in rows]
    assert (tmp_path / "cmp" / "report.md").read_text() == report  # the report is written again, whole

    settings = (tmp_path / "cmp" / "compare.json").read_text()
    with pytest.raises(ValueError, match=r"other settings \(epochs 2 -> 3, arch_lr_scale 1.0 -> 10.0\)"):
        compare(CompareConfig(methods=cfg.methods, **{**TINY, "epochs": 3}, arch_lr_scale=10.0), tmp_path / "cmp", table)
    assert (tmp_path / "cmp" / "compare.json").read_text() == settings  # nothing of the finished run touched


def test_compare_refuses_a_target_that_does_not_bind(tmp_path):
    cfg = CompareConfig(methods=["spnas"], **{**TINY, "latency_target": "100000ms"})
    with pytest.raises(ValueError, match="does not bind"):
        compare(cfg, tmp_path / "cmp", table)
    assert not (tmp_path / "cmp" / "spnas").exists()


def test_arch_lr_scale_reaches_every_method(tmp_path, monkeypatch):
    import hwnas.compare as cmp_mod
    from hwnas.strategies import get_strategy

    seen = {}

    class Recorder:
        def __init__(self, scfg, *a, **k):
            seen[scfg.method] = scfg.options
            raise KeyboardInterrupt  # stop before any search runs

    monkeypatch.setattr(cmp_mod, "build_search", Recorder)  # compare builds its searches through the API
    for method in STRATEGIES:
        with pytest.raises(KeyboardInterrupt):
            compare(CompareConfig(methods=[method], **TINY, arch_lr_scale=10.0), tmp_path / method, table)
        default = get_strategy(method).defaults.get("arch_lr")
        assert seen[method] == ({"arch_lr": pytest.approx(10 * default)} if default is not None else {})
    assert {"darts", "pcdarts", "gdas", "pdarts", "proxyless", "fbnet", "spnas"} <= set(seen)
    with pytest.raises(KeyboardInterrupt):  # the papers' rates: no option passed at all
        compare(CompareConfig(methods=["darts"], **TINY), tmp_path / "darts1", table)
    assert seen["darts"] == {}
    # a compare.json written before arch_lr_scale existed resumes at the default
    old = tmp_path / "old"
    old.mkdir()
    cfg = CompareConfig(methods=["fbnet"], **TINY)
    stored = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "arch_lr_scale"}
    (old / "compare.json").write_text(json.dumps(stored))
    with pytest.raises(KeyboardInterrupt):
        compare(cfg, old, table)
    (old / "compare.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="compare.json: cannot read the settings"):
        compare(cfg, old, table)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="arch-lr-scale"):
            compare(CompareConfig(methods=["fbnet"], **TINY, arch_lr_scale=bad), tmp_path / f"bad{bad}", table)
        assert not (tmp_path / f"bad{bad}").exists()
