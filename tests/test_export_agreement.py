"""The export's torch-vs-ONNX Runtime check (hwnas.exporting.check_agreement): within 1e-4 relative it agrees
at once; a network whose own float32 round-off is larger (here, a large constant that the next convolution
cancels: the offset of a deep, briefly trained DenseNAS child's activations) agrees when ORT is as close to
torch's float64 output as torch's float32 is; a wrong export is refused whatever the round-off."""
import copy

import numpy as np
import pytest
import torch

from hwnas.exporting import RTOL, ExportError, check_agreement
from hwnas.onnx import export_onnx_bytes, ort_session


def cancelling_net(offset: float, c: int = 64) -> torch.nn.Module:
    """Every feature of the first conv carries ``offset``; the second conv's weights sum to zero per output
    channel, so the offset cancels and float32 keeps ~7 digits of ``offset``, not of the output."""
    torch.manual_seed(0)
    conv, conv2 = torch.nn.Conv2d(3, c, 3, padding=1), torch.nn.Conv2d(c, c, 3, padding=0)
    with torch.no_grad():
        conv.bias += offset
        conv2.weight -= conv2.weight.mean(dim=(1, 2, 3), keepdim=True)
    return torch.nn.Sequential(conv, conv2, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(c, 10)).eval()


def outputs(model, xs, exported=None):
    """torch float32, ONNX Runtime (of ``exported``, default the model itself) and a float64 callable."""
    s = ort_session(export_onnx_bytes(exported or model, xs[0]), device="cpu", threads=1)
    with torch.no_grad():
        want = [model(x).numpy() for x in xs]
    got = [s.run(None, {s.get_inputs()[0].name: x.numpy()})[0] for x in xs]

    def exact():
        m64 = copy.deepcopy(model).double()
        with torch.no_grad():
            return [m64(x.double()).numpy() for x in xs]

    return want, got, exact


XS = [torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(3)]


def test_a_well_conditioned_network_agrees_without_the_float64_reference():
    want, got, _ = outputs(cancelling_net(0.0), XS)
    max_abs, rel, note = check_agreement(want, got, lambda: pytest.fail("float64 run where float32 agreed"))
    assert rel <= RTOL and note is None and max_abs == pytest.approx(max(np.abs(g - w).max() for g, w in zip(got, want)))


def test_float32_round_off_beyond_the_tolerance_agrees_against_float64():
    want, got, exact = outputs(cancelling_net(1e4), XS)
    with pytest.raises(ExportError, match=r"relative > 0.0001\)$"):
        check_agreement(want, got)  # without the reference: the plain check refuses it
    _, rel, note = check_agreement(want, got, exact)
    assert rel > 10 * RTOL and "float32 round-off" in note  # 1.3e-3 here, as the DenseNAS child's 1.7e-3


def test_a_wrong_export_is_refused_even_where_float32_rounds_off():
    model = cancelling_net(1e4)
    wrong = copy.deepcopy(model)
    with torch.no_grad():
        wrong[4].weight[3] *= 1.05  # one output row of the classifier 5% off: what a bad export looks like
    want, got, exact = outputs(model, XS, exported=wrong)
    with pytest.raises(ExportError, match=r"from torch's float64 output where torch's float32 is [0-9.e-]+ \(allowed"):
        check_agreement(want, got, exact)


def test_synthetic_outputs_at_the_bound():
    exact = [np.array([[1.0, -2.0, 0.5]])]
    want = [exact[0] + np.array([[1e-3, 0, 0]])]  # torch float32 1e-3 / 2 = 5e-4 relative off float64
    ok = [exact[0] - np.array([[0, 9.9e-4 * 2, 0]])]  # ORT 9.9e-4 relative off: under 2 x 5e-4
    bad = [exact[0] - np.array([[0, 1.01e-3 * 2, 0]])]  # 1.01e-3: over
    assert check_agreement(want, ok, lambda: exact)[2] is not None
    with pytest.raises(ExportError, match=r"allowed 0\.001\)"):
        check_agreement(want, bad, lambda: exact)
