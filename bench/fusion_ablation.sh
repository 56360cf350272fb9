#!/usr/bin/env bash
# Fusion ablation on ../shared/datasets/avdigits: attention vs concat vs late, then `polyfuse compare`.
# Cheap on purpose: a seeded subset of N_TRAIN training rows (1/5 held out for validation),
# N_TEST test rows, tiny size, EPOCHS epochs. Usage: bench/fusion_ablation.sh [out_dir]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/fusion_ablation}
N_TRAIN=${N_TRAIN:-600}; N_TEST=${N_TEST:-300}; EPOCHS=${EPOCHS:-3}
DATA=$(cd ../shared/datasets/avdigits && pwd)
PY=.venv/bin/python
mkdir -p "$OUT"
# Subset tables with absolute paths (relative paths resolve against the table's folder).
$PY - "$DATA" "$OUT" "$N_TRAIN" "$N_TEST" <<'PY'
import sys, pandas as pd
data, out, n_train, n_test = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
for split, n in (("train", n_train), ("test", n_test)):
    df = pd.read_csv(f"{data}/{split}.csv").sample(n=n, random_state=0)
    for c in ("image", "audio"):
        df[c] = data + "/" + df[c]
    if split == "train":
        k = n // 5
        df[k:].to_csv(f"{out}/train.csv", index=False); df[:k].to_csv(f"{out}/val.csv", index=False)
    else:
        df.to_csv(f"{out}/test.csv", index=False)
PY
# The three trainings run side by side (each single-process, niced); then evaluation and the table.
for fusion in attention concat late; do
  rm -rf "$OUT/$fusion"
  /usr/bin/time -f "$fusion train wall %e s" nice -n 10 .venv/bin/polyfuse train --train "$OUT/train.csv" \
    --val "$OUT/val.csv" --label label --image image --audio audio --size tiny --fusion $fusion \
    --epochs "$EPOCHS" --set audio.max_seconds=1.0 --out "$OUT/$fusion" --quiet > "$OUT/$fusion.log" 2>&1 &
done
wait
for fusion in attention concat late; do
  tail -n 1 "$OUT/$fusion.log"
  nice -n 10 .venv/bin/polyfuse evaluate "$OUT/$fusion" --data "$OUT/test.csv" --group speaker >/dev/null
done
.venv/bin/polyfuse compare "$OUT/attention" "$OUT/concat" "$OUT/late" --markdown
