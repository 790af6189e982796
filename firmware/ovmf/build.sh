#!/bin/sh
# Build edk2's OvmfPkg/AmdSev (AmdSevX64) inside the locked toolchain root: plinth's ovmf stage
# (builder/src/pipeline/ovmf.rs) copies in Debian's edk2 tarballs, verified against
# the OS's packages.lock (its `sources`), and this file with the Grub patch, then runs it under chroot with
# no network. The tree sits at one fixed absolute path (/build/edk2): GenFw reserves debug
# entry space by the length of the path, so another path gives other bytes.
#   sh /build/build.sh ORIG_TARBALL DEBIAN_TARBALL JOBS
set -eu
orig=$1
debian=$2
jobs=$3

export LC_ALL=C.UTF-8 TZ=UTC SOURCE_DATE_EPOCH=0 PYTHONHASHSEED=0 PYTHONDONTWRITEBYTECODE=1
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/build PYTHON_COMMAND=python3

cd /build
rm -rf edk2
mkdir edk2
tar -xf "src/$orig" -C edk2 --strip-components=1
tar -xf "src/$debian" -C edk2
cd edk2

# Debian's patches, then ours (the AmdSev Grub prebuild needs a grub module Debian lacks).
cp /build/amdsev-without-grub.patch debian/patches/plinth-amdsev-without-grub.patch
echo plinth-amdsev-without-grub.patch >> debian/patches/series
QUILT_PATCHES=debian/patches quilt push -a -q

make -s -C BaseTools/Source/C -j "$jobs"
# edksetup.sh reads unset variables (not under `set -u`) and takes the positional
# parameters for its options.
set +u --
. ./edksetup.sh
build -q -a X64 -t GCC5 -b RELEASE -n "$jobs" -p OvmfPkg/AmdSev/AmdSevX64.dsc
set -u

mkdir -p /build/out
cp Build/AmdSev/RELEASE_GCC5/FV/OVMF.fd /build/out/OVMF.fd
