"""Search strategies, registered by name (``STRATEGIES``); importing this package registers them."""
from hwnas.strategies.base import STRATEGIES, Strategy, get_strategy, register
from hwnas.strategies import fbnet, proxyless, spnas  # noqa: F401  (registers "fbnet", "proxyless", "spnas")

__all__ = ["STRATEGIES", "Strategy", "get_strategy", "register"]
