# Sourced by the chaining recipes: each stage's wall time into a TSV, and the table of them.
#   start=$EPOCHREALTIME; ...; stage_time "$times" NAME "$start";   stage_table "$times" "$label"
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
