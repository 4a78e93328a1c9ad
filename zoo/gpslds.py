"""GP-SLDS: a latent SDE whose drift is a GP with the smoothly-switching linear kernel.

Hu, Zoltowski, Nair, Anderson, Duncker & Linderman, "Modeling latent neural dynamics with
Gaussian process switching linear dynamical systems", NeurIPS 2024; written here as a NumPyro
program with the GP integrated out exactly (weight space, :mod:`zoo.sde`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

from zoo._base import ModelMixin, check_choice, check_positive_int
from zoo.kernels import num_partition_features, partition, ssl_features, ssl_weight_scale_tril
from zoo.sde import SDEModel

__all__ = ["GPSLDS"]


@dataclass(frozen=True)
class GPSLDS(SDEModel, ModelMixin):
    """Gaussian-process switching linear dynamical system as a NumPyro program.

    dx = (f(x) + B u) dt + diag(sigma) dW, discretised by Euler-Maruyama with step
    ``dt / substeps``; f ~ GP(0, k) with the smoothly-switching linear kernel

        k(x, x') = sum_j pi_j(x) pi_j(x') [(x - c_j)^T M_j (x' - c_j) + s_j^2],
        pi(x) = softmax([w_1^T phi(x), ..., w_{J-1}^T phi(x), 0] / tau),

    phi(x) = [1, x] (``features="linear"``) or with the quadratic monomials (curved boundaries).
    The kernel has rank <= J (D + 1), so f(x) = sum_j pi_j(x) [A_j (x - c_j) + b_j] exactly, with
    rows of A_j ~ N(0, M_j) and b_j ~ N(0, s_j^2). Given the path, the Euler-Maruyama likelihood
    is linear-Gaussian in (A, b): the weights (site ``drift_weights``, (J (D+1), D)) are integrated
    out by :class:`zoo.handlers.integrate_out` whenever y is observed, and the model records their exact
    conditional posterior as deterministic sites ``drift_weights_mean`` (P, D) and
    ``drift_weights_factor`` (D, P, P) so that they can be drawn per posterior draw
    (:meth:`sample_drift_weights`). Emissions: Gaussian y = C x + d + noise, or Poisson counts per
    bin y ~ Poisson(dt link(C x + d)).

    Priors (time in the units of ``dt``, latent scale O(1-10)):

    - ``boundary`` w ~ Normal(0, 1), (J-1, F); ``temperature`` tau ~ LogNormal(log 0.5, 0.5)
    - ``centers`` c_j ~ Normal(0, 3), (J, D)
    - ``dynamics_scale`` ~ LogNormal(0, 1), (J, D), and ``dynamics_corr`` ~ LKJCholesky(D, 2):
      M_j = diag(scale_j) R_j R_j^T diag(scale_j)
    - ``bias_scale`` s_j ~ LogNormal(log 3, 1), (J,)
    - ``diffusion`` sigma ~ LogNormal(log diffusion_scale, 0.5), (D,)
    - x_0 ~ N(0, init_scale^2 I); ``input_matrix`` B ~ Normal(0, 1)
    - ``emission_matrix`` C ~ Normal(0, 1); ``emission_bias`` d ~ Normal(0, 2) (Gaussian),
      Normal(0, 3) (Poisson, exp link) or Normal(0, 10) (Poisson, softplus link: rates per unit
      time); ``emission_noise`` ~ HalfNormal(1)

    Parameters
    ----------
    num_regimes : int
        J >= 1.
    latent_dim : int
        D >= 1.
    obs_dim : int
        N >= 1.
    emissions : {"gaussian", "poisson"}
    features : {"linear", "quadratic"}
        Partition features phi(x).
    input_dim : int
        I >= 0 external inputs.
    dt : float
        Observation bin width (time units of the dynamics).
    substeps : int
        Euler steps per observation interval (a finer grid than the observations).
    link : {"softplus", "exp"}
        Poisson rate link.
    init_scale : float
        Standard deviation of x_0.
    diffusion_scale : float
        Prior median of sigma.
    """

    num_regimes: int
    latent_dim: int
    obs_dim: int
    emissions: str = "gaussian"
    features: str = "linear"
    input_dim: int = 0
    dt: float = 0.01
    substeps: int = 1
    link: str = "softplus"
    init_scale: float = 5.0
    diffusion_scale: float = 0.5
    sequence_sites = ("x", "y")

    def __post_init__(self):
        check_positive_int(self.num_regimes, "num_regimes")
        check_choice(self.features, "features", {"linear", "quadratic"})
        self._check_common()

    @property
    def num_features(self) -> int:
        """P = J (D + 1), the rank of the SSL kernel."""
        return self.num_regimes * (self.latent_dim + 1)

    @property
    def dims(self) -> dict:
        dims = self._common_dims()
        dims.update({
            "boundary": ["regime_boundary", "partition_feature"],
            "temperature": [],
            "centers": ["regime", "latent"],
            "dynamics_scale": ["regime", "latent"],
            "dynamics_corr": ["regime", "latent", "latent_in"],
            "bias_scale": ["regime"],
        })
        return dims

    def dim_sizes(self) -> dict:
        sizes = self._common_sizes()
        sizes.update({"regime": self.num_regimes, "regime_boundary": self.num_regimes - 1,
                      "partition_feature": num_partition_features(self.latent_dim, self.features)})
        return sizes

    # ---------------------------------------------------------------- drift
    def _prior_scale_tril(self, params):
        M_tril = params["dynamics_scale"][..., :, None] * params["dynamics_corr"]
        return ssl_weight_scale_tril(M_tril, params["bias_scale"])

    def _boundary(self, params):
        J = self.num_regimes
        if J == 1:
            F = num_partition_features(self.latent_dim, self.features)
            return jnp.zeros((0, F)), jnp.ones(())
        return params["boundary"], params["temperature"]

    def regimes(self, params, x):
        """Soft partition pi(x), (..., J)."""
        w, tau = self._boundary(params)
        return partition(jnp.asarray(x), w, tau, self.features)

    def drift_features(self, params, x):
        """Phi(x) = [pi_j(x) (x - c_j), pi_j(x)]_j, (..., J (D + 1))."""
        w, tau = self._boundary(params)
        return ssl_features(jnp.asarray(x), w, tau, params["centers"], self.features)

    def linear_dynamics(self, params, W=None):
        """(A, b) of each regime from weights W (P, D): A (J, D, D), b (J, D)."""
        W = params.get("drift_weights", params.get("drift_weights_mean")) if W is None else W
        J, D = self.num_regimes, self.latent_dim
        Wr = W.reshape(J, D + 1, D)
        return jnp.swapaxes(Wr[:, :D, :], -1, -2), Wr[:, D, :]

    def _drift_prior(self):
        J, D = self.num_regimes, self.latent_dim
        params = {}
        if J > 1:
            F = num_partition_features(D, self.features)
            params["boundary"] = numpyro.sample(
                "boundary", dist.Normal(0.0, 1.0).expand([J - 1, F]).to_event(2))
            params["temperature"] = numpyro.sample("temperature", dist.LogNormal(math.log(0.5), 0.5))
        params["centers"] = numpyro.sample("centers", dist.Normal(0.0, 3.0).expand([J, D]).to_event(2))
        params["dynamics_scale"] = numpyro.sample(
            "dynamics_scale", dist.LogNormal(0.0, 1.0).expand([J, D]).to_event(2))
        params["dynamics_corr"] = numpyro.sample(
            "dynamics_corr", dist.LKJCholesky(D, 2.0).expand([J]).to_event(1))
        params["bias_scale"] = numpyro.sample(
            "bias_scale", dist.LogNormal(math.log(3.0), 1.0).expand([J]).to_event(1))
        L = self._prior_scale_tril(params)
        return (lambda x: self.drift_features(params, x)), L
