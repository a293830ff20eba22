import math

import pytest
import torch

from hwnas.latency.predictor import LatencyModel
from hwnas.objective import latency_loss
from hwnas.spaces.chain import ChainSpace
from helpers import DictTable

TINY = ChainSpace("tiny", ("k3e3", "k5e6"), "inner",
                  {"stem": 8, "first": None, "stages": [{"c": 8, "n": 3, "s": 1}], "head": 16, "width_mult": 1.0,
                   "resolution": 16, "num_classes": 4, "act": "relu", "pw_at_e1": False, "dropout": 0.0}, "test")

# a hand-made 3-layer LUT: stem 1.0 + head 0.5 + classifier 0.25 = 1.75 fixed; k3e3 2.0, k5e6 3.0, skip 0
ROWS = {"stem:3>8:s2:r16:relu": 1.0, "head:8>16:s1:r8:relu": 0.5, "classifier:16>4": 0.25,
        "k3e3:8>8:s1:r8:relu": 2.0, "k5e6:8>8:s1:r8:relu": 3.0}


def model():
    return LatencyModel(DictTable(ROWS), TINY, {})


def test_known_answer():
    m = model()
    assert m.fixed_ms == pytest.approx(1.75)
    assert m.choices == [("k3e3", "k5e6"), ("k3e3", "k5e6", "skip"), ("k3e3", "k5e6", "skip")]
    probs = [torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.2, 0.3, 0.5])]
    # 1.75 + (1.0 + 1.5) + 2.0 + (0.4 + 0.9 + 0)
    assert float(m.expected(probs)) == pytest.approx(1.75 + 2.5 + 2.0 + 1.3)
    assert m.of_tokens(["k5e6", "skip", "k3e3"]) == pytest.approx(1.75 + 3.0 + 0.0 + 2.0)
    (lo, lo_t), (hi, hi_t) = m.extremes()
    assert (lo, lo_t) == (pytest.approx(3.75), ["k3e3", "skip", "skip"])
    assert (hi, hi_t) == (pytest.approx(10.75), ["k5e6", "k5e6", "k5e6"])
    rows = m.breakdown(["k5e6", "skip", "k3e3"])
    assert [r[0] for r in rows] == ["stem", "layer 0 k5e6", "layer 1 skip", "layer 2 k3e3", "head", "classifier"]
    assert sum(r[2] for r in rows) == pytest.approx(m.of_tokens(["k5e6", "skip", "k3e3"]))


def test_missing_row_is_refused():
    rows = dict(ROWS)
    del rows["k5e6:8>8:s1:r8:relu"]
    with pytest.raises(KeyError):
        LatencyModel(DictTable(rows), TINY, {})


@pytest.mark.parametrize("form", ["none", "mul#log", "add#linear"])
def test_gradient_matches_finite_differences(form):
    """The latency term carries a gradient to every architecture logit, and it is the right one."""
    m = model()
    torch.manual_seed(0)
    alphas = [torch.randn(n, dtype=torch.float64, requires_grad=True) for n in (2, 3, 3)]
    ce = torch.tensor(1.3, dtype=torch.float64)

    def f(al):
        e = m.expected([torch.softmax(a, 0) for a in al])
        return e if form == "none" else latency_loss(ce, e, 6.0, form)

    grads = torch.autograd.grad(f(alphas), alphas)
    eps = 1e-6
    for li, a in enumerate(alphas):
        for i in range(len(a)):
            plus = [x.detach().clone() for x in alphas]
            minus = [x.detach().clone() for x in alphas]
            plus[li][i] += eps
            minus[li][i] -= eps
            fd = (float(f(plus)) - float(f(minus))) / (2 * eps)
            assert float(grads[li][i]) == pytest.approx(fd, rel=1e-6, abs=1e-9)
        assert float(grads[li].abs().sum()) > 0
    # closed form for a softmax: dE/dalpha_i = p_i (LAT_i - E_layer)
    if form == "none":
        p = torch.softmax(alphas[2].detach(), 0)
        lat = torch.tensor([2.0, 3.0, 0.0], dtype=torch.float64)
        assert torch.allclose(grads[2], p * (lat - (p * lat).sum()))


def test_loss_forms_known_values():
    ce, e = torch.tensor(2.0), torch.tensor(10.0)
    assert float(latency_loss(ce, e, 20.0, "mul#log")) == pytest.approx(0.2 * 2.0 * (math.log(10) / math.log(20)) ** 0.3)
    assert float(latency_loss(ce, e, 20.0, "add#linear")) == pytest.approx(2.0 + 0.1 * (10 - 20) / 20)
    assert float(latency_loss(ce, e, 20.0, "add#linear", {"lambda": 1.0})) == pytest.approx(1.5)
    with pytest.raises(ValueError, match="unknown latency loss form"):
        latency_loss(ce, e, 20.0, "mul#lin")
    with pytest.raises(ValueError, match="above 1 ms"):
        latency_loss(ce, e, 0.5, "mul#log")
