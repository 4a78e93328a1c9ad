"""Pieces of the blocked sampler's state moves shared by its switching-model blocks
(:mod:`inference.blocked`, :mod:`inference.blocked_augmented`): boundary shifts of z for a
given target, and the linear-Gaussian parts of a program read off its own sites."""

from __future__ import annotations

from collections.abc import Callable

import jax
from numpyro import handlers

from zoo.collapsed_states import boundary_shift
from zoo.distributions import LinearGaussianSSM, PathPosterior, SwitchingLinearDynamics
from zoo.handlers import condition_states, decode, integrate_out

__all__ = ["collapsed_path_draw", "linear_gaussian_parts", "shift_boundaries"]


def collapsed_path_draw(program: Callable, key, params, y, kwargs) -> jax.Array:
    """An exact draw of the path that ``program`` integrates out (its one
    :class:`~zoo.distributions.PathPosterior`), given constrained ``params``.

    Parameters
    ----------
    program : callable
        A program whose path is integrated out (``integrate_out(condition_states(...))``).
    key : jax.random key
    params : mapping
    y : array
    kwargs : mapping
        The program's arguments.

    Returns
    -------
    array (..., T, D)
    """
    with decode(rng_key=key) as dec:
        handlers.substitute(handlers.seed(program, key), data=params)(y, **kwargs)
    (post,) = [p for p in dec.posteriors.values() if isinstance(p, PathPosterior)]
    return post.sample


def shift_boundaries(key, states, log_density: Callable, moves: int, max_shift: int):
    """``moves`` Metropolis boundary shifts of z (:func:`zoo.collapsed_states.boundary_shift`)
    for the target ``log_density`` (z -> scalar).

    Parameters
    ----------
    key : jax.random key
    states : int array (..., T)
    log_density : callable
    moves, max_shift : int

    Returns
    -------
    int array (..., T)
    """
    if not moves:
        return states

    def shift(carry, k):
        z, value = carry
        z, value, _ = boundary_shift(k, z, log_density, max_shift, value)
        return (z, value), None

    carry = (states, log_density(states))
    return jax.lax.scan(shift, carry, jax.random.split(key, moves))[0][0]


def linear_gaussian_parts(model, y, kwargs, site, params, states, path, augmentation=None):
    """The switching path's per-state distribution and the Kalman marginal's emission (H, d, R)
    of one parameter draw, read off the program's own sites; and y as that site sees it.

    Parameters
    ----------
    model, y, kwargs, site
        The program, its data and arguments, the path site.
    params : mapping
        Constrained parameter values.
    states : int array (..., T)
    path : array (..., T, D)
    augmentation : array (..., T-1, K-1), optional
        Polya-gamma variables of stick-breaking transitions.

    Returns
    -------
    dynamics : zoo.distributions.SwitchingLinearDynamics
    emission : zoo.distributions.LinearGaussianSSM
    y_seen : array
    """
    seeded = handlers.substitute(handlers.seed(model, 0), data={**params, site: path})
    dynamics = handlers.trace(seeded).get_trace(y, **kwargs)[site]["fn"]
    extra = {} if augmentation is None else {site: augmentation}
    conditioned = integrate_out(condition_states(model, states={site: states}, augmentation=extra))
    marginal = handlers.substitute(handlers.seed(conditioned, 0), data=params)
    (obs,) = [s for s in handlers.trace(marginal).get_trace(y, **kwargs).values()
              if s["type"] == "sample" and isinstance(s["fn"], LinearGaussianSSM)]
    if not isinstance(dynamics, SwitchingLinearDynamics):
        raise ValueError(f"site {site!r} is not a SwitchingLinearDynamics path: use state_sampler='ffbs'")
    return dynamics, obs["fn"], obs["value"]
