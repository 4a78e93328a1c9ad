"""Exact Polya-gamma PG(1, c) draws, for Gibbs updates of logistic and stick-breaking likelihoods.

Polya-gamma augmentation (Polson, Scott and Windle 2013, JASA 108:1339) rests on the identity

    (e^psi)^a / (1 + e^psi)^b = 2^-b e^(kappa psi) E[exp(-omega psi^2 / 2)],  kappa = a - b/2,

with omega ~ PG(b, 0). Given omega ~ PG(b, psi), a logistic (or stick-breaking) likelihood term
is therefore exp(kappa psi - omega psi^2 / 2): Gaussian in the linear predictor psi, so the
predictor's conditional posterior is Gaussian again and can be drawn or integrated exactly.

:func:`sample_pg1` draws PG(1, c) = J*(1, |c|/2) / 4 exactly with Devroye's alternating-series
accept-reject sampler for J*(1, z) (the paper's Section 4 and appendix), truncation point t = 0.64:
the proposal is a mixture of an exponential on (t, inf) and an inverse Gaussian IG(1/z, 1) on
(0, t), both tilted by exp(-z^2 x / 2), and a proposal is accepted by the alternating series of
J*'s density. Pure JAX (``lax.while_loop`` per draw, ``vmap`` over draws), so it runs under
``jit`` and ``vmap``. Over 99.9% of proposals are accepted, for every c.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy.special import log_ndtr

__all__ = ["pg1_mean", "sample_pg1", "stick_breaking_factor"]

_T = 0.64  # Devroye's truncation point: the two piecewise series forms meet here
_MAX_TERMS = 200  # cap on the alternating series; it decides within 2-3 terms in practice


def _log_mixture_weights(z: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Log masses (log p, log q) of the proposal's right (x > t) and left (x < t) pieces.

    p = pi / (2K) exp(-K t) with K = pi^2/8 + z^2/2, and q = 2 exp(-z) F_IG(t | 1/z, 1), where
    F_IG(t | mu, 1) = Phi((t/mu - 1)/sqrt(t)) + exp(2/mu) Phi(-(t/mu + 1)/sqrt(t)). The second
    term, exp(2z) times a normal tail, is summed in log space so neither overflows (|z| ~ 1e3);
    at z = 0 (mu = inf) the same formula gives the Levy limit 2 Phi(-1/sqrt(t)).
    """
    K = math.pi**2 / 8 + z**2 / 2
    log_p = math.log(math.pi / 2) - jnp.log(K) - K * _T
    sqrt_t = math.sqrt(_T)
    log_q = math.log(2.0) + jnp.logaddexp(-z + log_ndtr((_T * z - 1) / sqrt_t),
                                          z + log_ndtr(-(_T * z + 1) / sqrt_t))
    return log_p, log_q


def _truncated_inverse_gaussian(key: jax.Array, z: jax.Array) -> jax.Array:
    """One draw of IG(mu = 1/z, lambda = 1) truncated to (0, t); scalar z >= 0.

    For mu > t (z < 1/t, including z = 0): X = t / (1 + t E)^2 with E ~ Exp(1), kept when
    E^2 <= 2 E' / t (this is the Levy distribution on (0, t)), then tilted by accepting with
    probability exp(-z^2 X / 2). For mu <= t: Michael-Schucany-Haas IG draws until X < t.
    """
    dtype = z.dtype
    small_mean = z >= 1 / _T  # mu = 1/z <= t
    mu = 1 / jnp.maximum(z, 1 / _T)  # only used when small_mean

    def propose(state):
        key, sub = jax.random.split(state[0])
        u = jax.random.uniform(sub, (5,), dtype)
        # mu > t: Levy proposal by exponentials, tilted by exp(-z^2 x / 2)
        e1, e2 = -jnp.log1p(-u[0]), -jnp.log1p(-u[1])
        x_levy = _T / (1 + _T * e1) ** 2
        ok_levy = (e1**2 <= 2 * e2 / _T) & (u[2] <= jnp.exp(-z**2 * x_levy / 2))
        # mu <= t: IG(mu, 1) by Michael-Schucany-Haas, with chi^2_1 draw y by Box-Muller;
        # x = mu (1 + w - sqrt(w^2 + 2w)), w = mu y / 2, written without cancellation
        y = -2 * jnp.log1p(-u[3]) * jnp.cos(2 * math.pi * u[4]) ** 2
        w = mu * y / 2
        x_ig = mu / (1 + w + jnp.sqrt(w * (w + 2)))
        x_ig = jnp.where(u[2] > mu / (mu + x_ig), mu**2 / x_ig, x_ig)  # u[2]: one branch only
        x = jnp.where(small_mean, x_ig, x_levy)
        return key, x, jnp.where(small_mean, x_ig < _T, ok_levy)

    init = (key, jnp.zeros((), dtype), jnp.bool_(False))
    return jax.lax.while_loop(lambda s: ~s[2], propose, init)[1]


def _series_accepts(x: jax.Array, v: jax.Array) -> jax.Array:
    """Whether u = v a_0(x) falls under J*(1, 0)'s density sum_n (-1)^n a_n(x): decided by the
    partial sums, which alternate about the density (a_n decreases in n for this t).

    Works with the ratios a_n / a_0 (so tiny a_0 at small x cannot underflow to a 0 = 0 tie):
    (2n + 1) exp(-n (n+1) pi^2 x / 2) for x > t and (2n + 1) exp(-2 n (n+1) / x) for x <= t.
    """
    dtype = x.dtype

    def body(state):
        n, s, _, _ = state
        n = n + 1
        nf = n.astype(dtype)
        rate = jnp.where(x > _T, math.pi**2 * x / 2, 2 / x)
        r = (2 * nf + 1) * jnp.exp(-nf * (nf + 1) * rate)
        odd = n % 2 == 1
        s = jnp.where(odd, s - r, s + r)
        decided = jnp.where(odd, v < s, v > s)  # odd n: s is a lower bound (accept below it),
        # even n: an upper bound (reject above it)
        return n, s, decided, odd

    init = (jnp.int32(0), jnp.ones((), dtype), jnp.bool_(False), jnp.bool_(False))
    _, s, decided, odd = jax.lax.while_loop(lambda st: ~st[2] & (st[0] < _MAX_TERMS), body, init)
    return jnp.where(decided, odd, v < s)  # undecided at the cap (never seen): s is the sum


def _sample_j1(key: jax.Array, z: jax.Array) -> jax.Array:
    """One exact draw of J*(1, z) for scalar z >= 0 (Devroye's sampler)."""
    dtype = z.dtype
    K = math.pi**2 / 8 + z**2 / 2
    log_p, log_q = _log_mixture_weights(z)
    prob_right = jax.nn.sigmoid(log_p - log_q)

    def propose(state):
        key, k_u, k_ig = jax.random.split(state[0], 3)
        u = jax.random.uniform(k_u, (3,), dtype)
        # right piece: t + Exp(1) / K; left piece: IG(1/z, 1) on (0, t). Both are computed, as
        # ``vmap`` would turn a ``lax.cond`` into a select anyway.
        x = jnp.where(u[0] < prob_right, _T - jnp.log1p(-u[1]) / K, _truncated_inverse_gaussian(k_ig, z))
        return key, x, _series_accepts(x, u[2])

    init = (key, jnp.zeros((), dtype), jnp.bool_(False))
    return jax.lax.while_loop(lambda s: ~s[2], propose, init)[1]


@jax.jit
def sample_pg1(key: jax.Array, c: jax.Array) -> jax.Array:
    """Exact draws omega ~ PG(1, c), one per element of ``c``, independent across elements.

    Parameters
    ----------
    key : jax.Array
        PRNG key (raw ``uint32[2]`` or typed); the same key and ``c`` give the same draws.
    c : jax.Array, shape (...)
        Tilts, float32 or float64, any sign (PG(1, c) = PG(1, -c)); c = 0 and |c| ~ 1e3 are fine.

    Returns
    -------
    jax.Array, shape (...), dtype of ``c``
        The draws, all > 0. E[omega] = tanh(c/2) / (2c) (see :func:`pg1_mean`).
    """
    c = jnp.asarray(c)
    if not jnp.issubdtype(c.dtype, jnp.floating):
        c = c.astype(jnp.result_type(float))
    z = jnp.abs(c).ravel() / 2
    keys = jax.random.split(key, z.size)
    return (jax.vmap(_sample_j1)(keys, z) / 4).reshape(c.shape)


def pg1_mean(c: jax.Array) -> jax.Array:
    """E[omega] = tanh(c/2) / (2c) for omega ~ PG(1, c), with its limit 1/4 at c = 0.

    Parameters
    ----------
    c : jax.Array, shape (...)

    Returns
    -------
    jax.Array, shape (...)
        Uses the series 1/4 - c^2/48 + c^4/480 for |c| < 1e-2 (error below 1e-15 there), which
        also keeps gradients finite at c = 0.
    """
    c = jnp.asarray(c)
    small = jnp.abs(c) < 1e-2
    c_safe = jnp.where(small, 1.0, c)
    c2 = c * c
    return jnp.where(small, 0.25 - c2 / 48 + c2 * c2 / 480, jnp.tanh(c_safe / 2) / (2 * c_safe))


def stick_breaking_factor(R: jax.Array, r: jax.Array, omega: jax.Array, state: jax.Array,
                          present: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One augmented stick-breaking transition as a Gaussian factor on the previous state x.

    Given omega, the transition to ``state`` contributes prod over the sticks it reached (k <=
    state, k < K-1) of 2^-1 exp(kappa_k nu_k - omega_k nu_k^2 / 2), nu = R x + r, kappa_k =
    [state = k] - 1/2; that is exp(-x' J x / 2 + h' x + c).

    Parameters
    ----------
    R : array (K-1, D)
    r : array (..., K-1)
    omega : array (..., K-1)
    state : int array (...)
    present : bool array (...), optional
        Transitions that exist; the others give J = 0, h = 0, c = 0.

    Returns
    -------
    J : array (..., D, D)
    h : array (..., D)
    c : array (...)
    """
    sticks = jnp.arange(R.shape[0])
    reached = (state[..., None] >= sticks).astype(omega.dtype)
    if present is not None:
        reached = reached * present[..., None]
    kappa = (state[..., None] == sticks).astype(omega.dtype) - 0.5
    w = reached * omega
    J = jnp.einsum("...k,ki,kj->...ij", w, R, R)
    h = jnp.einsum("...k,kd->...d", reached * kappa - w * r, R)
    return J, h, jnp.sum(reached * (kappa * r - math.log(2.0)) - 0.5 * w * r * r, -1)
