"""The continuous-time models' shared program: :class:`SDEModel`, mixed into
:class:`zoo.gpslds.GPSLDS` and :class:`zoo.gpsde.GPSDE`.

dx = (f(x) + B u) dt + diag(sigma) dW, discretised by Euler-Maruyama, with the drift
f(x) = Phi(x) W written in weight space and W integrated out in closed form given the path. The
pieces live with their kin: the distributions in :mod:`zoo.sde_distributions` (the weights are
integrated out and decoded by :class:`zoo.handlers.integrate_out` and :class:`zoo.handlers.decode`),
the data tools in :mod:`zoo.preprocess`.
Their public names are re-exported here, where they used to be defined (deprecated: import them
from their own modules).
"""

from __future__ import annotations

import contextlib
import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from zoo._base import check_choice, check_mask, check_positive_int, sequence_shape
from zoo.conjugate import Delayed
from zoo.handlers import integrate_out
from zoo.preprocess import bin_observations, initial_path
from zoo.sde_distributions import (
    LINKS,
    CollapsedEulerMaruyama,
    DelayedWeights,
    DriftWeights,
    EulerMaruyama,
    SequenceEmission,
    WeightPosterior,
    euler_maruyama_simulate,
)
from zoo.sde_handlers import collapse_drift, decode_drift

__all__ = [
    "SDEModel",
    # re-exported from zoo.sde_distributions, zoo.sde_handlers and zoo.preprocess
    "WeightPosterior",
    "DriftWeights",
    "DelayedWeights",
    "EulerMaruyama",
    "CollapsedEulerMaruyama",
    "collapse_drift",
    "decode_drift",
    "SequenceEmission",
    "bin_observations",
    "initial_path",
    "euler_maruyama_simulate",
    "LINKS",
]


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
        ctx = integrate_out() if (collapse and y is not None) else contextlib.nullcontext()
        with ctx:
            W = numpyro.sample("drift_weights", DriftWeights(L, D))
            path = EulerMaruyama(features, W, sigma, dte, jnp.zeros(D, dtype),
                                 jnp.full(D, self.init_scale, dtype), K, trials, drive, grid_mask)
            x = numpyro.sample("x", path)
        if isinstance(W, Delayed):
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
