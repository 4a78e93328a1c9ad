"""Small-matrix linear algebra for the scan kernels.

The kernels work on batches of D x D matrices with D a handful (latent dimensions), inside scans
that run once per time step. For such sizes a LAPACK custom call or a dot call costs far more than
the arithmetic, so factorisations, triangular solves and products are written out as unrolled
elementwise code that XLA fuses, up to a size where the library routines win again (see the
constants below). Every function broadcasts over leading batch dims, never inverts a matrix
explicitly, and agrees with its LAPACK counterpart up to rounding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

__all__ = [
    "UNROLL_MAX_DIM",
    "UNROLL_MAX_DIM_BATCHED",
    "SMALL_PRODUCT_MAX_DIM",
    "transpose",
    "matmul",
    "matvec",
    "solve_lower",
    "solve_lower_broadcast",
    "solve_lower_transposed",
    "cholesky",
    "cho_solve_lower",
    "solve",
]

# Largest system factorised / solved by unrolled scalar code instead of LAPACK: for tiny systems
# the custom call's overhead dominates, while D(D+1)/2 fused elementwise operations cost almost
# nothing; above it LAPACK runs faster and the unrolled code takes much longer to compile.
UNROLL_MAX_DIM = 4
# Batched over many matrices (the parallel Kalman filter's elements) the unrolled Cholesky
# factorisation stays ahead of LAPACK's potrf up to larger systems than one matrix per step
# inside a sequential scan does.
UNROLL_MAX_DIM_BATCHED = 12
# Products of small matrices are written as broadcast multiply-and-sum, which XLA fuses into one
# elementwise loop: on a CPU its dot call costs far more than the arithmetic for (4, 4) operands.
SMALL_PRODUCT_MAX_DIM = 12


def transpose(X: jax.Array) -> jax.Array:
    """Swap the last two axes of a batch of matrices.

    Parameters
    ----------
    X : array (..., I, J)

    Returns
    -------
    array (..., J, I)
    """
    return jnp.swapaxes(X, -1, -2)


def matmul(X: jax.Array, Y: jax.Array) -> jax.Array:
    """X @ Y for batches of small matrices, as one fused broadcast multiply-and-sum.

    On a CPU the dot call costs far more than the arithmetic for operands of a few rows, so up to
    ``SMALL_PRODUCT_MAX_DIM`` rows and columns the product is an elementwise loop XLA fuses
    with its neighbours; larger operands use ``@``.

    Parameters
    ----------
    X : array (..., I, J)
    Y : array (..., J, K)
        Leading dims broadcast against ``X``'s.

    Returns
    -------
    array (..., I, K)
    """
    if max(X.shape[-2], X.shape[-1], Y.shape[-1]) > SMALL_PRODUCT_MAX_DIM:
        return X @ Y
    return jnp.sum(X[..., :, :, None] * Y[..., None, :, :], axis=-2)


def matvec(M: jax.Array, v: jax.Array) -> jax.Array:
    """M @ v for batches of small matrices and vectors, fused like :func:`matmul`.

    Parameters
    ----------
    M : array (..., I, J)
    v : array (..., J)
        Leading dims broadcast against ``M``'s.

    Returns
    -------
    array (..., I)
    """
    if max(M.shape[-2:]) > SMALL_PRODUCT_MAX_DIM:
        return jnp.einsum("...ij,...j->...i", M, v)
    return jnp.sum(M * v[..., None, :], axis=-1)


def _on_columns(solve_cols, b, matrix_ndim):
    """Apply ``solve_cols`` (right-hand sides as columns, (..., D, M)) to b given as vectors
    (..., D) (when ``b.ndim == matrix_ndim - 1``) or as columns."""
    if b.ndim == matrix_ndim - 1:
        return solve_cols(b[..., None])[..., 0]
    return solve_cols(b)


def _forward_substitution(L, B):
    rows = []
    for i in range(L.shape[-1]):
        acc = B[..., i, :]
        for j in range(i):
            acc = acc - L[..., i, j, None] * rows[j]
        rows.append(acc / L[..., i, i, None])
    return jnp.stack(rows, axis=-2)


def _back_substitution_transposed(L, B):
    D = L.shape[-1]
    rows: list = [None] * D
    for i in reversed(range(D)):
        acc = B[..., i, :]
        for j in range(i + 1, D):
            acc = acc - L[..., j, i, None] * rows[j]  # (L^T)[i, j] = L[j, i]
        rows[i] = acc / L[..., i, i, None]
    return jnp.stack(rows, axis=-2)


def solve_lower(L: jax.Array, b: jax.Array) -> jax.Array:
    """Solve L w = b for lower-triangular L (batched like ``solve_triangular``).

    Parameters
    ----------
    L : array (..., D, D)
        Lower-triangular, non-zero diagonal (the upper triangle is ignored).
    b : array (..., D) or (..., D, M)
        Right-hand side(s); a vector when ``b.ndim == L.ndim - 1``.

    Returns
    -------
    array, the shape of ``b``
    """
    if L.shape[-1] > UNROLL_MAX_DIM:
        return _on_columns(lambda B: solve_triangular(L, B, lower=True), b, L.ndim)
    return _on_columns(lambda B: _forward_substitution(L, B), b, L.ndim)


def solve_lower_broadcast(L: jax.Array, r: jax.Array) -> jax.Array:
    """Solve L w = r for vectors ``r`` (..., D) broadcasting against ``L`` (..., D, D).

    Unlike :func:`solve_lower`, the batch dims of ``r`` need not match ``L``'s: e.g. ``r``
    (T, K, D) against one factor per state ``L`` (K, D, D). For D <= 4 this is unrolled forward
    substitution on whole (..., K) arrays (no transposes, one fused loop); above it the right-hand
    sides become columns of a LAPACK solve, one per factor.

    Parameters
    ----------
    L : array (B..., D, D)
        Lower-triangular, non-zero diagonal.
    r : array (..., B..., D)

    Returns
    -------
    array, the shape of ``r``
    """
    D = L.shape[-1]
    if D <= UNROLL_MAX_DIM:
        rows: list = []
        for i in range(D):
            acc = r[..., i]
            for j in range(i):
                acc = acc - L[..., i, j] * rows[j]
            rows.append(acc / L[..., i, i])
        return jnp.stack(rows, axis=-1)
    batch = L.shape[:-2]
    lead = r.shape[: r.ndim - 1 - len(batch)]
    r = jnp.broadcast_to(r, lead + batch + (D,))
    cols = jnp.moveaxis(r.reshape((-1,) + batch + (D,)), 0, -1)  # (B..., D, M)
    w = solve_triangular(L, cols, lower=True)
    return jnp.moveaxis(w, -1, 0).reshape(lead + batch + (D,))


def solve_lower_transposed(L: jax.Array, b: jax.Array) -> jax.Array:
    """Solve L^T x = b for lower-triangular L (back substitution; batched like ``solve_lower``).

    Parameters
    ----------
    L : array (..., D, D)
        Lower-triangular, non-zero diagonal (the upper triangle is ignored).
    b : array (..., D) or (..., D, M)

    Returns
    -------
    array, the shape of ``b``
    """
    if L.shape[-1] > UNROLL_MAX_DIM:
        return _on_columns(lambda B: solve_triangular(L, B, lower=True, trans=1), b, L.ndim)
    return _on_columns(lambda B: _back_substitution_transposed(L, B), b, L.ndim)


def cholesky(S: jax.Array, max_unrolled: int = UNROLL_MAX_DIM) -> jax.Array:
    """Lower Cholesky factor of symmetric positive-definite matrices (unrolled for small D).

    Parameters
    ----------
    S : array (..., D, D)
        Symmetric positive definite (only the lower triangle is read).
    max_unrolled : int
        Largest D factorised by unrolled code; LAPACK above it.

    Returns
    -------
    array (..., D, D)
        Lower-triangular L with L L^T = S; NaN where S is not positive definite, as LAPACK.
    """
    D = S.shape[-1]
    if D > max_unrolled:
        return jnp.linalg.cholesky(S)
    L: list = [[None] * D for _ in range(D)]
    for j in range(D):
        acc = S[..., j, j]
        for k in range(j):
            acc = acc - L[j][k] ** 2
        L[j][j] = jnp.sqrt(acc)
        for i in range(j + 1, D):
            acc = S[..., i, j]
            for k in range(j):
                acc = acc - L[i][k] * L[j][k]
            L[i][j] = acc / L[j][j]
    zero = jnp.zeros_like(S[..., 0, 0])
    return jnp.stack([jnp.stack([L[i][j] if j <= i else zero for j in range(D)], -1) for i in range(D)], -2)


def cho_solve_lower(L: jax.Array, b: jax.Array) -> jax.Array:
    """Solve (L L^T) x = b given the lower Cholesky factor L (batched like ``solve_lower``).

    Parameters
    ----------
    L : array (..., D, D)
    b : array (..., D) or (..., D, M)

    Returns
    -------
    array, the shape of ``b``
    """
    return solve_lower_transposed(L, solve_lower(L, b))


def solve(A: jax.Array, b: jax.Array) -> jax.Array:
    """Solve A x = b for general square A: Gauss-Jordan elimination with partial pivoting,
    unrolled for small D (LAPACK's LU otherwise).

    Parameters
    ----------
    A : array (..., D, D)
        Non-singular.
    b : array (..., D) or (..., D, M)

    Returns
    -------
    array, the shape of ``b``
    """
    if A.shape[-1] > UNROLL_MAX_DIM:
        return _on_columns(lambda B: jnp.linalg.solve(A, B), b, A.ndim)
    return _on_columns(lambda B: _gauss_jordan(A, B), b, A.ndim)


def _gauss_jordan(A, B):
    """Unrolled Gauss-Jordan elimination with partial pivoting on [A | B]; returns A^{-1} B."""
    D = A.shape[-1]
    batch = jnp.broadcast_shapes(A.shape[:-2], B.shape[:-2])
    aug = jnp.concatenate([jnp.broadcast_to(A, batch + A.shape[-2:]),
                           jnp.broadcast_to(B, batch + B.shape[-2:])], axis=-1)  # (..., D, D + M)
    rows = jnp.arange(D)
    for k in range(D):
        # partial pivoting: swap row k with the row (>= k) of largest |entry| in column k
        col = jnp.where(rows >= k, jnp.abs(aug[..., :, k]), -1.0)
        piv = jnp.argmax(col, axis=-1)
        perm = jnp.where(rows == k, piv[..., None], jnp.where(rows == piv[..., None], k, rows))
        aug = jnp.take_along_axis(aug, perm[..., None], axis=-2)
        pivot_row = aug[..., k, :] / aug[..., k, k, None]
        factors = jnp.where(rows == k, 0.0, aug[..., :, k]).astype(aug.dtype)
        aug = aug - factors[..., None] * pivot_row[..., None, :]
        aug = jnp.where((rows == k)[:, None], pivot_row[..., None, :], aug)
    return aug[..., D:]
