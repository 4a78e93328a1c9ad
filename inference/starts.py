"""Where chains start: prior draws, the prior median, given values, an SVI fit, or the model's own
``initial_params`` (PCA plus a fast point estimate, for the switching models); :func:`map_start`
gives the GP models a MAP point estimate to start from (``init=map_start(...)``).

Every strategy returns unconstrained positions with a leading chain axis, as NumPyro's
``MCMC.run(init_params=...)`` and the BlackJAX kernels take them, plus a sentence saying how the
chains were started (recorded in the result's ``initialization`` attribute).
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Callable, Mapping
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.infer import init_to_median, init_to_sample
from numpyro.infer.util import initialize_model, unconstrain_fn

from inference.backends import COMMON_OPTIONS, Backend, RunResult
from inference.program import inspect_program
from zoo.protocol import as_model

__all__ = ["initial_positions", "latent_sites", "mcmc_start", "mcmc_backends", "path_reference",
           "map_start", "INIT_CHOICES"]

INIT_CHOICES = ("auto", "prior", "median", "svi", "pca")
JITTER = 0.01


def _batched(model, y, kwargs, key, num_chains, strategy) -> dict:
    keys = jax.random.split(key, num_chains)
    info, *_ = initialize_model(keys, model, init_strategy=strategy, model_args=(y,),
                                model_kwargs=kwargs)
    return dict(info.z)


def _from_values(model, y, kwargs, key, num_chains, values: Mapping, latent: Mapping,
                 per_chain: bool = False) -> dict:
    """Unconstrained positions (C, ...) from constrained site values; other sites at the median."""
    unknown = sorted(set(values) - set(latent))
    if unknown:
        raise ValueError(f"init has values for sites that are not latent sample sites of the model: "
                         f"{unknown}; latent sites are {sorted(latent)}")
    # shapes are checked before the program runs at these values (a wrong shape would otherwise
    # fail somewhere inside the model with a message that does not name the init site)
    for name, v in values.items():
        want = (num_chains,) + tuple(latent[name]) if per_chain else tuple(latent[name])
        if np.shape(v) != want:
            raise ValueError(f"init value for site {name!r} has shape {np.shape(v)}; expected {want}")
    k1, k2 = jax.random.split(key)
    missing = set(latent) - set(values)
    if missing:
        # the structure pass runs the program once outside jit: at the given values, not at the
        # prior median, whose emission parameters can make float32 rates underflow to 0 (invalid
        # Poisson)
        first = {k: (v[0] if per_chain else v) for k, v in values.items()}
        z = _batched(model, y, kwargs, k1, num_chains, partial(_values_then_median, values=first))
        dtypes = {name: z[name].dtype for name in values}
    else:
        # every site given: no structure pass (numpyro's initialize_model ran the program eagerly
        # and searched for valid values, 4.6 s at NASCAR T = 2000, only to be overwritten)
        z = {}
        dtypes = {name: jnp.result_type(float) for name in values}
    vals = {}
    for name, v in values.items():
        v = jnp.asarray(v, dtype=dtypes[name])
        vals[name] = v if per_chain else jnp.broadcast_to(v, (num_chains,) + v.shape)
    # unconstrain_fn needs every latent site: pass the median values for the rest
    full = {**_constrain_median(model, y, kwargs, z), **vals} if missing else dict(vals)
    unc = jax.vmap(lambda p: unconstrain_fn(model, (y,), kwargs, p))(full)
    # a stable per-site stream: Python's hash() of a str is salted per process
    keys = {name: jax.random.fold_in(k2, zlib.crc32(name.encode()) & 0x7FFFFFFF) for name in vals}
    noise = _jitter(keys, {name: unc[name] for name in vals})
    for name in vals:
        z[name] = unc[name] + noise[name]
    return z


@jax.jit
def _jitter(keys: Mapping, like: Mapping) -> dict:
    # one compiled function for every site: a separate jax.random.normal per site shape compiled
    # each (9 sites, 6 s at NASCAR T = 2000)
    return {name: JITTER * jax.random.normal(keys[name], like[name].shape) for name in like}


def _values_then_median(site=None, values: Mapping | None = None):
    """Init strategy: the given constrained value of a latent site, else the prior median."""
    if site["type"] == "sample" and not site["is_observed"] and site["name"] in values:
        return jnp.asarray(values[site["name"]])
    return init_to_median(site)


def _constrain_median(model, y, kwargs, z) -> dict:
    from numpyro.infer.util import constrain_fn

    return jax.vmap(lambda p: constrain_fn(model, (y,), kwargs, p))(z)


def _svi_start(model, y, kwargs, key, num_chains, options: Mapping) -> tuple[dict, str]:
    from inference.svi import run_svi

    steps = int(options.get("init_svi_steps", 2000))
    res = run_svi(model, y, kwargs, key, num_steps=steps, guide=options.get("init_guide", "auto_normal"),
                  learning_rate=float(options.get("init_svi_learning_rate", 0.02)),
                  progress_bar=bool(options.get("progress_bar", True)), tol=None)
    draws = res.guide.sample_posterior(jax.random.fold_in(key, 1), res.params, sample_shape=(num_chains,))
    latent = latent_sites(model, y, kwargs)
    draws = {k: v for k, v in draws.items() if k in latent}
    z = jax.vmap(lambda p: unconstrain_fn(model, (y,), kwargs, p))(draws)
    text = (f"each of {num_chains} chain(s) started from its own draw of an SVI fit "
            f"({res.guide_name}, {res.num_steps} steps, final loss {res.final_loss:.4g})")
    return dict(z), text


def latent_sites(model: Callable, y, model_kwargs: Mapping | None = None,
                 values: Mapping | None = None) -> dict[str, tuple[int, ...]]:
    """The latent sample sites of a program (what samplers see), as :func:`initial_positions`
    takes them: not observed and not collapsed.

    Parameters
    ----------
    model : callable
        The NumPyro program ``model(y, **model_kwargs)``, or a zoo model.
    y : array (T, N) or (B, T, N)
    model_kwargs : mapping, optional
    values : mapping name -> array, optional
        Site values substituted while the program is traced (``numpyro.handlers.substitute``):
        read at start values, the trace avoids a prior draw whose values break the program (e.g.
        Poisson rates underflowing to 0 in float32, making the path NaN).

    Returns
    -------
    dict name -> shape
        Each latent site's value shape (without chain/draw axes).

    Raises
    ------
    ValueError
        When the program cannot run on data of this shape.
    """
    if values is not None:
        model = handlers.substitute(model, data=dict(values))
    with warnings.catch_warnings():
        # the trace also names every site's dims, and warns about sites the model leaves
        # unnamed: that concerns the coordinates of a result, not the latent sites read here
        warnings.filterwarnings("ignore", message="the model does not name the dims", category=UserWarning)
        return dict(inspect_program(model, y, model_kwargs).latent)


def initial_positions(model: Callable, y, model_kwargs: Mapping, init, key, num_chains: int,
                      latent: Mapping, options: Mapping | None = None) -> tuple[dict, str]:
    """Unconstrained starting points for ``num_chains`` chains.

    Parameters
    ----------
    model : callable
        The NumPyro program ``model(y, **model_kwargs)``.
    y : array (T, N) or (B, T, N)
    model_kwargs : mapping
    init : {"auto", "prior", "median", "svi", "pca"} or mapping
        ``"prior"``: a prior draw per chain; ``"median"``: the prior median (NumPyro's
        ``init_to_median``; every chain from its own Monte Carlo estimate); a mapping of site
        values (constrained, used for all chains, jittered by N(0, 0.01^2) in unconstrained space;
        other sites at the median); ``"svi"``: one draw per chain from a fast SVI fit;
        ``"pca"``: the model's ``initial_params(y, key, **model_kwargs)`` (PCA of y plus a point
        estimate), jittered; ``"auto"``: ``"pca"`` if the model has ``initial_params``, else
        ``"median"``.
    key : jax.random key
    num_chains : int
    latent : mapping name -> shape
        The latent sample sites.
    options : mapping, optional
        ``init_svi_steps``, ``init_svi_learning_rate``, ``init_guide``, ``progress_bar``.

    Returns
    -------
    positions : dict name -> array (num_chains, ...)
        Unconstrained values.
    description : str
    """
    options = dict(options or {})
    if isinstance(init, Mapping):
        z = _from_values(model, y, model_kwargs, key, num_chains, init, latent)
        return z, (f"all {num_chains} chain(s) started from given values of {sorted(init)} jittered "
                   f"by N(0, {JITTER}^2) in unconstrained space; other sites at the prior median")
    if init not in INIT_CHOICES:
        raise ValueError(f"init must be one of {INIT_CHOICES} or a dict of site values; got {init!r}")
    own = None
    if init in ("auto", "pca"):
        own = as_model(model).initial_params(np.asarray(y), key, **model_kwargs)
    if init == "auto":
        init = "median" if own is None else "pca"
    if init == "pca":
        if own is None:
            raise ValueError("init='pca' needs a model with its own initial_params(y, key, **model_kwargs) "
                             "(a point estimate); use init='svi', 'median' or 'prior'")
        values = {k: v for k, v in dict(own).items() if k in latent}
        z = _from_values(model, y, model_kwargs, jax.random.fold_in(key, 7), num_chains, values, latent)
        return z, _own_text(num_chains, values)
    if init == "prior":
        return _batched(model, y, model_kwargs, key, num_chains, init_to_sample), \
            f"each of {num_chains} chain(s) started from its own prior draw"
    if init == "median":
        return _batched(model, y, model_kwargs, key, num_chains, init_to_median), \
            (f"each of {num_chains} chain(s) started at the prior median (init_to_median, 15 prior "
             "draws per chain)")
    return _svi_start(model, y, model_kwargs, key, num_chains, options)


def path_reference(model, y, model_kwargs: Mapping, values: Mapping | None, path_reparam) -> dict | None:
    """The reference a switching model's path is sampled non-centred around (:mod:`zoo.reparam`),
    or None.

    Parameters
    ----------
    model : zoo.protocol.Model
    y : array (T, N) or (B, T, N)
    model_kwargs : mapping
        The user's model arguments.
    values : mapping or None
        The model's own point estimate (:meth:`zoo.protocol.Model.initial_params`); None when
        there is none or chains start otherwise.
    path_reparam : {"auto", True, False}
        "auto" uses it when the model offers it; True requires it; False never.

    Raises
    ------
    ValueError
        For a bad ``path_reparam``, or True where the model or the start cannot give one.
    """
    if path_reparam not in ("auto", True, False):
        raise ValueError(f"path_reparam must be 'auto', True or False; got {path_reparam!r}")
    if path_reparam is False:
        return None
    reference = None if values is None else model.path_reference(np.asarray(y), values, **model_kwargs)
    if reference is None and path_reparam is True:
        raise ValueError("path_reparam=True needs an MCMC method, init='auto' or 'pca', and a model with "
                         "a path reference (the SLDS and rSLDS, not wrapped in handlers)")
    return reference


# the sampler's own coordinates of a non-centred path, not sites of the model
REFERENCE_COORDINATES = ("x_whitened", "dynamics_bias_centred")


def mcmc_start(problem, settings, key) -> tuple[dict, str, dict]:
    """Chain starts for an MCMC backend, the non-centred path included.

    Parameters
    ----------
    problem : inference.backends.Problem
    settings : inference.backends.Settings
    key : jax.random key

    Returns
    -------
    positions : dict name -> array (num_chains, ...)
        Unconstrained starting points.
    description : str
        How the chains were started.
    run_kwargs : dict
        The program's arguments for the run (with ``path_reference`` when the path is
        non-centred).
    """
    opts, C, init = settings.options, settings.num_chains, settings.init
    model, y_host, kwargs = problem.model, problem.y_host, problem.model_kwargs
    own = None
    if isinstance(init, str) and init in ("auto", "pca"):
        own = model.initial_params(y_host, key, **kwargs)
    ref = path_reference(model, y_host, kwargs, own, opts.get("path_reparam", "auto"))
    if ref is None:
        if own is None:
            z0, text = initial_positions(model, problem.y, problem.run_kwargs, init, key, C,
                                         problem.info.latent, {**opts, "progress_bar": settings.progress_bar})
            return z0, text, dict(problem.run_kwargs)
        values = {k: v for k, v in dict(own).items() if k in problem.info.latent}
        z0 = _from_values(model, problem.y, problem.run_kwargs, jax.random.fold_in(key, 7), C, values,
                          problem.info.latent)
        return z0, _own_text(C, values), dict(problem.run_kwargs)
    values = model.reference_values(own, ref)
    run_kwargs = {**problem.run_kwargs, "path_reference": ref}
    # only the latent sites are wanted (not dims), read at the start values: a prior draw
    # of the emission parameters can put float32 rates at 0 and the path at NaN
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        latent = latent_sites(model, y_host, run_kwargs, values=values)
    z0, _ = initial_positions(model, problem.y, run_kwargs,
                              {k: v for k, v in values.items() if k in latent}, key, C, latent)
    text = (f"all {C} chain(s) started from model.initial_params (PCA of y and a fast point estimate), "
            f"jittered by N(0, {JITTER}^2) in unconstrained space; the path sampled non-centred around it "
            "(path_reference, see zoo.reparam): x = mu(theta) + S(theta) eps with eps (x_whitened) "
            "started at 0, and the dynamics offsets through their values at the states' centres "
            "(dynamics_bias_centred)")
    return z0, text, run_kwargs


def mcmc_backends(library: str, options: Mapping[str, set], runner: Callable) -> dict:
    """Backend table entries (:class:`inference.backends.Backend`) for the methods of an MCMC
    runner: each run starts the chains with :func:`mcmc_start` and calls the runner.

    Parameters
    ----------
    library : str
        The library's name, recorded in the result.
    options : mapping method -> set of option names
        The methods and the options each accepts (beside the common ones).
    runner : callable
        ``runner(model, y, model_kwargs, method, key, *, num_chains, num_warmup, num_samples,
        chain_method, init_positions, progress_bar, options) -> (samples, stats)``, e.g.
        :func:`inference.numpyro_backend.run_numpyro`.

    Returns
    -------
    dict method -> Backend
    """
    def make_run(method: str):
        def run(problem, key, settings) -> RunResult:
            key_init, key_run = jax.random.split(key)
            z0, text, run_kwargs = mcmc_start(problem, settings, key_init)
            opts = {k: v for k, v in settings.options.items() if k not in COMMON_OPTIONS}
            samples, stats = runner(problem.model, problem.y, run_kwargs, method, key_run,
                                    num_chains=settings.num_chains, num_warmup=settings.num_warmup,
                                    num_samples=settings.num_samples, chain_method=settings.chain_method,
                                    init_positions=z0, progress_bar=settings.progress_bar, options=opts)
            return RunResult(samples, stats, text, {})

        return run

    return {m: Backend(library, frozenset(opts), make_run(m)) for m, opts in options.items()}


def _own_text(num_chains: int, values: Mapping) -> str:
    return (f"all {num_chains} chain(s) started from model.initial_params (PCA of y and a fast point "
            f"estimate) for {sorted(values)}, jittered by N(0, {JITTER}^2) in unconstrained space")


def map_start(model, y, inputs=None, num_steps: int = 1000, seed: int = 0, learning_rate: float = 0.02,
              progress_bar: bool = False) -> dict:
    """A MAP point estimate of a GP-SLDS / GP-SDE started from a smoothed PCA path (chain starts).

    The diffusion is held at its prior median during the MAP stage (the joint MAP over a path and
    its diffusion is degenerate); the returned values include it, so NUTS starts from the MAP of
    everything else with the diffusion at that value (the recipe of ``benchmarks/gp_models.py``).

    Parameters
    ----------
    model : zoo.gpslds.GPSLDS or zoo.gpsde.GPSDE
    y : array (T, N) or (B, T, N)
    inputs : array (..., T, I), optional
    num_steps : int
        Adam steps.
    seed : int
    learning_rate : float
    progress_bar : bool

    Returns
    -------
    dict
        Constrained values of the latent sites, for ``inference.fit(..., init=values)``.
    """
    import optax
    from numpyro import handlers as nh
    from numpyro.infer import SVI, Trace_ELBO, init_to_value
    from numpyro.infer.autoguide import AutoDelta

    from zoo.preprocess import initial_path
    from zoo.sde import SDEModel

    if not isinstance(model, SDEModel):
        raise ValueError(f"map_start needs a continuous-time GP model (GPSLDS or GPSDE); got "
                         f"{type(model).__name__}")
    y = jnp.asarray(y)
    kw = {} if inputs is None else {"inputs": jnp.asarray(inputs, y.dtype)}
    counts = model.emissions == "poisson"
    x0 = np.asarray(initial_path(np.asarray(y), model.latent_dim, counts=counts, smooth=2.0, scale=3.0))
    s = int(model.substeps)
    if s > 1:
        T = x0.shape[-2]
        t_f = np.arange((T - 1) * s + 1) / s
        flat = x0.reshape((-1,) + x0.shape[-2:])
        x0 = np.stack([np.stack([np.interp(t_f, np.arange(T), xx[:, d]) for d in range(xx.shape[-1])], -1)
                       for xx in flat]).reshape(x0.shape[:-2] + (len(t_f), -1))
    fixed = {"diffusion": jnp.full(model.latent_dim, model.diffusion_scale, y.dtype)}
    blocked = nh.condition(model, data=fixed)
    guide = AutoDelta(blocked, init_loc_fn=init_to_value(values={"x": jnp.asarray(x0, y.dtype)}))
    svi = SVI(blocked, guide, optax.adam(learning_rate), Trace_ELBO())
    res = svi.run(jax.random.key(seed), num_steps, y, progress_bar=progress_bar, **kw)
    return {k: np.asarray(v) for k, v in dict(guide.median(res.params), **fixed).items()}
