#!/usr/bin/env bash
# Registers, spills and shared memory of every specnorm kernel, from ptxas, without a GPU:
#
#   bash scripts/ptxas_report.sh [BUILD_DIR] [ARCH]     # defaults: build, sm_90
#
# Recompiles each cuda/*.cu of BUILD_DIR's compile commands (a configured Ninja build) with
# -Xptxas -v into a temporary folder, then prints one line per kernel for ARCH:
#   registers  spill-stores  spill-loads  stack  static-smem  kernel (demangled when c++filt exists)
# and exits 1 if any kernel spills. The build folder itself is not touched.
set -euo pipefail
BUILD="${1:-build}"
ARCH="${2:-sm_90}"
[[ -f "$BUILD/build.ninja" ]] || { echo "no $BUILD/build.ninja: configure with -G Ninja first" >&2; exit 2; }
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
LOG="$TMP/ptxas.log"
: > "$LOG"
while IFS= read -r cmd; do
  # Compile to a scratch object; drop the dependency-file flags, which point into the build.
  cmd="$(sed -E "s# -o [^ ]+# -Xptxas -v -o $TMP/k.o#; s# -MD##; s# -MT [^ ]+##; s# -MF [^ ]+##" <<< "$cmd")"
  (cd "$BUILD" && bash -c "$cmd") >> "$LOG" 2>&1
done < <(ninja -C "$BUILD" -t commands | grep -E 'nvcc .* -c [^ ]*/cuda/[a-z_]+\.cu ' | sort -u)

DEMANGLE=cat
command -v c++filt > /dev/null && DEMANGLE=c++filt
python3 - "$LOG" "$ARCH" <<'EOF' | $DEMANGLE
import re, sys
log, arch = sys.argv[1], sys.argv[2]
cur, rows, spills = None, {}, 0
for line in open(log):
    m = re.search(r"Compiling entry function '(\S+)' for '(sm_\d+)'", line)
    if m:
        cur = m.group(1) if m.group(2) == arch else None
        if cur: rows.setdefault(cur, {})
        continue
    if not cur:
        continue
    m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
    if m:
        rows[cur].update(stack=int(m.group(1)), st=int(m.group(2)), ld=int(m.group(3)))
    m = re.search(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?", line)
    if m:
        rows[cur].update(regs=int(m.group(1)), smem=int(m.group(2) or 0))
print("%4s %6s %6s %6s %6s  %s" % ("regs", "spillS", "spillL", "stack", "smem", "kernel (" + arch + ")"))
for k, r in sorted(rows.items(), key=lambda kv: -kv[1].get("regs", 0)):
    spills += r.get("st", 0) + r.get("ld", 0)
    print("%4d %6d %6d %6d %6d  %s" % (r.get("regs", 0), r.get("st", 0), r.get("ld", 0),
                                      r.get("stack", 0), r.get("smem", 0), k))
print("kernels: %d, bytes spilled (stores + loads): %d" % (len(rows), spills))
sys.exit(1 if spills else 0)
EOF
