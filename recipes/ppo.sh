#!/usr/bin/env bash
# PPO on one reward model: OpenRLHF 0.11.2's Ray PPO with vLLM rollouts, through normbt-plugin's
# launcher (patches in every Ray worker and vLLM engine; checks before Ray starts).
# Every setting below can be overridden from the environment, e.g.
#   POLICY=path/to/sft RM=runs/rm-normbt/model PROMPTS=org/prompts bash recipes/ppo.sh
# Extra OpenRLHF flags go after the script: bash recipes/ppo.sh --algo.kl.init_coef 0.05
# With RAY_DASHBOARD set (a running multi-node cluster), the job goes through `ray job submit`.
# DRY_RUN=1 prints the command instead of running it. Settings the RM stage (recipes/rm.sh) has too
# carry PPO_ here (PPO_MICRO_BS, PPO_ZERO, ...): a config or a user sets each stage's apart.
# All flags: python -m normbt_plugin.train_ppo --help
set -euo pipefail

# shellcheck source=recipes/stage-times.sh
source "$(dirname "$0")/stage-times.sh"
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then recipe_help "$0"; exit 0; fi

POLICY=${POLICY:?set POLICY to the initial (SFT) policy: path or hub name}
REWARD_URL=${REWARD_URL:-}              # instead of RM (a trained RM): a reward_func file (rewards/sort.py)
[[ -n "$REWARD_URL" ]] || RM=${RM:?set RM to a trained reward model (recipes/rm.sh OUT/model), or REWARD_URL}
PROMPTS=${PROMPTS:?set PROMPTS to a prompt dataset}
INPUT_KEY=${INPUT_KEY:-input}
OUT=${OUT:-runs/ppo}
PPO_SEED=${PPO_SEED:-42}
NODES=${NODES:-1}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
VLLM_ENGINES=${VLLM_ENGINES:-8}
VLLM_TP=${VLLM_TP:-1}
VLLM_MEM=${VLLM_MEM:-0.5}
COLOCATE=${COLOCATE:-0}                 # 1: all models and engines share the GPUs (sleep between)
PPO_ZERO=${PPO_ZERO:-2}
PPO_PARAM_DTYPE=${PPO_PARAM_DTYPE:-}    # empty: the launcher's default, bf16 on GPUs, fp32 without
PPO_ATTN=${PPO_ATTN:-flash_attention_2} # sdpa on CPU
SYNC_BACKEND=${SYNC_BACKEND:-nccl}      # gloo on CPU
ROLLOUT_BS=${ROLLOUT_BS:-128}
N_SAMPLES=${N_SAMPLES:-1}
MAX_NEW=${MAX_NEW:-1024}
PPO_MAX_LEN=${PPO_MAX_LEN:-2048}        # prompt + response
TRAIN_BS=${TRAIN_BS:-128}
PPO_MICRO_BS=${PPO_MICRO_BS:-4}
ROLLOUT_MICRO_BS=${ROLLOUT_MICRO_BS:-8}
EPISODES=${EPISODES:-1}
MAX_SAMPLES=${MAX_SAMPLES:-100000}
ACTOR_LR=${ACTOR_LR:-5e-7}
CRITIC_LR=${CRITIC_LR:-9e-6}
KL=${KL:-0.01}
ESTIMATOR=${ESTIMATOR:-gae}
NORMALIZE_REWARD=${NORMALIZE_REWARD:-1}  # uses the RM's eval mean/std (reward_norm patch fixes loading)
PPO_APPLY_CHAT_TEMPLATE=${PPO_APPLY_CHAT_TEMPLATE:-0}
PPO_GRAD_CKPT=${PPO_GRAD_CKPT:-0}        # 1: gradient checkpointing of the actor and critic
PPO_PACKING=${PPO_PACKING:-0}            # 1: --ds.packing_samples (flash-attn on GPU nodes)
PPO_SAVE_STEPS=${PPO_SAVE_STEPS:-0}      # >0: a checkpoint every N steps; a rerun of the same command resumes
ROLLOUT_LOG=${ROLLOUT_LOG:-0}            # 1: every rollout's token ids, rewards and KL -> $OUT/rollouts
RAY_DASHBOARD=${RAY_DASHBOARD:-}        # http://head:8265: a running cluster, the job via `ray job submit`

args=(
  --actor.model_name_or_path "$POLICY"
  --data.prompt_dataset "$PROMPTS"
  --data.input_key "$INPUT_KEY"
  --data.max_samples "$MAX_SAMPLES"
  --data.max_len "$PPO_MAX_LEN"
  --rollout.max_new_tokens "$MAX_NEW"
  --rollout.batch_size "$ROLLOUT_BS"
  --rollout.micro_batch_size "$ROLLOUT_MICRO_BS"
  --rollout.n_samples_per_prompt "$N_SAMPLES"
  --train.batch_size "$TRAIN_BS"
  --train.micro_batch_size "$PPO_MICRO_BS"
  --train.num_episodes "$EPISODES"
  --train.max_epochs 1
  --train.seed "$PPO_SEED"
  --actor.adam.lr "$ACTOR_LR"
  --critic.adam.lr "$CRITIC_LR"
  --algo.kl.init_coef "$KL"
  --algo.advantage.estimator "$ESTIMATOR"
  --ds.zero_stage "$PPO_ZERO"
  --ds.attn_implementation "$PPO_ATTN"
  --vllm.num_engines "$VLLM_ENGINES"
  --vllm.tensor_parallel_size "$VLLM_TP"
  --vllm.gpu_memory_utilization "$VLLM_MEM"
  --vllm.sync_backend "$SYNC_BACKEND"
  --ckpt.output_dir "$OUT/model"
  --ckpt.path "$OUT/ckpt"
  --logger.tensorboard_dir "$OUT/tensorboard"
)
if [[ -n "$REWARD_URL" ]]; then
  args+=(--reward.remote_url "$REWARD_URL")
  NORMALIZE_REWARD=0                    # the RM's saved mean/std: there is no RM
else
  args+=(--reward.model_name_or_path "$RM")
fi
for role in actor ref critic reward; do
  args+=(--"$role".num_nodes "$NODES" --"$role".num_gpus_per_node "$GPUS_PER_NODE")
done
[[ -n "$PPO_PARAM_DTYPE" ]] && args+=(--ds.param_dtype "$PPO_PARAM_DTYPE")
[[ "$COLOCATE" == 1 ]] && args+=(--train.colocate_all)
[[ "$COLOCATE" == 1 && "$SYNC_BACKEND" != gloo ]] && args+=(--vllm.enable_sleep --ds.enable_sleep)
[[ "$SYNC_BACKEND" == gloo ]] && args+=(--vllm.enforce_eager)
[[ "$NORMALIZE_REWARD" == 1 ]] && args+=(--reward.normalize_enable)
[[ "$PPO_APPLY_CHAT_TEMPLATE" == 1 ]] && args+=(--data.apply_chat_template)
[[ "$PPO_GRAD_CKPT" == 1 ]] && args+=(--actor.gradient_checkpointing_enable)
[[ "$PPO_PACKING" == 1 ]] && args+=(--ds.packing_samples)
if (( PPO_SAVE_STEPS > 0 )); then   # OpenRLHF resumes from <ckpt.path>/_actor with --ckpt.load_enable
  args+=(--ckpt.save_steps "$PPO_SAVE_STEPS" --ckpt.max_num 1)
  [[ -d "$OUT/ckpt/_actor" && " $* " != *" --ckpt.load_enable "* ]] && args+=(--ckpt.load_enable)
fi
[[ "$ROLLOUT_LOG" == 1 ]] && args+=(--plugin.rollout_log "$OUT/rollouts")

cmd=(python -m normbt_plugin.train_ppo "${args[@]}" "$@")
if [[ -n "$RAY_DASHBOARD" ]]; then     # a running cluster: head + workers via `ray start`
  # The driver runs on the head, in this directory, with this venv's python; actors run anywhere,
  # in Ray's own working directories, so local paths are made absolute (a filesystem every node
  # sees at the same path: the outputs are written by whichever node holds rank 0). The launcher
  # passes the patches to every node through the job's runtime_env and checks every node first.
  for i in "${!args[@]}"; do
    case "${args[$i]}" in
      --ckpt.output_dir|--ckpt.path|--logger.tensorboard_dir|--plugin.rollout_log)  # paths, not numbers
        args[$i+1]=$(realpath -m "${args[$i+1]}") ;;
      --actor.model_name_or_path|--reward.model_name_or_path|--data.prompt_dataset)  # or a hub name
        if [[ -e "${args[$i+1]}" ]]; then args[$i+1]=$(realpath "${args[$i+1]}"); fi ;;
    esac
  done
  cmd=(ray job submit --address "$RAY_DASHBOARD" -- env -C "$PWD" "$(command -v python)" -m normbt_plugin.train_ppo
       "${args[@]}" "$@")
fi
if [[ "${DRY_RUN:-0}" == 1 ]]; then
  printf '%q ' "${cmd[@]}"; echo
  exit 0
fi
if [[ -n "$RAY_DASHBOARD" ]]; then   # a head that does not answer: said in seconds
  python -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1].rstrip("/") + "/api/version", timeout=5)' \
    "$RAY_DASHBOARD" 2>/dev/null || {
    echo "ppo.sh: no Ray dashboard answers at RAY_DASHBOARD=$RAY_DASHBOARD: start the head with" \
      "ray start --head --dashboard-host=0.0.0.0 (recipes/configs/multinode-llama3-8b.env), or set" \
      "RAY_DASHBOARD to http://<head>:8265" >&2
    exit 1
  }
fi
mkdir -p "$OUT"
[[ "$ROLLOUT_LOG" == 1 ]] && rm -rf "$OUT/rollouts"
echo "ppo.sh: policy=$POLICY reward=${REWARD_URL:-$RM} nodes=$NODES gpus/node=$GPUS_PER_NODE" \
  "engines=$VLLM_ENGINES -> $OUT"
"${cmd[@]}"
