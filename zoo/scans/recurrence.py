"""Linear recurrences x_t = A_t x_{t-1} + b_t, by a sequential scan or an associative scan of
affine maps."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from zoo.scans.linalg import matmul, matvec

__all__ = ["linear_recurrence"]


def linear_recurrence(A, b, x0, parallel: bool = True, reverse: bool = False) -> jax.Array:
    """Evaluate x_t = A_t x_{t-1} + b_t for t = 1..T (or backwards in time).

    Parameters
    ----------
    A : array (D,), (T, D) or (T, D, D)
        One diagonal for every step (1-D), diagonal (2-D) or dense (3-D) transition matrices;
        real or complex. A constant diagonal is closed over by the sequential scan, so its
        gradient accumulates in the scan's carry instead of one (T, D) array per call (the S5
        layer's case).
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
    diagonal = A.ndim <= 2
    if A.shape not in ((D,), (T, D), (T, D, D)):
        raise ValueError(f"A must have shape (D,), (T, D) or (T, D, D) with T = {T}, D = {D}; got {A.shape}")
    dtype = jnp.result_type(A, b, x0)
    A, b, x0 = A.astype(dtype), b.astype(dtype), x0.astype(dtype)
    if A.ndim == 1 and not parallel:
        def constant_step(x, bb):
            x = A * x + bb
            return x, x

        return lax.scan(constant_step, x0, b, reverse=reverse)[1]
    if A.ndim == 1:
        A = jnp.broadcast_to(A, (T, D))

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
