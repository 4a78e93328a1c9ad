"""The GP models' path, whitened around a Gauss-Newton (Laplace) mean of its conditional.

Given the drift weights W and the parameters theta, the Euler-Maruyama path of
:class:`zoo.sde.SDEModel` has the conditional

    p(x | W, theta, y) ~ N(x_0; m0, S0) prod_k N(x_{k+1}; x_k + dt (f(x_k) + u_k), dt diag(sigma^2))
                         prod_t p(y_t | x_t),

with f(x) = Phi(x) W nonlinear in x and possibly non-Gaussian emissions. Linearising the drift
at a path x_bar (f(x) ~ f(x_bar) + J(x_bar) (x - x_bar)) and approximating the emissions by their
second-order expansion at x_bar (:func:`zoo.reparam.emission_information`) gives a Gauss-Markov
path with a block-tridiagonal precision, factorised by :func:`zoo.reparam.gauss_markov_factor`
(the same factorisation as the switching models' whitened path). Its mean is the next
Gauss-Newton iterate; starting from a fixed reference path (a constant of the run), a fixed
number of iterations gives a deterministic mean mu(theta, W) and factor U(theta, W), and the
sampler moves eps with

    x = mu + U^{-1} eps,   log |det dx/deps| = -sum log diag(chol).

Where the Laplace approximation is good, eps is close to N(0, I) whatever sigma is, so the funnel
between the path and its diffusion scale is gone; the target density itself is exact (the
path's own Euler-Maruyama density plus the log-Jacobian), only the coordinates are approximate.
This is the path block of the GP models' blocked sampler (:mod:`inference.blocked`): W | x, theta
is drawn exactly (conjugate), then NUTS moves (theta, eps) given W, with eps remapped after each
W update so that x is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from zoo import scans
from zoo.reparam import gauss_markov_factor, path_from_whitened, whitened_from_path

__all__ = ["linearised_transitions", "laplace_path_factor", "LaplacePath"]


def linearised_transitions(drift: Callable, x_bar, dt: float, drive=None) -> tuple[jax.Array, jax.Array]:
    """Euler-Maruyama transitions with the drift linearised at ``x_bar``.

    x_{k+1} ~ A_k x_k + b_k with A_k = I + dt J(x_bar_k) and
    b_k = dt (f(x_bar_k) - J(x_bar_k) x_bar_k + u_k).

    Parameters
    ----------
    drift : callable
        f, x (..., D) -> (..., D) (batched over leading dims).
    x_bar : array (..., K, D)
        Linearisation path.
    dt : float
        Euler step.
    drive : array (..., K-1, D), optional
        The known part u_k of the drift (inputs).

    Returns
    -------
    A : array (..., K-1, D, D)
    b : array (..., K-1, D)
    """
    x_bar = jnp.asarray(x_bar)
    D = x_bar.shape[-1]
    pts = x_bar[..., :-1, :]
    flat = pts.reshape(-1, D)

    def one(v):
        return drift(v[None])[0]

    f = drift(flat)
    J = jax.vmap(jax.jacfwd(one))(flat)  # (n, D, D): J[i, a, b] = d f_a / d x_b
    f = f.reshape(pts.shape)
    J = J.reshape(pts.shape + (D,))
    A = jnp.eye(D, dtype=x_bar.dtype) + dt * J
    b = dt * (f - jnp.einsum("...ab,...b->...a", J, pts))
    if drive is not None:
        b = b + dt * drive
    return A, b


def laplace_path_factor(drift: Callable | None, sigma, dt: float, init_loc, init_scale,
                        emission_info: Callable, x_ref, num_iterations: int = 2, drive=None,
                        drift_given_path: Callable | None = None) -> scans.BlockTridiagonalCholesky:
    """The Gauss-Newton (Laplace) Gaussian of the path's conditional, factorised.

    ``num_iterations`` linearisations: the first at ``x_ref``, each next one at the previous
    Gaussian's mean; the factor of the last is returned (its mean is the last iterate). A
    deterministic, differentiable function of the parameters for a fixed ``x_ref``.

    Parameters
    ----------
    drift : callable or None
        f, x (..., D) -> (..., D); None with ``drift_given_path``.
    sigma : array (D,)
        Diffusion standard deviations.
    dt : float
        Euler step.
    init_loc, init_scale : arrays (D,)
        x_0 ~ N(init_loc, diag(init_scale^2)).
    emission_info : callable
        x_bar (..., K, D) -> (H (..., K, D, D), h (..., K, D)): the emissions' second-order
        expansion at x_bar (zero where nothing is observed).
    x_ref : array (..., K, D)
        The first linearisation point (a constant).
    num_iterations : int
        >= 1.
    drive : array (..., K-1, D), optional
    drift_given_path : callable, optional
        x_bar -> f: the drift re-estimated at each linearisation point (the weights integrated
        out: their posterior mean given x_bar), instead of a fixed ``drift``. The iteration then
        alternates the weights' and the path's conditional modes.

    Returns
    -------
    zoo.scans.BlockTridiagonalCholesky
        Lam = U^T U over the K grid points of each trial; mean ``block_bidiagonal_solve(f,
        f.rhs_solved)``.
    """
    if int(num_iterations) < 1:
        raise ValueError(f"num_iterations must be an integer >= 1; got {num_iterations!r}")
    x_bar = jnp.asarray(x_ref)
    dtype = x_bar.dtype
    D = x_bar.shape[-1]
    sigma = jnp.asarray(sigma, dtype)
    L0 = jnp.diag(jnp.broadcast_to(jnp.asarray(init_scale, dtype), (D,)))
    m0 = jnp.broadcast_to(jnp.asarray(init_loc, dtype), (D,))
    Lq = jnp.diag(sigma * jnp.sqrt(jnp.asarray(dt, dtype)))

    if (drift is None) == (drift_given_path is None):
        raise ValueError("give exactly one of drift and drift_given_path")

    def factor_at(xb):
        f = drift if drift is not None else drift_given_path(xb)
        A, b = linearised_transitions(f, xb, dt, drive)
        H, h = emission_info(xb)
        return gauss_markov_factor(A, b, jnp.broadcast_to(Lq, A.shape), m0, L0, H, h)

    factor = factor_at(x_bar)
    for _ in range(int(num_iterations) - 1):
        x_bar = scans.block_bidiagonal_solve(factor, factor.rhs_solved)
        factor = factor_at(x_bar)
    return factor


class LaplacePath:
    """The whitened path x = mu + U^{-1} eps of one parameter draw (see the module docstring).

    Parameters
    ----------
    factor : zoo.scans.BlockTridiagonalCholesky
        From :func:`laplace_path_factor`.
    """

    def __init__(self, factor: scans.BlockTridiagonalCholesky):
        self.factor = factor

    @property
    def mean(self) -> jax.Array:
        """mu, (..., K, D)."""
        return scans.block_bidiagonal_solve(self.factor, self.factor.rhs_solved)

    def transform(self, eps) -> tuple[jax.Array, jax.Array]:
        """x (..., K, D) and log |det dx/deps| (scalar) for eps (..., K, D)."""
        return path_from_whitened(self.factor, eps)

    def whiten(self, x) -> jax.Array:
        """eps with ``transform(eps)[0] == x``, (..., K, D)."""
        return whitened_from_path(self.factor, x)
