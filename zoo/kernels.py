"""Kernels for GP drifts: the smoothly-switching linear (SSL) kernel and stationary kernels.

Every GP drift of the zoo is written in *weight space*: f(x) = Phi(x) W with features
Phi(x) (..., P) and weights W (P, D) whose columns are independent N(0, S) (one column per
output dimension of f). The kernel is then k(x, x') = Phi(x) S Phi(x')^T. Given a latent path,
the Euler-Maruyama likelihood is linear-Gaussian in W, which :mod:`zoo.sde_handlers` integrates out.

- SSL kernel (Hu et al., NeurIPS 2024): k(x, x') = sum_j pi_j(x) pi_j(x') [(x - c_j)^T M_j
  (x' - c_j) + s_j^2] with a softmax partition pi. It has rank at most J (D + 1) and is *exactly*
  the weight-space model f(x) = sum_j pi_j(x) [A_j (x - c_j) + b_j] with rows of A_j ~ N(0, M_j)
  and b_j ~ N(0, s_j^2): :func:`ssl_features` with :func:`ssl_weight_scale_tril`.
- Stationary kernels (RBF, Matern 5/2; ARD lengthscales, output variance): either whitened
  inducing points, Phi(x) = K(x, Z) L_ZZ^{-T} with L_ZZ L_ZZ^T = K(Z, Z) + jitter I and S = I,
  or the Hilbert-space approximation (Solin & Saerkkae 2020; ``numpyro.contrib.hsgp``),
  Phi(x) = eigenfunctions(x) sqrt(spectral density) and S = I.

Shapes: x (..., D); lengthscale (D,) or scalar; partition parameters w (J-1, F), tau scalar,
centres (J, D).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular
from numpyro.contrib.hsgp.laplacian import eigenfunctions
from numpyro.contrib.hsgp.spectral_densities import (
    diag_spectral_density_matern,
    diag_spectral_density_squared_exponential,
)

__all__ = [
    "partition_features",
    "num_partition_features",
    "partition",
    "ssl_features",
    "ssl_weight_scale_tril",
    "ssl_kernel",
    "rbf_kernel",
    "matern52_kernel",
    "stationary_kernel",
    "grid_points",
    "inducing_features",
    "hsgp_features",
]

_FEATURES = ("linear", "quadratic")
_KERNELS = ("rbf", "matern52")


def num_partition_features(latent_dim: int, features: str = "linear") -> int:
    """F, the length of phi(x): 1 + D (linear) or 1 + D + D (D + 1) / 2 (quadratic)."""
    if features not in _FEATURES:
        raise ValueError(f"features must be one of {_FEATURES}; got {features!r}")
    D = latent_dim
    return 1 + D + (D * (D + 1) // 2 if features == "quadratic" else 0)


@partial(jax.jit, static_argnames="features")
def partition_features(x, features: str = "linear"):
    """phi(x): [1, x] or [1, x, x_i x_j (i <= j)], shape (..., F)."""
    if features not in _FEATURES:
        raise ValueError(f"features must be one of {_FEATURES}; got {features!r}")
    x = jnp.asarray(x)
    one = jnp.ones(x.shape[:-1] + (1,), x.dtype)
    parts = [one, x]
    if features == "quadratic":
        i, j = jnp.triu_indices(x.shape[-1])
        parts.append(x[..., i] * x[..., j])
    return jnp.concatenate(parts, axis=-1)


@partial(jax.jit, static_argnames="features")
def partition(x, w, tau, features: str = "linear"):
    """Soft partition pi(x) = softmax([w_1^T phi(x), ..., w_{J-1}^T phi(x), 0] / tau).

    Parameters
    ----------
    x : array (..., D)
    w : array (J-1, F)
        Boundary weights (J = 1 gives the trivial partition).
    tau : scalar > 0
        Temperature (smaller: sharper boundaries).
    features : {"linear", "quadratic"}

    Returns
    -------
    array (..., J)
    """
    phi = partition_features(x, features)
    logits = phi @ jnp.asarray(w).T
    logits = jnp.concatenate([logits, jnp.zeros(logits.shape[:-1] + (1,), logits.dtype)], -1)
    return jax.nn.softmax(logits / tau, axis=-1)


@partial(jax.jit, static_argnames="features")
def ssl_features(x, w, tau, centers, features: str = "linear"):
    """Weight-space features of the SSL kernel: pi_j(x) [x - c_j, 1], flattened.

    Parameters
    ----------
    x : array (..., D)
    w, tau, features
        Partition (see :func:`partition`).
    centers : array (J, D)
        Linearisation points c_j.

    Returns
    -------
    array (..., J (D + 1))
        Ordered regime-major: [pi_1 (x - c_1), pi_1, pi_2 (x - c_2), pi_2, ...].
    """
    x = jnp.asarray(x)
    pi = partition(x, w, tau, features)  # (..., J)
    diff = x[..., None, :] - centers  # (..., J, D)
    one = jnp.ones(diff.shape[:-1] + (1,), diff.dtype)
    feats = pi[..., None] * jnp.concatenate([diff, one], -1)  # (..., J, D+1)
    return feats.reshape(x.shape[:-1] + (-1,))


@jax.jit
def ssl_weight_scale_tril(M_scale_tril, s):
    """Block-diagonal Cholesky factor of the weight prior S = blockdiag(M_j, s_j^2).

    Parameters
    ----------
    M_scale_tril : array (J, D, D)
        Cholesky factors of M_j (rows of A_j ~ N(0, M_j)).
    s : array (J,)
        Prior standard deviations of the offsets b_j.

    Returns
    -------
    array (J (D + 1), J (D + 1))
    """
    J, D, _ = M_scale_tril.shape
    blocks = jnp.zeros((J, D + 1, D + 1), M_scale_tril.dtype)
    blocks = blocks.at[:, :D, :D].set(M_scale_tril).at[:, D, D].set(s)
    P = J * (D + 1)
    out = jnp.zeros((J, D + 1, J, D + 1), M_scale_tril.dtype)
    out = out.at[jnp.arange(J), :, jnp.arange(J), :].set(blocks)
    return out.reshape(P, P)


@partial(jax.jit, static_argnames="features")
def ssl_kernel(x1, x2, w, tau, centers, M, s, features: str = "linear"):
    """The SSL kernel evaluated directly from its formula (not through features).

    k(x, x') = sum_j pi_j(x) pi_j(x') [(x - c_j)^T M_j (x' - c_j) + s_j^2].

    Parameters
    ----------
    x1 : array (n1, D)
    x2 : array (n2, D)
    w, tau, centers, features
        Partition and linearisation points (see :func:`ssl_features`).
    M : array (J, D, D)
        Positive semi-definite matrices M_j.
    s : array (J,)

    Returns
    -------
    array (n1, n2)
    """
    p1, p2 = partition(x1, w, tau, features), partition(x2, w, tau, features)
    d1 = x1[:, None, :] - centers  # (n1, J, D)
    d2 = x2[:, None, :] - centers
    quad = jnp.einsum("ajd,jde,bje->abj", d1, M, d2)
    return jnp.einsum("aj,bj,abj->ab", p1, p2, quad + s**2)


def _scaled_sqdist(x1, x2, lengthscale):
    a = x1 / lengthscale
    b = x2 / lengthscale
    d = a[..., :, None, :] - b[..., None, :, :]
    return jnp.sum(d**2, -1)


def rbf_kernel(x1, x2, lengthscale, variance):
    """RBF (squared exponential) kernel with ARD lengthscales: (n1, n2)."""
    return variance * jnp.exp(-0.5 * _scaled_sqdist(x1, x2, lengthscale))


def matern52_kernel(x1, x2, lengthscale, variance):
    """Matern 5/2 kernel with ARD lengthscales: (n1, n2)."""
    r2 = _scaled_sqdist(x1, x2, lengthscale)
    r = jnp.sqrt(jnp.maximum(r2, 1e-30))
    r = jnp.where(r2 > 0, r, 0.0)
    s5 = jnp.sqrt(5.0) * r
    return variance * (1.0 + s5 + 5.0 / 3.0 * r2) * jnp.exp(-s5)


def stationary_kernel(name: str):
    """The kernel function for ``"rbf"`` or ``"matern52"``."""
    if name == "rbf":
        return rbf_kernel
    if name == "matern52":
        return matern52_kernel
    raise ValueError(f"kernel must be one of {_KERNELS}; got {name!r}")


def grid_points(bound, num_per_dim: int, latent_dim: int):
    """A regular grid on [-bound, bound]^D, shape (num_per_dim^D, D) (inducing inputs)."""
    bound = jnp.broadcast_to(jnp.asarray(bound, float), (latent_dim,))
    axes = [jnp.linspace(-bound[d], bound[d], num_per_dim) for d in range(latent_dim)]
    mesh = jnp.meshgrid(*axes, indexing="ij")
    return jnp.stack([m.ravel() for m in mesh], -1)


@partial(jax.jit, static_argnames="kernel")
def inducing_features(x, Z, kernel: str, lengthscale, variance, jitter: float = 1e-6):
    """Whitened inducing-point features Phi(x) = K(x, Z) L^{-T}, L L^T = K(Z, Z) + jitter var I.

    With W ~ N(0, I), f(x) = Phi(x) W is the predictive mean of the GP given the inducing values
    u = L W ~ N(0, K_ZZ) (DTC / whitened SVGP prior); the jitter is relative to the output variance
    and is a documented argument, not a hidden constant.

    Returns
    -------
    array (..., M) with M = len(Z)
    """
    k = stationary_kernel(kernel)
    Kzz = k(Z, Z, lengthscale, variance)
    L = jnp.linalg.cholesky(Kzz + jitter * variance * jnp.eye(Z.shape[0], dtype=Kzz.dtype))
    x = jnp.asarray(x)
    flat = x.reshape(-1, x.shape[-1])
    Kxz = k(flat, Z, lengthscale, variance)  # (n, M)
    phi = solve_triangular(L, Kxz.T, lower=True).T
    return phi.reshape(x.shape[:-1] + (Z.shape[0],))


@partial(jax.jit, static_argnames=("kernel", "ell", "num_basis"))
def hsgp_features(x, kernel: str, lengthscale, variance, ell, num_basis):
    """Hilbert-space GP features Phi(x) = eigenfunctions(x) * sqrt(spectral density).

    Parameters
    ----------
    x : array (..., D)
    kernel : {"rbf", "matern52"}
    lengthscale : array (D,) or scalar
    variance : scalar
    ell : float or list
        Half-width of the box [-ell, ell]^D (boundary condition).
    num_basis : int or list
        Basis functions per dimension (m); total m^D.

    Returns
    -------
    array (..., m^D)
    """
    x = jnp.asarray(x)
    D = x.shape[-1]
    # NumPyro's eigenfunctions want a leading point axis; a single point (D,) gets one
    phi = eigenfunctions(x.reshape((-1, D)), ell=ell, m=num_basis).reshape(x.shape[:-1] + (-1,))
    if kernel == "rbf":
        spd = diag_spectral_density_squared_exponential(variance, lengthscale, ell, num_basis, D)
    elif kernel == "matern52":
        spd = diag_spectral_density_matern(2.5, variance, lengthscale, ell, num_basis, D)
    else:
        raise ValueError(f"kernel must be one of {_KERNELS}; got {kernel!r}")
    return (phi * jnp.sqrt(spd)).astype(x.dtype)
