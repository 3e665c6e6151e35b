# Sourced by the chaining recipes: each stage's wall time into a TSV, and the table of them; a
# resumable stage runner; --help generated from a script's own assignments.
#   start=$EPOCHREALTIME; ...; stage_time "$times" NAME "$start";   stage_table "$times" "$label"
#   stage_run WHO LOGS TIMES NAME DONE|--out cmd...;   stop_point NAME;   check_until "$0";   recipe_help "$0"
# shellcheck source=recipes/run-files.sh
source "$(dirname "${BASH_SOURCE[0]}")/run-files.sh"  # the run files' names
recipe_help() {  # recipe_help SCRIPT: its header comment (after the shebang), its stop points, then every
  # VAR=${VAR:-default}
  awk 'NR > 1 && /^#/ {print; next} NR > 1 {exit}' "$1"; echo
  [[ -z "$(stop_points "$1")" ]] || { echo "Stop points (UNTIL=NAME ends the run there): $(stop_points "$1")all"; echo; }
  echo "Environment (defaults; the environment wins):"
  awk 'match($0, /^[A-Z_][A-Z0-9_]*=\$\{[A-Z_][A-Z0-9_]*(:-|-|:\?)/) {
    name = substr($0, 1, index($0, "=") - 1); rest = substr($0, RLENGTH + 1)
    required = substr($0, RLENGTH, 1) == "?"
    depth = 1  # the value runs to the brace that closes ${
    for (i = 1; i <= length(rest) && depth; i++) { c = substr(rest, i, 1); depth += (c == "{") - (c == "}") }
    value = substr(rest, 1, i - 2); note = substr(rest, i); sub(/^[ \t]*#?[ \t]*/, "", note)
    if (required) printf "  %-28s %s\n", name " (required)", value
    else if (note == "") printf "  %s\n", name "=" value
    else printf "  %-28s %s\n", name "=" value, note
  }' "$1"
}
stage_run() {  # stage_run WHO LOGS TIMES NAME DONE cmd...: quiet into LOGS/NAME.log (its tail on
  # failure), its wall time into TIMES; skipped when the file DONE exists (a rerun continues a study
  # that stopped; DONE --out: the file the command's own --out names, so it is named once; "": never;
  # an earlier attempt's log moves to LOGS/NAME.earlier.log);
  # DRY_RUN=1 prints the command instead (a recipe it calls prints its own)
  local who=$1 logs=$2 times=$3 name=$4 done=$5 start=$EPOCHREALTIME; shift 5
  if [[ "$done" == --out ]]; then
    local arg previous=""; done=""
    for arg in "$@"; do [[ "$previous" != --out ]] || done=$arg; previous=$arg; done
    [[ -n "$done" ]] || { echo "stage_run $name: DONE is --out, but the command has no --out" >&2; exit 2; }
  fi
  if [[ "${DRY_RUN:-0}" == 1 && " $* " == *" bash recipes/"* ]]; then "$@"; return; fi
  if [[ "${DRY_RUN:-0}" == 1 ]]; then printf '%q ' "$@"; echo; return; fi
  if [[ -n "$done" && -e "$done" ]]; then echo "$who: $name (done before)"; return; fi
  echo "$who: $name"
  mkdir -p "$logs"
  # a rerun (a stage resumed from its checkpoint) keeps the earlier attempts' output in NAME.earlier.log
  [[ ! -s "$logs/$name.log" ]] || cat "$logs/$name.log" >> "$logs/$name.earlier.log"
  "$@" > "$logs/$name.log" 2>&1 || { echo "failed: see $logs/$name.log" >&2; tail -30 "$logs/$name.log" >&2; exit 1; }
  stage_time "$times" "$name" "$start"
}
stage_time() {  # stage_time FILE NAME START: append NAME and the seconds since START
  printf '%s\t%s\n' "$2" "$(awk "BEGIN {print $EPOCHREALTIME - $3}")" >> "$1"
}
stage_table() {  # stage_table FILE WHO: the stages' wall times, longest first, with their shares
  echo "$2: wall time by stage ($1)"
  sort -t$'\t' -k2,2gr "$1" | awk -F'\t' '{name[NR]=$1; t[NR]=$2; total+=$2}
    END {printf "| stage | wall (s) | share |\n|---|---:|---:|\n";
         for (i = 1; i <= NR; i++) printf "| %s | %.1f | %.0f%% |\n", name[i], t[i], 100*t[i]/total;
         printf "| total | %.1f | |\n", total}'
}
stop_points() {  # stop_points SCRIPT: the names of its stop_point lines, in order
  awk '$1 == "stop_point" {printf "%s ", $2}' "$1"
}
check_until() {  # check_until SCRIPT: UNTIL (default all) is one of SCRIPT's stop points, before any stage runs
  local points; points=$(stop_points "$1")
  [[ " $points all " == *" ${UNTIL:-all} "* ]] && return 0
  echo "$(basename "$1"): UNTIL=$UNTIL is not a stop point; its stop points: ${points}all" >&2
  exit 2
}
stop_point() {  # stop_point NAME: with UNTIL=NAME the recipe ends here, its stage table printed ($times, $who)
  [[ "${UNTIL:-all}" == "$1" ]] || return 0
  [[ "${DRY_RUN:-0}" == 1 || -z "${times:-}" ]] || stage_table "$times" "${who:-$(basename "$0")}"
  exit 0
}
