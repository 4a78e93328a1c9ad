"""BlackJAX samplers on a NumPyro model's potential: NUTS with window adaptation, ChEES-HMC
(many chains, vectorized) and Metropolis-adjusted microcanonical Langevin (MCLMC) with its tuner.

The log density is NumPyro's (``initialize_model(..., dynamic_args=True)``) in unconstrained
space, with the data as a traced argument so that compiled samplers are reused for new data of
the same shape and y keeps any device sharding. Chains are vmapped; with
``chain_method="parallel"`` the chains are split over the local devices and each device runs its
own chains' loops (:func:`inference.devices.per_device`), with all of y (a trial-sharded y is
gathered once per compiled chunk). Draws are mapped back
to constrained space (and deterministic sites added) by NumPyro's ``postprocess_fn``, so they are
named like NumPyro's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import blackjax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from blackjax.mcmc.adjusted_mclmc_dynamic import make_random_trajectory_length_fn
from jax.flatten_util import ravel_pytree
from numpyro.infer.util import initialize_model
from tqdm.auto import tqdm

from inference.devices import per_device, shard_chains
from inference.starts import mcmc_backends

__all__ = ["run_blackjax", "BLACKJAX_OPTIONS", "BACKENDS", "log_density_fns"]

BLACKJAX_OPTIONS = {
    "blackjax_nuts": {"target_accept_prob", "max_tree_depth"},
    "chees": {"target_accept_prob", "learning_rate", "max_leapfrog_steps", "initial_step_size"},
    "mclmc": {"target_accept_prob", "num_integration_steps"},
}


def log_density_fns(model: Callable, y, model_kwargs: Mapping, key=None) -> tuple[Callable, Callable]:
    """Unconstrained log density and constraining map of a NumPyro program, data as arguments.

    Returns
    -------
    logdensity : callable (z, y, kwargs) -> scalar
        Log joint density in unconstrained space (with the Jacobian).
    postprocess : callable (z, y, kwargs) -> dict
        Constrained latent and deterministic site values.
    """
    key = jax.random.key(0) if key is None else key
    _, pot_gen, post_gen, _ = initialize_model(key, model, model_args=(y,), model_kwargs=dict(model_kwargs),
                                               dynamic_args=True)

    def logdensity(z, y, kwargs):
        return -pot_gen(y, **kwargs)(z)

    def postprocess(z, y, kwargs):
        return post_gen(y, **kwargs)(z)

    return logdensity, postprocess


def _chunk_size(num_samples: int, progress_bar: bool) -> int:
    if not progress_bar:
        return num_samples
    target = max(1, math.ceil(num_samples / 10))
    return max(d for d in range(1, target + 1) if num_samples % d == 0)


def _sample_loop(step: Callable, states, params, key, num_samples: int, y, kwargs, progress_bar: bool,
                 desc: str, parallel: bool):
    """Run ``step(key, state, params, y, kwargs) -> (state, (z, stats))`` vmapped over chains, in
    compiled chunks with a progress bar; returns stacked (C, S, ...) draws and stats.

    With ``parallel`` each device runs the steps of its own chains (:func:`per_device`): the
    chains' NUTS while-loops then never synchronise across devices, which under ``jit`` on
    sharded arrays made XLA's CPU runtime keep memory at every iteration.
    """
    chunk = _chunk_size(num_samples, progress_bar)
    num_chains = jax.tree.leaves(states)[0].shape[0]

    def chains_chunk(keys, states, params, y, kwargs):
        # keys (C_d, chunk): the scan runs over steps, shard_map wants the chain axis leading
        def body(s, ks):
            return jax.vmap(step, in_axes=(0, 0, 0, None, None))(ks, s, params, y, kwargs)

        states, rec = jax.lax.scan(body, states, jnp.swapaxes(keys, 0, 1))
        return states, jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), rec)

    run_chains = per_device(chains_chunk, num_chains, replicated=2) if parallel else chains_chunk

    @jax.jit
    def run_chunk(states, params, key, y, kwargs):
        # every step's per-chain keys are drawn here, on all chains, as when the whole loop was
        # vmapped over chains: the draws for a seed do not depend on the number of devices
        keys = jax.vmap(lambda k: jax.random.split(k, num_chains))(jax.random.split(key, chunk))
        return run_chains(jnp.swapaxes(keys, 0, 1), states, params, y, kwargs)

    out = []
    with tqdm(total=num_samples, desc=desc, disable=not progress_bar, leave=False) as bar:
        for i in range(num_samples // chunk):
            states, rec = run_chunk(states, params, jax.random.fold_in(key, i), y, kwargs)
            out.append(jax.device_get(rec))
            bar.update(chunk)
    rec = jax.tree.map(lambda *a: np.concatenate(a, 1), *out)
    return states, rec


def _warmup_bar(progress_bar: bool, desc: str, fn: Callable, *args):
    with tqdm(total=1, desc=desc, disable=not progress_bar, leave=False,
              bar_format="{desc}: {elapsed}") as bar:
        out = fn(*args)
        jax.block_until_ready(out)
        bar.update(1)
    return out


def _nuts(logdensity, num_warmup, options):
    tap = float(options.get("target_accept_prob", 0.8))
    depth = int(options.get("max_tree_depth", 10))

    def warm_one(key, z, y, kw):
        ld = lambda q: logdensity(q, y, kw)  # noqa: E731
        wa = blackjax.window_adaptation(blackjax.nuts, ld, target_acceptance_rate=tap,
                                        max_num_doublings=depth)
        (state, params), _ = wa.run(key, z, num_steps=num_warmup)
        return state, {"step_size": params["step_size"], "inverse_mass_matrix": params["inverse_mass_matrix"]}

    def step(key, state, params, y, kw):
        ld = lambda q: logdensity(q, y, kw)  # noqa: E731
        kernel = blackjax.nuts(ld, max_num_doublings=depth, **params)
        state, info = kernel.step(key, state)
        stats = {"diverging": info.is_divergent, "energy": info.energy,
                 "n_steps": info.num_integration_steps, "tree_depth": info.num_trajectory_expansions,
                 "acceptance_rate": info.acceptance_rate, "step_size": params["step_size"],
                 "lp": state.logdensity}
        return state, (state.position, stats)

    def warmup(keys, z0, y, kw):
        return jax.vmap(warm_one, in_axes=(0, 0, None, None))(keys, z0, y, kw)

    return warmup, step


def _chees(logdensity, num_chains, num_warmup, options):
    tap = float(options.get("target_accept_prob", 0.651))
    lr = float(options.get("learning_rate", 0.025))
    max_steps = int(options.get("max_leapfrog_steps", 1000))
    eps0 = float(options.get("initial_step_size", 0.1))

    def warmup(key, z0, y, kw):
        ld = lambda q: logdensity(q, y, kw)  # noqa: E731
        ad = blackjax.chees_adaptation(ld, num_chains, target_acceptance_rate=tap,
                                       max_leapfrog_steps=max_steps)
        (states, params), _ = ad.run(key, z0, step_size=eps0, optim=optax.adam(lr), num_steps=num_warmup)
        steps = params["integration_steps_params"][0]
        fixed = {"step_size": params["step_size"], "inverse_mass_matrix": params["inverse_mass_matrix"],
                 "num_leapfrog": steps}
        # per-chain copies so that the sampling loop can vmap over params
        return states, jax.tree.map(lambda a: jnp.broadcast_to(a, (num_chains,) + jnp.shape(a)), fixed)

    return warmup


def _mclmc(logdensity, num_warmup, num_samples, options):
    target = float(options.get("target_accept_prob", 0.9))
    avg_steps = float(options.get("num_integration_steps", 2.0))
    kernel = blackjax.adjusted_mclmc_dynamic.build_kernel(
        integration_steps_fn=make_random_trajectory_length_fn(True))
    frac = num_warmup / num_samples

    def warm_one(key, z, y, kw):
        ld = lambda q: logdensity(q, y, kw)  # noqa: E731
        k1, k2 = jax.random.split(key)
        state = blackjax.adjusted_mclmc_dynamic.init(z, ld, k1)
        state, params, _ = blackjax.adjusted_mclmc_find_L_and_step_size(
            kernel, ld, num_samples, state, k2, target, frac_tune1=0.4 * frac, frac_tune2=0.4 * frac,
            frac_tune3=0.2 * frac, target_num_integration_steps=avg_steps)
        return state, {"step_size": params.step_size, "L": params.L,
                       "inverse_mass_matrix": params.inverse_mass_matrix}

    def step(key, state, params, y, kw):
        ld = lambda q: logdensity(q, y, kw)  # noqa: E731
        state, info = kernel(key, state, ld, params["step_size"],
                             inverse_mass_matrix=params["inverse_mass_matrix"],
                             integration_steps_params=(params["L"] / params["step_size"],))
        stats = {"diverging": info.is_divergent, "energy": info.energy,
                 "n_steps": info.num_integration_steps, "acceptance_rate": info.acceptance_rate,
                 "step_size": params["step_size"], "lp": state.logdensity}
        return state, (state.position, stats)

    def warmup(keys, z0, y, kw):
        return jax.vmap(warm_one, in_axes=(0, 0, None, None))(keys, z0, y, kw)

    return warmup, step


def run_blackjax(model: Callable, y, model_kwargs: Mapping, method: str, key, *, num_chains: int,
                 num_warmup: int, num_samples: int, chain_method: str, init_positions: Mapping,
                 progress_bar: bool, options: Mapping) -> tuple[dict, dict]:
    """Run a BlackJAX sampler on the model's unconstrained posterior.

    Parameters
    ----------
    model : callable
    y : array (T, N) or (B, T, N)
    model_kwargs : mapping
    method : {"blackjax_nuts", "chees", "mclmc"}
    key : jax.random key
    num_chains, num_warmup, num_samples : int
    chain_method : str
        ``"parallel"`` splits the chains over the local devices when they divide evenly (each
        device runs its own; ChEES's warmup, which adapts across chains, is partitioned by
        ``jit`` instead); otherwise chains are vmapped on one device.
    init_positions : dict name -> array (num_chains, ...)
        Unconstrained starting points.
    progress_bar : bool
    options : mapping
        ``target_accept_prob`` (all), ``max_tree_depth`` (NUTS), ``learning_rate``,
        ``max_leapfrog_steps``, ``initial_step_size`` (ChEES), ``num_integration_steps``
        (MCLMC mean trajectory length in steps).

    Returns
    -------
    samples : dict name -> array (C, S, ...)
        Constrained latent and deterministic sites.
    stats : dict name -> array (C, S)
    """
    kwargs = dict(model_kwargs)
    logdensity_tree, postprocess_tree = log_density_fns(model, y, kwargs)
    # flat (C, d) positions: every BlackJAX kernel and adaptation handles plain vectors
    _, unravel = ravel_pytree(jax.tree.map(lambda v: v[0], dict(init_positions)))
    flat0 = jax.vmap(lambda t: ravel_pytree(t)[0])(dict(init_positions))

    def logdensity(x, y, kw):
        return logdensity_tree(unravel(x), y, kw)

    def postprocess(x, y, kw):
        return postprocess_tree(unravel(x), y, kw)

    parallel = chain_method == "parallel"
    z0 = shard_chains(flat0, num_chains) if parallel else flat0
    k_warm, k_run = jax.random.split(key)
    desc = {"blackjax_nuts": "BlackJAX NUTS", "chees": "ChEES-HMC", "mclmc": "adjusted MCLMC"}[method]
    if method == "chees":
        warmup = jax.jit(_chees(logdensity, num_chains, num_warmup, options))
        states, params = _warmup_bar(progress_bar, f"{desc} warmup ({num_warmup} steps)", warmup,
                                        k_warm, z0, y, kwargs)
        steps_fn = make_random_trajectory_length_fn(True)

        def step(k, state, p, y_, kw):
            ld = lambda q: logdensity(q, y_, kw)  # noqa: E731
            kern = blackjax.dynamic_hmc.build_kernel(integration_steps_fn=steps_fn)
            state, info = kern(k, state, ld, p["step_size"], p["inverse_mass_matrix"],
                               integration_steps_params=(p["num_leapfrog"],))
            stats = {"diverging": info.is_divergent, "energy": info.energy,
                     "n_steps": info.num_integration_steps, "acceptance_rate": info.acceptance_rate,
                     "step_size": p["step_size"], "lp": state.logdensity}
            return state, (state.position, stats)

        # chees states carry an integer step counter; switch to a key for random trajectory lengths
        states = states._replace(random_generator_arg=jax.random.split(k_warm, num_chains))
    else:
        build = _nuts(logdensity, num_warmup, options) if method == "blackjax_nuts" else \
            _mclmc(logdensity, num_warmup, num_samples, options)
        warmup, step = build
        keys = jax.random.split(k_warm, num_chains)
        # NUTS's window adaptation and MCLMC's tuner adapt each chain on its own (vmapped
        # warm_one), so they too run per device, for the same reason as the sampling loop
        if parallel:
            warmup = per_device(warmup, num_chains, replicated=2)
        states, params = _warmup_bar(progress_bar, f"{desc} warmup ({num_warmup} steps)", jax.jit(warmup),
                                     keys, z0, y, kwargs)
    states, (zs, stats) = _sample_loop(step, states, params, k_run, num_samples, y, kwargs, progress_bar,
                                       desc, parallel)
    post = jax.jit(jax.vmap(jax.vmap(postprocess, in_axes=(0, None, None)), in_axes=(0, None, None)))
    samples = {k: np.asarray(v) for k, v in post(zs, y, kwargs).items()}
    stats = {k: np.asarray(v) for k, v in stats.items()}
    stats["diverging"] = stats["diverging"].astype(bool)
    for k in ("n_steps", "tree_depth"):
        if k in stats:
            stats[k] = stats[k].astype(np.int64)
    return samples, stats


BACKENDS = mcmc_backends("blackjax", BLACKJAX_OPTIONS, run_blackjax)
