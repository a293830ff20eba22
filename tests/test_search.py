"""The search loop end to end on the embedded digits data, with a synthetic latency table and a
narrow supernet so it runs in seconds."""
import json

import pytest

from hwnas.objective import LatencyTargetError
from hwnas.api import build_search
from hwnas.searching import Search, SearchConfig
from hwnas.spaces import Arch, get_space
from helpers import synthetic_table

NARROW = {"width_mult": 0.25}


def cfg(**kw):
    base = dict(epochs=2, warmup_epochs=1, batch_size=128, config=NARROW, seed=0)
    base.update(kw)
    return SearchConfig(**base)


def table_fn(space, deploy_config):
    return synthetic_table(space, deploy_config)


@pytest.mark.parametrize("pct", [20, 50, 80])
def test_latency_target_sweep_lands_in_window(tmp_path, pct):
    s = build_search(cfg(latency_target=f"{pct}%"), tmp_path / "run", table=table_fn)
    lo, hi = s.range_ms
    target = lo + pct / 100 * (hi - lo)
    summary = s.run()
    assert summary["target_ms"] == pytest.approx(target)
    assert 0.9 * target <= summary["predicted_latency_ms"] <= target
    arch = Arch.load(tmp_path / "run" / "arch.json")
    assert arch.layers == summary["arch"]
    assert arch.config["resolution"] == 224 and arch.config["num_classes"] == 10
    assert s.latency.of_tokens(arch.layers) == pytest.approx(summary["predicted_latency_ms"])


def test_run_directory_contents_and_resume(tmp_path, monkeypatch):
    run = tmp_path / "run"
    s = build_search(cfg(epochs=3, latency_target="60%"), run, table=table_fn)
    original = Search._epoch
    calls = {"n": 0}

    def dies_in_second_epoch(self, bar):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # the process is killed mid-epoch
        return original(self, bar)

    monkeypatch.setattr(Search, "_epoch", dies_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        s.run()
    monkeypatch.setattr(Search, "_epoch", original)
    assert (run / "checkpoint.pt").exists() and not (run / "arch.json").exists()
    config_before = (run / "config.json").read_text()

    resumed = build_search(cfg(epochs=3, latency_target="60%"), run, table=table_fn)
    summary = resumed.run()
    assert resumed.epoch == 3 and len(resumed.history) == 3
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    assert (run / "config.json").read_text() == config_before  # never overwritten
    lines = (run / "metrics.csv").read_text().strip().splitlines()
    assert len(lines) == 1 + 3
    history = [json.loads(line) for line in (run / "arch_history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    for name in ("arch.json", "child.pt", "summary.json", "config.json"):
        assert (run / name).exists(), name
    assert not list(run.glob(".*.tmp"))
    assert 0.0 <= summary["supernet_val_acc"] <= 1.0


def test_target_below_fastest_fails_at_once(tmp_path):
    with pytest.raises(LatencyTargetError, match=r"below the fastest .*slowest"):
        build_search(cfg(latency_target="0.001ms"), tmp_path / "run", table=table_fn)
    assert not (tmp_path / "run").exists()


def test_target_above_slowest_does_not_bind(tmp_path):
    s = build_search(cfg(latency_target="100000ms", epochs=1, warmup_epochs=0), tmp_path / "run", table=table_fn)
    assert s.binds is False and s.strategy.target_ms is None
    assert "does not bind" in s.describe_target()
    summary = s.run()
    assert summary["target_binds"] is False


def test_train_from_scratch_learns_digits(tmp_path):
    """`hwnas train`'s library call: a narrow child trained from scratch beats chance by far."""
    from hwnas.training import train_child

    arch = Arch("proxyless", {"width_mult": 0.25, "num_classes": 10}, ["k3e3"] * 21)
    result = train_child(arch, tmp_path, epochs=4, batch_size=32, lr=0.05)
    assert result["test_acc"] > 0.6 and result["val_acc"] > 0.6
    assert (tmp_path / "trained.pt").exists() and (tmp_path / "train.json").exists()


def test_resume_rebuilds_the_supernet_the_run_started_with(tmp_path, monkeypatch):
    """config.json records every method option, defaults included, so a resume builds the same supernet
    after a default changes; a checkpoint that does not fit (a run from before the record) is refused in
    one line that says how to resume it."""
    from hwnas.searching import load_search_config

    run = tmp_path / "run"
    s = build_search(cfg(epochs=3, latency_target="60%", options={"weights": "separate"}), run, table=table_fn)
    original = Search._epoch
    calls = {"n": 0}

    def dies_in_second_epoch(self, bar):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, bar)

    monkeypatch.setattr(Search, "_epoch", dies_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        s.run()
    monkeypatch.setattr(Search, "_epoch", original)
    recorded = json.loads((run / "config.json").read_text())["method_options"]
    assert recorded["weights"] == "separate" and recorded["arch_lr"] == 1e-3  # a default, recorded
    assert load_search_config(run).options == recorded

    old = json.loads((run / "config.json").read_text())  # a run written before method_options existed
    del old["method_options"]
    old["options"] = {}
    (run / "config.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match=r"checkpoint.pt does not fit the supernet .* --opt weights=separate"):
        build_search(load_search_config(run), run, table=table_fn).run()
    resumed_cfg = load_search_config(run)
    resumed_cfg.options = {"weights": "separate"}  # what `hwnas search --resume RUN --opt weights=separate` does
    resumed = build_search(resumed_cfg, run, table=table_fn)
    resumed.run()
    assert resumed.epoch == 3 and [r["epoch"] for r in resumed.history] == [1, 2, 3]
