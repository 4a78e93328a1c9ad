"""Parallel evaluation of nonlinear recurrences: DEER, quasi-DEER, ELK and quasi-ELK.

We want x_1..x_T with x_t = f(x_{t-1}, u_t) (x_0 given). Stack them into x (T, D) and solve the
nonlinear system of T*D equations G(x)_t = x_t - f(x_{t-1}, u_t) = 0 by iterating on a
linearisation around the current iterate x^(i). With J_t = df/dx (x^(i)_{t-1}, u_t) and
r_t = f(x^(i)_{t-1}, u_t) - J_t x^(i)_{t-1}, the linearised dynamics are
x_t = J_t x_{t-1} + r_t, a *linear recurrence*.

- ``"deer"`` (Lim et al., ICLR 2024): Newton. The next iterate is the linear recurrence with
  dense J_t, run by :func:`zoo.scans.linear_recurrence`.
- ``"quasi_deer"`` (Gonzalez et al., NeurIPS 2024): J_t replaced by its diagonal; the recurrence
  is diagonal (O(T D) memory and work per iteration instead of O(T D^2) / O(T D^3)).
- ``"elk"`` (Gonzalez et al., NeurIPS 2024): Levenberg-Marquardt. The next iterate minimises
  sum_t ||x_t - J_t x_{t-1} - r_t||^2 + damping * sum_t ||x_t - x^(i)_t||^2, which is the
  posterior mean of the linear-Gaussian state-space model with dynamics
  x_t = J_t x_{t-1} + r_t + N(0, I) and pseudo-observations y_t = x^(i)_t + N(0, I / damping).
  The *whole* posterior mean is needed (the LM step is a joint solve over all t), so this is a
  Kalman **smoother**: :func:`zoo.scans.kalman_smoother` (filter + RTS smoother). A filter
  alone would only give the right value at t = T.
- ``"quasi_elk"``: the same with diagonal J_t. The problem then splits into D independent
  scalar state-space models, solved by the same smoother with 1x1 matrices, vmapped over the D
  dimensions (O(T D) memory).

``damping`` is the lambda of the ELK paper (Gonzalez et al. 2024, which writes the
pseudo-observation variance sigma^2 = 1 / lambda in its code): the pseudo-observation
precision relative to unit process noise and a unit prior covariance of x_1.
``damping -> 0`` recovers (quasi-)DEER; larger damping gives shorter, safer steps (a trust
region), which keeps the iteration bounded on unstable networks where the Newton recurrence
overflows.

Stopping rule: the iteration stops when the residual max_t ||x_t - f(x_{t-1}, u_t)||_inf is
<= ``tol``, when it becomes non-finite (divergence) or after ``max_iters`` (<= T) linear solves.
DEER and quasi-DEER are exact in at most T iterations in exact arithmetic (after i iterations
the first i states are exact), which is why T is the cap: beyond it the sequential scan is
cheaper anyway. ``converged`` reports whether the tolerance was met; unconverged states are
replaced by NaN unless ``on_failure="flag"`` (keep the last iterate, for diagnostics) or
raise with ``on_failure="raise"`` (only outside ``jit``).

Every linear solve runs either as a parallel associative scan (O(log T) depth) or as a
sequential ``lax.scan`` (O(T) depth, less work): ``parallel=None`` picks the first on a GPU or
TPU and the second on a CPU (:func:`parallel_default`); both give the same iterates up to
rounding. :func:`trace` records the residual and the deviation from a reference trajectory at
every iteration.

Gradients use the implicit function theorem at the solution, not the iterations: for a
cotangent g (T, D) of the states, the adjoint lambda_t = g_t + J_{t+1}^T lambda_{t+1}
(lambda_{T+1} = 0) is one reverse *linear recurrence* with the exact dense Jacobians, and the
gradients are lambda_t^T df/d(theta, u_t, x_{t-1}) from one vjp of f over all steps.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from zoo.deterministic.parallel import parallel_default
from zoo.deterministic.parallel import resolve_parallel as _check_parallel
from zoo.scans import kalman_smoother, linear_recurrence

__all__ = ["METHODS", "ELKResult", "ELKTrace", "evaluate", "linearized_step", "parallel_default", "residual",
           "sequential", "trace"]

METHODS = ("deer", "quasi_deer", "elk", "quasi_elk")


class ELKResult(NamedTuple):
    """Result of :func:`evaluate`.

    Attributes
    ----------
    states : (T, D) x_1..x_T (NaN if not converged and ``on_failure="nan"``).
    iterations : () int, number of linearised solves performed.
    converged : () bool, whether max_t ||x_t - f(x_{t-1}, u_t)||_inf <= tol was reached.
    residual : () float, that residual at the returned iterate (before any NaN masking;
        +inf if the iterate is not finite).
    """

    states: jax.Array
    iterations: jax.Array
    converged: jax.Array
    residual: jax.Array


def sequential(f: Callable, x0: jax.Array, inputs) -> jax.Array:
    """Sequential evaluation with ``lax.scan``: x (T, D) from x0 (D,) and inputs (T, ...)."""

    def step(x, u):
        x = f(x, u)
        return x, x

    return lax.scan(step, x0, inputs)[1]


# ----------------------------------------------------------------------------------------------
# One linearised step
# ----------------------------------------------------------------------------------------------


def _shift(x0, x):
    """x_{t-1} for t = 1..T: (T, D)."""
    return jnp.concatenate([x0[None], x[:-1]], axis=0)


def _f_all(f, xp, inputs, consts):
    return jax.vmap(lambda x, u: f(x, u, *consts))(xp, inputs)


def _jac_all(f, xp, inputs, consts, diagonal: bool):
    def one(x, u):
        J = jax.jacfwd(lambda xx: f(xx, u, *consts))(x)
        return jnp.diagonal(J) if diagonal else J

    return jax.vmap(one)(xp, inputs)


def _step(method: str, damping, x0, x, fx, J, parallel: bool = True):
    """Next iterate from the current one x (T, D), f at it (fx) and its Jacobians J."""
    T, D = x.shape
    xp = _shift(x0, x)
    diagonal = method in ("quasi_deer", "quasi_elk")
    r = fx - (J * xp if diagonal else jnp.einsum("tij,tj->ti", J, xp))
    if method in ("deer", "quasi_deer"):
        return linear_recurrence(J, r, x0, parallel=parallel)
    dtype = x.dtype
    # x_1 = J_1 x_0 + r_1 = f(x_0, u_1): the prior mean of the first state.
    if method == "elk":
        eye = jnp.eye(D, dtype=dtype)
        post = kalman_smoother(
            x, fx[0], eye, J[1:], r[1:], eye, eye, jnp.zeros(D, dtype), eye / damping, parallel=parallel
        )
        return post.smoothed_means
    # quasi_elk: D independent scalar smoothers, same parallel kernel with 1x1 matrices.
    one = jnp.ones((1, 1), dtype)

    def scalar(y, m0, F, b):
        post = kalman_smoother(
            y[:, None], m0[None], one, F[:, None, None], b[:, None], one, one,
            jnp.zeros(1, dtype), one / damping, parallel=parallel,
        )
        return post.smoothed_means[:, 0]

    return jax.vmap(scalar, in_axes=(1, 0, 1, 1), out_axes=1)(x, fx[0], J[1:], r[1:])


def _check_common(f, x0, inputs, method, damping):
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    if not callable(f):
        raise ValueError(f"f must be callable f(x, u) -> x_next; got {type(f).__name__}")
    x0 = jnp.asarray(x0)
    if x0.ndim != 1:
        raise ValueError(f"x0 must have shape (D,); got {x0.shape}")
    if not jnp.issubdtype(x0.dtype, jnp.floating):
        raise ValueError(f"x0 must be a real floating-point array; got dtype {x0.dtype}")
    leaves = jax.tree_util.tree_leaves(inputs)
    if not leaves:
        raise ValueError("inputs must be an array or pytree of arrays with a leading T axis")
    leaves = [jnp.asarray(a) for a in leaves]
    if any(a.ndim < 1 for a in leaves):
        raise ValueError("inputs must have a leading time axis T on every leaf")
    T = leaves[0].shape[0]
    if T < 1 or any(a.shape[0] != T for a in leaves):
        shapes = [a.shape for a in leaves]
        raise ValueError(f"inputs must share a leading time axis T >= 1; got shapes {shapes}")
    inputs = jax.tree_util.tree_map(jnp.asarray, inputs)
    u0 = jax.tree_util.tree_map(lambda a: a[0], inputs)
    out = jax.eval_shape(f, x0, u0)
    if getattr(out, "shape", None) != x0.shape:
        raise ValueError(f"f(x0, u_1) must return shape {x0.shape} like x0; got {getattr(out, 'shape', out)}")
    if method in ("elk", "quasi_elk") and not (isinstance(damping, (int, float)) and damping > 0):
        raise ValueError(f"damping must be a positive float for method={method!r}; got {damping!r}")
    return x0, inputs, u0, T


def linearized_step(f: Callable, x0: jax.Array, inputs, states: jax.Array, method: str = "deer",
                    damping: float = 1.0, parallel: bool | None = None) -> jax.Array:
    """One iteration of ``method`` from the iterate ``states``; exposed for testing and study.

    Parameters
    ----------
    f : callable f(x (D,), u) -> (D,)
    x0 : array (D,)
    inputs : array (T, ...) or pytree with leading T
    states : array (T, D)
        The current iterate x^(i).
    method : {"deer", "quasi_deer", "elk", "quasi_elk"}
    damping : float
        Levenberg-Marquardt damping (pseudo-observation precision) for ELK methods.
    parallel : bool, optional
        Parallel associative scans or sequential scans (default :func:`parallel_default`).

    Returns
    -------
    array (T, D)
        The next iterate x^(i+1).
    """
    x0, inputs, u0, T = _check_common(f, x0, inputs, method, damping)
    parallel = _check_parallel(parallel)
    states = jnp.asarray(states, x0.dtype)
    if states.shape != (T, x0.shape[0]):
        raise ValueError(f"states must have shape (T, D) = ({T}, {x0.shape[0]}); got {states.shape}")
    fc, consts = jax.closure_convert(f, x0, u0)
    xp = _shift(x0, states)
    fx = _f_all(fc, xp, inputs, consts)
    J = _jac_all(fc, xp, inputs, consts, method in ("quasi_deer", "quasi_elk"))
    return _step(method, damping, x0, states, fx, J, parallel)


def residual(f: Callable, x0: jax.Array, inputs, states: jax.Array) -> jax.Array:
    """max_t ||x_t - f(x_{t-1}, u_t)||_inf for states (T, D); a scalar."""
    fx = jax.vmap(f)(_shift(x0, states), inputs)
    return jnp.max(jnp.abs(states - fx))


# ----------------------------------------------------------------------------------------------
# The iteration, with implicit-function-theorem gradients
# ----------------------------------------------------------------------------------------------


def _merit(x, fx):
    """Residual norms of an iterate: (max |x - f|, sum (x - f)^2), both +inf if non-finite.

    The explicit finiteness check matters: XLA's max reduction may skip NaN."""
    d = x - fx
    finite = jnp.all(jnp.isfinite(d))
    inf = jnp.asarray(jnp.inf, x.dtype)
    return jnp.where(finite, jnp.max(jnp.abs(d)), inf), jnp.where(finite, jnp.sum(d * d), inf)


class _Record(NamedTuple):
    """What :func:`_iterate` records per iteration for :func:`trace` (static settings + arrays)."""

    reference: jax.Array  # (T, K) compared with states[:, components]
    components: tuple  # K state indices
    reset: bool  # zero non-finite entries of a new iterate and go on


def _iterate(fc, method, tol, max_iters, damping, adaptive, parallel, x0, inputs, init, consts,
             record: _Record | None = None):
    """The (quasi-)Newton / Levenberg-Marquardt loop shared by :func:`evaluate` and :func:`trace`.

    Returns (x, iterations, converged, residual) and, with ``record``, the per-iteration history
    (residual, deviation, non-finite flag, damping), each (max_iters,), NaN / False past the stop.
    """
    diagonal = method in ("quasi_deer", "quasi_elk")
    lm = method in ("elk", "quasi_elk")
    dtype = x0.dtype

    def linearise(x):
        xp = _shift(x0, x)
        fx = _f_all(fc, xp, inputs, consts)
        J = _jac_all(fc, xp, inputs, consts, diagonal)
        return (fx, J) + _merit(x, fx)

    reset = record is not None and record.reset

    def cond(c):
        i, _, _, _, err, _, _, _ = c
        if reset:  # go on after a non-finite residual (f overflowed at a huge but finite iterate)
            return (i < max_iters) & ~(err <= tol)
        return (i < max_iters) & (err > tol) & jnp.isfinite(err)

    def body(c):
        i, x, fx, J, err, merit, lam, hist = c
        x_new = _step(method, lam, x0, x, fx, J, parallel)
        bad = ~jnp.all(jnp.isfinite(x_new))
        if reset:
            x_new = jnp.where(jnp.isfinite(x_new), x_new, jnp.zeros((), dtype))
        new = (x_new,) + linearise(x_new)
        lam_used = lam
        if lm and adaptive:
            # Levenberg-Marquardt trust region: accept if the merit sum ||x - f||^2 decreased
            # (then relax the damping), otherwise keep the iterate and damp harder.
            accept = new[4] < merit
            x, fx, J, err, merit = jax.tree_util.tree_map(
                lambda a, b: jnp.where(accept, a, b), new, (x, fx, J, err, merit)
            )
            lam = jnp.where(accept, jnp.maximum(lam * _LM_DOWN, _LM_MIN), lam * _LM_UP)
        else:
            x, fx, J, err, merit = new
        if record is not None:
            n = record.reference.size  # mean of |d| / n, not sum / n: no overflow at huge iterates
            dev = jnp.sum(jnp.abs(x[:, record.components] - record.reference) / n)
            h_err, h_dev, h_bad, h_lam = hist
            hist = (h_err.at[i].set(err), h_dev.at[i].set(dev), h_bad.at[i].set(bad),
                    h_lam.at[i].set(lam_used))
        return i + 1, x, fx, J, err, merit, lam, hist

    if record is None:
        hist0 = ()
    else:
        nan = jnp.full((max_iters,), jnp.nan, dtype)
        hist0 = (nan, nan, jnp.zeros((max_iters,), bool), nan)
    fx, J, err, merit = linearise(init)
    c0 = (jnp.asarray(0, jnp.int32), init, fx, J, err, merit, jnp.asarray(damping, dtype), hist0)
    i, x, _, _, err, _, _, hist = lax.while_loop(cond, body, c0)
    converged = err <= tol  # False for NaN / inf
    return (x, i, converged, err) + ((hist,) if record is not None else ())


def _solve(fc, method, tol, max_iters, damping, adaptive, parallel, x0, inputs, init, consts):
    return _iterate(fc, method, tol, max_iters, damping, adaptive, parallel, x0, inputs, init, consts)


_LM_DOWN, _LM_UP, _LM_MIN = 0.3, 4.0, 1e-6


@partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3, 4, 5, 6))
def _solve_ift(fc, method, tol, max_iters, damping, adaptive, parallel, x0, inputs, init, consts):
    return _solve(fc, method, tol, max_iters, damping, adaptive, parallel, x0, inputs, init, consts)


def _solve_fwd(fc, method, tol, max_iters, damping, adaptive, parallel, x0, inputs, init, consts):
    out = _solve(fc, method, tol, max_iters, damping, adaptive, parallel, x0, inputs, init, consts)
    return out, (out[0], x0, inputs, init, consts)


def _solve_bwd(fc, method, tol, max_iters, damping, adaptive, parallel, res, cts):
    x, x0, inputs, init, consts = res
    g = cts[0]
    xp = _shift(x0, x)
    J = _jac_all(fc, xp, inputs, consts, diagonal=False)  # exact Jacobians at the solution
    # lambda_t = g_t + J_{t+1}^T lambda_{t+1}; the last A multiplies lambda_{T+1} = 0.
    A = jnp.concatenate([jnp.swapaxes(J[1:], -1, -2), jnp.zeros_like(J[:1])], axis=0)
    lam = linear_recurrence(A, g, jnp.zeros_like(x0), parallel=parallel, reverse=True)
    _, vjp = jax.vjp(lambda xx, uu, cc: _f_all(fc, xx, uu, cc), xp, inputs, consts)
    d_xp, d_inputs, d_consts = vjp(lam)
    return d_xp[0], d_inputs, jnp.zeros_like(init), d_consts


_solve_ift.defvjp(_solve_fwd, _solve_bwd)


def _default_tol(dtype) -> float:
    return 1e-6 if jnp.dtype(dtype) == jnp.float32 else 1e-12


def _check_run(x0, T, tol, max_iters, init):
    """Validated (tol, max_iters, init) of an iteration over T steps from x0 (D,)."""
    D = x0.shape[0]
    if tol is None:
        tol = _default_tol(x0.dtype)
    if not (isinstance(tol, (int, float)) and tol > 0):
        raise ValueError(f"tol must be a positive float; got {tol!r}")
    if max_iters is None:
        max_iters = T
    if isinstance(max_iters, (bool, np.bool_)) or not isinstance(max_iters, (int, np.integer)) or not (
        1 <= max_iters <= T
    ):
        raise ValueError(f"max_iters must be an integer in [1, T] = [1, {T}]; got {max_iters!r}")
    if init is None:
        init = jnp.zeros((T, D), x0.dtype)
    else:
        init = jnp.asarray(init, x0.dtype)
        if init.shape != (T, D):
            raise ValueError(f"init must have shape (T, D) = ({T}, {D}); got {init.shape}")
    return float(tol), int(max_iters), init


def evaluate(
    f: Callable,
    x0: jax.Array,
    inputs,
    method: str = "deer",
    tol: float | None = None,
    max_iters: int | None = None,
    damping: float = 1.0,
    adaptive: bool = True,
    init: jax.Array | None = None,
    on_failure: str = "nan",
    parallel: bool | None = None,
) -> ELKResult:
    """Evaluate x_t = f(x_{t-1}, u_t), t = 1..T, for all t in parallel.

    Parameters
    ----------
    f : callable f(x (D,), u) -> (D,)
        One step of the recurrence; may close over parameters (they receive gradients).
    x0 : array (D,)
        Initial state (float32 or float64; sets the dtype of the computation).
    inputs : array (T, ...) or pytree of arrays with a leading T axis
        u_1..u_T.
    method : {"deer", "quasi_deer", "elk", "quasi_elk"}
        Newton with dense / diagonal Jacobians, or Levenberg-Marquardt (Kalman smoother) with
        dense / diagonal Jacobians. See the module docstring.
    tol : float, optional
        Convergence threshold on max_t ||x_t - f(x_{t-1}, u_t)||_inf. Default 1e-6 in float32
        and 1e-12 in float64.
    max_iters : int, optional
        Cap on the number of linearised solves, 1 <= max_iters <= T (default T).
    damping : float
        Levenberg-Marquardt damping (ELK methods only): precision of the pseudo-observations of
        the previous iterate relative to unit process noise. Larger = smaller, safer steps.
        With ``adaptive`` it is the initial value.
    adaptive : bool
        ELK methods: classic Levenberg-Marquardt trust-region control of the damping (a step is
        accepted only if it lowers sum_t ||x_t - f(x_{t-1}, u_t)||^2, and the damping is then
        multiplied by 0.3 (floor 1e-6); a rejected step keeps the iterate and multiplies the
        damping by 4). False keeps ``damping`` fixed, as in the ELK paper. Rejected steps count
        as iterations.
    init : array (T, D), optional
        Initial guess (default zeros).
    on_failure : {"nan", "flag", "raise"}
        What to do when the tolerance is not met within ``max_iters``: set the states to NaN
        (default), return the last iterate with ``converged=False``, or raise RuntimeError
        (needs concrete values, i.e. a call outside ``jit``).
    parallel : bool, optional
        Run each linear solve (the linear recurrence of (quasi-)DEER, the Kalman smoother of
        (quasi-)ELK, and the adjoint recurrence of the gradient) as a parallel associative scan
        (True) or a sequential ``lax.scan`` (False). Default :func:`parallel_default`: parallel on
        an accelerator, sequential on a CPU (where the sequential scan is the faster of the two;
        both give the same iterates up to rounding).

    Returns
    -------
    ELKResult
        ``states`` (T, D), ``iterations`` (), ``converged`` (), ``residual`` ().

    Notes
    -----
    Differentiable in x0, inputs and any arrays f closes over, by the implicit function theorem
    (one reverse linear scan with dense Jacobians at the solution), whatever ``method`` solved
    the forward problem.
    """
    x0, inputs, u0, T = _check_common(f, x0, inputs, method, damping)
    tol, max_iters, init = _check_run(x0, T, tol, max_iters, init)
    if on_failure not in ("nan", "flag", "raise"):
        raise ValueError(f"on_failure must be 'nan', 'flag' or 'raise'; got {on_failure!r}")
    parallel = _check_parallel(parallel)
    fc, consts = jax.closure_convert(f, x0, u0)
    x, iters, converged, err = _solve_ift(
        fc, method, tol, max_iters, float(damping), bool(adaptive), parallel, x0, inputs, init, consts
    )
    if on_failure == "raise":
        if isinstance(converged, jax.core.Tracer):
            raise ValueError("on_failure='raise' needs concrete values: call evaluate outside jit")
        if not bool(converged):
            raise RuntimeError(
                f"{method} did not converge: residual {float(err):.3g} > tol {tol:g} after "
                f"{int(iters)} iterations"
            )
    elif on_failure == "nan":
        x = jnp.where(converged, x, jnp.nan)
    return ELKResult(x, iters, converged, err)


class ELKTrace(NamedTuple):
    """Result of :func:`trace`: the iteration's history, one entry per linearised solve.

    Attributes
    ----------
    states : (T, D) the last iterate (not masked).
    iterations : () int, number of linearised solves performed (n).
    converged : () bool, whether the residual reached ``tol``.
    residual : (max_iters,) max_t ||x_t - f(x_{t-1}, u_t)||_inf after each solve (+inf if the
        iterate was not finite); NaN from entry n on.
    deviation : (max_iters,) mean absolute deviation of ``states[:, components]`` from
        ``reference`` after each solve; NaN from entry n on.
    nonfinite : (max_iters,) bool, whether that solve produced a NaN or infinite value (before
        any reset); False from entry n on.
    damping : (max_iters,) the damping the solve used (ELK methods; NaN from entry n on).
    """

    states: jax.Array
    iterations: jax.Array
    converged: jax.Array
    residual: jax.Array
    deviation: jax.Array
    nonfinite: jax.Array
    damping: jax.Array


def trace(
    f: Callable,
    x0: jax.Array,
    inputs,
    reference: jax.Array,
    method: str = "deer",
    components: tuple[int, ...] | None = None,
    tol: float | None = None,
    max_iters: int | None = None,
    damping: float = 1.0,
    adaptive: bool = True,
    init: jax.Array | None = None,
    on_nonfinite: str = "stop",
    parallel: bool | None = None,
) -> ELKTrace:
    """Run the iteration of :func:`evaluate` and record its progress at every solve.

    For studying convergence (the deviation-per-iteration curves of the DEER and ELK papers);
    not differentiable. Same iteration and stopping rule as :func:`evaluate` (tolerance,
    ``max_iters``, non-finite iterate), except that ``on_nonfinite="reset"`` replaces the NaN or
    infinite entries of a new iterate by zero and goes on (the "zeroing heuristic" the ELK
    paper applies to DEER and quasi-DEER), also past a non-finite residual (f overflowing at
    a huge but finite iterate): it then stops only at ``tol`` or ``max_iters``.

    Parameters
    ----------
    f : callable f(x (D,), u) -> (D,)
    x0 : array (D,)
    inputs : array (T, ...) or pytree with a leading T axis
    reference : array (T, K)
        The trajectory to compare with, usually the sequential evaluation (its ``components``).
    method : {"deer", "quasi_deer", "elk", "quasi_elk"}
    components : tuple of int, optional
        The K state components compared with ``reference`` (default all D).
    tol, max_iters, damping, adaptive, init, parallel
        As in :func:`evaluate`.
    on_nonfinite : {"stop", "reset"}
        Stop at a non-finite iterate (as :func:`evaluate`) or zero its non-finite entries and
        continue.

    Returns
    -------
    ELKTrace
        ``states`` (T, D), ``iterations`` (), ``converged`` (), and per-solve ``residual``,
        ``deviation``, ``nonfinite``, ``damping``, each (max_iters,).
    """
    x0, inputs, u0, T = _check_common(f, x0, inputs, method, damping)
    tol, max_iters, init = _check_run(x0, T, tol, max_iters, init)
    parallel = _check_parallel(parallel)
    D = x0.shape[0]
    components = tuple(range(D)) if components is None else tuple(int(k) for k in components)
    if not components or any(not 0 <= k < D for k in components):
        raise ValueError(f"components must be state indices in [0, {D}); got {components}")
    reference = jnp.asarray(reference, x0.dtype)
    if reference.shape != (T, len(components)):
        raise ValueError(
            f"reference must have shape (T, K) = ({T}, {len(components)}); got {reference.shape}"
        )
    if on_nonfinite not in ("stop", "reset"):
        raise ValueError(f"on_nonfinite must be 'stop' or 'reset'; got {on_nonfinite!r}")
    fc, consts = jax.closure_convert(f, x0, u0)
    record = _Record(reference, components, on_nonfinite == "reset")
    x, iters, converged, _, hist = _iterate(
        fc, method, tol, max_iters, float(damping), bool(adaptive), parallel, x0, inputs, init, consts,
        record,
    )
    return ELKTrace(x, iters, converged, *hist)
