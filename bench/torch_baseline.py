#!/usr/bin/env python3
"""PyTorch baseline for sn_bench: times torch.nn.utils.parametrizations.spectral_norm on the same
workloads, the same way, and writes rows in sn_bench's JSON/CSV row format (impl = "torch-eager" or
"torch-graph") so that `sn_bench --torch FILE` and plot.py can join them.

What is timed per call, for every spectrally normalized weight of the workload (modes as sn_bench's
--mode; the modules are in --dtype: float32, bfloat16 or float16 weights, PyTorch's u, v in the same
type):
  train         reading `module.weight` runs the parametrization: power iteration updating _u and
                _v, then sigma = vdot(u, W v) and W / sigma, autograd recording as in training;
  eval          the same in eval mode under torch.no_grad(): sigma and W / sigma;
  scale         PyTorch has no scale-only forward: the parametrization's own pieces without the
                division, i.e. _SpectralNorm._power_method(W_mat, n) then
                sigma = vdot(u.clone(), mv(W_mat, v.clone())) with autograd recording (1-d
                weights: the norm clamped to eps), as the training forward does before W / sigma;
  backward      the autograd backward alone of the training forward, with G = dL/dW_sn of the same
                shape and dtype: torch.autograd.backward([m.weight ...], [G ...]) into
                `original.grad` set to None first (a fresh gradient, like sn_backward's flags 0).
                The forwards of a sample's calls are enqueued first, untimed (outside the CUDA
                events); the events enclose only the backward calls;
  backward-acc  the same with `original.grad` kept, so autograd accumulates into it (grad += ...),
                like SN_BACKWARD_ACCUMULATE.

Timing as sn_bench: CUDA events around each sample of `batch` calls, warm-up calls first, median and
p10/p90, rotation among enough copies of the model (weights, u, v and outputs) to exceed 4 x the L2
size. "torch-graph": the same call captured in a torch.cuda.CUDAGraph (one graph per copy) and
replayed; not for the backward modes (their rows say so in `note`), where the backward alone cannot
be replayed apart from its forward.

The presets come from bench/presets.json (the single source of truth, also read by sn_bench's
build). torch is imported lazily: --help and --list-presets work without it.
"""

import argparse
import datetime
import json
import math
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PRESETS_JSON = os.path.join(HERE, "presets.json")

# Keep these equal to sn_bench.c.
MAX_COPIES = 1024
ROW_BUDGET_US = 300000.0
REPS_MIN_AUTO = 20
BATCH_TARGET_US = 50.0
BATCH_SMALL_US = 20.0
BATCH_MAX = 64
MAX_DIMS = 8
DEFAULT_SHAPES = ["1024x1024", "4096x4096", "4096x16384"]
DEFAULT_PRESETS = ["sngan-cifar10"]
MODES = ["train", "eval", "scale", "backward", "backward-acc"]
MODE_BYTES = {"train": 3, "eval": 3, "scale": 1, "backward": 4, "backward-acc": 5}


def mode_bytes(mode, power_iters):
    """bytes(W) multiples of a call, as sn_bench's: each further power iteration reads W once
    more in train and scale."""
    return MODE_BYTES[mode] + (power_iters - 1 if mode in ("train", "scale") else 0)
DTYPES = ["f32", "bf16", "f16"]
DTYPE_SIZE = {"f32": 4, "bf16": 2, "f16": 2}
BYTES_DEFINITION = (
    "per layer, bytes(W) = numel x size of dtype: train and eval 3 x bytes(W) (one read of W for "
    "the one-pass iteration or the eval sigma + one read of W and one write of W_sn for the "
    "division); scale 1 x bytes(W) (the one read of the iteration); backward 4 x bytes(W) (read G "
    "and W for <G, W>, read G and write dW); backward-acc 5 x bytes(W) (backward + read of the "
    "old dW)")

# Same columns, same order as sn_bench's CSV and JSON rows.
ROW_FIELDS = [
    "workload", "kind", "shape", "layers", "params", "mode", "dtype", "impl", "algo", "device",
    "power_iters", "median_us", "p10_us", "p90_us", "reps", "batch", "copies", "bytes", "gbps",
    "copy_fraction", "floor_us", "launches", "kernel_nodes", "capturable", "speedup_vs_cublas",
    "speedup_vs_torch", "check", "sigma_rel_err", "wsn_rel_err", "note", "path",
]


class UsageError(Exception):
    pass


def load_presets(path=PRESETS_JSON):
    """Returns {name: {"source": str, "layers": [{"name", "shape", "dim"}]}} in file order."""
    with open(path) as f:
        doc = json.load(f)
    out = {}
    for p in doc["presets"]:
        layers = []
        for layer in p["layers"]:
            shape = [int(d) for d in layer["shape"]]
            if not 1 <= len(shape) <= MAX_DIMS or any(d <= 0 for d in shape):
                raise ValueError(f"{path}: {p['name']}/{layer['name']}: bad shape {shape}")
            dim = int(layer.get("dim", 0))
            if dim < 0:
                dim += len(shape)
            layers.append({"name": layer["name"], "shape": shape, "dim": dim})
        if not layers:
            raise ValueError(f"{path}: preset {p['name']} has no layers")
        out[p["name"]] = {"source": p["source"], "layers": layers}
    return out


def shape_str(shape):
    return "x".join(str(d) for d in shape)


def human_count(n):
    if n >= 1e9:
        return f"{n / 1e9:.2f}G"
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}k"
    return f"{n:.0f}"


_SHAPE_RE = re.compile(r"^[0-9]+([xX][0-9]+)*(:-?[0-9]+)?$")


def parse_shape(arg, default_dim):
    """'4096x4096' or '64x3x3x3:1' -> workload dict, named exactly as sn_bench names it."""
    if not _SHAPE_RE.match(arg):
        raise UsageError(f"--shape '{arg}': expected dimensions like 4096x4096 or 64x3x3x3:1")
    dims_part, _, dim_part = arg.partition(":")
    shape = [int(d) for d in re.split("[xX]", dims_part)]
    if len(shape) > MAX_DIMS:
        raise UsageError(f"--shape '{arg}': at most {MAX_DIMS} dimensions")
    if any(d <= 0 or d > (1 << 40) for d in shape):
        raise UsageError(f"--shape '{arg}': dimension must be in 1..2^40")
    dim = int(dim_part) if dim_part else default_dim
    nd = len(shape)
    if not -nd <= dim < nd:
        raise UsageError(f"--shape '{arg}': dim {dim} is outside [{-nd}, {nd}) for a {nd}-d weight")
    if dim < 0:
        dim += nd
    if math.prod(shape) > 4e9:
        raise UsageError(f"--shape '{arg}': more than 4e9 elements")
    name = shape_str(shape) + (f"@dim{dim}" if dim != 0 else "")
    return make_workload(name, "shape", [{"name": name, "shape": shape, "dim": dim}],
                         shape_desc=name + (" (1-d)" if nd == 1 else ""))


def make_workload(name, kind, layers, shape_desc=None):
    params = sum(math.prod(l["shape"]) for l in layers)
    if shape_desc is None:
        shape_desc = f"{len(layers)} layers, {human_count(params)} params"
    return {"name": name, "kind": kind, "layers": layers, "params": params, "shape": shape_desc}


def build_workloads(args, presets):
    shapes, names = args.shape or [], args.preset or []
    if not shapes and not names:
        shapes, names = DEFAULT_SHAPES, DEFAULT_PRESETS
    wls = [parse_shape(s, args.dim) for s in shapes]
    seen = set()
    for n in names:
        for pname, p in presets.items():
            if (n == "all" or n == pname) and pname not in seen:
                seen.add(pname)
                wls.append(make_workload(pname, "preset", p["layers"]))
    return wls


def list_presets(presets):
    """Same tab-separated format as `sn_bench --list-presets`."""
    lines = []
    for pname, p in presets.items():
        for l in p["layers"]:
            lines.append(f"{pname}\t{l['name']}\t{shape_str(l['shape'])}\t{l['dim']}")
    return "\n".join(lines) + "\n"


def make_parser(preset_names):
    ap = argparse.ArgumentParser(
        prog="torch_baseline.py",
        description="Time torch.nn.utils.parametrizations.spectral_norm on sn_bench's workloads "
                    "(eager and CUDA-graph replay) and write sn_bench-format rows.",
        epilog="Rows: impl torch-eager / torch-graph; bytes as in sn_bench (train/eval 3, scale 1, "
               "backward 4, backward-acc 5 x bytes(W)); "
               "gbps, copy_fraction and floor_us use the device-to-device copy bandwidth measured "
               "in the same run (tensor.copy_ of a 1 GiB buffer, read + write bytes). "
               "Default workloads: " + ", ".join(DEFAULT_SHAPES + DEFAULT_PRESETS) + ".")
    w = ap.add_argument_group("workloads")
    w.add_argument("--shape", action="append", metavar="SHAPE",
                   help="weight shape d0xd1x..., optional ':D' dim suffix; repeatable")
    w.add_argument("--dim", type=int, default=0, metavar="D",
                   help="dim of every --shape without a ':D' suffix (default 0)")
    w.add_argument("--preset", action="append", metavar="NAME",
                   choices=["all"] + list(preset_names),
                   help="model preset, repeatable: all, " + ", ".join(preset_names))
    w.add_argument("--list-presets", action="store_true",
                   help="print every preset's layers (same format as sn_bench) and exit")
    w.add_argument("--presets-file", default=PRESETS_JSON, metavar="FILE",
                   help="preset definitions (default: presets.json beside this script)")
    t = ap.add_argument_group("what and how to time")
    t.add_argument("--mode", default="all", metavar="M[,M...]",
                   help="train, eval, scale, backward, backward-acc or all (default all); "
                        "comma-separated list allowed")
    t.add_argument("--dtype", default="f32", metavar="T[,T...]",
                   help="f32, bf16, f16 or all (default f32): dtype of the modules' weights")
    t.add_argument("--power-iters", type=int, default=1, metavar="N",
                   help="n_power_iterations (default 1)")
    t.add_argument("--reps", type=int, default=None, metavar="N",
                   help="samples per row (default 200, fewer for rows whose 200 samples would take "
                        f"more than {ROW_BUDGET_US / 1e6:.1f} s, at least {REPS_MIN_AUTO})")
    t.add_argument("--warmup", type=int, default=20, metavar="N",
                   help="untimed calls before the samples (default 20)")
    t.add_argument("--batch", type=int, default=0, metavar="R",
                   help="calls per sample (default auto, as sn_bench)")
    t.add_argument("--no-rotate", action="store_true", help="use one copy of the model")
    t.add_argument("--no-graph", action="store_true", help="skip the torch-graph rows")
    t.add_argument("--no-launch-count", action="store_true",
                   help="do not count kernels per call with torch.profiler")
    t.add_argument("--device", type=int, default=0, metavar="N", help="CUDA device (default 0)")
    t.add_argument("--seed", type=int, default=0, metavar="S")
    o = ap.add_argument_group("output")
    o.add_argument("--json", metavar="FILE", help="write results as JSON (sn_bench's format)")
    o.add_argument("--csv", metavar="FILE", help="write rows as CSV (sn_bench's columns)")
    return ap


def parse_list(opt, value, names):
    out = []
    for item in value.split(","):
        if item == "all":
            out += [n for n in names if n not in out]
        elif item in names:
            if item not in out:
                out.append(item)
        else:
            raise UsageError(f"{opt}: '{item}' is not " + ", ".join(names) + " or all")
    return [n for n in names if n in out]  # canonical order


def check_args(args):
    args.modes = parse_list("--mode", args.mode, MODES)
    args.dtypes = parse_list("--dtype", args.dtype, DTYPES)
    if args.power_iters < 1:
        raise UsageError("--power-iters must be >= 1")
    args.reps_given = args.reps is not None
    if args.reps is None:
        args.reps = 200
    if args.reps < 1:
        raise UsageError("--reps must be >= 1")
    if args.warmup < 0:
        raise UsageError("--warmup must be >= 0")
    if args.batch < 0:
        raise UsageError("--batch must be >= 1")
    if not -MAX_DIMS <= args.dim < MAX_DIMS:
        raise UsageError(f"--dim must be in [{-MAX_DIMS}, {MAX_DIMS})")


def git_commit():
    try:
        c = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                           text=True, timeout=10)
        if c.returncode == 0 and c.stdout.strip():
            commit = c.stdout.strip()
            d = subprocess.run(["git", "diff", "--quiet", "HEAD", "--"], cwd=HERE, timeout=10)
            return commit + ("-dirty" if d.returncode != 0 else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def quantile(sorted_vals, q):
    n = len(sorted_vals)
    pos = q * (n - 1)
    i = int(math.floor(pos))
    if i >= n - 1:
        return sorted_vals[-1]
    f = pos - i
    return sorted_vals[i] * (1 - f) + sorted_vals[i + 1] * f


def driver_version():
    try:
        import ctypes
        lib = ctypes.CDLL("libcuda.so.1")
        v = ctypes.c_int(0)
        if lib.cuDriverGetVersion(ctypes.byref(v)) == 0:
            return v.value
    except OSError:
        pass
    return None


def runtime_version(torch):
    v = torch.version.cuda
    if not v:
        return None
    parts = [int(x) for x in v.split(".")[:2]] + [0]
    return parts[0] * 1000 + parts[1] * 10


# ---- the torch part (imported lazily) ------------------------------------------------------------

class Bench:
    def __init__(self, args):
        import torch  # noqa: deferred so that --help works without torch
        self.torch = torch
        if not torch.cuda.is_available():
            raise RuntimeError("torch_baseline.py needs a CUDA device (torch.cuda.is_available() is "
                               "False); the CPU fallback is sn_bench's, not this script's")
        self.args = args
        self.dev = torch.device("cuda", args.device)
        torch.cuda.set_device(self.dev)
        self.props = torch.cuda.get_device_properties(self.dev)
        self.l2 = int(getattr(self.props, "L2_cache_size", 0) or 50 * 2**20)
        self.copy_gbps, self.copy_bytes = self.copy_bandwidth()

    def copy_bandwidth(self):
        torch = self.torch
        free, _ = torch.cuda.mem_get_info(self.dev)
        nbytes = 1 << 30
        while nbytes > (16 << 20) and 2 * nbytes > free // 2:
            nbytes //= 2
        a = torch.ones(nbytes // 4, device=self.dev)
        b = torch.empty_like(a)
        for _ in range(3):
            b.copy_(a)
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(21)]
        ev[0].record()
        for i in range(20):
            b.copy_(a)
            ev[i + 1].record()
        torch.cuda.synchronize()
        t = sorted(ev[i].elapsed_time(ev[i + 1]) * 1e-3 for i in range(20))
        del a, b
        torch.cuda.empty_cache()
        return 2.0 * nbytes / quantile(t, 0.5) / 1e9, nbytes

    def torch_dtype(self, dtype):
        torch = self.torch
        return {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[dtype]

    def make_model(self, layers, seed, dtype="f32"):
        """One 'model': a module per layer, each with a spectral_norm-parametrized weight of
        `dtype` (drawn in float32 and rounded, as sn_bench does)."""
        torch = self.torch
        from torch.nn.utils.parametrizations import spectral_norm
        gen = torch.Generator(device="cpu").manual_seed(seed)
        mods = []
        for i, l in enumerate(layers):
            m = torch.nn.Module()
            w = torch.rand(l["shape"], generator=gen) * 2 - 1  # uniform [-1, 1) as sn_bench
            w = w.to(self.dev, self.torch_dtype(dtype))
            m.register_parameter("weight", torch.nn.Parameter(w))
            torch.manual_seed(seed * 1000003 + i)  # spectral_norm draws u, v from the global RNG
            spectral_norm(m, name="weight", n_power_iterations=self.args.power_iters, eps=1e-12,
                          dim=l["dim"])
            mods.append(m)
        return mods

    @staticmethod
    def call(mods):
        return [m.weight for m in mods]

    def call_scale(self, mods):
        """The training forward of each parametrization without `weight / sigma` (see the module
        docstring): power iteration and sigma, autograd recording."""
        torch = self.torch
        out = []
        for m in mods:
            p = m.parametrizations.weight
            sn, w = p[0], p.original
            if w.ndim == 1:
                out.append(torch.linalg.vector_norm(w).clamp_min(sn.eps))
                continue
            wm = sn._reshape_weight_to_matrix(w)
            sn._power_method(wm, sn.n_power_iterations)
            u = sn._u.clone(memory_format=torch.contiguous_format)
            v = sn._v.clone(memory_format=torch.contiguous_format)
            out.append(torch.vdot(u, torch.mv(wm, v)))
        return out

    def copies_for(self, wl, dtype="f32", backward=False):
        if self.args.no_rotate:
            return 1, ""
        # W + W_sn (+ G and the gradient for the backward modes), in the dtype.
        per_copy = (4.0 if backward else 2.0) * DTYPE_SIZE[dtype] * wl["params"]
        want = math.ceil(4.0 * self.l2 / per_copy)
        note = ""
        copies = max(1, min(MAX_COPIES, want))
        if want > MAX_COPIES:
            note = f"rotation capped at {MAX_COPIES} copies (< 4x L2)"
        free, _ = self.torch.cuda.mem_get_info(self.dev)
        # W, W_sn and the autograd temporaries of a copy: allow 3 x per_copy each.
        while copies > 1 and 3 * per_copy * copies > 0.7 * free:
            copies -= 1
        if copies > 1 and per_copy * copies < 4.0 * self.l2 and not note:
            note = f"rotation limited by memory to {copies} copies"
        return copies, note

    def time_calls(self, fn, copies, prepare=None):
        """fn(c) runs one call on copy c. With `prepare`, each call is fn(c, prepare(c)) and the
        prepare calls of a sample are all enqueued before the sample's first CUDA event (untimed).
        Returns (sorted samples in us, batch). Without --reps, rows whose 200 samples would take
        more than ROW_BUDGET_US get fewer (at least REPS_MIN_AUTO), as sn_bench does."""
        torch = self.torch
        a = self.args
        k = 0

        def run_many(n, start_event=None):
            nonlocal k
            cs = [(k + i) % copies for i in range(n)]
            k += n
            states = [prepare(c) for c in cs] if prepare else None
            if start_event is not None:
                start_event.record()
            for i, c in enumerate(cs):
                if prepare:
                    fn(c, states[i])
                else:
                    fn(c)

        for _ in range(a.warmup):
            run_many(1)
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        probe = 10
        if prepare:
            est = 0.0
            for _ in range(probe):
                run_many(1, e0)
                e1.record()
                e1.synchronize()
                est += e0.elapsed_time(e1) * 1000.0 / probe
        else:
            run_many(probe, e0)
            e1.record()
            e1.synchronize()
            est = e0.elapsed_time(e1) * 1000.0 / probe
        batch = a.batch
        if batch <= 0:
            batch = 1
            if est < BATCH_SMALL_US:
                batch = min(BATCH_MAX, math.ceil(BATCH_TARGET_US / max(est, 0.1)))
        if prepare:
            # one prepared forward per call of a sample: no copy twice in one sample (a second
            # backward of the same copy would accumulate into the first one's fresh gradient)
            batch = min(batch, copies)
        reps = a.reps
        if not a.reps_given and est > 0 and reps * batch * est > ROW_BUDGET_US:
            reps = max(REPS_MIN_AUTO, int(ROW_BUDGET_US / (batch * est)))
        if prepare:
            starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
            ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
            for i in range(reps):
                run_many(batch, starts[i])
                ends[i].record()
            ends[-1].synchronize()
            samples = [starts[i].elapsed_time(ends[i]) * 1000.0 / batch for i in range(reps)]
        else:
            ev = [torch.cuda.Event(enable_timing=True) for _ in range(reps + 1)]
            ev[0].record()
            for i in range(reps):
                run_many(batch)
                ev[i + 1].record()
            ev[-1].synchronize()
            samples = [ev[i].elapsed_time(ev[i + 1]) * 1000.0 / batch for i in range(reps)]
        return sorted(samples), batch

    def count_launches(self, fn):
        """CUDA activities (kernels, memcpys, memsets) of one eager call, via torch.profiler."""
        if self.args.no_launch_count:
            return None, None
        try:
            from torch.profiler import ProfilerActivity, profile
            torch = self.torch
            import warnings
            torch.cuda.synchronize()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "Profiler clears events at the end of each cycle"
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    fn(0)
                    torch.cuda.synchronize()
                events = list(prof.events())
            total = kernels = 0
            for e in events:
                if str(getattr(e, "device_type", "")).endswith("CUDA"):
                    total += 1
                    name = e.name.lower()
                    if not (name.startswith("memcpy") or name.startswith("memset")
                            or "memcpy" in name or "memset" in name):
                        kernels += 1
            return (total, kernels) if total else (None, None)
        except Exception as exc:  # profiler/CUPTI trouble must not stop the benchmark
            print(f"  (launch count unavailable: {exc})", file=sys.stderr)
            return None, None

    def row(self, wl, mode, dtype, impl, samples, batch, copies, launches, kernels, capturable,
            note):
        med = quantile(samples, 0.5)
        nbytes = float(mode_bytes(mode, self.args.power_iters) * DTYPE_SIZE[dtype] * wl["params"])
        gbps = nbytes / (med * 1e-6) / 1e9
        return {
            "workload": wl["name"], "kind": wl["kind"], "shape": wl["shape"],
            "layers": len(wl["layers"]), "params": wl["params"], "mode": mode, "dtype": dtype,
            "impl": impl,
            "algo": "-", "device": "cuda", "power_iters": self.args.power_iters,
            "median_us": med, "p10_us": quantile(samples, 0.1), "p90_us": quantile(samples, 0.9),
            "reps": len(samples), "batch": batch, "copies": copies, "bytes": nbytes, "gbps": gbps,
            "copy_fraction": gbps / self.copy_gbps,
            "floor_us": nbytes / (self.copy_gbps * 1e9) * 1e6,
            "launches": launches, "kernel_nodes": kernels, "capturable": capturable,
            "speedup_vs_cublas": None, "speedup_vs_torch": None, "check": "n/a",
            "sigma_rel_err": None, "wsn_rel_err": None, "note": note, "path": "-",
        }

    def count_launches_split(self, prepare, fn):
        """Like count_launches, for the backward modes: only fn(0, prepare(0)) is profiled."""
        if self.args.no_launch_count:
            return None, None
        state = prepare(0)
        return self.count_launches(lambda c: fn(c, state))

    def run_workload(self, wl):
        rows = []
        for dtype in self.args.dtypes:
            rows += self.run_workload_dtype(wl, dtype)
        return rows

    def run_workload_dtype(self, wl, dtype):
        torch = self.torch
        a = self.args
        backward_modes = [m for m in a.modes if m.startswith("backward")]
        copies, note = self.copies_for(wl, dtype, bool(backward_modes))
        print(f"  {wl['name']} ({dtype}): {len(wl['layers'])} layer(s), "
              f"{DTYPE_SIZE[dtype] * wl['params'] / 1e6:.1f} MB of weights, {copies} rotation copies",
              file=sys.stderr)
        models = [self.make_model(wl["layers"], a.seed, dtype) for _ in range(copies)]
        grads = None
        if backward_modes:
            gen = torch.Generator(device="cpu").manual_seed(a.seed + 0x5EED)
            g0 = [(torch.rand(l["shape"], generator=gen) * 2 - 1).to(self.dev, self.torch_dtype(dtype))
                  for l in wl["layers"]]
            grads = [[g.clone() for g in g0] for _ in range(copies)]
        rows = []
        for mode in a.modes:
            training = mode != "eval"
            for mods in models:
                for m in mods:
                    m.train(training)
            prepare = None
            row_note = note
            if mode == "train":
                def fn(c):
                    return self.call(models[c])
            elif mode == "eval":
                def fn(c):
                    with torch.no_grad():
                        return self.call(models[c])
            elif mode == "scale":
                def fn(c):
                    return self.call_scale(models[c])
                row_note = "; ".join(x for x in [note, "power iteration + sigma of the "
                                                 "parametrization, without W / sigma"] if x)
            else:
                keep = mode == "backward-acc"

                def prepare(c, keep=keep):
                    mods = models[c]
                    if not keep:
                        for m in mods:
                            m.parametrizations.weight.original.grad = None
                    return self.call(mods)  # the training forward, untimed

                def fn(c, outs):
                    torch.autograd.backward(outs, grads[c])
                row_note = "; ".join(x for x in [note, "autograd backward alone (forward untimed)"
                                                 + ("; grad accumulated" if keep else
                                                    "; grad set to None first")] if x)
            if prepare is None:
                launches, kernels = self.count_launches(fn)
            else:
                launches, kernels = self.count_launches_split(prepare, fn)
            samples, batch = self.time_calls(fn, copies, prepare)
            rows.append(self.row(wl, mode, dtype, "torch-eager", samples, batch, copies, launches,
                                 kernels, None, row_note))
            if a.no_graph:
                continue
            if prepare is not None:
                rows[-1]["note"] = row_note + "; no torch-graph row for the backward modes"
                continue
            try:
                graphs, outs = [], []
                pool = None
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    for c in range(copies):
                        for _ in range(3):
                            fn(c)
                torch.cuda.current_stream().wait_stream(side)
                for c in range(copies):
                    g = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(g, pool=pool):
                        outs.append(fn(c))
                    if pool is None:
                        pool = g.pool()
                    graphs.append(g)
                # A graph's first replay uploads it; do that for every copy here, untimed, as
                # sn_bench uploads its graphs when it instantiates them (the warm-up below runs
                # only the first copies).
                for g in graphs:
                    g.replay()
                torch.cuda.synchronize()
                gs, gbatch = self.time_calls(lambda c: graphs[c].replay(), copies)
                rows.append(self.row(wl, mode, dtype, "torch-graph", gs, gbatch, copies, launches,
                                     kernels, True, row_note))
                del graphs, outs
            except Exception as exc:  # capture may fail for some torch versions / modes
                msg = f"not capturable: {type(exc).__name__}: {exc}"[:180]
                print(f"  warning: {wl['name']} {mode} {dtype}: torch-graph failed: {msg}",
                      file=sys.stderr)
                rows[-1]["capturable"] = False
                rows[-1]["note"] = (row_note + "; " if row_note else "") + msg
                torch.cuda.synchronize()
        del models, grads
        torch.cuda.empty_cache()
        return rows

    def header(self):
        torch = self.torch
        p = self.props
        return {
            "tool": "torch_baseline",
            "schema": 2,
            "commit": git_commit(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "torch_version": torch.__version__,
            "device": {"kind": "cuda", "name": p.name, "cc": f"{p.major}.{p.minor}",
                       "sm_count": p.multi_processor_count, "l2_bytes": self.l2,
                       "memory_bytes": p.total_memory, "driver_version": driver_version(),
                       "runtime_version": runtime_version(torch)},
            "copy_bandwidth_gbps": self.copy_gbps,
            "copy_bytes": self.copy_bytes,
            "settings": {"reps": self.args.reps, "warmup": self.args.warmup,
                         "batch": self.args.batch or -1, "rotate": not self.args.no_rotate,
                         "power_iters": self.args.power_iters, "seed": self.args.seed,
                         "reps_auto_capped": not self.args.reps_given,
                         "modes": self.args.modes, "dtypes": self.args.dtypes},
            "bytes_definition": BYTES_DEFINITION,
        }


def fmt(v, f):
    return f.format(v) if isinstance(v, (int, float)) and v is not None and math.isfinite(v) else "-"


def print_table(rows):
    print(f"\n{'workload':16} {'shape':24} {'mode':12} {'dtype':5} {'impl':12} "
          f"{'us median [p10-p90]':>30} "
          f"{'GB/s':>8} {'%copy':>6} {'floor us':>9} {'lnch':>5} {'batch':>5}")
    for r in rows:
        t = f"{r['median_us']:.2f} [{r['p10_us']:.2f}-{r['p90_us']:.2f}]"
        print(f"{r['workload']:16} {r['shape']:24} {r['mode']:12} {r['dtype']:5} {r['impl']:12} {t:>30} "
              f"{fmt(r['gbps'], '{:.1f}'):>8} {fmt(r['copy_fraction'] * 100, '{:.1f}'):>6} "
              f"{fmt(r['floor_us'], '{:.2f}'):>9} {fmt(r['launches'], '{:d}'):>5} {r['batch']:>5}")


def write_csv(path, rows):
    import csv
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=ROW_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else
                            ("true" if r[k] is True else "false" if r[k] is False else r[k]))
                        for k in ROW_FIELDS})


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    # The preset names are needed for --help; a broken presets file is reported, not hidden.
    presets_file = PRESETS_JSON
    for i, x in enumerate(argv):
        if x == "--presets-file" and i + 1 < len(argv):
            presets_file = argv[i + 1]
        elif x.startswith("--presets-file="):
            presets_file = x.split("=", 1)[1]
    try:
        presets = load_presets(presets_file)
    except (OSError, ValueError, KeyError) as exc:
        print(f"torch_baseline.py: cannot read presets: {exc}", file=sys.stderr)
        return 2
    ap = make_parser(list(presets))
    args = ap.parse_args(argv)  # exits 2 on bad options
    try:
        check_args(args)
        if args.list_presets:
            sys.stdout.write(list_presets(presets))
            return 0
        wls = build_workloads(args, presets)
    except UsageError as exc:
        ap.print_usage(sys.stderr)
        print(f"torch_baseline.py: error: {exc}", file=sys.stderr)
        return 2

    try:
        bench = Bench(args)
    except ImportError as exc:
        print(f"torch_baseline.py: PyTorch is not installed ({exc})", file=sys.stderr)
        return 1
    except RuntimeError as exc:
        print(f"torch_baseline.py: {exc}", file=sys.stderr)
        return 1
    import torch
    print(f"torch {torch.__version__}, {bench.props.name}, copy bandwidth {bench.copy_gbps:.1f} GB/s")
    rows = []
    for i, wl in enumerate(wls):
        print(f"[{i + 1}/{len(wls)}] {wl['name']}", file=sys.stderr)
        rows += bench.run_workload(wl)
    print_table(rows)
    if args.json:
        doc = bench.header()
        doc["rows"] = rows
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1, allow_nan=False)
    if args.csv:
        write_csv(args.csv, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
