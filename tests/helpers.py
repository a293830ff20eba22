"""Test helpers shared by several test files."""


class DictTable:
    """A latency table stand-in: signature -> ms, with the LatencyTable lookup interface."""

    def __init__(self, rows: dict[str, float]):
        self.rows = rows
        self.meta: dict = {}

    def latency(self, signature: str) -> float:
        return self.rows[signature]

    def require(self, signatures) -> None:
        missing = [s for s in signatures if s not in self.rows]
        if missing:
            raise KeyError(missing)


def synthetic_table(space, config, seed: int = 0) -> DictTable:
    """Every block of ``space`` at ``config`` with a latency that grows with kernel, expansion and
    channels (so the space has a real fastest and slowest architecture)."""
    import random

    from hwnas.latency.tables import space_blocks

    from hwnas.spaces.cell_ops import OPS

    rng = random.Random(seed)
    rows = {}
    for b in space_blocks(space, config):
        scale = 1.0
        tok = b.signature.split(":")[0]
        if tok.startswith("k"):
            k, e = tok[1:].split("_")[0].split("e")
            scale = int(k) * int(e) / 9
        elif tok in OPS:  # cell-space ops: dearer further down the list (pools < convs), by channels
            scale = (1 + OPS.index(tok)) / 4 * int(b.signature.split(":")[1][1:]) / 36
        elif tok == "nb201":  # nb201 ops: pool < 1x1 < 3x3, by channels
            op, c = b.signature.split(":")[1:3]
            scale = {"avg_pool_3x3": 0.5, "nor_conv_1x1": 1.5, "nor_conv_3x3": 4.0}[op] * int(c[1:]) / 16
        rows[b.signature] = round(0.05 + 0.1 * scale * (1 + rng.random() * 0.2), 6)
    return DictTable(rows)


def assert_selector_resumes_by_replay(make, task_factory, tmp_path, n: int, killed_after: int, latency=None):
    """A selector built by ``make()`` proposes the same trials when a run killed after ``killed_after`` of ``n``
    trials is resumed (by replay), and evaluates only the missing ones."""
    from hwnas.selection import read_trials, run_trials

    full = run_trials(make(), task_factory(), tmp_path / "full", n, latency=latency)
    run_trials(make(), task_factory(), tmp_path / "killed", n, latency=latency)
    path = tmp_path / "killed" / "trials.jsonl"
    path.write_text("\n".join(path.read_text().splitlines()[:killed_after]) + "\n")
    task = task_factory()
    resumed = run_trials(make(), task, tmp_path / "killed", n, latency=latency)
    assert [t["arch"] for t in resumed] == [t["arch"] for t in full]
    assert len(task.calls) == n - killed_after and len(read_trials(path)) == n
