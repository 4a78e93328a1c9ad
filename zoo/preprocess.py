"""Preparing observations: gap filling, smoothing along time, binning onto a coarser grid, and a
starting latent path from the data (PCA of smoothed observations). NumPy, on concrete arrays.
"""

from __future__ import annotations

import numpy as np

__all__ = ["fill_missing", "smooth_time", "bin_observations", "initial_path"]


def fill_missing(y):
    """Replace NaN by the neuron's mean over all trials and steps (0 for a neuron never seen).

    Parameters
    ----------
    y : array (..., T, N)

    Returns
    -------
    numpy array (..., T, N)
    """
    y = np.array(y, dtype=float)
    mean = np.nanmean(y.reshape(-1, y.shape[-1]), axis=0)
    mean = np.where(np.isnan(mean), 0.0, mean)
    return np.where(np.isnan(y), mean, y)


def smooth_time(y, width: float):
    """Gaussian smoothing along time of (..., T, N), the ends padded with their edge values.

    Parameters
    ----------
    y : array (..., T, N)
    width : float
        Standard deviation of the Gaussian in steps (<= 0: y unchanged); the kernel spans
        ceil(3 width) steps on each side.
    """
    if width <= 0:
        return y
    h = int(np.ceil(3 * width))
    k = np.exp(-0.5 * (np.arange(-h, h + 1) / width) ** 2)
    k /= k.sum()
    pad = np.pad(y, [(0, 0)] * (y.ndim - 2) + [(h, h), (0, 0)], mode="edge")
    out = np.zeros_like(y)
    for i, w in enumerate(k):
        out += w * pad[..., i : i + y.shape[-2], :]
    return out


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
    y = fill_missing(y[None] if squeeze else y)
    z = np.sqrt(y) if counts else y
    z = smooth_time(z, smooth)
    flat = z.reshape(-1, z.shape[-1])
    flat = flat - flat.mean(0)
    _, _, vt = np.linalg.svd(flat, full_matrices=False)
    x = flat @ vt[:latent_dim].T
    x = scale * x / (x.std(0) + 1e-12)
    x = x.reshape(z.shape[:-1] + (latent_dim,))
    return x[0] if squeeze else x
