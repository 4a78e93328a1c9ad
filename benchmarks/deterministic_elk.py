"""Benchmark of DEER / quasi-DEER / ELK / quasi-ELK against sequential ``lax.scan`` on this CPU.

Writes benchmarks/results/deterministic_elk.json and .md with three tables:
1. the ELK family on GRUs (iterations, converged, max abs error vs sequential, wall time, ratio to
   lax.scan, compiled temporary memory), float32 and float64;
2. large-weight GRUs (far from contracting linearisations): quasi-DEER vs ELK with damping;
3. predictability: DEER iterations vs T for a contracting and a chaotic tanh RNN, with the
   largest Lyapunov exponent of each.

Run: .venv/bin/python benchmarks/deterministic_elk.py [--quick]
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import platform
import time

import jax
import jax.numpy as jnp

jax.config.update("jax_enable_x64", True)

from zoo.deterministic import elk, rnn  # noqa: E402

OUT = pathlib.Path(__file__).parent / "results"


def timeit(fn, *args, repeat=3):
    jax.block_until_ready(fn(*args))  # compile
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return best


def temp_bytes(fn, *args):
    try:
        ma = jax.jit(fn).lower(*args).compile().memory_analysis()
        return int(ma.temp_size_in_bytes + ma.output_size_in_bytes)
    except Exception:  # memory analysis is backend dependent
        return None


def run_method(f, x0, u, method, **kw):
    g = jax.jit(lambda x0, u: elk.evaluate(f, x0, u, method=method, on_failure="flag", **kw))
    res = g(x0, u)
    jax.block_until_ready(res)
    return g, res


def family_table(sizes, lengths, repeat):
    rows = []
    for dtype in (jnp.float32, jnp.float64):
        for D in sizes:
            for T in lengths:
                p = rnn.init_gru(jax.random.PRNGKey(D), D, 3, dtype=dtype)
                u = jax.random.normal(jax.random.PRNGKey(1), (T, 3), dtype)
                x0 = jnp.zeros(D, dtype)
                f = functools.partial(rnn.gru_cell, p)
                seq = jax.jit(lambda x0, u, f=f: rnn.sequential(f, x0, u))
                ref = seq(x0, u)
                t_seq = timeit(seq, x0, u, repeat=repeat)
                m_seq = temp_bytes(seq, x0, u)
                for method in elk.METHODS:
                    g, res = run_method(f, x0, u, method)
                    t = timeit(g, x0, u, repeat=1 if method.endswith("elk") else repeat)
                    row = dict(
                        dtype=jnp.dtype(dtype).name, D=D, T=T, method=method,
                        iterations=int(res.iterations), converged=bool(res.converged),
                        max_abs_err=float(jnp.max(jnp.abs(res.states - ref))),
                        time_s=t, seq_time_s=t_seq, ratio_vs_scan=t / t_seq,
                        mem_bytes=temp_bytes(g, x0, u), seq_mem_bytes=m_seq,
                    )
                    rows.append(row)
                    print(row, flush=True)
    return rows


def unstable_table(scales, T, dtype=jnp.float32):
    """Large-weight GRUs (D = 8), all four methods: the table of
    ``deterministic_elk_predictability.unstable``, which owns it."""
    try:
        from benchmarks.deterministic_elk_predictability import unstable
    except ModuleNotFoundError:  # run as a script from benchmarks/
        from deterministic_elk_predictability import unstable
    return unstable(scales, T, D=8, dtype=dtype)


def predictability_table(lengths, gains, D=16):
    rows = []
    for gain in gains:
        p = rnn.init_tanh_rnn(jax.random.PRNGKey(0), D, 1, gain=gain, dtype=jnp.float64)
        f = functools.partial(rnn.tanh_rnn_cell, p)
        x0 = jnp.full(D, 0.1)
        for T in lengths:
            u = 0.05 * jax.random.normal(jax.random.PRNGKey(1), (T, 1), jnp.float64)
            lyap = float(rnn.largest_lyapunov_exponent(f, x0, u, burn_in=min(300, T // 3)))
            for method in ("deer", "quasi_deer"):
                _, res = run_method(f, x0, u, method)
                row = dict(gain=gain, T=T, lyapunov=lyap, method=method,
                           iterations=int(res.iterations), converged=bool(res.converged),
                           residual=float(res.residual))
                rows.append(row)
                print(row, flush=True)
    return rows


def fmt(x, nd=3):
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}g}"
    return str(x)


def markdown(results):
    out = ["# Deterministic module: DEER / quasi-DEER / ELK / quasi-ELK vs sequential lax.scan", "",
           f"CPU: {results['machine']}, JAX {jax.__version__}. Times are best-of wall times on a shared "
           "2-core CPU (no GPU): ratios > 1 mean slower than the sequential scan.", "",
           "## 1. GRUs: convergence to the sequential evaluation", "",
           "| dtype | D | T | method | iterations | converged | max abs err | time (s) | lax.scan (s) | "
           "ratio | memory (MB) | scan memory (MB) |", "|" + "---|" * 12]
    for r in results["family"]:
        mb = lambda b: "-" if b is None else f"{b / 2**20:.2f}"  # noqa: E731
        out.append(f"| {r['dtype']} | {r['D']} | {r['T']} | {r['method']} | {r['iterations']} | {r['converged']} | "
                   f"{r['max_abs_err']:.2e} | {r['time_s']:.4f} | {r['seq_time_s']:.5f} | {r['ratio_vs_scan']:.1f} | "
                   f"{mb(r['mem_bytes'])} | {mb(r['seq_mem_bytes'])} |")
    out += ["", "## 2. Large-weight GRUs (weights x scale): Newton vs Levenberg-Marquardt", "",
            "| dtype | scale | T | Lyapunov | method | damping | adaptive | iterations | converged | residual | "
            "max abs err | time incl. compile (s) |", "|" + "---|" * 12]
    for r in results["unstable"]:
        out.append(f"| {r['dtype']} | {r['weight_scale']} | {r['T']} | {r['lyapunov']:.3f} | {r['method']} | "
                   f"{fmt(r['damping'])} | {r['adaptive'] if r['method'].endswith('elk') else '-'} | "
                   f"{r['iterations']} | {r['converged']} | {r['residual']:.1e} | {r['max_abs_err']:.1e} | "
                   f"{r['time_incl_compile_s']:.1f} |")
    out += ["", "## 3. Predictability: iterations to converge vs T (tanh RNN, D = 16, float64)", "",
            "| gain | T | Lyapunov | method | iterations | converged | residual |", "|" + "---|" * 7]
    for r in results["predictability"]:
        out.append(f"| {r['gain']} | {r['T']} | {r['lyapunov']:.3f} | {r['method']} | {r['iterations']} | "
                   f"{r['converged']} | {r['residual']:.1e} |")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    args = ap.parse_args()
    if args.quick:
        fam = family_table([4], [1000], repeat=1)
        uns = unstable_table([3.0], 1000)
        pred = predictability_table([100, 300], [0.6, 2.5])
    else:
        fam = family_table([4, 16], [1000, 10_000], repeat=3)
        uns = unstable_table([3.0, 4.0], 3000)
        pred = predictability_table([100, 300, 1000, 3000], [0.6, 2.5])
    results = dict(machine=f"{platform.processor() or platform.machine()} ({jax.device_count()} JAX device)",
                   family=fam, unstable=uns, predictability=pred)
    OUT.mkdir(exist_ok=True)
    stem = "deterministic_elk_quick" if args.quick else "deterministic_elk"
    (OUT / f"{stem}.json").write_text(json.dumps(results, indent=1))
    (OUT / f"{stem}.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
