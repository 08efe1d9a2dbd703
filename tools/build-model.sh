#!/usr/bin/env bash
# Builds evlm-base, the reference architecture at a realistic size with seeded random weights (model/build_base.py,
# docs/model.md), into the model cache, then checks it as the runtime reads it. A complete build is reused.
#
#   npm run model:base                          # -> $EVFLOW_MODEL_CACHE/evlm-base (default ~/.cache/evflow/models)
#   npm run model:base -- --force               # rebuild even if the package exists
#   npm run model:base -- --out DIR --seed 1    # elsewhere, another seed (the other options of build_base.py pass through)
#
# Needs Debian's PyTorch under /usr/bin/python3 (python3-torch python3-numpy libopenblas0-pthread) and `npm ci`.
# After a build: tools/check-model.ts (the package loads through src/model, its tokenizer's ids equal the Python
# encoder's) and test/model-package/parity.test.ts on it (onnxruntime-node vs PyTorch, greedy tokens). When reusing:
# only check-model (every file's sha256).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${EVFLOW_MODEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/evflow/models}
OUT="$CACHE/evlm-base"
FORCE=0
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --force) FORCE=1 ;;
    --out) OUT=$2; shift ;;
    *) ARGS+=("$1") ;;
  esac
  shift
done
PY=/usr/bin/python3
if ! $PY -c 'import torch, numpy' >/dev/null 2>&1; then
  echo "model:base: $PY cannot import torch and numpy (apt-get install python3-torch python3-numpy libopenblas0-pthread)" >&2
  exit 1
fi
npm run build:tools --silent
built=0
if [ -f "$OUT/manifest.json" ] && [ "$FORCE" = 0 ]; then
  echo "model:base: reusing $OUT (--force rebuilds)"
else
  start=$(date +%s)
  OMP_NUM_THREADS=1 nice -n 10 $PY model/build_base.py --out "$OUT" "${ARGS[@]}"
  echo "model:base: built in $(( $(date +%s) - start )) s"
  built=1
fi
node dist/tools/check-model.js "$OUT"
if [ "$built" = 1 ]; then
  EVFLOW_PARITY_MODEL="$OUT" npx vitest run test/model-package/parity.test.ts --testTimeout 900000 --hookTimeout 900000
fi
echo "model:base: $OUT"
