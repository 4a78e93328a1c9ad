"""Benchmark of the S5 layer and model on this CPU.

Writes benchmarks/results/deterministic_s5.json and .md:
1. S5 layer forward and forward+backward time (parallel associative scan and sequential scan
   through ``zoo.scans.linear_recurrence``) vs a hand-written sequential ``lax.scan`` recurrence;
2. the 8x8 scikit-learn digits read as pixel sequences (L = 64): test accuracy and training time;
3. an irregularly sampled regression task trained with the true time steps vs uniform ones.

Run: .venv/bin/python benchmarks/deterministic_s5.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from zoo.deterministic import s5

OUT = pathlib.Path(__file__).parent / "results"


def timeit(fn, *args, repeat=5):
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return best


def handwritten_layer(params, u):
    """The same S5 layer (ZOH, conjugate symmetric) written directly as a lax.scan."""
    Lam = params["Lambda"][:, 0] + 1j * params["Lambda"][:, 1]
    B = params["B"][..., 0] + 1j * params["B"][..., 1]
    C = params["C"][0, ..., 0] + 1j * params["C"][0, ..., 1]
    delta = jnp.exp(params["log_step"])
    Lbar = jnp.exp(Lam * delta)
    Bbar = ((Lbar - 1) / Lam)[:, None] * B

    def step(x, uk):
        x = Lbar * x + Bbar @ uk
        return x, 2 * (C @ x).real + params["D"] * uk

    return jax.lax.scan(step, jnp.zeros(Lam.shape, Lam.dtype), u)[1]


def layer_timing(batch, L, H, P):
    rows = []
    u = jax.random.normal(jax.random.PRNGKey(0), (batch, L, H))
    base = s5.S5Layer(H=H, P=P)
    params = base.init(jax.random.PRNGKey(1))
    variants = {
        "handwritten lax.scan": handwritten_layer,
        "S5Layer parallel=False": s5.S5Layer(H=H, P=P, parallel=False).__call__,
        "S5Layer parallel=True": base.__call__,
    }
    ref = jax.jit(jax.vmap(handwritten_layer, (None, 0)))(params, u)
    t_fwd_ref = t_bwd_ref = None
    for name, fn in variants.items():
        fwd = jax.jit(jax.vmap(fn, (None, 0)))
        bwd = jax.jit(jax.grad(lambda p, u, fn=fn: jnp.sum(jax.vmap(fn, (None, 0))(p, u) ** 2)))
        err = float(jnp.max(jnp.abs(fwd(params, u) - ref)))
        tf, tb = timeit(fwd, params, u), timeit(bwd, params, u)
        if t_fwd_ref is None:
            t_fwd_ref, t_bwd_ref = tf, tb
        row = dict(variant=name, batch=batch, L=L, H=H, P=P, forward_s=tf, fwd_bwd_s=tb,
                   forward_ratio=tf / t_fwd_ref, fwd_bwd_ratio=tb / t_bwd_ref, max_abs_diff=err)
        rows.append(row)
        print(row, flush=True)
    return rows


def digits_run(epochs):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    X = (d.images.reshape(-1, 64, 1) / 16.0).astype(np.float32)
    Xtr, Xte, ytr, yte = train_test_split(X, d.target, test_size=0.2, random_state=0, stratify=d.target)
    model = s5.S5Model(input_dim=1, output_dim=10, H=64, P=64, n_layers=3, bidirectional=True,
                       activation="half_glu", dropout=0.1, pool="mean", parallel=False)
    t0 = time.perf_counter()
    params, hist = s5.fit(model, model.init(jax.random.PRNGKey(0)), jnp.asarray(Xtr), jnp.asarray(ytr),
                          epochs=epochs, batch_size=32, lr=4e-3, ssm_lr=2e-3, key=jax.random.PRNGKey(1))
    train_time = time.perf_counter() - t0
    pred = np.asarray(jnp.argmax(jax.jit(model)(params, jnp.asarray(Xte)), -1))
    acc = float(np.mean(pred == yte))
    res = dict(model="H=64 P=64 3 layers bidirectional half-GLU dropout 0.1", epochs=epochs,
               n_train=len(ytr), n_test=len(yte), test_accuracy=acc, train_time_s=train_time,
               final_train_loss=hist[-1])
    print(res, flush=True)
    return res


def irregular_run(epochs):
    u, dt, y = s5.make_irregular_task(jax.random.PRNGKey(0), 600, 100)
    ut, dtt, yt = s5.make_irregular_task(jax.random.PRNGKey(1), 200, 100)
    model = s5.S5Model(input_dim=1, output_dim=1, H=16, P=16, n_layers=1, pool=None, activation="gelu",
                       dt_min=0.1, dt_max=3.0)
    out = {"target_variance": float(jnp.var(yt))}
    for name, d, dtest in (("true time steps", dt, dtt), ("uniform steps", None, None)):
        t0 = time.perf_counter()
        params, _ = s5.fit(model, model.init(jax.random.PRNGKey(2)), u, y, dt=d, loss="mse", epochs=epochs,
                           batch_size=32, lr=5e-3, ssm_lr=5e-3, key=jax.random.PRNGKey(3))
        out[name] = dict(test_mse=float(jnp.mean((model(params, ut, dtest) - yt) ** 2)),
                         train_time_s=time.perf_counter() - t0)
    print(out, flush=True)
    return out


def markdown(r):
    out = ["# Deterministic module: S5", "",
           f"CPU: {r['machine']}, JAX {jax.__version__}; shared 2-core CPU, no GPU. Ratios are against the "
           "hand-written sequential lax.scan (> 1 = slower).", "",
           "## 1. Layer forward / forward+backward", "",
           "| variant | batch | L | H | P | forward (ms) | ratio | fwd+bwd (ms) | ratio | max abs diff |",
           "|" + "---|" * 10]
    for x in r["layer"]:
        out.append(f"| {x['variant']} | {x['batch']} | {x['L']} | {x['H']} | {x['P']} | {1e3 * x['forward_s']:.2f} | "
                   f"{x['forward_ratio']:.2f} | {1e3 * x['fwd_bwd_s']:.2f} | {x['fwd_bwd_ratio']:.2f} | "
                   f"{x['max_abs_diff']:.1e} |")
    d = r["digits"]
    out += ["", "## 2. sklearn 8x8 digits as pixel sequences (L = 64)", "",
            f"{d['model']}, {d['epochs']} epochs, {d['n_train']} train / {d['n_test']} test: "
            f"**test accuracy {100 * d['test_accuracy']:.1f} %**, training time {d['train_time_s']:.0f} s "
            f"(incl. compilation), final train loss {d['final_train_loss']:.3f}.", "",
            "## 3. Irregularly sampled regression (sum of two leaky integrators of a held input)", "",
            f"Target variance {r['irregular']['target_variance']:.3f}.", "",
            "| time steps given to S5 | test MSE | train time (s) |", "|---|---|---|"]
    for k in ("true time steps", "uniform steps"):
        v = r["irregular"][k]
        out.append(f"| {k} | {v['test_mse']:.4f} | {v['train_time_s']:.0f} |")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        layer = layer_timing(4, 256, 16, 16)
        dig = digits_run(2)
        irr = irregular_run(3)
    else:
        layer = layer_timing(16, 1024, 64, 64)
        dig = digits_run(30)
        irr = irregular_run(40)
    r = dict(machine=platform.processor() or platform.machine(), layer=layer, digits=dig, irregular=irr)
    OUT.mkdir(exist_ok=True)
    stem = "deterministic_s5_quick" if args.quick else "deterministic_s5"
    (OUT / f"{stem}.json").write_text(json.dumps(r, indent=1))
    (OUT / f"{stem}.md").write_text(markdown(r))
    print(markdown(r))


if __name__ == "__main__":
    main()
