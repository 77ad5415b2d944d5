#!/bin/bash
# Runs the system libvirtd (qemu:///system) for hvpatch's libvirt tests, on a machine without
# systemd (CI containers, the dev machines): creates what the Debian packages' maintainer
# scripts and systemd units would (the libvirt-qemu user, run/log/lib directories), starts
# virtlogd and libvirtd as daemons and records their PIDs, and stops exactly those PIDs.
#
#   libvirtd-test.sh start [--hook HVPATCH_BIN] [--state-dir DIR]
#   libvirtd-test.sh stop
#   libvirtd-test.sh status
#
# QEMU runs with libvirt's compiled-in defaults, i.e. Debian's default qemu.conf (every line
# commented out): as user and group `libvirt-qemu`, with the DAC security driver. An existing
# /etc/libvirt/qemu.conf is left alone. --hook installs /etc/libvirt/hooks/qemu.d/hvpatch, a
# wrapper running `HVPATCH_BIN libvirt-hook` with HVPATCH_STATE_DIR=DIR, before the daemon
# starts: libvirtd discovers hooks only at startup. `stop` destroys the test domains
# (hvpatch-test-*) still running, stops the daemons and removes the hook it installed.
# Packages come from scripts/install-deps.sh; this script installs nothing.
set -euo pipefail

RUN=/run/hvpatch-libvirtd-test
HOOK=/etc/libvirt/hooks/qemu.d/hvpatch
URI=qemu:///system

die() { echo "libvirtd-test: $*" >&2; exit 1; }
alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

wait_gone() {  # PID: up to 10 s, then SIGKILL
  local pid=$1 i
  for i in $(seq 1 100); do alive "$pid" || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}

start() {
  local hook_bin="" state_dir=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --hook) hook_bin=$(realpath "$2"); shift 2 ;;
      --state-dir) state_dir=$2; shift 2 ;;
      *) die "unknown option '$1'" ;;
    esac
  done
  command -v libvirtd >/dev/null || die "libvirtd not found (run scripts/install-deps.sh)"
  command -v virtlogd >/dev/null || die "virtlogd not found (run scripts/install-deps.sh)"
  [ "$(id -u)" = 0 ] || die "must run as root (qemu:///system)"
  if [ -f "$RUN/libvirtd.pid" ] && alive "$(cat "$RUN/libvirtd.pid")"; then
    die "already running (pid $(cat "$RUN/libvirtd.pid")): run '$0 stop' first"
  fi
  if [ -f /run/libvirtd.pid ] && alive "$(cat /run/libvirtd.pid)"; then
    die "a libvirtd not started by this script runs (pid $(cat /run/libvirtd.pid))"
  fi
  # libvirtd's QEMU driver resolves its compiled-in user and group before reading qemu.conf:
  # they must exist (libvirt-daemon-system's postinst creates them on a normal install).
  getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
  getent passwd libvirt-qemu >/dev/null ||
    useradd -r -g libvirt-qemu -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
  mkdir -p "$RUN" /var/log/libvirt/qemu /var/lib/libvirt/qemu /var/cache/libvirt/qemu \
    /run/libvirt /etc/libvirt/qemu /etc/libvirt/hooks/qemu.d
  if [ -n "$hook_bin" ]; then
    [ -x "$hook_bin" ] || die "hook program '$hook_bin' is not executable"
    {
      echo '#!/bin/sh'
      echo '# Installed by hvpatch scripts/libvirtd-test.sh for the libvirt tests.'
      [ -n "$state_dir" ] && echo "export HVPATCH_STATE_DIR='$state_dir'"
      echo "exec '$hook_bin' libvirt-hook \"\$@\""
    } >"$HOOK"
    chmod 0755 "$HOOK"
    echo "$HOOK" >"$RUN/hook"
  fi
  local t0; t0=$(date +%s%N)
  rm -f /run/virtlogd.pid /run/libvirtd.pid
  virtlogd -d
  for i in $(seq 1 100); do [ -s /run/virtlogd.pid ] && break; sleep 0.05; done
  [ -s /run/virtlogd.pid ] || die "virtlogd did not start"
  cp /run/virtlogd.pid "$RUN/virtlogd.pid"
  libvirtd -d
  for i in $(seq 1 100); do [ -s /run/libvirtd.pid ] && break; sleep 0.05; done
  [ -s /run/libvirtd.pid ] || die "libvirtd did not start (see /var/log/libvirt/libvirtd.log)"
  cp /run/libvirtd.pid "$RUN/libvirtd.pid"
  for i in $(seq 1 300); do virsh -c "$URI" version >/dev/null 2>&1 && break; sleep 0.05; done
  virsh -c "$URI" version >/dev/null || die "libvirtd does not answer on $URI"
  echo "libvirtd-test: libvirtd pid $(cat "$RUN/libvirtd.pid"), virtlogd pid $(cat "$RUN/virtlogd.pid")," \
    "ready in $(( ($(date +%s%N) - t0) / 1000000 )) ms"
}

stop() {
  [ -d "$RUN" ] || { echo "libvirtd-test: not running"; return 0; }
  local pid
  if [ -f "$RUN/libvirtd.pid" ] && alive "$(cat "$RUN/libvirtd.pid")"; then
    # Only the domains the tests made: a test killed midway must not leave a QEMU behind.
    for d in $(virsh -c "$URI" list --name 2>/dev/null | grep '^hvpatch-test-' || true); do
      virsh -c "$URI" destroy "$d" >/dev/null 2>&1 || true
    done
    for d in $(virsh -c "$URI" list --all --name 2>/dev/null | grep '^hvpatch-test-' || true); do
      virsh -c "$URI" undefine "$d" >/dev/null 2>&1 || true
    done
  fi
  for f in libvirtd virtlogd; do
    [ -f "$RUN/$f.pid" ] || continue
    pid=$(cat "$RUN/$f.pid")
    if alive "$pid"; then kill -TERM "$pid"; wait_gone "$pid"; fi
    rm -f "$RUN/$f.pid"
  done
  if [ -f "$RUN/hook" ]; then rm -f "$(cat "$RUN/hook")" "$RUN/hook"; fi
  rmdir "$RUN" 2>/dev/null || true
  echo "libvirtd-test: stopped"
}

status() {
  if [ -f "$RUN/libvirtd.pid" ] && alive "$(cat "$RUN/libvirtd.pid")"; then
    echo "libvirtd-test: libvirtd pid $(cat "$RUN/libvirtd.pid") running"
  else
    echo "libvirtd-test: not running"; return 1
  fi
}

case "${1:-}" in
  start) shift; start "$@" ;;
  stop) stop ;;
  status) status ;;
  *) die "usage: $0 start [--hook HVPATCH_BIN] [--state-dir DIR] | stop | status" ;;
esac
