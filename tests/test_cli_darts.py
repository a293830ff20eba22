"""The DARTS family from the command line: profile the cell space, search with a latency target, export;
bad inputs answered with one line and nothing written. Tiny settings (8x8 digits, C=4 search network,
C=8 five-cell deploy network, torch backend) keep it to seconds."""
import json

import pytest

from hwnas.cli import main
from tests.test_cli import assert_one_line_error, run

DEPLOY = ["--config", "C=8", "--config", "layers=5"]
TINY = [*DEPLOY, "--config", "search_C=4", "--config", "search_layers=3", "--train-resolution", "8",
        "--batch-size", "256", "--backend", "torch", "--tables", "tables"]


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_profile_search_export_darts_with_a_target(here, capsys):
    code, out, _ = run(capsys, "profile", "--space", "darts", *DEPLOY, "--device", "cpu", "--backend", "torch",
                       "--warmup", "1", "--iterations", "3", "--rounds", "2", "--out", "tables")
    assert code == 0 and "space 'darts' at 32x32" in out, out
    code, out, err = run(capsys, "search", "--method", "darts", "--epochs", "1", "--latency-target", "50%", *TINY)
    assert code == 0, err
    assert "derived genotype: Genotype(normal=[" in out
    run_dir = next((here / "runs").iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert 0.9 * summary["target_ms"] <= summary["predicted_latency_ms"] <= summary["target_ms"]
    assert (run_dir / "alpha_evolution.png").exists() and not (run_dir / "child.pt").exists()
    history = [json.loads(line) for line in (run_dir / "arch_history.jsonl").read_text().splitlines()]
    assert history[-1]["genotype"].startswith("Genotype(")
    code, out, err = run(capsys, "export", "--arch", str(run_dir), "--onnx", "--tables", "tables", "--iterations", "3")
    assert code == 0, err
    assert "onnx.checker ok" in out and (run_dir / "model.onnx").exists()
    code, out, err = run(capsys, "train", "--arch", str(run_dir), "--epochs", "1", "--batch-size", "256")
    assert code == 0 and "test accuracy" in out, err

    table = next((here / "tables").rglob("darts-r32-b1-fp32.csv"))
    code, out, err = run(capsys, "latency", "show", "--table", str(table))
    assert code == 0 and "fastest architecture" in out and "normal 0->2" in out, err
    code, out, err = run(capsys, "latency", "validate", "--table", str(table), "--samples", "6", "--repeats", "2",
                         "--iterations", "3", "--rounds", "1", "--warmup", "1", "--out", "val", "--no-store")
    assert code == 0 and "Kendall tau" in out and "noise floor: 2 networks built twice" in out, err
    rows = (here / "val" / "samples.csv").read_text().splitlines()
    assert len(rows) == 7 and (here / "val" / "scatter.png").exists()


@pytest.mark.parametrize("method", ["pcdarts", "gdas", "pdarts"])
def test_each_method_runs_on_the_cell_space(here, capsys, method):
    extra = ["--opt", "depths=[3,3,4]"] if method == "pdarts" else []
    code, out, err = run(capsys, "search", "--method", method, "--no-latency", *TINY, *extra)
    assert code == 0, err
    assert "derived genotype" in out
    config = json.loads(next((here / "runs").iterdir()).joinpath("config.json").read_text())
    assert config["space"] == "darts" and config["epochs"] == (3 if method == "pdarts" else 2)


def test_second_order_runs(here, capsys):
    code, out, err = run(capsys, "search", "--method", "darts", "--order", "2", "--epochs", "1", "--no-latency", *TINY)
    assert code == 0, err
    assert json.loads(next((here / "runs").iterdir()).joinpath("config.json").read_text())["options"]["order"] == 2


def test_bad_inputs(here, capsys):
    with pytest.raises(SystemExit) as e:
        main(["search", "--method", "darts", "--order", "3"])
    assert e.value.code == 2 and "--order: invalid choice: 3" in capsys.readouterr().err
    code, _, err = run(capsys, "search", "--method", "pcdarts", "--space", "spnas")
    assert_one_line_error(code, err, "'pcdarts' does not apply to space 'spnas'", "darts, nb201, proxyless, fbnet")
    code, _, err = run(capsys, "search", "--method", "proxyless", "--space", "darts")
    assert_one_line_error(code, err, "'proxyless' does not apply to space 'darts'", "methods for 'darts': darts, enas, gdas, oneshot, pcdarts, pdarts, spos")
    bad = here / "g.json"
    bad.write_text(json.dumps({"space": "darts", "genotype": {
        "normal": [["sep_conv_3x3", 0], ["sep_conv_3x3", 9]] + [["skip_connect", 0], ["skip_connect", 1]] * 3,
        "reduce": [["max_pool_3x3", 0], ["max_pool_3x3", 1]] * 4}}))
    code, _, err = run(capsys, "export", "--arch", str(bad), "--onnx", "x.onnx")
    assert_one_line_error(code, err, "normal cell, node 2: input 9 does not exist")
    bad.write_text(json.dumps({"space": "darts", "genotype": {
        "normal": [["conv_9x9", 0], ["sep_conv_3x3", 1]] + [["skip_connect", 0], ["skip_connect", 1]] * 3,
        "reduce": [["max_pool_3x3", 0], ["max_pool_3x3", 1]] * 4}}))
    code, _, err = run(capsys, "export", "--arch", str(bad), "--onnx", "x.onnx")
    assert_one_line_error(code, err, "unknown op 'conv_9x9'")
    assert not (here / "runs").exists() and not (here / "x.onnx").exists()
