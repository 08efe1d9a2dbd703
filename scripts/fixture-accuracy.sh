#!/usr/bin/env bash
# PyTorch's accuracy (model/evaluate.py) on exactly the rows of the bundled test fixtures
# (fixtures/scenes/{test,vqa,video}.parquet), written to test/pipelines/pytorch-accuracy.json: the figures
# test/pipelines/accuracy.test.ts requires evflow's end-to-end results to match within 0.5 points.
#
#   bash scripts/fixture-accuracy.sh [CHECKPOINT]     # default out/evlm/stage3.pt (from model/recipe.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
CHECKPOINT=${1:-out/evlm/stage3.pt}
DATA=out/fixture-eval
npm run build --silent
gen() { node dist/scenes/cli.js --quiet "$@" --out "$DATA"; }
# the fixtures' own commands (fixtures/scenes/README.md), with the pre-decoded export evaluate.py reads
gen --split test --seed 3000000 --rows 512 --name test
gen --split test --kind vqa --seed 3000001 --rows 512 --name vqa
gen --split test --kind video --seed 3000002 --rows 128 --name video
OMP_NUM_THREADS=1 /usr/bin/python3 model/evaluate.py --checkpoint "$CHECKPOINT" --data "$DATA" --json "$DATA/eval.json"
node -e '
const fs = require("fs")
const e = JSON.parse(fs.readFileSync(process.argv[1], "utf8"))
const out = {
  command: "bash scripts/fixture-accuracy.sh " + process.argv[2],
  checkpoint_sha256: require("crypto").createHash("sha256").update(fs.readFileSync(process.argv[2])).digest("hex"),
  caption_exact_match: e.caption.exact_match,
  vqa_accuracy: e.vqa.accuracy,
  video_caption_exact_match: e.video.caption_exact_match,
  rows: { caption: e.caption.n, vqa: e.vqa.n, video: e.video.n },
}
fs.writeFileSync("test/pipelines/pytorch-accuracy.json", JSON.stringify(out, null, 2) + "\n")
console.log(out)
' "$DATA/eval.json" "$CHECKPOINT"
