"""Two profiles of one table held row by row: known answers, drift separated from row noise, refusals, CLI."""

from __future__ import annotations

import math

import pytest

from hwnas.cli import main
from hwnas.latency.agreement import compare_tables
from hwnas.latency.table import LatencyTable, LatencyTableError

META = {"space": "proxyless", "resolution": 224, "batch": 1, "dtype": "fp32", "backend": "onnxruntime",
        "device": {"slug": "cpu-test-1t", "name": "test"}, "threads": 1, "statistic": "p10"}


def row(p50: float, p10: float | None = None) -> dict:
    p10 = p50 * 0.9 if p10 is None else p10
    return {"count": 100, "mean": p50, "std": 0.01, "p10": p10, "p50": p50, "p90": p50 * 1.2}


def table(values: dict[str, float], **meta) -> LatencyTable:
    t = LatencyTable.empty({**META, **meta})
    for sig, v in values.items():
        t.add(sig, row(v))
    return t


BASE = {"a": 1.0, "b": 2.0, "c": 4.0, "d": 0.5}


def test_known_answer():
    # b: +4% (within 5%), c: -6% (outside), d: exactly +5% (the bound is inclusive)
    other = table({"a": 1.0, "b": 2.08, "c": 3.76, "d": 0.525})
    res = compare_tables(table(BASE), other, statistic="p50")
    assert res.rows == 4 and res.within == 3 and res.share == 0.75
    assert res.largest == ("c", pytest.approx(0.94))
    assert res.sum_ratio == pytest.approx((1.0 + 2.08 + 3.76 + 0.525) / 7.5)
    assert res.common_factor == pytest.approx((1.0 + 1.04) / 2)  # median of 0.94, 1.0, 1.04, 1.05
    assert [s for s, _ in res.worst(2)] == ["c", "d"]
    assert "3/4 rows (75%)" in res.summary()


def test_default_statistic_is_the_tables_own():
    # the p10 column agrees, the p50 column does not: the default (the sidecar's p10) must read p10
    a, b = LatencyTable.empty(META), LatencyTable.empty(META)
    for sig, v in BASE.items():
        a.add(sig, row(v, p10=0.8 * v))
        b.add(sig, row(1.3 * v, p10=0.8 * v))
    res = compare_tables(a, b)
    assert res.statistic == "p10" and res.share == 1.0
    assert compare_tables(a, b, statistic="p50").share == 0.0


def test_within_is_symmetric():
    # 0.951 is 4.9% below 1 but 1 is 5.15% above 0.951: either order must give the same answer
    a, b = table({"a": 1.0, "b": 1.0}), table({"a": 0.951, "b": 1.0 / 1.049})
    assert compare_tables(a, b, statistic="p50").within == compare_tables(b, a, statistic="p50").within == 1
    # x2 and /2 are equally far from 1
    res = compare_tables(table({"a": 1.0, "b": 1.0}), table({"a": 2.0, "b": 0.49}), statistic="p50")
    assert res.largest[0] == "b"


def test_ties_name_the_same_row_first():
    res = compare_tables(table(BASE), table({k: v * 1.1 for k, v in BASE.items()}), statistic="p50")
    assert res.largest[0] == res.worst(1)[0][0] == "a"  # every row +10%: the first in table order


def test_uniform_drift_is_separated_from_row_noise():
    # the whole machine 20% slower during the second profile: no row agrees, every row agrees after the factor
    slow = table({k: v * 1.2 for k, v in BASE.items()})
    res = compare_tables(table(BASE), slow, statistic="p50")
    assert res.within == 0
    assert res.common_factor == pytest.approx(1.2)
    assert res.within_after_common == 4
    # one row off by itself stays off after the factor
    noisy = table({**{k: v * 1.2 for k, v in BASE.items()}, "c": 4.0 * 1.2 * 1.3})
    res = compare_tables(table(BASE), noisy, statistic="p50")
    assert res.within_after_common == 3 and res.largest[0] == "c"


def test_rows_in_one_table_only_are_listed_not_compared():
    res = compare_tables(table(BASE), table({"a": 1.0, "b": 2.0, "e": 9.0}), statistic="p50")
    assert res.rows == 2 and res.only_a == ["c", "d"] and res.only_b == ["e"]
    assert res.share == 1.0


def test_refusals():
    with pytest.raises(LatencyTableError, match="resolution 224 vs 160"):
        compare_tables(table(BASE), table(BASE, resolution=160))
    with pytest.raises(LatencyTableError, match="space"):
        compare_tables(table(BASE), table(BASE, space="fbnet"))
    with pytest.raises(LatencyTableError, match="no row in common"):
        compare_tables(table(BASE), table({"x": 1.0}))
    with pytest.raises(ValueError, match="tolerance"):
        compare_tables(table(BASE), table(BASE), tolerance=0)
    with pytest.raises(ValueError, match="statistic"):
        compare_tables(table(BASE), table(BASE), statistic="p99")
    zero = table({**BASE, "c": 0.0})
    with pytest.raises(LatencyTableError, match="row 'c' has p50 0.0; agreement needs positive rows"):
        compare_tables(table(BASE), zero, statistic="p50")


def test_other_differences_are_reported():
    other = table(BASE, threads=2, backend="torch", device={"slug": "cpu-other-2t", "name": "other"})
    res = compare_tables(table(BASE), other)
    assert res.differences == {"device": ("cpu-test-1t", "cpu-other-2t"), "backend": ("onnxruntime", "torch"),
                               "threads": (1, 2)}
    assert res.share == 1.0 and math.isclose(res.sum_ratio, 1.0)


def test_cli(tmp_path, capsys):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    table(BASE).save(a)
    table({"a": 1.0, "b": 2.08, "c": 3.76, "d": 0.525}, threads=2).save(b)
    code = main(["latency", "agreement", "--table", str(a), "--other", str(b), "--statistic", "p50", "--worst", "1"])
    out = capsys.readouterr().out
    assert code == 0
    assert "4 rows in common" in out and "note: threads differs: 1 vs 2" in out
    assert "p50: 3/4 rows (75%) agree within +-5%" in out
    assert out.strip().splitlines()[-1].split()[0] == "-6.0%"
    # a sidecar of another space: one line, exit 2
    table(BASE, space="fbnet").save(b)
    code = main(["latency", "agreement", "--table", str(a), "--other", str(b)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "space 'proxyless' vs 'fbnet'" in err
    with pytest.raises(SystemExit):  # argparse refuses a negative --worst
        main(["latency", "agreement", "--table", str(a), "--other", str(a), "--worst", "-1"])
    assert "must be >= 0" in capsys.readouterr().err
