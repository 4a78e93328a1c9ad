"""``inference.fit``: one entry point for NumPyro, BlackJAX, SVI and SMC on any zoo model."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping

import jax
import numpy as np
import xarray as xr
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from numpyro import handlers

from inference._program import check_y, inspect_program
from inference.convert import package_versions, to_datatree
from inference.starts import initial_positions

__all__ = ["fit", "METHODS", "shard_trials"]

METHODS = ("nuts", "hmc", "svi", "blackjax_nuts", "chees", "mclmc", "smc")
CHAIN_METHODS = ("auto", "parallel", "vectorized", "sequential")
_COMMON_OPTIONS = {"shard_trials", "log_likelihood", "init_svi_steps", "init_svi_learning_rate", "init_guide",
                   "path_reparam"}
_MCMC_METHODS = ("nuts", "hmc", "blackjax_nuts", "chees", "mclmc")


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return int(value)


def _allowed_options(method: str) -> set:
    from inference.blackjax_backend import BLACKJAX_OPTIONS
    from inference.numpyro_backend import NUMPYRO_OPTIONS
    from inference.smc import SMC_OPTIONS

    table = {**NUMPYRO_OPTIONS, **BLACKJAX_OPTIONS, "smc": SMC_OPTIONS,
             "svi": {"guide", "num_steps", "learning_rate", "num_particles", "tol"}}
    return table[method] | _COMMON_OPTIONS


def shard_trials(y, model_kwargs: Mapping, devices=None) -> tuple:
    """Place y (B, T, N) and trial-indexed model arrays on a device mesh, split along trials.

    Parameters
    ----------
    y : array (B, T, N)
    model_kwargs : mapping
        Arrays whose leading axis has length B are sharded the same way; others replicated.
    devices : sequence of jax devices, optional
        Defaults to all local devices.

    Returns
    -------
    y_sharded, model_kwargs_sharded
    """
    devices = list(devices or jax.local_devices())
    n = len(devices)
    if np.ndim(y) != 3:
        raise ValueError(f"shard_trials needs batched y of shape (B, T, N); got shape {np.shape(y)}")
    B = np.shape(y)[0]
    if B % n:
        raise ValueError(f"shard_trials: the number of trials B={B} must be divisible by the number of "
                         f"devices ({n})")
    mesh = jax.sharding.Mesh(np.array(devices), ("trial",))

    def put(a):
        a = np.asarray(a)
        spec = P("trial") if a.ndim >= 1 and a.shape[0] == B else P()
        return jax.device_put(a, NamedSharding(mesh, spec))

    return put(y), {k: put(v) for k, v in model_kwargs.items()}


def _resolve_chain_method(chain_method: str, num_chains: int) -> str:
    if chain_method not in CHAIN_METHODS:
        raise ValueError(f"chain_method must be one of {CHAIN_METHODS}; got {chain_method!r}")
    if chain_method != "auto":
        return chain_method
    if num_chains == 1:
        return "sequential"
    return "parallel" if jax.local_device_count() >= num_chains else "vectorized"


def fit(
    model: Callable,
    y,
    method: str = "nuts",
    *,
    seed: int = 0,
    num_chains: int = 4,
    num_warmup: int = 500,
    num_samples: int = 500,
    init="auto",
    chain_method: str = "auto",
    progress_bar: bool = True,
    model_kwargs: Mapping | None = None,
    **options,
) -> xr.DataTree:
    """Posterior of any zoo model (or NumPyro program) as an ArviZ 1.x DataTree.

    Parameters
    ----------
    model : callable
        NumPyro program called as ``model(y, **model_kwargs)`` (a zoo model, possibly wrapped in
        NumPyro handlers such as ``condition``).
    y : array (T, N) or (B, T, N)
        Observations; NaN marks missing entries.
    method : {"nuts", "hmc", "svi", "blackjax_nuts", "chees", "mclmc", "smc"}
        NumPyro NUTS / HMC; SVI with a structured guide; BlackJAX NUTS with window adaptation;
        ChEES-HMC (many chains, vectorized); Metropolis-adjusted microcanonical Langevin with its
        tuner; adaptive tempered SMC (log evidence in ``attrs["log_evidence"]``).
    seed : int
        Random seed.
    num_chains : int
        Chains (SVI and SMC return one "chain" of independent draws / particles).
    num_warmup : int
        Warmup / adaptation steps (MCMC), ignored by SVI and SMC.
    num_samples : int
        Draws per chain (SVI: draws from the guide; SMC: particles).
    init : {"auto", "prior", "median", "svi", "pca"} or dict
        How chains start (see :func:`inference.starts.initial_positions`); recorded in
        ``attrs["initialization"]``.
    chain_method : {"auto", "parallel", "vectorized", "sequential"}
        ``"parallel"`` spreads chains over local devices; ``"auto"`` picks it when there are at
        least as many devices as chains, else ``"vectorized"``.
    progress_bar : bool
        Show progress bars (False silences them).
    model_kwargs : mapping, optional
        Extra keyword arguments for the model (``inputs``, ``mask``).
    **options
        Method options: NUTS ``target_accept_prob``, ``max_tree_depth``, ``dense_mass``;
        HMC ``num_steps`` / ``trajectory_length``; SVI ``guide`` ("structured", "auto_normal",
        "auto_mvn", "auto_delta" or an AutoGuide), ``num_steps``, ``learning_rate``, ``tol``;
        ChEES ``learning_rate``; MCLMC ``target_acceptance``; SMC ``target_ess``,
        ``num_mcmc_steps``; all: ``shard_trials`` (split y's trial axis over devices),
        ``log_likelihood`` (False skips the pointwise log-likelihood group); MCMC methods:
        ``path_reparam`` ("auto", True, False): sample a switching model's path non-centred
        around its initialisation (``model.path_reference``, :mod:`zoo.reparam`; the same
        posterior, better geometry), by default whenever the model offers it and ``init`` is
        "auto" or "pca".

    Returns
    -------
    xarray.DataTree
        ``posterior`` (C, S, ...), ``sample_stats``, ``observed_data``, ``log_likelihood``
        (C, S, [trial,] time), ``constant_data``; attributes ``method``, ``options``, ``seed``,
        ``initialization``, ``versions``, ``sampling_time``.

    Raises
    ------
    ValueError
        Unknown method or option, bad sizes, or data the model cannot take.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    num_chains = _check_int(num_chains, "num_chains", 1)
    num_samples = _check_int(num_samples, "num_samples", 1)
    num_warmup = _check_int(num_warmup, "num_warmup", 0 if method in ("svi", "smc") else 1)
    seed = _check_int(seed, "seed", 0)
    unknown = set(options) - _allowed_options(method)
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)} for method {method!r}; allowed: "
                         f"{sorted(_allowed_options(method))}")
    y = check_y(y)
    _warn_if_float32(model)
    kwargs = {k: v for k, v in dict(model_kwargs or {}).items() if v is not None}
    info = inspect_program(model, y, kwargs)
    if not info.latent:
        raise ValueError("the model has no latent sample site to infer")
    chain_method = _resolve_chain_method(chain_method, num_chains)
    log_lik = bool(options.pop("log_likelihood", True))
    sharded = bool(options.pop("shard_trials", False))
    y_run, kw_run = shard_trials(y, kwargs) if sharded else (y, kwargs)
    if callable(getattr(model, "data_frame", None)):
        # the SLDS's latent frame (zoo.frame) from the data once, not at every gradient evaluation
        kw_run = {**kw_run, "frame": model.data_frame(y, kwargs.get("mask"))}
    key_init, key_run = jax.random.split(jax.random.key(seed))
    extra_attrs: dict = {}
    t0 = time.perf_counter()
    if method == "svi":
        from inference.svi_method import fit_svi

        samples, stats, init_text, extra_attrs = fit_svi(model, y_run, kw_run, key_run, num_samples,
                                                         progress_bar, options, info)
        library = "numpyro"
    elif method == "smc":
        from inference.smc import run_smc

        samples, stats, init_text, extra_attrs = run_smc(model, y_run, kw_run, key_run, num_samples,
                                                         progress_bar, options)
        library = "blackjax"
    else:
        reference = _path_reference(model, y, kwargs, method, init, options.get("path_reparam", "auto"),
                                    key_init)
        if reference is None:
            z0, init_text = initial_positions(model, y_run, kw_run, init, key_init, num_chains, info.latent,
                                              {**options, "progress_bar": progress_bar})
        else:
            values, ref = reference
            kw_run = {**kw_run, "path_reference": ref}
            # only the latent sites are wanted (not dims), read at the start values: a prior draw
            # of the emission parameters can put float32 rates at 0 and the path at NaN
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                latent = inspect_program(handlers.substitute(model, data=values), y, kw_run).latent
            z0, _ = initial_positions(model, y_run, kw_run, {k: v for k, v in values.items() if k in latent},
                                      key_init, num_chains, latent)
            init_text = (f"all {num_chains} chain(s) started from model.initial_params (PCA of y and a fast "
                         f"point estimate), jittered by N(0, 0.01^2) in unconstrained space; the path "
                         "sampled non-centred around it (path_reference, see zoo.reparam): x = mu(theta) + "
                         "S(theta) eps with eps (x_whitened) started at 0, and the dynamics offsets "
                         "through their values at the states' centres (dynamics_bias_centred)")
        t0 = time.perf_counter()
        run_opts = {k: v for k, v in options.items() if k not in _COMMON_OPTIONS}
        if method in ("nuts", "hmc"):
            from inference.numpyro_backend import run_numpyro

            samples, stats = run_numpyro(model, y_run, kw_run, method, key_run, num_chains=num_chains,
                                         num_warmup=num_warmup, num_samples=num_samples,
                                         chain_method=chain_method, init_positions=z0,
                                         progress_bar=progress_bar, options=run_opts)
            library = "numpyro"
        else:
            from inference.blackjax_backend import run_blackjax

            samples, stats = run_blackjax(model, y_run, kw_run, method, key_run, num_chains=num_chains,
                                          num_warmup=num_warmup, num_samples=num_samples,
                                          chain_method=chain_method, init_positions=z0,
                                          progress_bar=progress_bar, options=run_opts)
            library = "blackjax"
    elapsed = time.perf_counter() - t0
    # the sampler's own coordinates of a non-centred path are not sites of the model
    samples = {k: v for k, v in samples.items() if k not in _REFERENCE_COORDINATES}
    bad_draws = _nonfinite_draws(samples)
    if bad_draws.any():
        extra_attrs["warning_nonfinite_draws_per_chain"] = bad_draws.tolist()
        warnings.warn(f"fit: {int(bad_draws.sum())} draws have NaN/inf values (per chain "
                      f"{bad_draws.tolist()}); the sampler failed there, do not use them; see "
                      "inference.diagnose", RuntimeWarning, stacklevel=2)
    attrs = {
        "method": method, "options": {k: v for k, v in options.items()}, "seed": seed,
        "num_chains": int(next(iter(samples.values())).shape[0]), "num_warmup": num_warmup,
        "num_samples": num_samples, "chain_method": chain_method if method not in ("svi", "smc") else "none",
        "initialization": init_text, "versions": package_versions(), "sampling_time": elapsed,
        "shard_trials": int(sharded), "log_likelihood_computed": int(log_lik),
        **extra_attrs,
    }
    return to_datatree(model, samples, y, sample_stats=stats, model_kwargs=kwargs,
                       log_likelihood=log_lik, attrs=attrs, library=library, info=info)


_REFERENCE_COORDINATES = ("x_whitened", "dynamics_bias_centred")


def _path_reference(model, y, kwargs: Mapping, method: str, init, path_reparam, key):
    """(start values in the non-centred coordinates, the path reference) when the path is to be
    sampled non-centred, else None.

    ``path_reparam``: "auto" (the default) uses it for MCMC methods on zoo models that offer it
    (``path_reference``), started from their own initialisation; True requires it; False never.
    """
    if path_reparam not in ("auto", True, False):
        raise ValueError(f"path_reparam must be 'auto', True or False; got {path_reparam!r}")
    able = (method in _MCMC_METHODS and callable(getattr(model, "path_reference", None))
            and (init in ("auto", "pca")))
    if path_reparam is True and not able:
        raise ValueError("path_reparam=True needs an MCMC method, init='auto' or 'pca', and a model with "
                         "path_reference (the SLDS and rSLDS, not wrapped in handlers)")
    if path_reparam is False or not able:
        return None
    values = model.initial_params(np.asarray(y), key, **kwargs)
    reference = model.path_reference(np.asarray(y), values, **kwargs)
    return model.reference_values(values, reference), reference


def _warn_if_float32(model) -> None:
    """Warn when a model conditioned for double precision (``float64_recommended``, the GP
    models) is fitted in JAX's default float32."""
    if getattr(model, "float64_recommended", False) and not jax.config.jax_enable_x64:
        warnings.warn(f"fit: {type(model).__name__} is running in float32, where its collapsed "
                      "Gaussians lose too much precision (qualitatively wrong attractor posteriors "
                      "were measured); call jax.config.update('jax_enable_x64', True) at the start "
                      "of the program", RuntimeWarning, stacklevel=3)


def _nonfinite_draws(samples: dict) -> np.ndarray:
    """Number of draws per chain with any non-finite value, (C,)."""
    per_site = [~np.isfinite(np.asarray(v, dtype=float)).reshape(np.shape(v)[:2] + (-1,)).all(-1)
                for v in samples.values() if np.size(v)]
    return np.sum(np.any(per_site, axis=0), axis=1) if per_site else np.zeros(0, int)
