"""The blocked posterior sampler of the switching models: a partially collapsed Gibbs sweep.

One sweep, for a model whose path is linear-Gaussian given its discrete states (the Gaussian
SLDS with standard or sticky transitions):

1. z | x, theta -- forward-filtering backward-sampling (:class:`zoo.handlers.decode`);
2. theta | z, y -- one NUTS transition on log p(theta) + log p(z | theta) + log p(y | theta, z),
   the path integrated out by the Kalman filter (``collapse(condition_states(model, z))``);
3. x | theta, z, y -- an exact draw by the simulation smoother (``decode`` of the same program).

The draw is recorded after step 3. Step 2 marginalises x and step 3 draws it fresh from its full
conditional, so the order is a valid partially collapsed Gibbs sampler (van Dyk and Park 2008):
the sweep leaves p(theta, z, x | y) invariant (tested against brute force in
``tests/test_blocked.py``). NUTS never sees the path, whose funnel with the dynamics noise was
what kept NUTS over (theta, x) from mixing.

The blocks are pure functions of (key, state) -> state (:func:`build_blocks`, :func:`sweep`), in
the shape of BlackJAX kernels; step size and a diagonal inverse mass for the NUTS block are
adapted during warmup by Stan's windowed scheme (dual averaging, Welford variances), written
here from BlackJAX's building blocks because the log density changes with z at every sweep.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import NamedTuple

import blackjax
import jax
import jax.numpy as jnp
import numpy as np
from blackjax.adaptation.mass_matrix import welford_algorithm
from blackjax.adaptation.step_size import dual_averaging_adaptation
from jax.flatten_util import ravel_pytree
from numpyro import handlers
from numpyro.infer.util import constrain_fn, potential_energy
from tqdm.auto import tqdm

from inference._program import inspect_program
from inference.backends import Backend, RunResult
from inference.starts import initial_positions
from zoo.distributions import PathPosterior
from zoo.handlers import collapse, condition_states, decode

__all__ = ["Blocks", "SweepState", "Adaptation", "build_blocks", "sweep", "warmup_schedule",
           "BLOCKED_OPTIONS", "BACKENDS"]

BLOCKED_OPTIONS = frozenset({"target_accept_prob", "max_tree_depth", "dense_mass"})


class Blocks(NamedTuple):
    """The exact conditional updates of one model and data set (pure functions).

    Attributes
    ----------
    theta_logdensity : callable (flat theta (d,), states) -> scalar
        log p(theta, z | y) up to a constant with the path integrated out, in unconstrained
        coordinates (the NUTS block's target).
    draw_states : callable (key, flat theta, path) -> states
        An exact draw of z | x, theta (FFBS).
    draw_path : callable (key, flat theta, states) -> path
        An exact draw of x | z, theta, y (simulation smoother).
    record : callable (flat theta, states, path) -> dict
        Constrained values of every latent and deterministic site, with ``x`` and ``z``.
    unravel : callable
        Flat theta -> dict of unconstrained site values.
    """

    theta_logdensity: Callable
    draw_states: Callable
    draw_path: Callable
    record: Callable
    unravel: Callable


class SweepState(NamedTuple):
    """State of one chain: the NUTS block's state (position = flat unconstrained theta), the
    discrete states z and the path x."""

    hmc: blackjax.mcmc.hmc.HMCState
    states: jax.Array
    path: jax.Array


class Adaptation(NamedTuple):
    """Warmup state of the NUTS block: dual averaging of the step size, Welford variances."""

    dual_averaging: object
    welford: object
    step_size: jax.Array
    inverse_mass: jax.Array


def build_blocks(model: Callable, y, model_kwargs: Mapping, path_site: str, theta_example: Mapping) -> Blocks:
    """The blocks of the sweep for ``model`` on data ``y``.

    Parameters
    ----------
    model : zoo.protocol.Model
        A model whose path site is linear-Gaussian given its states (see
        :meth:`zoo.protocol.Model.blocked_sampler`).
    y : array (T, N) or (B, T, N)
    model_kwargs : mapping
        Program arguments (``mask``, ``inputs``, ``frame``).
    path_site : str
        Name of the switching path site.
    theta_example : mapping
        Unconstrained values of the parameter sites (every latent site but the path), giving
        the flat layout.

    Returns
    -------
    Blocks
    """
    kwargs = dict(model_kwargs)
    _, unravel = ravel_pytree(dict(theta_example))

    def collapsed(states):
        return collapse(condition_states(model, states={path_site: states}))

    def theta_logdensity(flat, states):
        return -potential_energy(collapsed(states), (y,), kwargs, unravel(flat))

    def constrained(flat, states):
        return constrain_fn(collapsed(states), (y,), kwargs, unravel(flat), return_deterministic=True)

    def draw_states(key, flat, path):
        params = constrained(flat, jnp.zeros(path.shape[:-1], jnp.int32))
        values = {**params, path_site: path}
        with decode(rng_key=key) as dec:
            handlers.substitute(handlers.seed(model, key), data=values)(y, **kwargs)
        return dec.posteriors[path_site].sample.astype(jnp.int32)

    def draw_path(key, flat, states):
        params = constrained(flat, states)
        with decode(rng_key=key) as dec:
            handlers.substitute(handlers.seed(collapsed(states), key), data=params)(y, **kwargs)
        (post,) = [p for p in dec.posteriors.values() if isinstance(p, PathPosterior)]
        return post.sample

    def record(flat, states, path):
        return {**constrained(flat, states), path_site: path, "z": states}

    return Blocks(theta_logdensity, draw_states, draw_path, record, unravel)


def sweep(key, state: SweepState, blocks: Blocks, step_size, inverse_mass, max_tree_depth: int = 10):
    """One partially collapsed Gibbs sweep: z | x, theta; theta | z (NUTS, x integrated out);
    x | theta, z.

    Returns
    -------
    state : SweepState
    info : blackjax NUTSInfo of the theta block
    """
    k_z, k_theta, k_x = jax.random.split(key, 3)
    states = blocks.draw_states(k_z, state.hmc.position, state.path)

    def logdensity(flat):
        return blocks.theta_logdensity(flat, states)

    # the target changed with z: recompute the log density and its gradient at the position
    hmc = blackjax.nuts.init(state.hmc.position, logdensity)
    hmc, info = blackjax.nuts.build_kernel()(k_theta, hmc, logdensity, step_size, inverse_mass,
                                              max_num_doublings=max_tree_depth)
    path = blocks.draw_path(k_x, hmc.position, states)
    return SweepState(hmc, states, path), info


def warmup_schedule(num_warmup: int) -> np.ndarray:
    """Stan's windows: (num_warmup, 2) int rows (slow window?, end of a slow window?).

    A first fast window (15 %, step size only), slow windows doubling from 25 steps (step size
    and inverse mass; the mass is set at each window's end), a last fast window (10 %). Short
    warmups (< 20 steps) adapt the step size only.
    """
    out = np.zeros((num_warmup, 2), dtype=np.int32)
    if num_warmup < 20:
        return out
    first, last = int(0.15 * num_warmup), int(0.1 * num_warmup)
    slow_end = num_warmup - last
    start, size = first, 25
    while start < slow_end:
        end = slow_end if start + 2 * size > slow_end - size else start + size
        end = min(end, slow_end)
        out[start:end, 0] = 1
        out[end - 1, 1] = 1
        start, size = end, 2 * size
    return out


def _adaptation_init(dim: int, step_size, dtype, dense: bool) -> Adaptation:
    da_init, _, _ = dual_averaging_adaptation(0.8)
    w_init, _, _ = welford_algorithm(not dense)
    mass = jnp.eye(dim, dtype=dtype) if dense else jnp.ones(dim, dtype)
    eps = jnp.asarray(step_size, dtype)
    return Adaptation(da_init(eps), w_init(dim), eps, mass)


def _adapt(adapt: Adaptation, stage, position, acceptance, target: float, dense: bool) -> Adaptation:
    _, da_update, da_final = dual_averaging_adaptation(target)
    w_init, w_update, w_final = welford_algorithm(not dense)
    slow, window_end = stage[0], stage[1]
    da = da_update(adapt.dual_averaging, acceptance)
    welford = jax.lax.cond(slow > 0, lambda w: w_update(w, position), lambda w: w, adapt.welford)
    step_size = jnp.exp(da.log_step_size)

    def end_window(args):
        welford, da, step_size, _ = args
        cov, n, _ = w_final(welford)
        # Stan's regularisation of the window's (co)variances towards 1e-3 I
        shrink = 1e-3 * (5.0 / (n + 5.0))
        floor = shrink * jnp.eye(cov.shape[-1], dtype=cov.dtype) if dense else shrink
        inv_mass = (n / (n + 5.0)) * cov + floor
        da_init, _, _ = dual_averaging_adaptation(target)
        return w_init(position.shape[0]), da_init(step_size), step_size, inv_mass.astype(position.dtype)

    welford, da, step_size, inv_mass = jax.lax.cond(
        window_end > 0, end_window, lambda a: a, (welford, da, step_size, adapt.inverse_mass))
    return Adaptation(da, welford, step_size.astype(position.dtype), inv_mass)


def _stats(info, step_size, lp) -> dict:
    return {"diverging": info.is_divergent, "energy": info.energy, "n_steps": info.num_integration_steps,
            "tree_depth": info.num_trajectory_expansions, "acceptance_rate": info.acceptance_rate,
            "step_size": step_size, "lp": lp}


def _chunk_keys(key, num_chains: int, start: int, n: int):
    """Keys (C, n) for sweeps start .. start + n - 1 of every chain (independent of chunking)."""
    per_chain = jax.random.split(key, num_chains)
    return jax.vmap(lambda k: jax.vmap(lambda i: jax.random.fold_in(k, i))(jnp.arange(start, start + n)))(
        per_chain)


def _chunks(total: int, size: int) -> list[int]:
    return [min(size, total - i) for i in range(0, total, size)]


def run_blocked(model, y, run_kwargs: Mapping, key, *, path_site: str, start: Mapping, num_chains: int,
                num_warmup: int, num_samples: int, progress_bar: bool, options: Mapping) -> tuple[dict, dict]:
    """Warm up and run ``num_chains`` chains of the blocked sweep (chains vectorized).

    Parameters
    ----------
    model : zoo.protocol.Model
    y : array (T, N) or (B, T, N)
    run_kwargs : mapping
        Program arguments.
    key : jax.random key
    path_site : str
    start : dict name -> array (num_chains, ...)
        Unconstrained start values of every latent site of the marginal program (the path
        included).
    num_chains, num_warmup, num_samples : int
    progress_bar : bool
    options : mapping
        ``target_accept_prob`` (0.8), ``max_tree_depth`` (10), ``dense_mass`` (True: a dense
        inverse mass adapted for the parameter block, which is small; the dynamics slopes and
        offsets of a state are strongly correlated when its data sit far from the origin).

    Returns
    -------
    samples : dict name -> array (C, S, ...)
        Constrained sites, the path ``x`` and the states ``z`` (int).
    stats : dict name -> array (C, S)
    """
    target = float(options.get("target_accept_prob", 0.8))
    depth = int(options.get("max_tree_depth", 10))
    dense = bool(options.get("dense_mass", True))
    theta0 = {k: v for k, v in start.items() if k != path_site}
    path0 = jnp.asarray(start[path_site])
    blocks = build_blocks(model, y, run_kwargs, path_site, jax.tree.map(lambda v: v[0], theta0))
    flat0 = jax.vmap(lambda t: ravel_pytree(t)[0])(theta0)
    dim, dtype = flat0.shape[-1], flat0.dtype

    def init_chain(k, flat, path):
        # draw z | x first, so that the chain starts from a consistent (theta, z, x)
        states = blocks.draw_states(k, flat, path)
        hmc = blackjax.nuts.init(flat, lambda f: blocks.theta_logdensity(f, states))
        return SweepState(hmc, states, path)

    k_init, k_warm, k_run = jax.random.split(key, 3)
    states = jax.jit(jax.vmap(init_chain))(jax.random.split(k_init, num_chains), flat0, path0)
    adapt = jax.vmap(lambda _: _adaptation_init(dim, 0.1, dtype, dense))(jnp.arange(num_chains))

    @jax.jit
    def warm_chunk(keys, states, adapt, schedule):
        def one_chain(ks, state, ad):
            def body(carry, inp):
                state, ad = carry
                k, stage = inp
                state, info = sweep(k, state, blocks, ad.step_size, ad.inverse_mass, depth)
                ad = _adapt(ad, stage, state.hmc.position, info.acceptance_rate, target, dense)
                return (state, ad), (info.is_divergent, info.num_trajectory_expansions)

            return jax.lax.scan(body, (state, ad), (ks, schedule))

        (states, adapt), info = jax.vmap(one_chain, in_axes=(0, 0, 0))(keys, states, adapt)
        return states, adapt, info

    @jax.jit
    def sample_chunk(keys, states, step_size, inv_mass):
        def one_chain(ks, state, eps, im):
            def body(state, k):
                state, info = sweep(k, state, blocks, eps, im, depth)
                draw = blocks.record(state.hmc.position, state.states, state.path)
                return state, (draw, _stats(info, eps, state.hmc.logdensity))

            return jax.lax.scan(body, state, ks)

        return jax.vmap(one_chain)(keys, states, step_size, inv_mass)

    schedule = warmup_schedule(num_warmup)
    chunk = max(1, min(50, num_warmup))
    bar = tqdm(total=num_warmup + num_samples, desc="blocked sweep (FFBS | NUTS | smoother), warmup",
               disable=not progress_bar)
    done = 0
    for n in _chunks(num_warmup, chunk):
        keys = _chunk_keys(k_warm, num_chains, done, n)
        sched = jnp.asarray(schedule[done:done + n])
        states, adapt, _ = warm_chunk(keys, states, adapt, sched)
        done += n
        bar.update(n)
    # after warmup: the averaged step size of the last window
    _, _, da_final = dual_averaging_adaptation(target)
    step_size = jax.vmap(da_final)(adapt.dual_averaging).astype(dtype) if num_warmup else adapt.step_size
    inv_mass = adapt.inverse_mass
    bar.set_description("blocked sweep (FFBS | NUTS | smoother), sampling")
    draws, stats, done = [], [], 0
    for n in _chunks(num_samples, max(1, min(50, num_samples))):
        keys = _chunk_keys(k_run, num_chains, done, n)
        states, (d, s) = sample_chunk(keys, states, step_size, inv_mass)
        draws.append(jax.device_get(d))
        stats.append(jax.device_get(s))
        done += n
        bar.update(n)
    bar.close()
    samples = {k: np.concatenate([d[k] for d in draws], axis=1) for k in draws[0]}
    stats = {k: np.concatenate([s[k] for s in stats], axis=1) for k in stats[0]}
    stats["diverging"] = stats["diverging"].astype(bool)
    for k in ("n_steps", "tree_depth"):
        stats[k] = stats[k].astype(np.int64)
    return samples, stats


def _run(problem, key, settings) -> RunResult:
    model = problem.model
    spec = model.blocked_sampler()
    if spec is None:
        raise ValueError(f"method='blocked' needs a model with an exact blocked sampler; "
                         f"{type(model).__name__} has none with these settings (use method='nuts')")
    key_init, key_run = jax.random.split(key)
    C = settings.num_chains
    run_kwargs = dict(problem.run_kwargs)
    own = model.initial_params(problem.y_host, key_init, **problem.model_kwargs) \
        if settings.init in ("auto", "pca") else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if own is not None:
            values, extra = model.blocked_start(problem.y_host, own, key_init, **problem.model_kwargs)
            run_kwargs.update(extra)
            # the program's coordinates may change with the extra arguments (centred offsets)
            latent = inspect_program(handlers.substitute(model, data=values), problem.y_host,
                                     run_kwargs).latent
            values = {k: v for k, v in values.items() if k in latent}
            z0, _ = initial_positions(model, problem.y, run_kwargs, values,
                                      jax.random.fold_in(key_init, 7), C, latent)
            text = (f"all {C} chain(s) started from model.initial_params (PCA of y and a fast point "
                    "estimate), jittered by N(0, 0.01^2) in unconstrained space; z drawn first given "
                    f"that path; extra program arguments {sorted(extra)} from that estimate")
        else:
            z0, text = initial_positions(model, problem.y, run_kwargs, settings.init, key_init, C,
                                         problem.info.latent, {**settings.options,
                                                               "progress_bar": settings.progress_bar})
    samples, stats = run_blocked(model, problem.y, run_kwargs, key_run, path_site=spec.path_site,
                                 start=z0, num_chains=C, num_warmup=settings.num_warmup,
                                 num_samples=settings.num_samples, progress_bar=settings.progress_bar,
                                 options=settings.options)
    text += ("; each sweep: z | x, theta by FFBS, theta | z, y by one NUTS transition with the path "
             "integrated out (Kalman filter), x | theta, z, y by the simulation smoother")
    return RunResult(samples, stats, text, {"sampler": "blocked: FFBS | NUTS (path collapsed) | smoother"})


BACKENDS = {"blocked": Backend("numpyro", BLOCKED_OPTIONS, _run)}
