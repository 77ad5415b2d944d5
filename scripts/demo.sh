#!/bin/bash
# The hvpatch demo, from a fresh Debian 12 machine (as root): installs the packages, builds the
# images and the project, boots a test guest under QEMU, live-patches its kernel from the host,
# shows the result, and reverts it. The guest is always stopped at the end, by its PID.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Installing packages, building images and hvpatch (cached after the first run)"
scripts/install-deps.sh
images/build.sh
if [ -f build/build.ninja ]; then meson setup --reconfigure build >/dev/null; else meson setup build >/dev/null; fi
meson compile -C build >/dev/null

vmdir=$(mktemp -d /tmp/hvpatch-demo-XXXXXX)
testvm=build/tests/harness/hvpatch-testvm
hvpatch=build/cli/hvpatch
cleanup() { "$testvm" stop "$vmdir" >/dev/null 2>&1 || true; rm -rf "$vmdir"; }
trap cleanup EXIT
guest() { echo "guest\$ $1"; "$testvm" run "$vmdir" "$1"; }

step "Booting a Debian $(cat images/out/abi)-cloud-amd64 guest under QEMU (TCG)"
agent_flag=; [ -x build/guest-agent/hvpatch-agent ] || agent_flag=--no-agent
# Guest RAM in a shared memfd, as operators are advised to configure VMs (docs/performance.md):
# hvpatch then reads the guest's tasks and stacks from a mapping, in a much shorter pause.
target=$("$testvm" start "$vmdir" --shared-ram $agent_flag)
echo "guest is up; its QMP socket is $target"
guest "uname -r"
guest "cat /proc/cmdline"
guest "grep -w cmdline_proc_show /proc/kallsyms"

if [ -x "$hvpatch" ]; then
  patch=images/out/patches/hvp_sample.ko
  step "What hvpatch sees in the guest, from memory alone"
  "$hvpatch" info "$target"
  step "Live-patching cmdline_proc_show with $patch (no module is loaded in the guest)"
  "$hvpatch" apply "$target" "$patch"
  guest "cat /proc/cmdline"
  step "Inside the guest, the agent shows it the way /sys/kernel/livepatch would"
  guest "cd /run/hvpatch/livepatch && find hvp_sample | sort && cat hvp_sample/enabled"
  step "The guest kernel lists the patch as a module (hvpatch's shadow module: docs/shadow-module.md)"
  guest "grep hvp_sample /proc/modules"
  step "Patches applied to this guest"
  "$hvpatch" list "$target"
  step "Reverting"
  "$hvpatch" revert "$target" hvp_sample
  guest "cat /proc/cmdline"
fi
step "Done; stopping the guest"
