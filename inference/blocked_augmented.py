"""The blocked sampler's blocks for stick-breaking recurrent transitions (:class:`zoo.rslds.RSLDS`
with ``transition_link="stick_breaking"`` and Gaussian emissions).

Polya-gamma variables omega make the transitions Gaussian in the path given the states (Polson,
Scott and Windle 2013; Linderman et al. 2017), so the path is integrated out by the Kalman filter
for the parameters and for single-site moves of the states, as for the SLDS
(:mod:`inference.blocked`). The recurrence itself is then updated with omega integrated out,
given the path and the states: each stick is a Bayesian logistic regression of "the transition
stopped at this stick" on (x_{t-1}, 1, u_t) over the transitions that reached it, and
:func:`stick_regressions_step` draws it by an independence Metropolis-Hastings step whose
proposal is the regression's Laplace approximation.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from jax.flatten_util import ravel_pytree
from jax.scipy.linalg import solve_triangular
from numpyro import handlers
from numpyro.infer.util import constrain_fn, potential_energy

from inference.blocked import Blocks
from inference.blocked_parts import collapsed_path_draw, linear_gaussian_parts, shift_boundaries
from zoo.collapsed_states import augmented_sweep_states
from zoo.handlers import condition_states, integrate_out
from zoo.polya_gamma import sample_pg1

__all__ = ["augmented_blocks", "stick_regressions_step"]

_RECURRENCE = ("recurrence_weights", "recurrence_bias", "input_transitions")


class _Recurrence(NamedTuple):
    names: tuple[str, ...]  # the recurrence sites the NUTS block carries, in coefficient order
    widths: tuple[int, ...]  # their coefficients per stick
    precision: jax.Array  # (P,) prior precisions of one stick's coefficients


def _recurrence_sites(model, y, kwargs) -> _Recurrence:
    """Which recurrence sites are free and their independent Normal priors' precisions, read off
    the program (zero means, as :class:`zoo.rslds.RSLDS` has them); none when the weights or
    the biases are fixed (a conditioned program)."""
    trace = handlers.trace(handlers.seed(model, 0)).get_trace(y, **kwargs)
    names, widths, precision = [], [], []
    for name in _RECURRENCE:
        if name not in trace or trace[name]["type"] != "sample" or trace[name]["is_observed"]:
            continue
        fn = trace[name]["fn"]
        while isinstance(fn, dist.Independent | dist.ExpandedDistribution):
            fn = fn.base_dist
        if not isinstance(fn, dist.Normal):
            raise ValueError(f"the recurrence update needs Normal priors; {name} has {type(fn).__name__}")
        shape = trace[name]["value"].shape
        scale = jnp.broadcast_to(fn.scale, shape).reshape(shape[0], -1)[0]
        names.append(name)
        widths.append(scale.shape[0])
        precision.append(1.0 / scale**2)
    if names[:2] != ["recurrence_weights", "recurrence_bias"]:
        # a program with some of them fixed: NUTS alone moves the free ones
        return _Recurrence((), (), jnp.zeros(0))
    return _Recurrence(tuple(names), tuple(widths), jnp.concatenate(precision))


def stick_regressions_step(key, beta, phi, next_states, present, prior_precision, iterations: int = 30):
    """One independence Metropolis-Hastings update of every stick's logistic regression.

    Stick k's likelihood is prod over the transitions that reached it (z_{t+1} >= k) of
    sigmoid(phi_t' beta_k)^[z_{t+1} = k] sigmoid(-phi_t' beta_k)^[z_{t+1} > k], its prior
    N(0, diag(1 / prior_precision)). The proposal is N(m_k, H_k^-1) with m_k and H_k from
    ``iterations`` Newton steps started at zero (so they depend on the data, not on the current
    beta: an independence proposal, exact for any number of steps).

    Parameters
    ----------
    key : jax.random key
    beta : array (K-1, P)
        Current coefficients.
    phi : array (n, P)
        Covariates of each transition (x_{t-1}, 1, u_t).
    next_states : int array (n,)
        The state each transition went to.
    present : bool array (n,)
        Transitions that exist (padded steps excluded).
    prior_precision : array (P,)
    iterations : int

    Returns
    -------
    beta : array (K-1, P)
    accepted : bool array (K-1,)
    """
    sticks, P = beta.shape
    dtype = beta.dtype
    phi = phi.astype(dtype)

    def one(k, key, b):
        w = (present & (next_states >= k)).astype(dtype)
        a = (next_states == k).astype(dtype)

        def log_post(c):
            eta = phi @ c
            return jnp.sum(w * (a * eta - jnp.logaddexp(0.0, eta))) - 0.5 * jnp.sum(prior_precision * c * c)

        def precision_at(c):
            p = jax.nn.sigmoid(phi @ c)
            return (phi * (w * p * (1 - p))[:, None]).T @ phi + jnp.diag(prior_precision)

        def newton(c, _):
            g = phi.T @ (w * (a - jax.nn.sigmoid(phi @ c))) - prior_precision * c
            return c + jnp.linalg.solve(precision_at(c), g), None

        m = jax.lax.scan(newton, jnp.zeros(P, dtype), None, length=iterations)[0]
        L = jnp.linalg.cholesky(precision_at(m))  # H = L L'

        def log_q(c):  # the proposal's log density up to its constant
            v = L.T @ (c - m)
            return -0.5 * jnp.sum(v * v)

        k_prop, k_acc = jax.random.split(key)
        eps = jax.random.normal(k_prop, (P,), dtype)
        prop = m + solve_triangular(L.T, eps, lower=False)  # covariance H^-1
        log_ratio = log_post(prop) - log_post(b) + log_q(b) - log_q(prop)
        accept = jnp.isfinite(log_ratio) & (jnp.log(jax.random.uniform(k_acc, (), dtype)) < log_ratio)
        return jnp.where(accept, prop, b), accept

    return jax.vmap(one)(jnp.arange(sticks), jax.random.split(key, sticks), beta)


def augmented_blocks(model, y, kwargs, site, unravel, draw_states_given, state_sweeps: int,
                     boundary_moves: int, max_shift: int) -> Blocks:
    """The blocks of a model whose transitions are Gaussian in the path given Polya-gamma
    variables omega (stick-breaking recurrent transitions, :class:`zoo.rslds.RSLDS`).

    The chain's states are the pair (z, omega), omega (..., T-1, K-1): one variable per
    transition and stick. For the sticks a transition reached (z_t >= k) omega ~ PG(1, nu), nu
    = R_k x_{t-1} + r_k, the conditional that makes the factor exp(kappa nu - omega nu^2 / 2)
    exact; for the others omega ~ PG(1, 0), their conditional (they enter no factor). Given
    (z, omega) the path is a Gauss-Markov path with extra information (Kalman-integrable), so
    the NUTS block sees theta only and the path is drawn exactly after it, as for the SLDS.
    A sweep: z | x, theta by FFBS, omega | x, z, theta, then ``state_sweeps`` sweeps of
    single-site moves of (z_t, omega_t) together (``refresh`` of
    :func:`zoo.collapsed_states.single_move_states`) and Metropolis shifts of z's
    segment boundaries on p(z | omega, theta, y), both with the path integrated out (moves that
    z | x cannot make where the path nearly determines the states), theta | z, omega, y by NUTS,
    x | theta, z, omega, y by the simulation smoother, and last the recurrence (R, r) | x, z
    with omega integrated out (:func:`stick_regressions_step`): given omega the recurrence is
    pinned near its last value where the regimes are nearly separable (measured on NASCAR
    T = 2000: lag-1 autocorrelation 0.97-0.99 of R and r across sweeps with NUTS alone).

    Parameters
    ----------
    model, y, kwargs, site, unravel
        As in :func:`inference.blocked.build_blocks` (``unravel``: flat theta -> dict).
    draw_states_given : callable (key, constrained params, path) -> z
        The exact draw of z | x, theta (FFBS).
    state_sweeps, boundary_moves, max_shift : int
        As in :func:`inference.blocked.build_blocks`.

    Returns
    -------
    Blocks
    """

    def collapsed(states):
        z, omega = states
        return integrate_out(condition_states(model, states={site: z}, augmentation={site: omega}))

    def theta_logdensity(flat, states):
        return -potential_energy(collapsed(states), (y,), kwargs, unravel(flat))

    def constrained(flat, states):
        return constrain_fn(collapsed(states), (y,), kwargs, unravel(flat), return_deterministic=True)

    def draw_omega(key, params, z, path):
        seeded = handlers.substitute(handlers.seed(model, 0), data={**params, site: path})
        dynamics = handlers.trace(seeded).get_trace(y, **kwargs)[site]["fn"]
        r = dynamics.r if jnp.ndim(dynamics.r) == 1 else dynamics.r[..., 1:, :]
        nu = path[..., :-1, :] @ dynamics.R.T + r
        reached = z[..., 1:, None] >= jnp.arange(nu.shape[-1])
        return sample_pg1(key, jnp.where(reached, nu, 0.0))

    # the number of sticks, K - 1, from the program's switching site
    sticks = handlers.trace(handlers.seed(model, 0)).get_trace(y, **kwargs)[site]["fn"].R.shape[0]

    def placeholder(path):
        z = jnp.zeros(path.shape[:-1], jnp.int32)
        return z, jnp.zeros(path.shape[:-2] + (path.shape[-2] - 1, sticks), path.dtype)

    def states_given_path(key, flat, path):
        params = constrained(flat, placeholder(path))
        k_z, k_omega = jax.random.split(key)
        z = draw_states_given(k_z, params, path)
        return z, draw_omega(k_omega, params, z, path)

    def draw_states(key, flat, states, path):
        k_z, k_omega, k_sweep, k_shift = jax.random.split(key, 4)
        params = constrained(flat, states)
        z = draw_states_given(k_z, params, path)
        omega = draw_omega(k_omega, params, z, path)
        dynamics, emission, y_seen = linear_gaussian_parts(model, y, kwargs, site, params, z, path, omega)

        def one(carry, k):
            z, omega = carry
            return augmented_sweep_states(k, dynamics, omega, z, y_seen, emission.H, emission.d,
                                          emission.R), None

        z, omega = jax.lax.scan(one, (z, omega), jax.random.split(k_sweep, int(state_sweeps)))[0]
        z = shift_boundaries(k_shift, z, lambda z: theta_logdensity(flat, (z, omega)), int(boundary_moves),
                              int(max_shift))
        return z, omega

    def draw_path(key, flat, states):
        return collapsed_path_draw(collapsed(states), key, constrained(flat, states), y, kwargs)

    def record(flat, states, path):
        return {**constrained(flat, states), site: path, "z": states[0]}

    def keep(flat, states, path):
        return flat

    recurrence = _recurrence_sites(model, y, kwargs)
    inputs = kwargs.get("inputs")

    def given_path(key, flat, states, path):
        values = dict(unravel(flat))
        beta = jnp.concatenate([values[n].reshape(values[n].shape[0], -1) for n in recurrence.names], 1)
        phi = [path[..., :-1, :], jnp.ones(path.shape[:-1] + (1,), path.dtype)[..., 1:, :]]
        if "input_transitions" in recurrence.names:
            phi.append(jnp.broadcast_to(inputs, path.shape[:-2] + inputs.shape[-2:])[..., 1:, :])
        phi = jnp.concatenate(phi, -1)
        z = states[0]
        mask = kwargs.get("mask")
        present = jnp.ones(z.shape, bool) if mask is None else jnp.asarray(mask, bool)
        precision = recurrence.precision.astype(beta.dtype)
        beta, _ = stick_regressions_step(key, beta, phi.reshape(-1, phi.shape[-1]), z[..., 1:].reshape(-1),
                                         present[..., 1:].reshape(-1), precision)
        cut = 0
        for name, width in zip(recurrence.names, recurrence.widths, strict=True):
            values[name] = beta[:, cut:cut + width].reshape(values[name].shape)
            cut += width
        return ravel_pytree(values)[0]

    return Blocks(theta_logdensity, draw_states, draw_path, record, unravel, keep, states_given_path,
                  given_path=given_path if recurrence.names else None)


