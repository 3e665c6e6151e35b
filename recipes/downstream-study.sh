#!/usr/bin/env bash
# Downstream study, on-policy: does a NormBT reward model make a better policy? The standard protocol
# (Gao, Schulman, Hilton 2022; Razin et al. 2025) on the tiny sorting task, whose true reward is known
# (normbt_plugin.common.tasks). Pre-registered primary metric and decision rule: docs/results.md, Downstream.
#   bash recipes/downstream-study.sh              # the whole study (2-core CPU: see docs/results.md)
#   DRY_RUN=1 bash recipes/downstream-study.sh    # print every command
#   UNTIL=rms RM_SEEDS="1 3 5 7" bash ... & UNTIL=rms RM_SEEDS="2 4 6 8" bash ...; wait; bash ...
#                                                 # both cores: the RMs in two halves, then the rest
#   POLICY_BASE=smollm2-135m-instruct OUT=runs/downstream-smollm2 N_SFT=128 SFT_EPOCHS=1 SFT_LR=1e-4 \
#     RM_LR=5e-5 RM_SEEDS="1 2 3 4" ARMS=onpolicy UNTIL=bon bash ...  # with SmolLM2 (docs/results.md)
# Stages (each skipped when its output exists: a rerun goes on where a stopped one ended, an RM from
# its last checkpoint):
#   the policy (a tiny Llama, or POLICY_BASE) SFT'd on the task; `normbt label-pairs`: the policy's
#   own samples on prompts of their own, paired by the true reward (a pool to train on, a held-out
#   set); per RM seed its own random subsample of the pool; RMs started from the SFT policy, BT and
#   NormBT paired by seed, on the
#   on-policy pairs and (the 2x2) on the task's perturbation pairs; eval-rm on the held-out on-policy
#   pairs (accuracy by distance bin); best-of-N from the SFT policy on held-out prompts, every RM a
#   proxy (`normbt eval-policy`), analysed by `normbt bon-study` (the primary result). Then PPO as a
#   confirmatory arm: every reward standardised on the SFT policy's samples (`normbt standardize`),
#   the ceiling (the true reward) included, on PPO_RM_SEEDS; `normbt curves` at matched KL.
# The off-policy design this replaces stays reproducible: recipes/downstream-offpolicy.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=recipes/stage-times.sh
source recipes/stage-times.sh
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then recipe_help "$0"; exit 0; fi

OUT=${OUT:-runs/downstream}
LOSSES=${LOSSES-bt normbt}
RM_SEEDS=${RM_SEEDS-1 2 3 4 5 6 7 8}            # each: its own pair subsample, order and head init
ARMS=${ARMS-onpolicy perturb}                    # pair sources: the policy's own samples; perturbations
LENGTHS=${LENGTHS:-3-5}                          # numbers per prompt
POLICY_BASE=${POLICY_BASE:-}                     # the policy before SFT: empty, a tiny Llama; or a `normbt models` name
N_SFT=${N_SFT:-4096}                             # SFT demonstrations
SFT_EPOCHS=${SFT_EPOCHS:-4}
SFT_LR=${SFT_LR:-3e-3}
RM_PROMPTS=${RM_PROMPTS:-1024}                   # prompts the policy samples RM pairs on (as many held out)
RM_SAMPLES=${RM_SAMPLES:-8}                      # samples per prompt label-pairs draws
PAIRS_PER_PROMPT=${PAIRS_PER_PROMPT:-4}
N_PAIRS=${N_PAIRS:-2048}                         # pairs per RM seed (a subsample of the pool)
RM_EPOCHS=${RM_EPOCHS:-2}
RM_LR=${RM_LR:-1e-3}
RM_LORA_RANK=${RM_LORA_RANK:-0}                  # > 0: LoRA RMs (alpha twice the rank), the value head in full
RM_SAVE_STEPS=${RM_SAVE_STEPS:-16}               # an RM checkpoint every N steps: a stopped study resumes mid-RM
BON_SAMPLES=${BON_SAMPLES:-64}                   # best-of-N: K samples per held-out prompt
BON_PROMPTS=${BON_PROMPTS:-128}
BON_DIR=${BON_DIR:-bon}                          # best-of-N of RM_SEEDS' proxies; seeds added later: another
                                                 # (BON_DIR=bon-5-8 RM_SEEDS="5 6 7 8"), pooled with every $OUT/bon*
PPO_RM_SEEDS=${PPO_RM_SEEDS-1 2 3 4}             # PPO (confirmatory) on these on-policy RMs; empty: none
CEILING_SEEDS=${CEILING_SEEDS-1}                 # PPO on the true reward
STEPS=${STEPS:-144}                              # PPO steps
ROLLOUT_BS=${ROLLOUT_BS:-16}                     # prompts per step
N_SAMPLES=${N_SAMPLES:-4}                        # samples per prompt (the group baseline)
ESTIMATOR=${ESTIMATOR:-reinforce_baseline}       # no critic: the reward is the only difference
TUNE_LRS=${TUNE_LRS-1e-4 2e-4 5e-4}               # learning rates tried on the standardised ceiling
ACTOR_LR=${ACTOR_LR:-1e-4}                       # the one chosen there (docs/results.md)
KL=${KL:-0.005}
UNTIL=${UNTIL:-all}                              # stop after a stop point (--help lists them) or all
gold_fn=normbt_plugin.common.tasks:gold_reward     # the task's true reward (label-pairs, best-of-N, PPO)
exact_fn=normbt_plugin.common.tasks:exact          # its success indicator (the curves)
dry=${DRY_RUN:-0}
check_until "$0"
export PATH="$PWD/.venv/bin:$PATH" OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} DRY_RUN=$dry
mkdir -p "$OUT"
times="$OUT/stage_times.tsv"
[[ "$dry" == 1 ]] || touch "$times"
who=downstream-study
run() { stage_run "$who" "$OUT/logs" "$times" "$@"; }  # run NAME DONE|--out cmd...: see stage-times.sh

# the task and the SFT policy
tiny="$OUT/tiny"
run tiny "$tiny/rm_test_prompts.jsonl" python -m normbt_plugin.common.tiny --out "$tiny" \
  --n_train $((2 * N_PAIRS)) --n_test 256 --heads 2 --lengths "$LENGTHS" --n_sft "$N_SFT" \
  --n_prompts $((STEPS * ROLLOUT_BS)) --n_rm_prompts "$RM_PROMPTS"
base="$tiny/model"
if [[ -n "$POLICY_BASE" ]]; then
  base="$OUT/base"
  run base "$base/normbt_model.json" normbt models get "$POLICY_BASE" --out "$base"
fi
run sft "$OUT/policy/config.json" python -m normbt_plugin.train_sft --model.model_name_or_path "$base" \
  --data.dataset "$tiny/sft.jsonl" --data.input_key prompt --data.output_key chosen --data.input_template '{}' \
  --data.max_len 64 --train.max_epochs "$SFT_EPOCHS" --train.micro_batch_size 16 --train.batch_size 32 \
  --adam.lr "$SFT_LR" --ds.zero_stage 2 --ds.attn_implementation sdpa --ckpt.output_dir "$OUT/policy" \
  --ckpt.path "$OUT/policy.ckpt"

# on-policy pairs: the SFT policy's own samples, paired by the true reward
label=(normbt label-pairs --policy "$OUT/policy" --gold_fn "$gold_fn"
       --samples "$RM_SAMPLES" --pairs_per_prompt "$PAIRS_PER_PROMPT" --max_new 24 --max_len 64)
run pairs-train --out "${label[@]}" --prompts "$tiny/rm_prompts.jsonl" --seed 1 \
  --out "$OUT/pairs/onpolicy.jsonl"
run pairs-test --out "${label[@]}" --prompts "$tiny/rm_test_prompts.jsonl" --seed 2 \
  --out "$OUT/pairs/onpolicy-test.jsonl"
run pairs-test-512 "$OUT/pairs/onpolicy-test-512.jsonl" python -m normbt_plugin.policy_studies.label_pairs subsample \
  "$OUT/pairs/onpolicy-test.jsonl" 512 0 "$OUT/pairs/onpolicy-test-512.jsonl"  # the RM stage's own eval
declare -A pool=([onpolicy]="$OUT/pairs/onpolicy.jsonl" [perturb]="$tiny/train.jsonl")
stop_point pairs

# reward models: from the SFT policy, per arm and seed its own subsample, the losses paired by seed
rm_env=(MODEL="$OUT/policy" EVAL_DATASET="$OUT/pairs/onpolicy-test-512.jsonl" NPROC=1 EPOCHS="$RM_EPOCHS" LR="$RM_LR"
        MAX_LEN=64 PROMPT_KEY=prompt PARAM_DTYPE=fp32 BS=32 MICRO_BS=32 SAVE_STEPS="$RM_SAVE_STEPS")
lora=()
(( RM_LORA_RANK > 0 )) && lora=(--ds.lora.rank "$RM_LORA_RANK" --ds.lora.alpha $((2 * RM_LORA_RANK)))
rms=()
for arm in $ARMS; do
  for seed in $RM_SEEDS; do
    data="$OUT/pairs/$arm-seed$seed.jsonl"
    run "pairs-$arm-seed$seed" "$data" \
      python -m normbt_plugin.policy_studies.label_pairs subsample "${pool[$arm]}" "$N_PAIRS" "$seed" "$data"
    for loss in $LOSSES; do
      name="$arm-$loss-seed$seed" rm="$OUT/rm-$arm-$loss-seed$seed"
      run "rm-$name" "$rm/model/config.json" env "${rm_env[@]}" DATASET="$data" LOSS="$loss" LABEL="$arm-$loss" \
        SEED="$seed" OUT="$rm" bash recipes/rm.sh "${lora[@]}"
      run "eval-$name" --out normbt eval-rm --model "$rm/model" --data "$OUT/pairs/onpolicy-test.jsonl" \
        --max_len 64 --bins 5 --out "$rm/$EVAL_JSON"
      rms+=("$rm")
    done
  done
done

stop_point rms

# best-of-N from the SFT policy on held-out prompts, every RM a proxy; the primary analysis
proxies=()
for rm in "${rms[@]}"; do proxies+=(--proxy "${rm##*/rm-}=$rm/model"); done
bon="$OUT/$BON_DIR"
run "$BON_DIR" "$bon/$POLICY_EVAL_JSON" normbt eval-policy --policy "sft=$OUT/policy" "${proxies[@]}" \
  --gold_fn "$gold_fn" --prompts "$tiny/eval_prompts.jsonl" --n_prompts "$BON_PROMPTS" \
  --samples 1 --bon_samples "$BON_SAMPLES" --max_new 24 --max_len 64 --out "$bon"
also=()  # best-of-N of seeds run before (same policy, prompts and sampling seed): one pooled analysis
for other in "$OUT"/bon*/$POLICY_EVAL_JSON; do
  if [[ -e "$other" && "$other" != "$bon/$POLICY_EVAL_JSON" ]]; then also+=(--also "$other"); fi
done
run bon-study "" normbt bon-study "$bon/$POLICY_EVAL_JSON" "${also[@]}" "$OUT"/rm-*/ --baseline bt --n 16 \
  --pairs "$OUT/pairs/onpolicy-test.jsonl" --out "$OUT/bon-study"
stop_point bon

# PPO, confirmatory: every reward standardised on the SFT policy's samples, the same settings for all
(( ${#PPO_RM_SEEDS} + ${#CEILING_SEEDS} )) || { [[ "$dry" == 1 ]] || stage_table "$times" downstream-study; exit 0; }
standardize=(normbt standardize --policy "$OUT/policy" --prompts "$tiny/prompts.jsonl" --n_prompts 256 --samples 4
             --max_new 24 --max_len 64 --samples_file "$OUT/ppo-rewards/sft-samples.jsonl")
run standardize-true --out "${standardize[@]}" --reward_fn recipes/rewards/sort.py \
  --out "$OUT/ppo-rewards/true.py"
ppo_env=(POLICY="$OUT/policy" PROMPTS="$tiny/prompts.jsonl" GPUS_PER_NODE=1 VLLM_ENGINES=1 COLOCATE=1
         PPO_PARAM_DTYPE=fp32 PPO_ATTN=sdpa SYNC_BACKEND=gloo VLLM_MEM=0.5 ROLLOUT_BS="$ROLLOUT_BS"
         N_SAMPLES="$N_SAMPLES" MAX_NEW=24 PPO_MAX_LEN=64 TRAIN_BS=$((ROLLOUT_BS * N_SAMPLES))
         PPO_MICRO_BS=16 ROLLOUT_MICRO_BS=16 EPISODES=1 MAX_SAMPLES=$((STEPS * ROLLOUT_BS))
         ACTOR_LR="$ACTOR_LR" KL="$KL" ESTIMATOR="$ESTIMATOR" ROLLOUT_LOG=1 NORMALIZE_REWARD=1)
ppo_runs=()
ppo() {  # ppo LABEL RM_SEED PPO_SEED VAR=VALUE...: one PPO run and its run record
  local label=$1 rm_seed=$2 seed=$3; shift 3
  local name="ppo-$label${rm_seed:+-rm$rm_seed}-seed$seed"
  run "$name" "$OUT/$name/run.json" env "${ppo_env[@]}" "$@" PPO_SEED="$seed" OUT="$OUT/$name" bash recipes/ppo.sh
  [[ "$dry" == 1 ]] || python -m normbt_plugin.policy_studies.curves record "$OUT/$name" --label "$label" \
    ${rm_seed:+--rm_seed "$rm_seed"} --ppo_seed "$seed"
  ppo_runs+=("$OUT/$name")
}
for lr in $TUNE_LRS; do  # the learning rate, tuned once on the standardised ceiling
  ppo "tune-lr$lr" "" 1 REWARD_URL="$OUT/ppo-rewards/true.py" ACTOR_LR="$lr"
done
if [[ -n "$TUNE_LRS" ]]; then
  tuned=("${ppo_runs[@]}") ppo_runs=()
  run tune-curves "" normbt curves "${tuned[@]}" --tokenizer "$OUT/policy" \
    --gold_fn "$gold_fn" --exact_fn "$exact_fn" \
    --baseline "tune-lr${TUNE_LRS%% *}" --window 4 --out "$OUT/tune-curves"
fi
stop_point tune
for seed in $CEILING_SEEDS; do ppo true "" "$seed" REWARD_URL="$OUT/ppo-rewards/true.py"; done
for loss in $LOSSES; do
  for rm_seed in $PPO_RM_SEEDS; do
    std="$OUT/ppo-rewards/onpolicy-$loss-seed$rm_seed"
    run "standardize-$loss-seed$rm_seed" "$std/config.json" "${standardize[@]}" \
      --rm "$OUT/rm-onpolicy-$loss-seed$rm_seed/model" --out "$std"
    ppo "$loss" "$rm_seed" 1 RM="$std"
  done
done
run curves "" normbt curves "${ppo_runs[@]}" --tokenizer "$OUT/policy" \
  --gold_fn "$gold_fn" --exact_fn "$exact_fn" \
  --baseline bt --window 4 --out "$OUT/curves"
[[ "$dry" == 1 ]] && exit 0
cat "$OUT/bon-study/report.md" "$OUT/curves/curves.md"
stage_table "$times" downstream-study
