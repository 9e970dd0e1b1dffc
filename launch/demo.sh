#!/usr/bin/env bash
# The main job end to end on generated scenes (no download), small enough for a 2-core CPU:
# scenes -> mask inspection -> shards -> training -> evaluation -> sliding-window prediction.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 WANDB_MODE=disabled
OUT=${DEMO_DIR:-demo}
rm -rf "$OUT"
step() { printf '\n== %s\n' "$*"; }

step "1/6 generate synthetic land-cover scenes (Dubai-style layout, colour masks)"
python launch/make_synthetic.py --out "$OUT/scenes" --groups 6 --per-group 3 --size 384 --seed 0

step "2/6 inspect the masks and draft a classes file"
python launch/inspect_masks.py "$OUT/scenes/*/masks/*.png" --write-classes "$OUT/classes-draft.yaml"
echo "(the generator also wrote the edited file $OUT/scenes/classes.yaml, with no-data marked ignore)"

step "3/6 build webdataset shards, split by scene (prints the manifest summary)"
python launch/build_shards.py --images "$OUT/scenes/*/images/*.jpg" --masks "$OUT/scenes/*/masks/*.png" \
  --classes "$OUT/scenes/classes.yaml" --out "$OUT/shards" --tile 192 --val 0.2 --test 0.2 \
  --samples-per-shard 16 --workers 2

step "4/6 train a tiny UNet on the CPU (the script accelerate launch runs on GPUs)"
python launch/train.py --config launch/configs/tiny-cpu.yaml --out "$OUT/run" \
  --set data.shards="$OUT/shards"

step "5/6 evaluate the best checkpoint on the test split"
python launch/evaluate.py --model "$OUT/run" --shards "$OUT/shards" --split test --out "$OUT/eval"
cat "$OUT/eval/metrics.md"

step "6/6 predict a whole scene with the weighted sliding window"
python launch/make_synthetic.py --out "$OUT/big" --groups 1 --per-group 1 --size 700x900 --seed 99
python launch/predict.py --model "$OUT/run" --input "$OUT/big/Scene 1/images/*.jpg" --out "$OUT/predictions" \
  --tile 192 --overlap 0.25
python launch/show.py --image "$OUT/big/Scene 1/images/scene_part_001.jpg" \
  --truth "$OUT/big/Scene 1/masks/scene_part_001.png" --classes "$OUT/big/classes.yaml" \
  --prediction "$OUT/predictions/scene_part_001_mask.png" --out "$OUT/panel.png"

printf '\nDone. Look at %s/run (history, plots, best/), %s/eval, %s/predictions and %s/panel.png\n' \
  "$OUT" "$OUT" "$OUT" "$OUT"
