"""Prior and posterior predictive groups for any zoo fit, and the count rootogram.

The groups are drawn with the model's own program through NumPyro's ``Predictive``:

- ``prior`` and ``prior_predictive``: the program run with ``y=None`` (its prior predictive, the
  model protocol's ``m(None, num_steps=T)``), every latent and deterministic site in ``prior``
  and the observed site (``y``) in ``prior_predictive``;
- ``posterior_predictive``: the same program with each posterior draw's sites substituted and
  ``y`` sampled. What is replicated is what the program samples given the posterior's sites:
  for the SLDS, rSLDS and the GP models the path ``x`` is a posterior variable, so y_rep is
  drawn given the draw's path and parameters (the states are summed out of the program, so the
  draw of y given x does not need them); for the HMM and the collapsed LDS the states or the
  path are not posterior variables, so the program draws them fresh given the parameters and
  y_rep is a whole new sequence from p(y | theta).

Every group has the dims and coords of the fit's ``posterior`` and ``observed_data`` groups
(``y`` keeps its name, so ArviZ pairs ``posterior_predictive.y`` with ``observed_data.y``):
``arviz_plots.plot_ppc_dist``, ``plot_ppc_rootogram``, ``arviz_stats.loo_pit`` and the other
predictive checks run on the tree that :func:`add_predictive` returns.

Model arguments (``mask``, ``inputs``) are read from the fit's ``constant_data`` group unless
given; what the model derives from the data once (:meth:`zoo.protocol.Model.prepare`, e.g. the
SLDS's latent frame) is derived from ``observed_data`` as :func:`inference.fit` did, so the
program's deterministic sites mean the same as in the fit. Replicates at padded steps (``mask``
False) are draws for steps that do not exist; ignore them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from numpyro.infer import Predictive

from inference.convert import draws_group
from inference.program import check_y, inspect_program
from zoo.protocol import as_model

__all__ = ["prior_predictive", "posterior_predictive", "add_predictive", "rootogram",
           "plot_rootogram", "loo_pit", "observed_array", "fit_model_kwargs"]

_KWARG_NAMES = ("mask", "inputs")


def observed_array(post: xr.DataTree, var_name: str | None = None) -> np.ndarray:
    """The observations of a fit, (T, N) or (B, T, N), from its ``observed_data`` group."""
    obs = post["observed_data"].to_dataset()
    name = var_name or next(iter(obs.data_vars))
    da = obs[name]
    dims = post.attrs.get("observed_dims")
    if isinstance(dims, str) and dims and set(dims.split(",")) == set(da.dims):
        da = da.transpose(*dims.split(","))
    return np.asarray(da.values, dtype=float)


def fit_model_kwargs(post: xr.DataTree, model_kwargs: Mapping | None = None) -> dict:
    """Model arguments of a fit: ``model_kwargs`` if given, else ``mask`` and ``inputs`` from
    its ``constant_data`` group."""
    if model_kwargs is not None:
        return {k: v for k, v in dict(model_kwargs).items() if v is not None}
    out = {}
    if "constant_data" in post.children:
        const = post["constant_data"].to_dataset()
        for name in _KWARG_NAMES:
            if name in const:
                out[name] = np.asarray(const[name].values)
    return out


def _sizes(y: np.ndarray) -> dict:
    return {"num_steps": int(y.shape[-2]), "num_trials": int(y.shape[0]) if y.ndim == 3 else None}


def prior_predictive(model: Callable, y=None, *, num_samples: int = 500, seed: int = 0,
                     num_steps: int | None = None, num_trials: int | None = None,
                     model_kwargs: Mapping | None = None) -> xr.DataTree:
    """Draws from the program's prior: the ``prior`` and ``prior_predictive`` groups.

    Parameters
    ----------
    model : callable
        A zoo model (or a NumPyro program following the model protocol).
    y : array (T, N) or (B, T, N), optional
        Data the prior is for: sizes, coords and what the model derives from the data (the
        SLDS's latent frame). Without it give ``num_steps`` (and ``num_trials``).
    num_samples : int
        Draws (one chain).
    seed : int
    num_steps, num_trials : int, optional
        Sizes when ``y`` is None.
    model_kwargs : mapping, optional
        ``mask``, ``inputs``.

    Returns
    -------
    xarray.DataTree
        Groups ``prior`` (latent and deterministic sites, (1, S, ...)) and
        ``prior_predictive`` (the observed site, named as in ``observed_data``).
    """
    proto = as_model(model)
    kwargs = {k: v for k, v in dict(model_kwargs or {}).items() if v is not None}
    if y is not None:
        y = check_y(y)
        sizes = _sizes(y)
        run_kwargs = {**kwargs, **proto.prepare(y, kwargs)}
    else:
        if num_steps is None:
            raise ValueError("prior_predictive needs y or num_steps")
        sizes = {"num_steps": num_steps, "num_trials": num_trials}
        run_kwargs = kwargs
    pred = Predictive(model, num_samples=int(num_samples), parallel=True)
    draws = pred(jax.random.key(seed), None, **sizes, **run_kwargs)
    draws = {k: np.asarray(v)[None] for k, v in draws.items()}
    if y is None:  # a prior draw stands in for the data: shapes and coords
        if "y" not in draws:
            raise ValueError("prior_predictive: the program has no site 'y'; pass y")
        y = np.asarray(draws["y"][0, 0], dtype=float)
    info = inspect_program(model, y, kwargs)
    observed = {k: v for k, v in draws.items() if k in info.observed}
    latent = {k: v for k, v in draws.items() if k not in info.observed}
    groups = {"prior": draws_group(model, latent, y, model_kwargs=kwargs, info=info),
              "prior_predictive": draws_group(model, observed, y, model_kwargs=kwargs, info=info)}
    return xr.DataTree.from_dict(groups)


def posterior_predictive(model: Callable, post: xr.DataTree, *, seed: int = 0,
                         model_kwargs: Mapping | None = None, var_names=None) -> xr.Dataset:
    """Replicated observations for every posterior draw: the ``posterior_predictive`` group.

    Each draw's posterior variables are substituted into the program, run with ``y=None`` at the
    data's sizes (see the module docstring for what is replicated given what).

    Parameters
    ----------
    model : callable
        The model that was fitted.
    post : xarray.DataTree
        A fit (:func:`inference.fit`): ``posterior`` and ``observed_data``.
    seed : int
    model_kwargs : mapping, optional
        Defaults to ``mask`` and ``inputs`` from ``constant_data``.
    var_names : sequence of str, optional
        Posterior variables to substitute (default: all).

    Returns
    -------
    xarray.Dataset
        The observed site(s) with dims (chain, draw, [trial,] time, neuron), coords as in
        ``observed_data``.
    """
    y = observed_array(post)
    kwargs = fit_model_kwargs(post, model_kwargs)
    info = inspect_program(model, y, kwargs)
    proto = as_model(model)
    run_kwargs = {**kwargs, **proto.prepare(y, kwargs)}
    ds = post["posterior"].to_dataset()
    names = list(var_names) if var_names is not None else list(ds.data_vars)
    samples = {k: jnp.asarray(ds[k].transpose("chain", "draw", ...).values) for k in names}
    pred = Predictive(model, posterior_samples=samples, batch_ndims=2, parallel=True,
                      return_sites=list(info.observed))
    out = pred(jax.random.key(seed), None, **_sizes(y), **run_kwargs)
    draws = {k: np.asarray(v) for k, v in out.items()}
    return draws_group(model, draws, y, model_kwargs=kwargs, info=info)


def add_predictive(post: xr.DataTree, model: Callable, *, prior: bool = True,
                   posterior: bool = True, num_prior_samples: int | None = None, seed: int = 0,
                   model_kwargs: Mapping | None = None) -> xr.DataTree:
    """A copy of a fit with ``prior``, ``prior_predictive`` and ``posterior_predictive`` groups.

    Parameters
    ----------
    post : xarray.DataTree
        A fit (:func:`inference.fit`).
    model : callable
        The model that was fitted.
    prior, posterior : bool
        Which groups to add.
    num_prior_samples : int, optional
        Prior draws (default: the number of posterior draws, chains pooled).
    seed : int
    model_kwargs : mapping, optional
        Defaults to ``mask`` and ``inputs`` from ``constant_data``.

    Returns
    -------
    xarray.DataTree
        The fit's groups plus the requested ones (existing groups of the same name replaced).
        Count observations without missing entries are stored as integers in its
        ``observed_data``, as ArviZ's discrete checks (``plot_ppc_rootogram``) require.
    """
    out = post.copy()
    y = observed_array(post)
    kwargs = fit_model_kwargs(post, model_kwargs)
    if prior:
        if num_prior_samples is None:
            sizes = post["posterior"].to_dataset().sizes
            num_prior_samples = int(sizes["chain"] * sizes["draw"])
        pri = prior_predictive(model, y, num_samples=num_prior_samples, seed=seed,
                               model_kwargs=kwargs)
        out["prior"] = pri["prior"]
        out["prior_predictive"] = pri["prior_predictive"]
    if posterior:
        pp = posterior_predictive(model, post, seed=seed + 1, model_kwargs=kwargs)
        out["posterior_predictive"] = xr.DataTree(pp)
        _integer_observations(out, pp)
    return out


def _integer_observations(tree: xr.DataTree, replicates: xr.Dataset) -> None:
    """Store count observations as integers (ArviZ's discrete checks, e.g. the rootogram, look
    at the dtype): only when the replicates are integer-valued and y has no missing entry."""
    obs = tree["observed_data"].to_dataset()
    changed = False
    for name, rep in replicates.data_vars.items():
        if name in obs and np.issubdtype(rep.dtype, np.integer):
            v = obs[name].values
            if np.isfinite(v).all() and (v == np.round(v)).all():
                obs[name] = obs[name].astype(np.int64)
                changed = True
    if changed:
        tree["observed_data"] = xr.DataTree(obs)


def loo_pit(post: xr.DataTree, var_name: str | None = None):
    """LOO-PIT of every observed entry (``arviz_stats.loo_pit``) for a zoo fit.

    The fit's pointwise log-likelihood has one term per time step while y has (time, neuron)
    entries, so ``arviz_stats.loo_pit`` cannot pair them itself: the Pareto-smoothed weights of
    leaving out time step t (``psislw`` of its term) are given to every entry of that step.
    What leaving out a term means depends on the model (see :mod:`inference.compare`): for the
    HMM and LDS it removes the one-step-ahead factor, for the path models the step's emission
    given the path, whose weights are often unreliable (check the returned Pareto k).

    Parameters
    ----------
    post : xarray.DataTree
        With ``posterior_predictive``, ``observed_data`` and ``log_likelihood``
        (:func:`add_predictive` of a fit).
    var_name : str, optional

    Returns
    -------
    (xarray.Dataset, xarray.DataArray)
        The LOO-PIT values (dims of ``observed_data``) and Pareto k per time step.
    """
    import arviz_stats as azs

    obs = post["observed_data"].to_dataset()
    name = var_name or next(iter(obs.data_vars))
    ll = post["log_likelihood"].to_dataset()[name]
    lw, k = (-ll).azstats.psislw(dim=["chain", "draw"])
    pp = post["posterior_predictive"].to_dataset()[name]
    weights = xr.Dataset({name: lw.broadcast_like(pp).transpose(*pp.dims)})
    ks = xr.Dataset({name: k.broadcast_like(obs[name]).transpose(*obs[name].dims)})
    return azs.loo_pit(post, var_names=name, log_weights=weights, pareto_k=ks), k


def rootogram(post: xr.DataTree, var_name: str | None = None, *, group: str = "posterior_predictive",
              max_count: int | None = None, prob: float = 0.9) -> xr.Dataset:
    """Observed and predicted frequency of each count, for a count model's predictive check.

    Only entries observed (not NaN) enter either frequency, so missing data do not bias it.

    Parameters
    ----------
    post : xarray.DataTree
        With ``observed_data`` and ``group`` (e.g. from :func:`add_predictive`).
    var_name : str, optional
        The observed variable (default: the first).
    group : {"posterior_predictive", "prior_predictive"}
    max_count : int, optional
        Largest count tabulated (default: the largest observed count or the 99.9 % predictive
        quantile, whichever is larger). Larger predicted counts are left out.
    prob : float
        Mass of the central credible band of the predicted frequencies.

    Returns
    -------
    xarray.Dataset
        Dim ``count`` (0 .. max_count): ``observed`` (frequency in the data), ``expected``
        (posterior predictive mean frequency), ``lower`` and ``upper`` (the band), and
        ``predicted`` (chain, draw, count): each replicate's frequencies.
    """
    if not 0 < prob < 1:
        raise ValueError(f"prob must be in (0, 1); got {prob}")
    obs_ds = post["observed_data"].to_dataset()
    name = var_name or next(iter(obs_ds.data_vars))
    obs = obs_ds[name]
    rep = post[group].to_dataset()[name].transpose("chain", "draw", *obs.dims)
    y = np.asarray(obs.values, dtype=float)
    seen = ~np.isnan(y)
    yo = y[seen]
    if yo.size == 0:
        raise ValueError("rootogram: no observed entries")
    if (yo < 0).any() or (yo != np.round(yo)).any():
        raise ValueError("rootogram needs non-negative integer counts in observed_data")
    r = np.asarray(rep.values)
    C, S = r.shape[:2]
    r = r.reshape(C * S, -1)[:, seen.reshape(-1)]
    if max_count is None:
        max_count = int(max(yo.max(), np.quantile(r, 0.999)))
    M = int(max_count) + 1
    observed = np.bincount(yo.astype(np.int64), minlength=M)[:M]
    ri = np.asarray(r, dtype=np.int64)
    keep = (ri >= 0) & (ri < M)
    flat = (np.arange(C * S)[:, None] * M + ri)[keep]
    predicted = np.bincount(flat, minlength=C * S * M).reshape(C, S, M)
    pf = predicted.reshape(C * S, M)
    lo, hi = np.quantile(pf, [(1 - prob) / 2, (1 + prob) / 2], axis=0)
    counts = np.arange(M)
    return xr.Dataset(
        {"observed": ("count", observed), "expected": ("count", pf.mean(0)),
         "lower": ("count", lo), "upper": ("count", hi),
         "predicted": (("chain", "draw", "count"), predicted)},
        coords={"count": counts, "chain": np.arange(C), "draw": np.arange(S)},
        attrs={"prob": prob, "var_name": name, "group": group, "num_entries": int(yo.size)},
    )


def plot_rootogram(rg: xr.Dataset, ax=None, *, hanging: bool = True, color: str = "C0"):
    """A hanging rootogram (Kleiber and Zeileis 2016) of :func:`rootogram`'s table.

    Bars of height sqrt(observed frequency) hang from the curve sqrt(expected frequency); a bar
    whose bottom leaves the shaded band around zero (the predicted frequencies' credible band,
    on the same scale) is a count the model predicts too often (bottom above) or too rarely
    (below). With ``hanging=False`` the bars stand on zero beside the expected curve and its band.

    Parameters
    ----------
    rg : xarray.Dataset
        From :func:`rootogram`.
    ax : matplotlib Axes, optional
    hanging : bool
    color : str

    Returns
    -------
    matplotlib Axes
    """
    import matplotlib.pyplot as plt

    ax = ax if ax is not None else plt.subplots(figsize=(6, 3.5))[1]
    c = rg["count"].values
    so, se = np.sqrt(rg["observed"].values), np.sqrt(rg["expected"].values)
    slo, shi = np.sqrt(rg["lower"].values), np.sqrt(rg["upper"].values)
    pct = round(100 * float(rg.attrs.get("prob", 0.9)))
    if hanging:
        ax.fill_between(c, se - shi, se - slo, step="mid", color="0.8",
                        label=f"{pct} % band of the predicted frequency")
        ax.bar(c, so, bottom=se - so, width=0.8, color=color, alpha=0.6, label="observed (hanging)")
        ax.axhline(0.0, color="k", lw=0.8)
    else:
        ax.fill_between(c, slo, shi, step="mid", color="0.8", label=f"{pct} % band")
        ax.bar(c, so, width=0.8, color=color, alpha=0.6, label="observed")
    ax.plot(c, se, "o-", color="C3", ms=3, lw=1.2, label="expected")
    ax.set_xlabel("count")
    ax.set_ylabel("sqrt(frequency)")
    ax.legend(fontsize=8, frameon=False)
    return ax
