"""Message passing for hidden Markov models: forward filtering, the log normalizer and its
per-step terms, forward-backward smoothing, forward-filtering backward-sampling and Viterbi.

Conventions: ``log_init`` (..., K), ``log_trans`` (K, K) fixed or (..., T-1, K, K) time-varying
with ``log_trans[t, i, j] = log p(z_{t+1} = j | z_t = i)`` (0-based: the transition into step
t+1), ``log_lik`` (..., T, K) with ``log_lik[t, k] = log p(y_t | z_t = k)``. Leading batch dims
(trials) broadcast; a 2-D ``log_trans`` is always read as fixed. Messages are kept in log space,
or as scaled probabilities where that is exact to rounding (:func:`scaled_path_ok`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.special import logsumexp

__all__ = [
    "SCALED_FLOOR",
    "HMMFiltered",
    "HMMPosterior",
    "hmm_filter",
    "hmm_log_normalizer",
    "hmm_pointwise_log_normalizer",
    "hmm_smoother",
    "hmm_sample",
    "hmm_viterbi",
    "scaled_path_ok",
]


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
