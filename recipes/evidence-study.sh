#!/usr/bin/env bash
# The evidence study: NormBT vs BT and the comparators on a real pretrained backbone (MiniLM-L6)
# and real fine-grained pairs (stdlib functions: one-token bug = fine, unrelated function =
# coarse), same data and budget for all; one report (normbt compare) and the gradient diagnostic.
#   bash recipes/evidence-study.sh            # 31 runs, about 2.2 min each: 70 min on 2 cores
#   DRY_RUN=1 bash recipes/evidence-study.sh  # print every command
# recipes/compare.sh's variables and recipes/configs/minilm-stdlib.env's apply (DROPOUT=0: MiniLM's).
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=recipes/stage-times.sh
source recipes/stage-times.sh
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then recipe_help "$0"; exit 0; fi

RUN_DIR=${RUN_DIR:-runs/evidence-study}
MAIN_SEEDS=${MAIN_SEEDS:-1 2 3 4 5}
OTHER_SEEDS=${OTHER_SEEDS:-1 2 3}
# margin: the data's margin column (coarse 1, fine 1/3: Llama 2's graded strength)
OTHERS=${OTHERS:-noema=normbt:--normbt.use_ema=false margin=margin:--model.margin_loss_enable ls=label_smoothing center bsr clip0.1=bt:--max_norm=0.1 ln=bt:--plugin.value_head_layernorm}
COARSE=${COARSE:-unrelated}              # coarse pairs: another module's function (shuffle: its own, reordered)
export CONFIG=recipes/configs/minilm-stdlib.env COARSE RUN_DIR

LOSSES="bt normbt" SEEDS="$MAIN_SEEDS" bash recipes/compare.sh
LOSSES="$OTHERS" SEEDS="$OTHER_SEEDS" bash recipes/compare.sh
run() { if [[ "${DRY_RUN:-0}" == 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi; }
run normbt compare "$RUN_DIR"/rm-*-seed*/ --out "$RUN_DIR/report" --baseline bt
for loss in bt normbt; do  # the paper's diagnostic: per-pair gradient norm vs distance
  run normbt diagnose --model "$RUN_DIR/rm-$loss-seed1/model" --data "$RUN_DIR/data/test.jsonl" --pairs 96 \
    --input_template '[CLS]{}' --max_len 128 --out "$RUN_DIR/diagnose-$loss"
done
