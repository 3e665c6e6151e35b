#!/usr/bin/env bash
# Train one reward model with a chosen loss: OpenRLHF 0.11.2's RM stage + normbt-plugin.
# Every setting below can be overridden from the environment, e.g.
#   LOSS=bt MODEL=path/to/sft DATASET=org/prefs NPROC=8 bash recipes/rm.sh
# Extra OpenRLHF or plugin flags go after the script: bash recipes/rm.sh --normbt.beta 0.95
# Several nodes: HOSTFILE=hostfile (DeepSpeed's "host slots=N" lines), started from one node over ssh;
# or without ssh, the same command on every node with NODE_RANK=0,1,... and MASTER_ADDR (node 0).
# After a crash: the same command(s) with --ckpt.load_enable; with SAVE_STEPS set, a rerun of the same
# command resumes by itself (long studies that stop mid-run). DRY_RUN=1 prints the command.
# These names are the RM stage's; recipes/ppo.sh's settings of the same kind carry PPO_.
# All flags: python -m normbt_plugin.train_rm --help
set -euo pipefail

# shellcheck source=recipes/stage-times.sh
source "$(dirname "$0")/stage-times.sh"
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then recipe_help "$0"; exit 0; fi

LOSS=${LOSS:-normbt}                    # any registered loss: normbt bt margin label_smoothing center ...
MODEL=${MODEL:?set MODEL to an SFT model path or hub name}
DATASET=${DATASET:?set DATASET to preference data (chosen/rejected)}
EVAL_DATASET=${EVAL_DATASET:-}          # held-out pairs (default: OpenRLHF's first 1% of DATASET)
OUT=${OUT:-runs/rm-$LOSS}
NPROC=${NPROC:-1}                       # GPUs (or CPU ranks) on this node
ZERO=${ZERO:-2}
MICRO_BS=${MICRO_BS:-4}
BS=${BS:-16}
EPOCHS=${EPOCHS:-1}
LR=${LR:-9e-6}                          # OpenRLHF's own defaults; configs set their own
MAX_LEN=${MAX_LEN:-512}
ATTN=${ATTN:-sdpa}                      # flash_attention_2 on GPU nodes with flash-attn
PROMPT_KEY=${PROMPT_KEY-prompt}         # set but empty: chosen/rejected are whole conversations
SEED=${SEED:-42}
PARAM_DTYPE=${PARAM_DTYPE:-}            # empty: the launcher's default, bf16 on GPUs, fp32 without
INPUT_TEMPLATE=${INPUT_TEMPLATE:-}      # e.g. '[CLS]{}' for BERT-style encoders
LABEL=${LABEL:-$LOSS}                   # the run's name in reports
CHOSEN_KEY=${CHOSEN_KEY:-chosen}
REJECTED_KEY=${REJECTED_KEY:-rejected}
APPLY_CHAT_TEMPLATE=${APPLY_CHAT_TEMPLATE:-0}  # 1: message-list data through the tokenizer's template
PACKING=${PACKING:-0}                   # 1: --ds.packing_samples (flash-attn on GPU nodes)
GRAD_CKPT=${GRAD_CKPT:-0}               # 1: gradient checkpointing (long sequences on GPUs: normbt_plugin.common.gpu_memory)
HOSTFILE=${HOSTFILE:-}                  # several nodes: DeepSpeed's "host slots=N" file
NODE_RANK=${NODE_RANK:-}                # without ssh: this node's rank, and MASTER_ADDR (node 0)
MASTER_ADDR=${MASTER_ADDR:-}
MASTER_PORT=${MASTER_PORT:-29500}
SAVE_STEPS=${SAVE_STEPS:-0}             # >0: a checkpoint every N steps; a rerun resumes; removed when done

args=(
  --model.model_name_or_path "$MODEL"
  --model.loss_type "$LOSS"
  --data.dataset "$DATASET"
  --data.chosen_key "$CHOSEN_KEY"
  --data.rejected_key "$REJECTED_KEY"
  --data.max_len "$MAX_LEN"
  --ds.zero_stage "$ZERO"
  --ds.attn_implementation "$ATTN"
  --train.micro_batch_size "$MICRO_BS"
  --train.batch_size "$BS"
  --train.max_epochs "$EPOCHS"
  --train.seed "$SEED"
  --adam.lr "$LR"
  --ckpt.output_dir "$OUT/model"
  --ckpt.path "$OUT/ckpt"
  --logger.tensorboard_dir "$OUT/tensorboard"
  --plugin.metrics_dir "$OUT/metrics"
  --plugin.label "$LABEL"
)
[[ -n "$PROMPT_KEY" ]] && args+=(--data.prompt_key "$PROMPT_KEY")
[[ -n "$PARAM_DTYPE" ]] && args+=(--ds.param_dtype "$PARAM_DTYPE")
[[ -n "$EVAL_DATASET" ]] && args+=(--eval.dataset "$EVAL_DATASET")
[[ -n "$INPUT_TEMPLATE" ]] && args+=(--data.input_template "$INPUT_TEMPLATE")
[[ "$APPLY_CHAT_TEMPLATE" == 1 ]] && args+=(--data.apply_chat_template)
[[ "$PACKING" == 1 ]] && args+=(--ds.packing_samples)
[[ "$GRAD_CKPT" == 1 ]] && args+=(--model.gradient_checkpointing_enable)
resume=0
[[ " $* " == *" --ckpt.load_enable "* ]] && resume=1
if (( SAVE_STEPS > 0 )); then  # one whole checkpoint kept (the plugin's guard); a rerun goes on from it
  args+=(--ckpt.save_steps "$SAVE_STEPS" --ckpt.max_num 1)
  if [[ -e "$OUT/ckpt/latest" ]] && (( ! resume )); then args+=(--ckpt.load_enable); resume=1; fi
fi

if [[ -n "$HOSTFILE" && -n "$NODE_RANK" ]]; then   # one launcher per node, no ssh
  cmd=(deepspeed --hostfile "$HOSTFILE" --no_ssh --node_rank "$NODE_RANK"
       --master_addr "${MASTER_ADDR:?set MASTER_ADDR to the address of node 0}" --master_port "$MASTER_PORT"
       --module normbt_plugin.train_rm "${args[@]}" "$@")
elif [[ -n "$HOSTFILE" ]]; then
  cmd=(deepspeed --hostfile "$HOSTFILE" --module normbt_plugin.train_rm "${args[@]}" "$@")
elif (( NPROC > 1 )); then  # one node: torchrun (DeepSpeed's launcher costs ~14 s more to start here)
  cmd=(torchrun --nnodes 1 --nproc-per-node "$NPROC" --master-port "$MASTER_PORT" -m normbt_plugin.train_rm
       "${args[@]}" "$@")
else
  cmd=(python -m normbt_plugin.train_rm "${args[@]}" "$@")
fi
if [[ "${DRY_RUN:-0}" == 1 ]]; then
  printf '%q ' "${cmd[@]}"; echo
  exit 0
fi
if [[ -n "$HOSTFILE" && ! -f "$HOSTFILE" ]]; then  # DeepSpeed would only warn and train on this node
  echo "rm.sh: HOSTFILE=$HOSTFILE does not exist: write DeepSpeed's hostfile ('node1 slots=8' a line)," \
    "or set HOSTFILE= to train on this node only" >&2
  exit 1
fi
mkdir -p "$OUT"
(( resume )) || rm -f "$OUT"/metrics/*.jsonl  # a resume appends to them
echo "rm.sh: loss=$LOSS model=$MODEL ranks=$NPROC zero=$ZERO -> $OUT$( ((resume)) && echo ', resumed')"
"${cmd[@]}"
# the model saved after the last checkpoint: the run is whole, nothing left to resume (a stop before
# the end, e.g. --plugin.stop_after_steps, keeps it)
if (( SAVE_STEPS > 0 )) && [[ "$OUT/model/config.json" -nt "$OUT/ckpt/latest" ]]; then rm -rf "$OUT/ckpt"; fi
