#!/usr/bin/env bash
# Best-of-N on code (docs/results.md, "Downstream on code"): when a reward model picks one of N programs a
# policy wrote, does a NormBT RM pick working programs more often? A policy completes each HumanEval
# problem N times (vLLM; normbt_plugin.policy_studies.code_bon), each completion is run against the
# problem's own tests, the problems are split into halves once, and reward models of each arm, BT and NormBT
# paired by seed, score every candidate (code_bon_picks); an RM's pick is its best-scored parsed program.
#   transfer   the SmolLM2 evidence study's RMs (stdlib pairs; recipes/smollm2-evidence-study.sh, which also
#              scores them on HumanEval's pairs): its backbone is the packaged SmolLM2
#   onpolicy   RMs trained on the train half's pass-over-fail pairs of the candidates (recipes/rm.sh)
# Every RM scores the candidates and is then deleted (KEEP_MODELS=1 keeps it): its score file is the record.
#   bash recipes/code-bon-study.sh                   # resumable: a finished stage is skipped
#   DRY_RUN=1 bash recipes/code-bon-study.sh         # print every command
#   CONFIG=recipes/configs/code-bon-gpu.env bash recipes/code-bon-study.sh   # a hub code model, one GPU node
# The CONFIG sets defaults; the environment wins. A POLICY or RM_MODEL without a "/" is a packaged model
# (`normbt models list`), fetched into OUT/models; anything else is a folder or a hub name.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=recipes/stage-times.sh
source recipes/stage-times.sh
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then recipe_help "$0"; exit 0; fi
check_until "$0"

CONFIG=${CONFIG:-recipes/configs/code-bon-smollm2.env}
# shellcheck source=recipes/configs/code-bon-smollm2.env
source "$CONFIG"  # not exported: the transfer arm's recipe keeps its own settings
OUT=${OUT:-runs/code-bon}
CANDIDATES=${CANDIDATES:-$OUT/candidates}       # candidates.jsonl.gz and split.json; made here when absent
dry=${DRY_RUN:-0} who=code-bon
export PATH="$PWD/.venv/bin:$PATH" DRY_RUN=$dry
mkdir -p "$OUT"
times="$OUT/stage_times.tsv"
[[ "$dry" == 1 ]] || touch "$times"
run() { stage_run "$who" "$OUT/logs" "$times" "$@"; }  # run NAME DONE|--out cmd...: see stage-times.sh
scores="$OUT/scores"

model() {  # model NAME: a packaged model fetched into OUT/models (its folder printed), else NAME itself
  if [[ "$1" == */* || -d "$1" ]]; then echo "$1"; return; fi
  run "model-$1" "$OUT/models/$1/config.json" normbt models get "$1" --out "$OUT/models/$1" >&2
  echo "$OUT/models/$1"
}

if [[ "$dry" == 1 || ! -e "$CANDIDATES/candidates.jsonl.gz" ]]; then policy=$(model "$POLICY"); fi
run candidates "$CANDIDATES/candidates.jsonl.gz" python -m normbt_plugin.policy_studies.code_bon sample \
  --policy "${policy:-}" --out "$CANDIDATES" --fraction "$FRACTION" --samples "$SAMPLES" --problems "$PROBLEMS" \
  --max_new "$MAX_NEW" --temperature "$TEMPERATURE" --seed "$SAMPLE_SEED"
run split "$CANDIDATES/split.json" python -m normbt_plugin.policy_studies.code_bon split --dir "$CANDIDATES"
stop_point candidates

if [[ " $ARMS " == *" transfer "* ]]; then
  run transfer "" env OUT="$OUT/transfer" MAIN="$LOSSES" MAIN_SEEDS="$SEEDS" OTHERS= CODE_BON="$CANDIDATES" \
    CODE_BON_SCORES="$scores" DROP_MODELS=$((1 - KEEP_MODELS)) bash recipes/smollm2-evidence-study.sh
fi
stop_point transfer

if [[ " $ARMS " == *" onpolicy "* ]]; then
  pairs="$OUT/onpolicy/train.jsonl" rm_model=$(model "$RM_MODEL")
  run pairs --out python -m normbt_plugin.policy_studies.code_bon pairs --dir "$CANDIDATES" --out "$pairs"
  rm_env=(MODEL="$rm_model" DATASET="$pairs" NPROC="$NPROC" ZERO="$ZERO" EPOCHS="$EPOCHS" LR="$LR" BS="$BS"
          MICRO_BS="$MICRO_BS" MAX_LEN="$MAX_LEN" ATTN="$ATTN" PARAM_DTYPE="$PARAM_DTYPE" SAVE_STEPS="$SAVE_STEPS"
          PROMPT_KEY=prompt)
  for seed in $SEEDS; do for loss in $LOSSES; do
    rm="$OUT/onpolicy/rm-$loss-seed$seed" score="$scores/onpolicy-$loss-seed$seed.json" flags=()
    [[ "$loss" == normbt* ]] && flags=(--"$loss".ema_every "$EMA_EVERY")
    if [[ "$dry" != 1 && -e "$score" ]]; then echo "$who: onpolicy-$loss-seed$seed (scored before)"; continue; fi
    run "onpolicy-$loss-seed$seed" "$rm/model/config.json" env "${rm_env[@]}" LOSS="$loss" SEED="$seed" \
      OUT="$rm" bash recipes/rm.sh "${flags[@]}"
    run "score-onpolicy-$loss-seed$seed" --out python -m normbt_plugin.policy_studies.code_bon_picks score \
      --rm "$rm/model" --candidates "$CANDIDATES" --max_len "$SCORE_MAX_LEN" --out "$score"
    [[ "$KEEP_MODELS" == 1 || "$dry" == 1 ]] || rm -rf "$rm/model" "$rm/ckpt"
  done; done
fi
stop_point onpolicy

# each RM's pick rate and pairwise accuracy by distance; per arm the primary, NormBT minus BT, and its decision
run analyze "" python -m normbt_plugin.policy_studies.code_bon_picks analyze --candidates "$CANDIDATES" \
  --out "$OUT/analysis.json" "$scores"
[[ "$dry" == 1 ]] || { cat "$OUT/logs/analyze.log"; stage_table "$times" "$who"; }
