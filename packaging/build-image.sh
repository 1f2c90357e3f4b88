#!/bin/sh
# Builds the cgprocfs container image from the release binary and the shared libraries it
# links (packaging/Containerfile, FROM scratch: nothing is pulled).
#   packaging/build-image.sh [TAG]      default TAG: localhost/cgprocfs:<version>
# CGPROCFS_BIN picks another binary; CGPROCFS_IMAGE_LABEL adds a label (a distinct rebuild).
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${CGPROCFS_BIN:-$here/target/release/cgprocfs}
version=$("$bin" --version | awk '{ print $2 }')
tag=${1:-localhost/cgprocfs:$version}
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
root=$ctx/rootfs
mkdir -p "$root/usr/bin" "$root/proc" "$root/sys" "$root/dev" "$root/run/cgprocfs" "$root/var/lib/cgprocfs" "$root/tmp"
cp "$bin" "$root/usr/bin/cgprocfs"
# The libraries and the loader, at the paths the binary asks for.
for lib in $(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done
cp "$here/packaging/Containerfile" "$ctx/Containerfile"
podman build -q ${CGPROCFS_IMAGE_LABEL:+--label "cgprocfs.build=$CGPROCFS_IMAGE_LABEL"} -t "$tag" -f "$ctx/Containerfile" "$ctx"
echo "$tag"
