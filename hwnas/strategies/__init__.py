"""Search strategies, registered by name (``STRATEGIES``); importing this package registers them."""
from hwnas.strategies.base import STRATEGIES, DeriveContext, Strategy, get_strategy, register
from hwnas.strategies.factorized import FactorizedStrategy
from hwnas.strategies import darts, fbnet, gdas, pcdarts, pdarts, proxyless, spnas  # noqa: F401  (registers them)
from hwnas.strategies import densenas, enas, fairnas, oneshot, smash, spos  # noqa: F401,E402

__all__ = ["STRATEGIES", "DeriveContext", "FactorizedStrategy", "Strategy", "get_strategy", "register"]
