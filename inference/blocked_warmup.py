"""Warmup of the blocked sampler's NUTS block: Stan's windows, dual averaging of the step size,
and an inverse mass from Welford (co)variances or from the curvature of the target.

Written from BlackJAX's building blocks (``dual_averaging_adaptation``, ``welford_algorithm``)
rather than with its ``window_adaptation``, because the blocked sweep's NUTS target,
p(theta | z, y), changes with z at every sweep: the adaptation state is carried through the
sweeps by :func:`adaptation_update`, and the curvature mass (:func:`curvature_mass`) is set
between them by the caller (:func:`inference.blocked.run_blocked`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from blackjax.adaptation.mass_matrix import welford_algorithm
from blackjax.adaptation.step_size import dual_averaging_adaptation

__all__ = ["Adaptation", "warmup_schedule", "adaptation_init", "adaptation_update",
           "curvature_inverse_mass", "curvature_mass", "final_step_size"]


class Adaptation(NamedTuple):
    """Warmup state of the NUTS block: dual averaging of the step size, Welford variances."""

    dual_averaging: object
    welford: object
    step_size: jax.Array
    inverse_mass: jax.Array


def warmup_schedule(num_warmup: int, curvature: bool = False, align: int = 1) -> np.ndarray:
    """Stan's windows: (num_warmup, 2) int rows (slow window?, end of a slow window?).

    A first fast window (15 %, step size only), slow windows doubling from 25 steps (step size
    and inverse mass; the mass is set at each window's end), a last fast window (10 %). Short
    warmups (< 20 steps) adapt the step size only. With ``curvature`` (the mass from the
    curvature at the chains' positions, :func:`curvature_at_window_end`), the mass is also set
    once inside the first fast window, after at most 10 steps: the curvature needs no draws,
    only positions in the typical set, and the start's diagonal curvature runs deep trees (depth
    5.5 against 4 after on NASCAR T = 2000 data seed 0, 6.7 at step size 0.016 on seed 1, where
    25 such sweeps took 50 s). With ``align`` > 1, every window's end
    moves to the end of its block of ``align`` steps (for a mass set between chunks of that
    size).
    """
    out = np.zeros((num_warmup, 2), dtype=np.int32)
    if num_warmup < 20:
        return out
    first, last = int(0.15 * num_warmup), int(0.1 * num_warmup)
    slow_end = num_warmup - last
    start, size = first, 25
    while start < slow_end:
        end = slow_end if start + 2 * size > slow_end - size else start + size
        end = min(end, slow_end)
        out[start:end, 0] = 1
        out[end - 1, 1] = 1
        start, size = end, 2 * size
    if curvature and first > 1:
        out[min(10, first) - 1, 1] = 1
    if align > 1:
        ends = np.flatnonzero(out[:, 1])
        out[:, 1] = 0
        out[np.minimum((ends // align + 1) * align, num_warmup) - 1, 1] = 1
    return out


def adaptation_init(inv_mass_diag, step_size, dense: bool) -> Adaptation:
    """The warmup state of the NUTS block.

    Parameters
    ----------
    inv_mass_diag : array (d,) or (d, d)
        First inverse mass: a diagonal (d,) (with ``dense``, it starts as its diagonal matrix)
        or, with ``dense``, a full (d, d) matrix.
    step_size : float
    dense : bool

    Returns
    -------
    Adaptation
    """
    dim, dtype = inv_mass_diag.shape[-1], inv_mass_diag.dtype
    da_init, _, _ = dual_averaging_adaptation(0.8)
    w_init, _, _ = welford_algorithm(not dense)
    mass = jnp.diag(inv_mass_diag) if dense and inv_mass_diag.ndim == 1 else inv_mass_diag
    eps = jnp.asarray(step_size, dtype)
    # strong types throughout: a weakly typed leaf (dual averaging's averages) made the first
    # warmup chunk's outputs differ in type from its inputs and recompiled it (31 s at NASCAR
    # T = 2000)
    return jax.tree.map(lambda a: jax.lax.convert_element_type(a, jnp.asarray(a).dtype),
                        Adaptation(da_init(eps), w_init(dim), eps, mass))


def curvature_inverse_mass(logdensity: Callable, position, which) -> jax.Array:
    """A first inverse mass: 1 / (-d^2 log p / d theta_i^2) at the start, for the coordinates
    marked in ``which`` (one Hessian-vector product each), 1 for the others; clipped to
    [1e-8, 1e2] where the curvature is not positive.

    Why: the parameters' posterior scales differ by orders of magnitude (the dynamics of a
    long recording are pinned to ~1e-3, a rarely visited state's to ~1e-1), and with a unit
    mass the first warmup window runs at the tree-depth cap.
    """
    grad = jax.grad(logdensity)
    idx = np.flatnonzero(np.asarray(which))
    basis = jnp.zeros((len(idx), position.shape[-1]), position.dtype).at[np.arange(len(idx)), idx].set(1.0)
    curv = jax.lax.map(lambda e: -jnp.dot(jax.jvp(grad, (position,), (e,))[1], e), basis)
    inv = jnp.where(jnp.isfinite(curv) & (curv > 0), 1.0 / curv, 1.0)
    return jnp.ones_like(position).at[idx].set(jnp.clip(inv, 1e-8, 1e2))


def curvature_mass(logdensity: Callable, positions, chain_args, dense: bool, previous=None,
                   growth: float = 10.0) -> jax.Array:
    """An inverse mass from the curvature of the target, pooled over chains.

    The mean over chains of the negative Hessians H_c of each chain's log density at its
    position, inverted: dense, eigendirection by eigendirection, or its diagonal.

    Why not Welford variances: the NUTS block's target is the conditional p(theta | z, y), and z
    changes at every sweep. The draws' covariance mixes the spread of theta given z with the
    movement of the conditional mean as z moves (the offsets and noise scales of a state follow
    the time points it is given), so it is wider than any one conditional, by factors of 30 in
    standard deviation measured on NASCAR; the step size then shrinks to fit the conditional and
    every tree grows deeper. The curvature is the conditional's own precision; averaging it over
    the chains' (theta, z) averages precisions, not covariances.

    The guard: where the pooled curvature is not positive (the chains sit where the target is
    not concave in that direction) the curvature says nothing about the scale, and where it is
    nearly flat its inverse can be far wider than the target. In such a direction v the new
    variance is the previous mass's v' M v, and no direction's variance may grow more than
    ``growth`` times over it. Before the guard (eigenvalues floored at 1e-3, so variances up to
    1e3), the mass set at warmup sweep 249 on NASCAR data seed 1 dropped the step size from 0.41
    to 0.012 and ran the trees at depth 8-9; with it, the same run's step size stayed 0.23-0.62.

    Parameters
    ----------
    logdensity : callable (flat theta (d,), chain argument) -> scalar
        A chain's log density given its own argument (e.g. its states z).
    positions : array (C, d)
    chain_args : pytree with leading axis C
        Each chain's argument.
    dense : bool
    previous : array (d, d) if dense else (d,), optional
        The inverse mass in use, the fallback of the guard; the identity if not given.
    growth : float
        The largest factor by which a direction's variance may grow over ``previous``.

    Returns
    -------
    array (d, d) if dense else (d,)
    """
    d = positions.shape[-1]
    dtype = positions.dtype

    def negative_hessian(p, arg):
        # row by row (one Hessian-vector product each), the chains vectorised (so that they stay
        # split over devices): jax.hessian of a long Kalman filter vectorised over d tangents
        # held all its residuals at once (17.5 GB at T = 2000, d = 50, C = 4)
        grad = jax.grad(lambda f: logdensity(f, arg))
        return -jax.lax.map(lambda e: jax.jvp(grad, (p,), (e,))[1], jnp.eye(d, dtype=p.dtype))

    H = jax.vmap(negative_hessian)(positions, chain_args)
    H = jnp.where(jnp.isfinite(H), H, 0.0)
    Hbar = 0.5 * (jnp.mean(H, 0) + jnp.mean(H, 0).T)
    if previous is None:
        previous = jnp.eye(d, dtype=dtype) if dense else jnp.ones(d, dtype)

    def guarded(curvature, fallback):
        # the inverse curvature where it is positive, capped at growth x the fallback variance
        ok = curvature > 0
        inverse = 1.0 / jnp.where(ok, curvature, 1.0)
        return jnp.where(ok, jnp.minimum(inverse, growth * fallback), fallback)

    if not dense:
        return guarded(jnp.diagonal(Hbar), previous)
    lam, V = jnp.linalg.eigh(Hbar)
    fallback = jnp.einsum("id,ij,jd->d", V, previous, V)  # v' M_previous v for each eigenvector
    return (V * guarded(lam, fallback)) @ V.T


def final_step_size(dual_averaging) -> jax.Array:
    """The step size after warmup: the last window's averaged one (Stan's x-bar).

    Where a window's end restarted the averaging on the last warmup sweep (a short warmup whose
    window ends moved to chunk ends), nothing has been averaged yet: the restart's own step size
    stands, since the empty average would read exp(0) = 1.

    Parameters
    ----------
    dual_averaging : blackjax DualAveragingState
        Of one chain.

    Returns
    -------
    scalar array
    """
    _, _, da_final = dual_averaging_adaptation(0.8)  # the target does not enter the final value
    return jnp.where(dual_averaging.step > 1, da_final(dual_averaging), jnp.exp(dual_averaging.log_step_size))


def adaptation_update(adapt: Adaptation, stage, position, acceptance, target: float, dense: bool,
                      welford_mass: bool = True) -> Adaptation:
    """One warmup step of Stan's windowed adaptation.

    Parameters
    ----------
    adapt : Adaptation
    stage : int array (2,)
        A row of :func:`warmup_schedule`: (slow window?, end of a slow window?).
    position : array (d,)
        The NUTS block's position after the step.
    acceptance : scalar
        The step's acceptance rate.
    target : float
        Target acceptance rate.
    dense : bool
    welford_mass : bool
        Set the inverse mass from the window's Welford (co)variances at its end; when False the
        caller sets it (:func:`curvature_mass`) and only the step size restarts.

    Returns
    -------
    Adaptation
    """
    _, da_update, da_final = dual_averaging_adaptation(target)
    w_init, w_update, w_final = welford_algorithm(not dense)
    slow, window_end = stage[0], stage[1]
    da = da_update(adapt.dual_averaging, acceptance)
    welford = jax.lax.cond(slow > 0, lambda w: w_update(w, position), lambda w: w, adapt.welford)
    step_size = jnp.exp(da.log_step_size)

    def end_window(args):
        welford, da, step_size, _ = args
        if not welford_mass:  # the mass is set outside (curvature_mass); restart the step size only
            da_init, _, _ = dual_averaging_adaptation(target)
            return w_init(position.shape[0]), da_init(step_size), step_size, args[3]
        cov, n, _ = w_final(welford)
        # Stan's regularisation of the window's (co)variances towards 1e-3 I
        shrink = 1e-3 * (5.0 / (n + 5.0))
        if dense:
            # a covariance estimated from fewer than 2 d draws is near-singular in d dimensions
            # (it collapsed the step size, measured): keep only its diagonal until the windows
            # are long enough
            d = cov.shape[-1]
            cov = jnp.where(n >= 2 * d, cov, jnp.diag(jnp.diagonal(cov)))
            inv_mass = (n / (n + 5.0)) * cov + shrink * jnp.eye(d, dtype=cov.dtype)
        else:
            inv_mass = (n / (n + 5.0)) * cov + shrink
        da_init, _, _ = dual_averaging_adaptation(target)
        return w_init(position.shape[0]), da_init(step_size), step_size, inv_mass.astype(position.dtype)

    welford, da, step_size, inv_mass = jax.lax.cond(
        window_end > 0, end_window, lambda a: a, (welford, da, step_size, adapt.inverse_mass))
    return Adaptation(da, welford, step_size.astype(position.dtype), inv_mass)
