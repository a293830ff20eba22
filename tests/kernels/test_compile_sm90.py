"""Every kernel, with the arguments and GPU block sizes its launcher really passes, compiles for sm_90
(H100) down to a cubin with Triton's bundled ptxas. No GPU needed: this catches code that Triton's
lenient CPU interpreter runs but the compiler rejects (types changing across branches or loop
iterations, unsupported ops). On CUDA the other tests compile and run the kernels, so it is skipped.

The compiler cannot run in a process whose triton was imported for the interpreter, so the test runs
this file as a script in a fresh process without ``TRITON_INTERPRET``.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest
import torch

MODULE_NAMES = ("mixed_op_sum", "partial_channel_mix", "masked_dwconv")
_TY = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64", torch.int64: "i64"}


class _Recorder:
    """Stands in for a kernel: ``kernel[grid](*args, **kwargs)`` records the call instead of running it."""

    def __init__(self, name, kernel, calls):
        self.name, self.kernel, self.calls = name, kernel, calls

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.calls.append((self.name, self.kernel, args, kwargs))


def _record(modules) -> list:
    calls = []
    for mod in modules.values():
        mod.on_interpreter = lambda t: False  # the launchers pick their GPU block sizes
        for name, obj in list(vars(mod).items()):
            if type(obj).__name__ == "JITFunction":
                setattr(mod, name, _Recorder(name, obj, calls))
    modules["masked_dwconv"]._num_sms = lambda index: 132
    return calls


def _sig(v):
    if isinstance(v, torch.Tensor):
        return "*" + _TY[v.dtype]
    if isinstance(v, tuple):
        return tuple(_sig(e) for e in v)
    if isinstance(v, bool):
        return "i1"
    if isinstance(v, int):
        return "i32" if -(2**31) <= v < 2**31 else "i64"
    raise TypeError(type(v))


def _compile_all(calls):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    seen = set()
    for name, kernel, args, kwargs in calls:
        kwargs = dict(kwargs)
        num_warps = kwargs.pop("num_warps", 4)
        fn = kernel
        signature = {n: _sig(a) for n, a in zip(fn.arg_names, args)}
        signature.update({n: "constexpr" for n in kwargs})
        key = (name, str(signature), str(sorted(kwargs.items())), num_warps)
        if key in seen:
            continue
        seen.add(key)
        src = ASTSource(fn, signature=signature, constexprs=kwargs)
        compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})
        assert compiled.asm.get("cubin"), name
    return seen


def _run_everything(modules):
    """Forward and backward of each op through its autograd Function, covering the specializations
    (dtypes, N, strides, optional thresholds) the launchers produce."""
    mos, pcm, mdw = modules["mixed_op_sum"], modules["partial_channel_mix"], modules["masked_dwconv"]
    for dtype, n in ((torch.float16, 9), (torch.float32, 1)):
        cands = [torch.randn(64, 33, dtype=dtype, requires_grad=True) for _ in range(n)]
        w = torch.randn(n, requires_grad=True)
        mos._MixedOpSum.apply(w, False, *cands).sum().backward()
    cands = [torch.randn(8, 8, requires_grad=i == 1) for i in range(3)]  # some candidates need no grad
    mos._MixedOpSum.apply(torch.randn(3), False, *cands).sum().backward()
    for stride, dtype in ((1, torch.bfloat16), (2, torch.float32)):
        x = torch.randn(4, 16, 14, 14, dtype=dtype, requires_grad=True)
        ho = 14 // stride
        ops = torch.randn(7, 4, 4, ho, ho, dtype=dtype, requires_grad=True)
        w = torch.randn(7, requires_grad=True)
        pcm._PartialChannelMix.apply(x, w, 4, stride, True, ops).sum().backward()
    for K, stride, dtype, tk, te in (
        (7, 2, torch.float16, torch.zeros(2), torch.zeros(())),
        (5, 1, torch.bfloat16, None, torch.zeros(1)),
    ):
        x = torch.randn(2, 24, 28, 28, dtype=dtype, requires_grad=True)
        w = torch.randn(24, 1, K, K, requires_grad=True)
        tk = tk.requires_grad_() if tk is not None else None
        te = te.requires_grad_() if te is not None else None
        mdw._MaskedDWConv.apply(x, w, tk, te, stride, 12).sum().backward()


def main() -> None:
    modules = {name: importlib.import_module(f"hwnas.kernels.{name}") for name in MODULE_NAMES}
    calls = _record(modules)
    _run_everything(modules)
    launched = {c[0] for c in calls}
    expected = {name for mod in modules.values() for name, obj in vars(mod).items() if isinstance(obj, _Recorder)}
    assert launched == expected, f"kernels never launched: {expected - launched}"
    compiled = _compile_all(calls)
    print(f"compiled {len(compiled)} specializations of {len(expected)} kernels for sm_90")


@pytest.mark.skipif(torch.cuda.is_available(), reason="on CUDA every other kernel test compiles and runs the kernels")
def test_every_kernel_compiles_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "compiled" in proc.stdout


if __name__ == "__main__":
    main()
