#!/usr/bin/env bash
# One-call GPU validation, run on the GPU machine from the repository root:
#
#   bash scripts/gpu_check.sh            # $OUT: folder for the results (default ./build-gpu-out)
#
# The GPU machine has no apt and no internet: GoogleTest and LAPACKE come from .deps/root, which
# scripts/fetch_gpu_deps.sh fills on the Debian machine (.deps/ is git-ignored; carry it).
#
# Steps (each with a timeout; a failed step never stops the script):
#   env        nvidia-smi, nvcc, cmake, ninja, compute-sanitizer, python/torch versions
#   configure  fresh build dir ($BUILD_DIR, default build-gpu), Ninja, GTest/LAPACKE from .deps
#   build      ninja -j<all cores> -k 0
#   coop_smoke Gpu.OnePassCooperativeSmall*, …FullGrid* and …Concurrent* alone under a short
#              timeout (the cooperative one-pass launch's grid barriers: a grid the driver took but
#              could not hold would hang there, and take each later step to its cap; so would
#              grids on several streams that the device let in part each); if it times out, every
#              later step leaves the cooperative one-pass tests out and runs with op_coop=0 (the
#              default takes the launch in scale-only forwards on sm_90). The first two tests
#              passed in 1 s on the H100 at ab6e27f
#   grid_smoke the layer on chip over the grid (op_onchip_grid, off by default; never run on a GPU
#              before this step was written) in two small tests under a short timeout: its grid
#              barriers would hang the same way on a block that left early; if it times out, every
#              later step leaves the grid's tests (and its variants and profile) out
#   conformance  tests/conformance/make_fixtures.py --only torch: PyTorch's own spectral norms
#              (parametrizations.spectral_norm, the legacy spectral_norm) written as the fixture
#              tests/conformance/torch.txt of this copy, which ctest's Conformance.*torch then replay
#              (on the CPU backend and the GPU); skipped without torch
#   ctest      every test, GPU ones included
#   tune_tests the GPU tests again with the launches the defaults do not use: SPECNORM_TUNE=pdl=0,
#              op_cluster=1,group_coop=0,op_coop=0 ($SN_TUNE_TESTS)
#   memcheck / racecheck / initcheck / synccheck
#              compute-sanitizer --error-exitcode 1 over $BUILD_DIR/tests/specnorm_gpu_tests
#   torch      python3 bench/torch_baseline.py $WORKLOADS --json $OUT/torch.json
#   example    $BUILD_DIR/examples/train_lipschitz (the training-loop example)
#   example_grouped  the same with --grouped (its layers as one specnorm group)
#   sn_bench   $BUILD_DIR/bench/sn_bench $WORKLOADS --torch $OUT/torch.json --json $OUT/bench.json
#              (WORKLOADS: $SN_BENCH_WORKLOADS, default a few single layers and every preset)
#   plot       python3 bench/plot.py $OUT/bench.json $OUT/torch.json -o $OUT/speedup.png
#   goals      python3 bench/goals.py $OUT/bench.json $OUT/torch.json: issue 5's goals, met or not
#   onchip     sn_bench on SN-GAN (per layer and grouped) and small single layers: the on-chip
#              defaults against onchip_threads=256, group_onchip=0, op_onchip=0 and op_onchip=1
#   variants   (at most $SN_VARIANTS_CAP s, default 135) sn_bench once per SPECNORM_TUNE setting
#              of the one-pass kernel ($SN_TUNE_VARIANTS, in that order: put first what matters most)
#              on $SN_VARIANT_WORKLOADS (train/scale/eval/backward of the large single layers), once
#              per setting of $SN_PRESET_VARIANTS on $SN_VARIANT_PRESETS (per layer and grouped),
#              then the legacy (v-first) order with every algorithm, the v-first groups (SN-GAN in
#              PyTorch's and Keras' layouts), and v-first layers with dim -1 with the defaults and
#              on the grid (op_onchip_grid=2); tables only
#   ab_build   waits for the ab step's builds (started in the background after the build step)
#   ab         sn_bench of earlier commits ($SN_AB_REFS, built here) and of this tree, in turn,
#              twice, on $SN_AB_WORKLOADS: a change measured (or a regression bisected) on the
#              same card in the same run
#   ncu        Nsight Compute (--clock-control none --cache-control none): DRAM bytes read and
#              written and duration of each specnorm kernel of one call per mode ($SN_NCU_WORKLOADS)
#              (with op_coop=0: this ncu could not profile the cooperative one-pass launch)
#   ncu_coop   that cooperative launch alone under ncu, kernel replay then application replay
#              (a diagnosis: which of them profiles it)
#   ncu_l2     the same for the division with evict-first accesses (SPECNORM_TUNE=div_stream=1)
#   ncu_detail (SN_NCU_DETAIL=1 only; =rows: the 4096² rows, one and two a step; =ring: the 4096 ×
#              16384 bf16 rows, plain and in rings of two and three; =grid: the layer on chip over
#              the grid, forward and backward) Nsight Compute sections (speed of light, occupancy, warp
#              stalls, memory) of the one-pass rows and reduce kernels (4096² fp32; 4096 × 16384
#              bf16) and of the cooperative grouped kernel
# A step whose program is missing is SKIPPED. The whole script keeps to $SN_CHECK_BUDGET_S
# seconds (default 470): each step's timeout is cut to what is left, keeping a reserve for the
# benchmark steps, and a step with no time left is SKIPPED.
#
# $OUT receives at most 8 files: build.log (env, configure, build), tests.log (ctest and the
# sanitizers), bench.log (sn_bench, torch, plot), summary.txt, and bench.json, bench.csv,
# torch.json, speedup.png. A summary table (step, status, seconds) is printed last; the exit
# status is 1 if any step FAILed, else 0.
#
# Knobs (environment): SN_STEPS (the names of the steps to run, space-separated, default all;
# without configure, the build folder an earlier call left on the same machine is reused; no
# time is reserved for the steps left out), BUILD_DIR, SN_CHECK_BUDGET_S, SN_CTEST_J (ctest -j, default 4; the tests
# that measure device memory are RUN_SERIAL), SN_SANITIZER_FILTER (a --gtest_filter for the sanitizer runs),
# SN_RACECHECK_CAP (racecheck's timeout, default 150 s), SN_RACECHECK_FILTER (its tests),
# SN_SANITIZER_TUNE (SPECNORM_TUNE for the sanitizer runs, default the caller's; op_rows=2 races
# the two-rows-a-step kernel, off by default, in the rows tests), SN_SANITIZER_API_ERRORS (compute-sanitizer --report-api-errors, default "no": the tests provoke
# CUDA API errors on purpose), SN_CMAKE_ARGS (extra configure arguments), SN_DEPS_FORCE_ALL=1
# (load every LAPACK-side library from .deps even where the system has one).
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO" || exit 2
OUT="${OUT:-$REPO/build-gpu-out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
BUILD="${BUILD_DIR:-build-gpu}"
case "$BUILD" in /*) ;; *) BUILD="$REPO/$BUILD" ;; esac
BUDGET="${SN_CHECK_BUDGET_S:-470}"
T0=$(date +%s)
DEADLINE=$((T0 + BUDGET))
NPROC="$(nproc 2>/dev/null || echo 4)"
GPU_TESTS="$BUILD/tests/specnorm_gpu_tests"
SN_BENCH="$BUILD/bench/sn_bench"

# Step logs are written here in full, then appended (capped) to the files in $OUT.
LOGS="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
: > "$OUT/build.log"; : > "$OUT/tests.log"; : > "$OUT/bench.log"
rm -f "$OUT/summary.txt" "$OUT/bench.json" "$OUT/bench.csv" "$OUT/torch.json" "$OUT/speedup.png"

STEPS=(); STATUS=(); SECS=(); NOTES=()
ANY_FAIL=0

# record NAME STATUS SECONDS NOTE
record() {
  STEPS+=("$1"); STATUS+=("$2"); SECS+=("$3"); NOTES+=("$4")
  [[ "$2" == FAIL ]] && ANY_FAIL=1
  printf '== [%s] %s (%ss)%s\n' "$1" "$2" "$3" "${4:+ - $4}"
}

# append_log STEPLOG OUTFILE HEADER: copy a step's log into an $OUT file, capped at ~4 MB/step.
append_log() {
  local src="$1" dst="$2" header="$3" size
  {
    printf '\n===== %s =====\n' "$header"
    size=$(stat -c %s "$src" 2>/dev/null || echo 0)
    if [[ "$size" -gt 4000000 ]]; then
      head -n 2000 "$src"
      printf '\n..... [%s bytes; middle cut, full log was %s] .....\n\n' "$size" "$src"
      tail -n 4000 "$src"
    else
      cat "$src"
    fi
  } >> "$dst"
}

# run_step NAME OUTFILE CAP RESERVE CMD...: run CMD with timeout min(CAP, time left - RESERVE).
run_step() {
  local name="$1" dst="$2" cap="$3" reserve="$4"; shift 4
  local now left t rc start log="$LOGS/$name.log"
  if ! selected "$name"; then
    skip_step "$name" "$dst" "not in SN_STEPS"
    return 0
  fi
  # With a chosen subset of steps no time is kept for the steps left out.
  [[ -n "${SN_STEPS:-}" ]] && reserve=0
  now=$(date +%s)
  # The reserve (time kept for later steps) never takes more than half of what is left.
  [[ $reserve -gt $(( (DEADLINE - now) / 2 )) ]] && reserve=$(( (DEADLINE - now) / 2 ))
  left=$((DEADLINE - now - reserve)); t=$cap
  [[ $left -lt $t ]] && t=$left
  if [[ $t -lt 15 ]]; then
    printf 'SKIPPED: no time left in the %ss budget\n' "$BUDGET" > "$log"
    append_log "$log" "$dst" "$name: SKIPPED (no time left)"
    record "$name" SKIPPED 0 "no time left"
    return 0
  fi
  printf '== [%s] start, timeout %ss: %s\n' "$name" "$t" "$*"
  start=$(date +%s)
  {
    printf '$ %s\n# timeout %ss, started %s\n' "$*" "$t" "$(date -u +%FT%TZ)"
    timeout -k 10 "$t" "$@"
  } > "$log" 2>&1 < /dev/null
  rc=$?
  local dur=$(( $(date +%s) - start ))
  printf '# exit status %s after %ss\n' "$rc" "$dur" >> "$log"
  if [[ $rc -eq 0 ]]; then
    append_log "$log" "$dst" "$name: PASS (${dur}s)"
    record "$name" PASS "$dur" ""
  else
    local note="exit $rc"
    [[ $rc -eq 124 || $rc -eq 137 ]] && note="timed out after ${t}s"
    append_log "$log" "$dst" "$name: FAIL ($note, ${dur}s)"
    record "$name" FAIL "$dur" "$note"
    # A short tail on stdout, so the caller sees why without opening the logs.
    tail -n 15 "$log" | sed "s/^/   [$name] /"
  fi
  return 0
}

# selected NAME: whether step NAME runs (every step, unless $SN_STEPS lists some).
selected() {
  [[ -z "${SN_STEPS:-}" || " $SN_STEPS " == *" $1 "* ]]
}

skip_step() {  # skip_step NAME OUTFILE REASON
  printf 'SKIPPED: %s\n' "$3" > "$LOGS/$1.log"
  append_log "$LOGS/$1.log" "$2" "$1: SKIPPED ($3)"
  record "$1" SKIPPED 0 "$3"
}

# ---- tools on PATH ----------------------------------------------------------------------------
for d in /usr/local/cuda/bin /usr/local/cuda-*/bin; do
  if [[ -x "$d/nvcc" ]]; then
    command -v nvcc > /dev/null || export PATH="$PATH:$d"
    break
  fi
done
SANITIZER="$(command -v compute-sanitizer || true)"
if [[ -z "$SANITIZER" ]]; then
  for f in "$(dirname "$(command -v nvcc 2>/dev/null || echo /usr/local/cuda/bin/nvcc)")/compute-sanitizer" \
           /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer; do
    if [[ -x "$f" ]]; then SANITIZER="$f"; break; fi
  done
fi

# ---- dependencies from .deps (GoogleTest, LAPACKE) --------------------------------------------
DEPS="$REPO/.deps/root/usr"
MA="x86_64-linux-gnu"
DEPS_LIB="$DEPS/lib/$MA"
CMAKE_DEPS_ARGS=()
RUN_LD_PATH="${LD_LIBRARY_PATH:-}"
DEPS_NOTE=""
if [[ -f "$DEPS_LIB/cmake/GTest/GTestConfig.cmake" && -f "$DEPS/include/lapacke.h" ]]; then
  CMAKE_DEPS_ARGS=(
    "-DCMAKE_PREFIX_PATH=$DEPS"
    "-DGTest_DIR=$DEPS_LIB/cmake/GTest"
    "-DLAPACKE_INCLUDE_DIR=$DEPS/include"
    "-DLAPACKE_LIBRARY=$DEPS_LIB/liblapacke.so"
    "-DLAPACKE_LAPACK_LIBRARY=$DEPS_LIB/lapack/liblapack.so.3")
  # Shared libraries liblapacke needs at run time: take .deps' copy only of those the system
  # lacks, so that .deps never shadows a newer system library (libgfortran, libquadmath, ...).
  FALLBACK="$LOGS/deps-lib"
  mkdir -p "$FALLBACK"
  have_sys="$( (ldconfig -p || /sbin/ldconfig -p) 2>/dev/null || true)"
  [[ "${SN_DEPS_FORCE_ALL:-0}" == 1 ]] && have_sys=""   # debug: take every library from .deps
  used=()
  for so in liblapacke.so.3 liblapack.so.3 libblas.so.3 libtmglib.so.3 libgfortran.so.5 libquadmath.so.0; do
    if ! grep -q "^[[:space:]]*$so (.*x86-64" <<< "$have_sys"; then
      ln -sf "$(readlink -f "$DEPS_LIB/$so")" "$FALLBACK/$so"
      used+=("$so")
    fi
  done
  RUN_LD_PATH="$FALLBACK${RUN_LD_PATH:+:$RUN_LD_PATH}"
  DEPS_NOTE="from .deps: ${used[*]:-none (system has all)}"
else
  DEPS_NOTE=".deps/root missing: run scripts/fetch_gpu_deps.sh on the Debian machine (trying the system)"
fi
echo "== deps: $DEPS_NOTE"

# ---- (a) environment ------------------------------------------------------------------------
env_report() {
  local rc=0
  echo "date: $(date -u +%FT%TZ)   host: $(hostname)   cores: $NPROC"
  echo "repo: $REPO   commit: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo none)"
  echo "build dir: $BUILD   out: $OUT   budget: ${BUDGET}s"
  echo "deps: $DEPS_NOTE"
  echo "LD_LIBRARY_PATH for build/tests: $RUN_LD_PATH"
  echo; echo "--- nvidia-smi"; nvidia-smi || rc=1
  echo; echo "--- nvcc"; nvcc --version || rc=1
  echo; echo "--- cmake / ninja / gcc"
  cmake --version | head -n1; ninja --version; gcc --version | head -n1
  echo; echo "--- compute-sanitizer"; if [[ -n "$SANITIZER" ]]; then "$SANITIZER" --version | tail -n2; else echo "not found"; fi
  echo; echo "--- python"
  python3 -c 'import sys; print(sys.version.split()[0])' 2>&1 || true
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.is_available())' 2>&1 || true
  python3 -c 'import matplotlib; print("matplotlib", matplotlib.__version__)' 2>&1 || true
  return $rc
}
export -f env_report
export REPO BUILD OUT BUDGET NPROC DEPS_NOTE RUN_LD_PATH SANITIZER
run_step env "$OUT/build.log" 60 0 bash -c env_report

# ---- A/B against earlier commits on the same card in the same run (SN_AB_REFS) ----------------
# Each ref's sn_bench is built from `git archive` of that commit (this GPU's architecture only, no
# tests), then the refs and this tree (once per SPECNORM_TUNE of $SN_AB_HEADS: "HEAD" or
# "HEAD,key=value") time $SN_AB_WORKLOADS in turn, twice; the rows matching $SN_AB_ROWS are
# printed, and the table of them all. Default: 4054e72, the commit before the one-barrier block
# sums of the ring loops (session 16, bench/NOTES.md), against this tree as it is and with the ring
# of three (op_pp=3), on the bf16 layers where they apply, train and scale-only. (Session 13's:
# 8360ed7, before the division's 2-byte instances went to 8 blocks per SM. Session 4's bisection of the grouped forward, SN-GAN grouped train 20.3 µs at 1a8f84c and
# 23.9 at e56c4b8 on an H200: SN_AB_REFS="1a8f84c 8a4aaf8 c58d24a e56c4b8"
# SN_AB_WORKLOADS="--preset sngan-cifar10 --dtype f32 --mode train,scale,eval"
# SN_AB_HEADS="HEAD,group_coop=0 HEAD HEAD,group_onchip=1" SN_AB_ROWS="group|commit".)
# SN_AB_REFS="" skips the step.
AB_REFS="${SN_AB_REFS-4054e72}"
AB_WORKLOADS="${SN_AB_WORKLOADS:---shape 4096x16384 --shape 12288x12288 --shape 4096x4096 --dtype bf16 --mode train,scale}"
AB_HEADS="${SN_AB_HEADS:-HEAD HEAD,op_pp=3}"
AB_ROWS="${SN_AB_ROWS:-specnorm }"
ab_build_refs() {  # each ref's sn_bench into $LOGS/ab-REF/b; its status in $LOGS/ab-REF/status
  local ref cc
  cc="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n1 | tr -d ' .')"
  for ref in $AB_REFS; do
    local src="$LOGS/ab-$ref"
    mkdir -p "$src"
    if git -C "$REPO" archive "$ref" | tar -x -C "$src" &&
       cmake -S "$src" -B "$src/b" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="${cc:-90}-real" \
         -DSPECNORM_BUILD_TESTS=OFF -DSPECNORM_BUILD_EXAMPLES=OFF > "$src/configure.log" 2>&1 &&
       cmake --build "$src/b" --target sn_bench -j "$NPROC" > "$src/build.log" 2>&1; then
      echo ok > "$src/status"
    else
      echo failed > "$src/status"
    fi
    echo "ref $ref: $(cat "$src/status")"
  done
}

# ---- (b) configure + build -----------------------------------------------------------------
CONFIGURED=0
if selected configure; then
  rm -rf "$BUILD"
elif [[ -f "$BUILD/build.ninja" ]]; then
  CONFIGURED=1   # SN_STEPS without configure: an earlier call's build folder is used as it is
fi
# shellcheck disable=SC2086
run_step configure "$OUT/build.log" 120 0 \
  env LD_LIBRARY_PATH="$RUN_LD_PATH" \
  cmake -S "$REPO" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSPECNORM_EMULATOR_TESTS=OFF \
  "${CMAKE_DEPS_ARGS[@]}" ${SN_CMAKE_ARGS:-}
# (the CUDA emulator's tests, tests/emu_cuda/, need no GPU: CI runs them; not built here)
[[ "${STATUS[-1]}" == PASS ]] && CONFIGURED=1

if [[ $CONFIGURED -eq 1 ]]; then
  run_step build "$OUT/build.log" 300 60 \
    env LD_LIBRARY_PATH="$RUN_LD_PATH" cmake --build "$BUILD" -j "$NPROC" -- -k 0
else
  skip_step build "$OUT/build.log" "configure failed"
fi
# The ab step's refs build in the background while ctest runs (in their own process group, so
# that a cut can stop them); the benchmark steps wait for them first, so that no build competes
# with a timing.
AB_PID=""
if [[ -n "$AB_REFS" && $CONFIGURED -eq 1 ]] && selected ab; then
  setsid bash -c "$(declare -p AB_REFS LOGS REPO NPROC); $(declare -f ab_build_refs); ab_build_refs" \
    > "$LOGS/ab-build.log" 2>&1 &
  AB_PID=$!
fi

# ---- (c) ctest, after PyTorch's fixture and a smoke test of the cooperative one-pass launch -----
if python3 -c 'import torch' > /dev/null 2>&1; then
  # The fixture is printed into tests.log too, between two marker lines, so that it comes back:
  #   sed -n '/^----- begin tests\/conformance\/torch.txt/,/^----- end/p' tests.log | sed '1d;$d'
  run_step conformance "$OUT/tests.log" 90 300 bash -c \
    'python3 "$1/tests/conformance/make_fixtures.py" --only torch --out "$1/tests/conformance" &&
     echo "----- begin tests/conformance/torch.txt" && cat "$1/tests/conformance/torch.txt" &&
     echo "----- end tests/conformance/torch.txt"' _ "$REPO"
else
  skip_step conformance "$OUT/tests.log" "no python3 with torch"
fi
CTEST_EXCLUDE=()
COOP_HUNG=0  # 1: coop_smoke timed out; the later steps leave the cooperative one-pass launch out
if [[ $CONFIGURED -eq 1 && -x "$GPU_TESTS" ]]; then
  run_step coop_smoke "$OUT/tests.log" 45 300 \
    env LD_LIBRARY_PATH="$RUN_LD_PATH" "$GPU_TESTS" --gtest_brief=1 \
    --gtest_filter='Gpu.OnePassCooperativeSmall*:Gpu.OnePassCooperativeFullGrid*:Gpu.OnePassCooperativeConcurrent*'
  if grep -qE '^# exit status (124|137) ' "$LOGS/coop_smoke.log" 2> /dev/null; then
    COOP_HUNG=1
    CTEST_EXCLUDE=(-E 'OnePassCooperative')
    echo "coop_smoke timed out: the later steps leave the cooperative one-pass tests and variants out, and run with op_coop=0" >> "$OUT/tests.log"
  fi
fi
# Appended to every SPECNORM_TUNE below once coop_smoke has timed out (the default takes the
# cooperative launch in scale-only forwards on sm_90; the last key wins), and exported for the
# steps that take the caller's.
COOP_SUFFIX=""
HUNG_TESTS=()  # gtest patterns of the tests a smoke step saw hang, left out of every later run
if [[ $COOP_HUNG -eq 1 ]]; then
  COOP_SUFFIX=",op_coop=0"
  export SPECNORM_TUNE="${SPECNORM_TUNE:-}$COOP_SUFFIX"
  HUNG_TESTS+=('Gpu.OnePassCooperative*')
fi
# The layer on chip over the grid (cuda/on_chip_grid.cu, SPECNORM_TUNE=op_onchip_grid=1|2): two
# small tests, alone, under a short timeout, as coop_smoke above (a few seconds when they pass). The
# default takes that path only for v-first layers of dim −1 from 2²¹ elements (sm_90), so a hang
# there leaves out its tests (their names say OnChipGrid or OnTheGrid; the default's few GpuShapes
# cases stay, each under ctest's timeout), variants and profile.
GRID_HUNG=0
if [[ $CONFIGURED -eq 1 && -x "$GPU_TESTS" ]]; then
  run_step grid_smoke "$OUT/tests.log" 45 300 \
    env LD_LIBRARY_PATH="$RUN_LD_PATH" SPECNORM_TUNE="${SPECNORM_TUNE:-}" "$GPU_TESTS" --gtest_brief=1 \
    --gtest_filter='Gpu.OnChipGridLayerMatchesTheCpuBackend:GpuTraining.OnChipGridRegisterRows*'
  if grep -qE '^# exit status (124|137) ' "$LOGS/grid_smoke.log" 2> /dev/null; then
    GRID_HUNG=1
    CTEST_EXCLUDE=(-E "${CTEST_EXCLUDE[1]:+${CTEST_EXCLUDE[1]}|}OnChipGrid|OnTheGrid|on_chip_grid")
    HUNG_TESTS+=('*OnChipGrid*' '*OnTheGrid*' '*on_chip_grid*')
    echo "grid_smoke timed out: the later steps leave the grid's tests, variants and profile out" >> "$OUT/tests.log"
  fi
fi
# without_hung FILTER: a --gtest_filter FILTER, less the tests a smoke step saw hang (a negative
# part is added, or extended).
without_hung() {
  local neg
  neg="$(IFS=:; printf '%s' "${HUNG_TESTS[*]}")"
  if [[ -z "$neg" ]]; then printf '%s' "$1"
  elif [[ "$1" == *-* ]]; then printf '%s:%s' "$1" "$neg"
  else printf '%s-%s' "$1" "$neg"
  fi
}
if [[ $CONFIGURED -eq 1 ]]; then
  run_step ctest "$OUT/tests.log" 200 300 \
    env LD_LIBRARY_PATH="$RUN_LD_PATH" \
    ctest --test-dir "$BUILD" --output-on-failure -j "${SN_CTEST_J:-4}" --timeout 150 "${CTEST_EXCLUDE[@]}"
else
  skip_step ctest "$OUT/tests.log" "configure failed"
fi

# ---- example: the training loop of examples/ on the GPU -----------------------------------------
EXAMPLE="$BUILD/examples/train_lipschitz"
if [[ -x "$EXAMPLE" ]]; then
  run_step example "$OUT/tests.log" 60 300 env LD_LIBRARY_PATH="$RUN_LD_PATH" "$EXAMPLE"
  # The same loop with the three layers as one group (sn_group_forward, sn_group_backward).
  run_step example_grouped "$OUT/tests.log" 60 300 env LD_LIBRARY_PATH="$RUN_LD_PATH" "$EXAMPLE" --grouped
else
  skip_step example "$OUT/tests.log" "no $EXAMPLE"
  skip_step example_grouped "$OUT/tests.log" "no $EXAMPLE"
fi

# ---- (e) benchmarks: PyTorch first, so sn_bench can join its rows ---------------------------
if [[ -n "$AB_PID" ]]; then
  run_step ab_build "$OUT/bench.log" 150 280 \
    bash -c "while kill -0 $AB_PID 2> /dev/null; do sleep 1; done; cat '$LOGS/ab-build.log'"
  kill -- -"$AB_PID" 2> /dev/null  # still building when the step was cut: stop it
  wait "$AB_PID" 2> /dev/null
fi
# shellcheck disable=SC2206
WORKLOADS=(${SN_BENCH_WORKLOADS:---shape 1024x1024 --shape 4096x4096 --shape 4096x16384 --preset all})
if ! command -v python3 > /dev/null; then
  skip_step torch "$OUT/bench.log" "no python3"
elif [[ ! -f "$REPO/bench/torch_baseline.py" ]]; then
  skip_step torch "$OUT/bench.log" "no bench/torch_baseline.py"
else
  run_step torch "$OUT/bench.log" 100 280 \
    python3 "$REPO/bench/torch_baseline.py" "${WORKLOADS[@]}" --json "$OUT/torch.json"
fi
TORCH_ARGS=()
[[ -s "$OUT/torch.json" ]] && TORCH_ARGS=(--torch "$OUT/torch.json")
if [[ -x "$SN_BENCH" ]]; then
  run_step sn_bench "$OUT/bench.log" 150 250 \
    env LD_LIBRARY_PATH="$RUN_LD_PATH" \
    "$SN_BENCH" "${WORKLOADS[@]}" "${TORCH_ARGS[@]}" --json "$OUT/bench.json" --csv "$OUT/bench.csv"
else
  skip_step sn_bench "$OUT/bench.log" "no $SN_BENCH"
fi
if ! command -v python3 > /dev/null; then
  skip_step plot "$OUT/bench.log" "no python3"
elif [[ ! -f "$REPO/bench/plot.py" ]]; then
  skip_step plot "$OUT/bench.log" "no bench/plot.py"
elif [[ ! -s "$OUT/bench.json" || ! -s "$OUT/torch.json" ]]; then
  skip_step plot "$OUT/bench.log" "bench.json or torch.json missing"
else
  run_step plot "$OUT/bench.log" 45 0 \
    python3 "$REPO/bench/plot.py" "$OUT/bench.json" "$OUT/torch.json" -o "$OUT/speedup.png"
fi
# Issue 5's goals from this run's numbers (bench/goals.py), into bench.log.
if command -v python3 > /dev/null && [[ -s "$OUT/bench.json" ]]; then
  TORCH_JSON=()
  [[ -s "$OUT/torch.json" ]] && TORCH_JSON=("$OUT/torch.json")
  run_step goals "$OUT/bench.log" 20 0 python3 "$REPO/bench/goals.py" "$OUT/bench.json" "${TORCH_JSON[@]}"
else
  skip_step goals "$OUT/bench.log" "no python3 or no bench.json"
fi

# ---- the on-chip forward and backward (cuda/on_chip.cu; by default on sm_90, groups that fit, in
# blocks of 512 threads, and single small layers' training forwards, by the rules of
# cuda/forward.cu measured at bdc3f72): SN-GAN layer by layer and grouped, the defaults against
# onchip_threads=256, group_onchip=0 (the cooperative launch), op_onchip=0 (no single layer on
# chip) and op_onchip=1 (every forward and backward of a layer that fits), with sn_bench's check
# against the CPU reference on (its "check" column); then single layers of SN-GAN's and
# SN-DCGAN's sizes and of the rules' edges, the default against op_onchip=0 and op_onchip=1.
onchip() {
  local t rc=0 table=() stable=()
  for t in default onchip_threads=256 group_onchip=0 op_onchip=0 op_onchip=1; do
    local js="$LOGS/onchip_${t//[=,]/_}.json"
    echo "################ SPECNORM_TUNE=$t"
    SPECNORM_TUNE="${t#default}$COOP_SUFFIX" "$SN_BENCH" --preset sngan-cifar10 --dtype f32,bf16 \
      --mode train,scale,eval,backward --no-baseline --no-probe --reps 100 --json "$js" || rc=1
    table+=("$t=$js")
  done
  python3 "$REPO/bench/variants_table.py" "${table[@]}" || rc=1
  for t in default op_onchip=0 op_onchip=1; do
    local js="$LOGS/onchip_shapes_${t//[=,]/_}.json"
    echo "################ SPECNORM_TUNE=$t: single layers"
    SPECNORM_TUNE="${t#default}$COOP_SUFFIX" "$SN_BENCH" --shape 64x27 --shape 64x576 --shape 128x1152 \
      --shape 160x1024 --shape 128x2048 --shape 256x1152 --shape 320x1024 --shape 256x2304 \
      --shape 512x512 --dtype f32,bf16 \
      --mode train,scale,eval --no-baseline --no-probe --no-graph --no-group --reps 100 --json "$js" || rc=1
    stable+=("$t=$js")
  done
  python3 "$REPO/bench/variants_table.py" "${stable[@]}" || rc=1
  return $rc
}
if [[ -x "$SN_BENCH" ]] && command -v python3 > /dev/null; then
  run_step onchip "$OUT/bench.log" 90 200 \
    env LD_LIBRARY_PATH="$RUN_LD_PATH" LOGS="$LOGS" REPO="$REPO" \
    bash -c "$(declare -p SN_BENCH COOP_SUFFIX); $(declare -f onchip); onchip"
else
  skip_step onchip "$OUT/bench.log" "no $SN_BENCH or no python3"
fi

# ---- (f) compute-sanitizer: memcheck and racecheck right after the benchmark, initcheck and
# synccheck last (the variants and ncu steps between them) ------------------------------------
GTEST_ARGS=(--gtest_brief=1)
API_ERR_ARGS=()
if [[ -n "$SANITIZER" && "$("$SANITIZER" --help 2>&1)" == *--report-api-errors* ]]; then
  API_ERR_ARGS=(--report-api-errors "${SN_SANITIZER_API_ERRORS:-no}")
fi
# The largest shapes run in ctest; under the sanitizers they would take minutes. Every kernel
# variant still runs (8x16384 keeps the widest one-pass variant).
SN_SANITIZER_FILTER="${SN_SANITIZER_FILTER--GpuLarge.*:GpuSoak.*:GroupGpu.OnChipLeavesGroups*:Gpu.OnePassWideRows*:Gpu.OnePassCooperativeLaunchIs*:*4096x4096*:*3000x16384*:*777x8192*:*1000x4099*:*4099x1000*:*1000x4100*:*768x4099*:*500x16384*}"
SN_SANITIZER_FILTER="$(without_hung "$SN_SANITIZER_FILTER")"
[[ -n "$SN_SANITIZER_FILTER" ]] && GTEST_ARGS+=("--gtest_filter=$SN_SANITIZER_FILTER")
# One-pass by rows (several widths) and by columns, two-pass, a view, groups, the backward.
SN_SMALL_FILTER="${SN_SMALL_FILTER-Shapes/*128x128x3x3*:Shapes/*1x1_*:Shapes/*2000x12*:Shapes/*600x1152*:Shapes/*3x700x5*:Shapes/*96x48x4x4*:GroupGpu.MatchesCpuLayersStepByStep:GroupGpu.CooperativeLaunchOnFewBlocks*:Gpu.LaterSmaller*:Gpu.OnePassRowsRuns*:GroupGpu.OnChipAnyClusterSize*:GroupGpu.OnChipDegenerate*:Gpu.OnChipLayer*:Gpu.SmallLayers*:Gpu.OnePassRowPairs*:Gpu.OnePassCooperativeSmall*:Gpu.OnePassCooperativeLaunchRefused*}"
SN_SMALL_FILTER="$(without_hung "$SN_SMALL_FILTER")"
# racecheck is the slowest: each kernel family once, at the smallest sizes that run it (the H100 at
# 6626f15 spent 57 s on a rows test and over 80 s on Gpu.OnChipLayerMatchesTheCpuBackend, and was
# cut at 150 s; the H200 at 89aa697 took 26 s for the two grouped on-chip tests below; the H100 at
# bdc3f72 was cut at 90 s inside GroupGpu.CooperativeLaunchOnFewBlocks*, which is left out here:
# race it on its own with SN_RACECHECK_FILTER; at d44ff6c the 512-thread and cluster-size tests
# took 57 s). Small layers' training forwards run on chip by default (sm_90), so the Shapes tests
# here race the on-chip kernel too.
SN_RACECHECK_FILTER="${SN_RACECHECK_FILTER-Shapes/*128x128x3x3*:Shapes/*1x1_*:Shapes/*2000x12*:Shapes/*600x1152*:Shapes/*3x700x5*:Shapes/*96x48x4x4*:GroupGpu.OnChipAnyClusterSize*:GroupGpu.OnChipDegenerate*:GroupGpu.OnChipWith512*:Gpu.OnChipLayerLeavesOthers*:GpuTraining.OnChipLayerOptions*:GroupGpu.CooperativeSmallGroup*:Gpu.OnePassCooperativeRacecheckSized*:GroupGpu.BackwardCooperative*:GroupGpu.RefusedCooperativeBackward*}"
SN_RACECHECK_FILTER="$(without_hung "$SN_RACECHECK_FILTER")"
sanitize() {  # sanitize TOOL...
 local tool cap reserve
 for tool in "$@"; do
  if [[ -z "$SANITIZER" ]]; then
    skip_step "$tool" "$OUT/tests.log" "compute-sanitizer not found"
  elif [[ ! -x "$GPU_TESTS" ]]; then
    skip_step "$tool" "$OUT/tests.log" "no $GPU_TESTS"
  else
    extra=()
    [[ $tool == memcheck ]] && extra=(--leak-check full)
    case $tool in memcheck) cap=100; reserve=180 ;; racecheck) cap=${SN_RACECHECK_CAP:-150}; reserve=120 ;; *) cap=45; reserve=0 ;; esac
    args=("${GTEST_ARGS[@]}")
    # racecheck, initcheck and synccheck are slow: they take a few tests that run each kernel
    # family once (SN_SMALL_FILTER; 41 s, 13 s and 14 s on an H100 at e6c00d0; racecheck took
    # 86 s on an H200 at 1a8f84c, and over 150 s at e56c4b8 with the cooperative and cp.async
    # tests at full size, which now have sanitizer-sized versions). memcheck takes every test but
    # the largest shapes (56 s). Without --gtest_brief each test's time is in the log, so a
    # timeout shows which test ran long.
    [[ $tool != memcheck ]] && args=("--gtest_filter=$SN_SMALL_FILTER")
    [[ $tool == racecheck ]] && args=("--gtest_filter=$SN_RACECHECK_FILTER")
    run_step "$tool" "$OUT/tests.log" "$cap" "$reserve" \
      env LD_LIBRARY_PATH="$RUN_LD_PATH" SPECNORM_TUNE="${SN_SANITIZER_TUNE-${SPECNORM_TUNE:-}}$COOP_SUFFIX" \
      SN_UNDER_SANITIZER=1 "$SANITIZER" --tool "$tool" --error-exitcode 1 "${extra[@]}" \
      "${API_ERR_ARGS[@]}" \
      "$GPU_TESTS" "${args[@]}"
  fi
 done
}

sanitize memcheck racecheck

# ---- the GPU tests again under the launch variants of SPECNORM_TUNE (cuda/forward.cu) ---------
# Plain launches, no clusters and groups as three kernels (the defaults on sm_90 are pdl=1,
# clusters where they pay, and small groups as one cooperative launch).
if [[ -x "$GPU_TESTS" ]]; then
  # Without the largest shapes, which ctest ran with the defaults (24 s on an H200; the wide
  # filter needed over 84 s).
  run_step tune_tests "$OUT/tests.log" 90 180 \
    env LD_LIBRARY_PATH="$RUN_LD_PATH" SPECNORM_TUNE="${SN_TUNE_TESTS:-pdl=0,op_cluster=1,group_coop=0,op_coop=0}$COOP_SUFFIX" \
    "$GPU_TESTS" --gtest_brief=1 "--gtest_filter=$(without_hung "${SN_TUNE_TESTS_FILTER:-Shapes/*:GpuTraining.*:Gpu.*:GroupGpu.*:Backends/*-GpuLarge.*:*4096x4096*:*3000x16384*:Gpu.OnePassVariants*:GpuTraining.Half*}")"
else
  skip_step tune_tests "$OUT/tests.log" "no $GPU_TESTS"
fi

# ---- variants of the one-pass kernel (cuda/forward.cu, SPECNORM_TUNE), timed side by side ----
# shellcheck disable=SC2206
VARIANT_WL=(${SN_VARIANT_WORKLOADS:---shape 4096x4096 --shape 4096x16384 --dtype f32,bf16 --mode train,scale,eval,backward})
# (pdl=1 and op_cluster=4 are the defaults on sm_90 since 1a8f84c; op_async=1 and op_fuse=1 lost on
# the H200 at e56c4b8 and were removed, as were two rows ahead in registers and the division's
# unrolled loads, which lost on the H100 at 6626f15. div_stream=1, the division's evict-first
# accesses, won there: 4096² train 5% faster in fp32, 8% in bf16, and is the default where W takes
# a quarter of the L2 to twice it: timed here forced off and on. op_bulk=1 (a bulk-copy ring of
# rows) lost on the H100 at d5e109c (up to 16% slower) and was removed. bw_stream=1 (the backward's
# ⟨G, W⟩ loads W evict-first) won there (4096² bf16 backward −3.4%) and is the default: timed here
# off. op_rows=2, built after d5e109c: two rows a step in the one-pass rows kernel; at 4884391
# 4096² fp32 scale −5%, eval +4%. op_reduce_cols=8|16, built after 4884391: fewer one-pass reduce
# blocks, for 4096 × 16384 fp32 scale-only (1.23× one read, goal 2 asks 1.2×). At ab6e27f on the
# H100: op_reduce_cols=8 won at 16384 columns (scale-only 3-6%), lost 1-2% at 4096, and is the
# default by width since; op_coop=1 won 3-4% on 4096² scale-only and lost 2-20% at 4096 × 16384
# (512 threads, no longer built), and is the default for 256-thread rows on sm_90 since, in the
# forwards without W_sn (at 61eb446 training forwards with W_sn were 2-5% slower with it);
# op_eval_own=1 won 2-3% on bf16 eval and is the default since; op_cluster=2 lost 1-3% and
# op_coop=3 was the same as 1. Timed here: the old settings against the new defaults, and
# div_prefetch=1, built in session 13: the division's first pack of W per thread loaded before its
# PDL wait; bw_grid=1056|264, also session 13: the backward's apply kernel on 8 or 2 blocks per SM
# of 132, each taking several rows, where the default runs a block per row. Both lost or tied on
# the H200 at 64f5bc9 and left the list for op_pp=0|2, session 15: the rows' ping-pong loop off,
# and in every instance; op_pp=3, session 16: a ring of three in the bf16 rows.)
# shellcheck disable=SC2206
VARIANT_PRESETS=(${SN_VARIANT_PRESETS:---preset sngan-cifar10 --preset sndcgan-cifar10 --preset vit-b16})
read -r -a TUNES <<< "${SN_TUNE_VARIANTS:-default op_pp=0 op_pp=2 op_pp=3 op_coop=0 op_coop=1 op_reduce_cols=4 op_reduce_cols=16 op_eval_own=0 op_rows=2}"
# The presets' settings ($SN_PRESET_VARIANTS; e.g. op_onchip_grid=1, session 20, for each
# ViT-B/16 layer on chip over the whole grid, per layer, with --preset vit-b16 in $SN_VARIANT_PRESETS).
read -r -a PRESET_TUNES <<< "${SN_PRESET_VARIANTS:-default group_coop=0 group_coop=1 group_onchip=1,op_onchip=1 group_onchip=1,group_onchip_cluster=4}"
# Keys a smoke step saw hang: no variant sets them.
HUNG_KEYS=()
[[ $COOP_HUNG -eq 1 ]] && HUNG_KEYS+=(op_coop=)
[[ $GRID_HUNG -eq 1 ]] && HUNG_KEYS+=(op_onchip_grid=)
# v-first layers with dim -1: the defaults (on the grid since f17c2f4, sm_90, but for eval), their
# usual kernels (op_onchip_grid=0), and every forward on the grid unless grid_smoke timed out.
VFIRST_TUNES=("" "op_onchip_grid=0")
[[ $GRID_HUNG -eq 0 ]] && VFIRST_TUNES+=("op_onchip=0,op_onchip_grid=2")
without_hung_keys() {  # without_hung_keys NAME: drop from array NAME the settings that set a hung key
  local -n arr="$1"
  local t k kept=()
  for t in "${arr[@]}"; do
    for k in "${HUNG_KEYS[@]}"; do [[ "$t" == *"$k"* ]] && continue 2; done
    kept+=("$t")
  done
  arr=("${kept[@]}")
}
without_hung_keys TUNES
without_hung_keys PRESET_TUNES
variants() {
  local t rc=0 table=() ptable=()
  for t in "${TUNES[@]}"; do
    echo "################ SPECNORM_TUNE=$t"
    local js="$VDIR/${t//[=,]/_}.json"
    table+=("$t=$js")
    if [[ $t == default ]]; then
      # With the probe rows, so that goals.py gives issue 5's goals 1, 2 and 5 in bf16 too (the
      # sn_bench step times f32 only) beside what the probe reaches.
      SPECNORM_TUNE="$COOP_SUFFIX" "$SN_BENCH" "${VARIANT_WL[@]}" --no-baseline --no-group --no-graph --no-check --reps 50 --json "$js" || rc=1
      python3 "$REPO/bench/goals.py" "$js" || rc=1
    else
      SPECNORM_TUNE="$t$COOP_SUFFIX" "$SN_BENCH" "${VARIANT_WL[@]}" --no-baseline --no-probe --no-group --no-graph --no-check --reps 50 --json "$js" || rc=1
    fi
  done
  # group_onchip=1 (the default on sm_90 since 6626f15): a group whose layers all fit (SN-GAN; not sndcgan nor
  # ViT-B/16, which keep the default) as one launch with each layer in a cluster's shared memory
  # (cuda/on_chip.cu), clusters of 8 for SN-GAN, or of 4; with op_onchip=1 the per-layer rows run
  # each layer that fits so.
  for t in "${PRESET_TUNES[@]}"; do
    echo "################ SPECNORM_TUNE=$t: presets, per layer and grouped"
    local js="$VDIR/presets_${t//[=,]/_}.json"
    ptable+=("$t=$js")
    # sndcgan-cifar10 (22 MiB fp32, 11 MiB bf16) sits between SN-GAN's 4 MiB, where the
    # cooperative launch won, and ViT-B/16's 329 MiB, where it lost.
    # (backward: the grouped backward, one cooperative launch or two kernels by group_coop.)
    SPECNORM_TUNE="${t#default}$COOP_SUFFIX" "$SN_BENCH" "${VARIANT_PRESETS[@]}" --dtype f32,bf16 --mode train,scale,backward --no-baseline --no-probe --no-check --reps 50 --json "$js" || rc=1
  done
  echo "################ the variants side by side (bench/variants_table.py)"
  python3 "$REPO/bench/variants_table.py" "${table[@]}" || rc=1
  echo
  python3 "$REPO/bench/variants_table.py" "${ptable[@]}" || rc=1

  echo "################ legacy order: one pass by columns against two passes"
  SPECNORM_TUNE="$COOP_SUFFIX" "$SN_BENCH" --shape 768x4096 --shape 512x16384 --shape 1536x4608 \
    --preset sngan-cifar10 --order v-first --algo all --dtype f32,bf16 --mode train,scale \
    --no-baseline --no-probe --no-group --reps 50 || rc=1
  echo "################ v-first groups: SN-GAN in PyTorch's layout (M's columns strided) and Keras' (contiguous)"
  SPECNORM_TUNE="$COOP_SUFFIX" "$SN_BENCH" --preset sngan-cifar10 --preset sngan-cifar10-keras --order v-first \
    --dtype f32,bf16 --mode train,scale,eval --no-baseline --no-probe --reps 50 || rc=1
  echo "################ v-first layers with dim -1 (Keras', Flax's, Haiku's layout): the default, their usual kernels, then every forward on the grid (op_onchip_grid=2, as their M^T)"
  for t in "${VFIRST_TUNES[@]}"; do
    echo "######## SPECNORM_TUNE=$t"
    SPECNORM_TUNE="$t$COOP_SUFFIX" "$SN_BENCH" --shape 2048x2048:-1 --shape 3072x768:-1 --order v-first \
      --dtype f32,bf16 --mode train,scale,eval,backward --no-baseline --no-probe --no-group --reps 50 || rc=1
  done
  return $rc
}
if [[ -x "$SN_BENCH" ]]; then
  run_step variants "$OUT/bench.log" "${SN_VARIANTS_CAP:-135}" 145 \
    env LD_LIBRARY_PATH="$RUN_LD_PATH" VDIR="$LOGS" REPO="$REPO" \
    bash -c "$(declare -p VARIANT_WL VARIANT_PRESETS TUNES PRESET_TUNES VFIRST_TUNES SN_BENCH COOP_SUFFIX); $(declare -f variants); variants"
else
  skip_step variants "$OUT/bench.log" "no $SN_BENCH"
fi

ab() {
  set -o pipefail
  local ref rc=0 bins=() labels=() table=()
  for ref in $AB_REFS; do
    local src="$LOGS/ab-$ref"
    if [[ "$(cat "$src/status" 2> /dev/null)" == ok && -x "$src/b/bench/sn_bench" ]]; then
      bins+=("$src/b/bench/sn_bench"); labels+=("$ref")
    else
      echo "ref $ref: not built"; tail -n 20 "$src/configure.log" "$src/build.log" 2> /dev/null; rc=1
    fi
  done
  local head
  for head in $AB_HEADS; do bins+=("$SN_BENCH"); labels+=("$head"); done
  local round i wl
  read -r -a wl <<< "$AB_WORKLOADS"
  for round in 1 2; do
    for i in "${!bins[@]}"; do
      local tune="" js="$LOGS/ab-${round}-${i}.json"
      [[ ${labels[$i]} == HEAD,* ]] && tune=${labels[$i]#HEAD,}
      echo "################ round $round: ${labels[$i]}"
      SPECNORM_TUNE="$tune" "${bins[$i]}" "${wl[@]}" \
        --no-baseline --no-graph --no-check --reps 100 --json "$js" | grep -E "$AB_ROWS" || rc=1
      table+=("r${round}:${labels[$i]}=$js")
    done
  done
  python3 "$REPO/bench/variants_table.py" "${table[@]}" || rc=1
  return $rc
}
if [[ -x "$SN_BENCH" && -n "$AB_REFS" ]]; then
  run_step ab "$OUT/bench.log" 120 90 \
    env LD_LIBRARY_PATH="$RUN_LD_PATH" LOGS="$LOGS" REPO="$REPO" NPROC="$NPROC" \
    bash -c "$(declare -p AB_REFS AB_WORKLOADS AB_HEADS AB_ROWS SN_BENCH); $(declare -f ab); ab"
else
  skip_step ab "$OUT/bench.log" "no $SN_BENCH or SN_AB_REFS empty"
fi

# ---- Nsight Compute: DRAM bytes of each kernel against the bytes the benchmark counts ---------
NCU="$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -n1 || true)"
# shellcheck disable=SC2206
# --layer-warmup 0: only the timed calls are profiled (the 15 warm-up iterations of each of the
# 11 SN-GAN layers were 330 of the 430 kernels, and the step ran out of time).
NCU_WL=(${SN_NCU_WORKLOADS:---shape 4096x4096 --shape 4096x16384 --preset sngan-cifar10 --dtype f32,bf16 --mode train,scale,eval,backward})
ncu_l2() {
  local t
  for t in div_stream=0 div_stream=1; do
    echo "################ SPECNORM_TUNE=$t"
    SPECNORM_TUNE="$t$COOP_SUFFIX" "$NCU" --clock-control none --cache-control none --csv --print-units base \
      --metrics dram__bytes_read.sum,dram__bytes_write.sum,gpu__time_duration.sum -k "regex:commit_divide" \
      "$SN_BENCH" --shape 4096x4096 --shape 4096x16384 --dtype f32,bf16 --mode train --no-baseline --no-probe --no-graph \
      --no-group --no-check --reps 1 --warmup 0 --batch 1 --no-rotate --layer-warmup 0 || return 1
  done
}
ncu_coop() {
  local mode ok=1
  for mode in kernel application; do
    echo "################ --replay-mode $mode"
    SPECNORM_TUNE=op_coop=1 "$NCU" --replay-mode "$mode" --clock-control none --csv --print-units base \
      --metrics gpu__time_duration.sum -k "regex:one_pass_coop" -c 1 \
      "$SN_BENCH" --shape 4096x4096 --dtype f32 --mode scale --no-baseline --no-probe --no-graph --no-group \
      --no-check --reps 1 --warmup 0 --batch 1 --no-rotate --layer-warmup 0 && ok=0
    echo "# --replay-mode $mode: exit $?"
  done
  return $ok
}
if [[ -z "$NCU" ]]; then
  skip_step ncu "$OUT/bench.log" "ncu not found"
  skip_step ncu_coop "$OUT/bench.log" "ncu not found"
  skip_step ncu_l2 "$OUT/bench.log" "ncu not found"
elif [[ ! -x "$SN_BENCH" ]]; then
  skip_step ncu "$OUT/bench.log" "no $SN_BENCH"
  skip_step ncu_coop "$OUT/bench.log" "no $SN_BENCH"
  skip_step ncu_l2 "$OUT/bench.log" "no $SN_BENCH"
else
  # op_coop=0: under this ncu (2025, kernel replay) the cooperative one-pass launch failed with
  # LaunchFailed and took sn_bench down (H200 at 64f5bc9, the first scale-only call; its grid read
  # (0, 0, 0)); its work is the rows, reduce and commit kernels' profiled here, and ncu_coop below
  # tries it alone.
  run_step ncu "$OUT/bench.log" 90 60 \
    env LD_LIBRARY_PATH="$RUN_LD_PATH" SPECNORM_TUNE="${SPECNORM_TUNE:+$SPECNORM_TUNE,}op_coop=0" \
    "$NCU" --clock-control none --cache-control none --csv --print-units base \
    --metrics dram__bytes_read.sum,dram__bytes_write.sum,gpu__time_duration.sum \
    -k "regex:one_pass|commit_divide|matvec|group_|inner_kernel|apply_" \
    "$SN_BENCH" "${NCU_WL[@]}" --no-baseline --no-probe --no-graph --no-check --reps 1 --warmup 0 --batch 1 --no-rotate \
    --layer-warmup 0
  # The cooperative launch alone (4096² fp32 scale-only), kernel replay then application replay:
  # which of them profiles it (a diagnosis; the step fails only if both do).
  if [[ $COOP_HUNG -eq 0 ]]; then
    run_step ncu_coop "$OUT/bench.log" 45 20 \
      env LD_LIBRARY_PATH="$RUN_LD_PATH" bash -c "$(declare -p NCU SN_BENCH); $(declare -f ncu_coop); ncu_coop"
  else
    skip_step ncu_coop "$OUT/bench.log" "coop_smoke timed out"
  fi
  # The division's DRAM reads with plain and evict-first accesses (div_stream=0, 1): how much of W
  # it finds in L2 after the iteration (9 of 67 MB at 4096² fp32 on an H100, plain).
  run_step ncu_l2 "$OUT/bench.log" 45 30 \
    env LD_LIBRARY_PATH="$RUN_LD_PATH" bash -c "$(declare -p NCU SN_BENCH COOP_SUFFIX); $(declare -f ncu_l2); ncu_l2"
fi

# ---- Nsight Compute, where the time goes: the sections of the kernels still far from their floor
# (bench/NOTES.md): the one-pass rows and reduce kernels of 4096² fp32 (scale, train), the bf16
# rows kernel of 4096 × 16384 and the grouped SN-GAN forward as one cooperative kernel
# (SPECNORM_TUNE=group_coop=1) and on chip (group_onchip=1).
detail() {
  local sec=(--section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats
             --section MemoryWorkloadAnalysis --section SchedulerStats --section SourceCounters)
  # The scale-only rows kernel of one shape under each SPECNORM_TUNE given, side by side
  # (op_coop=0: the default's scale-only forward of 256-thread rows is the cooperative kernel).
  # $1: the shape, $2: its dtypes (one profiled kernel each), then the settings.
  rows_side_by_side() {
    local shape="$1" dtypes="$2" t
    shift 2
    for t in "$@"; do
      echo "################ SPECNORM_TUNE=$t"
      SPECNORM_TUNE="$t,op_coop=0" "$NCU" --clock-control none "${sec[@]}" -k "regex:one_pass_rows" \
        -c "$(tr ',' '\n' <<< "$dtypes" | wc -l)" \
        "$SN_BENCH" --shape "$shape" --dtype "$dtypes" --mode scale --no-baseline --no-probe --no-graph --no-group \
        --no-check --reps 1 --warmup 0 --batch 1 --no-rotate --layer-warmup 0 || return 1
    done
  }
  # ring: the rows kernel of 4096 × 16384 bf16 plain, with the ring of two (the default) and with
  # the ring of three: its warp stalls say whether the row's block sum or the loads pace it
  # (bench/NOTES.md, session 16). rows: the 4096² rows (fp32, bf16), one and two a step.
  # grid: the layer on chip over the grid (op_onchip_grid=2, sessions 20-21): its training forward at
  # 2048² (all rows in shared memory) and 4096² (bf16: rows in registers; fp32: rows streamed), and
  # its backward at 4096² bf16: whether the copy-in, the grid barriers or the products pace it. A
  # cooperative launch, which this ncu may not profile with kernel replay (the one-pass one failed
  # so at 64f5bc9): kernel replay, then application replay.
  grid_detail() {
    local mode
    for mode in kernel application; do
      echo "################ --replay-mode $mode"
      SPECNORM_TUNE=op_onchip=0,op_onchip_grid=2 "$NCU" --replay-mode "$mode" --clock-control none "${sec[@]}" \
        -k "regex:on_chip_grid" -c 4 \
        "$SN_BENCH" --shape 2048x2048 --shape 4096x4096 --dtype f32,bf16 --mode train --no-baseline --no-probe \
        --no-graph --no-group --no-check --reps 1 --warmup 0 --batch 1 --no-rotate --layer-warmup 0 || continue
      SPECNORM_TUNE=op_onchip=0,op_onchip_grid=2 "$NCU" --replay-mode "$mode" --clock-control none "${sec[@]}" \
        -k "regex:on_chip_grid_backward" -c 1 \
        "$SN_BENCH" --shape 4096x4096 --dtype bf16 --mode backward --no-baseline --no-probe --no-graph --no-group \
        --no-check --reps 1 --warmup 0 --batch 1 --no-rotate --layer-warmup 0 && return 0
    done
    return 1
  }
  case "${SN_NCU_DETAIL:-}" in
    ring) rows_side_by_side 4096x16384 bf16 op_pp=0 op_pp=1 op_pp=3; return ;;
    rows) rows_side_by_side 4096x4096 f32,bf16 op_rows=1 op_rows=2; return ;;
    grid) grid_detail; return ;;
  esac
  if [[ "${SN_NCU_DETAIL:-}" != onchip ]]; then
  SPECNORM_TUNE=op_coop=0 "$NCU" --clock-control none "${sec[@]}" -k "regex:one_pass_rows|one_pass_reduce" -c 4 \
    "$SN_BENCH" --shape 4096x4096 --mode scale,train --no-baseline --no-probe --no-graph --no-group --no-check \
    --reps 1 --warmup 0 --batch 1 --no-rotate --layer-warmup 0 || return 1
  "$NCU" --clock-control none "${sec[@]}" -k "regex:one_pass_rows" -c 1 \
    "$SN_BENCH" --shape 4096x16384 --dtype bf16 --mode scale --no-baseline --no-probe --no-graph --no-group \
    --no-check --reps 1 --warmup 0 --batch 1 --no-rotate --layer-warmup 0 || return 1
  SPECNORM_TUNE=group_coop=1 "$NCU" --clock-control none "${sec[@]}" -k "regex:group_" -c 4 \
    "$SN_BENCH" --preset sngan-cifar10 --mode train,scale --no-baseline --no-probe --no-graph --no-check \
    --reps 1 --warmup 0 --batch 1 --no-rotate --layer-warmup 0 || return 1
  fi
  # The grouped forward with every layer on chip (cuda/on_chip.cu; the default for SN-GAN on sm_90):
  # where its 15-17 µs go (8-10 were predicted; the copy's LDGSTS, the cluster barrier
  # UCGABAR_WAIT, the distributed loads LD.E).
  # --print-details all: the source-counter tables (which instructions make the 54% excess global
  # sectors and 32% excess shared wavefronts seen on the H200 at 89aa697); without it if this ncu
  # does not know the option.
  local pd
  for pd in "--print-details all" ""; do
    # shellcheck disable=SC2086
    SPECNORM_TUNE=group_onchip=1 "$NCU" --clock-control none "${sec[@]}" $pd -k "regex:on_chip" -c 2 \
      "$SN_BENCH" --preset sngan-cifar10 --mode train,scale --no-baseline --no-probe --no-graph --no-check \
      --reps 1 --warmup 0 --batch 1 --no-rotate --layer-warmup 0 && return 0
  done
  return 1
}
if [[ "${SN_NCU_DETAIL:-}" == grid && $GRID_HUNG -eq 1 ]]; then
  skip_step ncu_detail "$OUT/bench.log" "grid_smoke timed out"
elif [[ ! "${SN_NCU_DETAIL:-0}" =~ ^(1|onchip|rows|ring|grid)$ ]]; then
  skip_step ncu_detail "$OUT/bench.log" "off (SN_NCU_DETAIL=1 runs it, =onchip its on-chip part only, =rows the 4096² rows one and two a step only, =ring the 4096 × 16384 bf16 rows plain and in rings of two and three, =grid the layer on chip over the grid; results of e56c4b8 in bench/NOTES.md)"
elif [[ -n "$NCU" && -x "$SN_BENCH" ]]; then
  run_step ncu_detail "$OUT/bench.log" 60 30 \
    env LD_LIBRARY_PATH="$RUN_LD_PATH" SN_NCU_DETAIL="$SN_NCU_DETAIL" bash -c "$(declare -p NCU SN_BENCH); $(declare -f detail); detail"
else
  skip_step ncu_detail "$OUT/bench.log" "no ncu or no $SN_BENCH"
fi

sanitize initcheck synccheck

# ---- (g) summary ----------------------------------------------------------------------------
# Keep $OUT to the 8 files the caller fetches: drop anything a step wrote besides them.
for f in "$OUT"/* "$OUT"/.[!.]*; do
  [[ -e "$f" ]] || continue
  case "$(basename "$f")" in
    build.log|tests.log|bench.log|summary.txt|bench.json|bench.csv|torch.json|speedup.png) ;;
    *) echo "== removing unexpected output $(basename "$f")"; rm -rf "$f" ;;
  esac
done
rm -rf "$LOGS"
TOTAL=$(( $(date +%s) - T0 ))
{
  printf '\nspecnorm gpu_check: %s\n' "$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -n1 || echo 'no GPU')"
  printf '%-10s %-8s %7s  %s\n' STEP STATUS SECONDS NOTE
  for i in "${!STEPS[@]}"; do
    printf '%-10s %-8s %7s  %s\n' "${STEPS[$i]}" "${STATUS[$i]}" "${SECS[$i]}" "${NOTES[$i]}"
  done
  printf '%-10s %-8s %7s\n' total "$([[ $ANY_FAIL -eq 0 ]] && echo PASS || echo FAIL)" "$TOTAL"
} > "$OUT/summary.txt"
cat "$OUT/summary.txt"
exit $ANY_FAIL
