"""Search strategies, registered by name (``STRATEGIES``); importing this package registers them."""
from hwnas.strategies.base import STRATEGIES, Strategy, get_strategy, register
from hwnas.strategies import darts, fbnet, gdas, pcdarts, pdarts, proxyless, spnas  # noqa: F401  (registers them)

__all__ = ["STRATEGIES", "Strategy", "get_strategy", "register"]
