"""Small nonlinear recurrent cells to test parallel evaluation on: a GRU and a tanh-RNN family.

Every cell is a pure function ``cell(params, x, u) -> x_next`` of a parameter pytree, the
previous state ``x`` (D,) and the input ``u`` (I,); :func:`sequential` evaluates it over a
sequence with :func:`jax.lax.scan` (the reference that the parallel methods of
:mod:`zoo.deterministic.elk` must reproduce). Bind the parameters with
``functools.partial(cell, params)`` to get the ``f(x, u)`` that :func:`elk.evaluate` takes.

The tanh-RNN family ``x_t = tanh(gain * W x_{t-1} + U u_t + b)`` with ``W ~ N(0, 1/D)``
spans contracting (small gain) to chaotic (large gain, Sompolinsky et al. 1988) dynamics;
:func:`largest_lyapunov_exponent` measures which one a given network is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

__all__ = [
    "GRUParams",
    "TanhRNNParams",
    "gru_cell",
    "init_gru",
    "init_tanh_rnn",
    "largest_lyapunov_exponent",
    "lyapunov_spectrum",
    "sequential",
    "tanh_rnn_cell",
]


class GRUParams(NamedTuple):
    """Parameters of a GRU cell with state size D and input size I.

    Attributes
    ----------
    W : (3, D, I) input weights of the update gate, reset gate and candidate.
    U : (3, D, D) recurrent weights, same order.
    b : (3, D) input biases.
    bn : (D,) recurrent bias of the candidate (inside the reset gate, as in cuDNN / PyTorch).
    """

    W: jax.Array
    U: jax.Array
    b: jax.Array
    bn: jax.Array


class TanhRNNParams(NamedTuple):
    """Parameters of ``x_t = tanh(gain * W x_{t-1} + U u_t + b)``.

    Attributes
    ----------
    W : (D, D) recurrent weights (already multiplied by the gain).
    U : (D, I) input weights.
    b : (D,) bias.
    """

    W: jax.Array
    U: jax.Array
    b: jax.Array


def _check_sizes(state_dim: int, input_dim: int) -> None:
    if int(state_dim) < 1:
        raise ValueError(f"state_dim must be a positive integer; got {state_dim}")
    if int(input_dim) < 1:
        raise ValueError(f"input_dim must be a positive integer; got {input_dim}")


def init_gru(
    key: jax.Array, state_dim: int, input_dim: int, scale: float = 1.0, dtype=jnp.float32
) -> GRUParams:
    """Random GRU parameters, weights ~ N(0, scale^2 / fan_in), biases ~ N(0, 0.1^2).

    Parameters
    ----------
    key : PRNG key
    state_dim : int
        D, the hidden state size.
    input_dim : int
        I, the input size.
    scale : float
        Multiplies every weight; ``scale`` of 3 or more gives large-weight networks whose
        linearisations are far from contracting.
    dtype : dtype
        float32 or float64.

    Returns
    -------
    GRUParams
        ``W`` (3, D, I), ``U`` (3, D, D), ``b`` (3, D), ``bn`` (D,).
    """
    _check_sizes(state_dim, input_dim)
    if not scale > 0:
        raise ValueError(f"scale must be positive; got {scale}")
    D, I = int(state_dim), int(input_dim)
    k1, k2, k3, k4 = jax.random.split(key, 4)
    W = jax.random.normal(k1, (3, D, I), dtype) * (scale / jnp.sqrt(I))
    U = jax.random.normal(k2, (3, D, D), dtype) * (scale / jnp.sqrt(D))
    b = 0.1 * jax.random.normal(k3, (3, D), dtype)
    bn = 0.1 * jax.random.normal(k4, (D,), dtype)
    return GRUParams(W, U, b, bn)


def gru_cell(params: GRUParams, x: jax.Array, u: jax.Array) -> jax.Array:
    """One GRU step.

    z = sigmoid(W_z u + U_z x + b_z), r = sigmoid(W_r u + U_r x + b_r),
    n = tanh(W_n u + b_n + r * (U_n x + bn)), x_next = (1 - z) * n + z * x.

    Parameters
    ----------
    params : GRUParams
    x : array (D,)
        Previous state.
    u : array (I,)
        Input.

    Returns
    -------
    array (D,)
    """
    wu = params.W @ u + params.b  # (3, D)
    ux = params.U[:2] @ x  # (2, D)
    z = jax.nn.sigmoid(wu[0] + ux[0])
    r = jax.nn.sigmoid(wu[1] + ux[1])
    n = jnp.tanh(wu[2] + r * (params.U[2] @ x + params.bn))
    return (1.0 - z) * n + z * x


def init_tanh_rnn(
    key: jax.Array, state_dim: int, input_dim: int, gain: float = 0.5, dtype=jnp.float32
) -> TanhRNNParams:
    """Random tanh RNN with recurrent weights ``gain * N(0, 1/D)``.

    Parameters
    ----------
    key : PRNG key
    state_dim : int
        D.
    input_dim : int
        I.
    gain : float
        Spectral scale of W: below 1 the network contracts; well above 1 it is chaotic for
        large D and weak inputs.
    dtype : dtype

    Returns
    -------
    TanhRNNParams
        ``W`` (D, D), ``U`` (D, I), ``b`` (D,).
    """
    _check_sizes(state_dim, input_dim)
    if not gain > 0:
        raise ValueError(f"gain must be positive; got {gain}")
    D, I = int(state_dim), int(input_dim)
    k1, k2, k3 = jax.random.split(key, 3)
    W = jax.random.normal(k1, (D, D), dtype) * (gain / jnp.sqrt(D))
    U = jax.random.normal(k2, (D, I), dtype) / jnp.sqrt(I)
    b = 0.1 * jax.random.normal(k3, (D,), dtype)
    return TanhRNNParams(W, U, b)


def tanh_rnn_cell(params: TanhRNNParams, x: jax.Array, u: jax.Array) -> jax.Array:
    """One step ``tanh(W x + U u + b)``; x (D,), u (I,) -> (D,)."""
    return jnp.tanh(params.W @ x + params.U @ u + params.b)


def sequential(f: Callable, x0: jax.Array, inputs) -> jax.Array:
    """Reference evaluation of x_t = f(x_{t-1}, u_t), t = 1..T, with ``lax.scan``.

    Parameters
    ----------
    f : callable (D,), input slice -> (D,)
    x0 : array (D,)
    inputs : array (T, ...) or pytree of arrays with a leading T axis

    Returns
    -------
    array (T, D)
    """

    def step(x, u):
        x = f(x, u)
        return x, x

    return lax.scan(step, x0, inputs)[1]


def largest_lyapunov_exponent(f: Callable, x0: jax.Array, inputs, burn_in: int = 0) -> jax.Array:
    """Largest Lyapunov exponent (per step) along the trajectory from x0, by power iteration.

    lambda_max = (1 / (T - burn_in)) sum_t log ||J_t v_{t-1}|| with v renormalised each step.
    Negative: the system contracts (errors shrink, parallel Newton converges in few iterations);
    positive: chaotic (errors grow, "unpredictable" in the sense of Gonzalez et al. 2025).

    Parameters
    ----------
    f : callable (D,), input slice -> (D,)
    x0 : array (D,)
    inputs : array (T, ...) or pytree with a leading T axis
    burn_in : int
        Steps excluded from the average (transient).

    Returns
    -------
    scalar array
    """
    T = jax.tree_util.tree_leaves(inputs)[0].shape[0]
    if not 0 <= burn_in < T:
        raise ValueError(f"burn_in must be in [0, T) = [0, {T}); got {burn_in}")
    v0 = jnp.ones_like(x0) / jnp.sqrt(x0.shape[0])

    def step(carry, inp):
        x, v = carry
        t, u = inp
        x_new, jv = jax.jvp(lambda xx: f(xx, u), (x,), (v,))
        n = jnp.linalg.norm(jv)
        return (x_new, jv / n), jnp.where(t >= burn_in, jnp.log(n), 0.0)

    _, logs = lax.scan(step, (x0, v0), (jnp.arange(T), inputs))
    return jnp.sum(logs) / (T - burn_in)


def lyapunov_spectrum(f: Callable, x0: jax.Array, inputs, k: int = 2, burn_in: int = 0,
                      key: jax.Array | None = None) -> jax.Array:
    """The k largest Lyapunov exponents (per step) along the trajectory from x0, by QR.

    k tangent vectors Q (D, k) are propagated with the Jacobians of f, Q_t R_t = J_t Q_{t-1}
    (thin QR) re-orthonormalises them every step, and lambda_j = mean_t log |R_t[j, j]| over the
    steps after ``burn_in``. With k = 1 this is :func:`largest_lyapunov_exponent` (from a random
    instead of a fixed start vector).

    Parameters
    ----------
    f : callable (D,), input slice -> (D,)
    x0 : array (D,)
    inputs : array (T, ...) or pytree with a leading T axis
    k : int
        Number of exponents, 1 <= k <= D.
    burn_in : int
        Steps excluded from the average (transient and alignment of the tangent vectors).
    key : PRNG key, optional
        For the random orthonormal start vectors (default ``PRNGKey(0)``).

    Returns
    -------
    array (k,)
        Exponents in decreasing order (up to estimation noise).
    """
    T = jax.tree_util.tree_leaves(inputs)[0].shape[0]
    D = x0.shape[0]
    if not 0 <= burn_in < T:
        raise ValueError(f"burn_in must be in [0, T) = [0, {T}); got {burn_in}")
    if not 1 <= int(k) <= D:
        raise ValueError(f"k must be in [1, D] = [1, {D}]; got {k}")
    key = jax.random.PRNGKey(0) if key is None else key
    Q0 = jnp.linalg.qr(jax.random.normal(key, (D, int(k)), x0.dtype))[0]

    def step(carry, inp):
        x, Q = carry
        t, u = inp
        x_new, JQ = jax.vmap(lambda q: jax.jvp(lambda xx: f(xx, u), (x,), (q,)), in_axes=1,
                             out_axes=(None, 1))(Q)
        Qn, R = jnp.linalg.qr(JQ)
        d = jnp.diagonal(R)
        Qn = Qn * jnp.sign(d)  # keep the orientation continuous (R with positive diagonal)
        logs = jnp.log(jnp.abs(d))
        return (x_new, Qn), jnp.where(t >= burn_in, logs, 0.0)

    _, logs = lax.scan(step, (x0, Q0), (jnp.arange(T), inputs))
    return jnp.sum(logs, axis=0) / (T - burn_in)
