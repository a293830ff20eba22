"""hwnas: hardware-aware neural architecture search (latency tables, latency-aware searches, fused
supernet kernels, ONNX export).

The Python API (``hwnas.api``; the commands call the same functions)::

    import hwnas
    result = hwnas.search("proxyless", latency_target="50%")   # a SearchResult: run_dir, arch, summary
    hwnas.train(result.run_dir)                                 # from scratch, into the run directory
    report = hwnas.export(result.run_dir)                       # ONNX, checked, measured
    hwnas.predict(result.run_dir)                               # predicted latency in ms
    hwnas.profile("fbnet", backend="torch")                     # a LatencyTable of this machine
"""
__version__ = "0.1.0"

_API = ("profile", "search", "worker", "train", "export", "predict", "SearchResult")
__all__ = list(_API)


def __getattr__(name: str):
    # imported on first use, so that `import hwnas` (and `hwnas --help`) stays light
    if name in _API:
        from hwnas import api

        return getattr(api, name)
    raise AttributeError(f"module 'hwnas' has no attribute {name!r}")
