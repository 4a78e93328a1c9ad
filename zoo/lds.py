"""Linear-Gaussian state-space model (LDS), its path integrated out by the Kalman filter."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

from zoo._base import ModelMixin, check_positive_int, sequence_shape
from zoo.distributions import GaussMarkov, LinearGaussianEmission
from zoo.handlers import integrate_out

__all__ = ["LDS"]


@dataclass(frozen=True)
class LDS(ModelMixin):
    """Bayesian linear dynamical system as a NumPyro program.

    x_1 ~ N(0, I), x_t = A x_{t-1} + b + N(0, diag(q^2)), y_t = C x_t + d + N(0, diag(r^2)).
    With ``collapse=True`` (default) the path is integrated out by the Kalman filter
    (:class:`zoo.handlers.integrate_out`) and inference runs on the parameters only;
    :class:`zoo.handlers.decode` draws the path exactly afterwards.

    Priors: ``dynamics`` A ~ Normal(0.8 I, 0.2) elementwise (stable with high probability),
    ``dynamics_bias`` b ~ Normal(0, 0.1), ``dynamics_noise`` q ~ HalfNormal(0.5),
    ``emission_matrix`` C ~ Normal(0, 1), ``emission_bias`` d ~ Normal(0, 2),
    ``emission_noise`` r ~ HalfNormal(1). The latent space is identified only up to an
    invertible linear map: condition some parameters (``numpyro.handlers.condition``) or compare
    invariant quantities (eigenvalues of A, the observation covariance).

    Parameters
    ----------
    latent_dim : int
        D >= 1.
    obs_dim : int
        N >= 1.
    collapse : bool
        Integrate the path out (Kalman) rather than sampling it.
    parallel : bool
        Parallel (associative-scan) Kalman filter.
    """

    latent_dim: int
    obs_dim: int
    collapse: bool = True
    parallel: bool = False

    def __post_init__(self):
        check_positive_int(self.latent_dim, "latent_dim")
        check_positive_int(self.obs_dim, "obs_dim")

    @property
    def dims(self) -> dict:
        return {
            "dynamics": ["latent", "latent_in"],
            "dynamics_bias": ["latent"],
            "dynamics_noise": ["latent"],
            "emission_matrix": ["neuron", "latent"],
            "emission_bias": ["neuron"],
            "emission_noise": ["neuron"],
            "x": ["time", "latent"],
            "y": ["time", "neuron"],
        }

    def dim_sizes(self) -> dict:
        return {"latent": self.latent_dim, "latent_in": self.latent_dim, "neuron": self.obs_dim}

    def step(self, params, x, z=None):
        """Deterministic dynamics x -> A x + b (discrete time), x (..., D)."""
        return x @ params["dynamics"].T + params["dynamics_bias"]

    def __call__(self, y=None, num_steps=None, num_trials=None):
        """The NumPyro program; ``y`` (T, N) or (B, T, N) with NaN missing, or None."""
        D, N = self.latent_dim, self.obs_dim
        y, T, trials = sequence_shape(y, num_steps, num_trials, N)
        A = numpyro.sample("dynamics", dist.Normal(0.8 * jnp.eye(D), 0.2).to_event(2))
        b = numpyro.sample("dynamics_bias", dist.Normal(0.0, 0.1).expand([D]).to_event(1))
        q = numpyro.sample("dynamics_noise", dist.HalfNormal(0.5).expand([D]).to_event(1))
        C = numpyro.sample("emission_matrix", dist.Normal(0.0, 1.0).expand([N, D]).to_event(2))
        d = numpyro.sample("emission_bias", dist.Normal(0.0, 2.0).expand([N]).to_event(1))
        r = numpyro.sample("emission_noise", dist.HalfNormal(1.0).expand([N]).to_event(1))
        prior = GaussMarkov(jnp.zeros(D), jnp.eye(D), A, b, jnp.diag(q**2), T, trials)
        # collapse only what is observed: the prior predictive samples the path itself
        with integrate_out(parallel=self.parallel) if self.collapse and y is not None else nullcontext():
            x = numpyro.sample("x", prior)
            return numpyro.sample("y", LinearGaussianEmission(x, C, d, jnp.diag(r**2)), obs=y)

