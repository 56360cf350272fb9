#!/usr/bin/env bash
# Handwritten digit images + spoken digits (../shared/datasets/avdigits): train the fused model,
# evaluate with a report, explain a few rows, export to ONNX int8 and serve it.
# About 10 minutes on 2 CPU cores. Usage: bash examples/avdigits.sh [DATA_DIR] [OUT]
set -euo pipefail
DATA=${1:-../shared/datasets/avdigits}
OUT=${2:-runs/avdigits-example}

polyfuse train --config configs/avdigits.yaml --train "$DATA/train.csv" --val "$DATA/test.csv" \
    --image image --audio audio --label label --max-minutes 10 --out "$OUT/run"
polyfuse evaluate "$OUT/run" --data "$DATA/test.csv" --report            # metrics.json + report.html
# Five test rows with absolute paths (relative paths resolve against the table's own folder).
awk -F, -v d="$(cd "$DATA" && pwd)" 'NR==1{print; next} NR<=6{print d"/"$1","d"/"$2","$3","$4}' \
    "$DATA/test.csv" > "$OUT/five.csv"
polyfuse explain "$OUT/run" --data "$OUT/five.csv" --out "$OUT/explain"   # explain/index.html
polyfuse export "$OUT/run" --format onnx --quantize int8 --out "$OUT/onnx"   # prints the parity check
polyfuse predict "$OUT/run" --data "$OUT/five.csv" --out "$OUT/five_predictions.csv"

# Serve the int8 model on 127.0.0.1 and ask it about one row (files go as multipart uploads).
polyfuse serve "$OUT/onnx" --port 8765 &
SERVER=$!
trap 'kill $SERVER' EXIT
until curl -sf localhost:8765/readyz > /dev/null; do sleep 1; done
ROW=$(sed -n 2p "$OUT/five.csv")
curl -s -F image=@"$(echo "$ROW" | cut -d, -f1)" -F audio=@"$(echo "$ROW" | cut -d, -f2)" localhost:8765/v1/predict; echo
