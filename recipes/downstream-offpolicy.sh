#!/usr/bin/env bash
# The off-policy downstream study (superseded by recipes/downstream-study.sh, kept reproducible: docs/results.md,
# "Downstream ... off-policy design"): does a NormBT reward model make a better policy? Measured against the task's
# ground truth (normbt_plugin.common.tasks: the prompt's numbers sorted), along the KL curve, over seeds.
#   bash recipes/downstream-offpolicy.sh          # the whole study (2-core CPU: see docs/results.md)
#   SMOKE=1 bash recipes/downstream-offpolicy.sh  # a few steps of everything
#   DRY_RUN=1 bash recipes/downstream-offpolicy.sh  # print every command
# Stages: a tiny policy SFT'd on 3-5 numbers (success clearly above 0, below the ceiling); RMs
# (BT, NormBT at RM_SEEDS, COMPARATOR at fewer) on the task's preference pairs; PPO (OpenRLHF's Ray
# PPO trainer, vLLM rollouts) on each RM at PPO_SEEDS, and on the true reward itself (the ceiling,
# OpenRLHF's rule-based reward recipes/rewards/sort.py), all with the same PPO settings; then
# `normbt curves` (true and proxy reward against KL, compared at matched KL) and `normbt
# eval-policy` of the final policies on held-out prompts (with each RM's reward scale on the SFT
# policy's samples).
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=recipes/stage-times.sh
source recipes/stage-times.sh
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then recipe_help "$0"; exit 0; fi

OUT=${OUT:-runs/downstream-offpolicy}
LOSSES=${LOSSES-bt normbt}
RM_SEEDS=${RM_SEEDS-1 2 3}
PPO_SEEDS=${PPO_SEEDS-1 2}
COMPARATOR=${COMPARATOR:-label_smoothing}   # a third loss at fewer seeds
COMPARATOR_SEEDS=${COMPARATOR_SEEDS-1}
CEILING_SEEDS=${CEILING_SEEDS-1 2}         # PPO on the true reward
# the task and the policy
LENGTHS=${LENGTHS:-3-5}                      # numbers per prompt
N_SFT=${N_SFT:-4096}                         # SFT demonstrations (apart from the RM pairs)
SFT_EPOCHS=${SFT_EPOCHS:-4}
N_TRAIN=${N_TRAIN:-512}                      # RM preference pairs
N_TEST=${N_TEST:-256}
# PPO, tuned once on the ceiling run (docs/results.md) and the same for every reward
STEPS=${STEPS:-144}                          # PPO steps: one episode, every prompt once
ROLLOUT_BS=${ROLLOUT_BS:-16}                 # prompts per step
N_SAMPLES=${N_SAMPLES:-4}                    # samples per prompt (the group baseline)
ESTIMATOR=${ESTIMATOR:-reinforce_baseline}   # no critic: the reward is the only difference between runs
ACTOR_LR=${ACTOR_LR:-2e-4}
KL=${KL:-0.02}
SMOKE=${SMOKE:-0}                            # 1: a few steps of everything
if [[ "$SMOKE" == 1 ]]; then
  RM_SEEDS=1 PPO_SEEDS=1 COMPARATOR_SEEDS="" CEILING_SEEDS=1 N_SFT=1024 SFT_EPOCHS=4 N_TRAIN=128
  N_TEST=64 STEPS=3 ROLLOUT_BS=4
fi
dry=${DRY_RUN:-0}
export PATH="$PWD/.venv/bin:$PATH" OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} DRY_RUN=$dry
mkdir -p "$OUT"
times="$OUT/stage_times.tsv"
[[ "$dry" == 1 ]] || : > "$times"
run() { stage_run downstream-offpolicy "$OUT" "$times" "$@"; }  # run NAME DONE|--out cmd...: see stage-times.sh

tiny="$OUT/tiny"
run tiny "$tiny/sft.jsonl" python -m normbt_plugin.common.tiny --out "$tiny" --n_train "$N_TRAIN" \
  --n_test "$N_TEST" --heads 2 --lengths "$LENGTHS" --n_sft "$N_SFT" --n_prompts $((STEPS * ROLLOUT_BS))
run sft "$OUT/policy/config.json" python -m normbt_plugin.train_sft --model.model_name_or_path "$tiny/model" \
  --data.dataset "$tiny/sft.jsonl" --data.input_key prompt --data.output_key chosen --data.input_template '{}' \
  --data.max_len 64 --train.max_epochs "$SFT_EPOCHS" --train.micro_batch_size 16 --train.batch_size 32 \
  --adam.lr 3e-3 --ds.zero_stage 2 --ds.attn_implementation sdpa --ckpt.output_dir "$OUT/policy" \
  --ckpt.path "$OUT/policy.ckpt"

# reward models: one per loss and seed, from the tiny base model, evaluated on held-out pairs
rm_env=(MODEL="$tiny/model" DATASET="$tiny/train.jsonl" EVAL_DATASET="$tiny/test.jsonl" NPROC=2 EPOCHS=3
        LR=2e-3 MAX_LEN=64 PROMPT_KEY=prompt PARAM_DTYPE=fp32)
rms=()
for entry in $(for s in $RM_SEEDS; do for l in $LOSSES; do echo "$l:$s"; done; done) \
             $(for s in $COMPARATOR_SEEDS; do echo "$COMPARATOR:$s"; done); do
  loss=${entry%%:*} seed=${entry#*:}
  rm="$OUT/rm-$loss-seed$seed"
  run "rm-$loss-seed$seed" "$rm/model/config.json" \
    env "${rm_env[@]}" LOSS="$loss" SEED="$seed" OUT="$rm" bash recipes/rm.sh
  run "rm-$loss-seed$seed.eval" --out normbt eval-rm --model "$rm/model" --data "$tiny/test.jsonl" \
    --subset_key kind --max_len 64 --out "$rm/$EVAL_JSON"
  rms+=("$loss:$seed")
done

run rm-report "" normbt compare $(for e in "${rms[@]}"; do echo "$OUT/rm-${e%%:*}-seed${e#*:}"; done) \
  --out "$OUT/rm-report" --baseline bt

# PPO: the same settings for every reward; ROLLOUT_LOG=1 records what the curves are read from
ppo_env=(POLICY="$OUT/policy" PROMPTS="$tiny/prompts.jsonl" GPUS_PER_NODE=1 VLLM_ENGINES=1 COLOCATE=1
         PPO_PARAM_DTYPE=fp32 PPO_ATTN=sdpa SYNC_BACKEND=gloo VLLM_MEM=0.5 ROLLOUT_BS="$ROLLOUT_BS"
         N_SAMPLES="$N_SAMPLES" MAX_NEW=24 PPO_MAX_LEN=64 TRAIN_BS=$((ROLLOUT_BS * N_SAMPLES))
         PPO_MICRO_BS=16 ROLLOUT_MICRO_BS=16 EPISODES=1 MAX_SAMPLES=$((STEPS * ROLLOUT_BS))
         ACTOR_LR="$ACTOR_LR" KL="$KL" ESTIMATOR="$ESTIMATOR" ROLLOUT_LOG=1)
ppo_runs=()
ppo() {  # ppo LABEL RM_SEED PPO_SEED VAR=VALUE...: one PPO run and its run.json (RM_SEED "": none)
  local label=$1 rm_seed=$2 seed=$3; shift 3
  local name="ppo-$label${rm_seed:+-rm$rm_seed}-seed$seed"
  run "$name" "$OUT/$name/run.json" env "${ppo_env[@]}" "$@" PPO_SEED="$seed" OUT="$OUT/$name" bash recipes/ppo.sh
  [[ "$dry" == 1 || -e "$OUT/$name/run.json" ]] || python -m normbt_plugin.policy_studies.curves record "$OUT/$name" \
    --label "$label" ${rm_seed:+--rm_seed "$rm_seed"} --ppo_seed "$seed"
  ppo_runs+=("$OUT/$name")
}
for seed in $CEILING_SEEDS; do ppo true "" "$seed" REWARD_URL=recipes/rewards/sort.py; done
for entry in "${rms[@]}"; do
  loss=${entry%%:*} rm_seed=${entry#*:}
  for seed in $PPO_SEEDS; do
    [[ "$loss" == "$COMPARATOR" && "$seed" != "${PPO_SEEDS%% *}" ]] && continue  # fewer for the comparator
    ppo "$loss" "$rm_seed" "$seed" RM="$OUT/rm-$loss-seed$rm_seed/model"
  done
done

run curves "" normbt curves "${ppo_runs[@]}" --tokenizer "$OUT/policy" \
  --gold_fn normbt_plugin.common.tasks:gold_reward --exact_fn normbt_plugin.common.tasks:exact \
  --baseline bt --window "$([[ "${SMOKE:-0}" == 1 ]] && echo 1 || echo 4)" \
  --out "$OUT/curves"
policy_flags=(--policy "initial=$OUT/policy")
for r in "${ppo_runs[@]}"; do policy_flags+=(--policy "${r##*/ppo-}=$r/model"); done
for entry in "${rms[@]}"; do
  proxy="${entry%%:*}-seed${entry#*:}"
  policy_flags+=(--proxy "$proxy=$OUT/rm-$proxy/model")
done
run policy-eval "" normbt eval-policy "${policy_flags[@]}" --gold_fn normbt_plugin.common.tasks:gold_reward \
  --prompts "$tiny/eval_prompts.jsonl" --n_prompts "$N_TEST" --samples 2 --bon_samples 16 --bon_prompts 64 \
  --max_new 24 --max_len 64 --out "$OUT/policy-eval"
[[ "$dry" == 1 ]] && exit 0
cat "$OUT/curves/curves.md"
stage_table "$times" downstream-study
