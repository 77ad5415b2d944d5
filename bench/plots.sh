#!/bin/bash
# Draws the plots of bench/README.md from the bench programs' JSON (bench/data/), with gnuplot
# (Debian's gnuplot-nox; python3, which meson needs anyway, turns the JSON into columns).
#
#   bench/plots.sh [DATA_DIR] [OUT_DIR]      # defaults: bench/data, bench/plots
#
# Inputs (made by the commands in bench/README.md, "Issue 14"):
#   pause_scaling_memfd.json   BUILD/bench/pause_scaling --shared-ram --rounds 50 --json ...
#   pause_scaling_anon.json    BUILD/bench/pause_scaling --rounds 50 --json ...
#   patch_transaction.json     BUILD/bench/patch_transaction --json ...
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
data=${1:-$here/data}
out=${2:-$here/plots}
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

python3 - "$data" "$tmp" <<'PY'
import json, os, statistics, sys
data, tmp = sys.argv[1], sys.argv[2]
def load(name):
    p = os.path.join(data, name)
    return json.load(open(p)) if os.path.exists(p) else None
med = statistics.median
# 1. pause window against threads: threads, apply median, bare median, ratio
for tag in ("memfd", "anon"):
    j = load(f"pause_scaling_{tag}.json")
    if not j: continue
    with open(os.path.join(tmp, f"scaling_{tag}.dat"), "w") as f:
        for l in j["levels"]:
            a, b = med(l["apply_ms"]), med(l["bare_ms"])
            f.write(f'{l["threads"]} {a:.4f} {b:.4f} {a/b:.3f}\n')
    # 3. distribution: every apply pause window of the smallest and of the ~2000-thread level
    lv = sorted(j["levels"], key=lambda l: l["threads"])
    with open(os.path.join(tmp, f"dist_{tag}.dat"), "w") as f:
        for v in lv[0]["apply_ms"]: f.write(f"{v:.4f}\n")
    with open(os.path.join(tmp, f"dist_bare_{tag}.dat"), "w") as f:
        for v in lv[0]["bare_ms"]: f.write(f"{v:.4f}\n")
    with open(os.path.join(tmp, f"dist_label_{tag}"), "w") as f:
        f.write(f'{lv[0]["threads"]} threads, {len(lv[0]["apply_ms"])} applies')
# 2. end to end: label median
j = load("patch_transaction.json")
if j:
    s = j["samples_ms"]
    rows = [("hvpatch, agent, warm", "hvpatch apply (process start to exit)"),
            ("hvpatch, agent, cold", "hvpatch apply, cold cache (process start to exit)"),
            ("hvpatch, no agent, warm", "hvpatch apply (no agent) (process start to exit)"),
            ("hvpatch, no agent, cold", "hvpatch apply (no agent), cold cache (process start to exit)"),
            ("in-guest insmod+transition", "in-guest insmod + transition")]
    with open(os.path.join(tmp, "e2e.dat"), "w") as f:
        for label, key in rows:
            if key in s: f.write(f'"{label}" {med(s[key]):.2f}\n')
PY

if [ -f "$tmp/scaling_memfd.dat" ] || [ -f "$tmp/scaling_anon.dat" ]; then
  plot=()
  [ -f "$tmp/scaling_memfd.dat" ] && plot+=("'$tmp/scaling_memfd.dat' using 1:2 with linespoints lw 2 title 'apply pause, guest RAM mapped (memfd)'" "'$tmp/scaling_memfd.dat' using 1:3 with lines dt 2 lw 2 title 'bare QMP stop+cont (memfd run)'")
  [ -f "$tmp/scaling_anon.dat" ] && plot+=("'$tmp/scaling_anon.dat' using 1:2 with linespoints lw 2 title 'apply pause, anonymous RAM (process_vm_readv)'" "'$tmp/scaling_anon.dat' using 1:3 with lines dt 3 lw 2 title 'bare QMP stop+cont (anonymous run)'")
  gnuplot <<GP
set terminal pngcairo size 900,560 noenhanced
set output '$out/pause_vs_tasks.png'
set title 'Pause window of apply against guest threads (median, TCG)'
set xlabel 'guest threads (kernel threads + sleep processes)'
set ylabel 'ms'
set logscale y
set grid
set key top left
plot $(IFS=,; echo "${plot[*]}")
GP
fi

if [ -f "$tmp/e2e.dat" ]; then
  gnuplot <<GP
set terminal pngcairo size 900,520 noenhanced
set output '$out/end_to_end.png'
set title 'Applying hvp_sample end to end (median ms, one guest, one run)'
set style fill solid 0.7
set boxwidth 0.6
set ylabel 'ms'
set yrange [0:*]
set grid ytics
set xtics rotate by -20
plot '$tmp/e2e.dat' using 0:2:xtic(1) with boxes notitle, '' using 0:2:(sprintf("%.0f", \$2)) with labels offset 0,1 notitle
GP
fi

for tag in memfd anon; do
  [ -f "$tmp/dist_$tag.dat" ] || continue
  label=$(cat "$tmp/dist_label_$tag")
  gnuplot <<GP
set terminal pngcairo size 900,520 noenhanced
set output '$out/pause_distribution_$tag.png'
set title 'Distribution of apply pause windows ($label, guest RAM: $tag)'
set xlabel 'ms'
set ylabel 'count'
set style fill solid 0.5
set grid
bw = 0.25
set boxwidth bw * 0.9 absolute
bin(x) = bw * floor(x / bw) + bw / 2
plot '$tmp/dist_$tag.dat' using (bin(\$1)):(1) smooth freq with boxes title 'apply pause window', \
     '$tmp/dist_bare_$tag.dat' using (bin(\$1)):(0.5) smooth freq with boxes fs transparent solid 0.3 title 'bare QMP stop+cont (2 per apply, counted 1/2)'
GP
done
ls -1 "$out"/*.png
