"""Model comparison for state-space models that means what it says: PSIS-LFO on the one-step-ahead
predictive density with the discrete states and the latent path integrated out.

What ``arviz.loo`` on a fit's ``log_likelihood`` group estimates
----------------------------------------------------------------
The pointwise group (:class:`zoo.handlers.pointwise`) holds one term per time step whose sum over
time is the log-likelihood of the program's observed site, and what a term is depends on the
model:

- **HMM and LDS** (states summed out by the forward algorithm, path integrated out by the Kalman
  filter): the term is the exact one-step-ahead predictive log density
  log p(y_t | y_{1:t-1}, theta). ``az.loo`` on it removes the *factor* p(y_t | y_{1:t-1}, theta)
  from the likelihood, but the later factors p(y_s | y_{1:s-1}, theta), s > t, still condition on
  y_t, so the weights do not give p(theta | y without y_t): the number is neither leave-one-out
  (log p(y_t | y_{-t}), the state smoothed from both sides) nor leave-future-out.
- **SLDS, rSLDS, GP-SLDS, GP-SDE** (the path x is a posterior variable): the term is
  log p(y_t | x_t, theta), conditional on the sampled path. ``az.loo`` then estimates
  sum_t log p(y_t | y_{-t}) with the path at t treated as a parameter, i.e. how well the
  neighbours of t (past *and* future) interpolate y_t; since x_t is informed mostly by y_t
  itself, the importance weights are heavy-tailed and many Pareto k exceed 0.7 (40 % on a small
  SLDS fit was seen), so the estimate is also unreliable.

Neither is a forecast. For time series the question is how well the model predicts the next
observation from the past: the leave-future-out elpd sum_{t >= L} log p(y_t | y_{1:t-1}), where
each term averages p(y_t | y_{1:t-1}, theta) (states and path integrated out) over the
posterior given y_{1:t-1} only.

What this module computes
-------------------------
- :func:`one_step_log_likelihood`: log p(y_t | y_{1:t-1}, theta) for every posterior draw --
  *exact* for the HMM and the LDS (the forward filter / Kalman filter terms of the program's
  pointwise group), and a *particle-filter estimate* for the SLDS and rSLDS
  (:func:`particle_filter_log_likelihood`: a bootstrap particle filter over (z_t, x_t) given the
  draw's parameters; the product of its per-step terms is an unbiased estimate of p(y_{1:t} |
  theta), each log term has a small downward bias and Monte Carlo noise that shrinks with the
  number of particles). The GP models have no one-step predictive here yet.
- :func:`psis_lfo`: approximate leave-future-out cross-validation (PSIS-LFO, Buerkner, Gabry and
  Vehtari 2020), one step ahead: the model is fitted on y_{1:L} (the later steps set to missing,
  so every refit runs the same compiled program), its posterior is carried forward by
  Pareto-smoothed importance sampling with the ratios prod p(y_s | y_{1:s-1}, theta) of the steps
  added since the last fit, and refitted when Pareto k exceeds 0.7. The LFO algorithm and its
  Pareto smoothing are ArviZ's (``arviz_stats.lfo_cv``, ``psislw``); this module supplies the
  refits (:func:`inference.fit` with the original fit's settings) and the one-step densities.
- :func:`compare`: a table over several fits (``arviz_stats.compare`` on the LFO results): elpd,
  its standard error, the difference to the best model and the standard error of that difference
  (from the per-step differences, so it accounts for the correlation between models).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping

import arviz_stats as azs
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import xarray as xr
from arviz_stats import SamplingWrapper
from jax.scipy.special import logsumexp
from numpyro import handlers

from inference.convert import pointwise_log_likelihood
from inference.predictive import fit_model_kwargs, observed_array
from inference.program import inspect_program
from zoo.lds import LDS
from zoo.protocol import Program, as_model
from zoo.slds import SLDS

__all__ = ["one_step_log_likelihood", "particle_filter_log_likelihood", "psis_lfo", "compare",
           "one_step_kind"]

_LINKS = {"softplus": jax.nn.softplus, "exp": jnp.exp}


def _zoo_model(model):
    """The zoo model behind ``model`` (the wrapped one of a plain program's adapter)."""
    proto = as_model(model)
    if isinstance(proto, Program) and proto.inner is not None:
        return proto.inner
    return proto


def one_step_kind(model: Callable, y, model_kwargs: Mapping | None = None) -> str:
    """How :func:`one_step_log_likelihood` gets log p(y_t | y_{1:t-1}, theta) for this model.

    Returns
    -------
    str
        ``"exact"`` when the program's pointwise terms are already one-step-ahead (no latent
        sequence site: the HMM, the collapsed LDS), ``"particle_filter"`` for the SLDS and rSLDS.

    Raises
    ------
    NotImplementedError
        For models with a latent path and no particle filter here (the GP models).
    """
    kwargs = {k: v for k, v in dict(model_kwargs or {}).items() if v is not None}
    info = inspect_program(model, np.asarray(y, dtype=float), kwargs)
    proto = as_model(model)
    if not [s for s in info.latent if s in proto.sequence_sites]:
        return "exact"
    inner = _zoo_model(model)
    if isinstance(inner, SLDS):
        return "particle_filter"
    if isinstance(model, LDS):
        return "exact"  # evaluated with the path collapsed
    raise NotImplementedError(
        f"one-step-ahead predictive densities are not available for {type(inner).__name__}: its "
        "pointwise log-likelihood is conditional on the sampled path and no particle filter is "
        "written for it (exact for HMM and LDS, particle filter for SLDS and rSLDS)")


# ----------------------------------------------------------------------------------------------
# particle filter (SLDS, rSLDS)
# ----------------------------------------------------------------------------------------------


def _systematic(key, log_w):
    P = log_w.shape[0]
    w = jnp.exp(log_w - logsumexp(log_w))
    u = (jax.random.uniform(key) + jnp.arange(P)) / P
    return jnp.clip(jnp.searchsorted(jnp.cumsum(w), u), 0, P - 1)


def _pf_single(key, y, mask, dyn, em, num_particles: int):
    """Bootstrap particle filter for one sequence y (T, N): per-step log p-hat(y_t | y_{1:t-1}).

    dyn: log_init (K,), A (K, D, D), b (T, K, D), L (K, D, D), init_mean (K, D), init_L (K, D, D),
    log_P (K, K) or None, R (K, D) or None, r (T, K). em: (C (N, D), d (T, N), log_density(eta, y)).
    """
    log_init, A, b, L, m0, L0, log_P, R, r = dyn
    C, d, log_density = em
    P = num_particles
    T = y.shape[0]
    D = A.shape[-1]
    missing = jnp.isnan(y)
    y_safe = jnp.where(missing, 0.0, y)

    def emission(x, t):
        eta = x @ C.T + d[t]  # (P, N)
        lp = log_density(eta, y_safe[t])
        lp = jnp.where(missing[t], 0.0, lp).sum(-1)
        return jnp.where(mask[t], lp, 0.0)

    k0, k1, k2 = jax.random.split(key, 3)
    z = jax.random.categorical(k0, log_init, shape=(P,))
    x = m0[z] + jnp.einsum("pij,pj->pi", L0[z], jax.random.normal(k1, (P, D), y.dtype))
    lw = emission(x, 0)
    ll0 = logsumexp(lw) - math.log(P)

    def step(carry, inp):
        z, x, lw = carry
        kk, t = inp
        ka, kb, kc = jax.random.split(kk, 3)
        a = _systematic(ka, lw)
        z, x = z[a], x[a]
        if R is None:
            logits = log_P[z]
        else:
            logits = x @ R.T + r[t]
            if log_P is not None:
                logits = logits + log_P[z]
        z = jax.random.categorical(kb, logits, axis=-1)
        noise = jnp.einsum("pij,pj->pi", L[z], jax.random.normal(kc, (P, D), x.dtype))
        x = jnp.einsum("pij,pj->pi", A[z], x) + b[t][z] + noise
        lw = emission(x, t)
        return (z, x, lw), logsumexp(lw) - math.log(P)

    _, lls = jax.lax.scan(step, (z, x, lw), (jax.random.split(k2, T - 1), jnp.arange(1, T)))
    return jnp.concatenate([ll0[None], lls])


def _slds_pieces(model, draw, y, kwargs):
    """The path distribution and emission parameters of one draw, read from the program's trace
    (so conditioned values, inputs and the recurrent transitions come from the program)."""
    inner = _zoo_model(model)
    tr = handlers.trace(handlers.substitute(handlers.seed(model, jax.random.key(0)), data=draw)).get_trace(
        y, **kwargs)
    fn = tr["x"]["fn"]
    T = y.shape[-2]
    batch = y.shape[:-2]
    K, D = fn.A.shape[0], fn.A.shape[-1]
    b = jnp.asarray(fn.b)
    b = jnp.broadcast_to(b, batch + (T, K, D))
    r = jnp.zeros(K, b.dtype) if fn.r is None else jnp.asarray(fn.r)
    r = jnp.broadcast_to(r, batch + (T, K))
    C = jnp.asarray(tr["emission_matrix"]["value"])
    d = jnp.asarray(tr["emission_bias"]["value"])
    if "input_emissions" in tr:
        d = d + jnp.asarray(kwargs["inputs"]) @ jnp.asarray(tr["input_emissions"]["value"]).T
    d = jnp.broadcast_to(d, batch + (T, C.shape[0]))
    if inner.emissions == "gaussian":
        rn = jnp.asarray(tr["emission_noise"]["value"])

        def log_density(eta, yt):
            return -0.5 * ((yt - eta) / rn) ** 2 - jnp.log(rn) - 0.5 * math.log(2 * math.pi)
    else:
        link, bin_size = _LINKS[inner.link], inner.bin_size

        def log_density(eta, yt):
            rate = bin_size * link(eta)
            return yt * jnp.log(rate) - rate - jax.scipy.special.gammaln(yt + 1.0)

    log_P = None if fn.log_P is None else jnp.asarray(fn.log_P)
    R = None if fn.R is None else jnp.asarray(fn.R)
    dyn = (jnp.asarray(fn.log_init), jnp.asarray(fn.A), b, jnp.asarray(fn.scale_tril),
           jnp.asarray(fn.init_mean), jnp.asarray(fn.init_scale_tril), log_P, R, r)
    return dyn, (C, d, log_density)


def particle_filter_log_likelihood(model: Callable, samples: Mapping, y, *, model_kwargs=None,
                                   num_particles: int = 1000, seed: int = 0,
                                   batch_size: int = 16) -> np.ndarray:
    """Particle-filter *estimate* of log p(y_t | y_{1:t-1}, theta) for every draw (SLDS, rSLDS).

    A bootstrap particle filter over (z_t, x_t): particles are drawn from the program's own
    transitions (including the rSLDS's x-dependent ones and inputs), weighted by the emission
    density of y_t (NaN entries and padded steps contribute nothing) and resampled
    (systematically) at every step, all in one ``jax.lax.scan``. The per-step term is
    log mean_p w_t^p. Their sum is the log of an unbiased estimate of p(y_{1:T} | theta), so each
    term is an estimate with Monte Carlo error (and a small downward bias from the log) of order
    1 / num_particles in variance; it is not exact. Particles degenerate when the emission is far
    more informative than the dynamics noise; raise ``num_particles`` until the result stops
    changing.

    Parameters
    ----------
    model : SLDS or RSLDS (possibly wrapped in NumPyro handlers)
    samples : mapping name -> array (C, S, ...)
        Posterior draws (latent and deterministic sites; the path ``x`` is not needed).
    y : array (T, N) or (B, T, N)
    model_kwargs : mapping, optional
        ``mask``, ``inputs``.
    num_particles : int
    seed : int
    batch_size : int
        Draws filtered together per step of a ``lax.map``.

    Returns
    -------
    array (C, S, [B,] T)
    """
    kwargs = {k: v for k, v in dict(model_kwargs or {}).items() if v is not None}
    y = jnp.asarray(np.asarray(y, dtype=float))
    T = y.shape[-2]
    batch = y.shape[:-2]
    mask = jnp.ones(batch + (T,), bool) if kwargs.get("mask") is None else jnp.asarray(kwargs["mask"])
    first = next(iter(samples.values()))
    C_, S_ = np.shape(first)[:2]
    flat = {k: jnp.reshape(jnp.asarray(v), (C_ * S_,) + np.shape(v)[2:]) for k, v in samples.items()}
    if "x" not in flat:
        flat["x"] = jnp.zeros((C_ * S_,) + batch + (T, _zoo_model(model).latent_dim), y.dtype)
    run_kwargs = {**kwargs, **as_model(model).prepare(np.asarray(y), kwargs)}
    key = jax.random.key(seed)

    def one(args):
        i, draw = args
        dyn, em = _slds_pieces(model, draw, y, run_kwargs)
        k = jax.random.fold_in(key, i)
        if not batch:
            return _pf_single(k, y, mask, dyn, em, num_particles)
        log_init, A, b, L, m0, L0, log_P, R, r = dyn
        Cm, d, dens = em
        B = batch[0]

        def trial(kb, yb, mb, bb, rb, db):
            return _pf_single(kb, yb, mb, (log_init, A, bb, L, m0, L0, log_P, R, rb), (Cm, db, dens),
                              num_particles)

        return jax.vmap(trial)(jax.random.split(k, B), y, mask, b, r, d)

    fn = jax.jit(lambda idx, fl: jax.lax.map(one, (idx, fl), batch_size=min(batch_size, C_ * S_)))
    out = fn(jnp.arange(C_ * S_), flat)
    return np.asarray(out).reshape((C_, S_) + out.shape[1:])


# ----------------------------------------------------------------------------------------------
# one-step-ahead predictive densities
# ----------------------------------------------------------------------------------------------


def _draws(post: xr.DataTree, names) -> dict:
    ds = post["posterior"].to_dataset()
    return {k: np.asarray(ds[k].transpose("chain", "draw", ...).values) for k in names if k in ds}


def one_step_log_likelihood(model: Callable, post: xr.DataTree, y=None, *,
                            model_kwargs: Mapping | None = None, num_particles: int = 1000,
                            seed: int = 0) -> xr.DataArray:
    """log p(y_t | y_{1:t-1}, theta) for every posterior draw, states and path integrated out.

    Exact for the HMM and the LDS (forward filter / Kalman filter: the program's pointwise
    terms); a particle-filter estimate for the SLDS and rSLDS
    (:func:`particle_filter_log_likelihood`). Trials of batched data are summed at each step
    (they are independent given theta, so the sum is the joint one-step density of step t).

    Parameters
    ----------
    model : callable
        The model that was fitted.
    post : xarray.DataTree
        Its fit (``posterior``, and ``observed_data`` when ``y`` is not given).
    y : array (T, N) or (B, T, N), optional
        Data to evaluate (default: the fit's ``observed_data``); a refit on the first steps is
        evaluated on the whole series this way.
    model_kwargs : mapping, optional
        Defaults to ``mask`` and ``inputs`` from ``constant_data``.
    num_particles : int
        Particles for the particle filter (ignored when exact).
    seed : int
        Particle filter randomness.

    Returns
    -------
    xarray.DataArray (chain, draw, time)
        Attribute ``one_step``: ``"exact"`` or ``"particle_filter"``.
    """
    y = observed_array(post) if y is None else np.asarray(y, dtype=float)
    kwargs = fit_model_kwargs(post, model_kwargs)
    kind = one_step_kind(model, y, kwargs)
    if kind == "exact":
        target = dataclasses.replace(model, collapse=True) if isinstance(model, LDS) else model
        info = inspect_program(target, y, kwargs)
        latent = _draws(post, info.latent)
        absent = sorted(set(info.latent) - set(latent))
        if absent:
            raise ValueError(f"the posterior lacks the latent sites {absent} of the model")
        ll = pointwise_log_likelihood(target, latent, y, info.observed, kwargs)
        arr = sum(np.asarray(v, dtype=np.float64) for v in ll.values())
    else:
        ds = post["posterior"].to_dataset()
        names = [k for k in ds.data_vars if k not in ("x", "z", "x_whitened")]
        arr = particle_filter_log_likelihood(model, _draws(post, names), y, model_kwargs=kwargs,
                                             num_particles=num_particles, seed=seed)
        arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim == 4:
        arr = arr.sum(axis=2)
    C, S, T = arr.shape
    return xr.DataArray(arr, dims=("chain", "draw", "time"),
                        coords={"chain": np.arange(C), "draw": np.arange(S), "time": np.arange(T)},
                        name="y", attrs={"one_step": kind})


# ----------------------------------------------------------------------------------------------
# PSIS-LFO
# ----------------------------------------------------------------------------------------------


def _fit_options(post: xr.DataTree, overrides: Mapping | None) -> dict:
    """inference.fit settings of the original fit, from its attributes, with overrides."""
    a = post.attrs
    opts = {"method": a.get("method", "auto"), "seed": int(a.get("seed", 0))}
    for name in ("num_chains", "num_warmup", "num_samples"):
        if name in a:
            opts[name] = int(a[name])
    if a.get("chain_method") in ("parallel", "vectorized", "sequential"):
        opts["chain_method"] = a["chain_method"]
    options = a.get("options", {})
    if isinstance(options, str):
        try:
            options = json.loads(options)
        except ValueError:
            options = {}
    opts.update({k: v for k, v in dict(options or {}).items() if k not in ("log_likelihood", "shard_trials")})
    opts.update(dict(overrides or {}))
    opts.update(log_likelihood=False, progress_bar=False)
    return opts


class ZooRefitWrapper(SamplingWrapper):
    """Refits for ``arviz_stats.lfo_cv``: the model fitted on the first steps of the series.

    The left-out future is set to missing (NaN) instead of cut off, so every refit has the same
    shapes and reuses the compiled sampler (the posterior of the parameters is the same: missing
    steps contribute nothing to the likelihood). The refit's one-step densities are evaluated on
    the whole series (:func:`one_step_log_likelihood`).
    """

    def __init__(self, model, y, model_kwargs, fit_options, num_particles=1000, seed=0):
        super().__init__(model)
        self.y = np.asarray(y, dtype=float)
        self.model_kwargs = dict(model_kwargs)
        self.fit_options = dict(fit_options)
        self.num_particles = num_particles
        self.seed = seed
        self.num_fits = 0

    def sel_observations(self, idx):
        idx = np.asarray(idx, dtype=int)
        train = self.y.copy()
        train[..., idx, :] = np.nan
        return train, idx

    def sample(self, modified_observed_data):
        from inference.fit import fit

        self.num_fits += 1
        return fit(self.model, modified_observed_data, model_kwargs=self.model_kwargs or None,
                   **self.fit_options)

    def get_inference_data(self, fitted_model):
        return fitted_model

    def log_likelihood__i(self, excluded_obs, idata__i):
        ll = one_step_log_likelihood(self.model, idata__i, self.y, model_kwargs=self.model_kwargs,
                                     num_particles=self.num_particles, seed=self.seed)
        return ll.isel(time=np.asarray(excluded_obs, dtype=int))


def psis_lfo(model: Callable, post: xr.DataTree, *, min_observations: int, method: str = "approx",
             k_threshold: float = 0.7, fit_options: Mapping | None = None,
             model_kwargs: Mapping | None = None, num_particles: int = 1000, seed: int = 0):
    """Leave-future-out elpd of one-step-ahead predictions (PSIS-LFO, Buerkner et al. 2020).

    elpd_LFO = sum_{t >= L} log p(y_t | y_{1:t-1}), each term averaging the one-step density
    p(y_t | y_{1:t-1}, theta) (states and path integrated out: exact for HMM and LDS, particle
    filter for SLDS and rSLDS, see :func:`one_step_log_likelihood`) over the posterior given
    y_{1:t-1}. ``method="approx"``: one fit on y_{1:L}, carried forward by Pareto-smoothed
    importance sampling and refitted where Pareto k > ``k_threshold``; ``"exact"``: a refit at
    every step (the brute-force reference). Computed by ``arviz_stats.lfo_cv`` with
    :class:`ZooRefitWrapper` refits (time indices are 0-based: the first prediction is of
    ``y[min_observations]``).

    Parameters
    ----------
    model : callable
        The model that was fitted.
    post : xarray.DataTree
        Its fit on the whole series (:func:`inference.fit`).
    min_observations : int
        L: steps in the first training set.
    method : {"approx", "exact"}
    k_threshold : float
        Refit when Pareto k exceeds it.
    fit_options : mapping, optional
        :func:`inference.fit` arguments for the refits; the fit's own (``method``,
        ``num_chains``, ``num_warmup``, ``num_samples``, ``seed`` and method options, from its
        attributes) by default.
    model_kwargs : mapping, optional
        Defaults to ``mask`` and ``inputs`` from ``constant_data``.
    num_particles, seed : int
        Particle filter settings (SLDS, rSLDS).

    Returns
    -------
    arviz_stats.ELPDDataLFO
        ``elpd``, ``se``, ``p``, ``elpd_i`` and ``pareto_k`` per step, ``refits``,
        ``n_refits``; extra attributes ``one_step`` ("exact" or "particle_filter") and
        ``num_fits`` (model fits run, the first one on y_{1:L} included).

    Notes
    -----
    Cost: one :func:`inference.fit` per refit (measured: 6-24 refits over 100 predicted steps
    for HMMs with 2-6 states). Each fit leaves about 2000 memory mappings of compiled code in the
    process, and Linux's default limit (``vm.max_map_count`` = 65530) was reached after about 30
    fits ("LLVM compilation error: Cannot allocate memory"): compare many models in separate
    processes (as ``benchmarks/model_comparison.py`` does). A persistent JAX compilation cache
    (``jax_compilation_cache_dir``) makes refits after the first cheap (33 s -> 2 s per HMM fit
    here), since every refit has the same shapes.
    """
    y = observed_array(post)
    kwargs = fit_model_kwargs(post, model_kwargs)
    ll = one_step_log_likelihood(model, post, y, model_kwargs=kwargs, num_particles=num_particles,
                                 seed=seed)
    data = xr.DataTree.from_dict({"posterior": post["posterior"].to_dataset(),
                                  "log_likelihood": xr.Dataset({"y": ll})})
    wrapper = ZooRefitWrapper(model, y, kwargs, _fit_options(post, fit_options), num_particles, seed)
    res = azs.lfo_cv(data, wrapper, min_observations=int(min_observations), forecast_horizon=1,
                     time_dim="time", pointwise=True, var_name="y", method=method,
                     k_threshold=k_threshold)
    res.one_step = ll.attrs["one_step"]
    res.num_fits = wrapper.num_fits
    return res


def compare(fits: Mapping, *, min_observations: int | None = None, **lfo_options) -> pd.DataFrame:
    """Compare models on the same series by their PSIS-LFO elpd.

    Parameters
    ----------
    fits : mapping name -> ELPDDataLFO or (model, post)
        Precomputed :func:`psis_lfo` results, or fits to run it on (all with the same
        ``min_observations``).
    min_observations : int, optional
        Needed when ``fits`` holds (model, post) pairs.
    **lfo_options
        Passed to :func:`psis_lfo`.

    Returns
    -------
    pandas.DataFrame
        One row per model, best first: ``elpd``, ``se``, ``elpd_diff`` (to the best, <= 0),
        ``dse`` (standard error of the difference, from the per-step differences), ``rank``,
        ``p`` and ``weight`` (stacking) from ``arviz_stats.compare``, and ``n_refits``,
        ``one_step`` ("exact" or "particle_filter").
    """
    results = {}
    for name, item in fits.items():
        if isinstance(item, tuple):
            if min_observations is None:
                raise ValueError("compare: give min_observations to run psis_lfo on (model, post) pairs")
            item = psis_lfo(item[0], item[1], min_observations=min_observations, **lfo_options)
        results[name] = item
    table = azs.compare(results, round_to="none")
    table["n_refits"] = [int(results[n].n_refits) for n in table.index]
    table["one_step"] = [getattr(results[n], "one_step", "") for n in table.index]
    first = ["elpd", "se", "elpd_diff", "dse"]
    return table[first + [c for c in table.columns if c not in first]]
