"""Predictability and large-weight benchmarks of DEER / quasi-DEER / ELK / quasi-ELK (issue 6).

Two subcommands, each writing benchmarks/results/<stem>.json and .md:

``predictability`` (stem ``deterministic_elk_predictability``)
    Iterations to converge vs sequence length T for a contracting and a chaotic random tanh map
    ``h_t = tanh(gain * W h_{t-1} + s u_t)``, W ~ N(0, 1/D), u_t ~ N(0, I), D = 16, float64.
    The largest Lyapunov exponents are estimated along the evaluated trajectories by QR tangent
    propagation (:func:`zoo.deterministic.rnn.lyapunov_spectrum`). Gonzalez et al. (2025,
    "Predictability enables parallelization of nonlinear state space models"): the iterations
    of DEER stay flat in T for a contracting (predictable) system and grow with T for a chaotic
    (unpredictable) one.
``unstable`` (stem ``deterministic_elk_unstable``)
    Large-weight GRUs (weights x scale), float32: all four methods, iterations, converged,
    residual, max abs error vs ``lax.scan`` and wall time (ELK paper: quasi-DEER can blow up
    where ELK with damping converges).

Run: .venv/bin/python benchmarks/deterministic_elk_predictability.py {predictability,unstable}
[--quick]
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
    from benchmarks.deterministic_common import SHARED_NOTE, environment, environment_line  # noqa: E402
except ModuleNotFoundError:  # run as a script from benchmarks/
    from deterministic_common import SHARED_NOTE, environment, environment_line  # noqa: E402

OUT = pathlib.Path(__file__).parent / "results"


# ----------------------------------------------------------------------------------------------
# Systems
# ----------------------------------------------------------------------------------------------


def random_tanh_map(gain: float, D: int = 16, seed: int = 0, input_scale: float = 0.1,
                    dtype=jnp.float64):
    """The driven random tanh map ``h_t = tanh(gain * W h_{t-1} + input_scale * u_t)``.

    Parameters
    ----------
    gain : float
        Below 1 the map contracts; around 2 and above it is chaotic for most draws of W
        (large-D limit), which must be checked with a Lyapunov estimate for a given W.
    D : int
        State size.
    seed : int
        Seed of W and of the initial state.
    input_scale : float
        Scale s of the i.i.d. N(0, I) drive.
    dtype : dtype

    Returns
    -------
    f : callable f(h (D,), u (D,)) -> (D,)
    h0 : array (D,)
        A state on the attractor (after 1000 undriven steps from a random state).
    """
    W = jax.random.normal(jax.random.PRNGKey(seed), (D, D), dtype) / jnp.sqrt(D)

    def f(h, u):
        return jnp.tanh(gain * (W @ h) + input_scale * u)

    h_init = jax.random.normal(jax.random.PRNGKey(100 + seed), (D,), dtype)
    h0 = rnn.sequential(f, h_init, jnp.zeros((1000, D), dtype))[-1]
    return f, h0


def drive(T: int, D: int, dtype=jnp.float64, seed: int = 1) -> jax.Array:
    """u_1..u_T ~ N(0, I_D): (T, D); the first T rows do not depend on T (one long draw)."""
    return jax.random.normal(jax.random.PRNGKey(seed), (max(T, 5000), D), dtype)[:T]


def lyapunov(f, h0, D, dtype=jnp.float64, T=5000, burn_in=500, k=2) -> list[float]:
    """The k largest Lyapunov exponents along the driven trajectory of length T from h0."""
    return [float(v) for v in rnn.lyapunov_spectrum(f, h0, drive(T, D, dtype), k=k, burn_in=burn_in)]


def run(f, x0, u, ref, method, **kw):
    """One ``elk.evaluate`` call: compile, then time one call; its summary and memory.

    ``time_incl_compile_s`` is compilation plus the call, ``time_s`` the call alone, and
    ``mem_bytes`` the temporary + output bytes of the compiled call (XLA memory analysis).
    """
    t0 = time.perf_counter()
    compiled = jax.jit(lambda x0, u: elk.evaluate(f, x0, u, method=method, on_failure="flag", **kw)).lower(
        x0, u).compile()
    t_compile = time.perf_counter() - t0
    try:
        ma = compiled.memory_analysis()
        mem = int(ma.temp_size_in_bytes + ma.output_size_in_bytes)
    except Exception:  # backend dependent
        mem = None
    t0 = time.perf_counter()
    res = jax.block_until_ready(compiled(x0, u))
    el = time.perf_counter() - t0
    err = jnp.abs(res.states - ref)
    finite = bool(jnp.all(jnp.isfinite(err)))
    return dict(method=method, iterations=int(res.iterations), converged=bool(res.converged),
                residual=float(res.residual), max_abs_err=float(jnp.max(err)) if finite else float("inf"),
                time_s=el, time_incl_compile_s=t_compile + el, mem_bytes=mem,
                solver="parallel" if kw.get("parallel", elk.parallel_default()) else "sequential")


# ----------------------------------------------------------------------------------------------
# Predictability sweep
# ----------------------------------------------------------------------------------------------


def predictability(lengths, elk_max_T_chaotic, D=16, gains=(0.8, 2.0), tol=1e-8):
    """DEER / quasi-DEER / ELK iterations vs T for a contracting and a chaotic tanh map.

    Parameters
    ----------
    lengths : sequence of int
        Sequence lengths T.
    elk_max_T_chaotic : int
        ELK on the chaotic map runs up to max_iters = T and is expensive; it is skipped for
        larger T.
    D : int
    gains : tuple of float
        (contracting gain, chaotic gain).
    tol : float
        Convergence tolerance on max_t ||h_t - f(h_{t-1}, u_t)||_inf. DEER is also run at the
        float64 default 1e-12.

    Returns
    -------
    dict
        ``systems`` (gain, Lyapunov exponents) and ``rows``.
    """
    systems, rows = [], []
    for gain in gains:
        f, h0 = random_tanh_map(gain, D)
        lyap = lyapunov(f, h0, D)
        kind = "chaotic" if lyap[0] > 0 else "contracting"
        systems.append(dict(gain=gain, D=D, kind=kind, lyapunov_5000_steps=lyap))
        print(systems[-1], flush=True)
        for T in lengths:
            u = drive(T, D)
            ref = rnn.sequential(f, h0, u)
            lyap_T = lyapunov(f, h0, D, T=T, burn_in=0, k=1)[0]
            configs = [("deer", dict(tol=tol)), ("deer", dict(tol=1e-12)), ("quasi_deer", dict(tol=tol))]
            if kind == "contracting" or T <= elk_max_T_chaotic:
                configs += [("elk", dict(tol=tol)), ("quasi_elk", dict(tol=tol))]
            for method, kw in configs:
                row = dict(gain=gain, kind=kind, D=D, T=T, lyapunov_along_T=lyap_T, tol=kw["tol"],
                           **run(f, h0, u, ref, method, **kw))
                rows.append(row)
                print(row, flush=True)
    return dict(systems=systems, rows=rows)


def predictability_markdown(res) -> str:
    out = ["# Predictability: iterations to converge vs T (random tanh map, float64)", "",
           f"Run {res['date']}. {environment_line(res['environment'])} {SHARED_NOTE}", "",
           "h_t = tanh(gain W h_{t-1} + 0.1 u_t), W ~ N(0, 1/D) (seed 0), u_t ~ N(0, I), D = 16, "
           "h_0 on the attractor. Produced by `benchmarks/deterministic_elk_predictability.py "
           "predictability`. Max iterations = T for every method; ELK methods use the default "
           "damping 1.0 with adaptive (Levenberg-Marquardt) control; init = zeros. "
           "`residual` = max_t ||h_t - f(h_{t-1}, u_t)||_inf of the returned iterate; "
           "`max abs err` = vs the sequential lax.scan. Time: one call after compilation (compilation "
           "excluded), linear solves by the backend's default solver (column `solver`); memory: "
           "temporary + output bytes of the compiled call (XLA memory analysis).", "",
           "Largest Lyapunov exponents (QR tangent propagation over 5000 driven steps after 500 "
           "burn-in, per step):", ""]
    for s in res["systems"]:
        out.append(f"- gain {s['gain']} ({s['kind']}): " + ", ".join(f"{v:.4f}" for v in s["lyapunov_5000_steps"]))
    out += ["", "| gain | system | T | Lyapunov (along 1..T) | method | solver | tol | iterations | converged | "
            "residual | max abs err | time (s) | memory (MB) |", "|" + "---|" * 13]
    for r in res["rows"]:
        out.append(f"| {r['gain']} | {r['kind']} | {r['T']} | {r['lyapunov_along_T']:.3f} | {r['method']} | "
                   f"{r['solver']} | {r['tol']:.0e} | {r['iterations']} | {r['converged']} | {r['residual']:.1e} | "
                   f"{r['max_abs_err']:.1e} | {r['time_s']:.3f} | {_mb(r['mem_bytes'])} |")
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------------------------
# Large-weight GRUs
# ----------------------------------------------------------------------------------------------


def unstable(scales, T, D=8, dtype=jnp.float32):
    """All four methods on large-weight GRUs; ELK methods with the ELK paper's fixed damping
    (lambda = 1e-6 for ELK, 1e-2 for quasi-ELK) and with the adaptive control (initial 1.0).

    Parameters
    ----------
    scales : sequence of float
        Weight scales of :func:`zoo.deterministic.rnn.init_gru`.
    T : int
    D : int
    dtype : dtype

    Returns
    -------
    list of dict
    """
    rows = []
    for scale in scales:
        p = rnn.init_gru(jax.random.PRNGKey(0), D, 2, scale=scale, dtype=dtype)
        f = functools.partial(rnn.gru_cell, p)
        u = jax.random.normal(jax.random.PRNGKey(1), (T, 2), dtype)
        x0 = jnp.zeros(D, dtype)
        ref = rnn.sequential(f, x0, u)
        lyap = float(rnn.lyapunov_spectrum(f, x0 + 0.1, u, k=1, burn_in=T // 3)[0])
        configs = [("deer", {}), ("quasi_deer", {}),
                   ("elk", dict(damping=1e-6, adaptive=False)), ("quasi_elk", dict(damping=1e-2, adaptive=False)),
                   ("elk", dict(damping=1.0)), ("quasi_elk", dict(damping=1.0))]
        for method, kw in configs:
            row = dict(dtype=jnp.dtype(dtype).name, weight_scale=scale, T=T, D=D, lyapunov=lyap,
                       damping=kw.get("damping"), adaptive=kw.get("adaptive", True),
                       **run(f, x0, u, ref, method, **kw))
            rows.append(row)
            print(row, flush=True)
    return rows


def _mb(b) -> str:
    return "-" if b is None else f"{b / 2**20:.2f}"


def unstable_markdown(res) -> str:
    rows = res["rows"]
    out = ["# Large-weight GRUs: DEER / quasi-DEER / ELK / quasi-ELK", "",
           f"Run {res['date']}. {environment_line(res['environment'])} {SHARED_NOTE}", "",
           "GRU (rnn.init_gru, seed 0, input size 2, x0 = 0, u ~ N(0, I)), weights x scale; default "
           "tol (1e-6 in float32); max iterations = T; init = zeros. Produced by "
           "`benchmarks/deterministic_elk_predictability.py unstable`. `adaptive` = Levenberg-Marquardt "
           "control of the damping (initial 1.0); False = the ELK paper's fixed damping (lambda = 1e-6 "
           "for ELK, 1e-2 for quasi-ELK; the paper's sigmasq = 1 / lambda). Time: one call after "
           "compilation; memory: temporary + output bytes of the compiled call. The 20-seed version "
           "with per-iteration deviations is section 2 of `deterministic_elk_fig4.md`.", "",
           "| dtype | D | scale | T | Lyapunov | method | solver | damping | adaptive | iterations | converged | "
           "residual | max abs err | time (s) | memory (MB) |", "|" + "---|" * 15]
    for r in rows:
        lm = r["method"].endswith("elk")
        out.append(f"| {r['dtype']} | {r['D']} | {r['weight_scale']} | {r['T']} | {r['lyapunov']:.3f} | "
                   f"{r['method']} | {r['solver']} | {r['damping'] if lm else '-'} | "
                   f"{r['adaptive'] if lm else '-'} | {r['iterations']} | {r['converged']} | "
                   f"{r['residual']:.1e} | {r['max_abs_err']:.1e} | {r['time_s']:.2f} | {_mb(r['mem_bytes'])} |")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("which", choices=["predictability", "unstable"])
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    args = ap.parse_args()
    stem = f"deterministic_elk_{args.which}" + ("_quick" if args.quick else "")
    if args.which == "predictability":
        lengths = [50, 100] if args.quick else [50, 100, 200, 300, 1000, 3000]
        res = predictability(lengths, elk_max_T_chaotic=100 if args.quick else 300)
    else:
        res = dict(rows=unstable([4.0], 300) if args.quick else unstable([3.0, 4.0], 1000))
    res["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    res["environment"] = environment()
    md = predictability_markdown(res) if args.which == "predictability" else unstable_markdown(res)
    OUT.mkdir(exist_ok=True)
    (OUT / f"{stem}.json").write_text(json.dumps(res, indent=1))
    (OUT / f"{stem}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
