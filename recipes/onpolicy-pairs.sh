#!/usr/bin/env bash
# On-policy RM data: the SFT policy samples the prompt set (vLLM), a gold reward model ranks the
# samples, and pairs of them become the RMs' training data (`normbt label-pairs`; the protocol of
# docs/results.md, Downstream). recipes/compare.sh runs it with ONPOLICY=1 before the RM stage.
#   POLICY=path/to/sft GOLD_RM=org/strong-rm ONPOLICY_PROMPTS=org/prompts bash recipes/onpolicy-pairs.sh
#   DRY_RUN=1 ...   # print the command
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=recipes/stage-times.sh
source recipes/stage-times.sh
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then recipe_help "$0"; exit 0; fi

POLICY=${POLICY:?set POLICY to the SFT policy that samples}
GOLD_RM=${GOLD_RM:-}                              # the judge (a reward model), or GOLD_FN
GOLD_FN=${GOLD_FN:-}                              # module:function, a true reward
ONPOLICY_PROMPTS=${ONPOLICY_PROMPTS:-${PROMPTS:?set ONPOLICY_PROMPTS (or PROMPTS)}}
ONPOLICY_PROMPT_KEY=${ONPOLICY_PROMPT_KEY:-${INPUT_KEY:-input}}
ONPOLICY_N_PROMPTS=${ONPOLICY_N_PROMPTS:-20000}  # the first N prompts
ONPOLICY_SAMPLES=${ONPOLICY_SAMPLES:-4}          # samples per prompt
ONPOLICY_PAIRS_PER_PROMPT=${ONPOLICY_PAIRS_PER_PROMPT:-2}
ONPOLICY_MIN_GAP=${ONPOLICY_MIN_GAP:-0}          # gold rewards this close tie (dropped)
ONPOLICY_MAX_NEW=${ONPOLICY_MAX_NEW:-${MAX_NEW:-1024}}
ONPOLICY_MAX_LEN=${ONPOLICY_MAX_LEN:-${PPO_MAX_LEN:-2048}}
ONPOLICY_TP=${ONPOLICY_TP:-1}                    # GPUs per vLLM engine
ONPOLICY_DTYPE=${ONPOLICY_DTYPE:-${EVAL_DTYPE:-float32}}  # the gold RM's dtype
APPLY_CHAT_TEMPLATE=${APPLY_CHAT_TEMPLATE:-0}
OUT=${OUT:-runs/onpolicy/pairs.jsonl}

judge=()
[[ -n "$GOLD_RM" ]] && judge=(--gold "$GOLD_RM")
[[ -n "$GOLD_FN" ]] && judge=(--gold_fn "$GOLD_FN")
(( ${#judge[@]} )) || { echo "onpolicy-pairs.sh: set GOLD_RM (a reward model) or GOLD_FN (a true reward)" >&2; exit 2; }
cmd=(normbt label-pairs --policy "$POLICY" --prompts "$ONPOLICY_PROMPTS" --prompt_key "$ONPOLICY_PROMPT_KEY"
     --n_prompts "$ONPOLICY_N_PROMPTS" --samples "$ONPOLICY_SAMPLES" "${judge[@]}"
     --pairs_per_prompt "$ONPOLICY_PAIRS_PER_PROMPT" --min_gap "$ONPOLICY_MIN_GAP" --max_new "$ONPOLICY_MAX_NEW"
     --max_len "$ONPOLICY_MAX_LEN" --tensor_parallel_size "$ONPOLICY_TP" --dtype "$ONPOLICY_DTYPE" --out "$OUT")
[[ "$APPLY_CHAT_TEMPLATE" == 1 ]] && cmd+=(--apply_chat_template)
if [[ "${DRY_RUN:-0}" == 1 ]]; then printf '%q ' "${cmd[@]}"; echo; exit 0; fi
export PATH="$PWD/.venv/bin:$PATH"
"${cmd[@]}"
