"""``inference.fit``: one entry point for every inference method on any zoo model.

The data are prepared once (:class:`inference.backends.Problem`), the method is looked up in the
backend table (:mod:`inference.backends`), and its one result type becomes an ArviZ DataTree.
"""

from __future__ import annotations

import hashlib
import subprocess
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import jax
import numpy as np
import xarray as xr
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from inference.backends import COMMON_OPTIONS, Problem, Settings, backend, method_names
from inference.convert import package_versions, to_datatree
from inference.program import check_y, inspect_program
from inference.registry import record_model
from inference.starts import REFERENCE_COORDINATES
from zoo.protocol import Model, Program, as_model

__all__ = ["fit", "METHODS", "shard_trials", "allowed_options", "resolve_method", "warn_if_float32",
           "prepare_problem", "provenance"]

METHODS = method_names()
CHAIN_METHODS = ("auto", "parallel", "vectorized", "sequential")


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return int(value)


def resolve_method(model: Model, method: str) -> str:
    """The method ``"auto"`` stands for: the model's exact blocked sampler where it has one
    (:meth:`zoo.protocol.Model.blocked_sampler`), else NUTS."""
    if method != "auto":
        return method
    return "blocked" if model.blocked_sampler() is not None else "nuts"


def allowed_options(method: str) -> set:
    """Options ``fit`` accepts for ``method`` (its backend's and the common ones)."""
    if method == "auto":
        return set(COMMON_OPTIONS)
    return set(backend(method).options) | COMMON_OPTIONS


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
    method: str = "auto",
    *,
    seed: int = 0,
    num_chains: int = 4,
    num_warmup: int = 500,
    num_samples: int = 500,
    init="auto",
    chain_method: str = "auto",
    progress_bar: bool = True,
    model_kwargs: Mapping | None = None,
    precision: str = "auto",
    **options,
) -> xr.DataTree:
    """Posterior of any zoo model (or NumPyro program) as an ArviZ 1.x DataTree.

    Parameters
    ----------
    model : callable
        A zoo model (:class:`zoo.protocol.Model`), possibly wrapped in NumPyro handlers such as
        ``condition``, or any NumPyro program called as ``model(y, **model_kwargs)``.
    y : array (T, N) or (B, T, N)
        Observations; NaN marks missing entries.
    method : {"auto", "blocked", "nuts", "hmc", "svi", "blackjax_nuts", "chees", "mclmc", "smc"}
        ``"auto"``: the model's exact blocked sampler where it has one (every SLDS and rSLDS;
        :mod:`inference.blocked`), else NUTS. With Gaussian emissions and standard or sticky
        transitions: states site by site with the path integrated out, NUTS on the parameters
        with the path integrated out, the path by the simulation smoother; otherwise states by
        FFBS given the path, NUTS on parameters and path with the path whitened given them. GP-SLDS
        and GP-SDE: NUTS on the parameters and the path whitened around the Gauss-Newton mean of
        its conditional, the drift weights integrated out (:mod:`zoo.sde_laplace`), started from
        the model's MAP (``initial_params``); option ``path_iterations`` (Gauss-Newton steps, 2).
        NumPyro NUTS / HMC over parameters and path;
        SVI with a structured guide; BlackJAX NUTS with window adaptation; ChEES-HMC (many
        chains, vectorized); Metropolis-adjusted microcanonical Langevin with its tuner;
        adaptive tempered SMC (log evidence in ``attrs["log_evidence"]``).
    seed : int
        Random seed; the same seed gives the same draws in any process.
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
    precision : {"auto", "float64", "float32"}
        Floating-point precision of the run. ``"auto"``: double precision for models that
        need it (``model.float64_recommended``: the GP models, whose collapsed Gaussians lose
        too much precision in float32) and for the blocked sampler (its Kalman recursions meet
        dynamics noise variances near 1e-8), else JAX's global setting. The choice applies to this
        call only (``jax.enable_x64`` as a context); the global setting is left as it was.
    **options
        Method options (:func:`allowed_options` lists them): NUTS ``target_accept_prob``,
        ``max_tree_depth``, ``dense_mass``; blocked also ``state_sampler``, ``state_sweeps``,
        ``mass_adaptation`` (:func:`inference.blocked.run_blocked`); HMC ``num_steps`` /
        ``trajectory_length``; SVI
        ``guide`` ("structured", "auto_normal", "auto_mvn", "auto_delta" or an AutoGuide),
        ``num_steps``, ``learning_rate``, ``tol``; ChEES ``learning_rate``; MCLMC
        ``target_acceptance``; SMC ``target_ess``, ``num_mcmc_steps``; all: ``shard_trials``
        (split y's trial axis over devices), ``log_likelihood`` (False skips the pointwise
        log-likelihood group); MCMC methods: ``path_reparam`` ("auto", True, False): sample a
        switching model's path non-centred around its initialisation (:mod:`zoo.reparam`; the
        same posterior, better geometry), by default whenever the model offers it and ``init``
        is "auto" or "pca".

    Returns
    -------
    xarray.DataTree
        ``posterior`` (C, S, ...), ``sample_stats``, ``observed_data``, ``log_likelihood``
        (C, S, [trial,] time), ``constant_data``; attributes ``method``, ``options``, ``seed``,
        ``initialization``, ``versions``, ``sampling_time``, and what a repeat needs besides:
        ``zoo_model`` and ``zoo_model_kwargs`` (a zoo model), ``data_sha256``,
        ``project_commit``.

    Raises
    ------
    ValueError
        Unknown method or option, bad sizes, or data the model cannot take.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    if precision not in ("auto", "float64", "float32"):
        raise ValueError(f"precision must be 'auto', 'float64' or 'float32'; got {precision!r}")
    proto = as_model(model)
    # the blocked sampler's Kalman recursions meet dynamics noise variances near 1e-8 in the
    # tails of the noise scales: 23 of 4000 NASCAR draws were NaN in float32; one sweep costs
    # about the same in float64 on CPU (see benchmarks/results/slds_blocked.md)
    needs_x64 = proto.float64_recommended or resolve_method(proto, method) == "blocked"
    x64 = precision == "float64" or (precision == "auto" and (needs_x64 or bool(jax.config.jax_enable_x64)))
    with jax.enable_x64(x64):
        post = _fit(model, proto, y, method, seed, num_chains, num_warmup, num_samples, init, chain_method,
                    progress_bar, model_kwargs, options)
    post.attrs["precision"] = "float64" if x64 else "float32"
    return post


def _fit(model, proto, y, method, seed, num_chains, num_warmup, num_samples, init, chain_method,
         progress_bar, model_kwargs, options) -> xr.DataTree:
    method = resolve_method(proto, method)
    chosen = backend(method)
    num_chains = _check_int(num_chains, "num_chains", 1)
    num_samples = _check_int(num_samples, "num_samples", 1)
    num_warmup = _check_int(num_warmup, "num_warmup", 1 if chosen.chains else 0)
    seed = _check_int(seed, "seed", 0)
    unknown = set(options) - allowed_options(method)
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)} for method {method!r}; allowed: "
                         f"{sorted(allowed_options(method))}")
    problem = prepare_problem(proto, y, model_kwargs, options)
    settings = Settings(num_chains, num_warmup, num_samples, _resolve_chain_method(chain_method, num_chains),
                        init, progress_bar, {k: v for k, v in options.items()
                                             if k not in ("log_likelihood", "shard_trials")})
    t0 = time.perf_counter()
    result = chosen.run(problem, jax.random.key(seed), settings)
    elapsed = time.perf_counter() - t0
    samples = {k: v for k, v in result.samples.items() if k not in REFERENCE_COORDINATES}
    extra_attrs = dict(result.attrs)
    bad_draws = _nonfinite_draws(samples)
    if bad_draws.any():
        extra_attrs["warning_nonfinite_draws_per_chain"] = bad_draws.tolist()
        warnings.warn(f"fit: {int(bad_draws.sum())} draws have NaN/inf values (per chain "
                      f"{bad_draws.tolist()}); the sampler failed there, do not use them; see "
                      "inference.diagnose", RuntimeWarning, stacklevel=2)
    log_lik = bool(options.get("log_likelihood", True))
    attrs = {
        "method": method, "options": dict(options), "seed": seed,
        "num_chains": int(next(iter(samples.values())).shape[0]), "num_warmup": num_warmup,
        "num_samples": num_samples, "chain_method": settings.chain_method if chosen.chains else "none",
        "initialization": result.initialization, "versions": package_versions(), "sampling_time": elapsed,
        "shard_trials": int(bool(options.get("shard_trials", False))),
        "log_likelihood_computed": int(log_lik),
        **extra_attrs,
    }
    attrs.update(provenance(problem))
    post = to_datatree(model, samples, problem.y_host, sample_stats=result.stats,
                       model_kwargs=problem.model_kwargs, log_likelihood=log_lik, attrs=attrs,
                       library=chosen.library, info=problem.info)
    if not isinstance(proto, Program):  # a zoo model: rebuildable from its constructor arguments
        record_model(post, proto)
    return post


def provenance(problem: Problem) -> dict:
    """What else a repeat of the fit needs besides its settings.

    Parameters
    ----------
    problem : inference.backends.Problem

    Returns
    -------
    dict
        ``data_sha256``: a hash of y and every leaf of the model arguments;
        ``project_commit``: the project's git commit (``unknown`` outside a checkout).
    """
    h = hashlib.sha256(np.ascontiguousarray(problem.y_host).tobytes())
    for k in sorted(problem.model_kwargs):
        h.update(k.encode())
        # an argument may be a pytree (e.g. a fixed frame, zoo.frame.Frame): hash every leaf
        for leaf in jax.tree.leaves(problem.model_kwargs[k]):
            h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                                capture_output=True, text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return {"data_sha256": h.hexdigest(), "project_commit": commit}


def prepare_problem(model: Model, y, model_kwargs: Mapping | None, options: Mapping) -> Problem:
    """Validate the data once and derive what the program needs from them (what :func:`fit`
    hands its backend).

    Parameters
    ----------
    model : zoo.protocol.Model
    y : array (T, N) or (B, T, N)
    model_kwargs : mapping or None
        The user's program arguments; a caller's fixed ``frame`` is kept.
    options : mapping
        Fit options (``shard_trials``).

    Returns
    -------
    inference.backends.Problem

    Raises
    ------
    ValueError
        Bad data, or a program without latent sites.
    """
    y = check_y(y)
    warn_if_float32(model)
    kwargs = {k: v for k, v in dict(model_kwargs or {}).items() if v is not None}
    info = inspect_program(model, y, kwargs)
    if not info.latent:
        raise ValueError("the model has no latent sample site to infer")
    y_run, kw_run = shard_trials(y, kwargs) if options.get("shard_trials", False) else (y, kwargs)
    # e.g. the SLDS's latent frame (zoo.frame), from the data once, not at every gradient evaluation
    kw_run = {**kw_run, **model.prepare(y, kwargs)}
    return Problem(model, y_run, y, kwargs, kw_run, info)


def warn_if_float32(model: Model) -> None:
    """Warn when a model that needs double precision is about to run in JAX's default float32.

    The GP models' collapsed Gaussians (``model.float64_recommended``) lose too much precision
    in float32; :func:`fit` calls this before it compiles anything.

    Parameters
    ----------
    model : Model
        A zoo model (or a program adapted by :func:`zoo.protocol.as_model`).

    Warns
    -----
    RuntimeWarning
        When ``model.float64_recommended`` and ``jax_enable_x64`` is off.
    """
    if model.float64_recommended and not jax.config.jax_enable_x64:
        warnings.warn(f"fit: {type(model).__name__} is running in float32, where its collapsed "
                      "Gaussians lose too much precision (qualitatively wrong attractor posteriors "
                      "were measured); use fit(..., precision='auto') (the default) or 'float64'",
                      RuntimeWarning, stacklevel=5)


def _nonfinite_draws(samples: dict) -> np.ndarray:
    """Number of draws per chain with any non-finite value, (C,)."""
    per_site = [~np.isfinite(np.asarray(v, dtype=float)).reshape(np.shape(v)[:2] + (-1,)).all(-1)
                for v in samples.values() if np.size(v)]
    return np.sum(np.any(per_site, axis=0), axis=1) if per_site else np.zeros(0, int)
