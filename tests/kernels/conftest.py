"""The kernel tests run the real Triton kernels: on CUDA when there is a GPU, else in Triton's CPU
interpreter (``TRITON_INTERPRET=1``), so CI checks the kernel code itself, not only the references.

``@triton.jit`` reads ``TRITON_INTERPRET`` when it decorates a function, and triton decorates its own
standard library (``tl.zeros``, ``tl.sum``'s helpers...) when ``triton`` is first imported: the
variable must therefore be set before anything imports triton. ``import torch`` does not (checked with
torch 2.14), but ``import torch._dynamo`` does -- so does ``torch.compile(...)`` and
``torch.utils._triton.has_triton()``. Setting it here, at the top of this conftest, works as long as
nothing collected earlier in the session imports triton, hwnas.kernels or torch._dynamo at import
time: in ``pytest tests/`` the directory ``tests/kernels`` is collected before the ``tests/test_*.py``
files (pytest sorts by name), and ``tests/conftest.py`` imports none of them (checked). A module-level
``torch.compile`` in a conftest or test file collected earlier would break it.
If that happens the kernel tests fail with a message saying so, rather than silently testing the
reference against itself.

The variable is restored right after the kernels are imported, and set again only around each test in
this directory (autouse fixture), so tests elsewhere keep the fast pure-torch path on CPU.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
_TOO_LATE = None

if not CUDA:
    _saved = os.environ.get("TRITON_INTERPRET")
    _was_imported = "triton" in sys.modules
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import triton.language as _tl

        import hwnas.kernels  # noqa: F401  (decorates the kernels now, for the interpreter)

        if type(_tl.zeros).__name__ != "InterpretedFunction":
            _TOO_LATE = (
                "triton was imported before tests/kernels/conftest.py could set TRITON_INTERPRET=1 "
                f"(already imported: {_was_imported}); set it before triton is imported (e.g. in the root "
                "conftest) or run tests/kernels in its own pytest process"
            )
    finally:
        if _saved is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = _saved


@pytest.fixture(autouse=True)
def _kernel_test_env(monkeypatch):
    """Interpreter on (CPU only) and every kernel output buffer poisoned with NaN (see _common.POISON)."""
    if _TOO_LATE:
        pytest.fail(_TOO_LATE)
    from hwnas.kernels import _common

    if not CUDA:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(_common, "POISON", True)


@pytest.fixture
def device() -> str:
    return DEVICE
