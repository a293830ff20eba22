#!/usr/bin/env bash
# Profile and validate the shipped CPU tables of this machine, one job at a time (jobs that run side
# by side on a small machine corrupt each other's timings). Usage: [THREADS=N] [BACKENDS="torch"] tools/ship_tables.sh [space ...]
# THREADS: intra-op threads (default: every core; the device slug then ends in -<N>t). Each table gets its
# validate report beside it: <table stem>.validate/{report.json,samples.csv,scatter.png}; the validation chooses
# the statistic the table is read at (p10 or p50, --statistic auto)
set -euo pipefail
cd "$(dirname "$0")/.."
HWNAS=${HWNAS:-.venv/bin/hwnas}
spaces=${*:-proxyless fbnet spnas}
threads=()
[ -n "${THREADS:-}" ] && threads=(--threads "$THREADS")
for backend in ${BACKENDS:-onnxruntime torch}; do
  for space in $spaces; do
    context=alone
    [ "$backend" = torch ] && context=network  # torch eager rows timed in place (hwnas/latency/measure/in_network.py)
    out=$($HWNAS profile --device cpu --backend "$backend" --space "$space" --context $context "${threads[@]}" --out latency_tables/ | tail -1)
    table=$(echo "$out" | sed -E 's/^latency table: ([^ ]+) .*/\1/')
    echo "== $backend $space: $table"
    $HWNAS latency validate --table "$table" --samples 100 --statistic auto --out "${table%.csv}.validate" | tail -6
  done
done
