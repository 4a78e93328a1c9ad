"""The data frame that anchors the latent space of a (recurrent) SLDS.

A linear-Gaussian or Poisson SLDS sees its latent path only through C x + d, so x -> M x + c
(with C -> C M^{-1}, d -> d - C M^{-1} c, and the dynamics transformed alike) leaves the
likelihood unchanged. Left free, these directions are set by the priors alone: the posterior
spreads along them, NUTS needs long trajectories to cross them and chains disagree on C, b_k and
q_k. The SLDS fixes them with a frame computed from the data once:

- ``basis`` P (N, D): the leading principal directions of the (transformed) observations;
- ``complement`` (N, N - D): an orthonormal basis of the rest;
- ``scale`` s: the root mean variance of the leading principal components, the data's unit of
  latent length;
- ``offset`` o (N,): the mean of the (transformed) observations.

The model then constrains P^T C = s I and P^T d = P^T o, i.e. C = s P + P_perp G and
d = o + P_perp h with G and h free: the latent is x = P^T (eta - o) / s for noiseless
emissions eta = C x + d, the principal-component scores in units of s. Every M and c is pinned,
so x, C, d, b_k and q_k are all identified (up to the labels' permutation); the frame is a
rotation-free choice, so the dynamics keep their shape (a rotation stays a rotation).

For Poisson counts the observations are first mapped to the linear predictor's space: a light
temporal smoothing of the counts, regularised, through the inverse link.

Everything is written in ``jax.numpy`` so the program can compute the frame from a traced y;
:func:`inference.fit` computes it once and passes it in (``frame=``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["LatentFrame", "latent_frame", "default_frame", "frame_observations"]


class LatentFrame(NamedTuple):
    """The data frame of :func:`latent_frame` (arrays)."""

    basis: jax.Array  # (N, D), orthonormal columns
    complement: jax.Array  # (N, N - D), orthonormal columns, orthogonal to basis
    scale: jax.Array  # ()
    offset: jax.Array  # (N,)


def default_frame(obs_dim: int, latent_dim: int, dtype=None) -> LatentFrame:
    """The frame without data (prior predictive): the first D observation axes, unit scale,
    zero offset, i.e. C = [I; G] and d = [0; h].

    Parameters
    ----------
    obs_dim, latent_dim : int
        N and D.
    dtype : optional
        Float dtype (default: JAX's default float).

    Returns
    -------
    LatentFrame
    """
    eye = jnp.eye(obs_dim, dtype=dtype)
    return LatentFrame(eye[:, :latent_dim], eye[:, latent_dim:], jnp.ones((), eye.dtype),
                       jnp.zeros(obs_dim, eye.dtype))


def _smooth_time(v, w, width: float):
    """Weighted Gaussian smoothing along the time axis of (..., T, N) with weights w; returns
    (smoothed values, smoothed weights). Zero padding with the weights renormalised handles the
    ends and missing entries alike."""
    h = int(np.ceil(3 * width))
    taps = np.exp(-0.5 * (np.arange(-h, h + 1) / width) ** 2)
    taps = taps / taps.sum()
    T = v.shape[-2]
    pad = [(0, 0)] * (v.ndim - 2) + [(h, h), (0, 0)]
    vp, wp = jnp.pad(v * w, pad), jnp.pad(w, pad)
    num = sum(float(k) * vp[..., i : i + T, :] for i, k in enumerate(taps))
    den = sum(float(k) * wp[..., i : i + T, :] for i, k in enumerate(taps))
    return num / jnp.maximum(den, 1e-12), den


def _inverse_link(rate, link: str):
    if link == "exp":
        return jnp.log(rate)
    # softplus^{-1}(r) = log(expm1(r)) = r + log(-expm1(-r)), stable for large r
    return rate + jnp.log(-jnp.expm1(-rate))


def frame_observations(y, mask=None, emissions: str = "gaussian", link: str = "softplus",
                       bin_size: float = 1.0, smoothing: float = 2.0):
    """The observations in the space where the frame is computed, gaps filled.

    Gaussian: y, missing entries set to the neuron's mean. Poisson: the inverse link of the
    counts per unit time, smoothed along time (Gaussian, ``smoothing`` steps) and regularised
    by 10 % of the neuron's mean count plus 0.01 so that silent stretches stay finite.

    Parameters
    ----------
    y : array (T, N) or (B, T, N)
        Observations, NaN = missing.
    mask : bool array (T,) or (B, T), optional
        Steps that exist.
    emissions : {"gaussian", "poisson"}
    link : {"softplus", "exp"}
    bin_size : float
    smoothing : float
        Width of the counts' temporal smoothing, in steps.

    Returns
    -------
    v : array (..., T, N)
        Transformed, gap-filled observations.
    step_weight : array (..., T)
        1.0 on existing steps, 0.0 on padding.
    """
    y = jnp.asarray(y)
    y = y.astype(jnp.result_type(y.dtype, jnp.float32))
    step = jnp.ones(y.shape[:-1], y.dtype) if mask is None else jnp.broadcast_to(
        jnp.asarray(mask, bool), y.shape[:-1]).astype(y.dtype)
    seen = jnp.isfinite(y) & (step[..., None] > 0)
    w = seen.astype(y.dtype)
    filled = jnp.where(seen, y, 0.0)
    axes = tuple(range(y.ndim - 1))
    mean = filled.sum(axes) / jnp.maximum(w.sum(axes), 1.0)
    if emissions == "poisson":
        smooth, cover = _smooth_time(filled, w, smoothing)
        counts = jnp.where(cover > 1e-3, smooth, mean)
        v = _inverse_link((counts + 0.1 * mean + 0.01) / bin_size, link)
    else:
        v = jnp.where(seen, y, mean)
    return v, step


def latent_frame(y, latent_dim: int, mask=None, emissions: str = "gaussian", link: str = "softplus",
                 bin_size: float = 1.0) -> LatentFrame:
    """The frame that anchors an SLDS's latent space to the data (see the module docstring).

    Parameters
    ----------
    y : array (T, N) or (B, T, N)
        Observations, NaN = missing.
    latent_dim : int
        D <= N.
    mask : bool array (T,) or (B, T), optional
        Steps that exist.
    emissions, link, bin_size
        As the model's.

    Returns
    -------
    LatentFrame
        ``basis`` (N, D), ``complement`` (N, N - D), ``scale`` (), ``offset`` (N,). Each
        direction's sign is fixed (largest-magnitude entry positive), so the frame is a
        deterministic function of the data.
    """
    v, step = frame_observations(y, mask, emissions, link, bin_size)
    axes = tuple(range(v.ndim - 1))
    count = jnp.maximum(step.sum(), 1.0)
    offset = (v * step[..., None]).sum(axes) / count
    centred = ((v - offset) * step[..., None]).reshape(-1, v.shape[-1])
    cov = centred.T @ centred / count
    evals, evecs = jnp.linalg.eigh(cov)
    evals, evecs = evals[::-1], evecs[:, ::-1]
    pivot = jnp.take_along_axis(evecs, jnp.argmax(jnp.abs(evecs), axis=0)[None], axis=0)
    evecs = evecs * jnp.where(pivot < 0, -1.0, 1.0)
    scale = jnp.sqrt(jnp.maximum(jnp.mean(evals[:latent_dim]), 1e-12))
    return LatentFrame(evecs[:, :latent_dim], evecs[:, latent_dim:], scale, offset)
