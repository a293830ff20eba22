"""Search spaces: the chain spaces, the Arch format, presets and the Arch -> nn.Module builder."""
from hwnas.spaces.arch import Arch, atomic_write_text, get_space
from hwnas.spaces.chain import ArchError, ChainSpace, Part, Plan
from hwnas.spaces.definitions import SPACES

__all__ = ["Arch", "ArchError", "ChainSpace", "Part", "Plan", "SPACES", "get_space", "atomic_write_text"]
