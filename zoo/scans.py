"""Scan kernels: hidden Markov models, Kalman filtering and smoothing, linear recurrences.

Every kernel is a pure, jit-able and differentiable function with a ``parallel`` switch:
``parallel=False`` runs a sequential :func:`jax.lax.scan` (the fastest choice on a CPU),
``parallel=True`` runs :func:`jax.lax.associative_scan` (O(log T) depth, for accelerators).
Both give the same result up to rounding.

Conventions
-----------
HMM: ``log_init`` (K,), ``log_trans`` (K, K) fixed or (T-1, K, K) time-varying with
``log_trans[t, i, j] = log p(z_{t+1} = j | z_t = i)`` (0-based: the transition into step t+1),
``log_lik`` (T, K) with ``log_lik[t, k] = log p(y_t | z_t = k)``. Leading batch dimensions
(trials) broadcast: ``log_lik`` (..., T, K), ``log_init`` (..., K), time-varying ``log_trans``
(..., T-1, K, K). A 2-D ``log_trans`` is always read as fixed.

Kalman: x_1 ~ N(m0, P0), x_t = F_t x_{t-1} + b_t + N(0, Q_t), y_t = H_t x_t + d_t + N(0, R_t).
Dynamics parameters are fixed, (D, D) / (D,), or time-varying with a leading T-1 axis (the
transition into step t+1 is index t); emission parameters are fixed or have a leading T axis.
Missing observations are NaN entries of ``y`` (any subset of a row). ``y`` may carry leading
batch dimensions (trials sharing the parameters).

All message passing is in log space (HMM) or in square-root friendly form with Cholesky
factors and triangular solves (Kalman); no matrix is ever inverted explicitly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.linalg import solve_triangular
from jax.scipy.special import logsumexp

__all__ = [
    "HMMFiltered",
    "HMMPosterior",
    "KalmanFiltered",
    "KalmanSmoothed",
    "hmm_filter",
    "hmm_log_normalizer",
    "hmm_pointwise_log_normalizer",
    "hmm_smoother",
    "hmm_sample",
    "hmm_viterbi",
    "kalman_filter",
    "kalman_smoother",
    "kalman_sample",
    "linear_recurrence",
    "BlockTridiagonalCholesky",
    "block_tridiagonal_cholesky",
    "block_bidiagonal_solve",
    "block_bidiagonal_multiply",
    "solve_lower",
    "solve_lower_broadcast",
    "solve_lower_transposed",
    "cholesky",
    "cho_solve_lower",
    "solve",
]

_LOG_2PI = math.log(2.0 * math.pi)


# Largest system factorised / solved by unrolled scalar code instead of LAPACK: for tiny systems
# the custom call's overhead dominates, while D(D+1)/2 fused elementwise operations cost almost
# nothing. Measured here on the gradient of a scan of Cholesky + triangular solves, vmapped over
# 8 x 200 steps: D = 4 unrolled runs in 1.07 ms vs LAPACK 2.95 ms (compile 0.9 vs 0.5 s); at
# D = 5, 3.6 vs 4.5 ms but compile 1.8 vs 0.5 s; at D = 6 and 8 LAPACK is faster (5.1 vs 5.5 ms,
# 6.4 vs 11.7 ms) and compiles 5-7x faster.
_UNROLL_MAX_DIM = 4
# Batched over many matrices (the parallel Kalman filter's elements), the unrolled Cholesky
# factorisation beats LAPACK's potrf up to about D = 12 here (10,000 x (10, 10): 3.3 vs 5.8 ms);
# one matrix per step inside a sequential scan, potrf wins above D = 8.
_UNROLL_MAX_DIM_BATCHED = 12


# Products of small matrices are written as broadcast multiply-and-sum, which XLA fuses into one
# elementwise loop: on CPU its dot call costs far more than the arithmetic for (4, 4) operands.
# Measured on the parallel Kalman filter's associative scan (10,000 elements, D = 4): 104 ms with
# batched dot calls, 23 ms with fused broadcast sums.
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
    if L.shape[-1] > _UNROLL_MAX_DIM:
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
    if D <= _UNROLL_MAX_DIM:
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
    if L.shape[-1] > _UNROLL_MAX_DIM:
        return _on_columns(lambda B: solve_triangular(L, B, lower=True, trans=1), b, L.ndim)
    return _on_columns(lambda B: _back_substitution_transposed(L, B), b, L.ndim)


def cholesky(S: jax.Array, max_unrolled: int = _UNROLL_MAX_DIM) -> jax.Array:
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
    if A.shape[-1] > _UNROLL_MAX_DIM:
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


# ----------------------------------------------------------------------------------------------
# Input checking (only on concrete arrays: inside jit the shapes are still checked)
# ----------------------------------------------------------------------------------------------


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_hmm(log_init, log_trans, log_lik):
    log_init, log_trans, log_lik = map(jnp.asarray, (log_init, log_trans, log_lik))
    if log_lik.ndim < 2:
        raise ValueError(f"log_lik must have shape (..., T, K); got shape {log_lik.shape}")
    T, K = log_lik.shape[-2:]
    if log_init.ndim < 1 or log_init.shape[-1] != K:
        raise ValueError(
            f"log_init must have shape (..., K) with K={K} (from log_lik); got {log_init.shape}"
        )
    if log_trans.ndim < 2 or log_trans.shape[-2:] != (K, K):
        raise ValueError(
            f"log_trans must have shape (K, K) or (..., T-1, K, K) with K={K}; "
            f"got {log_trans.shape}"
        )
    if log_trans.ndim >= 3 and log_trans.shape[-3] != T - 1:
        raise ValueError(
            f"time-varying log_trans must have shape (..., T-1, K, K) = (..., {T - 1}, {K}, {K}); "
            f"got {log_trans.shape}"
        )
    if _is_concrete(log_init) and not bool(jnp.all(jnp.isfinite(log_init) | (log_init == -jnp.inf))):
        raise ValueError("log_init must be finite or -inf (log of probabilities); got NaN or +inf")
    if _is_concrete(log_init) and bool(jnp.all(log_init == -jnp.inf)):
        raise ValueError("log_init gives probability zero to every state")
    dtype = jnp.result_type(log_init, log_trans, log_lik, jnp.float32)
    return log_init.astype(dtype), log_trans.astype(dtype), log_lik.astype(dtype)


def _batch_shape_hmm(log_init, log_trans, log_lik):
    tv = log_trans.ndim >= 3
    shapes = [log_lik.shape[:-2], log_init.shape[:-1]]
    if tv:
        shapes.append(log_trans.shape[:-3])
    return jnp.broadcast_shapes(*shapes), tv


def _vmap_hmm(fn: Callable, log_init, log_trans, log_lik, *extra):
    """Apply a single-sequence HMM kernel over broadcast leading batch dimensions."""
    batch, tv = _batch_shape_hmm(log_init, log_trans, log_lik)
    K = log_lik.shape[-1]
    T = log_lik.shape[-2]
    if not batch:
        return fn(log_init, log_trans, log_lik, *extra)
    log_init = jnp.broadcast_to(log_init, batch + (K,))
    log_lik = jnp.broadcast_to(log_lik, batch + (T, K))
    if tv:
        log_trans = jnp.broadcast_to(log_trans, batch + (T - 1, K, K))
    f = fn
    for _ in batch:
        in_axes = (0, 0 if tv else None, 0) + tuple(0 for _ in extra)
        f = jax.vmap(f, in_axes=in_axes)
    extra = tuple(jnp.broadcast_to(e, batch + e.shape[len(batch):]) for e in extra)
    return f(log_init, log_trans, log_lik, *extra)


def _trans_at(log_trans, t):
    """Transition matrix into step t+1 (fixed or time-varying), for use inside scans."""
    return log_trans if log_trans.ndim == 2 else log_trans[t]


def _lse_matvec(log_alpha, log_A):
    """log sum_i exp(log_alpha[i] + log_A[i, j]) for every j, stable for -inf entries."""
    return logsumexp(log_alpha[:, None] + log_A, axis=0)


def _lse_matmul(log_A, log_B):
    """Log-semiring matrix product: C[..., i, j] = logsumexp_k A[..., i, k] + B[..., k, j]."""
    return logsumexp(log_A[..., :, :, None] + log_B[..., None, :, :], axis=-2)


def _max_matmul(log_A, log_B):
    """Max-plus (tropical) matrix product, for Viterbi."""
    return jnp.max(log_A[..., :, :, None] + log_B[..., None, :, :], axis=-2)


# ----------------------------------------------------------------------------------------------
# HMM: forward filtering
# ----------------------------------------------------------------------------------------------


class HMMFiltered(NamedTuple):
    """Result of :func:`hmm_filter`.

    Attributes
    ----------
    log_normalizer : (...,) log p(y_{1:T}).
    filtered_probs : (..., T, K) p(z_t | y_{1:t}).
    pointwise : (..., T) log p(y_t | y_{1:t-1}); sums to ``log_normalizer``.
    """

    log_normalizer: jax.Array
    filtered_probs: jax.Array
    pointwise: jax.Array


def _forward_seq(log_init, log_trans, log_lik, keep: bool):
    """Sequential forward algorithm on one sequence, normalised messages in log space."""
    a0 = log_init + log_lik[0]
    c0 = logsumexp(a0)

    def step(carry, inp):
        log_alpha, = carry
        t, ll = inp
        pred = _lse_matvec(log_alpha, _trans_at(log_trans, t))
        a = pred + ll
        c = logsumexp(a)
        new = a - c
        return (new,), ((new, c) if keep else c)

    T = log_lik.shape[0]
    (last,), out = lax.scan(step, (a0 - c0,), (jnp.arange(T - 1), log_lik[1:]))
    if keep:
        alphas, cs = out
        alphas = jnp.concatenate([(a0 - c0)[None], alphas])
    else:
        cs, alphas = out, None
    cs = jnp.concatenate([c0[None], cs])
    return cs, alphas


def _forward_elements(log_init, log_trans, log_lik):
    """Log-semiring elements whose prefix products are unnormalised forward messages.

    Element t (t >= 1) is M_t[i, j] = log_trans[t-1, i, j] + log_lik[t, j]; element 0 has every
    row equal to log_init + log_lik[0]. Row i of the prefix product 0..t then holds
    log p(y_{1:t}, z_t = j) for any i.
    """
    T, K = log_lik.shape
    first = jnp.broadcast_to(log_init + log_lik[0], (K, K))[None]
    if log_trans.ndim == 2:
        rest = log_trans[None] + log_lik[1:, None, :]
    else:
        rest = log_trans + log_lik[1:, None, :]
    return jnp.concatenate([first, rest], axis=0)


def _forward_par(log_init, log_trans, log_lik):
    elems = _forward_elements(log_init, log_trans, log_lik)
    prefix = lax.associative_scan(_lse_matmul, elems)
    joint = prefix[:, 0, :]  # (T, K): log p(y_{1:t}, z_t)
    log_py = logsumexp(joint, axis=-1)  # log p(y_{1:t})
    cs = jnp.concatenate([log_py[:1], jnp.diff(log_py)])
    return cs, joint - log_py[:, None]


# Fast path for the log normalizer. When every transition probability is within a factor
# SCALED_FLOOR of the largest one in its column (log_trans[i, j] >= max_i log_trans[i, j] - 27.6,
# for every j and t), the forward recursion can run on scaled probabilities without losing
# accuracy: the predictive sums S_j = sum_i p_i Pt[i, j] (p normalised, Pt the column-scaled
# transition matrix) are then >= SCALED_FLOOR, and likewise the ratio of p(future | z = i) between
# states is bounded by 1 / SCALED_FLOOR, so every term that underflows in float32 is negligible
# (relative error < K * 1e-26) in the value and in the gradient. Transition matrices with
# zeros or extreme entries (e.g. log-probabilities of -200) take the exact log-space recursion.
SCALED_FLOOR = 1e-12


def _column_scaled(log_trans):
    """Pt = exp(log_trans - m) with m the column maxima (over the source state), and m."""
    m = jnp.max(log_trans, axis=-2, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    return jnp.exp(log_trans - m), m[..., 0, :]


class _ScaledForward(NamedTuple):
    p: jax.Array  # (T, K) filtered probabilities p(z_t | y_{1:t})
    s: jax.Array  # (T-1,) step normalisers: log p(y_t | y_{1:t-1}) = log s_t + gmax_t
    gmax: jax.Array  # (T-1,) per-step log-scales of the emission factors
    E: jax.Array  # (T-1, K) scaled emission factors exp(log_lik_t + m - gmax_t)
    Pt: jax.Array  # (K, K) or (T-1, K, K) column-scaled transition probabilities
    c0: jax.Array  # () log p(y_1)

    def pointwise(self) -> jax.Array:
        """log p(y_t | y_{1:t-1}), (T,)."""
        return jnp.concatenate([self.c0[None], jnp.log(self.s) + self.gmax])


def _scaled_forward(log_init, log_trans, log_lik, keep: bool = True) -> _ScaledForward:
    """Scaled-probability forward scan of one sequence (the fast path).

    The exponentials are taken for all steps at once before the scan and the logarithms after it,
    so a scan step is one K x K matrix-vector product (a broadcast sum, cheaper than a dot call for
    small K on CPU) and a normalisation. ``keep=False`` drops the filtered probabilities
    (``p`` is then only the first step's), which the log normalizer's value does not need.
    """
    Pt, m = _column_scaled(log_trans)
    a0 = log_init + log_lik[0]
    c0 = logsumexp(a0)
    g = log_lik[1:] + m
    gmax = lax.stop_gradient(jnp.max(g, axis=-1))
    gmax = jnp.where(jnp.isfinite(gmax), gmax, 0.0)
    E = jnp.exp(g - gmax[:, None])
    tv = Pt.ndim == 3

    def step(p, inp):
        P, E_t = inp if tv else (Pt, inp)
        u = jnp.sum(p[:, None] * P, axis=0) * E_t
        s = jnp.sum(u)
        return u / s, ((u / s, s) if keep else s)

    p0 = jnp.exp(a0 - c0)
    _, out = lax.scan(step, p0, (Pt, E) if tv else E)
    if not keep:
        return _ScaledForward(p0[None], out, gmax, E, Pt, c0)
    ps, ss = out
    return _ScaledForward(jnp.concatenate([p0[None], ps]), ss, gmax, E, Pt, c0)


def _forward_seq_scaled(log_init, log_trans, log_lik):
    """Per-step log p(y_t | y_{1:t-1}) by the scaled-probability forward scan (fast path)."""
    f = _scaled_forward(log_init, log_trans, log_lik, keep=False)
    return f.pointwise()


def _scaled_backward(f: _ScaledForward):
    """Backward messages of the fast path: ``beta`` (T, K), scaled so that ``p * beta`` are the
    posterior marginals, and ``w`` (T-1, K) = E_t beta_t / s_t, which gives the pairwise marginals
    xi_t[i, j] = p_{t-1}[i] Pt_t[i, j] w_t[j]."""
    tv = f.Pt.ndim == 3

    def step(beta, inp):
        P, E_t, s = inp if tv else (f.Pt, *inp)
        w = E_t * beta / s
        return jnp.sum(P * w[None, :], axis=1), (w, beta)

    xs = (f.Pt, f.E, f.s) if tv else (f.E, f.s)
    beta0, (ws, betas) = lax.scan(step, jnp.ones_like(f.p[0]), xs, reverse=True)
    return jnp.concatenate([beta0[None], betas]), ws


def _scaled_value(log_init, log_trans, log_lik):
    return jnp.sum(_forward_seq_scaled(log_init, log_trans, log_lik))


def _scaled_expectations(log_init, log_trans, log_lik):
    """log Z, posterior marginals gamma (T, K) and pairwise marginals xi ((T-1, K, K), summed
    over time for fixed transitions) by the fast path's forward and backward scans."""
    f = _scaled_forward(log_init, log_trans, log_lik)
    beta, ws = _scaled_backward(f)
    if f.Pt.ndim == 3:
        xi = f.p[:-1, :, None] * f.Pt * ws[:, None, :]
    else:
        xi = f.Pt * (f.p[:-1].T @ ws)
    return jnp.sum(f.pointwise()), f.p * beta, xi


def _exact_value(log_init, log_trans, log_lik):
    return jnp.sum(_forward_seq(log_init, log_trans, log_lik, keep=False)[0])


def _exact_expectations(log_init, log_trans, log_lik):
    post = _hmm_smoother_single(log_init, log_trans, log_lik, parallel=False, pairwise=True)
    xi = post.pairwise_probs if log_trans.ndim == 3 else jnp.sum(post.pairwise_probs, axis=0)
    return post.log_normalizer, post.smoothed_probs, xi


@jax.custom_jvp
def _log_normalizer_seq(log_init, log_trans, log_lik):
    """Batched log p(y_{1:T}) by the sequential forward scan, differentiated by expectations.

    The derivative of a log normalizer is the posterior expectation of the sufficient statistics:
    d log Z = sum_t gamma_t . d log_lik_t + gamma_1 . d log_init + sum_t xi_t : d log_trans_t,
    with gamma the posterior marginals and xi the pairwise marginals. Supplying that rule replaces
    the autodiff reverse of the forward scan by one backward scan of the same cost, and keeps the
    choice between the fast and the exact recursion (one ``lax.cond`` for the whole batch) out of
    the differentiated program.
    """
    return lax.cond(scaled_path_ok(log_trans),
                    lambda *a: _vmap_hmm(_scaled_value, *a),
                    lambda *a: _vmap_hmm(_exact_value, *a),
                    log_init, log_trans, log_lik)


@_log_normalizer_seq.defjvp
def _log_normalizer_seq_jvp(primals, tangents):
    log_init, log_trans, log_lik = primals
    d_init, d_trans, d_lik = tangents
    log_z, gamma, xi = lax.cond(scaled_path_ok(log_trans),
                                lambda *a: _vmap_hmm(_scaled_expectations, *a),
                                lambda *a: _vmap_hmm(_exact_expectations, *a),
                                log_init, log_trans, log_lik)
    tangent = (jnp.sum(gamma * d_lik, axis=(-2, -1)) + jnp.sum(gamma[..., 0, :] * d_init, axis=-1)
               + jnp.sum(xi * d_trans, axis=tuple(range(-xi.ndim + log_z.ndim, 0))))
    return log_z, tangent


def _forward_par_scaled(log_init, log_trans, log_lik):
    """Per-step log p(y_t | y_{1:t-1}) by an associative scan on normalised messages (fast path).

    An element is a pair (W, v) standing for the matrix exp(v_i) W[i, j], with W[i, :] the
    distribution of the segment's last state given its first state and data (rows sum to one) and
    v_i the log-likelihood of the segment's data given the state before it. Composition needs
    K exponentials and K logarithms instead of the K^3 exponentials of a log-semiring product.
    """
    K = log_lik.shape[-1]
    a0 = log_init + log_lik[0]
    v0 = logsumexp(a0)
    W0 = jnp.broadcast_to(jnp.exp(a0 - v0), (K, K))
    # element t: Pt[i, j] exp(g_t[j]) with g = log_lik + m, scaled by exp(-max_j g_t[j]); its row
    # sums are >= Pt[i, argmax g_t] >= SCALED_FLOOR, so the underflow of small terms is harmless
    Pt, m = _column_scaled(log_trans)
    g = log_lik[1:] + m
    gmax = lax.stop_gradient(jnp.max(g, axis=-1, keepdims=True))
    gmax = jnp.where(jnp.isfinite(gmax), gmax, 0.0)
    U = Pt * jnp.exp(g - gmax)[:, None, :]  # (T-1, K, K)
    r = jnp.sum(U, axis=-1)
    W = U / r[..., None]
    v = jnp.log(r) + gmax
    Ws = jnp.concatenate([W0[None], W])
    vs = jnp.concatenate([jnp.broadcast_to(v0, (1, K)), v])

    def combine(first, second):
        W1, v1 = first
        W2, v2 = second
        vmax = lax.stop_gradient(jnp.max(v2, axis=-1, keepdims=True))
        e = jnp.exp(v2 - vmax)  # (..., K) over the shared middle state
        M = (W1 * e[..., None, :]) @ W2
        r = jnp.sum(M, axis=-1, keepdims=True)
        return M / r, v1 + vmax + jnp.log(r[..., 0])

    _, v_pref = lax.associative_scan(combine, (Ws, vs))
    log_py = v_pref[:, 0]  # log p(y_{1:t}); every row agrees (element 0 has identical rows)
    return jnp.concatenate([log_py[:1], jnp.diff(log_py)])


def _hmm_filter_single(log_init, log_trans, log_lik, parallel):
    if parallel:
        cs, alphas = _forward_par(log_init, log_trans, log_lik)
    else:
        cs, alphas = _forward_seq(log_init, log_trans, log_lik, keep=True)
    return HMMFiltered(jnp.sum(cs), jnp.exp(alphas), cs)


def hmm_filter(log_init, log_trans, log_lik, parallel: bool = False) -> HMMFiltered:
    """Forward filtering of a hidden Markov model.

    Parameters
    ----------
    log_init : array (..., K)
        Log initial state probabilities.
    log_trans : array (K, K) or (..., T-1, K, K)
        Log transition probabilities, ``log_trans[t, i, j] = log p(z_{t+1}=j | z_t=i)``.
    log_lik : array (..., T, K)
        Log emission likelihoods ``log p(y_t | z_t = k)``.
    parallel : bool
        Use ``lax.associative_scan`` instead of ``lax.scan``.

    Returns
    -------
    HMMFiltered
        ``log_normalizer`` (...,), ``filtered_probs`` (..., T, K), ``pointwise`` (..., T).
    """
    log_init, log_trans, log_lik = _check_hmm(log_init, log_trans, log_lik)
    return _vmap_hmm(
        lambda a, b, c: _hmm_filter_single(a, b, c, parallel), log_init, log_trans, log_lik
    )


def hmm_log_normalizer(log_init, log_trans, log_lik, parallel: bool = False) -> jax.Array:
    """Log marginal likelihood log sum_z p(z_1) prod_t p(z_t | z_{t-1}) prod_t p(y_t | z_t).

    Parameters
    ----------
    log_init : array (..., K)
    log_trans : array (K, K) or (..., T-1, K, K)
    log_lik : array (..., T, K)
    parallel : bool
        Sequential ``lax.scan`` (False) or log-semiring ``lax.associative_scan`` (True).

    Returns
    -------
    array (...,)
        The log normalizer per sequence.
    """
    if parallel:
        return jnp.sum(hmm_pointwise_log_normalizer(log_init, log_trans, log_lik, True), axis=-1)
    return _log_normalizer_seq(*_check_hmm(log_init, log_trans, log_lik))


def scaled_path_ok(log_trans) -> jax.Array:
    """Whether the HMM kernels may take their fast scaled-probability recursion.

    It is exact to rounding when no transition probability is extreme relative to its column
    (every entry within a factor ``SCALED_FLOOR`` of its column's largest); otherwise the
    log-space recursion runs. The choice is made once for a whole batch.

    Parameters
    ----------
    log_trans : array (K, K) or (..., T-1, K, K)

    Returns
    -------
    bool array ()
        False also for -inf or NaN entries.
    """
    m = jnp.max(log_trans, axis=-2, keepdims=True)
    return jnp.min(log_trans - m) >= math.log(SCALED_FLOOR)


def hmm_pointwise_log_normalizer(log_init, log_trans, log_lik, parallel: bool = False):
    """Per-step terms log p(y_t | y_{1:t-1}), shape (..., T); they sum to the log normalizer.

    These are the pointwise log-likelihoods used for LOO-style model comparison of sequences.
    Arguments as in :func:`hmm_log_normalizer`.
    """
    log_init, log_trans, log_lik = _check_hmm(log_init, log_trans, log_lik)
    # The fast scaled-probability recursion is exact to rounding when no transition probability is
    # extreme relative to its column (see SCALED_FLOOR); otherwise the log-space recursion runs.
    # The choice is made once, for the whole batch, from the transition matrices only.
    fast_ok = scaled_path_ok(log_trans)

    def exact(a, b, c):
        if parallel:
            return _forward_par(a, b, c)[0]
        return _forward_seq(a, b, c, keep=False)[0]

    def fast(a, b, c):
        if parallel:
            return _forward_par_scaled(a, b, c)
        return _forward_seq_scaled(a, b, c)

    return lax.cond(
        fast_ok,
        lambda a, b, c: _vmap_hmm(fast, a, b, c),
        lambda a, b, c: _vmap_hmm(exact, a, b, c),
        log_init,
        log_trans,
        log_lik,
    )


# ----------------------------------------------------------------------------------------------
# HMM: smoothing, sampling, Viterbi
# ----------------------------------------------------------------------------------------------


class HMMPosterior(NamedTuple):
    """Result of :func:`hmm_smoother`.

    Attributes
    ----------
    log_normalizer : (...,) log p(y_{1:T}).
    smoothed_probs : (..., T, K) p(z_t | y_{1:T}).
    pairwise_probs : (..., T-1, K, K) p(z_t = i, z_{t+1} = j | y_{1:T}), or None.
    """

    log_normalizer: jax.Array
    smoothed_probs: jax.Array
    pairwise_probs: jax.Array | None


def _backward_seq(log_trans, log_lik):
    """Normalised log backward messages log beta_t (up to a per-step constant), (T, K)."""
    T, K = log_lik.shape

    def step(log_beta, t):
        b = logsumexp(_trans_at(log_trans, t) + (log_lik[t + 1] + log_beta)[None, :], axis=1)
        b = b - logsumexp(b)
        return b, b

    _, betas = lax.scan(step, jnp.zeros(K, log_lik.dtype), jnp.arange(T - 1), reverse=True)
    return jnp.concatenate([betas, jnp.zeros((1, K), log_lik.dtype)])


def _backward_par(log_trans, log_lik):
    T, K = log_lik.shape
    if log_trans.ndim == 2:
        elems = log_trans[None] + log_lik[1:, None, :]
    else:
        elems = log_trans + log_lik[1:, None, :]
    # suffix products S_t = N_t N_{t+1} ... N_{T-2}; beta_t(i) = logsumexp_j S_t[i, j]
    # with reverse=True, associative_scan calls fn(later, earlier)
    suffix = lax.associative_scan(lambda a, b: _lse_matmul(b, a), elems, reverse=True)
    betas = logsumexp(suffix, axis=-1)
    betas = betas - logsumexp(betas, axis=-1, keepdims=True)
    return jnp.concatenate([betas, jnp.zeros((1, K), log_lik.dtype)])


def _hmm_smoother_single(log_init, log_trans, log_lik, parallel, pairwise):
    if parallel:
        cs, alphas = _forward_par(log_init, log_trans, log_lik)
        betas = _backward_par(log_trans, log_lik)
    else:
        cs, alphas = _forward_seq(log_init, log_trans, log_lik, keep=True)
        betas = _backward_seq(log_trans, log_lik)
    g = alphas + betas
    probs = jnp.exp(g - logsumexp(g, axis=-1, keepdims=True))
    pair = None
    if pairwise:
        lt = log_trans if log_trans.ndim == 3 else log_trans[None]
        x = alphas[:-1, :, None] + lt + (log_lik[1:] + betas[1:])[:, None, :]
        x = x - logsumexp(x, axis=(-2, -1), keepdims=True)
        pair = jnp.exp(x)
    return HMMPosterior(jnp.sum(cs), probs, pair)


def hmm_smoother(
    log_init, log_trans, log_lik, parallel: bool = False, pairwise: bool = False
) -> HMMPosterior:
    """Forward-backward smoothing: posterior marginals of the discrete states.

    Parameters
    ----------
    log_init : array (..., K)
    log_trans : array (K, K) or (..., T-1, K, K)
    log_lik : array (..., T, K)
    parallel : bool
        Sequential scans (False) or associative scans (True).
    pairwise : bool
        Also return the two-slice marginals (..., T-1, K, K).

    Returns
    -------
    HMMPosterior
        ``log_normalizer`` (...,), ``smoothed_probs`` (..., T, K), ``pairwise_probs``.
    """
    log_init, log_trans, log_lik = _check_hmm(log_init, log_trans, log_lik)
    return _vmap_hmm(
        lambda a, b, c: _hmm_smoother_single(a, b, c, parallel, pairwise),
        log_init,
        log_trans,
        log_lik,
    )


def _backward_kernels(alphas, log_trans):
    """Log p(z_t = i | z_{t+1} = j, y_{1:t}) as (T-1, j, i) arrays (rows sum to one in i)."""
    lt = log_trans if log_trans.ndim == 3 else log_trans[None]
    x = alphas[:-1, :, None] + lt  # (T-1, i, j)
    x = jnp.swapaxes(x, -1, -2)
    return x - logsumexp(x, axis=-1, keepdims=True)


def _hmm_sample_single(log_init, log_trans, log_lik, key, parallel):
    T, K = log_lik.shape
    if parallel:
        _, alphas = _forward_par(log_init, log_trans, log_lik)
    else:
        _, alphas = _forward_seq(log_init, log_trans, log_lik, keep=True)
    kern = _backward_kernels(alphas, log_trans)  # (T-1, K_next, K)
    k_last, k_rest = jax.random.split(key)
    z_last = jax.random.categorical(k_last, alphas[-1])
    if not parallel:

        def step(z_next, inp):
            k, lk = inp
            z = jax.random.categorical(k, lk[z_next])
            return z, z

        keys = jax.random.split(k_rest, T - 1)
        _, zs = lax.scan(step, z_last, (keys, kern), reverse=True)
        return jnp.concatenate([zs, z_last[None]])
    # Parallel FFBS: draw, for every t and every value j of z_{t+1}, a value of z_t. The draws
    # are maps {0..K-1} -> {0..K-1}; z_t is the composition of the maps after t applied to z_T,
    # and composition is associative.
    g = jax.random.gumbel(k_rest, kern.shape, kern.dtype)
    maps = jnp.argmax(kern + g, axis=-1)  # (T-1, K): maps[t][j] = z_t given z_{t+1} = j
    # composing maps[t] after maps[t+1]...: combined[j] = maps[t][maps[t+1][j]]
    # (reverse=True passes fn(later, earlier))
    comp = lax.associative_scan(
        lambda a, b: jnp.take_along_axis(b, a, axis=-1), maps, reverse=True
    )
    zs = comp[:, z_last]
    return jnp.concatenate([zs, z_last[None]])


def hmm_sample(key, log_init, log_trans, log_lik, parallel: bool = False) -> jax.Array:
    """Forward-filter backward-sample one state path from p(z_{1:T} | y_{1:T}).

    Parameters
    ----------
    key : jax.random key
    log_init : array (..., K)
    log_trans : array (K, K) or (..., T-1, K, K)
    log_lik : array (..., T, K)
    parallel : bool
        Sequential backward sampling (False) or an associative scan over the composition of
        per-step sampling maps (True). The two use the random key differently.

    Returns
    -------
    array of int (..., T)
    """
    log_init, log_trans, log_lik = _check_hmm(log_init, log_trans, log_lik)
    batch, _ = _batch_shape_hmm(log_init, log_trans, log_lik)
    if batch:
        keys = jax.random.split(key, math.prod(batch))
        keys = keys.reshape(batch + keys.shape[1:])
    else:
        keys = key
    return _vmap_hmm(
        lambda a, b, c, k: _hmm_sample_single(a, b, c, k, parallel),
        log_init,
        log_trans,
        log_lik,
        keys,
    )


def _hmm_viterbi_single(log_init, log_trans, log_lik, parallel):
    T, K = log_lik.shape
    if parallel:
        # max-marginals from max-plus prefix and suffix products
        elems = _forward_elements(log_init, log_trans, log_lik)
        fwd = lax.associative_scan(_max_matmul, elems)[:, 0, :]
        suffix = lax.associative_scan(lambda a, b: _max_matmul(b, a), elems[1:], reverse=True)
        bwd = jnp.concatenate([jnp.max(suffix, axis=-1), jnp.zeros((1, K), log_lik.dtype)])
        return jnp.argmax(fwd + bwd, axis=-1)
    d0 = log_init + log_lik[0]

    def fstep(delta, inp):
        t, ll = inp
        s = delta[:, None] + _trans_at(log_trans, t)
        best = jnp.argmax(s, axis=0)
        new = jnp.max(s, axis=0) + ll
        return new - jnp.max(new), best

    last, ptrs = lax.scan(fstep, d0 - jnp.max(d0), (jnp.arange(T - 1), log_lik[1:]))
    z_last = jnp.argmax(last)

    def bstep(z_next, ptr):
        z = ptr[z_next]
        return z, z

    _, zs = lax.scan(bstep, z_last, ptrs, reverse=True)
    return jnp.concatenate([zs, z_last[None]])


def hmm_viterbi(log_init, log_trans, log_lik, parallel: bool = False) -> jax.Array:
    """Most probable state path argmax_z p(z_{1:T} | y_{1:T}).

    Parameters
    ----------
    log_init : array (..., K)
    log_trans : array (K, K) or (..., T-1, K, K)
    log_lik : array (..., T, K)
    parallel : bool
        Sequential max-product with back-pointers (False) or argmax of max-marginals from
        max-plus associative scans (True; identical when the most probable path is unique).

    Returns
    -------
    array of int (..., T)
    """
    log_init, log_trans, log_lik = _check_hmm(log_init, log_trans, log_lik)
    return _vmap_hmm(
        lambda a, b, c: _hmm_viterbi_single(a, b, c, parallel), log_init, log_trans, log_lik
    )


# ----------------------------------------------------------------------------------------------
# Linear recurrences
# ----------------------------------------------------------------------------------------------


def linear_recurrence(A, b, x0, parallel: bool = True, reverse: bool = False) -> jax.Array:
    """Evaluate x_t = A_t x_{t-1} + b_t for t = 1..T (or backwards in time).

    Parameters
    ----------
    A : array (T, D) or (T, D, D)
        Diagonal (2-D) or dense (3-D) transition matrices; real or complex.
    b : array (T, D)
        Offsets.
    x0 : array (D,)
        The state before the first step.
    parallel : bool
        ``lax.associative_scan`` of affine maps (True) or sequential ``lax.scan`` (False).
    reverse : bool
        Run backwards: x_t = A_t x_{t+1} + b_t for t = T..1, with x_{T+1} = x0.

    Returns
    -------
    array (T, D)
        x_1, ..., x_T.
    """
    A, b, x0 = jnp.asarray(A), jnp.asarray(b), jnp.asarray(x0)
    if b.ndim != 2:
        raise ValueError(f"b must have shape (T, D); got {b.shape}")
    T, D = b.shape
    if x0.shape != (D,):
        raise ValueError(f"x0 must have shape (D,) = ({D},); got {x0.shape}")
    diagonal = A.ndim == 2
    if A.shape not in ((T, D), (T, D, D)):
        raise ValueError(f"A must have shape (T, D) or (T, D, D) = ({T}, {D}[, {D}]); got {A.shape}")
    dtype = jnp.result_type(A, b, x0)
    A, b, x0 = A.astype(dtype), b.astype(dtype), x0.astype(dtype)

    def apply(a, x):
        return a * x if diagonal else matvec(a, x)

    if not parallel:

        def step(x, ab):
            a, bb = ab
            x = apply(a, x) + bb
            return x, x

        return lax.scan(step, x0, (A, b), reverse=reverse)[1]

    # Fold x0 into the first offset, then compose affine maps (a, b): x -> a x + b. The
    # combine receives (first applied, then applied) in both directions, because
    # associative_scan calls fn(earlier, later) forwards and fn(later, earlier) in reverse.
    first = 0 if not reverse else T - 1
    b = b.at[first].add(apply(A[first], x0))

    def combine(earlier, later):
        a1, b1 = earlier
        a2, b2 = later
        if diagonal:
            return a2 * a1, a2 * b1 + b2
        return matmul(a2, a1), matvec(a2, b1) + b2

    return lax.associative_scan(combine, (A, b), reverse=reverse)[1]


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


# ----------------------------------------------------------------------------------------------
# Kalman filtering and smoothing
# ----------------------------------------------------------------------------------------------


class KalmanFiltered(NamedTuple):
    """Result of :func:`kalman_filter`.

    Attributes
    ----------
    log_likelihood : (...,) log p(y_{1:T}).
    filtered_means : (..., T, D) E[x_t | y_{1:t}].
    filtered_covariances : (..., T, D, D) Cov[x_t | y_{1:t}].
    pointwise : (..., T) log p(y_t | y_{1:t-1}).
    """

    log_likelihood: jax.Array
    filtered_means: jax.Array
    filtered_covariances: jax.Array
    pointwise: jax.Array


class KalmanSmoothed(NamedTuple):
    """Result of :func:`kalman_smoother`.

    Attributes
    ----------
    log_likelihood : (...,) log p(y_{1:T}).
    filtered_means, filtered_covariances : as in :class:`KalmanFiltered`.
    smoothed_means : (..., T, D) E[x_t | y_{1:T}].
    smoothed_covariances : (..., T, D, D) Cov[x_t | y_{1:T}].
    smoothed_cross_covariances : (..., T-1, D, D) Cov[x_{t+1}, x_t | y_{1:T}].
    """

    log_likelihood: jax.Array
    filtered_means: jax.Array
    filtered_covariances: jax.Array
    smoothed_means: jax.Array
    smoothed_covariances: jax.Array
    smoothed_cross_covariances: jax.Array


def _sym(P):
    return 0.5 * (P + jnp.swapaxes(P, -1, -2))


class LGSSM(NamedTuple):
    """Parameters of a linear-Gaussian state-space model with explicit time axes.

    Attributes
    ----------
    m0 : (D,)
    P0 : (D, D)
    F : (T-1, D, D)
    b : (T-1, D)
    Q : (T-1, D, D)
        The dynamics; index t is the transition into step t+1.
    H : (T, N, D)
    d : (T, N)
    R : (T, N, N)
        The emissions.
    """

    m0: jax.Array
    P0: jax.Array
    F: jax.Array
    b: jax.Array
    Q: jax.Array
    H: jax.Array
    d: jax.Array
    R: jax.Array


def canonical_lgssm(T: int, m0, P0, F, b, Q, H, d, R, dtype=None) -> LGSSM:
    """Check the shapes of fixed or time-varying parameters and give them all a time axis.

    Parameters
    ----------
    T : int
        Number of steps.
    m0 : array (D,)
    P0 : array (D, D)
    F : array (D, D) or (T-1, D, D)
    b : array (D,) or (T-1, D)
    Q : array (D, D) or (T-1, D, D)
    H : array (N, D) or (T, N, D)
    d : array (N,) or (T, N)
    R : array (N, N) or (T, N, N)
    dtype : dtype, optional
        Of the result; by default the parameters' common floating type (at least float32).

    Returns
    -------
    LGSSM
        Every parameter broadcast to its time-varying shape.

    Raises
    ------
    ValueError
        Naming the parameter whose shape fits neither form.
    """
    m0, P0, F, b, Q, H, d, R = map(jnp.asarray, (m0, P0, F, b, Q, H, d, R))
    if dtype is None:
        dtype = jnp.result_type(m0, P0, F, b, Q, H, d, R, jnp.float32)
    if m0.ndim != 1:
        raise ValueError(f"m0 must have shape (D,); got {m0.shape}")
    D = m0.shape[0]
    if P0.shape != (D, D):
        raise ValueError(f"P0 must have shape (D, D) = ({D}, {D}); got {P0.shape}")

    def expand(x, name, shape, n):
        if x.shape == shape:
            return jnp.broadcast_to(x, (n,) + shape)
        if x.shape == (n,) + shape:
            return x
        raise ValueError(f"{name} must have shape {shape} or ({n}, *{shape}); got {x.shape}")

    F = expand(F, "F", (D, D), T - 1)
    b = expand(b, "b", (D,), T - 1)
    Q = expand(Q, "Q", (D, D), T - 1)
    if H.ndim not in (2, 3) or H.shape[-1] != D:
        raise ValueError(f"H must have shape (N, D) or (T, N, D) with D={D}; got {H.shape}")
    N = H.shape[-2]
    H = expand(H, "H", (N, D), T)
    d = expand(d, "d", (N,), T)
    R = expand(R, "R", (N, N), T)
    return LGSSM(*(x.astype(dtype) for x in (m0, P0, F, b, Q, H, d, R)))


def mask_missing(y, H, d, R):
    """Make the NaN entries of observations uninformative.

    Their rows of ``H`` and entries of ``d`` are zeroed and they become independent
    unit-variance residuals fixed at zero; ``correction`` adds back their log density
    0.5 log(2 pi) each, so that a Gaussian log density of the masked values plus ``correction``
    is the log density of the observed entries alone.

    Parameters
    ----------
    y : array (..., T, N)
        Observations, NaN = missing.
    H : array (..., T, N, D)
    d : array (..., T, N)
    R : array (..., T, N, N)

    Returns
    -------
    y0 : array (..., T, N)
        ``y`` with zeros for the missing entries.
    H0 : array (..., T, N, D)
    d0 : array (..., T, N)
    R0 : array (..., T, N, N)
        Missing rows and columns replaced by those of the identity.
    correction : array (..., T)
    """
    obs = ~jnp.isnan(y)  # (T, N)
    y0 = jnp.where(obs, y, 0.0)
    H0 = jnp.where(obs[..., None], H, 0.0)
    d0 = jnp.where(obs, d, 0.0)
    both = obs[..., :, None] & obs[..., None, :]
    eye = jnp.eye(y.shape[-1], dtype=R.dtype)
    R0 = jnp.where(both, R, eye)
    correction = 0.5 * _LOG_2PI * jnp.sum(~obs, axis=-1).astype(y.dtype)
    return y0, H0, d0, R0, correction


def _gauss_update(m, P, y, H, d, R, max_unrolled=_UNROLL_MAX_DIM):
    """Condition N(m, P) on y = H x + d + N(0, R); returns mean, cov and log p(y)."""
    HP = matmul(H, P)
    S = _sym(matmul(HP, transpose(H)) + R)
    L = cholesky(S, max_unrolled)
    r = y - matvec(H, m) - d
    w = solve_lower(L, r)
    W = solve_lower(L, HP)  # L^{-1} H P, (N, D)
    m_new = m + matvec(transpose(W), w)
    P_new = _sym(P - matmul(transpose(W), W))
    ll = -0.5 * jnp.sum(w * w) - jnp.sum(jnp.log(jnp.diag(L))) - 0.5 * y.shape[-1] * _LOG_2PI
    return m_new, P_new, ll


def _kalman_filter_seq(p: LGSSM, y):
    y0, H, d, R, corr = mask_missing(y, p.H, p.d, p.R)
    m1, P1, ll1 = _gauss_update(p.m0, p.P0, y0[0], H[0], d[0], R[0])

    def step(carry, inp):
        m, P = carry
        F, b, Q, yt, Ht, dt, Rt = inp
        mp = matvec(F, m) + b
        Pp = _sym(matmul(matmul(F, P), transpose(F)) + Q)
        m, P, ll = _gauss_update(mp, Pp, yt, Ht, dt, Rt)
        return (m, P), (m, P, ll)

    _, (ms, Ps, lls) = lax.scan(step, (m1, P1), (p.F, p.b, p.Q, y0[1:], H[1:], d[1:], R[1:]))
    ms = jnp.concatenate([m1[None], ms])
    Ps = jnp.concatenate([P1[None], Ps])
    lls = jnp.concatenate([ll1[None], lls]) + corr
    return ms, Ps, lls


def _kalman_filter_seq_diag(p: LGSSM, y, r2):
    """Sequential Kalman filter for diagonal emission noise R = diag(r2), in information form.

    The observation update works in the D-dimensional latent space (precision
    P^-1 + H^T R^-1 H, Woodbury and the matrix determinant lemma for log p(y_t | y_{1:t-1}))
    instead of the N-dimensional innovation: per step two D x D Cholesky factors instead of one
    N x N, and everything that involves N is computed for all t at once outside the scan.
    Missing (NaN) entries get zero precision.
    """
    obs = ~jnp.isnan(y)
    w = jnp.where(obs, 1.0 / r2, 0.0)  # (T, N)
    e = jnp.where(obs, y - p.d, 0.0)
    Hw = p.H * w[..., None]  # (T, N, D)
    J = jnp.einsum("tnd,tne->tde", Hw, p.H)  # H^T R^-1 H
    a = jnp.einsum("tnd,tn->td", Hw, e)  # H^T R^-1 (y - d)
    c = jnp.sum(w * e * e, axis=-1)
    const = jnp.sum(jnp.where(obs, jnp.log(r2) + _LOG_2PI, 0.0), axis=-1)
    eye = jnp.eye(p.m0.shape[0], dtype=p.m0.dtype)

    def update(m, P, Jt, at, ct, kt):
        # P_new = (P^-1 + J)^-1 = (I + P J)^-1 P: no factor of P itself, which can be nearly
        # singular in float32 (a state with tiny dynamics noise); I + P J is invertible for any
        # positive semi-definite P and J
        A = eye + matmul(P, Jt)
        P_new = _sym(solve(A, P))
        j = at - matvec(Jt, m)
        g = matvec(P_new, j)
        quad = ct - 2.0 * jnp.dot(m, at) + jnp.dot(m, matvec(Jt, m)) - jnp.dot(j, g)
        ll = -0.5 * (kt + quad + _logdet_small(A))
        return m + g, P_new, ll

    m1, P1, ll1 = update(p.m0, p.P0, J[0], a[0], c[0], const[0])

    def step(carry, inp):
        m, P = carry
        F, b, Q, Jt, at, ct, kt = inp
        m, P, ll = update(matvec(F, m) + b, _sym(matmul(matmul(F, P), transpose(F)) + Q), Jt, at, ct, kt)
        return (m, P), (m, P, ll)

    _, (ms, Ps, lls) = lax.scan(step, (m1, P1), (p.F, p.b, p.Q, J[1:], a[1:], c[1:], const[1:]))
    return (jnp.concatenate([m1[None], ms]), jnp.concatenate([P1[None], Ps]),
            jnp.concatenate([ll1[None], lls]))


def _logdet_small(A):
    """log det A of a (D, D) matrix with positive determinant (closed form for D <= 2)."""
    D = A.shape[-1]
    if D == 1:
        return jnp.log(A[..., 0, 0])
    if D == 2:
        return jnp.log(A[..., 0, 0] * A[..., 1, 1] - A[..., 0, 1] * A[..., 1, 0])
    return jnp.linalg.slogdet(A)[1]


def _run_filter(p: LGSSM, y, r2, parallel: bool):
    """(means, covariances, pointwise log-likelihoods) of one sequence, by the fastest filter."""
    if r2 is not None and not parallel:
        return _kalman_filter_seq_diag(p, y, r2.astype(p.m0.dtype))
    return (_kalman_filter_par if parallel else _kalman_filter_seq)(p, y)


def _diagonal_noise(R, N: int):
    """(R as an (N, N) matrix, its diagonal (N,) or None): R may be given as variances (N,)."""
    R = jnp.asarray(R)
    if R.ndim == 1:
        if R.shape != (N,):
            raise ValueError(f"diagonal R must have shape (N,) = ({N},); got {R.shape}")
        return jnp.diag(R), R
    return R, None


def _kalman_filter_par(p: LGSSM, y):
    """Associative-scan Kalman filter (Sarkka & Garcia-Fernandez, 2021)."""
    y0, H, d, R, corr = mask_missing(y, p.H, p.d, p.R)
    D = p.m0.shape[0]
    eye = jnp.eye(D, dtype=p.m0.dtype)

    def first_elem():
        m, P, _ = _gauss_update(p.m0, p.P0, y0[0], H[0], d[0], R[0])
        z = jnp.zeros((D, D), m.dtype)
        return z, m, P, jnp.zeros(D, m.dtype), z

    def generic_elem(F, b, Q, yt, Ht, dt, Rt):
        HQ = matmul(Ht, Q)
        S = _sym(matmul(HQ, transpose(Ht)) + Rt)
        L = cholesky(S, _UNROLL_MAX_DIM_BATCHED)
        K = transpose(cho_solve_lower(L, HQ))  # Q H^T S^{-1}
        IKH = eye - matmul(K, Ht)
        A = matmul(IKH, F)
        bb = matvec(IKH, b) + matvec(K, yt - dt)
        C = _sym(matmul(IKH, Q))
        HF = matmul(Ht, F)
        Sinv_HF = cho_solve_lower(L, HF)
        eta = matvec(transpose(Sinv_HF), yt - matvec(Ht, b) - dt)
        J = _sym(matmul(transpose(HF), Sinv_HF))
        return A, bb, C, eta, J

    A1, b1, C1, e1, J1 = first_elem()
    As, bs, Cs, es, Js = jax.vmap(generic_elem)(p.F, p.b, p.Q, y0[1:], H[1:], d[1:], R[1:])
    elems = (
        jnp.concatenate([A1[None], As]),
        jnp.concatenate([b1[None], bs]),
        jnp.concatenate([C1[None], Cs]),
        jnp.concatenate([e1[None], es]),
        jnp.concatenate([J1[None], Js]),
    )

    def combine(ei, ej):
        Ai, bi, Ci, ei_, Ji = ei
        Aj, bj, Cj, ej_, Jj = ej
        I = jnp.broadcast_to(eye, Ci.shape)
        M1 = I + matmul(Ci, Jj)  # (I + C_i J_j)
        AjM = transpose(solve(transpose(M1), transpose(Aj)))  # A_j (I + C_i J_j)^{-1}
        A = matmul(AjM, Ai)
        b = matvec(AjM, bi + matvec(Ci, ej_)) + bj
        C = _sym(matmul(matmul(AjM, Ci), transpose(Aj)) + Cj)
        M2 = I + matmul(Jj, Ci)  # (I + J_j C_i)
        AiTM = transpose(solve(transpose(M2), Ai))  # A_i^T (I + J_j C_i)^{-1}
        eta = matvec(AiTM, ej_ - matvec(Jj, bi)) + ei_
        J = _sym(matmul(matmul(AiTM, Jj), Ai) + Ji)
        return A, b, C, eta, J

    _, ms, Ps, _, _ = lax.associative_scan(combine, elems)
    # the per-step predictive likelihoods follow from the filtered moments
    mp = jnp.concatenate([p.m0[None], matvec(p.F, ms[:-1]) + p.b])
    Pp = jnp.concatenate([p.P0[None], _sym(matmul(matmul(p.F, Ps[:-1]), transpose(p.F)) + p.Q)])

    def pred_ll(m, P, yt, Ht, dt, Rt):
        return _gauss_update(m, P, yt, Ht, dt, Rt, _UNROLL_MAX_DIM_BATCHED)[2]

    lls = jax.vmap(pred_ll)(mp, Pp, y0, H, d, R) + corr
    return ms, Ps, lls


def _check_y(y, T_name="y"):
    y = jnp.asarray(y)
    if y.ndim < 2:
        raise ValueError(f"{T_name} must have shape (..., T, N); got {y.shape}")
    return y


def _vmap_y(fn, y):
    """Apply a single-sequence function of y over its leading batch dims."""
    f = fn
    for _ in range(y.ndim - 2):
        f = jax.vmap(f)
    return f(y)


def kalman_filter(y, m0, P0, F, b, Q, H, d, R, parallel: bool = False) -> KalmanFiltered:
    """Kalman filter for x_1 ~ N(m0, P0), x_t = F x_{t-1} + b + N(0, Q), y_t = H x_t + d + N(0, R).

    Parameters
    ----------
    y : array (..., T, N)
        Observations; NaN entries are missing.
    m0 : array (D,)
    P0 : array (D, D)
    F : array (D, D) or (T-1, D, D)
    b : array (D,) or (T-1, D)
    Q : array (D, D) or (T-1, D, D)
    H : array (N, D) or (T, N, D)
    d : array (N,) or (T, N)
    R : array (N, N) or (T, N, N), or (N,)
        Emission covariance; a vector holds the variances of a diagonal one, which the
        sequential filter handles in information form (D x D work per step instead of N x N).
    parallel : bool
        Sequential (False) or associative-scan (True) filter.

    Returns
    -------
    KalmanFiltered
        ``log_likelihood`` (...,), ``filtered_means`` (..., T, D),
        ``filtered_covariances`` (..., T, D, D), ``pointwise`` (..., T).
    """
    y = _check_y(y)
    T, N = y.shape[-2:]
    R, r2 = _diagonal_noise(R, N)
    p = canonical_lgssm(T, m0, P0, F, b, Q, H, d, R, jnp.result_type(y, m0, jnp.float32))
    if p.H.shape[-2] != N:
        raise ValueError(f"y has N={N} observed dimensions but H has {p.H.shape[-2]} rows")
    y = y.astype(p.m0.dtype)

    def single(yy):
        ms, Ps, lls = _run_filter(p, yy, r2, parallel)
        return KalmanFiltered(jnp.sum(lls), ms, Ps, lls)

    return _vmap_y(single, y)


def _smoother_gains(p: LGSSM, ms, Ps):
    """Backward kernels x_t | x_{t+1} ~ N(E_t x_{t+1} + g_t, L_t) for t = 1..T-1."""

    def one(m, P, F, b, Q):
        FP = matmul(F, P)
        Pp = _sym(matmul(FP, transpose(F)) + Q)
        Lp = cholesky(Pp, _UNROLL_MAX_DIM_BATCHED)  # vmapped over steps
        E = transpose(cho_solve_lower(Lp, FP))  # P F^T Pp^{-1}
        g = m - matvec(E, matvec(F, m) + b)
        L = _sym(P - matmul(matmul(E, Pp), transpose(E)))
        return E, g, L

    return jax.vmap(one)(ms[:-1], Ps[:-1], p.F, p.b, p.Q)


def _kalman_smoother_single(p: LGSSM, y, parallel, r2=None):
    ms, Ps, lls = _run_filter(p, y, r2, parallel)
    E, g, L = _smoother_gains(p, ms, Ps)
    if parallel:

        def combine(later, earlier):
            # with reverse=True, associative_scan calls fn(later, earlier)
            E2, g2, L2 = later
            E1, g1, L1 = earlier
            return matmul(E1, E2), matvec(E1, g2) + g1, _sym(matmul(matmul(E1, L2), transpose(E1)) + L1)

        D = ms.shape[-1]
        zero = jnp.zeros((1, D, D), ms.dtype)
        elems = (
            jnp.concatenate([E, zero]),
            jnp.concatenate([g, ms[-1:]]),
            jnp.concatenate([L, Ps[-1:]]),
        )
        _, sm, sP = lax.associative_scan(combine, elems, reverse=True)
    else:

        def step(carry, inp):
            m_next, P_next = carry
            Et, gt, Lt = inp
            m = matvec(Et, m_next) + gt
            P = _sym(matmul(matmul(Et, P_next), transpose(Et)) + Lt)
            return (m, P), (m, P)

        _, (sm, sP) = lax.scan(step, (ms[-1], Ps[-1]), (E, g, L), reverse=True)
        sm = jnp.concatenate([sm, ms[-1:]])
        sP = jnp.concatenate([sP, Ps[-1:]])
    cross = matmul(sP[1:], transpose(E))  # Cov[x_{t+1}, x_t]
    return KalmanSmoothed(jnp.sum(lls), ms, Ps, sm, sP, cross)


def kalman_smoother(y, m0, P0, F, b, Q, H, d, R, parallel: bool = False) -> KalmanSmoothed:
    """Rauch-Tung-Striebel smoother; arguments as in :func:`kalman_filter`.

    Returns
    -------
    KalmanSmoothed
        ``log_likelihood`` (...,), filtered moments, ``smoothed_means`` (..., T, D),
        ``smoothed_covariances`` (..., T, D, D), ``smoothed_cross_covariances`` (..., T-1, D, D).
    """
    y = _check_y(y)
    T, N = y.shape[-2:]
    R, r2 = _diagonal_noise(R, N)
    p = canonical_lgssm(T, m0, P0, F, b, Q, H, d, R, jnp.result_type(y, m0, jnp.float32))
    if p.H.shape[-2] != N:
        raise ValueError(f"y has N={N} observed dimensions but H has {p.H.shape[-2]} rows")
    y = y.astype(p.m0.dtype)
    return _vmap_y(lambda yy: _kalman_smoother_single(p, yy, parallel, r2), y)


def kalman_sample(key, y, m0, P0, F, b, Q, H, d, R, parallel: bool = False) -> jax.Array:
    """Draw x_{1:T} ~ p(x_{1:T} | y_{1:T}) by forward filtering, backward sampling.

    The backward pass x_t = E_t x_{t+1} + g_t + chol(L_t) eps_t is a linear recurrence and runs
    through :func:`linear_recurrence` (sequential or parallel). Arguments as in
    :func:`kalman_filter`; ``y`` may have leading batch dims (one draw per sequence).

    Returns
    -------
    array (..., T, D)
    """
    y = _check_y(y)
    T, N = y.shape[-2:]
    R, r2 = _diagonal_noise(R, N)
    p = canonical_lgssm(T, m0, P0, F, b, Q, H, d, R, jnp.result_type(y, m0, jnp.float32))
    y = y.astype(p.m0.dtype)
    D = p.m0.shape[0]
    batch = y.shape[:-2]
    keys = jax.random.split(key, max(math.prod(batch), 1))

    def single(yy, k):
        ms, Ps, _ = _run_filter(p, yy, r2, parallel)
        E, g, L = _smoother_gains(p, ms, Ps)
        eps = jax.random.normal(k, (T, D), ms.dtype)
        x_last = ms[-1] + _chol_psd(Ps[-1]) @ eps[-1]
        noise = jnp.einsum("tij,tj->ti", jax.vmap(_chol_psd)(L), eps[:-1])
        xs = linear_recurrence(E, g + noise, x_last, parallel=parallel, reverse=True)
        return jnp.concatenate([xs, x_last[None]])

    f = single
    for _ in batch:
        f = jax.vmap(f)
    return f(y, keys.reshape(batch + keys.shape[1:]) if batch else keys[0])


def _chol_psd(P):
    """Cholesky factor of a covariance that may be singular (e.g. a noiseless conditional).

    A tiny relative jitter, scaled to the matrix, keeps the factorisation defined; it changes
    draws by far less than their spread."""
    eps = jnp.finfo(P.dtype).eps
    scale = jnp.maximum(jnp.max(jnp.abs(jnp.diag(P))), jnp.finfo(P.dtype).tiny)
    return jnp.linalg.cholesky(_sym(P) + 10 * eps * scale * jnp.eye(P.shape[-1], dtype=P.dtype))
