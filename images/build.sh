#!/bin/bash
# Builds the test guest images from the Debian archive. Idempotent and cached: every step
# checks a stamp (the inputs' hash) and is skipped when nothing changed.
#
#   images/build.sh            kernel + modules + headers, base initramfs, patch modules
#   HVPATCH_IMAGES=DIR         output directory (default: images/out, ignored by git)
#
# Outputs (DIR/):
#   abi                          the resolved kernel ABI, e.g. 6.1.0-56
#   vmlinuz, config, modules/    the guest kernel and the modules the guest needs
#   initramfs-base.cpio.gz       busybox + /init + modules + guest tools + /patches/*.ko (no
#                                agent: the harness appends the freshly built agent as a
#                                second archive)
#   patches/NAME.ko              livepatch-style test patches, built by kbuild
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out=${HVPATCH_IMAGES:-$here/out}
mkdir -p "$out"
log() { echo "images: $*" >&2; }
stamp_ok() { [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; }

# 1. Resolve the ABI from the cloud metapackage's candidate (never hard-coded).
abi=$(apt-cache show --no-all-versions linux-image-cloud-amd64 2>/dev/null |
      sed -n 's/^Depends: .*linux-image-\([0-9][^ ]*\)-cloud-amd64.*/\1/p' | head -1)
if [ -z "$abi" ]; then
  log "cannot resolve the kernel ABI from linux-image-cloud-amd64 (run apt-get update?)"
  exit 1
fi
flavour="$abi-cloud-amd64"
echo "$abi" > "$out/abi.new" && mv "$out/abi.new" "$out/abi"

# 2. Kernel image and modules, extracted (not installed on the host).
# virtio console chain (load order matters, see images/guest/init) and the KVM lab modules
# (virtio_blk for its disks, kvm and kvm-amd; images/kvm-lab.sh).
modules="drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_pci_modern_dev
         drivers/virtio/virtio_pci_legacy_dev drivers/virtio/virtio_pci drivers/char/virtio_console
         drivers/block/virtio_blk virt/lib/irqbypass arch/x86/kvm/kvm arch/x86/kvm/kvm-amd"
kernel_stamp="$flavour $(echo $modules | sha256sum | cut -c1-8)"
if ! stamp_ok "$out/kernel.stamp" "$kernel_stamp"; then
  log "fetching linux-image-$flavour-unsigned"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && apt-get download -q "linux-image-$flavour-unsigned" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2 || true)
  deb=$(ls "$tmp"/linux-image-*.deb)
  dpkg-deb -x "$deb" "$tmp/x"
  rm -rf "$out/modules" && mkdir -p "$out/modules"
  cp "$tmp/x/boot/vmlinuz-$flavour" "$out/vmlinuz"
  cp "$tmp/x/boot/config-$flavour" "$out/config"
  moddir="$tmp/x/lib/modules/$flavour/kernel"
  for m in $modules; do
    cp "$moddir/$m.ko" "$out/modules/"
  done
  rm -rf "$tmp"; trap - EXIT
  echo "$kernel_stamp" > "$out/kernel.stamp"
  log "kernel $flavour ready"
else
  log "kernel $flavour cached"
fi

# 3. Headers for kbuild: installed system-wide (they depend on linux-kbuild and the compiler).
hdr="/usr/src/linux-headers-$flavour"
if [ ! -f "$hdr/Makefile" ]; then
  log "installing linux-headers-$flavour"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "linux-headers-$flavour" >/dev/null
fi
echo "$hdr" > "$out/headers"

# 4. Guest tools: small static programs the tests run inside the guest.
tools_hash=$(cat "$here"/guest/tools/*.c | sha256sum | cut -c1-16)
if ! stamp_ok "$out/tools.stamp" "$tools_hash"; then
  rm -rf "$out/tools" && mkdir -p "$out/tools"
  for c in "$here"/guest/tools/*.c; do
    gcc -static -O2 -Wall -Werror -pthread -o "$out/tools/$(basename "$c" .c)" "$c"
  done
  echo "$tools_hash" > "$out/tools.stamp"
  log "guest tools built"
fi

# 5. Patch modules: each images/patches/NAME/ is a kbuild directory producing NAME.ko.
mkdir -p "$out/patches"
for src in "$here"/patches/*/; do
  name=$(basename "$src")
  h=$( (cd "$src" && cat $(ls | sort); echo "$flavour") | sha256sum | cut -c1-16)
  if stamp_ok "$out/patches/$name.stamp" "$h" && [ -f "$out/patches/$name.ko" ]; then continue; fi
  work="$out/patches/build-$name"
  rm -rf "$work" && mkdir -p "$work" && cp "$src"/* "$work/"
  # KBUILD_MODPOST_WARN=1: patches may call non-exported symbols; hvpatch resolves them.
  if ! make -s -C "$hdr" M="$work" KBUILD_MODPOST_WARN=1 modules > "$work/build.log" 2>&1; then
    cat "$work/build.log" >&2; log "patch $name failed to build"; exit 1
  fi
  cp "$work/$name.ko" "$out/patches/$name.ko"
  echo "$h" > "$out/patches/$name.stamp"
  log "patch $name built"
done
# 6. Base initramfs. It also carries the patch modules (/patches/NAME.ko), so tests can load
#    them in the guest with insmod, the way upstream livepatch would.
busybox=/bin/busybox
[ -x "$busybox" ] && file_is_static=$(ldd "$busybox" 2>&1 | grep -c 'not a dynamic' || true) || file_is_static=0
if [ "$file_is_static" != 1 ]; then log "busybox-static is required (scripts/install-deps.sh)"; exit 1; fi
init_hash=$( (cat "$here/guest/init" "$busybox" "$out/kernel.stamp" "$out/tools.stamp" "$out"/patches/*.stamp) | sha256sum | cut -c1-16)
if ! stamp_ok "$out/initramfs.stamp" "$init_hash"; then
  root=$(mktemp -d)
  mkdir -p "$root"/{bin,sbin,dev,proc,sys,run,tmp,lib/modules,etc,root}
  cp "$busybox" "$root/bin/busybox"
  cp "$here/guest/init" "$root/init" && chmod 755 "$root/init"
  cp "$out"/modules/*.ko "$root/lib/modules/"
  cp "$out"/tools/* "$root/bin/"
  mkdir -p "$root/patches" && cp "$out"/patches/*.ko "$root/patches/"
  (cd "$root" && find . | sort | cpio -o -H newc --quiet -R 0:0 | gzip -9n) > "$out/initramfs-base.cpio.gz.new"
  mv "$out/initramfs-base.cpio.gz.new" "$out/initramfs-base.cpio.gz"
  rm -rf "$root"
  echo "$init_hash" > "$out/initramfs.stamp"
  log "initramfs built"
else
  log "initramfs cached"
fi

# 7. The KVM lab's disk (QEMU, firmware and the L2 guest for the nested lab).
"$here/kvm-lab.sh" lab "$out"

log "ready in $out (kernel $flavour)"
