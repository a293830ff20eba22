"""Where tables are found and written (hwnas.latency.lookup): --tables / $HWNAS_TABLES alone, else the
user's directory over the shipped tables, with rows a search profiles going into an overlay, never into a
shipped table."""
import json

import pytest
import torch

from hwnas.cli import main
from hwnas.latency import lookup
from hwnas.latency.lookup import load_layers, table_roots, user_root
from hwnas.latency.table import LatencyTable, LatencyTableError
from hwnas.latency.tables import ensure_table, needed_signatures, profile_space, table_name
from hwnas.spaces import get_space

CPU = torch.device("cpu")
FAST = dict(threads=1, warmup=1, iterations=3, rounds=1)


def test_lookup_order(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    roots = table_roots()
    assert roots.source == "user" and roots.write == tmp_path / "xdg" / "hwnas" / "latency_tables"
    assert roots.write == user_root()
    assert roots.shipped is not None and (roots.shipped / "cpu-amd-epyc-2t").is_dir()  # this checkout's tables
    assert roots.read == (roots.write, roots.shipped)
    monkeypatch.setenv("HWNAS_TABLES", str(tmp_path / "env"))
    assert table_roots().read == (tmp_path / "env",) and table_roots().source == "$HWNAS_TABLES"
    assert table_roots(tmp_path / "flag").read == (tmp_path / "flag",)  # --tables first
    monkeypatch.delenv("HWNAS_TABLES")
    monkeypatch.delenv("XDG_DATA_HOME")
    assert user_root() == __import__("pathlib").Path.home() / ".local" / "share" / "hwnas" / "latency_tables"


def _shipped(tmp_path, monkeypatch, **how):
    """A 'shipped' table of a small proxyless config for 1000 classes, profiled with torch (alone unless
    ``how`` says otherwise)."""
    space = get_space("proxyless")
    shipped = tmp_path / "shipped"
    monkeypatch.setattr(lookup, "shipped_root", lambda: shipped)
    cfg = space.resolve_config({"width_mult": 0.25, "resolution": 32})
    name = table_name("proxyless", device=CPU, backend="torch", resolution=32, threads=1)
    profile_space(space, cfg, shipped / name, device=CPU, backend="torch", **{"context": "alone", **how}, **FAST)
    return space, shipped / name, name


def _files(path):
    return {p.name: p.read_bytes() for p in path.parent.iterdir() if p.is_file()}


def test_a_search_profiles_missing_rows_into_an_overlay_not_into_the_shipped_table(tmp_path, monkeypatch):
    space, shipped, name = _shipped(tmp_path, monkeypatch)
    before = _files(shipped)
    cfg10 = space.resolve_config({"width_mult": 0.25, "resolution": 32, "num_classes": 10})
    table = ensure_table(space, cfg10, device=CPU, backend="torch", **FAST)
    assert _files(shipped) == before  # the shipped table is untouched, byte for byte
    overlay = user_root() / name
    assert table.layers == [str(shipped), str(overlay)]
    top = LatencyTable.load(overlay)
    base = LatencyTable.load(shipped)
    assert set(top.df.index) == set(needed_signatures(space, cfg10)) - set(base.df.index) != set()
    assert all(s.startswith("classifier:") for s in top.df.index)  # only the 10-class head was profiled
    assert top.meta["overlay_of"] == str(shipped) and top.meta.get("context", "alone") == "alone"
    table.require(needed_signatures(space, cfg10))
    assert len(table) == len(base) + len(top)
    # found again without profiling anything: the overlay's files do not change
    stamp = _files(overlay)
    again = ensure_table(space, cfg10, device=CPU, backend="torch", profile_missing=False, **FAST)
    assert again.as_dict() == table.as_dict() and _files(overlay) == stamp
    # a run's recorded layers load to the same table
    assert load_layers(again.layers).as_dict() == table.as_dict()
    # the merged table never folds the overlay into the shipped file
    with pytest.raises(LatencyTableError, match="read with an overlay"):
        table.save()


def test_an_overlay_measured_otherwise_is_refused_in_one_line(tmp_path, monkeypatch):
    space, shipped, name = _shipped(tmp_path, monkeypatch)
    cfg10 = space.resolve_config({"width_mult": 0.25, "resolution": 32, "num_classes": 10})
    ensure_table(space, cfg10, device=CPU, backend="torch", **FAST)
    sidecar = (user_root() / name).with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**meta, "statistic": "p90"}))
    with pytest.raises(LatencyTableError, match=r"overlay .* does not fit .*statistic 'p10' != 'p90'") as e:
        ensure_table(space, cfg10, device=CPU, backend="torch", profile_missing=False, **FAST)
    assert "\n" not in str(e.value)


def test_a_full_table_of_the_user_shadows_the_shipped_one(tmp_path, monkeypatch):
    space, shipped, name = _shipped(tmp_path, monkeypatch)
    own = user_root() / name
    cfg = space.resolve_config({"width_mult": 0.25, "resolution": 32})
    profile_space(space, cfg, own, device=CPU, backend="torch", context="alone", **FAST)
    table = ensure_table(space, cfg, device=CPU, backend="torch", profile_missing=False, **FAST)
    assert table.layers == [str(own)]


def test_no_table_anywhere_names_every_place_looked(tmp_path, monkeypatch):
    monkeypatch.setattr(lookup, "shipped_root", lambda: tmp_path / "shipped")
    space = get_space("proxyless")
    cfg = space.resolve_config({"width_mult": 0.25, "resolution": 32})
    with pytest.raises(LatencyTableError, match=r"no latency table .*proxyless-r32-b1-fp32.csv under .* or .*shipped"):
        ensure_table(space, cfg, device=CPU, backend="torch", profile_missing=False, threads=1)


def test_latency_show_prints_the_lookup(tmp_path, monkeypatch, capsys):
    assert main(["latency", "show"]) == 0
    out = capsys.readouterr().out
    assert f"1. {user_root()}" in out and "shipped with hwnas, read only" in out
    monkeypatch.setenv("HWNAS_TABLES", str(tmp_path))
    assert main(["latency", "show"]) == 0
    out = capsys.readouterr().out
    assert f"tables: {tmp_path} only ($HWNAS_TABLES" in out and "none" in out


def test_an_in_network_overlay_adds_only_the_rows_its_base_lacks(tmp_path, monkeypatch):
    space, _, name = _shipped(tmp_path, monkeypatch, context="network", network_sets=1)
    cfg10 = space.resolve_config({"width_mult": 0.25, "resolution": 32, "num_classes": 10})
    table = ensure_table(space, cfg10, device=CPU, backend="torch", **FAST)
    top = LatencyTable.load(user_root() / name)
    assert top.meta["context"] == "network" and top.meta["network_sets"] == 1  # measured the base's way
    assert set(top.df.index) == {s for s in needed_signatures(space, cfg10) if s.startswith("classifier:")}
    table.require(needed_signatures(space, cfg10))
