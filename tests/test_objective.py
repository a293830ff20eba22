import itertools

import numpy as np
import pytest

from hwnas.objective import LatencyTargetError, check_target, most_probable_within, parse_target


def test_parse_target_units_and_percent():
    assert parse_target("20ms", 4, 12) == 20.0
    assert parse_target("20", 4, 12) == 20.0
    assert parse_target("800us", 4, 12) == pytest.approx(0.8)
    assert parse_target("0.02s", 4, 12) == pytest.approx(20.0)
    assert parse_target("25%", 4, 12) == pytest.approx(6.0)
    assert parse_target(None, 4, 12) is None
    for bad in ["fast", "20 fps", "-3ms", "120%"]:
        with pytest.raises(LatencyTargetError):
            parse_target(bad, 4, 12)


def test_check_target_messages():
    with pytest.raises(LatencyTargetError, match=r"below the fastest .* \(4.000 ms; slowest 12.000 ms\)"):
        check_target(3.0, 4.0, 12.0)
    assert check_target(8.0, 4.0, 12.0) is True
    assert check_target(13.0, 4.0, 12.0) is False  # does not bind
    assert check_target(None, 4.0, 12.0) is False


@pytest.mark.parametrize("seed", range(40))
def test_dp_is_the_most_probable_within_the_window(seed):
    rng = np.random.default_rng(seed)
    layers, c = 5, 3
    lat = [rng.uniform(0.5, 3.0, c) for _ in range(layers)]
    lp = [np.log(rng.dirichlet(np.ones(c))) for _ in range(layers)]
    fixed, lo, hi = 1.0, 7.0, 8.5
    if fixed + sum(x.min() for x in lat) > hi:
        with pytest.raises(LatencyTargetError):
            most_probable_within(lp, lat, fixed, lo, hi)
        return
    got = most_probable_within(lp, lat, fixed, lo, hi)
    total = fixed + sum(lat[i][j] for i, j in enumerate(got))
    score = sum(lp[i][j] for i, j in enumerate(got))
    assert total <= hi
    best = None  # brute force, with the DP's rounding slack kept off the lower edge
    for combo in itertools.product(range(c), repeat=layers):
        t = fixed + sum(lat[i][j] for i, j in enumerate(combo))
        if lo + 0.01 <= t <= hi:
            s = sum(lp[i][j] for i, j in enumerate(combo))
            best = s if best is None else max(best, s)
    if best is not None:
        assert total >= lo
        assert score >= best - 1e-12


def test_argmax_kept_when_inside_window():
    lat = [np.array([1.0, 2.0])] * 3
    lp = [np.log(np.array([0.3, 0.7]))] * 3
    assert most_probable_within(lp, lat, 0.0, 5.0, 6.0) == [1, 1, 1]
    assert sum(lat[0][j] for j in most_probable_within(lp, lat, 0.0, 4.0, 5.0)) in (4.0, 5.0)
