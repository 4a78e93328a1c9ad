"""Block-tridiagonal precisions (Gauss-Markov paths in information form): the block Cholesky
factorisation Lam = U^T U with a forward solve, and solves and products with the block-bidiagonal
factor U."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from zoo.scans.linalg import cholesky, matmul, matvec, solve_lower, solve_lower_transposed, transpose

__all__ = [
    "BlockTridiagonalCholesky",
    "block_tridiagonal_cholesky",
    "block_bidiagonal_solve",
    "block_bidiagonal_multiply",
]


class BlockTridiagonalCholesky(NamedTuple):
    """Factor Lam = U^T U of a symmetric positive-definite block-tridiagonal matrix.

    U is upper block-bidiagonal with diagonal blocks ``chol[t]^T`` (``chol[t]`` lower-triangular)
    and super-diagonal blocks ``coupling[t]`` (between steps t and t+1; the last is zero).
    ``rhs_solved`` is U^{-T} h for the right-hand side h given to the factorisation.

    Attributes
    ----------
    chol : array (..., T, D, D)
    coupling : array (..., T, D, D)
    rhs_solved : array (..., T, D)
    """

    chol: jax.Array
    coupling: jax.Array
    rhs_solved: jax.Array


def block_tridiagonal_cholesky(diag: jax.Array, off: jax.Array, rhs: jax.Array) -> BlockTridiagonalCholesky:
    """Block Cholesky factorisation of a block-tridiagonal precision, and a forward solve.

    The precision of a Gauss-Markov path (a Kalman smoother in information form): one
    sequential scan over time, with D x D Cholesky factors and triangular solves, no inverse.
    ``log det Lam = 2 sum log diag(chol)``; ``Lam^{-1} rhs`` is
    ``block_bidiagonal_solve(f, f.rhs_solved)``.

    Parameters
    ----------
    diag : array (..., T, D, D)
        Diagonal blocks Lam[t, t] (symmetric; only the lower triangle is read).
    off : array (..., T-1, D, D)
        Super-diagonal blocks Lam[t, t+1].
    rhs : array (..., T, D)
        A right-hand side h.

    Returns
    -------
    BlockTridiagonalCholesky
        NaN entries if Lam is not positive definite.
    """
    T, D = diag.shape[-3], diag.shape[-1]
    if off.shape[-3] != T - 1 or rhs.shape[-2:] != (T, D):
        raise ValueError(f"off must have shape (..., {T - 1}, {D}, {D}) and rhs (..., {T}, {D}); got "
                         f"{off.shape} and {rhs.shape}")
    batch = jnp.broadcast_shapes(diag.shape[:-3], off.shape[:-3], rhs.shape[:-2])
    off = jnp.concatenate([off, jnp.zeros(off.shape[:-3] + (1, D, D), off.dtype)], axis=-3)
    seq = [jnp.moveaxis(jnp.broadcast_to(a, batch + a.shape[-3:]), -3, 0) for a in (diag, off)]
    h = jnp.moveaxis(jnp.broadcast_to(rhs, batch + (T, D)), -2, 0)

    def step(carry, inp):
        W_prev, g_prev = carry
        Dt, Ot, ht = inp
        L = cholesky(Dt - matmul(transpose(W_prev), W_prev))
        g = solve_lower(L, ht - matvec(transpose(W_prev), g_prev))
        W = solve_lower(L, Ot)
        return (W, g), (L, W, g)

    zero = jnp.zeros(batch + (D, D), seq[0].dtype)
    _, (L, W, g) = lax.scan(step, (zero, zero[..., 0]), (*seq, h))
    return BlockTridiagonalCholesky(jnp.moveaxis(L, 0, -3), jnp.moveaxis(W, 0, -3), jnp.moveaxis(g, 0, -2))


def block_bidiagonal_solve(factor: BlockTridiagonalCholesky, v: jax.Array) -> jax.Array:
    """Solve U x = v for the upper block-bidiagonal factor U of :func:`block_tridiagonal_cholesky`.

    A backward scan: x_T = chol_T^{-T} v_T, x_t = chol_t^{-T} (v_t - coupling_t x_{t+1}). With
    v = ``rhs_solved`` it gives Lam^{-1} h; with v = ``rhs_solved`` + eps, eps ~ N(0, I), a draw
    from N(Lam^{-1} h, Lam^{-1}).

    Parameters
    ----------
    factor : BlockTridiagonalCholesky
    v : array (..., T, D)

    Returns
    -------
    array (..., T, D)
    """
    L, W = factor.chol, factor.coupling
    batch = jnp.broadcast_shapes(L.shape[:-3], v.shape[:-2])
    seq = [jnp.moveaxis(jnp.broadcast_to(a, batch + a.shape[-3:]), -3, 0) for a in (L, W)]
    vs = jnp.moveaxis(jnp.broadcast_to(v, batch + v.shape[-2:]), -2, 0)

    def step(x_next, inp):
        Lt, Wt, vt = inp
        x = solve_lower_transposed(Lt, vt - matvec(Wt, x_next))
        return x, x

    _, x = lax.scan(step, jnp.zeros(batch + v.shape[-1:], vs.dtype), (*seq, vs), reverse=True)
    return jnp.moveaxis(x, 0, -2)


def block_bidiagonal_multiply(factor: BlockTridiagonalCholesky, x: jax.Array) -> jax.Array:
    """U x for the upper block-bidiagonal factor U of :func:`block_tridiagonal_cholesky`.

    (U x)_t = chol_t^T x_t + coupling_t x_{t+1}; the inverse of :func:`block_bidiagonal_solve`.

    Parameters
    ----------
    factor : BlockTridiagonalCholesky
    x : array (..., T, D)

    Returns
    -------
    array (..., T, D)
    """
    L, W = factor.chol, factor.coupling
    diag = jnp.einsum("...tji,...tj->...ti", L, x)
    nxt = jnp.concatenate([x[..., 1:, :], jnp.zeros_like(x[..., :1, :])], axis=-2)
    return diag + jnp.einsum("...tij,...tj->...ti", W, nxt)
