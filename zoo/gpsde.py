"""GP-SDE: a latent SDE with a stationary-kernel GP drift (Duncker et al., ICML 2019).

The drift is a GP with an RBF or Matern 5/2 kernel (ARD lengthscales, output scale), written in
weight space either with whitened inducing points on a grid or with NumPyro's Hilbert-space
approximation; the weights are integrated out exactly given the path (:mod:`zoo.sde`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

from zoo._base import ModelMixin, check_choice, check_positive_int
from zoo.kernels import grid_points, hsgp_features, inducing_features
from zoo.sde import SDEModel

__all__ = ["GPSDE"]


@dataclass(frozen=True)
class GPSDE(SDEModel, ModelMixin):
    """Latent SDE with a stationary GP drift, as a NumPyro program.

    dx = (f(x) + B u) dt + diag(sigma) dW (Euler-Maruyama, step ``dt / substeps``), each output
    dimension of f an independent GP with kernel ``kernel`` (ARD ``lengthscale`` (D,), output
    standard deviation ``output_scale``). Weight space: f(x) = Phi(x) W with W columns N(0, I):

    - ``approx="inducing"``: Phi(x) = K(x, Z) L_ZZ^{-T}, Z a regular grid of
      ``num_inducing``^D points on [-bound, bound]^D (whitened inducing values; ``jitter`` is
      relative to the output variance);
    - ``approx="hsgp"``: Phi(x) = Laplacian eigenfunctions on [-ell, ell]^D times the square root
      of the kernel's spectral density, ``num_basis``^D functions, ell = ``boundary_factor`` * bound.

    The weights are integrated out exactly given the path (:class:`zoo.handlers.integrate_out`); the
    model records their conditional posterior as ``drift_weights_mean`` / ``drift_weights_factor``.
    Emissions: Gaussian or Poisson counts y ~ Poisson(dt link(C x + d)).

    Priors: ``lengthscale`` ~ LogNormal(log(bound / 2), 0.5); ``output_scale`` ~ LogNormal(0, 1);
    ``diffusion`` ~ LogNormal(log diffusion_scale, 0.5); x_0 ~ N(0, init_scale^2); emissions as in
    :class:`zoo.gpslds.GPSLDS`.

    Parameters
    ----------
    latent_dim, obs_dim : int
    kernel : {"rbf", "matern52"}
    approx : {"inducing", "hsgp"}
    emissions : {"gaussian", "poisson"}
    link : {"softplus", "exp"}
    input_dim : int
    dt : float
        Observation bin width.
    substeps : int
        Euler steps per observation interval.
    bound : float
        Half-width of the latent box holding the inducing grid / HSGP domain.
    num_inducing : int
        Inducing points per dimension.
    num_basis : int
        HSGP basis functions per dimension.
    boundary_factor : float
        HSGP domain half-width in units of ``bound`` (> 1).
    jitter : float
        Relative jitter of K_ZZ for the inducing approximation.
    init_scale, diffusion_scale : float
    """

    latent_dim: int
    obs_dim: int
    kernel: str = "rbf"
    approx: str = "inducing"
    emissions: str = "gaussian"
    link: str = "softplus"
    input_dim: int = 0
    dt: float = 0.01
    substeps: int = 1
    bound: float = 4.0
    num_inducing: int = 8
    num_basis: int = 10
    boundary_factor: float = 1.5
    jitter: float = 1e-6
    init_scale: float = 2.0
    diffusion_scale: float = 0.5
    sequence_sites = ("x", "y")

    def __post_init__(self):
        check_choice(self.kernel, "kernel", {"rbf", "matern52"})
        check_choice(self.approx, "approx", {"inducing", "hsgp"})
        check_positive_int(self.num_inducing, "num_inducing", 2)
        check_positive_int(self.num_basis, "num_basis")
        if not self.bound > 0:
            raise ValueError(f"bound must be > 0; got {self.bound}")
        if not self.boundary_factor > 1:
            raise ValueError(f"boundary_factor must be > 1; got {self.boundary_factor}")
        if not self.jitter >= 0:
            raise ValueError(f"jitter must be >= 0; got {self.jitter}")
        self._check_common()

    @property
    def num_features(self) -> int:
        m = self.num_inducing if self.approx == "inducing" else self.num_basis
        return m**self.latent_dim

    @property
    def dims(self) -> dict:
        dims = self._common_dims()
        dims.update({"lengthscale": ["latent"], "output_scale": []})
        return dims

    def dim_sizes(self) -> dict:
        return self._common_sizes()

    def inducing_inputs(self):
        """The inducing grid Z, (num_inducing^D, D)."""
        return grid_points(self.bound, self.num_inducing, self.latent_dim)

    def drift_features(self, params, x):
        """Phi(x), (..., P)."""
        ls, amp = params["lengthscale"], params["output_scale"]
        x = jnp.asarray(x)
        if self.approx == "inducing":
            return inducing_features(x, self.inducing_inputs().astype(x.dtype), self.kernel, ls,
                                     amp**2, self.jitter)
        return hsgp_features(x, self.kernel, ls, amp**2, self.boundary_factor * self.bound,
                             self.num_basis)

    def regimes(self, params, x):
        """A single regime everywhere: ones (..., 1)."""
        x = jnp.asarray(x)
        return jnp.ones(x.shape[:-1] + (1,), x.dtype)

    def _drift_prior(self):
        D = self.latent_dim
        params = {
            "lengthscale": numpyro.sample(
                "lengthscale", dist.LogNormal(math.log(self.bound / 2), 0.5).expand([D]).to_event(1)),
            "output_scale": numpyro.sample("output_scale", dist.LogNormal(0.0, 1.0)),
        }
        L = jnp.eye(self.num_features, dtype=params["output_scale"].dtype)
        return (lambda x: self.drift_features(params, x)), L
