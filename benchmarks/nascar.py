"""NASCAR end to end: the rSLDS posterior by NUTS from the project's initialization, the fast point
fit on its own, and NumPyro's funsor-enumerated version of the same model for the ESS/s ratio.

Parts (each writes its figures into ``benchmarks/results/nascar.json`` and ``nascar.md``):

1. ``pointfit``: :func:`zoo.initialize.slds_initial_params`' pipeline (PCA -> temporal smoothing ->
   recurrent AR-HMM EM with vmapped restarts) on fixed data with ``--seeds`` different seeds of the
   fitting randomness. State accuracy: argmax of the AR-HMM smoothed marginals, labels matched to
   the truth by Hungarian matching (scipy ``linear_sum_assignment``). Wall time per seed, the first
   seed separately (it includes compilation). Reference (lindermanlab/ssm Laplace-EM, same
   machine, given in the issue): ~15 s at T = 2000 (accuracy 0.78-0.98 over 10 seeds), ~65 s at
   T = 10,000.
2. ``nuts``: ``inference.fit(model, y, "nuts", num_chains=4, num_warmup=500, num_samples=500,
   init="auto")``; state accuracy by ``inference.decode`` against the true states; R-hat and bulk
   ESS on identified quantities (labels aligned to the truth by decode's per-draw permutations):
   eigenvalue moduli and angles of A_k (both eigenvalues of the two rotation states, the
   eigenvalue along the track of the two straights -- the other is confounded with the bias),
   the emission matrix C (identified: the latent space is anchored to the data frame,
   ``zoo.frame``), the
   emission noise (Gaussian), per-draw state occupancy, and denoised observations C x_t + d at 50
   time points; divergences; wall time, gradient evaluations (sampling phase), bulk ESS per
   second; the flow field aligned to the true latents by an affine map (MSE on a grid over the
   visited region).
3. ``funsor``: the same rSLDS written the usual NumPyro way (``contrib.control_flow.scan`` over
   time with z_t enumerated in parallel, centred path), identical priors, site names and data
   frame. Measured: (a) jitted value-and-gradient of each potential (ours: the non-centred program
   ``inference.fit`` samples), interleaved repetitions, and the two densities' agreement at one
   point; (b) for each, one NUTS chain from the same point fit (``--funsor-warmup`` warmup, a
   compiling sampling call, then a timed sampling call of ``--funsor-samples`` draws): bulk ESS
   of label-invariant quantities per second of sampling. The ratio is ours' over funsor's.

Run: ``.venv/bin/python benchmarks/nascar.py [--quick] [--parts pointfit,nuts,funsor]
[--emissions gaussian|poisson]``. ``--emissions poisson`` is the Poisson SLDS (N = 100 neurons,
T = 1000) with the same figures, written to ``nascar_poisson.{json,md}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import platform
import statistics
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints
from scipy.optimize import linear_sum_assignment

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import inference  # noqa: E402
from inference.devices import use_cpu_devices  # noqa: E402
from zoo.datasets import nascar  # noqa: E402
from zoo.distributions import stick_breaking_log_probs  # noqa: E402
from zoo.initialize import fit_arhmm, pca_latents  # noqa: E402
from zoo.preprocess import smooth_time  # noqa: E402

OUT = pathlib.Path(__file__).parent / "results"
SSM_REFERENCE = {"T2000_seconds": 15.0, "T2000_accuracy": "0.78 to 0.98 over 10 seeds, 3 of 10 below 0.95",
                 "T10000_seconds": 65.0, "T10000_accuracy": 0.98}


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def hungarian_accuracy(z_true, z_est, K):
    """Fraction of steps equal after the best relabelling of z_est (Hungarian matching)."""
    conf = np.zeros((K, K))
    np.add.at(conf, (np.asarray(z_true), np.asarray(z_est)), 1)
    rows, cols = linear_sum_assignment(-conf)
    return float(conf[rows, cols].sum() / len(z_true))


def _save(name, results, text):
    OUT.mkdir(exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(results, indent=2, default=_jsonable))
    (OUT / f"{name}.md").write_text(text)


def _jsonable(o):
    if isinstance(o, np.ndarray | jax.Array):
        return np.asarray(o).tolist()
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    return str(o)


# ----------------------------------------------------------------------------------------------
# 1. the point fit on its own
# ----------------------------------------------------------------------------------------------


def point_fit_states(model, y, key, num_restarts=4, num_em_iters=40, smoothing=2.0):
    """The first two steps of ``slds_initial_params`` (PCA -> smoothing -> AR-HMM EM), returning
    the AR-HMM smoothed state marginals (T, K) as a NumPy array (blocks until done)."""
    x0, _, _ = pca_latents(model, y)
    x0 = smooth_time(x0, smoothing)
    k1, _ = jax.random.split(key)
    fit = fit_arhmm(k1, x0, model.num_states, model.transitions, num_em_iters, num_restarts,
                    model.init_scale)
    return np.asarray(jax.block_until_ready(fit.marginals))[0]


def bench_point_fit(data, seeds, label):
    model, y, z = data["model"], np.asarray(data["y"]), np.asarray(data["z"])
    rows = []
    for s in seeds:
        t0 = time.perf_counter()
        marg = point_fit_states(model, y, jax.random.key(s))
        wall = time.perf_counter() - t0
        acc = hungarian_accuracy(z, marg.argmax(-1), model.num_states)
        rows.append({"seed": int(s), "accuracy": acc, "wall_seconds": wall})
        print(f"[pointfit {label}] seed {s}: accuracy {acc:.4f}, {wall:.2f} s", flush=True)
    # the full slds_initial_params (what NUTS is started from), once, steady state
    t0 = time.perf_counter()
    vals = inference_initial_params(model, y, jax.random.key(seeds[0]))
    full_wall = time.perf_counter() - t0
    accs = [r["accuracy"] for r in rows]
    steady = [r["wall_seconds"] for r in rows[1:]] or [rows[0]["wall_seconds"]]
    return {"label": label, "T": int(y.shape[0]), "N": int(y.shape[1]), "per_seed": rows,
            "first_seed_seconds_incl_compile": rows[0]["wall_seconds"],
            "steady_median_seconds": statistics.median(steady), "steady_max_seconds": max(steady),
            "accuracy_min": min(accs), "accuracy_median": statistics.median(accs),
            "seeds_at_least_0.95": int(sum(a >= 0.95 for a in accs)), "num_seeds": len(accs),
            "slds_initial_params_seconds": full_wall, "initial_sites": sorted(vals)}


def inference_initial_params(model, y, key):
    out = model.initial_params(y, key)
    return jax.block_until_ready(out)


# ----------------------------------------------------------------------------------------------
# 2. NUTS, identified quantities, flow field
# ----------------------------------------------------------------------------------------------


def aligned_states(arr, perm):
    """Permute the state axis (axis 2) of (C, S, K, ...) draws by decode's permutations
    (perm[c, s, j] = reference label of the draw's label j)."""
    C, S = perm.shape[:2]
    if arr.shape[:2] != (C, S):
        raise ValueError(f"draws {arr.shape[:2]} and permutations {(C, S)} differ: select the decoded draws")
    out = np.empty_like(arr)
    for c in range(C):
        for s in range(S):
            out[c, s, perm[c, s]] = arr[c, s]
    return out


def identified_quantities(model, post, dec, y):
    """Dataset (chain, draw, ...) of quantities invariant to the permutation and affine
    symmetries, labels aligned to the truth."""
    import xarray as xr

    # the decoded (thinned) draws only: the permutations exist for those
    P = post["posterior"].to_dataset().sel(draw=dec["draw"].values)
    perm = np.asarray(dec["permutation"].values)
    A = aligned_states(np.asarray(P["dynamics"].transpose("chain", "draw", ...).values), perm)
    inv = model.invariants({"dynamics": A})
    mod, ang = inv["eig_modulus"], inv["eig_angle"]  # (C, S, K, D), sorted by modulus
    K = A.shape[2]
    qs = {
        # rotations (0, 1): both eigenvalues; straights (2, 3): the one along the track
        "eig_modulus_rotations": (("chain", "draw", "q0"), mod[:, :, :2].reshape(mod.shape[:2] + (-1,))),
        "eig_angle_rotations": (("chain", "draw", "q0"), ang[:, :, :2].reshape(ang.shape[:2] + (-1,))),
        "eig_modulus_straights_leading": (("chain", "draw", "q1"), mod[:, :, 2:, 0]),
        "emission_matrix": (("chain", "draw", "neuron", "latent"),
                            np.asarray(P["emission_matrix"].transpose("chain", "draw", ...).values)),
    }
    if "emission_noise" in P:
        qs["emission_noise"] = (("chain", "draw", "neuron"),
                                np.asarray(P["emission_noise"].transpose("chain", "draw", ...).values))
    vit = np.asarray(dec["viterbi"].values)  # aligned to the reference, (C, S', T)
    occ = np.stack([(vit == k).mean(-1) for k in range(K)], -1)
    x = np.asarray(P["x"].transpose("chain", "draw", ...).values)
    C = np.asarray(P["emission_matrix"].transpose("chain", "draw", ...).values)
    d = np.asarray(P["emission_bias"].transpose("chain", "draw", ...).values)
    ts = np.linspace(0, x.shape[2] - 1, 50).round().astype(int)
    denoised = np.einsum("cstd,csnd->cstn", x[:, :, ts], C) + d[:, :, None]
    qs["denoised_obs"] = (("chain", "draw", "t50", "neuron"), denoised)
    ds = xr.Dataset(qs)
    # occupancy has only the decoded draws: a separate dataset
    occ_ds = xr.Dataset({"state_occupancy": (("chain", "draw", "state"), occ)})
    return ds, occ_ds


def rhat_ess(ds):
    import arviz_stats as azs

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rh = azs.rhat(ds)
        eb = azs.ess(ds, method="bulk")
    return {k: {"rhat_max": float(np.nanmax(rh[k].values)), "ess_bulk_min": float(np.nanmin(eb[k].values)),
                "ess_bulk_median": float(np.nanmedian(eb[k].values))} for k in ds.data_vars}


def drift(A, b, R, r, u, link="softmax"):
    """Expected one-step displacement E[A_z u + b_z] - u under p(z | u) = softmax(R u + r) (or the
    stick-breaking probabilities of R u + r); u (G, D)."""
    logits = u @ R.T + r
    if link == "stick_breaking":
        p = np.exp(np.asarray(stick_breaking_log_probs(jnp.asarray(logits))))
    else:
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
    nxt = np.einsum("kij,gj->gki", A, u) + b  # (G, K, D)
    return np.einsum("gk,gki->gi", p, nxt) - u


def flow_field(post, data, num_draws=100, grid=25):
    """Model flow mapped into true coordinates by an affine map per draw, on a grid over the
    visited region, against the true flow."""
    P = post["posterior"]
    get = lambda n: np.asarray(P[n].transpose("chain", "draw", ...).values)  # noqa: E731
    x = get("x")
    Cn, Sn = x.shape[:2]
    flat = lambda a: a.reshape((Cn * Sn,) + a.shape[2:])  # noqa: E731
    xs, A, b = flat(x), flat(get("dynamics")), flat(get("dynamics_bias"))
    R, r = flat(get("recurrence_weights")), flat(get("recurrence_bias"))
    idx = np.linspace(0, Cn * Sn - 1, min(num_draws, Cn * Sn)).round().astype(int)
    xt = np.asarray(data["x"])
    p = data["params"]
    lo, hi = xt.min(0), xt.max(0)
    g1, g2 = np.meshgrid(np.linspace(lo[0], hi[0], grid), np.linspace(lo[1], hi[1], grid))
    pts = np.stack([g1.ravel(), g2.ravel()], -1)
    # keep grid points near the visited path (within 1.5 grid cells)
    cell = np.max((hi - lo) / (grid - 1))
    dmin = np.min(np.linalg.norm(pts[:, None] - xt[::5][None], axis=-1), axis=1)
    pts = pts[dmin <= 1.5 * cell]
    true = drift(p["dynamics"], p["dynamics_bias"], p["recurrence_weights"], p["recurrence_bias"], pts)
    flows, r2 = [], []
    for i in idx:
        phi = np.concatenate([xs[i], np.ones((len(xs[i]), 1))], -1)
        coef, *_ = np.linalg.lstsq(phi, xt, rcond=None)  # x_true ~ x_model M + c
        M, c = coef[:2], coef[2]
        resid = xt - phi @ coef
        r2.append(1 - resid.var(0).sum() / xt.var(0).sum())
        u = (pts - c) @ np.linalg.inv(M)
        flows.append(drift(A[i], b[i], R[i], r[i], u, data["model"].switching_link) @ M)
    flows = np.stack(flows)
    mean_flow = flows.mean(0)
    mse = float(np.mean(np.sum((mean_flow - true) ** 2, -1)))
    per_draw = np.mean(np.sum((flows - true) ** 2, -1), -1)
    cos = np.sum(mean_flow * true, -1) / (np.linalg.norm(mean_flow, axis=-1) * np.linalg.norm(true, axis=-1) + 1e-12)
    return {"grid_points": int(len(pts)), "mse_posterior_mean_flow": mse,
            "mse_per_draw_median": float(np.median(per_draw)),
            "mean_squared_true_flow": float(np.mean(np.sum(true**2, -1))),
            "relative_mse": mse / float(np.mean(np.sum(true**2, -1))),
            "direction_cosine_median": float(np.median(cos)),
            "fraction_within_30_degrees": float(np.mean(cos > np.cos(np.pi / 6))),
            "affine_r2_median": float(np.median(r2)), "num_draws": int(len(idx))}


def bench_nuts(data, args):
    model, y, z = data["model"], np.asarray(data["y"]), np.asarray(data["z"])
    t0 = time.perf_counter()
    options = {k: int(v) if v.lstrip("-").isdigit() else v for k, v in (o.split("=", 1) for o in args.option)}
    post = inference.fit(model, y, args.method, num_chains=args.chains, num_warmup=args.warmup,
                         num_samples=args.samples, seed=args.seed, progress_bar=False,
                         max_tree_depth=args.max_tree_depth, init="auto", chain_method=args.chain_method,
                         **options)
    wall = time.perf_counter() - t0
    print(f"[nuts] fit done in {wall:.1f} s", flush=True)
    if os.environ.get("NASCAR_SAVE_POSTERIOR"):
        post.to_netcdf(os.environ["NASCAR_SAVE_POSTERIOR"])
    finite = np.stack([np.isfinite(post["posterior"][k].values).reshape(
        post["posterior"][k].shape[:2] + (-1,)).all(-1) for k in post["posterior"].data_vars]).all(0)
    nonfinite_per_chain = (~finite).sum(axis=1).tolist()
    if not finite.all():
        print(f"[nuts] NON-FINITE draws per chain: {nonfinite_per_chain}", flush=True)
    t1 = time.perf_counter()
    dec = inference.decode(model, post, y, reference=z, num_draws=min(args.samples, args.decode_draws))
    decode_s = time.perf_counter() - t1
    ss = post["sample_stats"]
    n_steps = np.asarray(ss["n_steps"].values)
    div = np.asarray(ss["diverging"].values)
    ids, occ = identified_quantities(model, post, dec, y)
    # every identified quantity uses the decoded draws (evenly thinned, --decode-draws per chain)
    figs = rhat_ess(ids)
    figs.update(rhat_ess(occ))
    rhat_max = max(v["rhat_max"] for v in figs.values())
    ess_min = min(v["ess_bulk_min"] for k, v in figs.items() if k != "state_occupancy")
    samp = float(post.attrs["sampling_time"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        diag = inference.diagnose(post, emit=False)
    flow = flow_field(post, data)
    out = {
        "chains": args.chains, "warmup": args.warmup, "samples": args.samples,
        "max_tree_depth": args.max_tree_depth, "chain_method": str(post.attrs["chain_method"]),
        "initialization": str(post.attrs["initialization"]),
        "wall_seconds_fit_incl_init_and_compile": wall, "sampling_time_attr_seconds": samp,
        "decode_seconds": decode_s,
        "nonfinite_draws_per_chain": nonfinite_per_chain,
        "accuracy": float(dec["accuracy"]),
        "divergences": int(div.sum()), "divergent_fraction": float(div.mean()),
        "grad_evals_sampling_phase": int(n_steps.sum()),
        "grad_evals_per_chain_per_draw_mean": float(n_steps.mean()),
        "tree_depth_max": int(np.asarray(ss["tree_depth"].values).max()),
        "step_size_per_chain": np.asarray(ss["step_size"].values)[:, -1].tolist(),
        "identified": figs, "rhat_max_identified": rhat_max, "ess_bulk_min_identified": ess_min,
        "ess_bulk_min_per_second": ess_min / samp,
        "ess_bulk_min_per_grad_eval_sampling": ess_min / max(int(n_steps.sum()), 1),
        "diagnose_verdict_all_sites": diag.verdict,
        "diagnose_rhat_max_all_sites": float(diag.table["rhat_max"].max()),
        "diagnose_worst_site": str(diag.table["rhat_max"].idxmax()),
        "diagnose_table": diag.table.to_dict(orient="index"),
        "flow": flow,
    }
    print(f"[nuts] accuracy {out['accuracy']:.4f}, R-hat max (identified) {rhat_max:.3f}, "
          f"min bulk ESS {ess_min:.0f}, div {out['divergences']}, flow rel MSE {flow['relative_mse']:.3f}",
          flush=True)
    return out, post


# ----------------------------------------------------------------------------------------------
# 3. NumPyro funsor enumeration of the same model
# ----------------------------------------------------------------------------------------------


def make_funsor_model(model, frame):
    """The SLDS of ``model`` with z_t enumerated by funsor inside ``contrib.control_flow.scan``;
    same priors, site names and transforms as ``model`` (the centred path, emissions in the data
    frame ``frame``). Transitions: ``recurrent_only`` (the rSLDS, z_t | x_{t-1}) or
    ``standard`` (z_t | z_{t-1}, the transition matrix ``trans_probs``)."""
    from numpyro.contrib.control_flow import scan as np_scan

    K, D, N = model.num_states, model.latent_dim, model.obs_dim
    recurrent = model.transitions == "recurrent_only"
    if not recurrent and model.transitions != "standard":
        raise ValueError(f"transitions must be 'recurrent_only' or 'standard'; got {model.transitions!r}")

    def funsor_slds(y):
        T = y.shape[0]
        pi = numpyro.sample("init_probs", dist.Dirichlet(jnp.ones(K)))
        if recurrent:
            s = model.recurrence_scale
            R = numpyro.sample("recurrence_weights", dist.Normal(0.0, s).expand([K, D]).to_event(2))
            r = numpyro.sample("recurrence_bias", dist.Normal(0.0, s).expand([K]).to_event(1))
        else:
            P = numpyro.sample("trans_probs", dist.Dirichlet(jnp.ones((K, K))).to_event(1))
        A = numpyro.sample("dynamics", dist.Normal(0.85 * jnp.eye(D), 0.085 / np.sqrt(D)).expand([K, D, D])
                           .to_event(3))
        b = numpyro.sample("dynamics_bias", dist.Normal(0.0, 0.3).expand([K, D]).to_event(2))
        q = numpyro.sample("dynamics_noise", dist.HalfNormal(0.2).expand([K, D]).to_event(2))
        # the path is one latent site (flat density); the dynamics score it below, as factors
        x = numpyro.sample("x", dist.ImproperUniform(constraints.real, (), (T, D)))
        z0 = numpyro.sample("z_0", dist.Categorical(probs=pi), infer={"enumerate": "parallel"})
        # x_0's density is the same in every state (zero means, one initial scale)
        numpyro.sample("x_0", dist.Normal(jnp.zeros(D), model.init_scale).to_event(1), obs=x[0])

        def observe_step(zt, x_prev, x_t):
            mean = jnp.einsum("...ij,...j->...i", A[zt], x_prev) + b[zt]
            numpyro.sample("x_t", dist.Normal(mean, q[zt]).to_event(1), obs=x_t)

        if recurrent:
            # z_t depends on x_{t-1} only: z_0 is not carried
            def step(x_prev, x_t):
                zt = numpyro.sample("z", dist.Categorical(logits=x_prev @ R.T + r),
                                    infer={"enumerate": "parallel"})
                observe_step(zt, x_prev, x_t)
                return x_t, None

            np_scan(step, x[0], x[1:])
        else:
            def step(carry, x_t):
                x_prev, z_prev = carry
                zt = numpyro.sample("z", dist.Categorical(probs=P[z_prev]), infer={"enumerate": "parallel"})
                observe_step(zt, x_prev, x_t)
                return (x_t, zt), None

            np_scan(step, (x[0], z0), x[1:])
        C, d = model.frame_emissions(frame)
        pre = x @ C.T + d
        if model.emissions == "poisson":
            numpyro.sample("y", dist.Poisson(model.bin_size * jax.nn.softplus(pre)).to_event(2), obs=y)
        else:
            rn = numpyro.sample("emission_noise", dist.HalfNormal(1.0).expand([N]).to_event(1))
            numpyro.sample("y", dist.Normal(pre, rn).to_event(2), obs=y)

    return funsor_slds


def _starts(model, y, seed):
    """Start values for one chain from one point fit: ours in the coordinates ``inference.fit``
    samples (non-centred path, data frame), funsor's in the model's own (centred) ones."""
    from inference.starts import initial_positions, latent_sites

    key = jax.random.key(seed)
    frame = model.data_frame(y)
    centred = model.initial_params(y, key, frame=frame)
    ref = model.path_reference(y, centred)
    kw = {"frame": frame, "path_reference": ref}
    out = {}
    for name, vals, kwargs in (("ours", model.reference_values(centred, ref), kw),
                               ("funsor", centred, {"frame": frame})):
        # read at the start values (a prior draw of Poisson emissions can underflow float32 rates)
        latent = latent_sites(model, y, kwargs, values=vals)
        z0, _ = initial_positions(model, y, kwargs, {k: v for k, v in vals.items() if k in latent}, key, 1,
                                  latent)
        out[name] = jax.tree.map(lambda v: v[0], z0)
    return out, kw, frame


def _invariant_ess(samples, lp):
    """Bulk ESS of label-invariant scalars of one chain: the sorted eigenvalue moduli of all A_k,
    the emission noise scales and the log density."""
    import arviz as az

    A = np.asarray(samples["dynamics"])  # (S, K, D, D)
    mods = np.sort(np.abs(np.linalg.eigvals(A)).reshape(A.shape[0], -1), axis=-1)
    cols = {f"eig_modulus_{i}": mods[:, i] for i in range(mods.shape[1])}
    if "emission_noise" in samples:
        for i, v in enumerate(np.asarray(samples["emission_noise"]).T):
            cols[f"emission_noise_{i}"] = v
    cols["lp"] = np.asarray(lp)
    ess = {k: float(az.ess(v[None, :], method="bulk")) for k, v in cols.items()}
    return ess


def bench_funsor(data, args):
    from numpyro.infer.util import initialize_model

    model, y = data["model"], np.asarray(data["y"])
    starts, kw_ours, frame = _starts(model, y, args.seed)
    fmodel = make_funsor_model(model, frame)
    programs = {"ours": (model, kw_ours), "funsor": (fmodel, {}), "ours_centred": (model, {"frame": frame})}
    potentials = {name: initialize_model(jax.random.key(0), m, model_args=(jnp.asarray(y),),
                                         model_kwargs=kw).potential_fn for name, (m, kw) in programs.items()}
    res = {}
    for name in ("ours", "funsor"):
        f = jax.jit(jax.value_and_grad(potentials[name]))
        t0 = time.perf_counter()
        jax.block_until_ready(f(starts[name]))
        first = time.perf_counter() - t0
        times = []
        for _ in range(args.grad_repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(f(starts[name]))
            times.append(time.perf_counter() - t0)
        res[name] = {"compile_first_call_s": first, "median_s": statistics.median(times), "min_s": min(times),
                     "n": len(times)}
    # the densities agree: ours' centred program at funsor's start equals funsor's potential
    check = {name: float(potentials[name](starts["funsor"])) for name in ("ours_centred", "funsor")}
    print(f"[funsor] value+grad: ours (non-centred) {1e3 * res['ours']['median_s']:.2f} ms, funsor "
          f"{1e3 * res['funsor']['median_s']:.2f} ms; potentials at funsor's start {check}", flush=True)
    runs = {name: ess_run(programs[name][0], y, starts[name], programs[name][1], args, name)
            for name in ("ours", "funsor")}
    ratio = runs["ours"]["ess_bulk_min_per_second"] / runs["funsor"]["ess_bulk_min_per_second"]
    return {"grad_timing": res, "potentials_at_funsor_start": check,
            "funsor_over_ours_grad_time": res["funsor"]["median_s"] / res["ours"]["median_s"],
            "runs": runs, "ratio_ours_over_funsor_ess_per_second": ratio}


def ess_run(m, y, init, kwargs, args, label):
    """One chain: warmup, a first sampling call (compiles the sampling loop), then a second,
    timed sampling call whose draws give the bulk ESS of label-invariant quantities."""
    from numpyro.infer import MCMC, NUTS

    yj = jnp.asarray(y)
    mcmc = MCMC(NUTS(m, max_tree_depth=args.max_tree_depth), num_warmup=args.funsor_warmup,
                num_samples=args.funsor_samples, num_chains=1, progress_bar=False)
    extra = ("num_steps", "diverging", "potential_energy")
    t0 = time.perf_counter()
    mcmc.warmup(jax.random.key(args.seed), yj, init_params=init, extra_fields=extra, **kwargs)
    t_warm = time.perf_counter() - t0
    mcmc.run(mcmc.post_warmup_state.rng_key, yj, extra_fields=extra, **kwargs)
    mcmc.post_warmup_state = mcmc.last_state
    t1 = time.perf_counter()
    mcmc.run(mcmc.post_warmup_state.rng_key, yj, extra_fields=extra, **kwargs)
    t_run = time.perf_counter() - t1
    ex = mcmc.get_extra_fields()
    steps = int(np.asarray(ex["num_steps"]).sum())
    ess = _invariant_ess(mcmc.get_samples(), -np.asarray(ex["potential_energy"]))
    worst = min(ess, key=ess.get)
    out = {"chains": 1, "warmup": args.funsor_warmup, "samples": args.funsor_samples,
           "max_tree_depth": args.max_tree_depth, "warmup_seconds_incl_compile": t_warm,
           "sampling_seconds": t_run, "sampling_grad_evals": steps,
           "seconds_per_grad_eval": t_run / max(steps, 1),
           "divergences": int(np.asarray(ex["diverging"]).sum()), "ess_bulk": ess,
           "ess_bulk_min": ess[worst], "ess_bulk_min_quantity": worst,
           "ess_bulk_min_per_second": ess[worst] / t_run}
    print(f"[ess run] {label}: warmup {t_warm:.1f} s, sampling {t_run:.1f} s / {steps} grads, min bulk ESS "
          f"{ess[worst]:.0f} ({worst}), {ess[worst] / t_run:.3f} ESS/s", flush=True)
    return out


# ----------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------


def fmt_point(pf):
    rows = ["| seed | state accuracy | wall s |", "|---:|---:|---:|"]
    rows += [f"| {r['seed']} | {r['accuracy']:.4f} | {r['wall_seconds']:.2f} |" for r in pf["per_seed"]]
    return rows + ["",
                   f"T = {pf['T']}, N = {pf['N']}: **{pf['seeds_at_least_0.95']} of {pf['num_seeds']}** seeds "
                   f">= 0.95 (min {pf['accuracy_min']:.4f}, median {pf['accuracy_median']:.4f}); first seed "
                   f"{pf['first_seed_seconds_incl_compile']:.2f} s including compilation, then median "
                   f"{pf['steady_median_seconds']:.2f} s (max {pf['steady_max_seconds']:.2f} s); the whole "
                   f"`slds_initial_params` (the start NUTS uses) {pf['slds_initial_params_seconds']:.2f} s."]


def report(results, name):
    lines = [f"# NASCAR benchmark: {results['problem']}", "",
             f"Generated by `benchmarks/nascar.py{' --quick' if results['quick'] else ''}` on {results['date']} "
             f"({results['machine']}). 2 CPU cores shared with other jobs: absolute times are indicative.", ""]
    pf = results.get("pointfit")
    if pf:
        lines += ["## Point fit on its own (PCA -> smoothing -> recurrent AR-HMM EM, 4 vmapped restarts)", "",
                  "State accuracy = argmax of the AR-HMM smoothed marginals, labels Hungarian-matched to the truth;",
                  "data fixed, seed of the fitting randomness varied.", "", *fmt_point(pf), ""]
        for extra in results.get("pointfit_extra", []):
            lines += [f"### T = {extra['T']}", "", *fmt_point(extra), ""]
        lines += [f"Reference (lindermanlab/ssm Laplace-EM on this machine, from the issue): ~"
                  f"{SSM_REFERENCE['T2000_seconds']:.0f} s at T = 2000 ({SSM_REFERENCE['T2000_accuracy']}), ~"
                  f"{SSM_REFERENCE['T10000_seconds']:.0f} s at T = 10,000.", ""]
    n = results.get("nuts")
    if n:
        ids = n["identified"]
        lines += ["## NUTS posterior", "",
                  f"{n['chains']} chains x ({n['warmup']} warmup + {n['samples']} draws), max tree depth "
                  f"{n['max_tree_depth']}, chain method {n['chain_method']}; {n['initialization']}.", "",
                  "| figure | value |", "|---|---|",
                  f"| state accuracy (decode, aligned to truth) | **{n['accuracy']:.4f}** |",
                  f"| wall time of `inference.fit` (init + compile + warmup + sampling) | {n['wall_seconds_fit_incl_init_and_compile']:.1f} s |",
                  f"| sampling_time attribute (compile + warmup + sampling) | {n['sampling_time_attr_seconds']:.1f} s |",
                  f"| gradient evaluations, sampling phase (all chains) | {n['grad_evals_sampling_phase']} "
                  f"({n['grad_evals_per_chain_per_draw_mean']:.1f} per draw; warmup's are not exposed by inference.fit) |",
                  f"| divergent transitions | {n['divergences']} ({100 * n['divergent_fraction']:.2f} %) |",
                  f"| R-hat max over the identified quantities | **{n['rhat_max_identified']:.3f}** |",
                  f"| min bulk ESS over the identified quantities | {n['ess_bulk_min_identified']:.0f} |",
                  f"| min bulk ESS per second (of sampling_time) | **{n['ess_bulk_min_per_second']:.3f}** |",
                  f"| flow field MSE (posterior-mean flow, affine-aligned grid, {n['flow']['grid_points']} points) | "
                  f"**{n['flow']['mse_posterior_mean_flow']:.3g}** (relative to the mean squared true flow: "
                  f"{n['flow']['relative_mse']:.3f}; median direction cosine {n['flow']['direction_cosine_median']:.3f}, "
                  f"{100 * n['flow']['fraction_within_30_degrees']:.0f} % of points within 30 degrees; affine R^2 "
                  f"{n['flow']['affine_r2_median']:.4f}) |",
                  f"| `inference.diagnose` on every site (incl. non-identified ones) | {n['diagnose_verdict_all_sites']}, "
                  f"R-hat max {n['diagnose_rhat_max_all_sites']:.3f} ({n['diagnose_worst_site']}) |",
                  "", "| identified quantity | R-hat max | bulk ESS min | bulk ESS median |", "|---|---:|---:|---:|"]
        lines += [f"| {k} | {v['rhat_max']:.3f} | {v['ess_bulk_min']:.0f} | {v['ess_bulk_median']:.0f} |"
                  for k, v in ids.items()]
        lines += ["", "state_occupancy uses the decoded draws only (fraction of Viterbi steps per state).", ""]
    f = results.get("funsor")
    if f and "runs" in f:
        g = f["grad_timing"]
        lines += ["## NumPyro funsor enumeration of the same model", "",
                  "funsor: the same model written the usual NumPyro way (centred path, z_t enumerated by funsor "
                  "inside `contrib.control_flow.scan`), same priors, site names and data frame. Ours: the program "
                  "`inference.fit` samples (non-centred path, `zoo.reparam`). The densities agree: ours' centred "
                  f"program and funsor's at funsor's start: {f['potentials_at_funsor_start']}.", "",
                  "| implementation | value+grad median (ms) | min (ms) | compile, first call (s) |",
                  "|---|---:|---:|---:|",
                  *[f"| {k} | {1e3 * v['median_s']:.2f} | {1e3 * v['min_s']:.2f} | "
                    f"{v['compile_first_call_s']:.2f} |" for k, v in g.items()],
                  "", "ESS/s, measured for both the same way: 1 chain from the same point fit, warmup, one sampling "
                  "call (compiles), then a second sampling call, timed, whose draws give the bulk ESS of label-"
                  "invariant quantities (sorted eigenvalue moduli of all A_k, emission noise, log density).", "",
                  "| model | warmup s (incl. compile) | sampling s / grads | ms per grad | divergences | "
                  "min bulk ESS (quantity) | min ESS/s |", "|---|---:|---|---:|---:|---|---:|"]
        for k, v in f["runs"].items():
            lines.append(f"| {k} | {v['warmup_seconds_incl_compile']:.1f} | {v['sampling_seconds']:.1f} / "
                         f"{v['sampling_grad_evals']} | {1e3 * v['seconds_per_grad_eval']:.2f} | {v['divergences']} | "
                         f"{v['ess_bulk_min']:.0f} ({v['ess_bulk_min_quantity']}) | "
                         f"{v['ess_bulk_min_per_second']:.3f} |")
        lines += ["", f"ESS/s ours / funsor: **{f['ratio_ours_over_funsor_ess_per_second']:.2f}** (target >= 10).",
                  ""]
    t = results.get("targets")
    if t:
        lines += ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
        lines += [f"| {k} | {v['measured']} | {'yes' if v['met'] else '**no**'} |" for k, v in t.items()]
        lines.append("")
    for note in results.get("notes", []):
        lines += [note, ""]
    text = "\n".join(lines)
    _save(name, results, text)
    return text


def targets(results):
    t = {}
    pf, n, f = results.get("pointfit"), results.get("nuts"), results.get("funsor")
    ref = SSM_REFERENCE["T2000_seconds"] if results["T"] == 2000 else None
    if pf:
        t["point fit >= 0.95 on every seed"] = {
            "measured": f"{pf['seeds_at_least_0.95']} of {pf['num_seeds']}",
            "met": pf["seeds_at_least_0.95"] == pf["num_seeds"]}
        if ref:
            t[f"point fit wall time <= ssm's ~{ref:.0f} s"] = {
                "measured": f"first {pf['first_seed_seconds_incl_compile']:.1f} s, steady max "
                            f"{pf['steady_max_seconds']:.1f} s",
                "met": max(pf["first_seed_seconds_incl_compile"], pf["steady_max_seconds"]) <= ref}
    if n:
        t["NUTS state accuracy >= 0.95"] = {"measured": f"{n['accuracy']:.4f}", "met": n["accuracy"] >= 0.95}
        t["R-hat <= 1.05 on identified quantities"] = {"measured": f"{n['rhat_max_identified']:.3f}",
                                                       "met": n["rhat_max_identified"] <= 1.05}
        t["divergent transitions <= 1 %"] = {"measured": f"{100 * n['divergent_fraction']:.2f} %",
                                             "met": n["divergent_fraction"] <= 0.01}
        if ref:
            t[f"4-chain NUTS within 10x ssm's point fit (<= {10 * ref:.0f} s)"] = {
                "measured": f"{n['wall_seconds_fit_incl_init_and_compile']:.0f} s",
                "met": n["wall_seconds_fit_incl_init_and_compile"] <= 10 * ref}
    if f and "runs" in f:
        ratio = f["ratio_ours_over_funsor_ess_per_second"]
        t["ESS/s ours / funsor >= 10"] = {"measured": f"{ratio:.2f} (1 chain each, min bulk ESS of "
                                                      "label-invariant quantities per second)", "met": ratio >= 10}
    return t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: small T, few iterations")
    ap.add_argument("--emissions", choices=["gaussian", "poisson"], default="gaussian")
    ap.add_argument("--parts", default="pointfit,nuts,funsor")
    ap.add_argument("--num-steps", type=int, default=None, help="T (default 2000 Gaussian, 1000 Poisson)")
    ap.add_argument("--obs-dim", type=int, default=None, help="N (default 10 Gaussian, 100 Poisson)")
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--max-tree-depth", type=int, default=10)
    ap.add_argument("--chain-method", default="auto")
    ap.add_argument("--method", default="nuts",
                    help="fit's method for the 'nuts' part: 'nuts' (over parameters and path) or 'auto' "
                         "(the default sampler of the model: the blocked sweep)")
    ap.add_argument("--decode-draws", type=int, default=100)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--pointfit-long", type=int, default=0,
                    help="also time the point fit at T = 10,000 with this many seeds")
    ap.add_argument("--funsor-warmup", type=int, default=200)
    ap.add_argument("--funsor-samples", type=int, default=200)
    ap.add_argument("--grad-repeats", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0, help="data and NUTS seed")
    ap.add_argument("--name", default=None)
    ap.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                    help="a method option for inference.fit (integers parsed), e.g. -o boundary_moves=32")
    ap.add_argument("--transition-link", choices=["softmax", "stick_breaking"], default="softmax",
                    help="the fitted rSLDS's transitions (the data are always simulated with softmax); "
                         "stick_breaking with Gaussian emissions takes the Polya-gamma blocked sampler")
    args = ap.parse_args(argv)
    use_cpu_devices(args.chains)  # one host device per chain (inference.devices.chain_mesh says why)
    poisson = args.emissions == "poisson"
    T = args.num_steps or (1000 if poisson else 2000)
    N = args.obs_dim or (100 if poisson else 10)
    if args.quick:
        T = args.num_steps or 300
        args.warmup, args.samples, args.seeds = 60, 40, 3
        args.funsor_warmup, args.funsor_samples, args.grad_repeats = 10, 10, 5
        args.max_tree_depth = min(args.max_tree_depth, 6)
        args.decode_draws = 20
    name = args.name or ("nascar" + ("_poisson" if poisson else "") + ("_quick" if args.quick else ""))
    parts = set(args.parts.split(","))
    data = nascar(seed=args.seed, num_steps=T, emissions=args.emissions, obs_dim=N)
    if args.transition_link != "softmax":
        data["model"] = dataclasses.replace(data["model"], transition_link=args.transition_link)
        if "funsor" in parts:
            raise ValueError("the funsor reference is written with softmax transitions: drop it from --parts")
    results = {"problem": f"rSLDS recurrent_only ({args.transition_link} transitions), K=4, D=2, N={N}, "
                          f"T={T}, {args.emissions} emissions",
               "T": T, "N": N, "emissions": args.emissions, "quick": args.quick, "args": vars(args),
               "date": datetime.datetime.now().isoformat(timespec="seconds"),
               "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__}, "
                          f"numpyro {numpyro.__version__}, {jax.default_backend()}",
               "ssm_reference": SSM_REFERENCE, "notes": []}
    prev = OUT / f"{name}.json"
    if prev.exists():  # keep parts measured by an earlier invocation
        old = json.loads(prev.read_text())
        if old.get("T") == T and old.get("N") == N:
            for k in ("pointfit", "pointfit_extra", "nuts", "funsor", "notes"):
                if k in old and k.split("_")[0] not in parts:
                    results[k] = old[k]
    if "pointfit" in parts:
        results["pointfit"] = bench_point_fit(data, list(range(args.seeds)), f"T={T}")
        results["pointfit_extra"] = []
        if args.pointfit_long:
            long = nascar(seed=args.seed, num_steps=10_000, emissions=args.emissions, obs_dim=N)
            results["pointfit_extra"].append(bench_point_fit(long, list(range(args.pointfit_long)), "T=10000"))
        results["targets"] = targets(results)
        print(report(results, name), flush=True)
    ours = results.get("nuts")
    if "nuts" in parts:
        ours, _ = bench_nuts(data, args)
        results["nuts"] = ours
        results["targets"] = targets(results)
        print(report(results, name), flush=True)
    if "funsor" in parts:
        results["funsor"] = bench_funsor(data, args)
    results["targets"] = targets(results)
    text = report(results, name)
    print(text)
    return results


if __name__ == "__main__":
    main()
