"""Benchmark of DEER / quasi-DEER / ELK / quasi-ELK against sequential ``lax.scan`` on this CPU.

Writes benchmarks/results/deterministic_elk.json and .md with three tables:
1. the ELK family on GRUs (iterations, converged, max abs error vs sequential, median wall time
   with its spread, ratio to lax.scan, compiled temporary + output memory), float32 and float64,
   each method with the parallel and with the sequential linear solves (``parallel=True/False``;
   the environment line names the backend's default);
2. large-weight GRUs (far from contracting linearisations): all methods, ELK with the ELK paper's
   fixed damping and with the adaptive control;
3. predictability: DEER iterations vs T for a contracting and a chaotic tanh RNN, with the
   largest Lyapunov exponent of each.

Run: .venv/bin/python benchmarks/deterministic_elk.py [--quick]
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import time

import jax
import jax.numpy as jnp

jax.config.update("jax_enable_x64", True)

from zoo.deterministic import elk, rnn  # noqa: E402

try:
    from benchmarks.deterministic_common import (  # noqa: E402
        SHARED_NOTE,
        environment,
        environment_line,
        time_repeats,
    )
except ModuleNotFoundError:  # run as a script from benchmarks/
    from deterministic_common import SHARED_NOTE, environment, environment_line, time_repeats  # noqa: E402

OUT = pathlib.Path(__file__).parent / "results"


def memory_bytes(fn, *args):
    """Temporary + output bytes of the compiled ``fn(*args)`` (XLA memory analysis); the same
    measure for the sequential scan and every method."""
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


def family_table(sizes, lengths, repeat, solvers=(None,)):
    """GRUs of state size D in ``sizes`` and length T in ``lengths``, float32 and float64: every
    method with each linear solver in ``solvers`` (None = the backend default, True = parallel
    associative scans, False = sequential scans), timed side by side with ``lax.scan``."""
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
                t_seq = time_repeats(seq, x0, u, repeat=repeat)
                m_seq = memory_bytes(seq, x0, u)
                for parallel in solvers:
                    for method in elk.METHODS:
                        g, res = run_method(f, x0, u, method, parallel=parallel)
                        t0 = time.perf_counter()
                        jax.block_until_ready(g(x0, u))
                        n_rep = repeat if time.perf_counter() - t0 < 1.0 else min(repeat, 3)
                        t = time_repeats(g, x0, u, repeat=n_rep)
                        row = dict(
                            dtype=jnp.dtype(dtype).name, D=D, T=T, method=method,
                            solver="parallel" if (parallel if parallel is not None else elk.parallel_default())
                            else "sequential",
                            iterations=int(res.iterations), converged=bool(res.converged),
                            max_abs_err=float(jnp.max(jnp.abs(res.states - ref))),
                            time_s=t["median"], time_min_s=t["min"], time_max_s=t["max"], repeats=n_rep,
                            seq_time_s=t_seq["median"], ratio_vs_scan=t["median"] / t_seq["median"],
                            mem_bytes=memory_bytes(g, x0, u), seq_mem_bytes=m_seq,
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
    env = results["environment"]
    mb = lambda b: "-" if b is None else f"{b / 2**20:.2f}"  # noqa: E731
    out = ["# Deterministic module: DEER / quasi-DEER / ELK / quasi-ELK vs sequential lax.scan", "",
           f"Run {results['date']}. {environment_line(env)} {SHARED_NOTE} Produced by "
           "`benchmarks/deterministic_elk.py`.", "",
           "## 1. GRUs: convergence to the sequential evaluation", "",
           "rnn.init_gru(PRNGKey(D), D, 3), u ~ N(0, I), x0 = 0, default tolerance and damping (adaptive, "
           "initial 1.0), iterate initialised at 0. `solver`: the linear solves (recurrence / Kalman "
           "smoother) as parallel associative scans or sequential scans; the `parallel=None` default "
           f"on this backend is {'parallel' if env['parallel_default'] else 'sequential'}. Time: median "
           f"of {results['repeat']} calls after compilation (3 for calls over 1 s), [min, max] in brackets; ratio = median / "
           "median of lax.scan measured just before (> 1 = slower). Memory: temporary + output bytes "
           "of the compiled call from XLA's memory analysis, the same measure for every method and "
           "for lax.scan.", "",
           "| dtype | D | T | method | solver | iterations | converged | max abs err | time (s) [min, max] | "
           "lax.scan (s) | ratio | memory (MB) | scan memory (MB) |", "|" + "---|" * 13]
    for r in results["family"]:
        out.append(f"| {r['dtype']} | {r['D']} | {r['T']} | {r['method']} | {r['solver']} | {r['iterations']} | "
                   f"{r['converged']} | {r['max_abs_err']:.2e} | {r['time_s']:.4f} [{r['time_min_s']:.4f}, "
                   f"{r['time_max_s']:.4f}] | {r['seq_time_s']:.5f} | {r['ratio_vs_scan']:.1f} | "
                   f"{mb(r['mem_bytes'])} | {mb(r['seq_mem_bytes'])} |")
    out += ["", "## 2. Large-weight GRUs (weights x scale): Newton vs Levenberg-Marquardt", "",
            "rnn.init_gru(PRNGKey(0), 8, 2, scale), u ~ N(0, I), x0 = 0, float32, max iterations = T. "
            "ELK methods with the ELK paper's fixed damping (lambda = 1e-6 for ELK, 1e-2 for quasi-ELK) "
            "and with the adaptive Levenberg-Marquardt control (initial 1.0). Time: one call after "
            "compilation (default solver); memory as in section 1. The 20-seed version of this system "
            "is section 2 of `deterministic_elk_fig4.md`.", "",
            "| dtype | scale | T | Lyapunov | method | damping | adaptive | iterations | converged | residual | "
            "max abs err | time (s) | memory (MB) |", "|" + "---|" * 13]
    for r in results["unstable"]:
        out.append(f"| {r['dtype']} | {r['weight_scale']} | {r['T']} | {r['lyapunov']:.3f} | {r['method']} | "
                   f"{fmt(r['damping'])} | {r['adaptive'] if r['method'].endswith('elk') else '-'} | "
                   f"{r['iterations']} | {r['converged']} | {r['residual']:.1e} | {r['max_abs_err']:.1e} | "
                   f"{r['time_s']:.2f} | {mb(r['mem_bytes'])} |")
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
    both = (False, True)
    if args.quick:
        repeat = 1
        fam = family_table([4], [1000], repeat=repeat, solvers=both)
        uns = unstable_table([3.0], 300)
        pred = predictability_table([100, 300], [0.6, 2.5])
    else:
        repeat = 5
        fam = family_table([4, 16], [1000, 10_000], repeat=repeat, solvers=both)
        uns = unstable_table([3.0, 4.0], 3000)
        pred = predictability_table([100, 300, 1000, 3000], [0.6, 2.5])
    results = dict(date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), environment=environment(),
                   repeat=repeat, family=fam, unstable=uns, predictability=pred)
    OUT.mkdir(exist_ok=True)
    stem = "deterministic_elk_quick" if args.quick else "deterministic_elk"
    (OUT / f"{stem}.json").write_text(json.dumps(results, indent=1))
    (OUT / f"{stem}.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
