#!/usr/bin/env bash
# Compare reward-model losses: train one RM per loss and seed (recipes/rm.sh), evaluate each on
# held-out pairs (normbt eval-rm), run PPO with vLLM rollouts on each (recipes/ppo.sh, PPO=1),
# judge the policies with a gold RM (normbt eval-policy), and write one report with intervals and
# plots (normbt compare).
#   bash recipes/compare.sh                         # the tiny CPU default (recipes/configs/tiny-cpu.env)
#   CONFIG=recipes/configs/<your>.env LOSSES="bt normbt" SEEDS="1 2 3" bash recipes/compare.sh
# LOSSES entries: a loss name, or label=loss:--flag=value,--flag=value for a variant, e.g.
#   'bt normbt noema=normbt:--normbt.use_ema=false clip0.1=bt:--max_norm=0.1'
# The CONFIG sets defaults; the environment wins over it. recipes/rm.sh's variables (bare names) apply
# to every RM, recipes/ppo.sh's (PPO_ where the RM stage has the same setting) to every PPO run.
# ONPOLICY=1: the RMs train on the SFT policy's own samples ranked by GOLD_RM (recipes/onpolicy-pairs.sh,
# its ONPOLICY_* variables) instead of DATASET. DRY_RUN=1 prints each stage's command instead.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=recipes/stage-times.sh
source recipes/stage-times.sh
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then recipe_help "$0"; exit 0; fi

CONFIG=${CONFIG:-recipes/configs/tiny-cpu.env}
LOSSES=${LOSSES:-bt normbt}
SEEDS=${SEEDS:-1}
RUN_DIR=${RUN_DIR:-runs/compare}
BASELINE=${BASELINE:-bt}
# shellcheck source=/dev/null
set -a; source "$CONFIG"; set +a   # every name it sets reaches the stages it runs
PPO=${PPO:-0}                      # 1: chain each RM into recipes/ppo.sh
ONPOLICY=${ONPOLICY:-0}
SUBSET_KEY=${SUBSET_KEY:-}         # group eval-rm's accuracy by this column
EVAL_FORMAT=${EVAL_FORMAT:-auto}
EVAL_SPLIT=${EVAL_SPLIT:-}
GOLD_RM=${GOLD_RM:-}               # the judge of eval-policy and ONPOLICY: a reward model
GOLD_FN=${GOLD_FN:-}               # or a true reward, module:function (wins if both; tiny: GOLD_FN= trains a gold RM)
EVAL_PROMPT_KEY=${EVAL_PROMPT_KEY:-input}
EVAL_PROMPT_SPLIT=${EVAL_PROMPT_SPLIT:-}
EVAL_N_PROMPTS=${EVAL_N_PROMPTS:-500}
EVAL_SAMPLES=${EVAL_SAMPLES:-1}
BON_SAMPLES=${BON_SAMPLES:-64}
BON_PROMPTS=${BON_PROMPTS:-200}
EVAL_MAX_NEW=${EVAL_MAX_NEW:-${MAX_NEW:-1024}}
EVAL_SEED=${EVAL_SEED:-0}
EVAL_TP=${EVAL_TP:-1}
EVAL_DTYPE=${EVAL_DTYPE:-float32}  # RMs and the KL forward passes; bfloat16 on GPU nodes
dry=${DRY_RUN:-0}
if [[ "$dry" != 1 && -n "${HOSTFILE:-}" && ! -f "$HOSTFILE" ]]; then  # before anything starts
  echo "compare.sh: HOSTFILE=$HOSTFILE does not exist: write DeepSpeed's hostfile ('node1 slots=8' a" \
    "line, every node of the job), or set HOSTFILE= to train the RMs on this node only" >&2
  exit 1
fi
mkdir -p "$RUN_DIR"

export DRY_RUN=$dry
times="$RUN_DIR/stage_times.tsv"            # each stage's wall time, as a table at the end
[[ "$dry" == 1 ]] || : > "$times"
# scripts/demo.sh passes the set-up's wall time: a fresh machine's first run pays it too
[[ "$dry" == 1 || -z "${SETUP_SECONDS:-}" ]] || printf 'set-up (install-cpu.sh)\t%s\n' "$SETUP_SECONDS" >> "$times"
who=compare.sh
run() { stage_run "$who" "$RUN_DIR/logs" "$times" "$@"; }  # run NAME DONE|--out cmd...: see stage-times.sh

if [[ "${EVIDENCE:-0}" == 1 ]]; then
  echo "compare.sh: stdlib preference pairs and MiniLM-L6 -> $RUN_DIR/data"
  run data "$RUN_DIR/data/$CARD_JSON" python -m normbt_plugin.rm_evaluation.evidence --out "$RUN_DIR/data" \
    --n_train "$N_TRAIN" --n_test "$N_TEST" --coarse "${COARSE:-shuffle}" --dropout "${DROPOUT:-0}"
  export MODEL="$RUN_DIR/data/minilm" DATASET="$RUN_DIR/data/train.jsonl"
  export EVAL_DATASET="$RUN_DIR/data/test.jsonl"
elif [[ "${TINY:-0}" == 1 ]]; then
  echo "compare.sh: building the tiny model, tokenizer and data offline -> $RUN_DIR/tiny"
  run tiny "$RUN_DIR/tiny/eval_prompts.jsonl" python -m normbt_plugin.common.tiny --out "$RUN_DIR/tiny" --n_train "$N_TRAIN" \
    --n_test "$N_TEST" --heads "${TINY_HEADS:-4}"
  export MODEL="$RUN_DIR/tiny/model" DATASET="$RUN_DIR/tiny/train.jsonl"
  export EVAL_DATASET="$RUN_DIR/tiny/test.jsonl" PROMPTS="$RUN_DIR/tiny/prompts.jsonl"
  EVAL_PROMPTS="$RUN_DIR/tiny/eval_prompts.jsonl"
  # train_sft's default --data.input_template is 'User: {}\nAssistant: ', PPO's is none: '{}' keeps
  # the policy's prompts as PPO and eval-policy give them
  if [[ "$PPO" == 1 ]]; then  # a policy that has seen the task, so its samples are not noise
    echo "compare.sh: SFT of the tiny policy on the chosen responses -> $RUN_DIR/policy"
    run policy "$RUN_DIR/policy/config.json" python -m normbt_plugin.train_sft --model.model_name_or_path "$MODEL" \
      --data.dataset "$DATASET" --data.input_key prompt --data.output_key chosen \
      --data.input_template '{}' \
      --data.max_len "$MAX_LEN" --train.max_epochs "$SFT_EPOCHS" --train.micro_batch_size 8 \
      --train.batch_size 32 --adam.lr "$SFT_LR" --ds.zero_stage 2 ${PARAM_DTYPE:+--ds.param_dtype "$PARAM_DTYPE"} \
      --ds.attn_implementation sdpa --ckpt.output_dir "$RUN_DIR/policy" --ckpt.path "$RUN_DIR/policy.ckpt"
    export POLICY="$RUN_DIR/policy"
  fi
fi

if [[ "$ONPOLICY" == 1 ]]; then  # on-policy RM data: the SFT policy's samples, ranked by the gold
  pairs="$RUN_DIR/onpolicy/pairs.jsonl"
  [[ "$dry" == 1 ]] ||
    echo "compare.sh: on-policy pairs from ${POLICY:-$MODEL}, judged by ${GOLD_RM:-$GOLD_FN} -> $pairs"
  POLICY=${POLICY:-$MODEL} OUT=$pairs run onpolicy "$pairs" bash recipes/onpolicy-pairs.sh
  export DATASET=$pairs PROMPT_KEY=prompt   # label-pairs writes prompt/chosen/rejected
fi

eval_flags=(--format "$EVAL_FORMAT" --max_len "$MAX_LEN")
[[ -n "$EVAL_SPLIT" ]] && eval_flags+=(--split "$EVAL_SPLIT")
[[ -n "$SUBSET_KEY" ]] && eval_flags+=(--subset_key "$SUBSET_KEY")
[[ -n "${INPUT_TEMPLATE:-}" ]] && eval_flags+=(--input_template "$INPUT_TEMPLATE")
[[ "${APPLY_CHAT_TEMPLATE:-0}" == 1 ]] && eval_flags+=(--apply_chat_template)

runs=()
ppo_runs=()
for seed in $SEEDS; do
  for entry in $LOSSES; do
    label=${entry%%=*}                      # label=loss:--flag=value,...  or just a loss name
    spec=${entry#*=}
    loss=${spec%%:*}
    flags=()
    [[ "$spec" == *:* ]] && IFS=, read -r -a flags <<< "${spec#*:}"
    out="$RUN_DIR/rm-$label-seed$seed"
    LOSS=$loss LABEL=$label SEED=$seed OUT=$out run "rm-$label-seed$seed" "$out/model/config.json" \
      bash recipes/rm.sh "${flags[@]}"
    [[ "$dry" == 1 ]] || echo "compare.sh: trained $label ($loss ${flags[*]}) seed $seed in $out"
    run "eval-$label-seed$seed" --out normbt eval-rm --model "$out/model" \
      --data "${EVAL_DATA:-${EVAL_DATASET:?set EVAL_DATA or EVAL_DATASET}}" "${eval_flags[@]}" --out "$out/$EVAL_JSON"
    runs+=("$out")
    if [[ "$PPO" == 1 ]]; then
      ppo_out="$RUN_DIR/ppo-$label-seed$seed"
      RM="$out/model" OUT=$ppo_out PPO_SEED=$seed run "ppo-$label-seed$seed" "$ppo_out/model/config.json" bash recipes/ppo.sh
      [[ "$dry" == 1 ]] || echo "compare.sh: PPO on $label seed $seed -> $ppo_out/model"
      ppo_runs+=("$ppo_out")
    fi
  done
done

compare_args=(--out "$RUN_DIR/report" --baseline "$BASELINE")
if (( ${#ppo_runs[@]} )); then
  if [[ "${TINY:-0}" == 1 && -z "$GOLD_RM" && -z "$GOLD_FN" ]]; then  # a judge trained apart
    gold="$RUN_DIR/gold"
    [[ "$dry" == 1 ]] || echo "compare.sh: an independent gold RM (own tokenizer, init, data; seed $GOLD_SEED) -> $gold"
    run gold-data "$gold/data/eval_prompts.jsonl" python -m normbt_plugin.common.tiny --out "$gold/data" --seed "$GOLD_SEED" \
      --n_train "$GOLD_N_TRAIN" --n_test "$N_TEST" --heads 4
    MODEL="$gold/data/model" DATASET="$gold/data/train.jsonl" EVAL_DATASET="$gold/data/test.jsonl" \
      LOSS=bt LABEL=gold SEED=$GOLD_SEED EPOCHS=$GOLD_EPOCHS BS=32 MICRO_BS=8 OUT=$gold \
      run gold "$gold/model/config.json" bash recipes/rm.sh
    run gold-eval --out normbt eval-rm --model "$gold/model" --data "$EVAL_DATASET" "${eval_flags[@]}" \
      --out "$gold/$EVAL_JSON"
    [[ "$dry" == 1 ]] || grep -m1 "accuracy" "$RUN_DIR/logs/gold-eval.log" | sed 's/^/compare.sh: gold RM on the eval pairs: /'
    GOLD_RM="$gold/model"
  fi
  policy_flags=(--policy "initial=$POLICY")
  for r in "${ppo_runs[@]}"; do policy_flags+=(--policy "${r##*/ppo-}=$r/model"); done
  for r in "${runs[@]}"; do policy_flags+=(--proxy "${r##*/rm-}=$r/model"); done
  [[ -n "$EVAL_PROMPT_SPLIT" ]] && policy_flags+=(--split "$EVAL_PROMPT_SPLIT")
  [[ "${APPLY_CHAT_TEMPLATE:-0}" == 1 ]] && policy_flags+=(--apply_chat_template)
  [[ -n "${INPUT_TEMPLATE:-}" ]] && policy_flags+=(--rm_input_template "$INPUT_TEMPLATE")
  [[ "$dry" == 1 ]] || echo "compare.sh: sampling and judging the policies (normbt eval-policy) -> $RUN_DIR/policy-eval"
  if [[ -n "$GOLD_FN" ]]; then
    policy_flags+=(--gold_fn "$GOLD_FN")
  else
    policy_flags+=(--gold "${GOLD_RM:?set GOLD_RM (a gold reward model) or GOLD_FN (a true reward) to judge}")
  fi
  run policy-eval "$RUN_DIR/policy-eval/$POLICY_EVAL_JSON" normbt eval-policy "${policy_flags[@]}" \
    --prompts "${EVAL_PROMPTS:?set EVAL_PROMPTS to held-out prompts}" --prompt_key "$EVAL_PROMPT_KEY" \
    --n_prompts "$EVAL_N_PROMPTS" --samples "$EVAL_SAMPLES" --bon_samples "$BON_SAMPLES" \
    --bon_prompts "$BON_PROMPTS" --max_new "$EVAL_MAX_NEW" \
    --max_len "${PPO_MAX_LEN:-2048}" --seed "$EVAL_SEED" --tensor_parallel_size "$EVAL_TP" \
    --dtype "$EVAL_DTYPE" \
    --out "$RUN_DIR/policy-eval"
  compare_args+=(--policy_eval "$RUN_DIR/policy-eval/$POLICY_EVAL_JSON")
  if [[ "${TINY:-0}" == 1 ]]; then
    steps=$(( MAX_SAMPLES / ROLLOUT_BS ))
    compare_args+=(--note "The tiny CPU default runs $steps PPO steps on ${SEEDS// /, } seed(s): \
it shows that the chain runs end to end and what its report holds, not whether a NormBT reward model \
makes a better policy; recipes/downstream-study.sh measures that (docs/results.md, Downstream).")
  fi
fi

if [[ "$dry" == 1 ]]; then
  printf '%q ' normbt compare "${runs[@]}" "${compare_args[@]}"; echo
  exit 0
fi
run report "" normbt compare "${runs[@]}" "${compare_args[@]}"
cat "$RUN_DIR/logs/report.log"
stage_table "$times" compare.sh
