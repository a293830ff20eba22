"""hwnas: hardware-aware neural architecture search (latency tables, latency-aware searches, fused
supernet kernels, ONNX export)."""
__version__ = "0.1.0"
