#!/usr/bin/env python3
"""Plot sn_bench / torch_baseline.py results.

Reads one or more result JSON files (sn_bench --json, torch_baseline.py --json; schema 1 or 2)
and draws, per workload, mode and dtype, two panels into one PNG:
  1. speed-up over PyTorch: the faster PyTorch row (torch-eager or torch-graph) of the same
     workload, mode, dtype and power_iters, divided by each implementation's median;
  2. fraction of the device-to-device copy bandwidth each implementation reaches (rows carry it,
     measured in the run that produced them; bytes per mode as in the file's bytes_definition).
Schema 1 files (no dtype field, train/eval only) are read as dtype f32.

Usage: plot.py RESULT.json [MORE.json ...] [-o out.png] [--mode M] [--dtype T] [--impl NAME ...]
"""

import argparse
import json
import math
import sys

MODES = ["train", "eval", "scale", "backward", "backward-acc"]
DTYPES = ["f32", "bf16", "f16"]
SCHEMAS = (1, 2)


def load_rows(paths):
    rows, devices = [], []
    for path in paths:
        with open(path) as f:
            doc = json.load(f)
        if "rows" not in doc:
            raise ValueError(f"{path}: no 'rows' (not an sn_bench / torch_baseline.py result file)")
        schema = doc.get("schema", 1)
        if schema not in SCHEMAS:
            raise ValueError(f"{path}: schema {schema} is not one this plot.py reads "
                             f"({', '.join(map(str, SCHEMAS))})")
        dev = (doc.get("device") or {}).get("name", "?")
        devices.append((path, doc.get("tool", "?"), dev))
        for r in doc["rows"]:
            if r.get("median_us") is None:
                continue
            r = dict(r)
            r.setdefault("dtype", "f32")  # schema 1: float32 only
            r["_file"] = path
            r["_device"] = dev
            rows.append(r)
    return rows, devices


def torch_best(rows):
    best = {}
    for r in rows:
        if r["impl"].startswith("torch"):
            key = (r["workload"], r["mode"], r["dtype"], r.get("power_iters", 1))
            if key not in best or r["median_us"] < best[key]:
                best[key] = r["median_us"]
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", metavar="RESULT.json")
    ap.add_argument("-o", "--out", default="sn_bench.png", help="output PNG (default sn_bench.png)")
    ap.add_argument("--mode", choices=MODES + ["all"], default="all")
    ap.add_argument("--dtype", choices=DTYPES + ["all"], default="all")
    ap.add_argument("--impl", action="append", metavar="NAME",
                    help="only these implementations (repeatable; default all)")
    ap.add_argument("--title", default=None)
    args = ap.parse_args(argv)

    try:
        rows, devices = load_rows(args.files)
    except (OSError, ValueError) as exc:
        print(f"plot.py: {exc}", file=sys.stderr)
        return 2
    if args.mode != "all":
        rows = [r for r in rows if r["mode"] == args.mode]
    if args.dtype != "all":
        rows = [r for r in rows if r["dtype"] == args.dtype]
    if args.impl:
        rows = [r for r in rows if r["impl"] in args.impl or r["impl"].startswith("torch")]
    if not rows:
        print("plot.py: no rows to plot", file=sys.stderr)
        return 1
    names = sorted({d for _, _, d in devices})
    if len(names) > 1:
        print(f"plot.py: warning: results from different devices: {', '.join(names)}",
              file=sys.stderr)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Groups on the x axis: (workload, mode, dtype) in first-seen order; bars: implementations.
    groups, impls = [], []
    for r in rows:
        g = (r["workload"], r["mode"], r["dtype"])
        if g not in groups:
            groups.append(g)
        label = r["impl"] + ("" if r.get("algo", "-") in ("-", "default") else f"[{r['algo']}]")
        r["_label"] = label
        if label not in impls:
            impls.append(label)
    # Last row wins for duplicate (group, label), e.g. the same file given twice.
    table = {((r["workload"], r["mode"], r["dtype"]), r["_label"]): r for r in rows}
    best = torch_best(rows)

    fig, axes = plt.subplots(2, 1, figsize=(max(8, 1.3 * len(groups) + 3), 9), sharex=True)
    x = list(range(len(groups)))
    width = 0.8 / max(1, len(impls))
    cmap = plt.get_cmap("tab10")

    ax = axes[0]
    # (the probe rows of sn_bench are a yardstick, not an implementation: the bandwidth panel only)
    speed_impls = [i for i in impls if not i.startswith(("torch", "probe"))]
    any_speed = False
    for k, label in enumerate(speed_impls):
        vals = []
        for g in groups:
            r = table.get((g, label))
            key = (g[0], g[1], g[2], r.get("power_iters", 1)) if r else None
            t = best.get(key) if key else None
            vals.append(t / r["median_us"] if r and t else math.nan)
        if all(math.isnan(v) for v in vals):
            continue
        any_speed = True
        off = (k - (len(speed_impls) - 1) / 2) * (0.8 / max(1, len(speed_impls)))
        bars = ax.bar([xi + off for xi in x], vals, 0.8 / max(1, len(speed_impls)), label=label,
                      color=cmap(impls.index(label) % 10))
        for b, v in zip(bars, vals):
            if not math.isnan(v):
                ax.annotate(f"{v:.1f}x", (b.get_x() + b.get_width() / 2, v), ha="center",
                            va="bottom", fontsize=7)
    ax.axhline(1.0, color="gray", lw=0.8, ls="--")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.2)  # room for the labels and the legend
    ax.set_ylabel("speed-up over PyTorch\n(faster of eager / CUDA graph)")
    if any_speed:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no PyTorch rows in the given files (run torch_baseline.py --json)",
                transform=ax.transAxes, ha="center", va="center")

    ax = axes[1]
    for k, label in enumerate(impls):
        vals = []
        for g in groups:
            r = table.get((g, label))
            f = r.get("copy_fraction") if r else None
            vals.append(100.0 * f if f is not None else math.nan)
        off = (k - (len(impls) - 1) / 2) * width
        ax.bar([xi + off for xi in x], vals, width, label=label, color=cmap(k % 10))
    ax.axhline(100.0, color="gray", lw=0.8, ls="--")
    ax.set_ylim(0, max(110.0, ax.get_ylim()[1] * 1.15))
    ax.set_ylabel("% of device copy bandwidth\n(bytes of the mode / median time)")
    ax.legend(fontsize=8, ncol=2)
    ax.set_xticks(x)
    ax.set_xticklabels([f"{w}\n{m} {d}" for w, m, d in groups], rotation=30, ha="right", fontsize=8)

    title = args.title or "specnorm: " + ", ".join(names)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
