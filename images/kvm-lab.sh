#!/bin/bash
# The KVM lab's disks (issue 13; lab notes "Nested KVM"). The L1 guest is the normal test guest
# kernel and base initramfs booted under TCG with `-cpu max` (QEMU emulates AMD SVM, so L1 loads
# kvm_amd and has /dev/kvm). Two read-only virtio-blk ext4 disks, made from files with
# `mke2fs -d` (no root mounts, no loop devices), give it the rest; L1 uses them through chroot.
#
#   images/kvm-lab.sh lab OUTDIR
#       OUTDIR/kvm-lab/lab.img: QEMU with its libraries, loader and firmware, busybox, GNU
#       timeout/cpio/gzip (the harness's tools), and the L2 guest: the kernel, the base
#       initramfs and the test patches of OUTDIR (images/build.sh runs this; cached by the
#       hash of its inputs).
#   images/kvm-lab.sh build IMG FILE...
#       IMG: the hvpatch build for L1: each FILE in /bin and every shared library they need in
#       /lib (used with LD_LIBRARY_PATH). Made by the KVM suite at its start, from the binaries
#       under test (a second, small disk, so the large one stays cached across builds).
set -euo pipefail
export PATH=$PATH:/usr/sbin:/sbin
log() { echo "images: kvm-lab: $*" >&2; }

# Copies ELF $1 to $2/$3 and the shared libraries it needs to $2/$4; the loader to $2/lib64.
copy_elf() {
  local elf=$1 root=$2 dest=$3 libdir=$4 lib
  install -D -m 755 "$elf" "$root/$dest"
  # A static executable (ldd says so and fails) needs nothing more.
  { ldd "$elf" 2>/dev/null || true; } | { grep -o '/[^ ]*' || true; } | while read -r lib; do
    case $lib in
      */ld-linux*) install -D -m 755 "$(realpath "$lib")" "$root/lib64/${lib##*/}" ;;
      *) install -D -m 644 "$(realpath "$lib")" "$root/$libdir/${lib##*/}" ;;
    esac
  done
}

lab() {
  local out=$1 here qemu
  here=$(cd "$(dirname "$0")" && pwd)
  qemu=$(command -v qemu-system-x86_64) || { log "qemu-system-x86_64 not found (scripts/install-deps.sh)"; exit 1; }
  command -v mke2fs >/dev/null || { log "mke2fs not found: install e2fsprogs (scripts/install-deps.sh)"; exit 1; }
  mkdir -p "$out/kvm-lab"
  # Inputs: this script, the packages whose files go in, and the L2 guest's stamps.
  local h
  h=$( { cat "$0"
         dpkg-query -W qemu-system-x86 qemu-system-data seabios ipxe-qemu busybox-static coreutils cpio gzip libc6
         cat "$out/kernel.stamp" "$out/initramfs.stamp" "$out"/patches/*.stamp; } | sha256sum | cut -c1-16)
  if [ -f "$out/kvm-lab/lab.img" ] && [ "$(cat "$out/kvm-lab/lab.stamp" 2>/dev/null)" = "$h" ]; then
    log "lab disk cached"; return
  fi
  local root
  root=$(mktemp -d)
  trap 'rm -rf "$root"' RETURN
  mkdir -p "$root"/{bin,usr/bin,tmp,dev,proc,sys,build,images/patches}
  copy_elf "$qemu" "$root" usr/bin/qemu-system-x86_64 lib/x86_64-linux-gnu
  # The harness runs QEMU under `timeout --kill-after` and packs the agent with cpio | gzip:
  # the GNU tools, as on the host (busybox's lack those options).
  for t in timeout cpio gzip; do copy_elf "$(command -v $t)" "$root" "usr/bin/$t" lib/x86_64-linux-gnu; done
  # Firmware: QEMU looks for ROMs in /usr/share/qemu, whose entries link into seabios and ipxe.
  local d
  for d in /usr/share/qemu /usr/share/seabios /usr/lib/ipxe/qemu; do
    mkdir -p "$root$d" && cp -rL "$d/." "$root$d/"
  done
  cp /bin/busybox "$root/bin/busybox"
  local a
  for a in $(/bin/busybox --list); do
    [ -e "$root/bin/$a" ] || [ -e "$root/usr/bin/$a" ] || ln -s busybox "$root/bin/$a"
  done
  # The L2 guest: what ImagesDir() holds on the host (the harness appends the agent itself).
  cp "$out/vmlinuz" "$out/initramfs-base.cpio.gz" "$out/abi" "$root/images/"
  cp "$out"/patches/*.ko "$root/images/patches/"
  # Sized for the content plus room for ext4's metadata; the file is sparse.
  local mb
  mb=$(( $(du -sm "$root" | cut -f1) * 5 / 4 + 64 ))
  rm -f "$out/kvm-lab/lab.img.new"
  mke2fs -q -t ext4 -E root_owner=0:0 -d "$root" "$out/kvm-lab/lab.img.new" "${mb}M" >/dev/null
  mv "$out/kvm-lab/lab.img.new" "$out/kvm-lab/lab.img"
  echo "$h" > "$out/kvm-lab/lab.stamp"
  log "lab disk built ($(du -sh "$root" | cut -f1) of files, image ${mb} MiB)"
}

build() {
  local img=$1; shift
  local root f mb
  root=$(mktemp -d)
  trap 'rm -rf "$root"' RETURN
  for f in "$@"; do
    [ -x "$f" ] || { log "'$f' is not an executable"; exit 1; }
    copy_elf "$f" "$root" "bin/${f##*/}" lib
    # Debug info is most of a debugoptimized build's size, and L1 reads every byte under TCG.
    strip --strip-debug "$root/bin/${f##*/}"
  done
  mb=$(( $(du -sm "$root" | cut -f1) * 5 / 4 + 32 ))
  rm -f "$img.new"
  mke2fs -q -t ext4 -E root_owner=0:0 -d "$root" "$img.new" "${mb}M" >/dev/null
  mv "$img.new" "$img"
}

case ${1:-} in
  lab) lab "${2:?usage: $0 lab OUTDIR}" ;;
  build) [ $# -ge 3 ] || { echo "usage: $0 build IMG FILE..." >&2; exit 2; }; shift; build "$@" ;;
  *) echo "usage: $0 lab OUTDIR | build IMG FILE..." >&2; exit 2 ;;
esac
