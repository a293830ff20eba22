"""The hwnas command as a user runs it: profile -> search -> export, and every bad input answered
with one line and a non-zero exit. Small settings (torch backend, width 0.25) keep it to seconds."""
import json
import shutil

import pytest

from hwnas.cli import main
from hwnas.latency.table import LatencyTable

FAST = ["--backend", "torch", "--width-mult", "0.25", "--tables", "tables"]


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("cli")


@pytest.fixture
def in_workdir(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    return workdir


def test_profile_search_export(in_workdir, capsys):
    code, out, _ = run(capsys, "profile", "--device", "cpu", "--backend", "torch", "--width-mult", "0.25",
                       "--warmup", "1", "--iterations", "3", "--rounds", "2", "--network-sets", "2", "--out", "tables")
    assert code == 0 and "fastest" in out and "latency table:" in out
    tables = list((in_workdir / "tables").rglob("proxyless-r224-b1-fp32.csv"))
    assert len(tables) == 1 and tables[0].with_suffix(".json").exists()

    code, out, _ = run(capsys, "search", "--latency-target", "50%", "--epochs", "2", "--warmup-epochs", "1",
                       "--batch-size", "128", *FAST)
    assert code == 0, out
    assert "derived architecture: proxyless[" in out and "predicted latency" in out
    runs = [p for p in (in_workdir / "runs").iterdir()]
    assert len(runs) == 1
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert 0.9 * summary["target_ms"] <= summary["predicted_latency_ms"] <= summary["target_ms"]
    config = json.loads((runs[0] / "config.json").read_text())
    assert config["device"] == "cpu" and config["table"].endswith(".csv") and config["table_device"]

    code, out, _ = run(capsys, "export", "--onnx", "--tables", "tables", "--iterations", "5")
    assert code == 0, out
    assert (runs[0] / "model.onnx").exists() and "onnx.checker ok" in out and "measured latency" in out
    report = json.loads((runs[0] / "export.json").read_text())
    assert report["rel_diff"] <= 1e-4 and report["weights"].endswith("child.pt")
    assert "inherited from the supernet, validation accuracy" in out

    # train (no --arch: the latest run, on the data and resolution it was searched on), then export takes
    # the trained weights and says what they scored
    code, out, _ = run(capsys, "train", "--epochs", "1", "--batch-size", "256")
    assert code == 0 and f"training the latest run: runs/{runs[0].name}" in out and "on digits at 32x32" in out, out
    trained = json.loads((runs[0] / "train.json").read_text())
    assert trained["resolution"] == config["train_resolution"] and 0 <= trained["test_acc"] <= 1
    code, out, _ = run(capsys, "export", "--onnx", "--tables", "tables", "--iterations", "5", "--no-measure")
    assert code == 0 and f"test accuracy {trained['test_acc']:.4f}" in out, out
    assert json.loads((runs[0] / "export.json").read_text())["weights"].endswith("trained.pt")

    code, out, _ = run(capsys, "latency", "show", "--table", str(tables[0]), "--space", "proxyless")
    assert code == 0 and "fastest architecture" in out and "slowest architecture" in out
    code, out, _ = run(capsys, "latency", "predict", "--table", str(tables[0]), "--arch", str(runs[0]), "--breakdown")
    assert code == 0 and f"{summary['predicted_latency_ms']:.3f} ms" in out and "layer 20" in out


def assert_one_line_error(code, err, *needles):
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.startswith("hwnas: error:")]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], lines[0]


def test_cuda_without_cuda(in_workdir, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the error path needs a machine without it")
    code, _, err = run(capsys, "search", "--device", "cuda:0", *FAST)
    assert_one_line_error(code, err, "cuda:0", "no CUDA")
    code, _, err = run(capsys, "profile", "--device", "cuda:0")
    assert_one_line_error(code, err, "cuda:0")


def test_profile_runtime_refusals_write_nothing(in_workdir, capsys):
    code, _, err = run(capsys, "profile", "--backend", "torch", "--mode", "cudagraph", "--out", "t")
    assert_one_line_error(code, err, "cudagraph needs a CUDA device")
    code, _, err = run(capsys, "profile", "--provider", "tensorrt", "--out", "t")
    assert_one_line_error(code, err, "--provider tensorrt does not run on --device cpu")
    code, _, err = run(capsys, "profile", "--backend", "onnxruntime", "--context", "network", "--out", "t")
    assert_one_line_error(code, err, "--context network", "torch eager on a CPU only")
    assert not (in_workdir / "t").exists()


def test_profile_in_network_from_the_cli(in_workdir, capsys):
    code, out, _ = run(capsys, "profile", "--backend", "torch", "--context", "network", "--network-sets", "1",
                       "--width-mult", "0.25", "--resolution", "32", "--warmup", "1", "--iterations", "2",
                       "--rounds", "1", "--table", "net/t.csv")
    assert code == 0 and "latency table: net/t.csv (" in out
    table = LatencyTable.load(in_workdir / "net" / "t.csv")
    assert table.meta["context"] == "network" and len(table) > 20
    # the same path cannot then take rows profiled alone
    code, _, err = run(capsys, "profile", "--backend", "torch", "--context", "alone", "--width-mult", "0.25",
                       "--resolution", "32", "--table", "net/t.csv")
    assert_one_line_error(code, err, "holds blocks profiled in place inside networks")


def test_unknown_token(in_workdir, capsys):
    bad = in_workdir / "bad.json"
    bad.write_text(json.dumps({"space": "proxyless", "layers": ["k9e6"] + ["k3e6"] * 20}))
    code, _, err = run(capsys, "export", "--arch", str(bad), "--onnx", "x.onnx")
    assert_one_line_error(code, err, "layer 0", "'k9e6'", "allowed: k3e3")
    assert not (in_workdir / "x.onnx").exists()


def test_unreachable_target_writes_nothing(in_workdir, capsys):
    before = set((in_workdir / "runs").iterdir()) if (in_workdir / "runs").exists() else set()
    code, _, err = run(capsys, "search", "--latency-target", "0.001ms", *FAST)
    assert_one_line_error(code, err, "below the fastest", "slowest")
    after = set((in_workdir / "runs").iterdir()) if (in_workdir / "runs").exists() else set()
    assert after == before
    code, _, err = run(capsys, "search", "--latency-target", "fast", *FAST)
    assert_one_line_error(code, err, "'fast'")


def test_table_missing_a_row(in_workdir, capsys):
    (src,) = list((in_workdir / "tables").rglob("proxyless-r224-b1-fp32.csv"))
    dst = in_workdir / "broken" / "t.csv"
    dst.parent.mkdir(exist_ok=True)
    shutil.copy(src.with_suffix(".json"), dst.with_suffix(".json"))
    lines = src.read_text().splitlines()
    victim = next(line for line in lines if line.startswith("k7e6"))
    dst.write_text("\n".join(line for line in lines if line != victim) + "\n")
    code, _, err = run(capsys, "search", "--latency-table", str(dst), "--latency-target", "50%", *FAST)
    assert_one_line_error(code, err, "missing", victim.split(",")[0])


def test_list_presets(capsys):
    code, out, _ = run(capsys, "export", "--list-presets")
    assert code == 0
    for name in ("proxyless_gpu", "proxyless_cpu", "proxyless_mobile", "fbnet_a", "fbnet_b", "fbnet_c",
                 "spnas", "mobilenetv2"):
        assert name in out
    assert "3,504,872" in out  # MobileNetV2
