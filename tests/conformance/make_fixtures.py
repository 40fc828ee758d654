#!/usr/bin/env python3
"""Writes the conformance fixtures of tests/test_conformance.cpp: what other frameworks' own
spectral-normalization code computes, step by step, on seeded weights, for specnorm to reproduce.

For each framework that imports here (each is optional; what does not import is skipped with a
line on stderr), one file FRAMEWORK.txt in the output folder:
  keras  keras.layers.SpectralNormalization (Keras 3, on the JAX backend; TensorFlow's tf.keras
         since TF 2.16 is this Keras): the kernel is replaced in place by W / sigma on every
         training call, x / max(||x||, 1e-7) (keras.ops.normalize with backend.epsilon());
  flax   flax.linen.SpectralNorm: x / sqrt(||x||^2 + eps), eps = 1e-12, W_sn returned, W kept;
  haiku  haiku.SpectralNorm: x / sqrt(||x||^2 + eps), eps = 1e-4 (Haiku's default);
  torch  torch.nn.utils.parametrizations.spectral_norm (u-first, dim 0, u and v kept, eval
         sigma = u^T M v) and the legacy torch.nn.utils.spectral_norm (v-first).
Each of the first three reshapes the weight to (-1, last axis) and keeps only u (the last axis'
vector): in specnorm terms dim = -1, SN_ORDER_V_FIRST, no warm-up.

Every case: a seeded weight in the framework's own layout, a seeded start vector u0 (v0 for
torch) put into the framework's state, then `steps` training calls; between two calls the weight
takes a seeded step (W += 0.05 * noise, as an optimizer would move it), and the file records,
for each call, the weight it was given and the framework's u (v), sigma and normalized weight
after it. (torch also records an eval call at the end.) Values are written with 9 significant
digits, which float32 round-trips exactly.

Usage: make_fixtures.py [--out DIR] [--only keras,flax,haiku,torch]
The fixtures in tests/conformance/ were made with the versions named in their "made-by" lines
(pip: jax[cpu], flax, dm-haiku, keras, torch; KERAS_BACKEND=jax is set here), on the CPU.
"""

import argparse
import os
import sys

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# (name, shape in the framework's layout: output axis last for keras/flax/haiku, first for torch,
#  power iterations per call)
SHAPES = [
    ("dense_7x5", (7, 5), 1),
    ("conv_3x3x4x6", (3, 3, 4, 6), 1),
    ("one_output_17x1", (17, 1), 1),
    ("one_input_1x9", (1, 9), 1),
    ("wide_3x40", (3, 40), 1),
    ("dense_6x11_two_iterations", (6, 11), 2),
]
STEPS = 3


def fmt(values):
    a = np.asarray(values, dtype=np.float32).ravel()
    return f"{a.size} " + " ".join(f"{x:.9g}" for x in a.tolist())


class Writer:
    def __init__(self, path, header):
        self.f = open(path, "w")
        self.f.write("specnorm-conformance 1\n")
        self.f.write(f"made-by {header}\n")

    def case(self, name, shape, dim, order, eps, eps_mode, iters, in_place):
        self.f.write(f"case {name}\n")
        self.f.write(f"shape {len(shape)} " + " ".join(str(s) for s in shape) + "\n")
        self.f.write(f"dim {dim}\norder {order}\neps {eps:.9g}\neps_mode {eps_mode}\n")
        self.f.write(f"iters {iters}\nin_place {in_place}\n")

    def vec(self, key, values):
        self.f.write(f"{key} {fmt(values)}\n")

    def step(self, mode, W, u, v, sigma, W_sn):
        self.f.write(f"step {mode}\n")
        self.vec("W", W)
        self.vec("u", u)
        if v is not None:
            self.vec("v", v)
        if sigma is not None:
            self.vec("sigma", [sigma])
        self.vec("W_sn", W_sn)

    def end_case(self):
        self.f.write("end-case\n")

    def close(self):
        self.f.write("end\n")
        self.f.close()


def seeded(case_index, salt):
    return np.random.default_rng(1000 * case_index + salt)


def start(k, shape, out_axis):
    rng = seeded(k, 1)
    W = rng.standard_normal(shape).astype(np.float32) * 0.5
    u0 = rng.standard_normal(shape[out_axis]).astype(np.float32)
    return W, u0


def nudge(k, step, W):
    return (W + 0.05 * seeded(k, 10 + step).standard_normal(W.shape)).astype(np.float32)


def make_keras(out_dir):
    import jax
    import keras

    w = Writer(os.path.join(out_dir, "keras.txt"), f"keras {keras.__version__} jax {jax.__version__}")
    for k, (name, shape, iters) in enumerate(SHAPES):
        W, u0 = start(k, shape, -1)
        if len(shape) == 2:
            inner = keras.layers.Dense(shape[1], use_bias=False)
            x = np.zeros((1, shape[0]), np.float32)
        else:
            inner = keras.layers.Conv2D(shape[3], shape[:2], use_bias=False)
            x = np.zeros((1, shape[0], shape[1], shape[2]), np.float32)
        layer = keras.layers.SpectralNormalization(inner, power_iterations=iters)
        layer.build(x.shape)
        layer.vector_u.assign(u0[None, :])
        w.case(name, shape, -1, "v_first", keras.config.epsilon(), "clamp_norm", iters, 1)
        w.vec("u0", u0)
        for s in range(STEPS):
            if s:
                W = nudge(k, s, W)
            layer.kernel.assign(W)
            layer(x, training=True)
            W_sn = np.asarray(layer.kernel.value)
            u = np.asarray(layer.vector_u.value)[0]
            w.step("train", W, u, None, None, W_sn)  # Keras keeps no sigma
            W = W_sn  # the kernel was replaced in place
        w.end_case()
    w.close()


def make_flax(out_dir):
    import flax
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    class Holder(nn.Module):
        shape: tuple

        @nn.compact
        def __call__(self):
            return self.param("kernel", nn.initializers.zeros, self.shape)

    w = Writer(os.path.join(out_dir, "flax.txt"), f"flax {flax.__version__} jax {jax.__version__}")
    for k, (name, shape, iters) in enumerate(SHAPES):
        W, u0 = start(k, shape, -1)
        model = nn.SpectralNorm(Holder(shape, name="holder"), n_steps=iters)  # epsilon 1e-12
        variables = model.init(jax.random.PRNGKey(0), update_stats=False)
        stats = variables["batch_stats"]
        w.case(name, shape, -1, "v_first", model.epsilon, "add_squared", model.n_steps, 0)
        w.vec("u0", u0)
        stats = set_leaf(stats, "/u", jnp.asarray(u0[None, :]))
        for s in range(STEPS):
            if s:
                W = nudge(k, s, W)
            params = set_leaf(variables["params"], "/kernel", jnp.asarray(W))
            W_sn, upd = model.apply({"params": params, "batch_stats": stats}, update_stats=True,
                                    mutable=["batch_stats"])
            stats = upd["batch_stats"]
            w.step("train", W, np.asarray(get_leaf(stats, "/u"))[0], None,
                   float(get_leaf(stats, "/sigma")), np.asarray(W_sn))
        w.end_case()
    w.close()


def leaves(tree, prefix=""):
    for key, val in tree.items():
        if isinstance(val, dict) or hasattr(val, "items"):
            yield from leaves(val, prefix + "/" + key)
        else:
            yield prefix + "/" + key, val


def get_leaf(tree, suffix):
    (val,) = [v for p, v in leaves(tree) if p.endswith(suffix)]
    return val


def set_leaf(tree, suffix, value):
    out = {}
    for key, val in tree.items():
        if isinstance(val, dict) or hasattr(val, "items"):
            out[key] = set_leaf(val, suffix, value)
        else:
            out[key] = value if ("/" + key).endswith(suffix) else val
    return out


def make_haiku(out_dir):
    import haiku as hk
    import jax
    import jax.numpy as jnp

    w = Writer(os.path.join(out_dir, "haiku.txt"), f"haiku {hk.__version__} jax {jax.__version__}")
    eps = hk.SpectralNorm.__init__.__defaults__[0]  # Haiku's default eps
    for k, (name, shape, iters) in enumerate(SHAPES):
        W, u0 = start(k, shape, -1)
        fn = hk.transform_with_state(lambda x, n=iters: hk.SpectralNorm(n_steps=n)(x, update_stats=True))
        params, state = fn.init(jax.random.PRNGKey(0), jnp.asarray(W))
        state = set_leaf(state, "/u0", jnp.asarray(u0[None, :]))
        w.case(name, shape, -1, "v_first", eps, "add_squared", iters, 0)
        w.vec("u0", u0)
        for s in range(STEPS):
            if s:
                W = nudge(k, s, W)
            W_sn, state = fn.apply(params, state, None, jnp.asarray(W))
            w.step("train", W, np.asarray(get_leaf(state, "/u0"))[0], None,
                   float(get_leaf(state, "/sigma")), np.asarray(W_sn))
        w.end_case()
    w.close()


def make_torch(out_dir):
    import torch
    from torch.nn.utils import parametrizations

    w = Writer(os.path.join(out_dir, "torch.txt"), f"torch {torch.__version__}")
    for k, (name, shape, iters) in enumerate(SHAPES):
        tshape = tuple(reversed(shape)) if len(shape) == 2 else (shape[3], shape[2], shape[0], shape[1])
        for legacy in (False, True):
            rng = seeded(k, 2 + legacy)
            W = (rng.standard_normal(tshape) * 0.5).astype(np.float32)
            u0 = rng.standard_normal(tshape[0]).astype(np.float32)
            v0 = rng.standard_normal(int(np.prod(tshape[1:]))).astype(np.float32)
            u0 /= np.linalg.norm(u0)
            v0 /= np.linalg.norm(v0)
            m = torch.nn.Module()
            m.weight = torch.nn.Parameter(torch.from_numpy(W.copy()))
            if legacy:
                torch.nn.utils.spectral_norm(m, n_power_iterations=iters, dim=0)
                orig, U, V = m.weight_orig, m.weight_u, m.weight_v
                sn = m._forward_pre_hooks
            else:
                parametrizations.spectral_norm(m, n_power_iterations=iters, dim=0)
                p = m.parametrizations.weight
                orig, U, V = p.original, p[0]._u, p[0]._v
            with torch.no_grad():
                U.copy_(torch.from_numpy(u0))
                V.copy_(torch.from_numpy(v0))
            w.case(name + ("_legacy" if legacy else ""), tshape, 0,
                   "v_first" if legacy else "u_first", 1e-12, "clamp_norm", iters, 0)
            w.vec("u0", u0)
            w.vec("v0", v0)
            for s in range(STEPS + 1):
                train = s < STEPS
                if s:
                    W = nudge(k, s, W)
                with torch.no_grad():
                    orig.copy_(torch.from_numpy(W))
                m.train(train)
                with torch.no_grad():
                    if legacy:
                        for hook in list(sn.values()):
                            hook(m, None)
                        W_sn = m.weight
                    else:
                        W_sn = m.weight
                    M = torch.from_numpy(W).reshape(tshape[0], -1).double()
                    sigma = float(U.double() @ (M @ V.double()))
                w.step("train" if train else "eval", W, U.numpy().copy(), V.numpy().copy(), sigma,
                       W_sn.detach().numpy())
            w.end_case()
    w.close()


MAKERS = {"keras": make_keras, "flax": make_flax, "haiku": make_haiku, "torch": make_torch}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--only", default=",".join(MAKERS))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    made = 0
    for name in args.only.split(","):
        try:
            MAKERS[name](args.out)
            made += 1
            print(f"{name}: {os.path.join(args.out, name + '.txt')}")
        except ImportError as e:
            print(f"{name}: skipped ({e})", file=sys.stderr)
    return 0 if made else 1


if __name__ == "__main__":
    sys.exit(main())
