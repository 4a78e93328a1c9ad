"""Euler-Maruyama latent SDEs with weight-space GP drifts, the drift collapsed in closed form.

The latent path of the continuous-time models solves dx = (f(x) + B u) dt + diag(sigma) dW,
discretised by Euler-Maruyama on a grid of spacing dt:

    x_0 ~ N(m0, diag(s0^2)),  x_{k+1} = x_k + dt (Phi(x_k) W + B u_k) + sigma sqrt(dt) eps_k.

The drift is written in weight space, f(x) = Phi(x) W with W (P, D) whose columns are iid
N(0, S), S = L L^T (see :mod:`zoo.kernels`). Given the path, the increments are linear-Gaussian in
W, so W can be integrated out exactly (Bayesian linear regression shared by all trials):

- :class:`DriftWeights` -- the prior of W (a sample site, e.g. ``"drift_weights"``);
- :class:`EulerMaruyama` -- the path given W (ancestral simulation, log density);
- :class:`CollapsedEulerMaruyama` -- the path with W integrated out; its log density is the
  exact marginal, and :meth:`CollapsedEulerMaruyama.weight_posterior` is the exact Gaussian
  posterior of W given the path (draw it per posterior draw afterwards);
- :class:`collapse_drift` -- the NumPyro handler that makes the swap (the analogue of
  :class:`zoo.handlers.collapse` for the Kalman case), :class:`decode_drift` reads the weight
  posterior for given values of the other sites;
- :class:`SequenceEmission` -- factorised Gaussian or Poisson emissions with NaN = missing and
  trial-length masks; :func:`bin_observations` sums counts into coarser bins (a coarser Euler
  grid than the recording).

Shapes: the path site has event shape ``trials + (K, D)`` and no batch shape (the weights are
shared by all trials, so trials are not independent once W is integrated out).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from jax import lax
from jax.scipy.linalg import cho_solve, solve_triangular
from numpyro.distributions import constraints
from numpyro.primitives import Messenger

from zoo.distributions import masked_log_prob

__all__ = [
    "WeightPosterior",
    "DriftWeights",
    "DelayedWeights",
    "EulerMaruyama",
    "CollapsedEulerMaruyama",
    "collapse_drift",
    "decode_drift",
    "SequenceEmission",
    "bin_observations",
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


class DriftWeights(dist.Distribution):
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


class DelayedWeights:
    """Stand-in value for drift weights that :class:`collapse_drift` integrates out."""

    def __init__(self, name: str, prior: DriftWeights):
        self.name = name
        self.prior = prior
        self.shape = prior.event_shape

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def _refuse(self, *args):
        raise TypeError(
            f"the drift weights {self.name!r} are integrated out by collapse_drift; only an "
            "EulerMaruyama path may consume them (decode them with decode_drift)"
        )

    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _refuse
    __matmul__ = __rmatmul__ = __getitem__ = __array__ = _refuse


class _CollapsedWeights(dist.Distribution):
    """Placeholder for integrated-out weights: contributes zero (their prior lives in the path)."""

    def __init__(self, prior: DriftWeights):
        self.prior = prior
        super().__init__((), prior.event_shape)

    def log_prob(self, value):
        return jnp.zeros(())

    def sample(self, key, sample_shape=()):  # pragma: no cover - never sampled
        raise RuntimeError("collapsed drift weights are not sampled; decode them instead")


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


class EulerMaruyama(dist.Distribution):
    """Latent path of an Euler-Maruyama SDE with drift Phi(x) W (+ drive), W given.

    Parameters
    ----------
    features : callable
        x (..., D) -> Phi(x) (..., P).
    weights : array (P, D) or DelayedWeights
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
    pytree_data_fields = ("weights", "sigma", "init_loc", "init_scale", "drive", "mask")
    pytree_aux_fields = ("features", "dt", "num_steps", "trials")

    def __init__(self, features, weights, sigma, dt, init_loc, init_scale, num_steps, trials=(),
                 drive=None, mask=None, validate_args=None):
        self.features, self.weights, self.sigma, self.dt = features, weights, sigma, dt
        self.init_loc, self.init_scale = init_loc, init_scale
        self.num_steps, self.trials = num_steps, tuple(trials)
        self.drive, self.mask = drive, mask
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
        m = jnp.ones(r.shape[:-1], r.dtype) if self.mask is None else self.mask[..., 1:].astype(r.dtype)
        return r, m

    def log_prob(self, value):
        if isinstance(self.weights, DelayedWeights):
            self.weights._refuse()
        r, m = self._residuals(value)
        mean = self.dt * (self.features(value[..., :-1, :]) @ self.weights)
        sd = self.sigma * jnp.sqrt(self.dt)
        lp = jnp.sum(dist.Normal(mean, sd).log_prob(r), -1)
        return self._init_log_prob(value) + jnp.sum(lp * m)

    def sample(self, key, sample_shape=()):
        if isinstance(self.weights, DelayedWeights):
            self.weights._refuse()
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

    def collapsed(self, prior_scale_tril) -> CollapsedEulerMaruyama:
        return CollapsedEulerMaruyama(self.features, prior_scale_tril, self.sigma, self.dt,
                                      self.init_loc, self.init_scale, self.num_steps, self.trials,
                                      self.drive, self.mask)


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


class CollapsedEulerMaruyama(EulerMaruyama):
    """The Euler-Maruyama path with the drift weights W ~ N(0, L L^T) integrated out exactly.

    log p(x) = log N(x_0) + sum_d log N(r_d | 0, dt^2 Phi S Phi^T + sigma_d^2 dt I) over all
    trials jointly, computed in O(K P^2 + P^3) from the sufficient statistics of Phi.
    """

    pytree_data_fields = ("prior_scale_tril", "sigma", "init_loc", "init_scale", "drive", "mask")

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

    def sample(self, key, sample_shape=()):
        k0, k1 = jax.random.split(key)
        W = DriftWeights(self.prior_scale_tril, self.init_loc.shape[-1]).sample(k0)
        base = EulerMaruyama(self.features, W, self.sigma, self.dt, self.init_loc, self.init_scale,
                             self.num_steps, self.trials, self.drive, self.mask)
        return base.sample(k1, sample_shape)


def _site_key(key, name: str):
    return jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)


class collapse_drift(Messenger):
    """Integrate the drift weights of Euler-Maruyama paths out in closed form.

    A latent :class:`DriftWeights` site is not sampled: a :class:`DelayedWeights` stands for its
    value and the site is marked ``infer["collapsed"]``. The :class:`EulerMaruyama` path that
    consumes it gets the exact marginal :class:`CollapsedEulerMaruyama` instead. After
    inference, :class:`decode_drift` (or the model's ``weight_posterior``) draws W exactly.
    """

    def process_message(self, msg):
        if msg["type"] != "sample":
            return
        fn = msg["fn"]
        if isinstance(fn, DriftWeights) and not msg["is_observed"] and msg["value"] is None:
            msg["value"] = DelayedWeights(msg["name"], fn)
            msg["fn"] = _CollapsedWeights(fn)
            msg["is_observed"] = True
            msg["infer"]["collapsed"] = True
        elif isinstance(fn, EulerMaruyama) and isinstance(fn.weights, DelayedWeights):
            msg["fn"] = fn.collapsed(fn.weights.prior.scale_tril)


class decode_drift(Messenger):
    """Exact posterior of collapsed drift weights given the path and hyperparameter values.

    Use under ``substitute`` with one posterior draw; ``self.posteriors[path_site_name]`` is a
    :class:`WeightPosterior` with one exact draw (vmap over draws).
    """

    def __init__(self, fn=None, rng_key=None):
        self.rng_key = jax.random.key(0) if rng_key is None else rng_key
        self.posteriors: dict = {}
        super().__init__(fn)

    def __enter__(self):
        super().__enter__()
        return self

    def postprocess_message(self, msg):
        if msg["type"] == "sample" and isinstance(msg["fn"], CollapsedEulerMaruyama) \
                and msg["value"] is not None:
            post = msg["fn"].weight_posterior(msg["value"], _site_key(self.rng_key, msg["name"]))
            self.posteriors[msg["name"]] = post
            msg["infer"]["posterior"] = post


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

    pytree_data_fields = ("x", "C", "d", "noise", "mask")
    pytree_aux_fields = ("kind", "dt", "link")

    def __init__(self, x, C, d, kind, noise=None, dt=1.0, link="softplus", mask=None,
                 validate_args=None):
        self.x, self.C, self.d, self.kind, self.noise = x, C, d, kind, noise
        self.dt, self.link, self.mask = dt, link, mask
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
        if self.mask is not None:
            lp = jnp.where(self.mask, lp, 0.0)
        return lp

    def log_prob(self, value):
        return jnp.sum(self.pointwise_log_prob(value), -1)

    def sample(self, key, sample_shape=()):
        y = self.base().sample(key, sample_shape)
        y = y.astype(self.x.dtype)
        if self.mask is not None:
            y = jnp.where(self.mask[..., None], y, jnp.nan)
        return y


def bin_observations(y, bin_size: int, counts: bool = True):
    """Sum (counts) or average (Gaussian) observations over bins of ``bin_size`` steps.

    A coarser Euler grid than the recording: bin the data and give the model ``dt`` = bin width.
    Trailing steps that do not fill a bin are dropped. NaN entries are treated as missing: a bin
    with any missing entry is missing for that neuron.

    Parameters
    ----------
    y : array (..., T, N)
    bin_size : int >= 1
    counts : bool
        Sum (True) or mean (False).

    Returns
    -------
    array (..., T // bin_size, N)
    """
    if isinstance(bin_size, bool) or not isinstance(bin_size, int | np.integer) or bin_size < 1:
        raise ValueError(f"bin_size must be an integer >= 1; got {bin_size!r}")
    y = np.asarray(y, float)
    T = y.shape[-2] - y.shape[-2] % bin_size
    if T == 0:
        raise ValueError(f"bin_size={bin_size} is longer than the {y.shape[-2]} steps of y")
    yb = y[..., :T, :].reshape(y.shape[:-2] + (T // bin_size, bin_size, y.shape[-1]))
    return yb.sum(-2) if counts else yb.mean(-2)


# ----------------------------------------------------------------------------------------------
# The part of the continuous-time models that does not depend on the drift's prior
# ----------------------------------------------------------------------------------------------


def _check_inputs(inputs, input_dim: int, trials, T):
    if input_dim == 0:
        if inputs is not None:
            raise ValueError("inputs were given but the model has input_dim=0")
        return None
    if inputs is None:
        raise ValueError(f"the model has input_dim={input_dim}; give inputs of shape "
                         f"{tuple(trials) + (T, input_dim)}")
    u = jnp.asarray(inputs)
    if u.shape != tuple(trials) + (T, input_dim):
        raise ValueError(f"inputs must have shape {tuple(trials) + (T, input_dim)} (trials, time, "
                         f"input); got {u.shape}")
    if not isinstance(inputs, jax.core.Tracer) and not np.all(np.isfinite(np.asarray(inputs))):
        raise ValueError("inputs must be finite (NaN cannot mean missing for inputs)")
    return u


class SDEModel:
    """Shared program of the continuous-time models (mixed into GPSLDS and GPSDE).

    Subclasses define ``_drift_prior()`` -> (features callable, prior factor L (P, P)), sampling
    the drift's hyperparameters, and ``drift_features(params, x)``.
    The dataclass fields used here: ``latent_dim``, ``obs_dim``, ``emissions``, ``link``,
    ``input_dim``, ``dt``, ``substeps``, ``init_scale``, ``diffusion_scale``.
    """

    continuous_time = True
    # The collapsed weight-space Gaussians (Gram matrices summed over thousands of Euler steps)
    # lose too much in float32: on the line-attractor test data a float32 fit gave
    # P(line) = 0.27 and the two-point control 0.98, against 0.95 and 0.00 in float64.
    # ``inference.fit`` warns when such a model runs without jax_enable_x64.
    float64_recommended = True

    # ---------------------------------------------------------------- protocol helpers
    def _common_dims(self) -> dict:
        x_time = "time" if self.substeps == 1 else "euler_step"
        dims = {
            "diffusion": ["latent"],
            "input_matrix": ["latent", "input"],
            "drift_weights": ["feature", "latent"],
            "drift_weights_mean": ["feature", "latent"],
            "drift_weights_factor": ["latent", "feature", "feature_in"],
            "emission_matrix": ["neuron", "latent"],
            "emission_bias": ["neuron"],
            "emission_noise": ["neuron"],
            "x": [x_time, "latent"],
            "y": ["time", "neuron"],
        }
        return dims

    def _common_sizes(self) -> dict:
        P = self.num_features
        sizes = {"latent": self.latent_dim, "latent_in": self.latent_dim, "neuron": self.obs_dim,
                 "feature": P, "feature_in": P}
        if self.input_dim:
            sizes["input"] = self.input_dim
        return sizes

    def _check_common(self):
        from zoo._base import check_choice, check_positive_int

        check_positive_int(self.latent_dim, "latent_dim")
        check_positive_int(self.obs_dim, "obs_dim")
        check_positive_int(self.input_dim, "input_dim", 0)
        check_positive_int(self.substeps, "substeps")
        check_choice(self.emissions, "emissions", {"gaussian", "poisson"})
        check_choice(self.link, "link", set(LINKS))
        if not (isinstance(self.dt, int | float) and self.dt > 0):
            raise ValueError(f"dt must be a positive number (the observation bin width); got {self.dt!r}")
        if not self.init_scale > 0:
            raise ValueError(f"init_scale must be > 0; got {self.init_scale}")
        if not self.diffusion_scale > 0:
            raise ValueError(f"diffusion_scale must be > 0; got {self.diffusion_scale}")

    def drift(self, params, x):
        """f(x) = Phi(x) W for one draw: ``params`` needs the hyperparameters and either
        ``drift_weights`` (P, D) or the collapsed moments (then the posterior mean is used).

        Parameters
        ----------
        params : mapping of arrays (one draw)
        x : array (..., D)

        Returns
        -------
        array (..., D)
        """
        W = params["drift_weights"] if "drift_weights" in params else params["drift_weights_mean"]
        return self.drift_features(params, x) @ W

    def drift_moments(self, params, x):
        """Posterior mean and variance of f(x) given the path (collapsed weights), per dim.

        Reads ``drift_weights_mean`` (P, D) and ``drift_weights_factor`` (D, P, P) in params
        (deterministic sites of a fitted, collapsed model). Returns (mean, var), each (..., D),
        or None when params hold no such moments (the weights were sampled).
        """
        if "drift_weights_mean" not in params:
            return None
        phi = self.drift_features(params, x)
        mean = phi @ params["drift_weights_mean"]
        proj = jnp.einsum("...p,dpq->...dq", phi, params["drift_weights_factor"])
        return mean, jnp.sum(proj**2, -1)

    def sample_drift_weights(self, params, key):
        """One exact draw of W from its conditional posterior (collapsed fits) or params' W."""
        if "drift_weights" in params:
            return params["drift_weights"]
        mean, factor = params["drift_weights_mean"], params["drift_weights_factor"]
        z = jax.random.normal(key, mean.shape, mean.dtype)
        return mean + jnp.einsum("dpq,qd->pd", factor, z)

    def dynamics_params(self, params, key) -> dict:
        """The draw with ``drift_weights`` drawn from their conditional when it was collapsed."""
        p = dict(params)
        if "drift_weights_mean" in p:
            p["drift_weights"] = self.sample_drift_weights(p, key)
        return p

    def grid_time(self, num_steps: int):
        """Times of the observation grid, (T,), in the units of ``dt``."""
        return np.arange(num_steps) * self.dt

    # ---------------------------------------------------------------- the program
    def __call__(self, y=None, num_steps=None, num_trials=None, mask=None, inputs=None,
                 collapse: bool = True):
        """The NumPyro program.

        Parameters
        ----------
        y : array (T, N) or (B, T, N), optional
            Observations on a grid of spacing ``dt`` (NaN = missing: irregular observation times
            are NaN rows of a regular grid); None for the prior predictive.
        num_steps, num_trials : int, optional
            T and B when ``y`` is None.
        mask : bool array (T,) or (B, T), optional
            Steps that exist (trials of different lengths, padding at the end).
        inputs : array (T, I) or (B, T, I), optional
            External inputs u (required iff ``input_dim > 0``), held constant over each step.
        collapse : bool
            Integrate the drift weights out (only when y is observed).
        """
        import numpyro

        from zoo._base import check_mask, sequence_shape

        D, N = self.latent_dim, self.obs_dim
        poisson = self.emissions == "poisson"
        y, T, trials = sequence_shape(y, num_steps, num_trials, N, poisson)
        mask = check_mask(mask, trials, T)
        u = _check_inputs(inputs, self.input_dim, trials, T)
        features, L = self._drift_prior()
        dtype = L.dtype
        sigma = numpyro.sample(
            "diffusion", dist.LogNormal(math.log(self.diffusion_scale), 0.5).expand([D]).to_event(1))
        s = self.substeps
        K = (T - 1) * s + 1
        dte = self.dt / s
        idx = jnp.arange(K - 1) // s  # observation interval of each Euler step
        drive = None
        if self.input_dim:
            Bm = numpyro.sample("input_matrix", dist.Normal(0.0, 1.0).expand([D, self.input_dim]).to_event(2))
            drive = u[..., idx, :] @ Bm.T
        grid_mask = None
        if mask is not None:
            grid_mask = mask[..., (jnp.arange(K) + s - 1) // s]
        ctx = collapse_drift() if (collapse and y is not None) else _null()
        with ctx:
            W = numpyro.sample("drift_weights", DriftWeights(L, D))
            path = EulerMaruyama(features, W, sigma, dte, jnp.zeros(D, dtype),
                                 jnp.full(D, self.init_scale, dtype), K, trials, drive, grid_mask)
            x = numpyro.sample("x", path)
        if isinstance(W, DelayedWeights):
            post = path.collapsed(L).weight_posterior(x)
            numpyro.deterministic("drift_weights_mean", post.mean)
            numpyro.deterministic("drift_weights_factor", post.factor)
        xo = x[..., ::s, :]
        C = numpyro.sample("emission_matrix", dist.Normal(0.0, 1.0).expand([N, D]).to_event(2))
        if poisson:
            loc, scale = (0.0, 3.0) if self.link == "exp" else (0.0, 10.0)
            d = numpyro.sample("emission_bias", dist.Normal(loc, scale).expand([N]).to_event(1))
            fn = SequenceEmission(xo, C, d, "poisson", dt=self.dt, link=self.link, mask=mask)
        else:
            d = numpyro.sample("emission_bias", dist.Normal(0.0, 2.0).expand([N]).to_event(1))
            r = numpyro.sample("emission_noise", dist.HalfNormal(1.0).expand([N]).to_event(1))
            fn = SequenceEmission(xo, C, d, "gaussian", noise=r, mask=mask)
        return numpyro.sample("y", fn, obs=y)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def initial_path(y, latent_dim: int, counts: bool = True, smooth: float = 3.0, scale: float = 3.0):
    """A starting latent path from the data: PCA of smoothed (sqrt-transformed) observations.

    Parameters
    ----------
    y : array (T, N) or (B, T, N)
        Observations (NaN = missing: replaced by the neuron's mean).
    latent_dim : int
    counts : bool
        Square-root transform counts first (variance stabilising).
    smooth : float
        Gaussian smoothing width in steps (0: none).
    scale : float
        The path is scaled so that each latent dimension has this standard deviation.

    Returns
    -------
    numpy array (..., T, D)
    """
    y = np.asarray(y, float)
    squeeze = y.ndim == 2
    y = y[None] if squeeze else y
    mu = np.nanmean(y, axis=(0, 1))
    y = np.where(np.isnan(y), mu, y)
    z = np.sqrt(y) if counts else y
    if smooth > 0:
        half = int(3 * smooth)
        k = np.exp(-0.5 * (np.arange(-half, half + 1) / smooth) ** 2)
        k /= k.sum()
        pad = np.pad(z, ((0, 0), (half, half), (0, 0)), mode="edge")
        z = np.apply_along_axis(lambda v: np.convolve(v, k, mode="valid"), 1, pad)
    flat = z.reshape(-1, z.shape[-1])
    flat = flat - flat.mean(0)
    _, _, vt = np.linalg.svd(flat, full_matrices=False)
    x = flat @ vt[:latent_dim].T
    x = scale * x / (x.std(0) + 1e-12)
    x = x.reshape(z.shape[:-1] + (latent_dim,))
    return x[0] if squeeze else x
