#!/bin/bash
# Builds every tests/fuzz/*_fuzz.cpp with clang++ -fsanitize=fuzzer,address for coverage-guided
# fuzzing: tests/fuzz/build-libfuzzer.sh [OUTDIR]; then run OUTDIR/NAME -max_total_time=60 seeds/NAME.
# The per-target extra sources and libraries are listed in tests/fuzz/targets.txt:
#   NAME: source.cpp ... | pkg-config-packages
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$top/build-fuzz}
mkdir -p "$out"
while IFS= read -r line; do
  case "$line" in ''|'#'*) continue ;; esac
  name=${line%%:*}; rest=${line#*:}
  srcs=${rest%%|*}; pkgs=${rest#*|}
  flags=$( [ -n "${pkgs// /}" ] && pkg-config --cflags --libs $pkgs || true)
  echo "building $name"
  (cd "$top" && clang++ -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -I. -I"$out" \
    $srcs -o "$out/$name" $flags)
done < "$top/tests/fuzz/targets.txt"
