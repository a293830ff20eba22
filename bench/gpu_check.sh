#!/usr/bin/env bash
# GPU check of hwnas.kernels on a lent CUDA machine (no internet needed). From the source-tree root:
#
#     PYTHONPATH=. OUT=/some/dir bash bench/gpu_check.sh
#
# It runs the kernel tests on CUDA, measures the device's copy bandwidth (a large device-to-device
# copy), runs the benchmarks, and writes under $OUT (default $TMPDIR/hwnas_gpu_check), 7 files:
#   env.txt        GPU, driver, python / torch / triton versions, git commit
#   tests.log      pytest tests/kernels on CUDA       tests.xml  its junit report
#   copy_bw.json   device-to-device copy bandwidth (GB/s, bytes read + written)
#   bench.json     pytest-benchmark JSON (copy it to bench/results/<gpu>/ to keep it)
#   bench.log      the benchmark run's console output
#   SUMMARY.md     bench/summarize.py of bench.json, with % of the copy bandwidth
# Stage time limits (seconds): TEST_TIMEOUT (300), BENCH_TIMEOUT (420); BENCH_K selects benchmarks (pytest -k). Exit status: 0 only if the
# tests and the benchmarks passed.
set -u -o pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
OUT="${OUT:-${TMPDIR:-/tmp}/hwnas_gpu_check}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET

# hwnas.kernels is the kernels/ folder through setuptools' package-dir mapping. Without an install,
# build that layout from symlinks in a temporary folder, put it first on PYTHONPATH and run Python
# from there (python puts its working directory first on sys.path, where ./hwnas would shadow it).
RUN="$ROOT"
if ! "$PY" -c "import hwnas.kernels" >/dev/null 2>&1; then
    RUN="$(mktemp -d)"
    mkdir -p "$RUN/hwnas"
    for f in "$ROOT"/hwnas/*; do ln -s "$f" "$RUN/hwnas/"; done
    ln -s "$ROOT/kernels" "$RUN/hwnas/kernels"
    export PYTHONPATH="$RUN${PYTHONPATH:+:$PYTHONPATH}"
fi
cd "$RUN"

{
    date -u +"date: %Y-%m-%dT%H:%M:%SZ"
    echo "commit: $(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)" \
        "$(git -C "$ROOT" status --porcelain 2>/dev/null | head -c1 | sed 's/./(dirty)/')"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
    "$PY" - <<'EOF'
import sys, torch
print("python", sys.version.split()[0])
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
try:
    import triton
    print("triton", triton.__version__)
except ImportError:
    print("triton: not installed")
import hwnas.kernels
print("hwnas.kernels from", hwnas.kernels.__file__)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", p.name, "SMs", p.multi_processor_count, "capability", f"{p.major}.{p.minor}")
else:
    print("NO CUDA DEVICE: the checks below will not exercise the GPU")
EOF
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

echo "== kernel tests on CUDA"
timeout "${TEST_TIMEOUT:-300}" "$PY" -m pytest "$ROOT/tests/kernels" --rootdir "$ROOT" -q -p no:cacheprovider \
    --junitxml="$OUT/tests.xml" 2>&1 | tee "$OUT/tests.log"
tests_rc=${PIPESTATUS[0]}

echo "== device-to-device copy bandwidth"
"$PY" - "$OUT/copy_bw.json" <<'EOF' 2>&1 | tee -a "$OUT/env.txt"
import json, sys, torch
assert torch.cuda.is_available(), "no CUDA device"
n = 1 << 30  # 1 GiB copied per iteration, well past the L2 cache
src = torch.empty(n, dtype=torch.uint8, device="cuda").random_()
dst = torch.empty_like(src)
for _ in range(5):
    dst.copy_(src)
start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
times = []
for _ in range(20):
    start.record()
    dst.copy_(src)
    end.record()
    end.synchronize()
    times.append(start.elapsed_time(end) / 1e3)
times.sort()
median = times[len(times) // 2]
res = {"device": torch.cuda.get_device_name(0), "bytes_copied": n, "median_s": median,
       "GB/s": 2 * n / median / 1e9, "min_s": times[0], "note": "GB/s counts bytes read + written"}
json.dump(res, open(sys.argv[1], "w"), indent=1)
print(f"copy bandwidth: {res['GB/s']:.0f} GB/s (read + write), median of 20 copies of 1 GiB")
EOF

echo "== benchmarks"
timeout "${BENCH_TIMEOUT:-420}" "$PY" -m pytest "$ROOT/bench" --rootdir "$ROOT" -q -p no:cacheprovider ${BENCH_K:+-k "$BENCH_K"} \
    --benchmark-json="$OUT/bench.json" --benchmark-columns=min,median,iqr,ops 2>&1 | tee "$OUT/bench.log"
bench_rc=${PIPESTATUS[0]}

if [ -s "$OUT/bench.json" ]; then
    copy_arg=()
    [ -s "$OUT/copy_bw.json" ] && copy_arg=(--copy-bw "$OUT/copy_bw.json")
    "$PY" "$ROOT/bench/summarize.py" "$OUT/bench.json" "${copy_arg[@]}" --out "$OUT/SUMMARY.md" && cat "$OUT/SUMMARY.md"
fi

echo "== gpu_check: tests exit $tests_rc, benchmarks exit $bench_rc (124 = stage timed out); files in $OUT"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
