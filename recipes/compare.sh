#!/usr/bin/env bash
# Compare reward-model losses: train one RM per loss and seed, evaluate each on held-out pairs
# (normbt eval-rm), then write one report with intervals and plots (normbt compare).
#   bash recipes/compare.sh                         # the tiny CPU default (recipes/configs/tiny-cpu.env)
#   CONFIG=recipes/configs/<your>.env LOSSES="bt normbt" SEEDS="1 2 3" bash recipes/compare.sh
# Downstream PPO with vLLM rollouts and policy evaluation are not part of this recipe yet.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  sed -n '2,5p' "$0"; echo
  echo "Environment (defaults): CONFIG=recipes/configs/tiny-cpu.env LOSSES='bt normbt' SEEDS=1"
  echo "  LOSSES entries: a loss name, or label=loss:--flag=value,--flag=value for a variant,"
  echo "  e.g. 'bt normbt noema=normbt:--normbt.use_ema=false clip0.1=bt:--max_norm=0.1'"
  echo "  RUN_DIR=runs/compare BASELINE=bt SUBSET_KEY (group eval accuracy by a column),"
  echo "  plus every variable of recipes/rm.sh"
  exit 0
fi

CONFIG=${CONFIG:-recipes/configs/tiny-cpu.env}
LOSSES=${LOSSES:-bt normbt}
SEEDS=${SEEDS:-1}
RUN_DIR=${RUN_DIR:-runs/compare}
BASELINE=${BASELINE:-bt}
# shellcheck source=/dev/null
source "$CONFIG"
export NPROC ZERO MICRO_BS BS EPOCHS LR MAX_LEN ATTN PROMPT_KEY INPUT_TEMPLATE
mkdir -p "$RUN_DIR"

if [[ "${EVIDENCE:-0}" == 1 ]]; then
  echo "compare.sh: stdlib preference pairs and MiniLM-L6 -> $RUN_DIR/data"
  python -m normbt_plugin.evidence --out "$RUN_DIR/data" --n_train "$N_TRAIN" --n_test "$N_TEST" \
    > "$RUN_DIR.data.log" 2>&1 || { cat "$RUN_DIR.data.log" >&2; exit 1; }
  export MODEL="$RUN_DIR/data/minilm" DATASET="$RUN_DIR/data/train.jsonl"
  export EVAL_DATASET="$RUN_DIR/data/test.jsonl"
elif [[ "${TINY:-0}" == 1 ]]; then
  echo "compare.sh: building the tiny model, tokenizer and data offline -> $RUN_DIR/tiny"
  python -m normbt_plugin.tiny --out "$RUN_DIR/tiny" --n_train "$N_TRAIN" --n_test "$N_TEST"
  export MODEL="$RUN_DIR/tiny/model" DATASET="$RUN_DIR/tiny/train.jsonl"
  export EVAL_DATASET="$RUN_DIR/tiny/test.jsonl"
fi

runs=()
for seed in $SEEDS; do
  for entry in $LOSSES; do
    label=${entry%%=*}                      # label=loss:--flag=value,...  or just a loss name
    spec=${entry#*=}
    loss=${spec%%:*}
    flags=()
    [[ "$spec" == *:* ]] && IFS=, read -r -a flags <<< "${spec#*:}"
    out="$RUN_DIR/rm-$label-seed$seed"
    LOSS=$loss LABEL=$label SEED=$seed OUT=$out bash recipes/rm.sh "${flags[@]}" > "$out.log" 2>&1 \
      || { echo "compare.sh: $label seed $seed failed, see $out.log" >&2; tail -20 "$out.log" >&2; exit 1; }
    echo "compare.sh: trained $label ($loss ${flags[*]}) seed $seed in $out"
    normbt eval-rm --model "$out/model" --data "${EVAL_DATASET:?set EVAL_DATASET}" \
      --max_len "$MAX_LEN" ${SUBSET_KEY:+--subset_key "$SUBSET_KEY"} --out "$out/eval.json" \
      ${INPUT_TEMPLATE:+--input_template "$INPUT_TEMPLATE"} \
      > "$out.eval.log" 2>&1 \
      || { echo "compare.sh: eval of $out failed, see $out.eval.log" >&2; tail -20 "$out.eval.log" >&2; exit 1; }
    runs+=("$out")
  done
done

normbt compare "${runs[@]}" --out "$RUN_DIR/report" --baseline "$BASELINE"
echo "compare.sh: downstream PPO + policy evaluation are not in this recipe yet (reward models only)."
