"""The NAS-RL controller: Zoph & Le, "Neural Architecture Search with Reinforcement Learning", ICLR 2017.

An LSTM emits the architecture one decision after another: at step ``i`` its input is the embedding of the
token chosen at step ``i - 1`` (a learned start vector at step 0), and a softmax head of decision ``i``
gives the distribution over its choices (Sec. 3.1). It is trained with REINFORCE (Williams 1992; Sec. 3.2,
eq. 2-3): for an architecture ``a`` with reward ``R``, the gradient of ``(R - b) log p(a)`` is ascended,
where the baseline ``b`` is an exponential moving average of past rewards (``b <- d b + (1 - d) R``, d =
``baseline_decay``) that lowers the variance without biasing the gradient; an entropy bonus
(``entropy_weight * H(p)``, as ENAS does) keeps it exploring. Defaults: 2 layers of 35 units (the paper's
CIFAR controller), Adam at 6e-4 (the paper's), baseline decay 0.95 and entropy weight 1e-4 (ENAS, Pham
et al. 2018). One update per told trial (the paper averaged m = 8 children per update over 800 GPUs).

With a latency target the reward is MnasNet's (Tan et al., CVPR 2019, eq. 2): ``ACC * (LAT / T) ** w``
with ``w = alpha`` if ``LAT <= T`` else ``beta``; ``reward="soft"`` (default) is the paper's
``alpha = beta = -0.07``, ``reward="hard"`` its ``alpha = 0, beta = -1``. Unlike evolution and bo, the
controller's proposals above T are evaluated: the soft reward needs them to learn the trade-off (as in
MnasNet); they are recorded but never returned as the run's architecture. An architecture sampled again
is not evaluated again: its recorded reward updates the policy and another is drawn; after ``tries`` such
redraws in a row (a policy that has converged on what it already tried) the proposal is random search's, so a
run of N trials always gets N distinct architectures.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from hwnas.selection.random_search import RandomSelector
from hwnas.selection.selector import Selector, register

MNAS_EXPONENTS = {"soft": (-0.07, -0.07), "hard": (0.0, -1.0)}  # (alpha, beta): MnasNet, Sec. 3


def mnas_reward(accuracy: float, latency_ms: float, target_ms: float, kind: str = "soft") -> float:
    """MnasNet's reward ``ACC * (LAT/T)^w``, ``w = alpha`` if ``LAT <= T`` else ``beta`` (eq. 2)."""
    alpha, beta = MNAS_EXPONENTS[kind]
    w = alpha if latency_ms <= target_ms else beta
    return float(accuracy) * (float(latency_ms) / float(target_ms)) ** w


class Controller(nn.Module):
    """The autoregressive policy over ``sizes[i]`` choices at decision ``i`` (see the module docstring).

    ENAS's logit shaping (Pham et al. 2018, Sec. 3 and its code): ``temperature`` divides the logits and
    ``tanh_constant`` C then squashes them to ``C tanh(l)`` (None: neither, NAS-RL's plain softmax)."""

    def __init__(self, sizes: list[int], hidden: int = 35, layers: int = 2, temperature: float | None = None,
                 tanh_constant: float | None = None):
        super().__init__()
        self.sizes = list(sizes)
        self.temperature, self.tanh_constant = temperature, tanh_constant
        self.start = nn.Parameter(torch.zeros(1, hidden))
        self.embed = nn.ModuleList(nn.Embedding(n, hidden) for n in self.sizes)
        self.lstm = nn.LSTM(hidden, hidden, num_layers=layers)
        self.heads = nn.ModuleList(nn.Linear(hidden, n) for n in self.sizes)
        for p in self.parameters():  # the paper: uniform in [-0.08, 0.08]
            nn.init.uniform_(p, -0.08, 0.08)

    def logits(self, i: int, h: torch.Tensor) -> torch.Tensor:
        """Decision ``i``'s logits from the LSTM output ``h`` (shaped by temperature and tanh)."""
        out = self.heads[i](h)
        if self.temperature is not None:
            out = out / self.temperature
        if self.tanh_constant is not None:
            out = self.tanh_constant * torch.tanh(out)
        return out

    def forward(self, choices: list[int] | None = None, generator: torch.Generator | None = None, allowed=None):
        """Sample a choice per decision (or score the given ``choices``): (choices, sum log p, sum entropy).
        ``allowed(i, chosen_so_far)`` may return the indices decision ``i`` may take (None: all)."""
        x, state, out, logp, entropy = self.start, None, [], torch.zeros(()), torch.zeros(())
        for i in range(len(self.heads)):
            h, state = self.lstm(x.unsqueeze(0), state)
            logits = self.logits(i, h[0, 0])
            ok = None if allowed is None else allowed(i, out)
            if ok is not None:
                mask = torch.full_like(logits, float("-inf"))
                mask[list(ok)] = 0.0
                logits = logits + mask
            log_probs = torch.log_softmax(logits, dim=-1)
            probs = log_probs.exp()
            c = int(torch.multinomial(probs.detach().cpu(), 1, generator=generator)) if choices is None else choices[i]
            out.append(c)
            logp = logp + log_probs[c]
            safe = torch.where(probs > 0, log_probs, torch.zeros_like(log_probs))  # masked: 0 log 0 = 0, no NaN grad
            entropy = entropy - (probs * safe).sum()
            x = self.embed[i](torch.tensor([c], device=self.start.device))
        return out, logp, entropy


@contextmanager
def _one_thread():
    """The controller's ops are tiny: on a busy machine several threads only fight (25 ms a trial on one
    thread of the 2-core VM; many times that with two while other work ran)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@register
class ControllerSelector(Selector):
    name = "rl"

    def __init__(self, space, config: dict, seed: int = 0, latency=None, window: tuple[float, float] | None = None,
                 *, hidden: int = 35, layers: int = 2, lr: float = 6e-4, baseline_decay: float = 0.95,
                 entropy_weight: float = 1e-4, reward: str = "soft", tries: int = 10, metric: str = "accuracy"):
        if reward not in MNAS_EXPONENTS:
            raise ValueError(f"rl reward must be one of {', '.join(MNAS_EXPONENTS)}, got {reward!r}")
        if not 0 <= baseline_decay < 1 or hidden < 1 or layers < 1 or lr <= 0 or tries < 1:
            raise ValueError("rl needs 0 <= baseline_decay < 1 and positive hidden, layers, lr and tries")
        self.space, self.config, self.seed, self.latency, self.window = space, config, int(seed), latency, window
        self.decisions = space.decisions(config)
        self.hidden, self.layers, self.lr, self.decay = int(hidden), int(layers), float(lr), float(baseline_decay)
        self.entropy_weight, self.reward_kind, self.tries, self.metric = float(entropy_weight), reward, int(tries), metric
        gen = torch.Generator().manual_seed(self.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.controller = Controller([len(d.choices) for d in self.decisions], self.hidden, self.layers).double()
        self.generator = gen
        self.optimizer = torch.optim.Adam(self.controller.parameters(), lr=self.lr)
        self.baseline: float | None = None
        self.rewards: list[float] = []  # every reward the policy was updated with, in order
        self.told: dict[tuple[str, ...], float] = {}
        self.random = RandomSelector(space, config, seed=self.seed + 1, latency=latency, window=window)

    def reward(self, layers: list[str], result: dict) -> float:
        acc = float(result[self.metric])
        if self.window is None:
            return acc
        return mnas_reward(acc, float(self.latency.of_tokens(layers)), self.window[1], self.reward_kind)

    def allowed(self, i: int, so_far: list[int]):
        """The space's mask for decision ``i`` (``Space.allowed_choices``: a legal path on DenseNAS's routes)."""
        mask = getattr(self.space, "allowed_choices", None)  # a stand-in space may have none
        return None if mask is None else mask(self.config, i, so_far)

    def update(self, layers: list[str], reward: float) -> None:
        """One REINFORCE step on ``layers`` with ``reward`` (the module docstring's eq.)."""
        choices = [d.choices.index(t) for d, t in zip(self.decisions, layers)]
        self.baseline = reward if self.baseline is None else self.decay * self.baseline + (1 - self.decay) * reward
        with _one_thread():
            _, logp, entropy = self.controller(choices, allowed=self.allowed)
            loss = -(reward - self.baseline) * logp - self.entropy_weight * entropy
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        self.rewards.append(reward)

    def sample(self) -> list[str]:
        with torch.no_grad(), _one_thread():
            choices, _, _ = self.controller(generator=self.generator, allowed=self.allowed)
        return [d.choices[c] for d, c in zip(self.decisions, choices)]

    def ask(self) -> list[str]:
        for _ in range(self.tries):
            layers = self.sample()
            known = self.told.get(tuple(layers))
            if known is None:
                return layers
            self.update(layers, known)  # sampled again: learn from the recorded reward, draw another
        for _ in range(100 * self.tries):
            layers = self.random.ask()
            if tuple(layers) not in self.told:
                return layers
        return layers

    def tell(self, layers: list[str], result: dict) -> None:
        r = self.reward(layers, result)
        self.told[tuple(layers)] = r
        self.update(layers, r)

    def settings(self) -> dict:
        return {"selector": self.name, "seed": self.seed, "hidden": self.hidden, "layers": self.layers, "lr": self.lr,
                "baseline_decay": self.decay, "entropy_weight": self.entropy_weight, "reward": self.reward_kind,
                "tries": self.tries, "metric": self.metric, "window": None if self.window is None else list(self.window)}
