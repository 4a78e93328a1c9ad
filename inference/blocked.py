"""The blocked posterior sampler of the switching models: a partially collapsed Gibbs sweep.

One sweep, for a model whose path is linear-Gaussian given its discrete states (the Gaussian
SLDS with standard or sticky transitions):

1. z | theta, y -- systematic sweeps of single-site draws z_t ~ p(z_t | z_{-t}, theta, y) with
   the path integrated out (Gerlach, Carter and Kohn 2000; :mod:`zoo.collapsed_states`), then
   exact block draws over short windows and Metropolis shifts of segment boundaries, on the
   same target;
2. theta | z, y -- one NUTS transition on log p(theta) + log p(z | theta) + log p(y | theta, z),
   the path integrated out by the Kalman filter (``integrate_out(condition_states(model, z))``);
3. x | theta, z, y -- an exact draw by the simulation smoother (``decode`` of the same program).

The draw is recorded after step 3. Steps 1 and 2 are Gibbs updates of p(z, theta | y) and step
3 draws x from its full conditional, so the sweep leaves p(theta, z, x | y) invariant (tested
against brute force in ``tests/test_blocked.py``). NUTS never sees the path, whose funnel with
the dynamics noise was what kept NUTS over (theta, x) from mixing; and z never sees it either:
drawing z | x by FFBS (``state_sampler="ffbs"``, also exact) crawls where the dynamics noise is
small, because x then nearly determines z and z nearly determines x (measured on NASCAR:
lag-1 autocorrelation 0.92-0.95 of the state occupancy, ``benchmarks/results/slds_blocked.md``).

Models whose path is not Gaussian given the states (recurrent transitions, Poisson emissions)
draw z | x, theta by FFBS and move (theta, x) together by NUTS, x whitened given z.

The GP models (``BlockedSpec.states_site`` None) have no block drawn given the path: each sweep
is one NUTS transition on theta and the path whitened around the Gauss-Newton mean of its
conditional, the drift weights integrated out (:mod:`zoo.sde_laplace`). With ``states_site =
"drift_weights"`` the states slot carries W instead: W | x, theta drawn exactly, then NUTS on
(theta, eps) given W, eps remapped so that x is unchanged (exact, but slow to mix: given W the
partition parameters are pinned).

The blocks are pure functions of (key, state) -> state (:func:`build_blocks`, :func:`sweep`), in
the shape of BlackJAX kernels; step size and inverse mass of the NUTS block are adapted during
warmup by Stan's windowed scheme (:mod:`inference.blocked_warmup`: dual averaging, and an
inverse mass from the chains' pooled curvature or from Welford variances).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import NamedTuple

import blackjax
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from numpyro import handlers
from numpyro.infer.util import constrain_fn, potential_energy
from tqdm.auto import tqdm

from inference.backends import Backend, RunResult
from inference.blocked_parts import collapsed_path_draw, linear_gaussian_parts, shift_boundaries
from inference.blocked_warmup import (
    adaptation_init,
    adaptation_update,
    curvature_inverse_mass,
    curvature_mass,
    final_step_size,
    warmup_schedule,
)
from inference.devices import per_device, shard_chains
from inference.program import inspect_program
from inference.starts import initial_positions
from zoo.collapsed_states import sweep_states, window_sweep_states
from zoo.handlers import condition_states, decode, integrate_out
from zoo.protocol import BlockedSpec

__all__ = ["Blocks", "SweepState", "build_blocks", "sweep", "start_state", "initial_inverse_mass",
           "chain_starts", "parameter_mask", "curvature_at_window_end", "pooled_curvature",
           "BLOCKED_OPTIONS", "BACKENDS", "chunk_size", "chunk_lengths"]

BLOCKED_OPTIONS = frozenset({"target_accept_prob", "max_tree_depth", "dense_mass", "state_sampler",
                             "state_sweeps", "boundary_moves", "max_shift", "window_length",
                             "mass_adaptation", "path_iterations"})


class Blocks(NamedTuple):
    """The exact conditional updates of one model and data set (pure functions).

    Attributes
    ----------
    theta_logdensity : callable (flat theta (d,), states) -> scalar
        log p(theta, z | y) up to a constant with the path integrated out, in unconstrained
        coordinates (the NUTS block's target).
    draw_states : callable (key, flat theta, states, path) -> states
        An update of z that leaves its conditional invariant: one sweep of single-site draws
        from p(z_t | z_{-t}, theta, y) with the path integrated out
        (:func:`zoo.collapsed_states.sweep_states`) when the path is collapsed, else an exact
        draw of z | x, theta (FFBS).
    draw_path : callable (key, flat theta, states) -> path
        The path after the NUTS block: an exact draw of x | z, theta, y (simulation smoother)
        when the path is collapsed; x(theta, eps) when it is whitened.
    record : callable (flat theta, states, path) -> dict
        Constrained values of every latent and deterministic site, with ``x`` and ``z``.
    unravel : callable
        Flat theta -> dict of unconstrained site values.
    remap : callable (flat theta, states, path) -> flat theta
        The NUTS block's position after a state update that leaves the path unchanged (the
        whitened path's eps for the new states; the identity when the path is collapsed).
    states_given_path : callable (key, flat theta, path) -> states
        An exact draw of z | x, theta (FFBS): the chains' first states, consistent with the
        start path.
    shift_states : callable (key, flat theta, states) -> states, optional
        For a whitened path: Metropolis shifts of segment boundaries of z with theta and eps
        held (so x = mu(theta, z) + U(theta, z)^-1 eps follows the new states), exact for
        p(z | theta, eps, y). None: no such move.
    given_path : callable (key, flat theta, states, path) -> flat theta, optional
        An update of some parameters given the new path and states, after it is drawn (the
        stick-breaking recurrence, whose Polya-gamma conditional crawls:
        :mod:`inference.blocked_augmented`). None: no such update.
    """

    theta_logdensity: Callable
    draw_states: Callable
    draw_path: Callable
    record: Callable
    unravel: Callable
    remap: Callable
    states_given_path: Callable
    shift_states: Callable | None = None
    given_path: Callable | None = None


class SweepState(NamedTuple):
    """State of one chain: the NUTS block's state (position = flat unconstrained theta), the
    discrete states z and the path x."""

    hmc: blackjax.mcmc.hmc.HMCState
    states: jax.Array
    path: jax.Array


def build_blocks(model: Callable, y, model_kwargs: Mapping, spec: BlockedSpec, theta_example: Mapping,
                 reference_path=None, state_sampler: str = "collapsed", state_sweeps: int = 4,
                 boundary_moves: int = 8, max_shift: int = 8, path_iterations: int | None = None,
                 window_length: int = 8) -> Blocks:
    """The blocks of the sweep for ``model`` on data ``y``.

    Parameters
    ----------
    model : zoo.protocol.Model
        A model with a blocked sampler (:meth:`zoo.protocol.Model.blocked_sampler`).
    y : array (T, N) or (B, T, N)
    model_kwargs : mapping
        Program arguments (``mask``, ``inputs``, ``frame``, ``bias_centres``).
    spec : zoo.protocol.BlockedSpec
        The path site, and whether it is collapsed or whitened given the states.
    theta_example : mapping
        Unconstrained values of the NUTS block's sites (the parameters; with the whitened path
        ``<path>_whitened`` too), giving the flat layout.
    reference_path : array (..., T, D), optional
        For a whitened path: the fixed path at which non-Gaussian emissions are linearised (a
        constant of the run, e.g. the point estimate's path; never the chain's current x).
    state_sampler : {"collapsed", "ffbs"}
        With a collapsed path: draw z site by site with x integrated out (default; it mixes
        where small dynamics noise ties z and x together), or by FFBS given x.
    state_sweeps : int
        Single-site sweeps over z per sweep of the sampler (``state_sampler="collapsed"``).
        Site by site, a segment boundary moves about one step per sweep; at fixed parameters on
        NASCAR (T = 2000) the sorted state occupancy had lag-1 autocorrelation 0.75-0.84 per
        state sweep, while one state sweep costs a fraction of the NUTS block's gradients.
    boundary_moves, max_shift : int
        After the state sweeps, Metropolis moves that shift a segment boundary by up to
        ``max_shift`` steps (:func:`zoo.collapsed_states.boundary_shift`; target p(z | theta,
        y), one Kalman filter each): larger steps than the single-site random walk. For a
        whitened path (the rSLDS, Poisson emissions), the same moves after the FFBS draw, on
        p(z | theta, eps, y) with eps held (``Blocks.shift_states``; one evaluation of the
        whitened density each).
    path_iterations : int, optional
        For a whitened path whose program takes it (the GP models, :mod:`zoo.sde_laplace`):
        Gauss-Newton iterations of the whitening's mean (``path_reference["iterations"]``).
    window_length : int
        With ``state_sampler="collapsed"``: after the single-site sweeps, one sweep of exact
        block draws of z over windows of this length
        (:func:`zoo.collapsed_states.window_move_states`: a boundary anywhere in a window, a
        short segment born or removed); 0 for none. Where a boundary's posterior is wide
        (NASCAR's last segment: its start spread over 15 steps) single-site moves and shifts
        random-walk over it.

    Returns
    -------
    Blocks
    """
    if state_sampler not in ("collapsed", "ffbs"):
        raise ValueError(f"state_sampler must be 'collapsed' or 'ffbs'; got {state_sampler!r}")
    if int(state_sweeps) < 1:
        raise ValueError(f"state_sweeps must be an integer >= 1; got {state_sweeps!r}")
    if int(window_length) != 0 and int(window_length) < 2:
        raise ValueError(f"window_length must be 0 (no block moves) or an integer >= 2; "
                         f"got {window_length!r}")
    kwargs = dict(model_kwargs)
    site = spec.path_site
    _, unravel = ravel_pytree(dict(theta_example))

    def draw_states_given(key, params, path):
        params = {k: v for k, v in params.items() if k not in (site, f"{site}_whitened",
                                                              f"{site}_whitened_target")}
        values = {**params, site: path}
        with decode(rng_key=key) as dec:
            handlers.substitute(handlers.seed(model, key), data=values)(y, **kwargs)
        draw = dec.posteriors[site].sample
        # the discrete states (int), or a conjugate site drawn given the path (the GP models' W)
        return draw.astype(jnp.int32) if spec.states_site == "z" else draw

    if spec.collapsed and spec.augmented:
        from inference.blocked_augmented import augmented_blocks  # it builds on this module's helpers

        return augmented_blocks(model, y, kwargs, site, unravel, draw_states_given, state_sweeps,
                                boundary_moves, max_shift)
    if spec.collapsed:
        def collapsed(states):
            return integrate_out(condition_states(model, states={site: states}))

        def theta_logdensity(flat, states):
            return -potential_energy(collapsed(states), (y,), kwargs, unravel(flat))

        def constrained(flat, states):
            return constrain_fn(collapsed(states), (y,), kwargs, unravel(flat), return_deterministic=True)

        def draw_states(key, flat, states, path):
            params = constrained(flat, states)
            if state_sampler == "ffbs":
                return draw_states_given(key, params, path)
            dynamics, emission, y_seen = linear_gaussian_parts(model, y, kwargs, site, params, states, path)

            def one(z, k):
                return sweep_states(k, dynamics, z, y_seen, emission.H, emission.d, emission.R), None

            k_sweep, k_shift, k_window = jax.random.split(key, 3)
            z = jax.lax.scan(one, states, jax.random.split(k_sweep, int(state_sweeps)))[0]
            if window_length:
                z = window_sweep_states(k_window, dynamics, z, y_seen, emission.H, emission.d, emission.R,
                                        int(window_length))
            return shift_boundaries(k_shift, z, lambda z: theta_logdensity(flat, z), int(boundary_moves),
                                     int(max_shift))

        def draw_path(key, flat, states):
            return collapsed_path_draw(collapsed(states), key, constrained(flat, states), y, kwargs)

        def record(flat, states, path):
            return {**constrained(flat, states), site: path, "z": states}

        def keep(flat, states, path):
            return flat

        def states_given_path(key, flat, path):
            return draw_states_given(key, constrained(flat, jnp.zeros(path.shape[:-1], jnp.int32)), path)

        return Blocks(theta_logdensity, draw_states, draw_path, record, unravel, keep, states_given_path)

    eps_site, target_site = f"{site}_whitened", f"{site}_whitened_target"
    x_ref = jnp.asarray(reference_path)

    conditional = spec.states_site is not None  # else the program integrates the block out itself

    def with_reference(states, target=None):
        ref = {"states": states if conditional else None, "path": x_ref, "given_states": True}
        if path_iterations is not None:
            ref["iterations"] = int(path_iterations)
        if target is not None:
            ref["whiten"] = target
        return {**kwargs, "path_reference": ref}

    def theta_logdensity(flat, states):
        return -potential_energy(model, (y,), with_reference(states), unravel(flat))

    def constrained(flat, states, target=None):
        return constrain_fn(model, (y,), with_reference(states, target), unravel(flat),
                            return_deterministic=True)

    def params_only(values):
        return {k: v for k, v in values.items() if k not in (eps_site, target_site, site)}

    def draw_states(key, flat, states, path):
        if not conditional:
            return states
        return draw_states_given(key, constrained(flat, states), path)

    def states_given_path(key, flat, path):
        if not conditional:
            return jnp.zeros((), jnp.int32)
        # placeholder states for the constrained parameters (a conjugate site: None)
        placeholder = jnp.zeros(path.shape[:-1], jnp.int32) if spec.states_site == "z" else None
        return draw_states(key, flat, placeholder, path)

    def remap(flat, states, path):
        values = dict(unravel(flat))
        values[eps_site] = constrained(flat, states, target=path)[target_site]
        return ravel_pytree(values)[0]

    def draw_path(key, flat, states):
        return constrained(flat, states)[site]

    def record(flat, states, path):
        out = {**params_only(constrained(flat, states)), site: path}
        if conditional:
            out[spec.states_site] = states
        return out

    shift_states = None
    if conditional and spec.states_site == "z" and boundary_moves:
        def shift_states(key, flat, states):
            # z | theta, eps: with eps held, a new z moves x to the whitening of the new states
            # (its conditional mean given them, plus the same standardised deviation), so a
            # boundary moves together with the path around it, which z | x cannot do where the
            # path nearly determines the states
            return shift_boundaries(key, states, lambda z: theta_logdensity(flat, z), int(boundary_moves),
                                     int(max_shift))

    return Blocks(theta_logdensity, draw_states, draw_path, record, unravel, remap, states_given_path,
                  shift_states)


def sweep(key, state: SweepState, blocks: Blocks, step_size, inverse_mass, max_tree_depth: int = 10):
    """One sweep: z by ``blocks.draw_states``; then either theta | z by NUTS with x integrated
    out and x | theta, z by the simulation smoother (collapsed path), or (theta, x) | z by NUTS
    with x whitened given z, its eps remapped first so that x is unchanged, after boundary
    shifts of z given (theta, eps) (``blocks.shift_states``; whitened path); last, where the
    blocks have one, an update of parameters given the new path (``blocks.given_path``).

    Returns
    -------
    state : SweepState
    info : blackjax NUTSInfo of the theta block
    """
    k_z, k_theta, k_x = jax.random.split(key, 3)
    states = blocks.draw_states(k_z, state.hmc.position, state.states, state.path)
    position = blocks.remap(state.hmc.position, states, state.path)
    if blocks.shift_states is not None:
        states = blocks.shift_states(jax.random.fold_in(k_z, 1), position, states)

    def logdensity(flat):
        return blocks.theta_logdensity(flat, states)

    # the target changed with z: recompute the log density and its gradient at the position
    hmc = blackjax.nuts.init(position, logdensity)
    hmc, info = blackjax.nuts.build_kernel()(k_theta, hmc, logdensity, step_size, inverse_mass,
                                              max_num_doublings=max_tree_depth)
    path = blocks.draw_path(k_x, hmc.position, states)
    if blocks.given_path is not None:
        position = blocks.given_path(jax.random.fold_in(k_x, 1), hmc.position, states, path)
        hmc = blackjax.nuts.init(position, logdensity)
    return SweepState(hmc, states, path), info


def curvature_at_window_end(inverse_mass, stage, blocks: Blocks, states: SweepState,
                            dense: bool) -> jax.Array:
    """The inverse mass after a warmup sweep: at a slow window's end (``stage[1]``) the chains'
    pooled curvature (:func:`curvature_mass`), else ``inverse_mass`` unchanged.

    Parameters
    ----------
    inverse_mass : array (C, d) or (C, d, d)
    stage : int array (2,)
        A row of :func:`warmup_schedule`.
    blocks : Blocks
    states : SweepState
        The chains (C, ...) after the sweep.
    dense : bool

    Returns
    -------
    array, the shape of ``inverse_mass``
    """
    return jax.lax.cond(stage[1] > 0, lambda _: pooled_curvature(inverse_mass, blocks, states, dense),
                        lambda _: inverse_mass, None)


def pooled_curvature(inverse_mass, blocks: Blocks, states: SweepState, dense: bool) -> jax.Array:
    """The chains' pooled curvature mass (:func:`curvature_mass`) in the shape and dtype of
    ``inverse_mass`` (C, d) or (C, d, d), for chains ``states`` (C, ...)."""
    # the chains share one mass after the first curvature; before it, each has its own start's
    previous = jnp.mean(inverse_mass, 0)
    mass = curvature_mass(blocks.theta_logdensity, states.hmc.position, states.states, dense,
                          previous.astype(states.hmc.position.dtype))
    return jnp.broadcast_to(mass, inverse_mass.shape).astype(inverse_mass.dtype)


def _stats(info, step_size, lp) -> dict:
    return {"diverging": info.is_divergent, "energy": info.energy, "n_steps": info.num_integration_steps,
            "tree_depth": info.num_trajectory_expansions, "acceptance_rate": info.acceptance_rate,
            "step_size": step_size, "lp": lp}


def _chunk_keys(key, num_chains: int, start: int, n: int):
    """Keys (C, n) for sweeps start .. start + n - 1 of every chain (independent of chunking)."""
    per_chain = jax.random.split(key, num_chains)
    return jax.vmap(lambda k: jax.vmap(lambda i: jax.random.fold_in(k, i))(jnp.arange(start, start + n)))(
        per_chain)


def chunk_size(total: int, most: int) -> int:
    """How many sweeps one compiled chunk runs: the largest divisor of ``total`` up to ``most``
    when it is at least a third of ``most``, else ``most``. Why: chunks of one size compile once
    (a shorter last chunk compiled a second time, about 30 s at NASCAR T = 2000).

    Parameters
    ----------
    total : int
        Sweeps to run (warmup or sampling).
    most : int
        The largest chunk wanted (progress-bar granularity).

    Returns
    -------
    int
    """
    most = max(1, min(most, total))
    best = max(d for d in range(1, most + 1) if total % d == 0)
    return best if 3 * best >= most else most


def chunk_lengths(total: int, size: int) -> list[int]:
    """The lengths of the chunks that run ``total`` sweeps in chunks of ``size`` (the last one
    shorter when ``size`` does not divide ``total``).

    Parameters
    ----------
    total, size : int

    Returns
    -------
    list of int
    """
    return [min(size, total - i) for i in range(0, total, size)]


def start_state(blocks: Blocks, key, theta, path) -> SweepState:
    """A chain's first state from start values (theta, x): z drawn first given that path
    (``blocks.states_given_path``), then the NUTS block's position remapped to it, so that
    the chain starts from a consistent (theta, z, x).

    Parameters
    ----------
    blocks : Blocks
    key : jax.random key
    theta : array (d,)
        Flat unconstrained NUTS-block position.
    path : array (..., T, D)

    Returns
    -------
    SweepState
    """
    states = blocks.states_given_path(key, theta, path)
    theta = blocks.remap(theta, states, path)
    hmc = blackjax.nuts.init(theta, lambda f: blocks.theta_logdensity(f, states))
    return SweepState(hmc, states, path)


def parameter_mask(theta: Mapping) -> jax.Array:
    """Flat mask (d,) of one chain's NUTS-block coordinates that are parameters (1), not a
    whitened path's eps (0): the unit-free parameters get a curvature-based first mass, eps is
    N(0, I)-like by construction."""
    return ravel_pytree({k: jnp.zeros_like(v) if k.endswith("_whitened") else jnp.ones_like(v)
                         for k, v in theta.items()})[0]


def initial_inverse_mass(blocks: Blocks, states: SweepState, which) -> jax.Array:
    """The NUTS block's first inverse mass, for chains (C, ...) in their start states: each
    chain's diagonal curvature on the parameter coordinates ``which`` and 1 on the others (a
    whitened path's eps; :func:`curvature_inverse_mass`).

    Returns
    -------
    array (C, d)
    """
    return jax.vmap(lambda st: curvature_inverse_mass(
        lambda f: blocks.theta_logdensity(f, st.states), st.hmc.position, which))(states)


def run_blocked(model, y, run_kwargs: Mapping, key, *, spec: BlockedSpec, start: Mapping, num_chains: int,
                num_warmup: int, num_samples: int, progress_bar: bool, options: Mapping,
                reference_path=None) -> tuple[dict, dict]:
    """Warm up and run ``num_chains`` chains of the blocked sweep (chains vectorized).

    Parameters
    ----------
    model : zoo.protocol.Model
    y : array (T, N) or (B, T, N)
    run_kwargs : mapping
        Program arguments.
    key : jax.random key
    spec : zoo.protocol.BlockedSpec
    start : dict name -> array (num_chains, ...)
        Unconstrained start values of every latent site of the marginal program (the path
        included).
    num_chains, num_warmup, num_samples : int
    progress_bar : bool
    options : mapping
        ``target_accept_prob`` (0.8), ``max_tree_depth`` (10), ``dense_mass`` (default True
        for a collapsed path: a dense inverse mass for the parameter block, which is small,
        since the dynamics slopes and offsets of a state are correlated; False for a whitened
        path, whose eps has T x D coordinates); ``state_sampler`` ("collapsed", the default,
        or "ffbs"), ``state_sweeps`` (4; 2 for the augmented sweep), ``boundary_moves`` (8),
        ``max_shift`` (8) and ``window_length`` (8), see
        :func:`build_blocks`; ``mass_adaptation``: at
        the end of each slow warmup window, the inverse mass from the pooled curvature of the chains' targets
        ("curvature", :func:`curvature_mass`; the default for a collapsed path, whose
        parameter block is small) or from the window's Welford (co)variances ("welford", the
        default for a whitened path, whose Hessian would be (T D)^2).
    reference_path : array (..., T, D), optional
        The fixed linearisation path of a whitened path (see :func:`build_blocks`).

    Returns
    -------
    samples : dict name -> array (C, S, ...)
        Constrained sites, the path ``x`` and the states ``z`` (int).
    stats : dict name -> array (C, S)
    """
    target = float(options.get("target_accept_prob", 0.8))
    depth = int(options.get("max_tree_depth", 10))
    dense = bool(options.get("dense_mass", spec.collapsed))
    mass_adaptation = str(options.get("mass_adaptation", "curvature" if spec.collapsed else "welford"))
    if mass_adaptation not in ("curvature", "welford"):
        raise ValueError(f"mass_adaptation must be 'curvature' or 'welford'; got {mass_adaptation!r}")
    welford = mass_adaptation == "welford"
    path_site = spec.path_site
    theta0 = {k: v for k, v in start.items() if k != path_site}
    path0 = jnp.asarray(start[path_site])
    if not spec.collapsed:  # eps of the whitened path joins the NUTS block; remapped at the start
        theta0[f"{path_site}_whitened"] = jnp.zeros_like(path0)
    blocks = build_blocks(model, y, run_kwargs, spec, jax.tree.map(lambda v: v[0], theta0), reference_path,
                          str(options.get("state_sampler", "collapsed")), _state_sweeps(options, spec),
                          int(options.get("boundary_moves", 8)), int(options.get("max_shift", 8)),
                          options.get("path_iterations"), int(options.get("window_length", 8)))
    flat0 = jax.vmap(lambda t: ravel_pytree(t)[0])(theta0)
    dtype = flat0.dtype

    k_init, k_warm, k_run = jax.random.split(key, 3)
    states = jax.jit(jax.vmap(lambda k, f, x: start_state(blocks, k, f, x)))(
        jax.random.split(k_init, num_chains), flat0, path0)
    which = parameter_mask(jax.tree.map(lambda v: v[0], theta0))
    inv_mass0 = jax.jit(lambda st: initial_inverse_mass(blocks, st, which))(states)
    adapt = jax.vmap(lambda im: adaptation_init(im, 0.1, dense))(inv_mass0)
    # chains split over the local devices when they divide evenly (each device runs its own,
    # see inference.devices.per_device)
    states, adapt = shard_chains((states, adapt), num_chains)

    def chains_chunk(keys, states, adapt, schedule, adapting):
        def chain_sweep(k, state, ad):
            return sweep(k, state, blocks, ad.step_size, ad.inverse_mass, depth)

        def chain_adapt(ad, stage, position, acceptance):
            return adaptation_update(ad, stage, position, acceptance, target, dense, welford)

        def body(carry, inp):
            states, ad = carry
            ks, stage = inp
            states, info = jax.vmap(chain_sweep)(ks, states, ad)
            out = (jax.vmap(blocks.record)(states.hmc.position, states.states, states.path),
                   jax.vmap(_stats)(info, ad.step_size, states.hmc.logdensity))
            new = jax.vmap(chain_adapt, in_axes=(0, None, 0, 0))(ad, stage, states.hmc.position,
                                                                  info.acceptance_rate)
            ad = jax.tree.map(lambda a, b: jnp.where(adapting, a, b), new, ad)
            return (states, ad), out

        (states, adapt), out = jax.lax.scan(body, (states, adapt), (jnp.swapaxes(keys, 0, 1), schedule))
        return states, adapt, jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), out)

    # one compiled chunk serves warmup and sampling (``adapting`` is traced): a second function
    # for the draws compiled the whole sweep again (about 20 s at NASCAR T = 2000)
    run_chunk = jax.jit(per_device(chains_chunk, num_chains, replicated=2))

    @jax.jit
    def curvature(states, adapt):
        return adapt._replace(inverse_mass=pooled_curvature(adapt.inverse_mass, blocks, states, dense))

    chunk = chunk_size(num_warmup, 10)
    # the curvature mass is set between chunks, not inside the chunk's scan: there its
    # conditional halved the speed of every warmup sweep (measured at NASCAR T = 2000, chains on
    # two devices); so the windows end with their chunks
    schedule = warmup_schedule(num_warmup, curvature=not welford, align=1 if welford else chunk)
    bar = tqdm(total=num_warmup + num_samples, desc="blocked sweep, warmup",
               disable=not progress_bar)
    done = 0
    for n in chunk_lengths(num_warmup, chunk):
        keys = _chunk_keys(k_warm, num_chains, done, n)
        sched = jnp.asarray(schedule[done:done + n])
        states, adapt, (_, s) = run_chunk(keys, states, adapt, sched, jnp.asarray(True))
        if not welford and schedule[done + n - 1, 1]:
            # the pooled mass comes back replicated over the devices: split it along the chains
            # again, as the chunk expects (another layout recompiled the chunk, 21 s at NASCAR
            # T = 2000)
            adapt = shard_chains(curvature(states, adapt), num_chains)
        bar.set_postfix(step_size=f"{float(jnp.mean(adapt.step_size)):.3g}",
                        depth=f"{float(jnp.mean(s['tree_depth'])):.1f}",
                        divergent=int(jnp.sum(s["diverging"])))
        done += n
        bar.update(n)
    # after warmup: the averaged step size of the last window
    if num_warmup:
        adapt = adapt._replace(step_size=jax.vmap(final_step_size)(adapt.dual_averaging).astype(dtype))
    bar.set_description("blocked sweep, sampling")
    draws, stats, done = [], [], 0
    # the warmup's chunk size where it divides the draws: the same compiled chunk
    size = chunk if num_warmup and num_samples % chunk == 0 else chunk_size(num_samples, 50)
    for n in chunk_lengths(num_samples, size):
        keys = _chunk_keys(k_run, num_chains, done, n)
        states, adapt, (d, s) = run_chunk(keys, states, adapt, jnp.zeros((n, 2), jnp.int32),
                                          jnp.asarray(False))
        bar.set_postfix(depth=f"{float(jnp.mean(s['tree_depth'])):.1f}",
                        divergent=int(jnp.sum(s["diverging"])))
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


def _state_sweeps(options: Mapping, spec: BlockedSpec) -> int:
    """Single-site sweeps of z per sweep: 4 by default, 2 for the augmented (stick-breaking)
    sweep, whose joint (z_t, omega_t) moves cost Polya-gamma draws (on NASCAR T = 2000, 2 gave
    0.70 ESS per second and 4 gave 0.46: benchmarks/results/rslds_links.md)."""
    return int(options.get("state_sweeps", 2 if spec.augmented else 4))


def chain_starts(model, y, run_kwargs: Mapping, key, num_chains: int, estimate: Mapping | None = None,
                 init="auto", options: Mapping | None = None, user_kwargs: Mapping | None = None
                 ) -> tuple[dict, dict, jax.Array, str]:
    """Where the chains of the blocked sampler start (shared by :func:`inference.fit` and
    :class:`inference.blocked_kernel.BlockedKernel`).

    Parameters
    ----------
    model : zoo.protocol.Model
    y : array (T, N) or (B, T, N)
    run_kwargs : mapping
        Program arguments (prepared, e.g. with the SLDS's frame).
    key : jax.random key
    num_chains : int
    estimate : mapping, optional
        Constrained values of every latent site of the plain program (the path included), e.g.
        ``model.initial_params``: passed through ``model.blocked_start`` (which may add program
        arguments, such as the SLDS's ``bias_centres``), then jittered per chain. It is also
        the whitened path's linearisation point.
    init : str or mapping
        Without ``estimate``: :func:`inference.starts.initial_positions`' ``init``.
    options : mapping, optional
        :func:`inference.starts.initial_positions`' options.
    user_kwargs : mapping, optional
        The user's program arguments (``inputs``, ``mask``) for ``model.blocked_start``;
        default: those of ``run_kwargs``.

    Returns
    -------
    positions : dict name -> array (num_chains, ...)
        Unconstrained start values of every latent site, the path included.
    run_kwargs : dict
        ``run_kwargs`` with ``blocked_start``'s extra arguments.
    reference_path : array (..., T, D)
        The whitened path's fixed linearisation point: the estimate's path, else a path given
        in ``init``, else zero (exact for Gaussian emissions, whose information does not depend
        on it).
    description : str
    """
    spec = model.blocked_sampler()
    y_host = np.asarray(y)
    run_kwargs = dict(run_kwargs)
    user = dict(user_kwargs) if user_kwargs is not None else {
        k: v for k, v in run_kwargs.items() if k in ("inputs", "mask")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if estimate is not None:
            values, extra = model.blocked_start(y_host, estimate, key, **user)
            run_kwargs.update(extra)
            # the program's coordinates may change with the extra arguments (centred offsets)
            latent = inspect_program(handlers.substitute(model, data=values), y_host, run_kwargs).latent
            values = {k: v for k, v in values.items() if k in latent}
            z0, _ = initial_positions(model, y, run_kwargs, values, jax.random.fold_in(key, 7), num_chains,
                                      latent)
            drawn = f"; {spec.states_site} drawn first given that path" if spec.states_site else ""
            args = f"; extra program arguments {sorted(extra)} from that estimate" if extra else ""
            text = (f"all {num_chains} chain(s) started from a point estimate (model.initial_params: "
                    "PCA of y and a fast fit, unless given), jittered by N(0, 0.01^2) in unconstrained "
                    f"space{drawn}{args}")
        else:
            latent = inspect_program(model, y_host, run_kwargs).latent
            z0, text = initial_positions(model, y, run_kwargs, init, key, num_chains, latent, options)
    site = spec.path_site
    if estimate is not None:
        x_ref = jnp.asarray(estimate[site])
    elif isinstance(init, Mapping) and site in init:
        x_ref = jnp.asarray(init[site])  # a user's start path (e.g. a MAP path)
    else:
        x_ref = jnp.zeros(latent[site])
    return z0, run_kwargs, x_ref, text


def _run(problem, key, settings) -> RunResult:
    model = problem.model
    spec = model.blocked_sampler()
    if spec is None:
        raise ValueError(f"method='blocked' needs a model with an exact blocked sampler; "
                         f"{type(model).__name__} has none with these settings (use method='nuts')")
    key_init, key_run = jax.random.split(key)
    C = settings.num_chains
    estimate = model.initial_params(problem.y_host, key_init, **problem.model_kwargs) \
        if settings.init in ("auto", "pca") else None
    z0, run_kwargs, x_ref, text = chain_starts(
        model, problem.y, problem.run_kwargs, key_init, C, estimate, settings.init,
        {**settings.options, "progress_bar": settings.progress_bar}, problem.model_kwargs)
    samples, stats = run_blocked(model, problem.y, run_kwargs, key_run, spec=spec, reference_path=x_ref,
                                 start=z0, num_chains=C, num_warmup=settings.num_warmup,
                                 num_samples=settings.num_samples, progress_bar=settings.progress_bar,
                                 options=settings.options)
    if spec.collapsed and spec.augmented:
        moves = int(settings.options.get("boundary_moves", 8))
        shifts = f", {moves} Metropolis shifts of segment boundaries of z | omega, theta, y" if moves else ""
        sweeps = _state_sweeps(settings.options, spec)
        text += ("; each sweep: z | x, theta by FFBS, the Polya-gamma variables omega | x, z, theta, "
                 f"{sweeps} sweeps of single-site z_t | z_-t, omega, theta, y{shifts} (path integrated out), "
                 "theta | z, omega, y by one NUTS transition with the path "
                 "integrated out (Kalman filter), x | theta, z, omega, y by the simulation smoother")
        kind = "blocked: FFBS + Polya-gamma | NUTS (path collapsed) | smoother"
    elif spec.collapsed:
        single_site = settings.options.get("state_sampler", "collapsed") == "collapsed"
        window = int(settings.options.get("window_length", 8))
        moves = int(settings.options.get("boundary_moves", 8))
        states_text = ("z_t | z_-t, theta, y site by site with the path integrated out"
                       + (f", then exact block draws of z over windows of {window} steps" if window else "")
                       + (f", then {moves} Metropolis shifts of segment boundaries" if moves else "")
                       if single_site else "z | x, theta by FFBS")
        text += (f"; each sweep: {states_text}, theta | z, y by one NUTS transition with the path "
                 "integrated out (Kalman filter), x | theta, z, y by the simulation smoother")
        kind = ("blocked: single-site z (path integrated out)" if single_site else "blocked: FFBS") + \
            " | NUTS (path collapsed) | smoother"
    elif spec.states_site is None:  # no conditional block: the program integrates it out
        text += ("; each sweep: one NUTS transition on the parameters and the path, x whitened around the "
                 "Gauss-Newton mean of its conditional (x = mu(theta) + U(theta)^-1 eps), the conjugate "
                 "weights integrated out (their conditional moments recorded)")
        kind = "blocked: NUTS (path whitened around its Gauss-Newton mean, weights integrated out)"
    elif spec.states_site != "z":  # a conjugate block given the path (the GP models' drift weights)
        w = spec.states_site
        text += (f"; each sweep: {w} | x, theta drawn exactly (conjugate), then (theta, x) | {w} by one NUTS "
                 f"transition with x whitened around the Gauss-Newton mean of p(x | {w}, theta, y) (x = mu + "
                 f"U^-1 eps, eps remapped after the {w} update so that x is unchanged)")
        kind = f"blocked: exact {w} | NUTS (path whitened around its Gauss-Newton mean)"
    else:
        moves = int(settings.options.get("boundary_moves", 8))
        shifts = f"{moves} Metropolis shifts of segment boundaries of z given (theta, eps), " if moves else ""
        text += ("; each sweep: z | x, theta by FFBS, eps remapped so that x is unchanged, "
                 f"{shifts}then (theta, x) | z by one NUTS transition with x whitened given z "
                 "(x = mu(theta, z) + U(theta, z)^-1 eps)")
        kind = "blocked: FFBS" + (" + boundary shifts" if moves else "") + \
            " | NUTS (path whitened given the states)"
    return RunResult(samples, stats, text, {"sampler": kind})


BACKENDS = {"blocked": Backend("numpyro", BLOCKED_OPTIONS, _run)}
