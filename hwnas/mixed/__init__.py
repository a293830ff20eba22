"""Mixed ops (the op half of a supernet) and the chain supernet. The only callers of hwnas.kernels."""
from hwnas.mixed.base import MixedOp
from hwnas.mixed.binary_gate import BinaryGatedOp
from hwnas.mixed.supernet import ChainSupernet

__all__ = ["MixedOp", "BinaryGatedOp", "ChainSupernet"]
