"""Posterior probability of attractors (DESIGN.md section 6).

For each posterior draw of the dynamics:

1. fixed points: continuous time f(x*) = 0; discrete time x* = A_k x* + b_k with x* inside
   regime k (argmax regimes(x*) == k), plus fixed points of the soft map
   G(x) = sum_k pi_k(x) step(x, k). Both are found by damped Newton (Levenberg-Marquardt) on the
   velocity v(x) = f(x) (continuous) or (G(x) - x) / dt (discrete), vmapped over many seeds
   (regime centres, a grid, points of the posterior-mean path), then deduplicated. Seeds whose
   Newton iteration does not converge are *counted* (``num_unconverged``), never reported as
   fixed points; points outside the analysed box are counted separately.
2. classification by the Jacobian's eigenvalues, written as continuous-time rates
   r = Re(lambda) (continuous) or log|lambda| / dt (discrete): ``stable`` (all r < -rate_tol),
   ``unstable`` (all r > rate_tol), ``saddle`` (both signs), ``marginal`` (some |r| <= rate_tol:
   centre-like). Time constants tau_i = 1 / |r_i| (= -dt / log|lambda_i| in discrete time); the
   line-attractor score is log2(tau_1 / tau_2) for the two slowest modes (Nair et al. 2023). A
   draw has a line attractor when some fixed or slow point has score >= ``line_score`` with all
   modes but the slowest stable (the slowest may be marginally unstable).
   Slow points: the best in-box Newton iterate of a seed that does not converge but reaches
   |v| < eps (a line attractor's exact fixed point may lie far outside the data; its slow points
   lie on the line inside the box, where the Jacobian shows one slow and other fast modes). The
   local minima of |v| on the grid over the box (boundary included) with
   |v| < slow_frac * median |v| are extra seeds, so a slow grid cell counts only after Newton
   has refined it: one that flows into a fixed point is that fixed point (the valley between
   two point attractors is slow, and one Jacobian eigenvalue crosses zero along it, but it holds
   no line attractor).
3. aggregation over draws: P(number of stable fixed points = n), P(line attractor), grid maps
   of P(stable fixed point in cell) and of P(|f(x)| < eps). For models whose drift weights are
   integrated out (GP-SLDS, GP-SDE), each draw uses one exact draw of the weights for the fixed
   points, and the slow-point map uses the full conditional posterior of f(x) given the path
   (mean and variance, by Monte Carlo over f's Gaussian), not only the spread of means.

Draws: an ``xarray.DataTree`` from ``inference.fit`` (its ``posterior`` group, dims
(chain, draw, ...)) or a dict of arrays with a leading sample axis.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

# re-exported: the probabilities of this module's result, and its plot
from inference.attractor_probabilities import (
    MCSE_METHOD,
    POOLED_WEIGHTING,
    attractor_probabilities,
    attractor_summary,
    by_chain,
    draws_with_chains,
    indicator_mcse,
    indicator_probability,
    modes_of,
    thin_by_chain,
)
from inference.plots import plot_attractors
from zoo.protocol import as_model

__all__ = ["attractors", "plot_attractors", "attractor_probabilities", "attractor_summary", "by_chain",
           "indicator_mcse", "lm_solve", "KINDS", "MCSE_METHOD", "POOLED_WEIGHTING"]

KINDS = ("stable", "unstable", "saddle", "marginal")


# ----------------------------------------------------------------------------------------------
# Per-draw dynamics
# ----------------------------------------------------------------------------------------------


def _velocity_fns(model, params, key):
    """(velocity v(x), the draw's completed parameters, moments(x) -> (mean, var) or None) for
    one draw of a model with the protocol (:class:`zoo.protocol.Model`)."""
    if model.continuous_time:
        p = model.dynamics_params(params, key)

        def v(x):
            return model.drift(p, x)

        return v, p, (lambda x: model.drift_moments(p, x))
    dt = float(model.dt)
    K = _num_states(model)

    def G(x):
        pi = model.regimes(params, x)
        steps = jnp.stack([model.step(params, x, k) for k in range(K)], -2)
        return jnp.sum(pi[..., None] * steps, -2)

    def v(x):
        return (G(x) - x) / dt

    return v, dict(params), None


def _num_states(model) -> int:
    """K, the number of discrete states of a discrete-time model (0 without any)."""
    return int(model.dim_sizes().get("state", 0))


def _rates(model, J):
    """Continuous-time rates (real parts) and imaginary parts from a Jacobian of v."""
    if model.continuous_time:
        lam = jnp.linalg.eigvals(J)
        return jnp.real(lam), jnp.imag(lam)
    dt = float(model.dt)
    lam = jnp.linalg.eigvals(jnp.eye(J.shape[-1]) + dt * J)
    return jnp.log(jnp.abs(lam) + 1e-300) / dt, jnp.angle(lam) / dt


def lm_solve(v, x0, lo, hi, steps, tol):
    """Levenberg-Marquardt on v(x) = 0 from one seed (the fixed-point search of :func:`attractors`).

    Parameters
    ----------
    v : callable
        x (D,) -> (D,).
    x0 : array (D,)
        The seed.
    lo, hi : arrays (D,)
        The analysed box: the best iterate inside it is tracked (slow points).
    steps : int
        Iterations (a fixed number, so the search vmaps over seeds).
    tol : float
        Unused by the iteration (convergence is judged by the caller on |v(x)|); kept for the
        callers' signature.

    Returns
    -------
    (x, |v(x)|, best in-box x, its |v|)
    """
    jac = jax.jacfwd(v)
    D = x0.shape[-1]

    def body(carry, _):
        x, mu, bx, br = carry
        f = v(x)
        J = jac(x)
        r = jnp.linalg.norm(f)
        A = J.T @ J + mu * jnp.eye(D, dtype=x.dtype)
        dx = -jnp.linalg.solve(A, J.T @ f)
        xn = x + dx
        rn = jnp.linalg.norm(v(xn))
        ok = jnp.isfinite(rn) & (rn < r)
        x = jnp.where(ok, xn, x)
        mu = jnp.where(ok, mu * 0.3, mu * 4.0)
        r_cur = jnp.where(ok, rn, r)
        inside = jnp.all((x >= lo) & (x <= hi))
        better = inside & (r_cur < br)
        return (x, mu, jnp.where(better, x, bx), jnp.where(better, r_cur, br)), None

    r0 = jnp.linalg.norm(v(x0))
    init = (x0, jnp.asarray(1e-2, x0.dtype), x0, r0)
    (x, _, bx, br), _ = jax.lax.scan(body, init, None, length=steps)
    return x, jnp.linalg.norm(v(x)), bx, br


def _classify(re, rate_tol):
    stable = jnp.all(re < -rate_tol)
    unstable = jnp.all(re > rate_tol)
    saddle = jnp.any(re < -rate_tol) & jnp.any(re > rate_tol) & ~jnp.any(jnp.abs(re) <= rate_tol)
    return jnp.where(stable, 0, jnp.where(unstable, 1, jnp.where(saddle, 2, 3)))


def _line_score(re):
    """log2(tau_1 / tau_2) for the two slowest modes and whether all but the slowest are stable."""
    order = jnp.argsort(jnp.abs(re))
    srt = re[order]
    if re.shape[-1] < 2:
        return jnp.zeros(()), jnp.zeros((), bool)
    score = jnp.log2(jnp.abs(srt[1]) / jnp.maximum(jnp.abs(srt[0]), 1e-12))
    others_stable = jnp.all(srt[1:] < 0)
    return score, others_stable


# ----------------------------------------------------------------------------------------------
# The analysis
# ----------------------------------------------------------------------------------------------


def attractors(model, post, grid=None, num_draws: int | None = 200, eps: float | None = None,
               bounds=None, grid_size: int = 25, seeds=None, num_seed_grid: int = 6,
               newton_steps: int = 60, tol: float = 1e-6, rate_tol: float | None = None,
               line_score: float = 3.0, slow_frac: float = 0.2, num_grid_seeds: int = 8,
               dedup_tol: float = 0.02,
               num_mc: int = 64, max_distance: float | None = None,
               seed: int = 0, modes=None) -> xr.Dataset:
    """Fixed points, their stability and the posterior probability of attractors.

    Parameters
    ----------
    model
        A zoo model (the protocol :class:`zoo.protocol.Model`, or a NumPyro program wrapping
        one): continuous time (``continuous_time``, ``drift(params, x)``, ``regimes``;
        ``drift_moments`` / ``dynamics_params`` for drifts integrated out during fitting) or
        discrete time (``step(params, x, k)``, ``regimes``, ``dim_sizes()["state"]``, sites
        ``dynamics`` (K, D, D) and ``dynamics_bias`` (K, D), ``dt``).
    post : DataTree, Dataset or dict
        Posterior draws (see the module docstring).
    grid : tuple of 1-D arrays, optional
        Cell edges per latent dimension for the maps (overrides ``bounds``/``grid_size``).
    num_draws : int, optional
        Number of draws to analyse (None: all): ``ceil(num_draws / num_chains)`` evenly spaced
        draws from every chain, so each chain keeps its own draws (for per-chain probabilities
        and the Monte Carlo standard errors).
    eps : float, optional
        Speed threshold of slow points, |v(x)| < eps, in latent units per time unit; default
        5 % of the median posterior-mean speed over the grid.
    bounds : array (D, 2), optional
        The analysed box; default: the range of the posterior-mean path ``x`` plus 10 %.
    grid_size : int
        Cells per dimension of the maps (D <= 3 for maps).
    seeds : array (n, D), optional
        Extra Newton seeds.
    num_seed_grid : int
        Seeds per dimension on a regular grid over the box (besides regime centres and path
        points).
    newton_steps : int
        Levenberg-Marquardt iterations per seed.
    tol : float
        Convergence: |v(x*)| <= tol * (1 + median speed).
    rate_tol : float, optional
        |rate| below this counts as zero (marginal); default 1e-3 * median speed / box size.
    line_score : float
        Minimum log2(tau_1 / tau_2) of a line attractor.
    slow_frac : float
        Grid slow points: local minima of |v| over the box with |v| < slow_frac * median |v|.
    num_grid_seeds : int
        The slowest of these grid slow points (at most this many) are added to the Newton seeds.
    dedup_tol : float
        Fixed points closer than ``dedup_tol`` times the box diagonal are merged.
    num_mc : int
        Monte Carlo draws of f(x) per posterior draw for the slow-point map.
    max_distance : float, optional
        Restrict fixed points to the visited region: a converged point farther than this (latent
        units) from every point of the posterior-mean path ``x`` is not reported but counted in
        ``num_outside``, like a point outside the box. A GP drift is only identified near the
        data; far from it each draw of f is close to a prior draw and crosses zero at random
        places, which would otherwise count as spurious fixed points. Default None: the whole
        box. Needs the path ``x`` in ``post``.
    seed : int
    modes : optional
        How the chains group into posterior modes (see :func:`attractor_probabilities`: a list
        of lists of chain positions, an :class:`inference.modes.ChainModes` or an
        :class:`inference.diagnose.Diagnostics`). Default: grouped here by
        :func:`inference.modes.chain_modes` when ``post`` is a DataTree or Dataset with more than
        one chain (on the total log-likelihood and the sorted state occupancy when recorded).

    Returns
    -------
    xarray.Dataset
        Per draw: ``fixed_points`` (draw, point, latent; NaN padding where ``valid`` is False),
        ``valid``, ``kind`` (codes into ``KINDS``: 0 stable, 1 unstable, 2 saddle, 3 marginal;
        -1 padding), ``eigenvalues_real``/``eigenvalues_imag`` (draw, point, mode; rates),
        ``time_constants``, ``line_attractor_score`` (draw, point; NaN padding),
        ``num_fixed_points``, ``num_stable``, ``num_unconverged``, ``num_outside``,
        ``has_line_attractor`` (draw) and ``line_attractor_source`` (draw, line_source: which
        kind of point met the criterion: a converged fixed point or a slow point).
        Aggregates: ``p_num_stable`` (num_stable_value), ``p_line_attractor``,
        ``p_stable_in_cell`` and ``p_slow`` (grid_0, grid_1, ...),
        ``flow_mean`` (grid..., latent), ``speed_mean`` (grid...).
        Chain structure: the ``draw`` axis holds the analysed draws chain after chain, with
        coordinates ``chain_index`` (which chain) and ``draw_index`` (the draw's index in that
        chain of ``post``); :func:`by_chain` reshapes a per-draw variable to (chain, draw).
        Uncertainty of the probabilities: ``p_line_attractor_mcse`` and ``p_num_stable_mcse``
        (Monte Carlo standard errors, method in ``attrs["mcse_method"]``, see
        :data:`MCSE_METHOD`), ``p_line_attractor_chain`` (chain) and ``p_num_stable_chain``
        (chain, num_stable_value): the same probabilities in each chain alone.
        :func:`attractor_probabilities` lists them as a table, with each probability per mode
        when the chains split: the coordinate ``chain_mode`` (chain) holds each chain's mode,
        ``attrs["mode_quantities"]`` what they were grouped on (when grouped here).
    """
    all_draws, chain_all, draw_all, chain_labels = draws_with_chains(post)
    draws, keep_idx = thin_by_chain(all_draws, chain_all, num_draws)
    chain_of, draw_of = chain_all[keep_idx], draw_all[keep_idx]
    S = len(keep_idx)
    model = as_model(model)
    continuous = model.continuous_time
    seq = set(model.sequence_sites)
    path = draws.get("x")
    params_all = {k: jnp.asarray(v) for k, v in draws.items() if k not in seq and k != "z"}
    if not params_all:
        raise ValueError("post holds no parameter draws")
    D = int(model.dim_sizes().get("latent") or np.shape(params_all["dynamics"])[-1])
    # ---- the box
    if grid is not None:
        edges = [np.asarray(g, float) for g in grid]
        if len(edges) != D:
            raise ValueError(f"grid must hold {D} arrays of cell edges (one per latent dim)")
        lo = np.array([e[0] for e in edges])
        hi = np.array([e[-1] for e in edges])
    else:
        if bounds is None:
            if path is None:
                raise ValueError("give bounds (D, 2) or a posterior with the latent path 'x'")
            pts = np.asarray(path).mean(0).reshape(-1, D)
            lo, hi = pts.min(0), pts.max(0)
            pad = 0.1 * (hi - lo)
            lo, hi = lo - pad, hi + pad
        else:
            b = np.asarray(bounds, float)
            if b.shape != (D, 2) or not np.all(b[:, 1] > b[:, 0]):
                raise ValueError(f"bounds must have shape ({D}, 2) with lower < upper; got {b.shape}")
            lo, hi = b[:, 0], b[:, 1]
        if isinstance(grid_size, bool) or not isinstance(grid_size, int) or grid_size < 2:
            raise ValueError(f"grid_size must be an integer >= 2; got {grid_size!r}")
        edges = [np.linspace(lo[d], hi[d], grid_size + 1) for d in range(D)]
    make_maps = D <= 3
    centres = [0.5 * (e[1:] + e[:-1]) for e in edges]
    if make_maps:
        mesh = np.stack(np.meshgrid(*centres, indexing="ij"), -1)
    else:
        mesh = np.zeros((1, D))
    dtype = jnp.result_type(float)
    gshape_ = tuple(len(c) for c in centres) if make_maps else (1,)
    mesh_j = jnp.asarray(mesh.reshape(-1, D), dtype)
    # ---- seeds shared by all draws
    sg = [np.linspace(lo[d], hi[d], num_seed_grid + 2)[1:-1] for d in range(D)] if D <= 3 else \
        [np.array([0.5 * (lo[d] + hi[d])]) for d in range(D)]
    seed_pts = [np.stack(np.meshgrid(*sg, indexing="ij"), -1).reshape(-1, D)]
    if path is not None:
        pts = np.asarray(path).mean(0).reshape(-1, D)
        seed_pts.append(pts[np.linspace(0, len(pts) - 1, min(64, len(pts))).astype(int)])
    if seeds is not None:
        s_ = np.asarray(seeds, float)
        if s_.ndim != 2 or s_.shape[1] != D:
            raise ValueError(f"seeds must have shape (n, {D}); got {s_.shape}")
        seed_pts.append(s_)
    fixed_seeds = jnp.asarray(np.concatenate(seed_pts), dtype)
    lo_j, hi_j = jnp.asarray(lo, dtype), jnp.asarray(hi, dtype)
    if max_distance is not None:
        if path is None:
            raise ValueError("max_distance needs the latent path 'x' in post")
        if not max_distance > 0:
            raise ValueError(f"max_distance must be > 0; got {max_distance}")
        visited = np.asarray(path).mean(0).reshape(-1, D)
        visited_j = jnp.asarray(visited[:: max(1, len(visited) // 4000)], dtype)

    def in_region(x):
        """In the analysed box and (with ``max_distance``) near the posterior-mean path."""
        ok = jnp.all((x >= lo_j) & (x <= hi_j), -1)
        if max_distance is not None:
            d2 = jnp.min(jnp.sum((x[..., None, :] - visited_j) ** 2, -1), -1)
            ok = ok & (d2 <= max_distance**2)
        return ok

    diag = float(np.linalg.norm(hi - lo))
    keys = jax.random.split(jax.random.key(seed), S)
    K = _num_states(model) if not continuous else 0

    # ---- speed scale for the defaults
    def mean_speed(params, key):
        v, _, _ = _velocity_fns(model, params, key)
        return jnp.linalg.norm(v(mesh_j), axis=-1)

    first = {k: v[0] for k, v in params_all.items()}
    med_speed = float(jnp.median(mean_speed(first, keys[0])))
    if eps is None:
        eps = 0.05 * med_speed
    if not eps > 0:
        raise ValueError(f"eps must be > 0; got {eps}")
    if rate_tol is None:
        rate_tol = 1e-3 * med_speed / diag
    abs_tol = tol * (1.0 + med_speed)

    def per_draw(params, key):
        k1, k2 = jax.random.split(key)
        v, p, moments = _velocity_fns(model, params, k1)
        s_list = [fixed_seeds]
        if "centers" in p:
            s_list.append(jnp.asarray(p["centers"], dtype).reshape(-1, D))
        extra_pts, extra_ok, extra_re, extra_im = [], [], [], []
        if not continuous:
            A, b = p["dynamics"], p["dynamics_bias"]
            I = jnp.eye(D, dtype=dtype)
            for k in range(K):
                xk = jnp.linalg.solve(I - A[k], b[k])
                inside = jnp.argmax(model.regimes(p, xk)) == k
                lam = jnp.linalg.eigvals(A[k])
                dt = float(model.dt)
                extra_pts.append(xk)
                extra_ok.append(inside & jnp.all(jnp.isfinite(xk)))
                extra_re.append(jnp.log(jnp.abs(lam) + 1e-300) / dt)
                extra_im.append(jnp.angle(lam) / dt)
                s_list.append(xk[None])
        if make_maps:
            # slow points of the grid: local minima of |v| over the box (its boundary included)
            # that are slow relative to the typical speed (Sussillo & Barak 2013). They are
            # refined like every seed: a candidate that Newton carries to a fixed point is that
            # fixed point, one that stays slow without converging is a slow point. Scoring the
            # raw grid cell instead would flag the inflection points of a flow along a valley
            # (between two point attractors |v| is small and one Jacobian eigenvalue crosses 0).
            speed = jnp.linalg.norm(v(mesh_j), axis=-1).reshape(gshape_)
            is_min = jnp.ones(gshape_, bool)
            for ax in range(D):
                pad = [(0, 0)] * D
                pad[ax] = (1, 1)
                sp = jnp.pad(speed, pad, constant_values=jnp.inf)
                lo_n = jax.lax.slice_in_dim(sp, 0, gshape_[ax], axis=ax)
                hi_n = jax.lax.slice_in_dim(sp, 2, gshape_[ax] + 2, axis=ax)
                is_min = is_min & (speed <= lo_n) & (speed <= hi_n)
            gslow = (is_min & (speed < slow_frac * jnp.median(speed))).reshape(-1)
            order_g = jnp.argsort(jnp.where(gslow, speed.reshape(-1), jnp.inf))[:num_grid_seeds]
            # cells that are not slow minima repeat the slowest one (deduplicated later)
            pick = jnp.where(gslow[order_g], order_g, order_g[0])
            s_list.append(mesh_j[pick])
        allseeds = jnp.concatenate(s_list)
        xs, res, bx, br = jax.vmap(lambda s: lm_solve(v, s, lo_j, hi_j, newton_steps, abs_tol))(allseeds)
        inside = in_region(xs)
        conv = (res <= abs_tol) & jnp.all(jnp.isfinite(xs), -1)
        slow = (br < eps) & ~(conv & inside)
        # candidates: converged fixed points (incl. regime solves), then slow points
        pts = [xs]
        ok_fixed = [conv & inside]
        if extra_pts:
            ex = jnp.stack(extra_pts)
            exok = jnp.stack(extra_ok) & in_region(ex)
            pts.insert(0, ex)
            ok_fixed.insert(0, exok)
        P = jnp.concatenate(pts)
        OK = jnp.concatenate(ok_fixed)
        # deduplicate: keep a point unless an earlier kept point is within dedup distance
        dist2 = jnp.sum((P[:, None] - P[None]) ** 2, -1)
        close = dist2 < (dedup_tol * diag) ** 2
        n = P.shape[0]

        def dd(keep, i):
            dup = jnp.any(keep & close[i] & (jnp.arange(n) < i))
            ki = OK[i] & ~dup
            return keep.at[i].set(ki), None

        keep, _ = jax.lax.scan(dd, jnp.zeros(n, bool), jnp.arange(n))
        Jv = jax.vmap(jax.jacfwd(v))(P)
        re, im = jax.vmap(lambda J: _rates(model, J))(Jv)
        if extra_pts:
            ne = len(extra_pts)
            re = re.at[:ne].set(jnp.stack(extra_re))
            im = im.at[:ne].set(jnp.stack(extra_im))
        kind = jax.vmap(lambda r: _classify(r, rate_tol))(re)
        score, others = jax.vmap(_line_score)(re)
        # slow points: Jacobian at the best in-box iterate
        Js = jax.vmap(jax.jacfwd(v))(bx)
        re_s, _ = jax.vmap(lambda J: _rates(model, J))(Js)
        score_s, others_s = jax.vmap(_line_score)(re_s)
        line_fixed = jnp.any(keep & (score >= line_score) & others)
        line_slow = jnp.any(slow & (score_s >= line_score) & others_s)
        n_unconv = jnp.sum(~conv & ~slow)
        n_out = jnp.sum(conv & ~inside)
        # maps
        stable_pts = keep & (kind == 0)
        if make_maps:
            idx = [jnp.clip(jnp.searchsorted(jnp.asarray(edges[d], dtype), P[:, d]) - 1, 0,
                            len(edges[d]) - 2) for d in range(D)]
            flat = jnp.ravel_multi_index(tuple(idx), tuple(len(c) for c in centres), mode="clip")
            cell = jnp.zeros(mesh_j.shape[0], dtype).at[flat].max(stable_pts.astype(dtype))
            mv = moments(mesh_j) if moments is not None else None
            if mv is not None:
                m, var = mv
                z = jax.random.normal(k2, (num_mc,) + m.shape, dtype)
                f = m + jnp.sqrt(jnp.maximum(var, 0.0)) * z
                slowp = jnp.mean(jnp.linalg.norm(f, axis=-1) < eps, 0)
                flow = m
            else:
                flow = v(mesh_j)
                slowp = (jnp.linalg.norm(flow, axis=-1) < eps).astype(dtype)
        else:
            cell = slowp = jnp.zeros(1, dtype)
            flow = jnp.zeros((1, D), dtype)
        return dict(points=jnp.where(keep[:, None], P, jnp.nan), valid=keep,
                    kind=jnp.where(keep, kind, -1), re=jnp.where(keep[:, None], re, jnp.nan),
                    im=jnp.where(keep[:, None], im, jnp.nan), score=jnp.where(keep, score, jnp.nan),
                    line=line_fixed | line_slow,
                    line_source=jnp.stack([line_fixed, line_slow]),
                    n_unconv=n_unconv, n_out=n_out,
                    cell=cell, slow=slowp, flow=flow)

    f = jax.jit(per_draw)
    outs = [f({k: v[i] for k, v in params_all.items()}, keys[i]) for i in range(S)]
    out = {k: np.stack([np.asarray(o[k]) for o in outs]) for k in outs[0]}
    # compact the point axis to the largest number of kept points in any draw
    order = np.argsort(~out["valid"], axis=1, kind="stable")
    take = lambda a: np.take_along_axis(a, order.reshape(order.shape + (1,) * (a.ndim - 2)), 1)  # noqa: E731
    nmax = max(1, int(out["valid"].sum(1).max()))
    for k in ("points", "valid", "kind", "re", "im", "score"):
        out[k] = take(out[k])[:, :nmax]
    num_stable = (out["kind"] == 0).sum(1)
    counts = np.bincount(num_stable, minlength=num_stable.max() + 1) / S
    with np.errstate(divide="ignore"):
        tau = 1.0 / np.abs(out["re"])
    gdims = [f"grid_{d}" for d in range(D)] if make_maps else ["grid_0"]
    gshape = tuple(len(c) for c in centres) if make_maps else (1,)
    chains_present = np.unique(chain_of)
    coords = {"draw": np.arange(S), "latent": np.arange(D), "mode": np.arange(D),
              "num_stable_value": np.arange(len(counts)),
              "line_source": ["fixed_point", "slow_point"],
              "chain": np.asarray(chain_labels)[chains_present],
              "chain_index": ("draw", chain_of), "draw_index": ("draw", draw_of)}
    p_line, se_line, per_line = indicator_probability(out["line"].astype(bool), chain_of, chains_present)
    stab = [indicator_probability(num_stable == n, chain_of, chains_present) for n in range(len(counts))]
    if make_maps:
        coords.update({gdims[d]: centres[d] for d in range(D)})
    mode_attrs = {}
    if len(chains_present) > 1:
        groups, mode_attrs = modes_of(post, modes, chains_present)
        label = np.empty(len(chains_present), int)
        for m, g in enumerate(groups):
            label[np.isin(chains_present, g)] = m
        coords["chain_mode"] = ("chain", label)
    ds = xr.Dataset(
        {
            "fixed_points": (("draw", "point", "latent"), out["points"]),
            "valid": (("draw", "point"), out["valid"]),
            "kind": (("draw", "point"), out["kind"].astype(np.int8)),
            "eigenvalues_real": (("draw", "point", "mode"), out["re"]),
            "eigenvalues_imag": (("draw", "point", "mode"), out["im"]),
            "time_constants": (("draw", "point", "mode"), tau),
            "line_attractor_score": (("draw", "point"), out["score"]),
            "num_fixed_points": (("draw",), out["valid"].sum(1)),
            "num_stable": (("draw",), num_stable),
            "num_unconverged": (("draw",), out["n_unconv"]),
            "num_outside": (("draw",), out["n_out"]),
            "has_line_attractor": (("draw",), out["line"]),
            "line_attractor_source": (("draw", "line_source"), out["line_source"]),
            "p_num_stable": (("num_stable_value",), counts),
            "p_line_attractor": ((), float(out["line"].mean())),
            "p_line_attractor_mcse": ((), se_line),
            "p_line_attractor_chain": (("chain",), per_line),
            "p_num_stable_mcse": (("num_stable_value",), np.array([t[1] for t in stab])),
            "p_num_stable_chain": (("chain", "num_stable_value"),
                                   np.stack([t[2] for t in stab], -1).reshape(len(chains_present), -1)),
            "p_stable_in_cell": (tuple(gdims), out["cell"].mean(0).reshape(gshape)),
            "p_slow": (tuple(gdims), out["slow"].mean(0).reshape(gshape)),
            "flow_mean": (tuple(gdims) + ("latent",), out["flow"].mean(0).reshape(gshape + (D,))),
            "speed_mean": (tuple(gdims), np.linalg.norm(out["flow"].mean(0), axis=-1).reshape(gshape)),
        },
        coords=coords,
        attrs={"kinds": ", ".join(f"{i}={k}" for i, k in enumerate(KINDS)) + ", -1=padding",
               "eps": float(eps), "line_score": float(line_score), "rate_tol": float(rate_tol),
               "mcse_method": MCSE_METHOD, "num_chains": int(len(chains_present)),
               "tol": float(abs_tol), "max_distance": float("nan") if max_distance is None else
               float(max_distance), "continuous_time": int(bool(continuous)), "num_draws": S,
               "bounds": np.stack([lo, hi], -1).ravel().tolist(),
               "seeds": f"grid of {num_seed_grid}^D, regime centres / regime fixed points"
                        + (", posterior-mean path points" if path is not None else ""),
               **mode_attrs},
    )
    return ds
