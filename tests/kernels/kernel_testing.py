"""Helpers shared by the kernel tests (imported by name: pytest puts this directory on sys.path)."""

from __future__ import annotations

import torch

DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Tolerances against a float64 reference evaluated on the same (already rounded) inputs: the kernels
# accumulate in fp32 and round once to the storage dtype, so the error is about one ulp of that dtype.
TOL = {
    torch.float32: dict(rtol=2e-5, atol=2e-5),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2),
}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, name: str = "") -> None:
    """``actual`` (kernel, any dtype) against ``expected`` (float64), atol scaled by the magnitude."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert not torch.isnan(actual).any(), f"{name}: NaN in the result (an element the kernel did not write?)"
    scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    tol = TOL[dtype]
    torch.testing.assert_close(
        actual.double().cpu(),
        expected.double().cpu(),
        rtol=tol["rtol"],
        atol=tol["atol"] * scale,
        msg=lambda m: f"{name}: {m}",
    )
