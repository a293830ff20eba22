#!/usr/bin/env bash
# One lent-GPU session's checks, packed into one call (the lease is 15 minutes, start included). From the
# source-tree root, with nothing installed (no registry there: hwnas runs from the tree):
#
#     OUT=/some/dir bash tools/gpu_session.sh
#
# Stages, each under its own time limit so that one that hangs costs only its own share, in the order of
# what matters most:
#   1. nccl   torchrun on CUDA (nccl): a 1-rank proxyless search with a target and fused kernels on
#             cuda:0, then `hwnas export --onnx`; a 2-rank launch on a 1-GPU node must be refused in one line
#   2. kernels bench/gpu_check.sh: the kernel tests on CUDA, the copy bandwidth, the triton and eager
#             benchmarks (not the torch.compile ones: compiling their 20 shapes takes longer than the lease)
#   3. profile `hwnas profile --device cuda:0 --backend torch` of the proxyless space (224, batch 1, eager)
#             and its `hwnas latency validate` report (60 networks, 50 calls x 3 rounds each: the lease)
# $OUT gets three files (the device tool brings back at most 8): gpu_session.tgz (every log, the runs, the
# kernel reports), latency_tables_gpu.tgz (the new table, its sidecar and validate report, to unpack in the
# tree and commit) and summary.txt, each stage's exit status and time, also printed last. DEV=cpu
# TABLES=/tmp/x runs stages 1 and 3 on the CPU (gloo), to check the script without a GPU.
set -u -o pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
FINAL="${OUT:-${TMPDIR:-/tmp}/hwnas_gpu_session}"  # gets 3 files: gpu_session.tgz, latency_tables_gpu.tgz, summary.txt
mkdir -p "$FINAL"
FINAL="$(cd "$FINAL" && pwd)"
OUT="$(mktemp -d)"  # logs and work, packed into $FINAL/gpu_session.tgz at the end
touch "$OUT/.start"
PY="${PYTHON:-python3}"
[[ $PY == */* && $PY != /* ]] && PY="$ROOT/$PY"  # the stages run in $W
export PYTHONUNBUFFERED=1 HWNAS_PROGRESS=0
unset TRITON_INTERPRET
W="$OUT/work"
mkdir -p "$W"

# hwnas.kernels is kernels/ through setuptools' package-dir mapping: without an install, build that layout
# from symlinks (as bench/gpu_check.sh does) and put it first on PYTHONPATH.
if ! "$PY" -c "import hwnas.kernels" >/dev/null 2>&1; then
    TREE="$(mktemp -d)"
    mkdir -p "$TREE/hwnas"
    for f in "$ROOT"/hwnas/*; do ln -s "$f" "$TREE/hwnas/"; done
    ln -s "$ROOT/kernels" "$TREE/hwnas/kernels"
    export PYTHONPATH="$TREE${PYTHONPATH:+:$PYTHONPATH}"
fi
DEV="${DEV:-cuda:0}" TABLES="${TABLES:-$ROOT/latency_tables}"
export PY ROOT OUT FINAL W DEV TABLES
declare -a SUMMARY=()
STAGES="${STAGES:-nccl kernels profile}"
stage() {  # stage NAME LIMIT_S CMD...: run CMD in $W with a time limit, log to $OUT/NAME.log
    local name=$1 limit=$2; shift 2
    [[ " $STAGES " == *" ${name%%-*} "* ]] || return 0
    local t0=$SECONDS
    echo "== $name (limit ${limit}s)"
    (cd "$W" && timeout "$limit" "$@") 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    SUMMARY+=("$(printf '%-26s rc %-3s %4ss' "$name" "$rc" "$((SECONDS - t0))")")
}

nccl() {
    set -x
    local tables="$W/tables" ; mkdir -p runs
    "$PY" -m hwnas profile --device "$DEV" --backend torch --width-mult 0.25 --warmup 3 --iterations 20 --rounds 2 \
        --context alone --out "$tables" || return 1
    "$PY" -m torch.distributed.run --standalone --nproc-per-node 1 -m hwnas search --method proxyless --latency-target 50% \
        --latency-device "$DEV" --backend torch --width-mult 0.25 --tables "$tables" --device "$DEV" \
        --epochs 2 --warmup-epochs 1 --batch-size 256 --runs runs || return 2
    run=$(ls -d runs/* | head -1)
    grep -h "torchrun:\|epoch" "$run/log.txt" | head -20
    "$PY" -c "import json,sys; s=json.load(open(sys.argv[1])); print({k: s.get(k) for k in ('ranks','target_ms','predicted_latency_ms','device')})" "$run/summary.json"
    "$PY" -m hwnas export --onnx --arch "$run" --tables "$tables" --iterations 20 || return 3
    # the same search without torchrun, for the step time a rank computes between all-reduces
    "$PY" -m hwnas search --method proxyless --latency-target 50% --latency-device "$DEV" --backend torch \
        --width-mult 0.25 --tables "$tables" --device "$DEV" --epochs 2 --warmup-epochs 1 --batch-size 256 \
        --runs runs-single || return 4
    grep -h "epoch" runs-single/*/log.txt | head -10
    # 2 ranks on a 1-GPU node: refused in one line, nothing written
    "$PY" -m torch.distributed.run --standalone --nproc-per-node 2 -m hwnas search --method proxyless --latency-target 50% \
        --latency-device "$DEV" --backend torch --width-mult 0.25 --tables "$tables" --device "$DEV" \
        --epochs 1 --warmup-epochs 0 --runs runs-two 2>&1 | grep -m3 "LOCAL_RANK\|error" ; true
    ls runs-two 2>/dev/null | wc -l
}

profile() {
    set -x
    local tables="$TABLES"
    out=$("$PY" -m hwnas profile --device "$DEV" --backend torch --space proxyless --out "$tables" | tee /dev/stderr | tail -1)
    table=$(echo "$out" | sed -E 's/^latency table: ([^ ]+) .*/\1/')
    "$PY" -m hwnas latency validate --table "$table" --samples 60 --iterations 50 --rounds 3 --statistic auto --out "${table%.csv}.validate" | tail -8
}

export -f nccl profile
stage nccl "${NCCL_TIMEOUT:-100}" bash -c nccl
stage kernels "${KERNELS_TIMEOUT:-270}" env OUT="$OUT/kernels" TEST_TIMEOUT="${TEST_TIMEOUT:-160}" \
    BENCH_TIMEOUT="${BENCH_TIMEOUT:-100}" BENCH_K="not compile" bash "$ROOT/bench/gpu_check.sh"
stage profile "${PROFILE_TIMEOUT:-150}" bash -c profile

rm -rf "$W/runs"/*/checkpoints "$W/runs-single"/*/checkpoints 2>/dev/null
# what the profile stage wrote, a table cut short by its limit too (hwnas profile resumes it)
(cd "$TABLES/.." && find "$(basename "$TABLES")" -type f -newer "$OUT/.start" | tar czf "$FINAL/latency_tables_gpu.tgz" -T -)
printf '%s\n' "${SUMMARY[@]}" >"$OUT/summary.txt"
cp "$OUT/summary.txt" "$FINAL/summary.txt"
tar czf "$FINAL/gpu_session.tgz" -C "$OUT" . 2>/dev/null
echo "== gpu_session (files in $FINAL)"
cat "$FINAL/summary.txt"
