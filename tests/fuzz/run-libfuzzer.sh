#!/bin/bash
# Coverage-guided fuzzing of every target in tests/fuzz/targets.txt under libFuzzer, for CI:
#   tests/fuzz/run-libfuzzer.sh [OUTDIR]   (FUZZ_SECONDS per target, default 60; FUZZ_JOBS at once, default 2)
# Builds the targets (build-libfuzzer.sh), runs each from a copy of its seeds for FUZZ_SECONDS,
# two at a time (the CI machine has 2 cores), and prints per target the executions, the coverage
# (libFuzzer's cov: edges and ft: features) and the outcome. Exits non-zero if any target
# crashed, leaked, timed out on an input or ran out of memory (the reproducer is named).
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
out=$(mkdir -p "${1:-$top/build-fuzz}" && cd "${1:-$top/build-fuzz}" && pwd)
seconds=${FUZZ_SECONDS:-60}
jobs=${FUZZ_JOBS:-2}
t0=$(date +%s)
"$top/tests/fuzz/build-libfuzzer.sh" "$out"
t1=$(date +%s)

names=()
while IFS= read -r line; do
  case "$line" in ''|'#'*) continue ;; esac
  names+=("${line%%:*}")
done < "$top/tests/fuzz/targets.txt"

run_one() {  # NAME
  local name=$1 dir="$out/run/$1"
  rm -rf "$dir"
  mkdir -p "$dir/corpus" "$dir/artifacts"
  cp -r "$top/tests/fuzz/seeds/$name/." "$dir/corpus/" 2>/dev/null || true
  set +e
  "$out/$name" -max_total_time="$seconds" -print_final_stats=1 -timeout=25 -rss_limit_mb=2048 \
    -artifact_prefix="$dir/artifacts/" "$dir/corpus" > "$dir/log" 2>&1
  echo $? > "$dir/rc"
}
export -f run_one
export out top seconds
printf '%s\0' "${names[@]}" | xargs -0 -n 1 -P "$jobs" bash -c 'run_one "$1"' _

failed=0
for name in "${names[@]}"; do
  dir="$out/run/$name"
  rc=$(cat "$dir/rc" 2>/dev/null || echo 99)
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$dir/log" | tail -1)
  cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$dir/log" | tail -1)
  artifacts=$(ls "$dir/artifacts" 2>/dev/null | tr '\n' ' ')
  if [ "$rc" = 0 ] && [ -z "$artifacts" ]; then
    echo "libfuzzer: $name: ${seconds} s, ${execs:-?} executions, ${cov:-cov: ?}, corpus $(ls "$dir/corpus" | wc -l) inputs, 0 crashes"
  else
    failed=1
    echo "libfuzzer: $name: FAILED (exit $rc) after ${execs:-?} executions, ${cov:-cov: ?}; artifacts: ${artifacts:-none}"
    grep -E '^==[0-9]+==ERROR|^SUMMARY|deadly signal|ERROR: libFuzzer' "$dir/log" | head -5 | sed 's/^/  /'
    for a in $artifacts; do echo "  reproduce: $out/$name $dir/artifacts/$a"; done
  fi
done
echo "libfuzzer: ${#names[@]} targets, build $((t1 - t0)) s, fuzzing $(( $(date +%s) - t1 )) s ($jobs at a time)"
exit $failed
