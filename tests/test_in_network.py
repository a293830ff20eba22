"""In-network profiling (hwnas.latency.measure.in_network): covering networks, hook bookkeeping, resume, refusals."""
from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from hwnas.latency.measure import in_network
from hwnas.latency.measure.in_network import block_positions, covering_archs, profile_in_network
from hwnas.latency.table import LatencyTable
from hwnas.latency.tables import needed_signatures, profile_space
from hwnas.spaces import get_space
from hwnas.spaces.arch import Arch
from hwnas.spaces.builder import build_child

SMALL = {"width_mult": 0.25, "resolution": 32}
META = lambda cfg: {"space": "proxyless", "resolution": cfg["resolution"], "batch": 1, "config": cfg}  # noqa: E731


@pytest.fixture()
def proxyless():
    space = get_space("proxyless")
    return space, space.resolve_config(SMALL)


@pytest.mark.parametrize("name", ["proxyless", "fbnet", "spnas"])
def test_covering_sets_run_every_row_once_per_set(name):
    space = get_space(name)
    cfg = space.resolve_config({"width_mult": 0.25} if name != "spnas" else {})
    plan = space.plan(cfg)
    archs = covering_archs(space, cfg, reps=3, seed=1)
    width = max(len(p.choices) for p in plan.layers)
    assert len(archs) == 3 * width
    for s in range(3):
        for layer, part in enumerate(plan.layers):
            used = {a[layer] for a in archs[s * width:(s + 1) * width]}
            assert used == set(part.choices), (s, layer)
    for a in archs:  # every covering network is a valid architecture of the space
        Arch(space.name, cfg, a)
    # the rows the covering networks run are exactly the rows a table of the space needs
    ran = {sig for a in archs for _, sig in block_positions(space, cfg, a) if sig is not None}
    assert ran == set(needed_signatures(space, cfg))
    assert covering_archs(space, cfg, 3, seed=1) == archs and covering_archs(space, cfg, 3, seed=2) != archs
    with pytest.raises(ValueError, match="reps >= 1"):
        covering_archs(space, cfg, 0)


def test_block_positions_name_the_child_modules(proxyless):
    space, cfg = proxyless
    tokens = covering_archs(space, cfg, 1)[0]
    net = build_child(Arch(space.name, cfg, tokens))
    pos = block_positions(space, cfg, tokens)
    assert [name for name, _ in pos][:2] == ["stem", "first"] and pos[-1][0] == "classifier"
    for name, sig in pos:
        module = net.get_submodule(name)
        assert (sig is None) == isinstance(module, torch.nn.Identity), name


def _fake_clock(monkeypatch, step_ns=1_000_000):
    """Every reading of the hooks' clock advances ``step_ns``: a hooked block then lasts exactly step_ns."""
    state = {"t": 0}

    def clock():
        state["t"] += step_ns
        return state["t"]

    monkeypatch.setattr(in_network, "_clock", clock)


def test_rows_pool_exactly_the_timed_calls(proxyless, tmp_path, monkeypatch):
    """Known answer: with a clock that makes every block last 1 ms, every row reads 1 ms, and its sample
    count is the timed calls (not the warm-up ones) times the positions it ran at in all networks."""
    space, cfg = proxyless
    _fake_clock(monkeypatch)
    reps, iterations, rounds = 2, 6, 3
    table = profile_in_network(space, cfg, tmp_path / "t.csv", threads=1, meta=META(cfg), reps=reps, warmup=2,
                               iterations=iterations, rounds=rounds, min_round_s=0)
    archs = covering_archs(space, cfg, reps, seed=0)
    expected = Counter(sig for a in archs for _, sig in block_positions(space, cfg, a) if sig is not None)
    assert set(table.as_dict()) == set(needed_signatures(space, cfg))
    df = table.df
    for sig, n in expected.items():
        assert df.loc[sig, "count"] == n * iterations, sig
        assert df.loc[sig, "p10"] == pytest.approx(1.0) and df.loc[sig, "p90"] == pytest.approx(1.0)
    meta = LatencyTable.load(tmp_path / "t.csv").meta
    assert meta["context"] == "network" and meta["network_sets"] == reps and meta["backend"] == "torch"
    assert not (tmp_path / "t.csv.partial.json").exists()


def test_real_clock_rows_are_positive_and_bounded_by_the_network(proxyless, tmp_path):
    """With the real clock: every row is positive, and one covering network's rows sum to no more than
    the whole network's median call (the hooks bracket parts of the call)."""
    space, cfg = proxyless
    table = profile_in_network(space, cfg, tmp_path / "t.csv", threads=1, meta=META(cfg), reps=1, warmup=2,
                               iterations=10, rounds=2, min_round_s=0, statistic="p50")
    rows = table.as_dict()
    assert all(v > 0 for v in rows.values())
    from hwnas.latency.measure.timing import Runner, summarize
    tokens = covering_archs(space, cfg, 1)[0]
    whole = summarize(Runner(build_child(Arch(space.name, cfg, tokens)), (1, 3, 32, 32), backend="torch",
                             threads=1).samples(20, 3))
    parts = sum(rows[sig] for _, sig in block_positions(space, cfg, tokens) if sig is not None)
    assert parts < 1.5 * whole["p90"]


def test_killed_profile_resumes_after_the_last_saved_set(proxyless, tmp_path, monkeypatch):
    space, cfg = proxyless
    _fake_clock(monkeypatch)
    width = len(covering_archs(space, cfg, 1))
    built = {"n": 0}
    real_build = in_network.build_child

    def failing_build(arch):
        built["n"] += 1
        if built["n"] == width + 2:  # in the second set
            raise KeyboardInterrupt
        return real_build(arch)

    monkeypatch.setattr(in_network, "build_child", failing_build)
    kw = dict(threads=1, meta=META(cfg), reps=3, warmup=1, iterations=2, rounds=1, min_round_s=0)
    with pytest.raises(KeyboardInterrupt):
        profile_in_network(space, cfg, tmp_path / "t.csv", **kw)
    partial = json.loads((tmp_path / "t.csv.partial.json").read_text())
    assert partial["sets_done"] == 1
    built["n"] = -10**9  # no more failures; count what the rerun builds
    monkeypatch.setattr(in_network, "build_child", lambda arch: (built.__setitem__("n", built["n"] + 1), real_build(arch))[1])
    built["n"] = 0
    table = profile_in_network(space, cfg, tmp_path / "t.csv", **kw)
    assert built["n"] == 2 * width  # sets 2 and 3 only
    archs = covering_archs(space, cfg, 3, seed=0)
    expected = Counter(sig for a in archs for _, sig in block_positions(space, cfg, a) if sig is not None)
    counts = table.df["count"]
    assert all(counts[sig] == n * 2 for sig, n in expected.items())  # set 1's samples kept, not redone
    # a partial file of another plan (other seed) is ignored, not mixed in
    (tmp_path / "u.csv.partial.json").write_text(json.dumps({"key": "other", "sets_done": 2, "samples": {"x": [1.0]}}))
    t2 = profile_in_network(space, cfg, tmp_path / "u.csv", **{**kw, "reps": 1})
    assert "x" not in t2.as_dict()


def test_refusals(proxyless, tmp_path):
    space, cfg = proxyless
    with pytest.raises(ValueError, match="torch eager on a CPU only"):
        profile_space(space, cfg, tmp_path / "o.csv", device=torch.device("cpu"), backend="onnxruntime", context="network")
    with pytest.raises(ValueError, match="unknown profile context"):
        profile_space(space, cfg, tmp_path / "o.csv", device=torch.device("cpu"), backend="torch", context="nearby")
    darts = get_space("darts")
    with pytest.raises(ValueError, match="chain spaces"):
        profile_in_network(darts, darts.resolve_config({}), tmp_path / "d.csv", threads=1, meta={"space": "darts"})
    # a table profiled block by block does not take in-network rows
    profile_space(space, cfg, tmp_path / "alone.csv", device=torch.device("cpu"), backend="torch", iterations=2,
                  warmup=1, rounds=1, threads=1, context="alone")
    with pytest.raises(ValueError, match="holds blocks profiled alone; rows profiled in place"):
        profile_in_network(space, cfg, tmp_path / "alone.csv", threads=1, meta=META(cfg), reps=1, iterations=2)


def test_default_context_is_network_where_it_runs():
    from hwnas.latency.tables import default_context

    cpu = torch.device("cpu")
    assert default_context(get_space("proxyless"), "torch", cpu) == "network"
    assert default_context(get_space("proxyless"), "onnxruntime", cpu) == "alone"
    assert default_context(get_space("darts"), "torch", cpu) == "alone"  # a cell space: profiled block by block


def test_existing_network_table_keeps_its_context(proxyless, tmp_path, monkeypatch):
    """``profile_space`` without a context follows the table's: missing rows of an in-network table are
    measured in networks, never alone into it, and in as many sets of networks as its other rows (a
    search that fills a classifier row of a 2-set table does not time the default 9)."""
    import hwnas.latency.measure.in_network as inn

    space, cfg = proxyless
    _fake_clock(monkeypatch)
    real, sets = inn.profile_in_network, []

    def spy(*a, reps, **k):
        sets.append(reps)
        return real(*a, reps=reps, **k)

    monkeypatch.setattr(inn, "profile_in_network", spy)
    path = tmp_path / "t.csv"
    profile_space(space, cfg, path, device=torch.device("cpu"), backend="torch", context="network", network_sets=1,
                  iterations=2, warmup=1, rounds=1, threads=1)
    assert sets == [1] and LatencyTable.load(path).meta["network_sets"] == 1
    table = LatencyTable.load(path)
    dropped = sorted(table.as_dict())[0]
    table.df = table.df.drop(dropped)
    table.save(path)
    again = profile_space(space, cfg, path, device=torch.device("cpu"), backend="torch", iterations=2, warmup=1,
                          rounds=1, threads=1)
    assert dropped in again and again.meta["context"] == "network" and sets == [1, 1]
    fresh = tmp_path / "fresh.csv"
    monkeypatch.setattr(inn, "profile_in_network", lambda *a, reps, **k: sets.append(reps))
    profile_space(space, cfg, fresh, device=torch.device("cpu"), backend="torch", context="network", threads=1)
    assert sets[-1] == inn.NETWORK_SETS == 9  # a new table gets the default
