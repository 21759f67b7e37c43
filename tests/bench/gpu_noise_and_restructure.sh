#!/usr/bin/env bash
# The GPU noise model (seed-to-seed, same-seed, the correlation of seed effects between two configurations) and
# the restructure's before/after (the same run with the old train.py), on the builtin corpus in train mode.
#
#   bash tests/bench/gpu_noise_and_restructure.sh prepare        # data + tokenizer (builtin corpus), --check
#   bash tests/bench/gpu_noise_and_restructure.sh before OLD_DIR # OLD_DIR: `git archive <commit> | tar -x -C OLD_DIR`
#   bash tests/bench/gpu_noise_and_restructure.sh noise A42,B42,A43 part1.json   # runs of tests/bench/noise_model.py
#   uv run python tests/bench/noise_model.py --merge part*.json  # the figures, anywhere
#
# The held-out score of a baseline and a kept configuration (2026-12-07_heldout-fixed-steps-h100): a handicapped
# model.json as A (matrix_lr 0.004) and the default as B, in a ledger of their own:
#   MAX_STEPS=100 ... prepare; ... before .old; NOISE_OUT=/tmp/after ... noise A42 after.json
#   AUTORESEARCH_MODEL=/tmp/bad.json VARIANT=matrix_lr=0.04 NOISE_OUT=/tmp/keep ... noise A42,A43,A44,B42,B43,B44 k.json
#
# BUDGET_S (default 60) sets the time budget, MAX_STEPS (default none) a step count that ends each run instead;
# VARIANT (default matrix_lr=0.05) is B; NOISE_OUT (default /tmp/noise_gpu) holds the noise runs' ledger;
# OUT (default /tmp/gpu_out) receives logs and JSON. Wheels in .whl/
# (rustbpe, cudnn-frontend, ...) are installed first when the machine has no network (pip download them here).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/gpu_out}
BUDGET_S=${BUDGET_S:-60}
MAX_STEPS=${MAX_STEPS:-0}
VARIANT=${VARIANT:-matrix_lr=0.05}
NOISE_OUT=${NOISE_OUT:-/tmp/noise_gpu}
mkdir -p "$OUT"
if [ -d .whl ] && ! python3 -c "import rustbpe" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
GROUND=/tmp/ground_gpu_noise.json
python3 - "$GROUND" "$BUDGET_S" "$MAX_STEPS" <<'EOF'
import json, sys
g = json.load(open("ground.json"))
g["mode"] = "train"
g["data"].update(source="builtin", cache_dir="/tmp/ar_cache")
g["train"].update(time_budget_s=float(sys.argv[2]), **({"max_steps": int(sys.argv[3])} if int(sys.argv[3]) else {}))
g["ledger"] = {"results": "/tmp/ledger_new/results.tsv", "sessions_dir": "/tmp/ledger_new/sessions"}
json.dump(g, open(sys.argv[1], "w"), indent=2)
EOF
export AUTORESEARCH_GROUND=$GROUND
case "$1" in
    prepare)
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
        python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda)" | tee -a "$OUT/gpu.txt"
        python3 prepare.py 2>&1 | tail -n 8 | tee "$OUT/prepare.txt"
        python3 prepare.py --check 2>&1 | tee -a "$OUT/prepare.txt" ;;
    before)
        old=$2
        python3 - "$GROUND" <<'EOF'
import json, sys
g = json.load(open(sys.argv[1]))
g["ledger"] = {"results": "/tmp/ledger_old/results.tsv", "sessions_dir": "/tmp/ledger_old/sessions"}
json.dump(g, open("/tmp/ground_gpu_old.json", "w"), indent=2)
EOF
        (cd "$old" && AUTORESEARCH_GROUND=/tmp/ground_gpu_old.json python3 train.py --seed 42 \
            --description "before: the old train.py") > "$OUT/before_A42.log" 2>&1
        tail -n 22 "$OUT/before_A42.log" ;;
    noise)
        python3 tests/bench/noise_model.py --plan "$2" --variant "$VARIANT" --out "$NOISE_OUT" --json "$OUT/$3"
        tar czf "$OUT/logs_${3%.json}.tgz" -C "$NOISE_OUT/logs" . ;;
    *) echo "usage: $0 prepare | before OLD_DIR | noise PLAN JSON" >&2; exit 2 ;;
esac
