"""ENAS (Pham, Guan, Zoph, Le, Dean. "Efficient Neural Architecture Search via Parameter Sharing", ICML 2018).

- The controller (Sec. 2.1-2.3): an LSTM that emits a child one choice after another, each choice's embedding
  the next step's input (``hwnas.selection.controller.Controller``), its logits shaped as ``C tanh(l / t)``
  with the paper's temperature ``t = 5`` and tanh constant ``C = 2.5``, 100 hidden units (the paper's; the
  released code runs 64), one layer.
  * Macro search (Sec. 2.3) on the chain spaces (and nb201's independent edges): one choice per decision
    (layer or edge), autoregressive over the decisions.
  * Micro search (Sec. 2.4) on the ``darts`` cell space: for each intermediate node of the normal cell, then
    of the reduction cell, the index of its first input, the op on it, the index of its second input
    (masked to differ from the first: the cell space keeps two distinct edges a node; the released code
    may pick one input twice), the op on that one. The chosen edges carry the chosen ops, the others are
    ``none``.
- Training (Sec. 2.2), two interleaved phases: the shared weights ``w`` are trained by the search loop's SGD
  on training batches, each on a child sampled from the controller; between them (every ``arch_every``
  steps, after the warm-up) the controller takes a REINFORCE step on a validation batch: a child ``m`` is
  sampled, its reward ``R`` is its accuracy on that batch through the shared weights (BatchNorm on the
  batch's own statistics, running statistics untouched), plus the entropy bonus ``entropy_weight * H``
  (1e-4, the code's), the baseline moves ``b <- b - (1 - d)(b - R)`` (``d = baseline_decay`` 0.99, the
  code's) and Adam (lr 3.5e-4, the paper's) descends ``-(R - b) log p(m)``; ``aggregate`` samples are
  averaged per update (the code: 10-20 on CIFAR; 1 here, where an epoch of digits has ~45 batches). The
  paper alternates whole phases (an epoch of ``w``, then ~2,000 controller steps); on a proxy this small the
  per-batch alternation of NNI's ENAS keeps both moving.
- With a latency target the reward is MnasNet's ``ACC * (LAT / T)^w`` (Tan et al., CVPR 2019, eq. 2;
  ``reward=soft``: ``w = -0.07`` either side, ``reward=hard``: 0 below T, -1 above), ``LAT`` the table's
  prediction of the sampled child.
- Derivation (Sec. 2.2, "Deriving Architectures"): sample children from the trained controller, keep those
  predicted in ``[0.9 T, T]`` (``derive_samples`` distinct ones; random ones in the window fill a
  shortfall), score each on the validation split through the shared weights with BatchNorm recalibrated
  (``SupernetPath``; the paper scores on one validation minibatch), take the best.
"""
from __future__ import annotations

import torch
from torch import nn

from hwnas.selection.controller import Controller, MNAS_EXPONENTS, mnas_reward
from hwnas.selection.selector import Selector
from hwnas.selection.spos_evolution import SPOSEvolution
from hwnas.strategies.base import register
from hwnas.strategies.sampling import SamplingStrategy


class MacroEncoding:
    """One controller step per decision; step ``i``'s index is the decision's choice."""

    def __init__(self, decisions):
        self.decisions = decisions
        self.sizes = [len(d.choices) for d in decisions]

    def allowed(self, i: int, so_far: list[int]):
        return None

    def tokens(self, choices: list[int]) -> list[str]:
        return [d.choices[c] for d, c in zip(self.decisions, choices, strict=True)]


class MicroEncoding:
    """ENAS's micro steps over a cell space: per node (``Space.decision_groups``: its incoming edges),
    (input 1, op 1, input 2, op 2), input 2 masked to differ from input 1; ops exclude the absent token."""

    def __init__(self, decisions, groups: list[list[int]], absent: str):
        self.decisions, self.groups, self.absent = decisions, groups, absent
        self.ops = [[t for t in decisions[g[0]].choices if t != absent] for g in groups]
        self.sizes = []
        for g, ops in zip(groups, self.ops):
            self.sizes += [len(g), len(ops), len(g), len(ops)]

    def allowed(self, i: int, so_far: list[int]):
        if i % 4 == 2:  # the second input of a node: any input but the first
            n = self.sizes[i]
            return [j for j in range(n) if j != so_far[i - 2]]
        return None

    def tokens(self, choices: list[int]) -> list[str]:
        out = [self.absent] * len(self.decisions)
        for k, (g, ops) in enumerate(zip(self.groups, self.ops)):
            in1, op1, in2, op2 = choices[4 * k: 4 * k + 4]
            out[g[in1]], out[g[in2]] = ops[op1], ops[op2]
        return out


class RouteEncoding(MacroEncoding):
    """One controller step per decision of a routing-block space (DenseNAS, ``hwnas.spaces.dense``), in
    network order, masked to a legal path by the space (``Space.allowed_choices``)."""

    def __init__(self, space, config):
        super().__init__(space.decisions(config))
        self.space, self.config = space, config

    def allowed(self, i: int, so_far: list[int]):
        return self.space.allowed_choices(self.config, i, so_far)


def encoding_for(space, config):
    decisions = space.decisions(config)
    if "routes" in space.capabilities:
        return RouteEncoding(space, config)
    groups = space.decision_groups()
    if groups is None:
        return MacroEncoding(decisions)
    if space.absent_token is None:
        raise ValueError(f"method 'enas': space {space.name!r} constrains its decisions without an absent token")
    return MicroEncoding(decisions, groups, space.absent_token)


class ControllerSamples(Selector):
    """Children sampled from a trained controller (no learning), each new and predicted in ``window``; after
    ``tries`` draws in a row that are not, a random architecture in the window (``SPOSEvolution``'s)."""

    name = "enas-samples"

    def __init__(self, strategy, window, latency, seed: int = 0, tries: int = 200):
        self.strategy, self.window, self.latency, self.seed, self.tries = strategy, window, latency, int(seed), int(tries)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.fill = SPOSEvolution(strategy.space, strategy.config, seed=self.seed, latency=latency, window=window,
                                  population=2, topk=1, iterations=0, mutations=0, crossovers=0)
        self.random_fills = 0

    def _in_window(self, tokens) -> bool:
        if self.window is None:
            return True
        ms = self.latency.of_tokens(tokens)
        return self.window[0] - 1e-9 <= ms <= self.window[1] + 1e-9

    def ask(self):
        for _ in range(self.tries):
            tokens = self.strategy.sample_tokens(self.generator)
            if tuple(tokens) not in self.fill.proposed and self._in_window(tokens):
                self.fill.proposed.add(tuple(tokens))
                return tokens
        tokens = self.fill.random_legal()
        if tokens is not None:
            self.fill.proposed.add(tuple(tokens))
            self.random_fills += 1
        return tokens

    def settings(self) -> dict:
        return {"selector": self.name, "seed": self.seed, "tries": self.tries,
                "window": None if self.window is None else list(self.window)}


def batch_statistics_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy of ``model`` on ``(x, y)`` with BatchNorm on the batch's own statistics and every running
    statistic left as it was (momentum 0 for the pass)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None) for m in bns]
    was = model.training
    try:
        for m in bns:
            m.momentum = 0.0
        model.train()
        with torch.no_grad():
            return float((model(x).argmax(1) == y).float().mean())
    finally:
        for m, (momentum, tracked) in zip(bns, saved):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)
        model.train(was)


@register
class ENAS(SamplingStrategy):
    name = "enas"
    arch_steps = True
    current_arch_label = "controller's greedy path"
    defaults = {**SamplingStrategy.defaults, "hidden": 100, "layers": 1, "temperature": 5.0, "tanh_constant": 2.5,
                "controller_lr": 3.5e-4, "baseline_decay": 0.99, "entropy_weight": 1e-4, "aggregate": 1,
                "reward": "soft", "derive_samples": 20}

    def __init__(self, supernet, latency=None, target_ms=None, **options):
        super().__init__(supernet, latency, target_ms, **options)
        o = self.options
        if o["reward"] not in MNAS_EXPONENTS:
            raise ValueError(f"method 'enas': reward must be one of {', '.join(MNAS_EXPONENTS)}, got {o['reward']!r}")
        if not 0 <= o["baseline_decay"] < 1 or int(o["aggregate"]) < 1 or int(o["derive_samples"]) < 1:
            raise ValueError("method 'enas' needs 0 <= baseline_decay < 1, aggregate >= 1 and derive_samples >= 1")
        self.encoding = encoding_for(self.space, self.config)
        self.controller = Controller(self.encoding.sizes, int(o["hidden"]), int(o["layers"]),
                                     temperature=o["temperature"], tanh_constant=o["tanh_constant"])
        self.controller_opt = torch.optim.Adam(self.controller.parameters(), lr=o["controller_lr"])
        self.register_buffer("baseline", torch.zeros(()))
        self.register_buffer("baseline_set", torch.zeros((), dtype=torch.bool))
        self._pending = 0

    def weight_parameters(self):
        return list(self.supernet.parameters())

    # -- the policy ----------------------------------------------------------------------------------------
    def sample_tokens(self, generator: torch.Generator | None = None) -> list[str]:
        with torch.no_grad():
            choices, _, _ = self.controller(generator=generator, allowed=self.encoding.allowed)
        return self.encoding.tokens(choices)

    def sample_path(self) -> list[str]:
        """The weight step's child: a sample of the controller (not uniform)."""
        return self.sample_tokens()

    def reward(self, tokens: list[str], accuracy: float) -> float:
        if self.latency is None or self.target_ms is None:
            return accuracy
        return mnas_reward(accuracy, float(self.latency.of_tokens(tokens)), float(self.target_ms), self.options["reward"])

    def arch_step(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        """One REINFORCE sample on a validation batch (the module docstring); Adam steps every ``aggregate``."""
        o = self.options
        choices, logp, entropy = self.controller(allowed=self.encoding.allowed)
        tokens = self.encoding.tokens(choices)
        self.set_path(tokens)
        accuracy = batch_statistics_accuracy(self.supernet, x, y)
        if self.distributed is not None:  # torchrun: the reward of the global batch, the same step on every rank
            accuracy = self.distributed.mean(accuracy)
        r = self.reward(tokens, accuracy) + o["entropy_weight"] * float(entropy.detach())
        with torch.no_grad():
            if not bool(self.baseline_set):
                self.baseline.fill_(r)
                self.baseline_set.fill_(True)
            else:
                self.baseline.sub_((1 - o["baseline_decay"]) * (self.baseline - r))
        loss = -(r - float(self.baseline)) * logp / int(o["aggregate"])
        loss.backward()
        self._pending += 1
        if self._pending >= int(o["aggregate"]):
            self.controller_opt.step()
            self.controller_opt.zero_grad(set_to_none=True)
            self._pending = 0
        out = {"arch_loss": float(loss.detach()), "reward": r, "baseline": float(self.baseline),
               "entropy": float(entropy.detach()), "child_val_acc": accuracy}
        if self.latency is not None:
            out["child_latency_ms"] = float(self.latency.of_tokens(tokens))
        return out

    # -- choosing the architecture ----------------------------------------------------------------------------
    def current_arch(self) -> list[str]:
        """The controller's most probable child, greedily (argmax at every step)."""
        with torch.no_grad():
            x, state, out = self.controller.start, None, []
            for i in range(len(self.controller.heads)):
                h, state = self.controller.lstm(x.unsqueeze(0), state)
                logits = self.controller.logits(i, h[0, 0])
                ok = self.encoding.allowed(i, out)
                if ok is not None:
                    keep = torch.full_like(logits, float("-inf"))
                    keep[list(ok)] = 0.0
                    logits = logits + keep
                c = int(logits.argmax())
                out.append(c)
                x = self.controller.embed[i](torch.tensor([c], device=logits.device))
        return self.encoding.tokens(out)

    def selection_budget(self) -> int:
        return int(self.options["derive_samples"])

    def make_selector(self, context):
        return ControllerSamples(self, context.window, context.latency)

    def arch_optimizer_state(self) -> dict:
        return self.controller_opt.state_dict()

    def load_arch_optimizer_state(self, state: dict) -> None:
        if state:
            self.controller_opt.load_state_dict(state)
