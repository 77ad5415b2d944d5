#!/bin/bash
# Builds every fuzz target of tests/fuzz/targets.txt with clang++ -fsanitize=fuzzer for
# coverage-guided fuzzing: tests/fuzz/build-libfuzzer.sh [OUTDIR] (default build-fuzz); then run
# OUTDIR/NAME -max_total_time=60 tests/fuzz/seeds/NAME (tests/fuzz/run-libfuzzer.sh runs them all).
# targets.txt lines: `NAME: sources ... | pkg-config packages`; OUT/ in a source is OUTDIR.
# Each source is compiled once into OUTDIR/obj (two at a time, skipped when up to date) and the
# targets share the objects: most of them link the same guest kernel model.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
out=$(mkdir -p "${1:-$top/build-fuzz}" && cd "${1:-$top/build-fuzz}" && pwd)
cxx=${CXX_FUZZ:-clang++-14}
jobs=${FUZZ_BUILD_JOBS:-2}
mkdir -p "$out/obj" "$out/guest-agent"
cd "$top"

# The agent protocol's generated code (agent_response includes guest-agent/hvpatch_agent.pb.h).
if [ ! "$out/guest-agent/hvpatch_agent.pb.cc" -nt guest-agent/hvpatch_agent.proto ]; then
  protoc --proto_path=guest-agent --cpp_out="$out/guest-agent" guest-agent/hvpatch_agent.proto
fi

sanitize="-fsanitize=address,undefined -fno-sanitize-recover=undefined"
declare -A pkgflags
all_srcs=()
while IFS= read -r line; do
  case "$line" in ''|'#'*) continue ;; esac
  name=${line%%:*}; rest=${line#*:}
  srcs=${rest%%|*}; pkgs=${rest#*|}
  srcs=${srcs//OUT\//$out/}
  cflags=$( [ -n "${pkgs// /}" ] && pkg-config --cflags $pkgs || true)
  for s in $srcs; do all_srcs+=("$s"); pkgflags[$s]="${pkgflags[$s]:-} $cflags"; done
done < tests/fuzz/targets.txt

# Compile each source once. The fuzz entry points get -fsanitize=fuzzer at link time only.
compile_one() {  # SRC OBJ EXTRA_CFLAGS
  # shellcheck disable=SC2086
  $cxx -std=c++20 -g -O1 -fsanitize=fuzzer-no-link $sanitize -I. -I"$out" $3 -c "$1" -o "$2" ||
    { echo "build-libfuzzer: compiling $1 failed" >&2; return 255; }
}
export -f compile_one
export cxx sanitize out
# Objects are up to date against their own source; a changed header anywhere rebuilds them all.
stamp="$out/obj/.headers"
if [ ! -f "$stamp" ] || [ -n "$(find base patcher vmm qmp guest-agent tests -name '*.h' -newer "$stamp" | head -1)" ]; then
  rm -f "$out"/obj/*.o
fi
todo=()
for s in $(printf '%s\n' "${all_srcs[@]}" | sort -u); do
  o="$out/obj/$(echo "${s#"$out"/}" | tr '/' '_').o"
  if [ ! "$o" -nt "$s" ]; then todo+=("$s" "$o" "${pkgflags[$s]}"); fi
done
if ((${#todo[@]})); then
  echo "build-libfuzzer: compiling $((${#todo[@]} / 3)) sources with $cxx ($jobs at a time)"
  printf '%s\0' "${todo[@]}" | xargs -0 -n 3 -P "$jobs" bash -c 'compile_one "$1" "$2" "$3"' _
fi
touch "$stamp"

while IFS= read -r line; do
  case "$line" in ''|'#'*) continue ;; esac
  name=${line%%:*}; rest=${line#*:}
  srcs=${rest%%|*}; pkgs=${rest#*|}
  srcs=${srcs//OUT\//$out/}
  libs=$( [ -n "${pkgs// /}" ] && pkg-config --libs $pkgs || true)
  objs=()
  for s in $srcs; do objs+=("$out/obj/$(echo "${s#"$out"/}" | tr '/' '_').o"); done
  echo "build-libfuzzer: linking $name"
  $cxx -fsanitize=fuzzer $sanitize "${objs[@]}" -o "$out/$name" $libs
done < tests/fuzz/targets.txt
