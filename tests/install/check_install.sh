#!/usr/bin/env bash
# Install a built specnorm tree into a scratch prefix and build a downstream consumer against it,
# four times: through the CMake package (find_package(specnorm) + specnorm::specnorm, and
# specnorm::specnorm_static) and through pkg-config (specnorm.pc, and specnorm_static.pc). The
# consumer (consumer/main.c) runs a CPU-backend layer, so no GPU is needed.
#
# Usage: check_install.sh BUILD_DIR [--work DIR] [--cmake CMAKE] [--generator GEN]
#                         [--make-program PROG] [--c-compiler CC] [--cuda-root DIR]
#                         [--cuda-libdir DIR]
# ctest passes all of these (tests/install/CMakeLists.txt); by hand, BUILD_DIR is enough:
#   bash tests/install/check_install.sh build
# SPECNORM_REQUIRE_PKG_CONFIG=1 makes a missing pkg-config an error (otherwise that half of the
# check is skipped with a warning, e.g. on a machine without pkg-config).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
die() { printf 'check_install: FAIL: %s\n' "$*" >&2; exit 1; }
say() { printf 'check_install: %s\n' "$*"; }

[[ $# -ge 1 ]] || die "usage: $0 BUILD_DIR [options]"
build="$(cd "$1" && pwd)" || die "no build directory $1"
shift
work="$build/install_check"
cmake_bin="cmake"
generator=""
make_program=""
c_compiler=""
cuda_root=""
cuda_libdir=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --work) work="$2"; shift 2 ;;
    --cmake) cmake_bin="$2"; shift 2 ;;
    --generator) generator="$2"; shift 2 ;;
    --make-program) make_program="$2"; shift 2 ;;
    --c-compiler) c_compiler="$2"; shift 2 ;;
    --cuda-root) cuda_root="$2"; shift 2 ;;
    --cuda-libdir) cuda_libdir="$2"; shift 2 ;;
    *) die "unknown argument $1" ;;
  esac
done

[[ -f "$build/CMakeCache.txt" ]] || die "$build is not a CMake build directory"
cache_get() { sed -n "s/^$1:[A-Z]*=//p" "$build/CMakeCache.txt" | head -n1; }
[[ -n "$generator" ]] || generator="$(cache_get CMAKE_GENERATOR)"
[[ -n "$make_program" ]] || make_program="$(cache_get CMAKE_MAKE_PROGRAM)"
[[ -n "$c_compiler" ]] || c_compiler="$(cache_get CMAKE_C_COMPILER)"
if [[ -z "$cuda_root" ]]; then
  nvcc="$(cache_get CMAKE_CUDA_COMPILER)"
  [[ -n "$nvcc" ]] || nvcc="$(command -v nvcc || true)"
  [[ -n "$nvcc" ]] && cuda_root="$(cd "$(dirname "$nvcc")/.." && pwd)"
fi
if [[ -z "$cuda_libdir" && -n "$cuda_root" ]]; then
  for d in "$cuda_root/lib64" "$cuda_root/lib" "$cuda_root/targets/x86_64-linux/lib"; do
    if [[ -d "$d" ]]; then cuda_libdir="$d"; break; fi
  done
fi
[[ -n "$c_compiler" ]] || c_compiler="${CC:-cc}"

rm -rf "$work"
mkdir -p "$work"
prefix="$work/prefix"

# ---- 1. install into a scratch prefix -------------------------------------------------------
say "installing $build into $prefix"
"$cmake_bin" --install "$build" --prefix "$prefix" > "$work/install.log" 2>&1 ||
  { cat "$work/install.log" >&2; die "cmake --install failed"; }

find_one() { find "$prefix" -path "$1" -print -quit; }
config="$(find_one '*/cmake/specnorm/specnormConfig.cmake')"
pcfile="$(find_one '*/pkgconfig/specnorm.pc')"
shared="$(find_one '*/libspecnorm.so')"
for f in "$prefix/include/specnorm.h" "$prefix/include/specnorm_version.h" "$config" \
         "$(dirname "$config")/specnormConfigVersion.cmake" \
         "$(dirname "$config")/specnormTargets.cmake" "$pcfile" "$(dirname "$pcfile")/specnorm_static.pc" "$shared" \
         "$(find_one '*/libspecnorm_static.a')"; do
  [[ -n "$f" && -e "$f" ]] || die "installed tree lacks a file; installed: $(cd "$prefix" && find . -type f | sort | tr '\n' ' ')"
done
libdir="$(dirname "$shared")"
say "installed: $(cd "$prefix" && find . \( -type f -o -type l \) | sort | tr '\n' ' ')"
if grep -qF "$build" "$config" "$(dirname "$config")"/specnormTargets*.cmake "$pcfile"; then
  die "the installed CMake package or specnorm.pc refers to the build tree $build"
fi
hdr_version="$(sed -n 's/^#define SN_VERSION_STRING "\(.*\)"/\1/p' "$prefix/include/specnorm_version.h")"
[[ -n "$hdr_version" ]] || die "cannot read SN_VERSION_STRING from the installed specnorm_version.h"

# ---- 2. CMake package consumer --------------------------------------------------------------
say "building the CMake consumer (find_package(specnorm), specnorm::specnorm)"
cfg_args=(-S "$here/consumer" -B "$work/consumer-build" -DCMAKE_BUILD_TYPE=Release
          -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_FIND_PACKAGE_NO_PACKAGE_REGISTRY=ON
          -DCMAKE_FIND_PACKAGE_NO_SYSTEM_PACKAGE_REGISTRY=ON -DCMAKE_C_COMPILER="$c_compiler")
[[ -n "$generator" ]] && cfg_args+=(-G "$generator")
[[ -n "$make_program" ]] && cfg_args+=(-DCMAKE_MAKE_PROGRAM="$make_program")
[[ -n "$cuda_root" ]] && cfg_args+=(-DCUDAToolkit_ROOT="$cuda_root")
"$cmake_bin" "${cfg_args[@]}" > "$work/consumer-configure.log" 2>&1 ||
  { cat "$work/consumer-configure.log" >&2; die "configuring the consumer failed"; }
found_dir="$(sed -n 's/^specnorm_DIR:[A-Z]*=//p' "$work/consumer-build/CMakeCache.txt")"
case "$found_dir" in
  "$prefix"/*) ;;
  *) die "the consumer found specnorm in '$found_dir', not in the scratch prefix $prefix" ;;
esac
"$cmake_bin" --build "$work/consumer-build" > "$work/consumer-build.log" 2>&1 ||
  { cat "$work/consumer-build.log" >&2; die "building the consumer failed"; }
exe="$work/consumer-build/consumer"
[[ -x "$exe" ]] || die "no consumer executable at $exe"
if command -v ldd > /dev/null; then
  resolved="$(LD_LIBRARY_PATH="${cuda_libdir}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ldd "$exe" | awk '/libspecnorm\.so/ {print $3}')"
  case "$resolved" in
    "$libdir"/*) ;;
    *) die "the consumer loads libspecnorm from '$resolved', not from $libdir" ;;
  esac
fi
# The consumer's build-tree RPATH names the prefix and the CUDA library directory; the CUDA
# directory is added in case the toolkit's libraries are not in the loader's default path.
LD_LIBRARY_PATH="${cuda_libdir}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$exe" ||
  die "the CMake consumer failed (exit $?)"
exe_static="$work/consumer-build/consumer_static"
[[ -x "$exe_static" ]] || die "no static consumer executable at $exe_static"
if command -v ldd > /dev/null &&
   LD_LIBRARY_PATH="${cuda_libdir}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ldd "$exe_static" | grep -q 'libspecnorm\.so'; then
  die "the consumer linked with specnorm::specnorm_static loads libspecnorm.so"
fi
LD_LIBRARY_PATH="${cuda_libdir}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$exe_static" ||
  die "the CMake consumer of the static library failed (exit $?)"

# ---- 3. pkg-config consumer -----------------------------------------------------------------
if ! command -v pkg-config > /dev/null; then
  if [[ "${SPECNORM_REQUIRE_PKG_CONFIG:-0}" == 1 ]]; then die "pkg-config is not installed"; fi
  say "WARNING: pkg-config not found, skipping the pkg-config consumer"
  say "PASS (CMake package consumer only)"
  exit 0
fi

PKG_CONFIG_PATH="$(dirname "$pcfile")"
export PKG_CONFIG_PATH
unset PKG_CONFIG_SYSROOT_DIR PKG_CONFIG_LIBDIR_OVERRIDE 2>/dev/null || true
pc_version="$(pkg-config --modversion specnorm)" || die "pkg-config cannot read $pcfile"
[[ "$pc_version" == "$hdr_version" ]] ||
  die "specnorm.pc says version $pc_version, specnorm_version.h says $hdr_version"
pc_prefix="$(pkg-config --variable=prefix specnorm)"
pc_includedir="$(pkg-config --variable=includedir specnorm)"
if [[ ! -f "$pc_includedir/specnorm.h" ]]; then
  # specnorm.pc holds the prefix given at configure time (CMAKE_INSTALL_PREFIX), so it is wrong
  # after 'cmake --install --prefix OTHER'. Check it the way a packager stages an install
  # instead: DESTDIR, with pkg-config's sysroot set to the staging directory.
  say "WARNING: specnorm.pc is not relocatable: after 'cmake --install --prefix $prefix' it says"
  say "         prefix=$pc_prefix. Checking it through a DESTDIR staged install instead."
  stage="$work/stage"
  DESTDIR="$stage" "$cmake_bin" --install "$build" > "$work/install-destdir.log" 2>&1 ||
    { cat "$work/install-destdir.log" >&2; die "DESTDIR=$stage cmake --install failed"; }
  pcfile="$(find "$stage" -path '*/pkgconfig/specnorm.pc' -print -quit)"
  [[ -n "$pcfile" ]] || die "no specnorm.pc in the DESTDIR staged install"
  PKG_CONFIG_PATH="$(dirname "$pcfile")"
  export PKG_CONFIG_PATH
  export PKG_CONFIG_SYSROOT_DIR="$stage"
  libdir="$(dirname "$(find "$stage" -name 'libspecnorm.so' -print -quit)")"
fi
pc_flags="$(pkg-config --cflags --libs specnorm)" || die "pkg-config --cflags --libs specnorm failed"
say "pkg-config --cflags --libs specnorm: $pc_flags"
# main.c itself calls sqrt/fabs, hence its own -lm.
# shellcheck disable=SC2086
LD_LIBRARY_PATH="${cuda_libdir}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
  "$c_compiler" -std=c11 -Wall -Wextra -Wpedantic -Werror "$here/consumer/main.c" $pc_flags -lm \
  -o "$work/consumer_pc" > "$work/consumer-pc.log" 2>&1 ||
  { cat "$work/consumer-pc.log" >&2; die "compiling main.c with pkg-config's flags failed"; }
LD_LIBRARY_PATH="$libdir${cuda_libdir:+:$cuda_libdir}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
  "$work/consumer_pc" || die "the pkg-config consumer failed (exit $?)"
# The static library through its own .pc (specnorm_static.pc: the archive, CUDA's runtime and the
# C++ runtime of the library's CUDA host code), linked by the C compiler alone.
pc_static="$(pkg-config --cflags --libs specnorm_static)" || die "pkg-config --cflags --libs specnorm_static failed"
say "pkg-config --cflags --libs specnorm_static: $pc_static"
# shellcheck disable=SC2086
"$c_compiler" -std=c11 -Wall -Wextra -Wpedantic -Werror "$here/consumer/main.c" $pc_static -lm \
  -o "$work/consumer_pc_static" > "$work/consumer-pc-static.log" 2>&1 ||
  { cat "$work/consumer-pc-static.log" >&2; die "compiling main.c with specnorm_static.pc's flags failed"; }
if command -v ldd > /dev/null &&
   LD_LIBRARY_PATH="${cuda_libdir}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ldd "$work/consumer_pc_static" | grep -q 'libspecnorm\.so'; then
  die "the consumer linked with specnorm_static.pc's flags loads libspecnorm.so"
fi
LD_LIBRARY_PATH="${cuda_libdir}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
  "$work/consumer_pc_static" || die "the pkg-config consumer of the static library failed (exit $?)"

say "PASS"
