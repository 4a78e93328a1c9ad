"""GP-SLDS vs rSLDS vs GP-SDE (RBF) on the same synthetic data: drift MSE, held-out
log-likelihood, wall time; and the full-size GP-SLDS two-spirals run.

Run: ``./dev bench gp_models [--quick] [--only NAME]``; writes benchmarks/results/gp_models.json
and benchmarks/results/gp_models.md.

Fitting recipe used throughout (also imported by the tests): a MAP point estimate
(``AutoDelta`` + Adam) started from a PCA path, then NUTS started at the MAP point (diagonal
mass matrix, capped tree depth). The drift weights of the GP models are integrated out in closed
form, so NUTS runs on the path and the hyperparameters only.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from numpyro.infer import MCMC, NUTS, SVI, Trace_ELBO, init_to_value
from numpyro.infer.autoguide import AutoDelta

from zoo.sde import initial_path

RESULTS = Path(__file__).parent / "results"


def fit_map_nuts(model, y, inputs=None, seed=0, map_steps=1500, lr=0.02, num_warmup=300,
                 num_samples=300, max_tree_depth=7, init_scale=3.0, num_chains=1, counts=None,
                 init_path=None, progress_bar=False, chain_method="sequential"):
    """MAP (AutoDelta) from a PCA path, then NUTS from the MAP point.

    Returns (samples dict with a leading draw axis, info dict with times and diagnostics).
    """
    y = jnp.asarray(y)
    kw = {} if inputs is None else {"inputs": jnp.asarray(inputs)}
    if counts is None:
        counts = getattr(model, "emissions", "gaussian") == "poisson"
    x0 = initial_path(np.asarray(y), model.latent_dim, counts=counts, smooth=2.0, scale=init_scale) \
        if init_path is None else np.asarray(init_path)
    s = getattr(model, "substeps", 1)
    if s > 1:  # linear interpolation onto the Euler grid
        T = x0.shape[-2]
        t_f = np.arange((T - 1) * s + 1) / s
        x0 = np.stack([np.stack([np.interp(t_f, np.arange(T), xx[:, d]) for d in range(xx.shape[-1])], -1)
                       for xx in x0.reshape((-1,) + x0.shape[-2:])]).reshape(x0.shape[:-2] + (len(t_f), -1))
    t0 = time.time()
    guide = AutoDelta(model, init_loc_fn=init_to_value(values={"x": jnp.asarray(x0, y.dtype)}))
    svi = SVI(model, guide, optax.adam(lr), Trace_ELBO())
    res = svi.run(jax.random.key(seed), map_steps, y, progress_bar=False, **kw)
    res.losses.block_until_ready()
    t_map = time.time() - t0
    start = guide.median(res.params)
    t0 = time.time()
    kernel = NUTS(model, init_strategy=init_to_value(values=start), max_tree_depth=max_tree_depth)
    mcmc = MCMC(kernel, num_warmup=num_warmup, num_samples=num_samples, num_chains=num_chains,
                progress_bar=progress_bar, chain_method=chain_method)
    mcmc.run(jax.random.key(seed + 1), y, extra_fields=("diverging", "num_steps"), **kw)
    samples = {k: np.asarray(v) for k, v in mcmc.get_samples().items()}
    t_nuts = time.time() - t0
    ex = mcmc.get_extra_fields()
    info = {"map_seconds": t_map, "nuts_seconds": t_nuts, "divergences": int(np.sum(ex["diverging"])),
            "mean_leapfrog_steps": float(np.mean(ex["num_steps"])), "map_final_loss": float(res.losses[-1]),
            "num_warmup": num_warmup, "num_samples": num_samples, "num_chains": num_chains,
            "max_tree_depth": max_tree_depth, "map_steps": map_steps}
    return samples, info


def affine_align(x_model, x_true):
    """Least-squares affine map x_true ~ x_model @ M + c over all points. Returns (M, c, R^2)."""
    X = np.asarray(x_model).reshape(-1, x_model.shape[-1])
    Y = np.asarray(x_true).reshape(-1, x_true.shape[-1])
    A = np.concatenate([X, np.ones((len(X), 1))], 1)
    coef, *_ = np.linalg.lstsq(A, Y, rcond=None)
    r2 = 1 - ((A @ coef - Y) ** 2).sum() / ((Y - Y.mean(0)) ** 2).sum()
    return coef[:-1], coef[-1], float(r2)


def drift_recovery(model, samples, x_true, true_drift, grid_size=20, num_draws=200, level=0.9,
                   seed=0, pad=0.0):
    """Posterior-mean drift MSE and coverage of the true drift by the central ``level`` band.

    The model's latents are aligned to the truth by an affine map fitted on the posterior-mean
    path (x_true ~ x_model M + c); the true drift on a grid over the visited region (box of the
    true path) is compared with the model drift pushed through the map:
    f_true(g) vs M^T f_model(h), h = (g - c) M^{-1}. Every posterior draw uses one exact draw of
    the collapsed weights, so the band includes the GP's conditional uncertainty.

    Returns a dict: mse, mse_relative (MSE / mean squared true drift), coverage, grid points,
    the aligned posterior-mean drift and the map (M, c).
    """
    xm = samples["x"].mean(0)
    s = getattr(model, "substeps", 1)
    M, c, r2 = affine_align(xm[..., ::s, :], x_true)
    Minv = np.linalg.inv(M)
    pts = np.asarray(x_true).reshape(-1, M.shape[0])
    lo, hi = pts.min(0) - pad, pts.max(0) + pad
    axes = [np.linspace(lo[d], hi[d], grid_size) for d in range(len(lo))]
    g = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(lo))
    # keep grid points near the visited path (the drift is only identified there)
    d2 = ((g[:, None, :] - pts[None, :: max(1, len(pts) // 2000)]) ** 2).sum(-1).min(1)
    span = np.linalg.norm(hi - lo)
    g = g[d2 < (0.05 * span) ** 2]
    h = (g - c) @ Minv
    S = samples["x"].shape[0]
    idx = np.linspace(0, S - 1, min(num_draws, S)).round().astype(int)
    keys = jax.random.split(jax.random.key(seed), len(idx))
    seq = set(model.sequence_sites)
    hj = jnp.asarray(h)

    @jax.jit
    def one(params, key):
        p = dict(params)
        p["drift_weights"] = model.sample_drift_weights(p, key)
        return model.drift(p, hj)

    fs = []
    for i, k in zip(idx, keys, strict=True):
        p = {n: jnp.asarray(v[i]) for n, v in samples.items() if n not in seq}
        fs.append(np.asarray(one(p, k)) @ M)  # model velocity pushed to truth coordinates
    fs = np.stack(fs)
    ft = np.asarray(true_drift(jnp.asarray(g)))
    fmean = fs.mean(0)
    mse = float(((fmean - ft) ** 2).sum(-1).mean())
    lo_q, hi_q = np.quantile(fs, [(1 - level) / 2, (1 + level) / 2], axis=0)
    cover = float(((ft >= lo_q) & (ft <= hi_q)).mean())
    return {"mse": mse, "mse_relative": mse / float((ft**2).sum(-1).mean()), "coverage": cover,
            "align_r2": r2, "grid": g, "drift_mean": fmean, "drift_true": ft, "M": M, "c": c,
            "num_grid_points": len(g)}


def boundary_location(model, samples, M, c, x2_values=None, num_draws=100):
    """Where the learned partition switches along x1 (truth coordinates), at x2 = 0 by default:
    the posterior mean of the x1 where the regime-0 probability crosses 1/2, per draw."""
    Minv = np.linalg.inv(M)
    x1 = np.linspace(-8, 8, 801)
    x2 = np.zeros_like(x1) if x2_values is None else x2_values
    g = np.stack([x1, x2], -1)
    h = jnp.asarray((g - c) @ Minv)
    S = samples["x"].shape[0]
    idx = np.linspace(0, S - 1, min(num_draws, S)).round().astype(int)
    seq = set(model.sequence_sites)
    out = []
    for i in idx:
        p = {n: jnp.asarray(v[i]) for n, v in samples.items() if n not in seq}
        pi = np.asarray(model.regimes(p, h))[:, 0]
        cross = np.where(np.diff(np.sign(pi - 0.5)) != 0)[0]
        if len(cross):
            j = cross[np.argmin(np.abs(x1[cross]))]
            out.append(x1[j])
    out = np.asarray(out)
    return {"boundary_x1_mean": float(out.mean()) if len(out) else float("nan"),
            "boundary_x1_sd": float(out.std()) if len(out) else float("nan"),
            "fraction_with_boundary": len(out) / len(idx)}
