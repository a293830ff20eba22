"""The README is true: short, its commands parse as written, CI runs its test command, and its Python API
example runs (with the budgets cut to test size)."""
import re
import shlex
from pathlib import Path

import pytest

from hwnas.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _commands() -> list[list[str]]:
    """Every `hwnas ...` the README shows: in code spans and in bash blocks (split at &&)."""
    text = re.sub(r"^\| `hwnas [^`]+` \|", "|", README, flags=re.M)  # a table's first column names a command
    found = [m for m in re.findall(r"`(hwnas [^`<]+)`", text)]
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for part in block.replace("\\\n", " ").split("&&"):
            part = part.strip()
            if re.match(r"(\S*/)?hwnas ", part):
                found.append(part.split("/")[-1] if part.startswith(".") else part)
    return [shlex.split(c)[1:] for c in found]


def test_the_readme_is_a_guide_not_a_diary():
    assert len(README.encode()) <= 10 * 1024
    assert not re.search(r"20\d\d-\d\d-\d\d", README)  # dated evidence lives in docs/ and bench/results/


def test_every_command_the_readme_shows_parses():
    commands = _commands()
    assert len(commands) >= 15, commands
    parser = build_parser()
    verbs = set()
    for argv in commands:
        try:
            args = parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"README command does not parse: hwnas {' '.join(argv)}")
        verbs.add(args.command)
    assert verbs == {"profile", "search", "worker", "train", "export", "compare", "rank", "latency"}


def test_ci_runs_the_readme_test_command():
    blocks = re.findall(r"```bash\n(.*?)```", README, re.S)
    test_command = next(b.strip() for b in blocks if "pytest" in b)
    assert test_command in (ROOT / ".ci" / "run").read_text()
    # the quick start is one line that ends in an exported model
    assert blocks[0].strip().endswith("hwnas export --onnx")


def test_the_python_api_example_runs(quick_tables, tmp_path):
    import hwnas

    code = re.search(r"```python\n(.*?)```", README, re.S).group(1)
    cut = {'epochs=4)': 'epochs=1, warmup_epochs=0, config={"width_mult": 0.25})', "epochs=2)": "epochs=1)"}
    for long, short in cut.items():
        assert code.count(long) == 1, f"the README's example changed: {long!r} not found once"
        code = code.replace(long, short)
    # ``quick_tables``: a quick table for the smaller network (the example's own would profile for minutes)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    result, report = scope["result"], scope["report"]
    s = result.summary
    assert s["predicted_latency_ms"] <= s["target_ms"] and Path(result.run_dir, "arch.json").exists()
    assert Path(report.onnx_path).exists() and report.measured_ms["p50"] > 0
    assert report.predicted_ms == pytest.approx(hwnas.predict(result.run_dir))
    assert 0.0 <= scope["trained"]["test_acc"] <= 1.0
    assert result.config.table.startswith(str(quick_tables)) and result.config.table_overlay is None
