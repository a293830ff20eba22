"""The DenseNAS space's graph (``hwnas.spaces.dense``): its nodes, where every node's decisions sit in an
architecture's token list, and ``-``, the token of a block off the path. Shared by the space, its sampling
(``hwnas.spaces.dense_sampling``) and its derivation (``hwnas.spaces.dense_derivation``); the nodes a
config gives (``nodes_of``) and the config's checks (``check_config``).
"""
from __future__ import annotations

from dataclasses import dataclass

from hwnas.spaces.chain import ArchError
from hwnas.spaces.tokens import parse_token

OFF = "-"


@dataclass(frozen=True)
class Node:
    """A node of the dense super network: 0 the source, the routing blocks, then the sink (the 1x1 head
    conv). ``res`` is its output resolution at the deploy input; ``stage`` its stage (the source's is 0, the
    sink's one past the last); ``layers`` its stacked layers."""

    index: int
    width: int
    res: int
    successors: tuple[int, ...]
    stage: int = 0
    layers: int = 0


@dataclass(frozen=True)
class Structure:
    """Where every node's decisions sit in ``Arch.layers``: ``route[n]`` (None for the last block),
    ``stack[n]`` (the stacked layers' decision indices; empty for the source) and, per route decision,
    the successor node of each choice (None for ``-``)."""

    nodes: tuple[Node, ...]
    route: tuple[int | None, ...]
    stack: tuple[tuple[int, ...], ...]
    successor: dict  # decision index -> tuple(successor node or None per choice)


def layout(choices) -> Structure:
    """The structure (routes, stacks, successors) read from the decisions' choices alone: a route's tokens
    name their successor (``to<j>:<op>``), and node ``n``'s stacked layers follow route ``n - 1``. Its nodes
    carry the successors only (width and resolution 0)."""
    route, stack, successor, n, current = [], [()], {}, 0, []
    for i, ch in enumerate(choices):
        if any(t.startswith("to") for t in ch):
            stack[n] = tuple(current)
            route.append(i)
            successor[i] = tuple(int(t.split(":", 1)[0][2:]) if t != OFF else None for t in ch)
            n, current = n + 1, []
            stack.append(())
        else:
            current.append(i)
    stack[n] = tuple(current)
    route.append(None)
    nodes = tuple(Node(k, 0, 0, tuple(dict.fromkeys(j for j in successor[r] if j is not None)) if r is not None
                       else ()) for k, r in enumerate(route))
    return Structure(nodes, tuple(route), tuple(stack), successor)


def real_indices(choices) -> list[int]:
    return [k for k, t in enumerate(choices) if t != OFF]


def nodes_of(cfg: dict) -> list[Node]:
    """The source, the blocks stage by stage and the sink, with their deploy resolutions and successors: the
    next ``reach`` nodes up to the first more than one stage ahead (the released ``_create_output_list``)."""
    r = (cfg["resolution"] - 1) // 2 + 1  # after the stride-2 stem (the first block keeps it)
    spec = [(cfg["first"]["c"], r, 0, 0)]
    for k, st in enumerate(cfg["stages"], start=1):
        r = (r - 1) // st["s"] + 1
        spec += [(c, r, k, st["n"]) for c in st["c"]]
    spec.append((cfg["head"], r, len(cfg["stages"]) + 1, 0))
    out = []
    for n, (width, res, stage, layers) in enumerate(spec):
        succ = []
        for j in range(n + 1, min(len(spec), n + 1 + cfg["reach"])):
            if spec[j][2] - stage > 1:
                break
            succ.append(j)
        out.append(Node(n, width, res, tuple(succ), stage, layers))
    return out


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_config(space: str, cfg: dict) -> None:
    where = f"space {space!r} config"
    for key in ("stem", "head", "resolution", "num_classes", "reach"):
        if not _is_int(cfg[key]) or cfg[key] < 1:
            raise ArchError(f"{where}: {key}={cfg[key]!r} must be a positive integer")
    if cfg["act"] not in ("relu", "relu6", "hswish", "silu"):
        raise ArchError(f"{where}: act={cfg['act']!r}; allowed: relu, relu6, hswish, silu")
    if not isinstance(cfg["dropout"], (int, float)) or not 0 <= cfg["dropout"] < 1:
        raise ArchError(f"{where}: dropout={cfg['dropout']!r} must be in [0, 1)")
    first = cfg["first"]
    if not isinstance(first, dict) or set(first) != {"token", "c"} or not _is_int(first["c"]) or first["c"] < 1:
        raise ArchError(f"{where}: first={first!r} must be {{'token': 'k3e1', 'c': 16}}")
    try:
        if parse_token(first["token"]).is_skip:
            raise ValueError("the fixed first block cannot be 'skip'")
    except ValueError as e:
        raise ArchError(f"{where}: first block: {e}") from None
    stages = cfg["stages"]
    if not isinstance(stages, list) or not stages:
        raise ArchError(f"{where}: stages must be a non-empty list of {{'c': [widths], 's': 1|2, 'n': layers}}")
    for i, st in enumerate(stages, start=1):
        if (not isinstance(st, dict) or set(st) != {"c", "s", "n"} or not isinstance(st["c"], list) or not st["c"]
                or not all(_is_int(c) and c >= 1 for c in st["c"]) or st["s"] not in (1, 2)
                or not _is_int(st["n"]) or st["n"] < 0):
            raise ArchError(f"{where}: stage {i} = {st!r} must be {{'c': [widths >= 1], 's': 1|2, 'n': >=0}}")
    nodes = nodes_of(cfg)
    for node in nodes[:-1]:
        if not node.successors:
            raise ArchError(f"{where}: block {node.index} reaches no later node (reach {cfg['reach']}, "
                            f"links cross at most one stage)")
    reached = {j for node in nodes for j in node.successors}
    lost = [n for n in range(1, len(nodes)) if n not in reached]
    if lost:
        raise ArchError(f"{where}: block {lost[0]} cannot be reached from any earlier block")
