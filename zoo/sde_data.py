"""Data tools of the continuous-time models: binning observations onto a coarser Euler grid, and a
starting latent path from the data (PCA of smoothed observations).
"""

from __future__ import annotations

import numpy as np

__all__ = ["bin_observations", "initial_path"]


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
