"""Mixed ops (the op half of a supernet) and the chain supernet. The only callers of hwnas.kernels."""
from hwnas.mixed.base import MixedOp
from hwnas.mixed.binary_gate import BinaryGatedOp
from hwnas.mixed.shared_gate import SharedBinaryGatedOp
from hwnas.mixed.superkernel import SuperkernelOp
from hwnas.mixed.supernet import ChainSupernet
from hwnas.mixed.weighted_sum import WeightedSumOp

__all__ = ["MixedOp", "BinaryGatedOp", "ChainSupernet", "SharedBinaryGatedOp", "SuperkernelOp", "WeightedSumOp"]
