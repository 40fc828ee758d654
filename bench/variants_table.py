#!/usr/bin/env python3
"""Side-by-side table of sn_bench runs under different SPECNORM_TUNE settings.

    python3 bench/variants_table.py NAME=RUN.json [NAME=RUN.json ...]

Each RUN.json is one `sn_bench --json` file. Prints a Markdown table with one row per workload,
dtype, mode and implementation (specnorm rows only) and one column per run: the median in µs,
and for every run after the first its change against the first. Runs that lack a row show "-".
The `path` column is the kernels the first run's calls took (sn_bench's `path`: sn_layer_get_paths);
a later run whose calls took other kernels shows its own path in brackets after its time, so that
a variant that did not take the path it asks for is seen at once.
Standard library only, so that it runs on the GPU machine as it is.
"""
import json
import sys


def load(path):
    with open(path) as f:
        doc = json.load(f)
    rows = {}
    for r in doc.get("rows", []):
        if not str(r.get("impl", "")).startswith("specnorm"):
            continue
        key = (r["workload"], r["dtype"], r["mode"], r["impl"], r.get("algo", ""))
        rows[key] = (r.get("median_us"), r.get("path"))  # (no path: sn_bench before 2026-11-27)
    return doc.get("device", ""), rows


def main(argv):
    if len(argv) < 2 or any("=" not in a for a in argv[1:]):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    runs = []
    for arg in argv[1:]:
        name, path = arg.rsplit("=", 1)
        try:
            runs.append((name, *load(path)))
        except (OSError, ValueError, KeyError) as e:
            print(f"variants_table: {path}: {e}", file=sys.stderr)
            return 1
    keys = []
    for _, _, rows in runs:
        keys += [k for k in rows if k not in keys]
    dev = runs[0][1]
    name = dev.get("name", dev) if isinstance(dev, dict) else dev
    print(f"device: {name}; µs (median), change against {runs[0][0]}")
    print()
    print("| workload | dtype | mode | impl | algo | path | " + " | ".join(n for n, _, _ in runs) + " |")
    print("|" + "---|" * (6 + len(runs)))
    for k in keys:
        base, base_path = runs[0][2].get(k, (None, None))
        cells = []
        for i, (_, _, rows) in enumerate(runs):
            us, path = rows.get(k, (None, None))
            if us is None:
                cell = "-"
            elif i == 0 or not base:
                cell = f"{us:.1f}"
            else:
                cell = f"{us:.1f} ({100.0 * (us - base) / base:+.0f}%)"
            if i > 0 and path is not None and base_path is not None and path != base_path:
                cell += f" [{path}]"
            cells.append(cell)
        print("| " + " | ".join(str(x) for x in k) + f" | {base_path or '-'} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
