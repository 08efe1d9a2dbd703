#!/usr/bin/env bash
# The whole reference-model recipe: data generation, vision pre-training (stage 0, the stand-in for a pretrained
# encoder) and the three training stages, evaluation on the test split
# and the export of the package to fixtures/models/evlm-tiny. Run from anywhere:
#
#   bash model/recipe.sh                 # DATA=out/evlm-data RUN=out/evlm PACKAGE=fixtures/models/evlm-tiny
#
# Each step's wall-clock and CPU seconds are appended to $RUN/times.tsv; the stage logs go to $RUN/stage{0,1,2,3}.log.
# torch runs on one thread per process (OpenBLAS, libopenblas0-pthread); the data generator uses both cores,
# stages 0 and 1 run side by side, one per core, and stages 2 and 3 train as two data-parallel processes
# ("procs": 2 in their configs: gradients averaged every step).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-out/evlm-data}
RUN=${RUN:-out/evlm}
PACKAGE=${PACKAGE:-fixtures/models/evlm-tiny}
PY=/usr/bin/python3
export OMP_NUM_THREADS=1
mkdir -p "$RUN" "$DATA"
TIMES="$RUN/times.tsv"
printf 'step\treal_s\tuser_s\tsys_s\n' > "$TIMES"

# step NAME COMMAND...: run and record its times (bash's `time`: wall clock, and CPU of it and its children)
step() {
  local name=$1
  shift
  echo "== $name: $*" >&2
  TIMEFORMAT="$name	%R	%U	%S"
  { time "$@" 2>&4; } 4>&2 2>>"$TIMES"
  tail -n 1 "$TIMES" >&2
}

npm run build --silent
gen() { node dist/scenes/cli.js --quiet "$@"; }
# training data (seeds of the train split); validation (a few rows, tracked during stage 2) and test (evaluation only)
# are made on the second core beside stage 0, below
step data_train_images gen --split train --seed 1000000 --rows 50000 --out "$DATA" --name train
step data_train_video gen --split train --kind video --seed 1000001 --rows 8000 --out "$DATA" --name video
train() { $PY model/train.py --config "model/configs/stage$1.json" --data "$DATA" --out "$RUN"; }
# stage 1 (text only) does not need stage 0's vision encoder: it runs on the second core beside stage 0, from the same
# initial weights (init_seed), and stage 2 takes the ViT from stage0.pt (init_from); the small validation and test
# sets are made there too
step stage0 train 0 &
stage0=$!
step stage1 train 1 >/dev/null
step data_val_test bash -c "
  node dist/scenes/cli.js --quiet --split val --seed 2000000 --rows 256 --out '$DATA/val' --name val &&
  node dist/scenes/cli.js --quiet --split val --kind video --seed 2000001 --rows 128 --out '$DATA/val' --name video &&
  node dist/scenes/cli.js --quiet --split test --seed 3000000 --rows 512 --out '$DATA/test' --name test &&
  node dist/scenes/cli.js --quiet --split test --kind vqa --seed 3000001 --rows 512 --out '$DATA/test' --name vqa &&
  node dist/scenes/cli.js --quiet --split test --kind video --seed 3000002 --rows 512 --out '$DATA/test' --name video"
wait $stage0
for s in 2 3; do
  step "stage$s" train $s
done
step evaluate $PY model/evaluate.py --checkpoint "$RUN/stage3.pt" --data "$DATA/test" --json "$RUN/eval.json"
step export $PY model/export.py --checkpoint "$RUN/stage3.pt" --samples "$DATA/test" --evaluation "$RUN/eval.json" \
  --out "$PACKAGE"
cat "$TIMES"
