#!/bin/sh
# build_livepatch_samples.sh IMAGES OUT: builds the kernel's own samples/livepatch modules with
# kbuild against the test guest's headers, from Debian's linux-source-6.1 of the same version
# as those headers (never copied into the repository). The source package is downloaded once
# and kept in IMAGES/livepatch-samples-src; OUT receives the stripped .ko files.
set -eu
images=$1
out=$2
abi=$(cat "$images/abi")
hdr=$(cat "$images/headers")
ver=$(dpkg-query -W -f='${Version}' "linux-headers-$abi-cloud-amd64")
series=$(echo "$ver" | cut -d. -f1,2)
cache="$images/livepatch-samples-src/$ver"
if [ ! -f "$cache/samples/livepatch/Makefile" ]; then
  rm -rf "$cache" && mkdir -p "$cache/deb"
  (cd "$cache/deb" && apt-get download -q "linux-source-$series=$ver" >/dev/null)
  dpkg-deb --fsys-tarfile "$cache"/deb/linux-source-*.deb |
    tar -xO "./usr/src/linux-source-$series.tar.xz" |
    xz -dc | tar -x -C "$cache" --strip-components=1 "linux-source-$series/samples/livepatch"
  rm -rf "$cache/deb"
fi
rm -rf "$out" && mkdir -p "$out/build"
cp "$cache"/samples/livepatch/*.c "$out/build/"
cat > "$out/build/Kbuild" <<'KB'
obj-m := livepatch-sample.o livepatch-shadow-mod.o livepatch-shadow-fix1.o livepatch-shadow-fix2.o \
         livepatch-callbacks-demo.o livepatch-callbacks-mod.o
KB
make -s -C "$hdr" M="$out/build" modules > "$out/build.log" 2>&1 || { cat "$out/build.log" >&2; exit 1; }
for ko in "$out"/build/*.ko; do
  strip --strip-debug -o "$out/$(basename "$ko")" "$ko"
done
