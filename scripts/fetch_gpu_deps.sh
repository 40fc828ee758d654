#!/usr/bin/env bash
# Download (no root install) the Debian packages the GPU machine needs to build and run the tests,
# and unpack them into .deps/root in the repository. Run it HERE, on a Debian 12 machine with apt;
# .deps/ is git-ignored and is carried to the GPU machine, which has no apt and no internet.
#
#   bash scripts/fetch_gpu_deps.sh           # idempotent: does nothing if .deps/root is current
#   bash scripts/fetch_gpu_deps.sh --force   # unpack again from scratch
#
# What ends up in .deps/root/usr:
#   include/gtest, lib/x86_64-linux-gnu/{libgtest.a,libgtest_main.a,cmake/GTest}   (libgtest-dev)
#   include/lapacke*.h, lib/x86_64-linux-gnu/liblapacke.so*                        (liblapacke[-dev])
#   the shared libraries liblapacke needs at run time, which a stock Ubuntu image may lack:
#   liblapack.so.3, libblas.so.3, libtmglib.so.3, libgfortran.so.5, libquadmath.so.0.
# Debian selects liblapack.so.3/libblas.so.3 with update-alternatives (postinst), which dpkg -x
# does not run, so this script creates those two links itself.
#
# The .deb files are cached outside the repository ($SPECNORM_DEB_CACHE, default
# ~/.cache/specnorm/debs) so that they do not travel with the checkout (64 MiB carry limit).
# Docs, static LAPACK archives and sources are pruned from .deps/root for the same reason.
set -euo pipefail

ROOT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEPS_DIR="$ROOT_DIR/.deps"
DEST="$DEPS_DIR/root"
CACHE="${SPECNORM_DEB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/specnorm/debs}"
MULTIARCH="x86_64-linux-gnu"
FORCE=0
[[ "${1:-}" == "--force" ]] && FORCE=1

# googletest (sources only) and libgmock-dev are not needed: libgtest-dev ships the prebuilt
# static libgtest.a and GTestConfig.cmake, which includes GMockTargets.cmake OPTIONAL.
# libgcc-s1 / libc6 / libstdc++6 are present on every image and must not be shadowed.
PACKAGES=(libgtest-dev liblapacke liblapacke-dev liblapack3 libblas3 libtmglib3 libgfortran5
          libquadmath0)

log() { printf '[fetch_gpu_deps] %s\n' "$*"; }

command -v apt-get >/dev/null || { log "apt-get not found: run this on the Debian build machine"; exit 1; }
command -v dpkg >/dev/null || { log "dpkg not found"; exit 1; }
arch="$(dpkg --print-architecture)"
if [[ "$arch" != "amd64" ]]; then
  log "this machine is $arch; the GPU machine is amd64 (x86-64). Refusing to fetch $arch packages."
  exit 1
fi

# Resolve the exact versions apt would download, so the stamp changes when they change.
declare -a WANT=()
for p in "${PACKAGES[@]}"; do
  v="$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/ {print $2; exit}')"
  if [[ -z "$v" || "$v" == "(none)" ]]; then
    log "no candidate version for $p (run 'apt-get update' first?)"
    exit 1
  fi
  WANT+=("$p=$v")
done
stamp_text="$(printf '%s\n' "${WANT[@]}")"

if [[ $FORCE -eq 0 && -f "$DEST/.stamp" && "$(cat "$DEST/.stamp")" == "$stamp_text" ]]; then
  log "$DEST is up to date:"
  printf '  %s\n' "${WANT[@]}"
  exit 0
fi

mkdir -p "$CACHE"
log "downloading into $CACHE (cached .debs are reused)"
for pv in "${WANT[@]}"; do
  p="${pv%%=*}"; v="${pv#*=}"
  # Debian file names encode ':' of an epoch as %3a.
  f="$(ls "$CACHE/${p}_${v/:/%3a}_"*.deb 2>/dev/null | head -n1 || true)"
  if [[ -n "$f" ]]; then
    log "  cached   $(basename "$f")"
    continue
  fi
  log "  download $pv"
  # apt-get download writes to the current directory; as root it warns that the download is
  # unsandboxed, which is harmless.
  (cd "$CACHE" && apt-get download -q "$pv" 2>&1 | grep -v 'unsandboxed' || true)
  f="$(ls "$CACHE/${p}_${v/:/%3a}_"*.deb 2>/dev/null | head -n1 || true)"
  [[ -n "$f" ]] || { log "download of $pv failed"; exit 1; }
done

log "unpacking into $DEST"
rm -rf "$DEST.tmp"
mkdir -p "$DEST.tmp"
for pv in "${WANT[@]}"; do
  p="${pv%%=*}"; v="${pv#*=}"
  f="$(ls "$CACHE/${p}_${v/:/%3a}_"*.deb | head -n1)"
  dpkg -x "$f" "$DEST.tmp"
done

libdir="$DEST.tmp/usr/lib/$MULTIARCH"
# update-alternatives links that dpkg -x does not create.
ln -sfn blas/libblas.so.3 "$libdir/libblas.so.3"
ln -sfn lapack/liblapack.so.3 "$libdir/liblapack.so.3"
# Prune what the build does not need (keeps the carried folder small).
rm -rf "$DEST.tmp/usr/share/doc" "$DEST.tmp/usr/share/man" "$DEST.tmp/usr/share/lintian" \
       "$DEST.tmp/usr/src"
rm -f "$libdir/liblapacke.a" "$libdir/libtmglib.a"

# Sanity checks: everything gpu_check.sh relies on is there.
for f in include/gtest/gtest.h include/lapacke.h \
         "lib/$MULTIARCH/cmake/GTest/GTestConfig.cmake" "lib/$MULTIARCH/libgtest.a" \
         "lib/$MULTIARCH/libgtest_main.a" "lib/$MULTIARCH/liblapacke.so" \
         "lib/$MULTIARCH/liblapacke.so.3" "lib/$MULTIARCH/liblapack.so.3" \
         "lib/$MULTIARCH/libblas.so.3" "lib/$MULTIARCH/libtmglib.so.3" \
         "lib/$MULTIARCH/libgfortran.so.5" "lib/$MULTIARCH/libquadmath.so.0"; do
  if [[ ! -e "$DEST.tmp/usr/$f" ]]; then
    log "missing after unpack: usr/$f"
    exit 1
  fi
done

printf '%s\n' "$stamp_text" > "$DEST.tmp/.stamp"
rm -rf "$DEST"
mv "$DEST.tmp" "$DEST"
log "done: $(du -sh "$DEST" | cut -f1) in $DEST"
printf '  %s\n' "${WANT[@]}"
