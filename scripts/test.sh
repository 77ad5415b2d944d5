#!/bin/bash
# The whole test suite, from a fresh Debian 12 machine (as root): installs the packages, builds
# the images and the project, runs unit and integration tests, and ends with "N passed, N failed".
# Exit status is non-zero when any test failed. Options are passed to `meson test`
# (e.g. scripts/test.sh --suite unit).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
t0=$(date +%s)

scripts/install-deps.sh
images/build.sh
images/build.sh 6.1.0-47-cloud-amd64  # the 6.1.170-3 guest of `hvpatch build`'s tests (issue 12)
if [ -f build/build.ninja ]; then meson setup --reconfigure build >/dev/null; else meson setup build >/dev/null; fi
meson compile -C build

junit=build/meson-logs/testlog.junit.xml
rm -f "$junit"  # never summarize a previous run
set +e
meson test -C build --no-rebuild --print-errorlogs --num-processes 2 "$@"
rc=$?
set -e

if [ -f "$junit" ]; then
  scripts/test-summary.py "$junit" || rc=1
else
  echo "0 passed, 1 failed (meson test produced no results, exit $rc)"
  rc=1
fi
echo "test time: $(( $(date +%s) - t0 )) s"
left=$(pgrep -a -f 'hvpatch-vm-' || true)
if [ -n "$left" ]; then echo "warning: test VMs still running:"; echo "$left"; fi
exit $rc
