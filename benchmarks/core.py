"""Core benchmarks: the zoo's marginalized SLDS density and scan kernels against what users would
pick instead, side by side in one process and one run.

1. Value-and-gradient of the marginalized SLDS log density (T=1000, K=4, D=2), with respect to
   A, b, the noise scales, the transition logits and the initial logits:
   (a) ours: ``SwitchingLinearDynamics`` under ``zoo.handlers.marginalize``, through
       ``numpyro.infer.util.log_density``;
   (b) NumPyro's funsor enumeration of the same model (``numpyro.contrib.control_flow.scan`` over
       time, z_t enumerated in parallel, ``numpyro.contrib.funsor.log_density``);
   (c) a hand-written ``lax.scan`` forward algorithm in log space (no zoo code).
2. ``zoo.scans.hmm_log_normalizer`` (T=10,000, K=10) against dynamax's ``hmm_filter`` and
   ``parallel_hmm_filter`` (``marginal_loglik``).
3. ``zoo.scans.kalman_filter`` log-likelihood (T=10,000, D=4, N=10) against dynamax's
   ``lgssm_filter`` and ``parallel_lgssm_filter`` (``marginal_loglik``).

Every function is jitted; the first call (trace + compile + run) is the compile time, steady-state
times are medians over repeated calls interleaved across the implementations being compared
(A, B, C, A, B, C, ...), each blocked until ready. float32 throughout (JAX default).

Run: ``cd /work/main && .venv/bin/python benchmarks/core.py`` (writes benchmarks/results/core.json
and core.md). ``--quick`` runs fewer repeats.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax import lax
from jax.scipy.special import logsumexp
from numpyro.contrib.control_flow import scan as np_scan
from numpyro.contrib.funsor import config_enumerate, enum
from numpyro.contrib.funsor import log_density as funsor_log_density
from numpyro.infer.util import log_density

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from zoo import scans  # noqa: E402
from zoo.distributions import SwitchingLinearDynamics  # noqa: E402
from zoo.handlers import marginalize  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------


def _block(out):
    return jax.block_until_ready(out)


def time_interleaved(fns: dict, repeats: int, inner: int = 1) -> dict:
    """Compile (first call) each jitted function, then time them in interleaved rounds.

    ``fns`` maps a name to ``(jitted_fn, args)``. Each timed sample is the mean of ``inner``
    consecutive calls (to lift very short calls above timer noise). Returns per name the compile
    time and the median, lower and upper quartiles of the steady-state samples, in seconds.
    """
    out = {}
    for name, (f, args) in fns.items():
        t0 = time.perf_counter()
        _block(f(*args))
        out[name] = {"compile_s": time.perf_counter() - t0, "samples": []}
        _block(f(*args))  # one warm call outside the timings
    for _ in range(repeats):
        for name, (f, args) in fns.items():
            t0 = time.perf_counter()
            for _ in range(inner):
                r = f(*args)
            _block(r)
            out[name]["samples"].append((time.perf_counter() - t0) / inner)
    for res in out.values():
        s = res.pop("samples")
        q = statistics.quantiles(s, n=4)
        res.update(median_s=statistics.median(s), q1_s=q[0], q3_s=q[2], n=len(s), inner=inner)
    return out


def _ratio(results, num, den):
    return results[num]["median_s"] / results[den]["median_s"]


# ----------------------------------------------------------------------------------------------
# 1. Marginalized SLDS density: ours vs funsor enumeration vs hand-written scan
# ----------------------------------------------------------------------------------------------


def simulate_slds(rng, T, K, D):
    """A stable SLDS with sticky switching; returns (true parameters, path x (T, D))."""
    A, b = [], []
    for k in range(K):
        th = 0.2 + 0.3 * k
        rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
        A.append(0.95 * rot if D == 2 else 0.9 * np.eye(D))
        b.append(rng.normal(size=D) * 0.5)
    A, b = np.stack(A), np.stack(b)
    scales = 0.1 + 0.05 * np.arange(K)
    P = np.full((K, K), 0.05 / (K - 1)) + np.eye(K) * (0.95 - 0.05 / (K - 1))
    pi0 = np.full(K, 1.0 / K)
    z = rng.choice(K, p=pi0)
    x = np.zeros((T, D))
    x[0] = rng.normal(size=D)
    for t in range(1, T):
        z = rng.choice(K, p=P[z])
        x[t] = A[z] @ x[t - 1] + b[z] + scales[z] * rng.normal(size=D)
    # evaluate at perturbed parameters (as inside an MCMC run), not at the truth
    params = {
        "A": A + 0.05 * rng.normal(size=A.shape),
        "b": b + 0.05 * rng.normal(size=b.shape),
        "log_scale": np.log(scales) + 0.1 * rng.normal(size=K),
        "P_logits": np.log(P) + 0.1 * rng.normal(size=(K, K)),
        "init_logits": 0.1 * rng.normal(size=K),
    }
    params = {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}
    return params, jnp.asarray(x, jnp.float32)


def _unpack(params, D):
    log_init = jax.nn.log_softmax(params["init_logits"])
    log_P = jax.nn.log_softmax(params["P_logits"], axis=-1)
    scale = jnp.exp(params["log_scale"])  # (K,), isotropic noise per state
    return log_init, log_P, params["A"], params["b"], scale


# x_1 | z_1 ~ N(0, I) for every state: fixed, identical in all three implementations


def slds_model(params, x):
    T, D = x.shape
    log_init, log_P, A, b, scale = _unpack(params, D)
    K = A.shape[0]
    eye = jnp.eye(D, dtype=x.dtype)
    numpyro.sample(
        "x",
        SwitchingLinearDynamics(
            log_init, A, b, scale[:, None, None] * eye,
            jnp.zeros((K, D), x.dtype), jnp.broadcast_to(eye, (K, D, D)),
            log_P=log_P, R=None, num_steps=T,
        ),
        obs=x,
    )


def ours_log_density(params, x):
    return log_density(marginalize(slds_model, parallel=False), (params, x), {}, {})[0]


def funsor_model(params, x):
    T, D = x.shape
    log_init, log_P, A, b, scale = _unpack(params, D)
    z0 = numpyro.sample("z_0", dist.Categorical(logits=log_init))
    numpyro.sample("x_0", dist.Normal(jnp.zeros(D, x.dtype), 1.0).to_event(1), obs=x[0])

    def transition(carry, x_t):
        z_prev, x_prev = carry
        z = numpyro.sample("z", dist.Categorical(logits=log_P[z_prev]))
        mean = jnp.einsum("...ij,j->...i", A[z], x_prev) + b[z]
        numpyro.sample("x", dist.Normal(mean, scale[z][..., None]).to_event(1), obs=x_t)
        return (z, x_t), None

    # the carried z_0 is a sample site of the model, enumerated like the z_t inside the scan
    np_scan(transition, (z0, x[0]), x[1:])


def funsor_log_density_fn(params, x):
    model = enum(config_enumerate(funsor_model, default="parallel"), first_available_dim=-1)
    return funsor_log_density(model, (params, x), {}, {})[0]


def hand_log_density(params, x):
    """Forward algorithm written out: per-state Gaussian log-likelihoods, log-space lax.scan."""
    T, D = x.shape
    log_init, log_P, A, b, scale = _unpack(params, D)
    mean = jnp.einsum("kij,tj->tki", A, x[:-1]) + b  # (T-1, K, D)
    r = (x[1:, None, :] - mean) / scale[:, None]
    ll = -0.5 * jnp.sum(r**2, -1) - D * jnp.log(scale) - 0.5 * D * math.log(2 * math.pi)
    ll0 = -0.5 * jnp.sum(x[0] ** 2) - 0.5 * D * math.log(2 * math.pi)
    alpha0 = log_init + ll0

    def step(alpha, ll_t):
        new = logsumexp(alpha[:, None] + log_P, axis=0) + ll_t
        return new, None

    alpha, _ = lax.scan(step, alpha0, ll)
    return logsumexp(alpha)


def bench_slds(rng, repeats, T=1000, K=4, D=2):
    params, x = simulate_slds(rng, T, K, D)
    impls = {
        "ours": ours_log_density,
        "funsor": funsor_log_density_fn,
        "hand": hand_log_density,
    }
    vg = {name: jax.jit(jax.value_and_grad(f)) for name, f in impls.items()}
    fns = {name: (f, (params, x)) for name, f in vg.items()}
    res = time_interleaved(fns, repeats)
    # the same evaluations as NUTS makes them: many in a row inside one compiled program, where
    # Python's dispatch of a jitted call (0.02-0.1 ms here, comparable to ours) does not exist
    loops = {name: (_in_loop(jax.value_and_grad(f), LOOP_EVALS), (params, x))
             for name, f in impls.items()}
    res_loop = time_interleaved(loops, max(repeats // 4, 5))
    for t in res_loop.values():
        for k in ("median_s", "q1_s", "q3_s"):
            t[k] /= LOOP_EVALS

    # agreement of values and gradients (float32 and a float64 reference of the hand scan)
    vals = {name: f(params, x) for name, f in vg.items()}
    check = {}
    ref_v, ref_g = vals["hand"]
    for name, (v, g) in vals.items():
        gdiff = max(
            float(jnp.max(jnp.abs(g[k] - ref_g[k])) / (1.0 + jnp.max(jnp.abs(ref_g[k])))) for k in g
        )
        check[name] = {
            "value": float(v),
            "abs_diff_value_vs_hand": float(abs(v - ref_v)),
            "rel_diff_value_vs_hand": float(abs(v - ref_v) / abs(ref_v)),
            "max_scaled_grad_diff_vs_hand": gdiff,
        }
        np.testing.assert_allclose(float(v), float(ref_v), rtol=2e-5, err_msg=f"{name} value")
        assert gdiff < 2e-3, (name, gdiff)
    return {
        "setting": {"T": T, "K": K, "D": D, "dtype": "float32",
                    "what": "jit(value_and_grad(log density)) wrt A, b, log noise scales, "
                            "transition logits, initial logits"},
        "timings": res,
        "timings_in_loop": res_loop,
        "agreement": check,
        "ratios": {
            "funsor/ours": _ratio(res, "funsor", "ours"),
            "ours/hand": _ratio(res, "ours", "hand"),
            "funsor/ours (in loop)": _ratio(res_loop, "funsor", "ours"),
            "ours/hand (in loop)": _ratio(res_loop, "ours", "hand"),
        },
        "targets": {"funsor/ours": ">= 10", "ours/hand": "<= 1.3",
                    "funsor/ours (in loop)": ">= 10", "ours/hand (in loop)": "<= 1.3"},
    }


LOOP_EVALS = 200


def _in_loop(value_and_grad_fn, n):
    """jit of n evaluations in a fori_loop, each depending on the previous gradient (a 1e-30 step,
    so the parameters stay put but nothing can be hoisted out of the loop); returns the sum of
    the values."""

    def run(params, x):
        def body(_, carry):
            p, acc = carry
            v, g = value_and_grad_fn(p, x)
            p = jax.tree.map(lambda a, b: a + 1e-30 * b, p, g)
            return p, acc + v

        return lax.fori_loop(0, n, body, (params, jnp.zeros((), x.dtype)))[1]

    return jax.jit(run)


# ----------------------------------------------------------------------------------------------
# 2. HMM log normalizer: ours vs dynamax
# ----------------------------------------------------------------------------------------------


def bench_hmm(rng, repeats, T=10_000, K=10):
    from dynamax.hidden_markov_model import hmm_filter, parallel_hmm_filter

    log_init = jax.nn.log_softmax(jnp.asarray(rng.normal(size=K), jnp.float32))
    log_trans = jax.nn.log_softmax(jnp.asarray(2.0 * rng.normal(size=(K, K)), jnp.float32), -1)
    log_lik = jnp.asarray(3.0 * rng.normal(size=(T, K)), jnp.float32)
    # dynamax takes probabilities; convert once, outside the timed function (its native input)
    init_p, trans_p = jnp.exp(log_init), jnp.exp(log_trans)

    fns = {
        "ours_seq": (jax.jit(lambda a, b, c: scans.hmm_log_normalizer(a, b, c, parallel=False)),
                     (log_init, log_trans, log_lik)),
        "dynamax_seq": (jax.jit(lambda a, b, c: hmm_filter(a, b, c).marginal_loglik),
                        (init_p, trans_p, log_lik)),
        "ours_par": (jax.jit(lambda a, b, c: scans.hmm_log_normalizer(a, b, c, parallel=True)),
                     (log_init, log_trans, log_lik)),
        "dynamax_par": (jax.jit(lambda a, b, c: parallel_hmm_filter(a, b, c).marginal_loglik),
                        (init_p, trans_p, log_lik)),
    }
    fast = float(jnp.min(log_trans - jnp.max(log_trans, axis=0))) >= math.log(1e-12)
    res = time_interleaved(fns, repeats)
    values = {name: float(f(*args)) for name, (f, args) in fns.items()}
    ref = values["ours_seq"]
    for name, v in values.items():
        np.testing.assert_allclose(v, ref, rtol=1e-4, err_msg=name)
    return {
        "setting": {"T": T, "K": K, "dtype": "float32",
                    "what": "jit(log p(y_1:T)); ours: hmm_log_normalizer (log space, returns the "
                            "scalar); dynamax: hmm_filter(...).marginal_loglik (probability space, "
                            "the unused filtered/predicted probs are dead code under jit)",
                    "ours_takes_scaled_fast_path": fast},
        "timings": res,
        "values": values,
        "ratios": {
            "ours_seq/dynamax_seq": _ratio(res, "ours_seq", "dynamax_seq"),
            "ours_par/dynamax_par": _ratio(res, "ours_par", "dynamax_par"),
            "ours_par/ours_seq": _ratio(res, "ours_par", "ours_seq"),
        },
        "targets": {"ours_seq/dynamax_seq": "<= 1.0", "ours_par/dynamax_par": "<= 1.0"},
    }


# ----------------------------------------------------------------------------------------------
# 3. Kalman filter log-likelihood: ours vs dynamax
# ----------------------------------------------------------------------------------------------


def bench_kalman(rng, repeats, T=10_000, D=4, N=10):
    from dynamax.linear_gaussian_ssm import lgssm_filter, parallel_lgssm_filter
    from dynamax.linear_gaussian_ssm.inference import make_lgssm_params

    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    q, _ = np.linalg.qr(rng.normal(size=(D, D)))
    F = 0.95 * q
    b = 0.1 * rng.normal(size=D)
    Q = 0.1 * np.eye(D)
    H = rng.normal(size=(N, D))
    d = rng.normal(size=N)
    R = 0.5 * np.eye(N)
    m0, P0 = np.zeros(D), np.eye(D)
    x = rng.multivariate_normal(m0, P0)
    ys = []
    for _ in range(T):
        ys.append(H @ x + d + rng.multivariate_normal(np.zeros(N), R))
        x = F @ x + b + rng.multivariate_normal(np.zeros(D), Q)
    y = f32(np.stack(ys))
    ours_args = tuple(map(f32, (m0, P0, F, b, Q, H, d, R)))
    params = make_lgssm_params(f32(m0), f32(P0), f32(F), f32(Q), f32(H), f32(R),
                               dynamics_bias=f32(b), emissions_bias=f32(d))

    fns = {
        "ours_seq": (jax.jit(lambda yy, *p: scans.kalman_filter(yy, *p, parallel=False).log_likelihood),
                     (y,) + ours_args),
        "dynamax_seq": (jax.jit(lambda p, yy: lgssm_filter(p, yy).marginal_loglik), (params, y)),
        "ours_par": (jax.jit(lambda yy, *p: scans.kalman_filter(yy, *p, parallel=True).log_likelihood),
                     (y,) + ours_args),
        "dynamax_par": (jax.jit(lambda p, yy: parallel_lgssm_filter(p, yy).marginal_loglik), (params, y)),
    }
    res = time_interleaved(fns, repeats)
    values = {name: float(f(*args)) for name, (f, args) in fns.items()}
    ref = values["ours_seq"]
    for name, v in values.items():
        np.testing.assert_allclose(v, ref, rtol=1e-3, err_msg=name)
    return {
        "setting": {"T": T, "D": D, "N": N, "dtype": "float32",
                    "what": "jit(log p(y_1:T)) of a fixed-parameter LGSSM; ours: kalman_filter(...)"
                            ".log_likelihood (also returns filtered means/covs and pointwise terms, "
                            "dead code under jit); dynamax: lgssm_filter(...).marginal_loglik (also "
                            "returns filtered means/covs, dead code under jit)"},
        "timings": res,
        "values": values,
        "ratios": {
            "ours_seq/dynamax_seq": _ratio(res, "ours_seq", "dynamax_seq"),
            "ours_par/dynamax_par": _ratio(res, "ours_par", "dynamax_par"),
            "ours_par/ours_seq": _ratio(res, "ours_par", "ours_seq"),
        },
        "targets": {"ours_seq/dynamax_seq": "<= 1.0", "ours_par/dynamax_par": "<= 1.0"},
    }


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------


def _met(ratio, target):
    op, val = target.split()
    return ratio >= float(val) if op == ">=" else ratio <= float(val)


def _ms(s):
    return f"{1e3 * s:.2f}"


def to_markdown(report) -> str:
    lines = [
        "# Core benchmarks",
        "",
        f"Generated by `benchmarks/core.py` on {report['meta']['date']} "
        f"({report['meta']['machine']}, jax {report['meta']['jax']}, numpyro {report['meta']['numpyro']}, "
        f"dynamax {report['meta']['dynamax']}, funsor {report['meta']['funsor']}; "
        f"{report['meta']['cpus']} CPU cores shared with other jobs, so absolute times are noisy). "
        "Steady-state times are medians of interleaved repetitions (quartiles in the JSON); "
        "compile time is the first call (trace + compile + run). float32.",
        "",
    ]
    titles = {
        "slds": "1. Marginalized SLDS log density, value and gradient (T=1000, K=4, D=2)",
        "hmm": "2. HMM log normalizer (T=10,000, K=10)",
        "kalman": "3. Kalman filter log-likelihood (T=10,000, D=4, N=10)",
    }
    for key, title in titles.items():
        sec = report[key]
        lines += [f"## {title}", "", sec["setting"]["what"] + ".", "",
                  "| implementation | median (ms) | q1-q3 (ms) | compile, first call (s) |",
                  "|---|---:|---:|---:|"]
        for name, t in sec["timings"].items():
            lines.append(f"| {name} | {_ms(t['median_s'])} | {_ms(t['q1_s'])}-{_ms(t['q3_s'])} | "
                         f"{t['compile_s']:.2f} |")
        for name, t in sec.get("timings_in_loop", {}).items():
            lines.append(f"| {name}, in a compiled loop of {LOOP_EVALS} | {_ms(t['median_s'])} | "
                         f"{_ms(t['q1_s'])}-{_ms(t['q3_s'])} | {t['compile_s']:.2f} |")
        lines += ["", "| ratio | value | target | met |", "|---|---:|---|---|"]
        for name, r in sec["ratios"].items():
            tgt = sec["targets"].get(name)
            met = ("yes" if _met(r, tgt) else "**no**") if tgt else ""
            lines.append(f"| {name} | {r:.2f} | {tgt or ''} | {met} |")
        lines.append("")
    if report.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in report["notes"]] + [""]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats (smoke test)")
    ap.add_argument("--no-write", action="store_true", help="print only, do not write results")
    args = ap.parse_args(argv)
    rep = 5 if args.quick else 1
    import dynamax
    import funsor

    report = {
        "meta": {
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "jax": jax.__version__,
            "numpyro": numpyro.__version__,
            "dynamax": getattr(dynamax, "__version__", "?"),
            "funsor": funsor.__version__,
            "backend": jax.default_backend(),
        }
    }
    rng = np.random.default_rng(0)
    print("1. SLDS value_and_grad ...", flush=True)
    report["slds"] = bench_slds(rng, repeats=40 // rep)
    print(json.dumps(report["slds"]["ratios"]), flush=True)
    print("2. HMM log normalizer ...", flush=True)
    report["hmm"] = bench_hmm(rng, repeats=60 // rep)
    print(json.dumps(report["hmm"]["ratios"]), flush=True)
    print("3. Kalman filter ...", flush=True)
    report["kalman"] = bench_kalman(rng, repeats=20 // rep)
    print(json.dumps(report["kalman"]["ratios"]), flush=True)
    report["notes"] = NOTES
    md = to_markdown(report)
    print(md)
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "core.json").write_text(json.dumps(report, indent=2) + "\n")
        (RESULTS / "core.md").write_text(md)


NOTES: list[str] = [
    "SLDS (1): the per-state Gaussian terms are one unrolled forward substitution over whole (T, K) "
    "arrays (zoo.scans.solve_lower_broadcast, D <= 4; LAPACK above): LAPACK's trsm custom call took "
    "~130 ms for a (4, 2, 1000) solve on this machine, and moving the steps into right-hand-side "
    "columns cost two transposes (0.31 -> 0.26 ms for the whole value and gradient in a side check). "
    "The log normalizer has a custom JVP: its derivative is the posterior expectation of the "
    "sufficient statistics, so the gradient costs one backward scan instead of the autodiff reverse of "
    "the forward scan. funsor's time is noisy under load (1.2-5.7 ms median in side runs of the same "
    "jitted function), so the ratio moves by +-10 % between runs.",
    "SLDS (1): funsor/ours >= 10 can only hold when ours is well below the hand-written scan: funsor's "
    "own cost relative to the hand-written scan is the ceiling for that ratio.",
    "SLDS (1): a single jitted call from Python carries a dispatch cost of about 0.1-0.25 ms on this "
    "machine (measured on a trivial jitted function with the same arguments), which is most of ours' "
    "time per call and bounds funsor/ours near 10. NUTS evaluates the gradient inside one compiled "
    "program, so the 'in a compiled loop' rows (200 dependent evaluations in a fori_loop, time per "
    "evaluation) are the cost a sampler pays; the ratios are reported for both.",
    "HMM (2): hmm_log_normalizer / hmm_pointwise_log_normalizer run a scaled-probability recursion "
    "(sequential: one K x K matrix-vector product and a normalisation per step, the exponentials and "
    "logarithms taken for all steps outside the scan; parallel: normalised (W, v) messages, K "
    "exponentials and K logs per combine) whenever every transition log-probability is within 27.6 "
    "(a factor 1e12) of its column maximum; that bound makes the float32 underflow of small terms "
    "provably negligible. Otherwise (zeros, or extreme entries such as -200) the exact log-space "
    "recursion runs, decided once per call by lax.cond on the transition matrices. Under a user-level "
    "vmap with batched transitions the cond becomes a select and both paths run. The inputs here "
    "(log_softmax of 2 * N(0, 1) rows) take the fast path.",
    "HMM (2): times are single blocked calls. Timed instead as 5 unblocked back-to-back calls per "
    "sample, ours_seq measured ~1.1 ms per call against ~0.67 ms for dynamax (single blocked calls: "
    "~0.61 vs ~0.64 ms) in a side check; the cause (the lax.cond between the fast and exact paths "
    "under asynchronous dispatch is the suspect) was not pinned down.",
    "HMM (2): dynamax's sequential filter works in probability space and clamps probabilities below "
    "1e-15 to 1e-15 in its normalisation; the values agree to float32 precision on these inputs.",
    "Kalman (3): both filters run the standard covariance form; ours returns the log-likelihood, "
    "filtered means and covariances and per-step terms, dynamax the log-likelihood and filtered means "
    "and covariances. Only the log-likelihood is used, so the rest is dead code under jit for both.",
    "Kalman (3): products of matrices with all dimensions <= 12 are written as broadcast multiply-and-"
    "sum (the small-matrix products of zoo.scans), which XLA fuses into one loop; XLA's CPU dot call costs far more than the "
    "arithmetic for (4, 4) operands. This took the parallel filter from 121 to 48 ms and the "
    "sequential one from 72 to 31 ms (before: ratios 1.37 and 0.85 against dynamax).",
]

if __name__ == "__main__":
    main()
