"""Does timing a model beside reference networks of a table's validation (whose measured latency at
validation time is known) steady its measured latency against the prediction? Repeats, N times, the
model alone and the model beside three fit networks of the validation (25/50/75% of their latency),
and prints raw and compensated errors. The experiment behind hwnas/latency/reference.py:

    python tools/drift_references.py RUN_DIR <table>.validate/samples.csv N PREDICTED_MS

RUN_DIR is a search run (arch.json, child.pt); PREDICTED_MS is `hwnas latency predict` of it."""
import csv, sys, time, numpy as np
from pathlib import Path
from hwnas.exporting import ArchSource, build_for_export
from hwnas.spaces import Arch
from hwnas.spaces.builder import build_child
from hwnas.latency.measure.timing import CallRunner, measure_interleaved, random_inputs
from hwnas.onnx import export_onnx_bytes, ort_session

run, samples, repeats = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
arch = Arch.load(run / "arch.json")
rows = [r for r in csv.DictReader(open(samples)) if r["split"] == "fit"]
rows.sort(key=lambda r: float(r["measured_ms"]))
refs = [rows[int(q * (len(rows) - 1))] for q in (0.25, 0.5, 0.75)]
res = arch.config["resolution"]
inputs = random_inputs((1, 3, res, res), 3, seed=1)
arrays = [x.numpy() for x in inputs]
def runner(model):
    s = ort_session(export_onnx_bytes(model, inputs[0]), device="cpu", threads=2)
    n = s.get_inputs()[0].name
    return CallRunner(lambda a: s.run(None, {n: a}), arrays)
target = runner(build_for_export(ArchSource(arch, run, run, run / "child.pt")))
ref_runners = [runner(build_child(Arch(arch.space, arch.config, r["arch"].split(" "))).eval()) for r in refs]
ref_then = np.array([float(r["measured_ms"]) for r in refs])
pred = float(sys.argv[4])
for k in range(repeats):
    st = measure_interleaved([target] + ref_runners, warmup=10, iterations=50, rounds=5, min_round_s=1.0)
    now = np.array([s["p10"] for s in st[1:]])
    s = float(np.median(now / ref_then))
    alone = measure_interleaved([target], warmup=10, iterations=50, rounds=5, min_round_s=1.0)[0]["p10"]
    print(f"{time.strftime('%H:%M:%S')} alone {alone:.3f} ({alone/pred-1:+.1%})  beside refs {st[0]['p10']:.3f} ({st[0]['p10']/pred-1:+.1%})  "
          f"refs now/then {np.round(now/ref_then, 3)}  compensated {st[0]['p10']/s:.3f} ({st[0]['p10']/s/pred-1:+.1%})", flush=True)
