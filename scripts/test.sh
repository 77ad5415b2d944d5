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
if [ -f build/build.ninja ]; then meson setup --reconfigure build >/dev/null; else meson setup build >/dev/null; fi
meson compile -C build

set +e
meson test -C build --print-errorlogs --num-processes 2 "$@"
rc=$?
set -e

scripts/test-summary.py build/meson-logs/testlog.junit.xml || rc=1
echo "test time: $(( $(date +%s) - t0 )) s"
left=$(pgrep -a -f 'hvpatch-vm-' || true)
if [ -n "$left" ]; then echo "warning: test VMs still running:"; echo "$left"; fi
exit $rc
