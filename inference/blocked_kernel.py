"""The blocked sweep as a NumPyro ``MCMCKernel`` and as a BlackJAX ``SamplingAlgorithm``.

:func:`inference.fit` runs the sweep of :mod:`inference.blocked` with all chains vectorized and
the inverse mass pooled over chains. These adapters give the same blocks to code written for
NumPyro or BlackJAX:

- :class:`BlockedKernel` for ``numpyro.infer.MCMC``: one chain per kernel state, warmup by the
  same Stan windows (dual averaging; the inverse mass from the chain's own curvature, or Welford
  variances, at each slow window's end). Samples are the constrained sites with the path ``x``
  and the integer states ``z``.
- :func:`blocked_algorithm` for BlackJAX: ``init(theta, states, path)`` and
  ``step(key, state)``, a pure kernel for a given step size and inverse mass (no adaptation).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import NamedTuple

import blackjax
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from numpyro.infer.mcmc import MCMCKernel

from inference.blocked import (
    Blocks,
    SweepState,
    build_blocks,
    chain_starts,
    curvature_at_window_end,
    initial_inverse_mass,
    parameter_mask,
    start_state,
    sweep,
)
from inference.blocked_warmup import (
    Adaptation,
    adaptation_init,
    adaptation_update,
    final_step_size,
    warmup_schedule,
)
from zoo.protocol import as_model

__all__ = ["BlockedKernel", "BlockedKernelState", "adapt_after_sweep", "blocked_algorithm"]


def blocked_algorithm(blocks: Blocks, step_size: float, inverse_mass, max_tree_depth: int = 10
                      ) -> blackjax.base.SamplingAlgorithm:
    """The sweep as a BlackJAX sampling algorithm with a fixed step size and inverse mass.

    Parameters
    ----------
    blocks : Blocks
        From :func:`inference.blocked.build_blocks`.
    step_size : float
    inverse_mass : array (d,) or (d, d)
    max_tree_depth : int

    Returns
    -------
    blackjax.base.SamplingAlgorithm
        ``init(theta (d,), states (..., T), path (..., T, D)) -> SweepState`` and
        ``step(key, SweepState) -> (SweepState, NUTSInfo)``.
    """
    def init(theta, states, path) -> SweepState:
        hmc = blackjax.nuts.init(theta, lambda f: blocks.theta_logdensity(f, states))
        return SweepState(hmc, states, path)

    def step(key, state: SweepState):
        return sweep(key, state, blocks, step_size, inverse_mass, max_tree_depth)

    return blackjax.base.SamplingAlgorithm(init, step)


def adapt_after_sweep(adapt: Adaptation, stage, state: SweepState, info, blocks: Blocks, target: float,
                      dense: bool, welford: bool, last=False) -> Adaptation:
    """Stan's windowed adaptation of one chain's NUTS block after a warmup sweep: dual averaging
    of the step size; at a slow window's end the inverse mass from this chain's curvature
    (:func:`inference.blocked.curvature_at_window_end`) or from the window's Welford variances.

    Parameters
    ----------
    adapt : Adaptation
    stage : int array (2,)
        A row of :func:`inference.blocked_warmup.warmup_schedule`.
    state : SweepState
        The chain after the sweep.
    info : blackjax NUTSInfo
        The sweep's NUTS transition.
    blocks : Blocks
    target : float
        Target acceptance rate.
    dense, welford : bool
        Dense inverse mass; Welford (else curvature) mass at the windows' ends.
    last : bool or bool array
        The last warmup sweep: the step size becomes the window's averaged one.

    Returns
    -------
    Adaptation
    """
    ad = adaptation_update(adapt, stage, state.hmc.position, info.acceptance_rate, target, dense, welford)
    if not welford:
        one = jax.tree.map(lambda v: v[None], state)  # a batch of one chain
        mass = curvature_at_window_end(ad.inverse_mass[None], stage, blocks, one, dense)
        ad = ad._replace(inverse_mass=mass[0])
    final = jnp.asarray(final_step_size(ad.dual_averaging), ad.step_size.dtype)
    return ad._replace(step_size=jnp.where(last, final, ad.step_size))


class BlockedKernelState(NamedTuple):
    """State of :class:`BlockedKernel`: the sweep, its adaptation, the iteration, the key and
    the current draw (``sample_field``)."""

    sweep: SweepState
    adapt: Adaptation
    i: jax.Array
    rng_key: jax.Array
    draw: dict


class BlockedKernel(MCMCKernel):
    """The blocked sampler of a switching model as a NumPyro ``MCMCKernel``.

    Parameters
    ----------
    model : zoo model or NumPyro program
        A model with an exact blocked sampler (``blocked_sampler()``, e.g. ``zoo.SLDS``).
    target_accept_prob : float
    max_tree_depth : int
    dense_mass : bool, optional
        Default: dense for a collapsed path, diagonal for a whitened one.
    state_sampler : {"collapsed", "ffbs"}
    state_sweeps, boundary_moves, max_shift, window_length : int
        See :func:`inference.blocked.build_blocks`.
    mass_adaptation : {"curvature", "welford"}, optional
        Default: curvature for a collapsed path, Welford for a whitened one.

    Attributes
    ----------
    blocks : Blocks or None
        The sweep's blocks for the data of the last ``init`` (None before it), e.g. to continue
        with :func:`blocked_algorithm` from ``mcmc.last_state``.

    Notes
    -----
    ``MCMC(BlockedKernel(model), ...).run(key, y, **model_kwargs)``; ``init_params`` (optional)
    are constrained start values of the model's latent sites (the path included), else the
    model's ``initial_params``. Data-derived program arguments (``model.prepare``, e.g. the
    SLDS's frame) are computed from ``y`` at ``init``. The samples hold the constrained sites,
    ``x`` and ``z`` (no ``postprocess_fn`` is needed).
    """

    sample_field = "draw"

    def __init__(self, model: Callable, target_accept_prob: float = 0.8, max_tree_depth: int = 10,
                 dense_mass: bool | None = None, state_sampler: str = "collapsed", state_sweeps: int = 4,
                 mass_adaptation: str | None = None, boundary_moves: int = 8, max_shift: int = 8,
                 window_length: int = 8):
        self.model = as_model(model)
        self.spec = self.model.blocked_sampler()
        if self.spec is None:
            raise ValueError(f"model: {type(self.model).__name__} has no exact blocked sampler with "
                             "these settings")
        self.target = float(target_accept_prob)
        self.depth = int(max_tree_depth)
        self.dense = self.spec.collapsed if dense_mass is None else bool(dense_mass)
        self.state_sampler, self.state_sweeps = state_sampler, int(state_sweeps)
        self.boundary_moves, self.max_shift = int(boundary_moves), int(max_shift)
        self.window_length = int(window_length)
        adaptation = mass_adaptation or ("curvature" if self.spec.collapsed else "welford")
        if adaptation not in ("curvature", "welford"):
            raise ValueError(f"mass_adaptation must be 'curvature' or 'welford'; got {adaptation!r}")
        self.welford = adaptation == "welford"
        self.blocks = None

    def init(self, rng_key, num_warmup, init_params, model_args, model_kwargs):
        (y,) = model_args
        kwargs = {k: v for k, v in dict(model_kwargs or {}).items() if v is not None}
        kwargs = {**kwargs, **self.model.prepare(y, kwargs)}
        k_start, k_state = jax.random.split(rng_key)
        user = {k: v for k, v in kwargs.items() if k in ("inputs", "mask")}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            estimate = dict(init_params) if init_params is not None else self.model.initial_params(
                np.asarray(y), k_start, **user)
        z0, kwargs, ref, _ = chain_starts(self.model, y, kwargs, k_start, 1, estimate, "auto")
        site = self.spec.path_site
        theta0 = {k: v[0] for k, v in z0.items() if k != site}
        path0 = jnp.asarray(z0[site][0])
        if not self.spec.collapsed:
            theta0[f"{site}_whitened"] = jnp.zeros_like(path0)
        blocks = build_blocks(self.model, y, kwargs, self.spec, theta0, ref, self.state_sampler,
                              self.state_sweeps, self.boundary_moves, self.max_shift,
                              window_length=self.window_length)
        self.blocks = blocks
        self._schedule = jnp.asarray(warmup_schedule(int(num_warmup), curvature=not self.welford))
        self._num_warmup = int(num_warmup)
        start = start_state(blocks, k_state, ravel_pytree(theta0)[0], path0)
        one = jax.tree.map(lambda v: v[None], start)  # a batch of one chain
        inv_mass = initial_inverse_mass(blocks, one, parameter_mask(theta0))[0]
        adapt = adaptation_init(inv_mass, 0.1, self.dense)
        flat, states = start.hmc.position, start.states
        draw = blocks.record(flat, states, path0)
        return BlockedKernelState(start, adapt, jnp.zeros((), jnp.int32), rng_key, draw)

    def sample(self, state: BlockedKernelState, model_args, model_kwargs) -> BlockedKernelState:
        blocks, W = self.blocks, self._num_warmup
        rng_key, key = jax.random.split(state.rng_key)
        ad = state.adapt
        new, info = sweep(key, state.sweep, blocks, ad.step_size, ad.inverse_mass, self.depth)
        if W:
            stage = self._schedule[jnp.minimum(state.i, W - 1)]
            ad = jax.lax.cond(state.i < W, lambda a: adapt_after_sweep(
                a, stage, new, info, blocks, self.target, self.dense, self.welford, last=state.i == W - 1),
                lambda a: a, ad)
        draw = blocks.record(new.hmc.position, new.states, new.path)
        return BlockedKernelState(new, ad, state.i + 1, rng_key, draw)

    def get_diagnostics_str(self, state: BlockedKernelState) -> str:
        return f"step size {float(state.adapt.step_size):.2e}"

    @property
    def default_fields(self):
        return ("draw",)
