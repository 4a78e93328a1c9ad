"""Distributions of the continuous-time models: the drift weights, the Euler-Maruyama latent path
(with the weights given, or integrated out in closed form), its simulator, and the emissions.

The latent path solves dx = (f(x) + B u) dt + diag(sigma) dW, discretised by Euler-Maruyama on a
grid of spacing dt:

    x_0 ~ N(m0, diag(s0^2)),  x_{k+1} = x_k + dt (Phi(x_k) W + B u_k) + sigma sqrt(dt) eps_k.

The drift is written in weight space, f(x) = Phi(x) W with W (P, D) whose columns are iid
N(0, S), S = L L^T (see :mod:`zoo.kernels`). Given the path, the increments are linear-Gaussian in
W, so W can be integrated out exactly (Bayesian linear regression shared by all trials):

- :class:`DriftWeights` -- the prior of W (a sample site, e.g. ``"drift_weights"``);
- :class:`EulerMaruyama` -- the path given W (ancestral simulation with
  :func:`euler_maruyama_simulate`, log density);
- :class:`CollapsedEulerMaruyama` -- the path with W integrated out; its log density is the
  exact marginal, and :meth:`CollapsedEulerMaruyama.weight_posterior` is the exact Gaussian
  posterior of W given the path (:class:`WeightPosterior`; draw it per posterior draw afterwards);
- :class:`zoo.conjugate.Delayed` and :class:`zoo.conjugate.IntegratedOut` (old names
  ``DelayedWeights`` and ``CollapsedWeights``) -- the value and distribution that the handler
  :class:`zoo.handlers.integrate_out` puts in place of integrated-out weights, as for any
  :class:`~zoo.conjugate.ConjugatePrior`;
- :class:`SequenceEmission` -- factorised Gaussian or Poisson emissions with NaN = missing and
  trial-length masks.

Shapes: the path site has event shape ``trials + (K, D)`` and no batch shape (the weights are
shared by all trials, so trials are not independent once W is integrated out).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from jax import lax
from jax.scipy.linalg import cho_solve, solve_triangular
from numpyro.distributions import constraints

from zoo.conjugate import ConjugatePrior, ConsumesDelayed, Decodable, Delayed, IntegratedOut
from zoo.distributions import masked_log_prob

__all__ = [
    "WeightPosterior",
    "DriftWeights",
    "DelayedWeights",
    "CollapsedWeights",
    "EulerMaruyama",
    "CollapsedEulerMaruyama",
    "SequenceEmission",
    "euler_maruyama_simulate",
    "LINKS",
]

_LOG_2PI = math.log(2.0 * math.pi)

LINKS: dict[str, Callable] = {"exp": jnp.exp, "softplus": jax.nn.softplus}


class WeightPosterior(NamedTuple):
    """Exact Gaussian posterior of the drift weights W (P, D) given a path.

    Columns are independent: column d ~ N(mean[:, d], factor[d] @ factor[d].T).

    Attributes
    ----------
    mean : (P, D)
    factor : (D, P, P) a square root of each column's covariance.
    sample : (P, D) one exact draw (or None).
    """

    mean: jax.Array
    factor: jax.Array
    sample: jax.Array | None


class DriftWeights(ConjugatePrior):
    """Prior of the drift weights: W (P, D) with iid columns N(0, L L^T).

    Parameters
    ----------
    scale_tril : array (P, P)
        L, the (lower triangular or block-diagonal) square root of the prior covariance S.
    latent_dim : int
        D, the number of columns.
    """

    support = constraints.real_matrix
    pytree_data_fields = ("scale_tril",)
    pytree_aux_fields = ("latent_dim",)
    consumer = "the weights of an EulerMaruyama path"

    def __init__(self, scale_tril, latent_dim: int, validate_args=None):
        self.scale_tril = scale_tril
        self.latent_dim = latent_dim
        P = scale_tril.shape[-1]
        super().__init__((), (P, latent_dim), validate_args=validate_args)

    def sample(self, key, sample_shape=()):
        z = jax.random.normal(key, tuple(sample_shape) + self.event_shape, self.scale_tril.dtype)
        return self.scale_tril @ z

    def log_prob(self, value):
        L = self.scale_tril
        z = solve_triangular(L, value, lower=True)
        half_logdet = jnp.sum(jnp.log(jnp.abs(jnp.diagonal(L))))
        P, D = self.event_shape
        return -0.5 * jnp.sum(z**2, (-2, -1)) - D * half_logdet - 0.5 * P * D * _LOG_2PI


# the old names of the delayed value and of the integrated-out site's distribution
DelayedWeights = Delayed
CollapsedWeights = IntegratedOut


def euler_maruyama_simulate(key, drift_fn, x0, sigma, dt, num_steps, drive=None):
    """Simulate one or more paths by Euler-Maruyama.

    Parameters
    ----------
    key : jax.random key
    drift_fn : callable
        x (..., D) -> f(x) (..., D).
    x0 : array (..., D)
        Initial states (leading dims: trials).
    sigma : array (D,) or scalar
        Diffusion standard deviations.
    dt : float
        Step.
    num_steps : int
        K, the number of grid points (x0 included).
    drive : array (..., K-1, D), optional
        Extra drift term of the step k -> k+1 (e.g. B u_k).

    Returns
    -------
    array (..., K, D)
    """
    x0 = jnp.asarray(x0)
    K = num_steps
    eps = jax.random.normal(key, (K - 1,) + x0.shape, x0.dtype)
    drv = jnp.zeros((K - 1,) + x0.shape, x0.dtype) if drive is None else jnp.moveaxis(drive, -2, 0)
    sq = jnp.sqrt(dt) * sigma

    def step(x, inp):
        e, u = inp
        nxt = x + dt * (drift_fn(x) + u) + sq * e
        return nxt, nxt

    _, xs = lax.scan(step, x0, (eps, drv))
    return jnp.moveaxis(jnp.concatenate([x0[None], xs], 0), 0, -2)


class EulerMaruyama(ConsumesDelayed, dist.Distribution):
    """Latent path of an Euler-Maruyama SDE with drift Phi(x) W (+ drive), W given.

    Parameters
    ----------
    features : callable
        x (..., D) -> Phi(x) (..., P).
    weights : array (P, D) or Delayed
        A :class:`~zoo.conjugate.Delayed` value under :class:`zoo.handlers.integrate_out`,
        which swaps in :meth:`integrated`.
    sigma : array (D,)
        Diffusion standard deviations.
    dt : float
        Euler step.
    init_loc, init_scale : arrays (D,)
        x_0 ~ N(init_loc, diag(init_scale^2)).
    num_steps : int
        K grid points.
    trials : tuple
        () or (B,).
    drive : array (*trials, K-1, D), optional
        Additional drift of step k -> k+1 (inputs B u_k).
    mask : bool array (*trials, K), optional
        Grid points that exist; the increment into point k counts iff mask[k].
    """

    support = constraints.real
    pytree_data_fields = ("weights", "sigma", "init_loc", "init_scale", "drive", "step_mask")
    pytree_aux_fields = ("features", "dt", "num_steps", "trials")

    def __init__(self, features, weights, sigma, dt, init_loc, init_scale, num_steps, trials=(),
                 drive=None, mask=None, validate_args=None):
        self.features, self.weights, self.sigma, self.dt = features, weights, sigma, dt
        self.init_loc, self.init_scale = init_loc, init_scale
        self.num_steps, self.trials = num_steps, tuple(trials)
        self.drive, self.step_mask = drive, mask
        D = init_loc.shape[-1]
        super().__init__((), self.trials + (num_steps, D), validate_args=validate_args)

    # ---- pieces shared with the collapsed version
    def _init_log_prob(self, x):
        lp = dist.Normal(self.init_loc, self.init_scale).log_prob(x[..., 0, :])
        return jnp.sum(lp)

    def _residuals(self, x):
        """Increments minus the known drive, r_k = x_{k+1} - x_k - dt drive_k, and weights m_k."""
        r = x[..., 1:, :] - x[..., :-1, :]
        if self.drive is not None:
            r = r - self.dt * self.drive
        m = (jnp.ones(r.shape[:-1], r.dtype) if self.step_mask is None
             else self.step_mask[..., 1:].astype(r.dtype))
        return r, m

    def log_prob(self, value):
        if isinstance(self.weights, Delayed):
            self.weights.refuse()
        r, m = self._residuals(value)
        mean = self.dt * (self.features(value[..., :-1, :]) @ self.weights)
        sd = self.sigma * jnp.sqrt(self.dt)
        lp = jnp.sum(dist.Normal(mean, sd).log_prob(r), -1)
        return self._init_log_prob(value) + jnp.sum(lp * m)

    def sample(self, key, sample_shape=()):
        if isinstance(self.weights, Delayed):
            self.weights.refuse()
        k0, k1 = jax.random.split(key)
        shape = tuple(sample_shape) + self.trials
        D = self.init_loc.shape[-1]
        x0 = self.init_loc + self.init_scale * jax.random.normal(k0, shape + (D,), self.init_loc.dtype)
        drive = None
        if self.drive is not None:
            drive = jnp.broadcast_to(self.drive, shape + self.drive.shape[-2:])
        x0f = x0.reshape((-1, D))
        drive_f = None if drive is None else drive.reshape((-1,) + drive.shape[-2:])
        W = self.weights
        xs = euler_maruyama_simulate(k1, lambda x: self.features(x) @ W, x0f, self.sigma, self.dt,
                                     self.num_steps, drive_f)
        return xs.reshape(shape + (self.num_steps, D))

    def integrated(self, parallel: bool = False) -> CollapsedEulerMaruyama | None:
        """The path with delayed drift weights integrated out, else None.

        Parameters
        ----------
        parallel : bool
            Unused (the marginal has no scan); for the common signature.

        Returns
        -------
        CollapsedEulerMaruyama or None
        """
        if isinstance(self.weights, Delayed) and isinstance(self.weights.prior, DriftWeights):
            return self.collapsed(self.weights.prior.scale_tril)
        return None

    def collapsed(self, prior_scale_tril) -> CollapsedEulerMaruyama:
        return CollapsedEulerMaruyama(self.features, prior_scale_tril, self.sigma, self.dt,
                                      self.init_loc, self.init_scale, self.num_steps, self.trials,
                                      self.drive, self.step_mask)


def _suff_stats(phi, r, m):
    """G = sum m phi phi^T (P, P), H = sum m phi r^T (P, D), rr = sum m r^2 (D,), n = sum m."""
    phi_f = phi.reshape(-1, phi.shape[-1])
    r_f = r.reshape(-1, r.shape[-1])
    m_f = m.reshape(-1)
    pm = phi_f * m_f[:, None]
    return pm.T @ phi_f, pm.T @ r_f, jnp.sum(m_f[:, None] * r_f**2, 0), jnp.sum(m_f)


@jax.jit
def _collapsed_terms(phi, r, m, L, sigma, dt):
    """Per-column marginal log-likelihood pieces and posterior factors of the weights.

    Returns (log_lik (D,), mean (P, D), factor (D, P, P)).
    """
    G, H, rr, n = _suff_stats(phi, r, m)
    P = G.shape[0]
    s2 = sigma**2  # (D,)
    LtGL = L.T @ G @ L
    LtH = L.T @ H  # (P, D)
    eye = jnp.eye(P, dtype=G.dtype)

    def column(s2_d, lth_d):
        Bm = eye + (dt / s2_d) * LtGL
        U = jnp.linalg.cholesky(Bm)
        g = lth_d / s2_d
        v = solve_triangular(U, g, lower=True)
        logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(U)))
        mean = L @ cho_solve((U, True), g)
        factor = L @ solve_triangular(U.T, eye, lower=False)  # L U^{-T}
        return -0.5 * logdet + 0.5 * jnp.sum(v**2), mean, factor

    q, mean, factor = jax.vmap(column, in_axes=(0, 1), out_axes=(0, 1, 0))(s2, LtH)
    base = -0.5 * n * (_LOG_2PI + jnp.log(s2 * dt)) - rr / (2.0 * s2 * dt)
    return base + q, mean, factor


class CollapsedEulerMaruyama(Decodable, EulerMaruyama):
    """The Euler-Maruyama path with the drift weights W ~ N(0, L L^T) integrated out exactly.

    log p(x) = log N(x_0) + sum_d log N(r_d | 0, dt^2 Phi S Phi^T + sigma_d^2 dt I) over all
    trials jointly, computed in O(K P^2 + P^3) from the sufficient statistics of Phi.
    """

    pytree_data_fields = ("prior_scale_tril", "sigma", "init_loc", "init_scale", "drive", "step_mask")

    def __init__(self, features, prior_scale_tril, sigma, dt, init_loc, init_scale, num_steps,
                 trials=(), drive=None, mask=None, validate_args=None):
        self.prior_scale_tril = prior_scale_tril
        super().__init__(features, None, sigma, dt, init_loc, init_scale, num_steps, trials, drive,
                         mask, validate_args=validate_args)

    def _terms(self, value):
        r, m = self._residuals(value)
        phi = self.features(value[..., :-1, :])
        return _collapsed_terms(phi, r, m, self.prior_scale_tril, self.sigma, self.dt)

    def log_prob(self, value):
        ll, _, _ = self._terms(value)
        return self._init_log_prob(value) + jnp.sum(ll)

    def weight_posterior(self, value, key=None) -> WeightPosterior:
        """Exact posterior of W given the path; with a key, also one exact draw."""
        _, mean, factor = self._terms(value)
        sample = None
        if key is not None:
            z = jax.random.normal(key, mean.shape, mean.dtype)
            sample = mean + jnp.einsum("dpq,qd->pd", factor, z)
        return WeightPosterior(mean, factor, sample)

    def posterior(self, value, key) -> WeightPosterior:
        """:meth:`weight_posterior` with one exact draw, the weights being what this site
        integrates out."""
        return self.weight_posterior(value, key)

    def sample(self, key, sample_shape=()):
        k0, k1 = jax.random.split(key)
        W = DriftWeights(self.prior_scale_tril, self.init_loc.shape[-1]).sample(k0)
        base = EulerMaruyama(self.features, W, self.sigma, self.dt, self.init_loc, self.init_scale,
                             self.num_steps, self.trials, self.drive, self.step_mask)
        return base.sample(k1, sample_shape)


class SequenceEmission(dist.Distribution):
    """Factorised emissions y_t | x_t for whole sequences, NaN = missing, optional step mask.

    Gaussian: y ~ N(C x + d, diag(r^2)). Poisson: y ~ Poisson(dt link(C x + d)).

    Parameters
    ----------
    x : array (*trials, T, D)
        Latent states at the observation times.
    C : array (N, D)
    d : array (N,)
    kind : {"gaussian", "poisson"}
    noise : array (N,), optional
        Gaussian standard deviations.
    dt : float
        Bin width (Poisson).
    link : {"exp", "softplus"}
    mask : bool array (*trials, T), optional
    """

    pytree_data_fields = ("x", "C", "d", "noise", "step_mask")
    pytree_aux_fields = ("kind", "dt", "link")

    def __init__(self, x, C, d, kind, noise=None, dt=1.0, link="softplus", mask=None,
                 validate_args=None):
        self.x, self.C, self.d, self.kind, self.noise = x, C, d, kind, noise
        self.dt, self.link, self.step_mask = dt, link, mask
        super().__init__(tuple(x.shape[:-2]), (x.shape[-2], C.shape[0]), validate_args=validate_args)

    @property
    def support(self):
        return constraints.nonnegative_integer if self.kind == "poisson" else constraints.real

    def base(self) -> dist.Distribution:
        eta = self.x @ self.C.T + self.d
        if self.kind == "poisson":
            return dist.Poisson(self.dt * LINKS[self.link](eta))
        return dist.Normal(eta, self.noise)

    def pointwise_log_prob(self, value):
        lp = jnp.sum(masked_log_prob(self.base(), value), -1)
        if self.step_mask is not None:
            lp = jnp.where(self.step_mask, lp, 0.0)
        return lp

    def log_prob(self, value):
        return jnp.sum(self.pointwise_log_prob(value), -1)

    def sample(self, key, sample_shape=()):
        y = self.base().sample(key, sample_shape)
        y = y.astype(self.x.dtype)
        if self.step_mask is not None:
            y = jnp.where(self.step_mask[..., None], y, jnp.nan)
        return y
