"""Fast point estimates that start MCMC near a good mode of (recurrent) SLDS posteriors.

rSLDS posteriors are multimodal; chains started from the prior wander for a long time. The
initialisation here is the classic recipe, written on the project's scan kernels:

1. PCA of the (transformed, gap-filled) observations in the model's data frame
   (:mod:`zoo.frame`) gives a latent path and emission parameters that satisfy the frame's
   constraints exactly (free loadings G = 0, free offsets h = 0);
2. expectation-maximisation of an autoregressive HMM on that path (the E-step is
   :func:`zoo.scans.hmm_smoother`, the M-step weighted least squares, and, for recurrent
   transitions, a few gradient steps of weighted multinomial logistic regression), from several
   k-means starts vmapped together, keeping the best;
3. optionally (``map_steps > 0``), maximum a posteriori refinement of the full model (path
   and parameters jointly) with Adam on NumPyro's potential in unconstrained space. It is off by
   default: the joint MAP over a path and its noise scales is degenerate (the dynamics noise
   shrinks towards zero: 0.002 instead of 0.01 on NASCAR), and on NASCAR it lowered
   the state accuracy of the AR-HMM start (0.965 -> 0.92-0.95) while costing more time.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from numpyro.infer.initialization import init_to_value
from numpyro.infer.util import initialize_model

from zoo import scans
from zoo.distributions import stick_breaking_log_probs
from zoo.preprocess import fill_missing, smooth_time

__all__ = ["pca_latents", "fit_arhmm", "map_refine", "slds_initial_params"]


# the name benchmarks/nascar.py imports (use zoo.preprocess.smooth_time)
_smooth = smooth_time


def pca_latents(model, y, mask=None, frame=None):
    """PCA latents in the model's data frame (:mod:`zoo.frame`).

    Parameters
    ----------
    model : zoo.SLDS or zoo.RSLDS
    y : array (T, N) or (B, T, N), NaN = missing
    mask : bool array (T,) or (B, T), optional
    frame : LatentFrame, optional
        ``model.data_frame(y, mask)`` when not given.

    Returns
    -------
    x : (..., T, D) latent path (principal-component scores in units of the frame's scale);
    C : (N, D) = s P; d : (N,) = o; such that the transformed observations ~ x C^T + d.
    """
    from zoo.frame import frame_observations

    frame = model.data_frame(y, mask) if frame is None else frame
    v, _ = frame_observations(y, mask, model.emissions, model.link, model.bin_size)
    P, s, o = (np.asarray(a, float) for a in (frame.basis, frame.scale, frame.offset))
    x = (np.asarray(v, float) - o) @ P / s
    return x, s * P, o


class ARHMMFit(NamedTuple):
    """Result of :func:`fit_arhmm` (arrays for the best restart)."""

    A: jax.Array  # (K, D, D)
    b: jax.Array  # (K, D)
    q: jax.Array  # (K, D) noise standard deviations
    log_init: jax.Array  # (K,)
    log_P: jax.Array  # (K, K)
    R: jax.Array  # (K, D)
    r: jax.Array  # (K,)
    marginals: jax.Array  # (..., T, K)
    log_likelihood: jax.Array  # ()


def _kmeans(key, feats, K, iters=20):
    n = feats.shape[0]
    centres = feats[jax.random.choice(key, n, (K,), replace=False)]

    def step(c, _):
        lab = jnp.argmin(jnp.sum((feats[:, None] - c[None]) ** 2, -1), -1)
        oh = jax.nn.one_hot(lab, K)
        cnt = oh.sum(0)
        new = (oh.T @ feats) / jnp.maximum(cnt, 1.0)[:, None]
        return jnp.where(cnt[:, None] > 0, new, c), None

    c, _ = jax.lax.scan(step, centres, None, length=iters)
    return jnp.argmin(jnp.sum((feats[:, None] - c[None]) ** 2, -1), -1)


def fit_arhmm(key, x, num_states: int, transitions: str = "standard", num_iters: int = 40,
              num_restarts: int = 4, init_scale: float = 2.0, link: str = "softmax") -> ARHMMFit:
    """Expectation-maximisation of an (optionally recurrent) autoregressive HMM on a path.

    Parameters
    ----------
    key : jax.random key
        Randomness of the k-means starts.
    x : array (T, D) or (B, T, D)
    num_states : int
    transitions : {"standard", "sticky", "recurrent", "recurrent_only"}
    num_iters : int
        EM iterations.
    num_restarts : int
        Independent k-means starts, run together (vmapped); the best log-likelihood wins.
    init_scale : float
        Standard deviation of the x_1 density (shared by all states).
    link : {"softmax", "stick_breaking"}
        The recurrent transitions' link (:class:`zoo.distributions.SwitchingLinearDynamics`);
        with "stick_breaking" (recurrent-only), ``R`` is (K-1, D) and ``r`` (K-1,).

    Returns
    -------
    ARHMMFit
    """
    x = jnp.asarray(x, dtype=float)  # the default float dtype (float64 under x64)
    if x.ndim == 2:
        x = x[None]
    B, T, D = x.shape
    K = num_states
    recurrent = transitions in ("recurrent", "recurrent_only")
    use_P = transitions != "recurrent_only"
    xp, xn = x[:, :-1].reshape(-1, D), x[:, 1:].reshape(-1, D)
    phi = jnp.concatenate([xp, jnp.ones((xp.shape[0], 1))], -1)  # (n, D+1)
    scale = jnp.std(xn - xp) + 1e-3
    feats = jnp.concatenate([xp / jnp.std(xp), (xn - xp) / scale], -1)
    ll0 = -0.5 * jnp.sum(x[:, 0] ** 2, -1) / init_scale**2  # same for every state

    def m_step(w):
        """Weighted least squares per state; w (n, K)."""

        def one(wk):
            G = (phi * wk[:, None]).T @ phi + 1e-4 * jnp.eye(D + 1)
            coef = jnp.linalg.solve(G, (phi * wk[:, None]).T @ xn)
            res = xn - phi @ coef
            var = (wk @ res**2) / jnp.maximum(wk.sum(), 1e-6) + 1e-6
            return coef[:D].T, coef[D], jnp.sqrt(var)

        return jax.vmap(one, in_axes=1)(w)

    def log_lik(A, b, q):
        mean = jnp.einsum("kij,nj->nki", A, xp) + b
        ll = -0.5 * jnp.sum(((xn[:, None] - mean) / q) ** 2 + 2 * jnp.log(q), -1)
        ll = ll.reshape(B, T - 1, K)
        return jnp.concatenate([jnp.broadcast_to(ll0[:, None, None], (B, 1, K)), ll], 1)

    sticks = link == "stick_breaking"
    if sticks and transitions != "recurrent_only":
        raise ValueError(f"link='stick_breaking' needs transitions='recurrent_only'; got {transitions!r}")

    def log_trans(R, r, log_P):
        if not recurrent:
            return log_P
        logits = (x[:, :-1] @ R.T + r)[..., None, :] + (log_P if use_P else 0.0)
        log_p = stick_breaking_log_probs(logits) if sticks else jax.nn.log_softmax(logits, -1)
        return jnp.broadcast_to(log_p, (B, T - 1, K, K))

    opt = optax.adam(0.05)

    def fit_transitions(R, r, log_P, pair):
        """Maximise sum xi log p(z_t | z_{t-1}, x_{t-1}) over (R, r[, log P])."""
        if not recurrent:
            counts = pair.sum(axis=tuple(range(pair.ndim - 2))) + 0.1
            return R, r, jnp.log(counts / counts.sum(-1, keepdims=True))

        def loss(p):
            return -jnp.sum(pair * log_trans(p[0], p[1], p[2])) / (B * T)

        params = (R, r, log_P)
        state = opt.init(params)

        def step(carry, _):
            p, s = carry
            g = jax.grad(loss)(p)
            upd, s = opt.update(g, s)
            return (optax.apply_updates(p, upd), s), None

        (params, _), _ = jax.lax.scan(step, (params, state), None, length=50)
        lp = params[2] - jax.nn.logsumexp(params[2], -1, keepdims=True)
        return params[0], params[1], lp

    def run(k):
        lab = _kmeans(k, feats, K)
        w = jax.nn.one_hot(lab, K)
        A, b, q = m_step(w)
        R = jnp.zeros((K - sticks, D))
        r = jnp.zeros(K - sticks)
        log_P = jnp.log(jnp.full((K, K), 1.0 / K))
        # starting transitions: fit to the k-means labels
        w3 = w.reshape(B, T - 1, K)
        pair0 = w3[:, :-1, :, None] * w3[:, 1:, None, :]
        pair0 = jnp.concatenate([pair0[:, :1] * 0 + 1.0 / K**2, pair0], 1)
        R, r, log_P = fit_transitions(R, r, log_P, pair0)
        log_init = jnp.log(jnp.full(K, 1.0 / K))

        def em(carry, _):
            A, b, q, R, r, log_P, log_init = carry
            post = scans.hmm_smoother(log_init, log_trans(R, r, log_P), log_lik(A, b, q), pairwise=True)
            g = post.smoothed_probs  # (B, T, K)
            A, b, q = m_step(g[:, 1:].reshape(-1, K))
            R, r, log_P = fit_transitions(R, r, log_P, post.pairwise_probs)
            log_init = jnp.log(g[:, 0].mean(0) + 1e-3)
            log_init = log_init - jax.nn.logsumexp(log_init)
            return (A, b, q, R, r, log_P, log_init), jnp.sum(post.log_normalizer)

        carry, lls = jax.lax.scan(em, (A, b, q, R, r, log_P, log_init), None, length=num_iters)
        A, b, q, R, r, log_P, log_init = carry
        post = scans.hmm_smoother(log_init, log_trans(R, r, log_P), log_lik(A, b, q))
        return ARHMMFit(A, b, q, log_init, log_P, R, r, post.smoothed_probs, jnp.sum(post.log_normalizer))

    fits = jax.jit(jax.vmap(run))(jax.random.split(key, num_restarts))
    best = jnp.argmax(jnp.where(jnp.isfinite(fits.log_likelihood), fits.log_likelihood, -jnp.inf))
    return jax.tree_util.tree_map(lambda a: a[best], fits)


def map_refine(key, model, y, init_values: dict, num_steps: int = 500, learning_rate: float = 0.02,
               model_kwargs: dict | None = None) -> dict:
    """Maximum a posteriori refinement of all latent sites with Adam in unconstrained space.

    Parameters
    ----------
    key : jax.random key
    model : a zoo model (NumPyro program)
    y : array of observations
    init_values : dict
        Starting values of (some of) the latent sites; the rest start at the prior median.
    num_steps : int
    learning_rate : float
    model_kwargs : dict, optional

    Returns
    -------
    dict
        Constrained values of every latent site (and deterministic sites).

    Raises
    ------
    FloatingPointError
        If the optimisation produces a non-finite potential.
    """
    info = initialize_model(key, model, model_args=(y,), model_kwargs=model_kwargs or {},
                            init_strategy=init_to_value(values=init_values))
    u0 = info.param_info.z
    potential = info.potential_fn
    opt = optax.adam(learning_rate)

    @jax.jit
    def run(u):
        def step(carry, _):
            u, s = carry
            val, g = jax.value_and_grad(potential)(u)
            upd, s = opt.update(g, s)
            return (optax.apply_updates(u, upd), s), val

        (u, _), vals = jax.lax.scan(step, (u, opt.init(u)), None, length=num_steps)
        return u, vals

    u, vals = run(u0)
    if not bool(jnp.isfinite(vals[-1])):
        raise FloatingPointError("MAP refinement produced a non-finite log density")
    return info.postprocess_fn(u)


def slds_initial_params(model, y, key, inputs=None, mask=None, num_restarts: int = 4,
                        num_em_iters: int = 40, map_steps: int = 0, smoothing: float = 2.0,
                        frame=None) -> dict:
    """Initial values for every latent site of an SLDS/rSLDS (see the module docstring).

    Parameters
    ----------
    model : zoo.SLDS or zoo.RSLDS
    y : array (T, N) or (B, T, N)
    key : jax.random key
    inputs, mask : optional model arguments
    num_restarts, num_em_iters : int
        AR-HMM restarts and EM iterations.
    map_steps : int
        Adam steps of the MAP refinement (0 skips it).
    smoothing : float
        Width (in steps) of the Gaussian smoothing of the PCA latents before the AR-HMM.
    frame : LatentFrame, optional
        The model's data frame (``model.data_frame(y, mask)`` when not given).

    Returns
    -------
    dict
        Site name -> value, usable with ``numpyro.infer.init_to_value``.
    """
    counts = model.emissions == "poisson"
    D, K = model.latent_dim, model.num_states
    x0, C, d = pca_latents(model, y, mask, frame)
    # PCA latents carry the emission noise, which can exceed the per-step movement of the
    # dynamics; a light temporal smoothing lets the AR-HMM see the dynamics
    x0 = smooth_time(x0, smoothing)
    k1, k2 = jax.random.split(key)
    fit = fit_arhmm(k1, x0, K, model.transitions, num_em_iters, num_restarts, model.init_scale,
                    model.switching_link)
    Cj = np.asarray(C)
    vals = {
        "x": jnp.asarray(x0, dtype=float),
        "init_probs": jnp.exp(fit.log_init),
        "dynamics": fit.A,
        "dynamics_bias": fit.b,
        "dynamics_noise": jnp.maximum(fit.q, 1e-3),
    }
    if model.obs_dim > D:  # the frame's own emissions: C = s P, d = o
        vals["emission_free"] = jnp.zeros((model.obs_dim - D, D))
        vals["emission_bias_free"] = jnp.zeros(model.obs_dim - D)
    if model.transitions in ("standard", "sticky", "recurrent"):
        vals["trans_probs"] = jnp.exp(fit.log_P)
    if model.transitions in ("recurrent", "recurrent_only"):
        vals["recurrence_weights"] = fit.R
        vals["recurrence_bias"] = fit.r
    if not counts:
        resid = fill_missing(y) - (x0 @ Cj.T + d)
        vals["emission_noise"] = jnp.asarray(np.maximum(resid.reshape(-1, model.obs_dim).std(0), 1e-3))
    if map_steps <= 0:
        return vals
    kwargs = {k: v for k, v in (("inputs", inputs), ("mask", mask)) if v is not None}
    return map_refine(k2, model, y, vals, map_steps, model_kwargs=kwargs)
