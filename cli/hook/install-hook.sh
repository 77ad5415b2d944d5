#!/bin/sh
# meson install step for the libvirt hook. libvirt >= 6.5 runs every file in HOOKS/qemu.d, so
# qemu.d/hvpatch is enough and an operator's own HOOKS/qemu keeps working. Older libvirt knows
# only HOOKS/qemu: there, where none exists, it becomes a link to qemu.d/hvpatch (never both,
# or libvirt >= 6.5 would run the hook twice).
set -eu
hooks="${DESTDIR:-}$1"
version=$(libvirtd --version 2>/dev/null | awk '{print $NF}')
major=${version%%.*}
minor=${version#*.}; minor=${minor%%.*}
if [ -n "$version" ] && { [ "$major" -lt 6 ] || { [ "$major" -eq 6 ] && [ "$minor" -lt 5 ]; }; }; then
  [ -e "$hooks/qemu" ] || ln -s qemu.d/hvpatch "$hooks/qemu"
fi
