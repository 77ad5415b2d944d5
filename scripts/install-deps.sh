#!/bin/bash
# Installs every Debian package hvpatch needs to build, test and run its demo.
# Used by both README commands and by CI. Idempotent: apt-get skips what is present.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

pkgs=(
  # build
  meson ninja-build g++ pkg-config git
  # libraries (README: "Dependencies" says why each is here)
  libcapstone-dev libprotobuf-dev protobuf-compiler libvirt-dev libbpf-dev libelf-dev
  nlohmann-json3-dev libgtest-dev libgmock-dev
  # fuzz targets under libFuzzer (tests/fuzz/run-libfuzzer.sh): clang 14 and its runtimes
  clang-14 libclang-rt-14-dev
  # guests: QEMU TCG, busybox initramfs, kernel package extraction
  qemu-system-x86 busybox-static cpio gzip xz-utils zstd kmod
  # the KVM lab's disks (mke2fs -d)
  e2fsprogs
  # kbuild for the test patch modules
  make gcc bc
  # bench/plots.sh draws the bench report's plots
  gnuplot-nox
  # integration tests: a private libvirtd
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  apt-get update -qq || apt-get update
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "install-deps: all packages present"
