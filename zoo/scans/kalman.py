"""Kalman filtering, Rauch-Tung-Striebel smoothing and forward-filtering backward-sampling of
linear-Gaussian state-space models.

Model: x_1 ~ N(m0, P0), x_t = F_t x_{t-1} + b_t + N(0, Q_t), y_t = H_t x_t + d_t + N(0, R_t).
Dynamics parameters are fixed, (D, D) / (D,), or time-varying with a leading T-1 axis (the
transition into step t+1 is index t); emission parameters are fixed or have a leading T axis.
Missing observations are NaN entries of ``y`` (any subset of a row). ``y`` may carry leading
batch dims (trials sharing the parameters). Updates use Cholesky factors and triangular solves
(:mod:`zoo.scans.linalg`); no matrix is inverted explicitly.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from zoo.scans.linalg import (
    UNROLL_MAX_DIM,
    UNROLL_MAX_DIM_BATCHED,
    cho_solve_lower,
    cholesky,
    matmul,
    matvec,
    solve,
    solve_lower,
    transpose,
)
from zoo.scans.recurrence import linear_recurrence

__all__ = [
    "KalmanFiltered",
    "KalmanSmoothed",
    "LGSSM",
    "canonical_lgssm",
    "mask_missing",
    "kalman_filter",
    "kalman_smoother",
    "kalman_sample",
]

_LOG_2PI = math.log(2.0 * math.pi)


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


def _gauss_update(m, P, y, H, d, R, max_unrolled=UNROLL_MAX_DIM):
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


def _kalman_filter_seq_diag(p: LGSSM, y, r2, information=None):
    """Sequential Kalman filter for diagonal emission noise R = diag(r2), in information form.

    The observation update works in the D-dimensional latent space (precision
    P^-1 + H^T R^-1 H, Woodbury and the matrix determinant lemma for log p(y_t | y_{1:t-1}))
    instead of the N-dimensional innovation: per step two D x D Cholesky factors instead of one
    N x N, and everything that involves N is computed for all t at once outside the scan.
    Missing (NaN) entries get zero precision. ``information`` (J (T, D, D), h (T, D)) adds the
    factors exp(-x_t' J_t x_t / 2 + h_t' x_t) to the emission's (same update, same integral).
    """
    obs = ~jnp.isnan(y)
    w = jnp.where(obs, 1.0 / r2, 0.0)  # (T, N)
    e = jnp.where(obs, y - p.d, 0.0)
    Hw = p.H * w[..., None]  # (T, N, D)
    J = jnp.einsum("tnd,tne->tde", Hw, p.H)  # H^T R^-1 H
    a = jnp.einsum("tnd,tn->td", Hw, e)  # H^T R^-1 (y - d)
    c = jnp.sum(w * e * e, axis=-1)
    const = jnp.sum(jnp.where(obs, jnp.log(r2) + _LOG_2PI, 0.0), axis=-1)
    if information is not None:
        J, a = J + information[0], a + information[1]
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


def _run_filter(p: LGSSM, y, r2, parallel: bool, information=None):
    """(means, covariances, pointwise log-likelihoods) of one sequence, by the fastest filter."""
    if r2 is not None and not parallel:
        return _kalman_filter_seq_diag(p, y, r2.astype(p.m0.dtype), information)
    return (_kalman_filter_par if parallel else _kalman_filter_seq)(p, y)


def _check_information(information, T: int, D: int, r2, parallel: bool, dtype):
    """``information`` as (J (T, D, D), h (T, D)) arrays of ``dtype``, or None."""
    if information is None:
        return None
    if r2 is None or parallel:
        raise ValueError("information needs diagonal emission noise (R given as variances (N,)) "
                         "and the sequential filter (parallel=False)")
    J, h = (jnp.asarray(a, dtype) for a in information)
    if J.shape != (T, D, D) or h.shape != (T, D):
        raise ValueError(f"information must be (J, h) of shapes ({T}, {D}, {D}) and ({T}, {D}); "
                         f"got {J.shape} and {h.shape}")
    return J, h


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
        L = cholesky(S, UNROLL_MAX_DIM_BATCHED)
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
        return _gauss_update(m, P, yt, Ht, dt, Rt, UNROLL_MAX_DIM_BATCHED)[2]

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


def kalman_filter(y, m0, P0, F, b, Q, H, d, R, parallel: bool = False, information=None) -> KalmanFiltered:
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
    information : tuple of arrays (T, D, D) and (T, D), optional
        Extra Gaussian factors exp(-x_t' J_t x_t / 2 + h_t' x_t) on each step's state (e.g. a
        Polya-gamma-augmented logistic likelihood of the states' transitions): the filter
        conditions on them as on the observations, and the log-likelihood integrates them
        too. Needs a diagonal R and ``parallel=False``.

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
    info = _check_information(information, T, p.m0.shape[0], r2, parallel, p.m0.dtype)

    def single(yy):
        ms, Ps, lls = _run_filter(p, yy, r2, parallel, info)
        return KalmanFiltered(jnp.sum(lls), ms, Ps, lls)

    return _vmap_y(single, y)


def _smoother_gains(p: LGSSM, ms, Ps):
    """Backward kernels x_t | x_{t+1} ~ N(E_t x_{t+1} + g_t, L_t) for t = 1..T-1."""

    def one(m, P, F, b, Q):
        FP = matmul(F, P)
        Pp = _sym(matmul(FP, transpose(F)) + Q)
        Lp = cholesky(Pp, UNROLL_MAX_DIM_BATCHED)  # vmapped over steps
        E = transpose(cho_solve_lower(Lp, FP))  # P F^T Pp^{-1}
        g = m - matvec(E, matvec(F, m) + b)
        L = _sym(P - matmul(matmul(E, Pp), transpose(E)))
        return E, g, L

    return jax.vmap(one)(ms[:-1], Ps[:-1], p.F, p.b, p.Q)


def _kalman_smoother_single(p: LGSSM, y, parallel, r2=None, information=None):
    ms, Ps, lls = _run_filter(p, y, r2, parallel, information)
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


def kalman_smoother(y, m0, P0, F, b, Q, H, d, R, parallel: bool = False, information=None) -> KalmanSmoothed:
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
    info = _check_information(information, T, p.m0.shape[0], r2, parallel, p.m0.dtype)
    return _vmap_y(lambda yy: _kalman_smoother_single(p, yy, parallel, r2, info), y)


def kalman_sample(key, y, m0, P0, F, b, Q, H, d, R, parallel: bool = False, information=None) -> jax.Array:
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
    info = _check_information(information, T, D, r2, parallel, p.m0.dtype)
    batch = y.shape[:-2]
    keys = jax.random.split(key, max(math.prod(batch), 1))

    def single(yy, k):
        ms, Ps, _ = _run_filter(p, yy, r2, parallel, info)
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
