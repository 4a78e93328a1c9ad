"""Label alignment of state-indexed posterior variables across chains and draws.

Discrete states are identified only up to a permutation, so chains (and, rarely, draws within a
chain) may use different labellings. :func:`align_labels` relabels every draw to a reference by
Hungarian matching (:mod:`inference.labels`), Stephens-style: the reference starts as chain 0's
posterior mean, every draw is matched to it, the reference is recomputed from the aligned draws,
and this repeats a few times. Features of state k are every variable with a ``state`` dim (but not
``state_to``) at k, the diagonal of variables with dims (``state``, ``state_to``), and decoded
state marginals (dims (..., ``time``, ``state``)) when present, each standardised.
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from scipy.optimize import linear_sum_assignment

__all__ = ["align_labels", "state_features"]


def state_features(post: xr.Dataset, state_dim: str = "state") -> np.ndarray | None:
    """Per-draw features of each state: array (C, S, K, F), or None without state variables."""
    feats = []
    for da in post.data_vars.values():
        if state_dim not in da.dims or not np.issubdtype(da.dtype, np.floating):
            continue
        if "state_to" in da.dims:
            diag = np.diagonal(da.transpose(..., state_dim, "state_to").values, axis1=-2, axis2=-1)
            rest = [d for d in da.dims if d not in (state_dim, "state_to")]
            da = xr.DataArray(diag, dims=rest + [state_dim])
        other = [d for d in da.dims if d not in ("chain", "draw", state_dim)]
        arr = da.transpose("chain", "draw", state_dim, *other).values
        arr = arr.reshape(arr.shape[:3] + (-1,))
        scale = np.nanstd(arr) or 1.0
        feats.append(arr / scale / np.sqrt(arr.shape[-1]))
    if not feats:
        return None
    return np.concatenate(feats, axis=-1)


def align_labels(post: xr.Dataset, num_iter: int = 3,
                 state_dim: str = "state") -> tuple[xr.Dataset, np.ndarray]:
    """Relabel state-indexed variables of every draw to a common reference.

    Parameters
    ----------
    post : xarray.Dataset
        Posterior with dims (chain, draw, ...); variables with a ``state`` dim (and ``state_to``)
        are permuted; integer variables with a ``time`` dim and no ``state`` dim (decoded state
        sequences) get their values relabelled.
    num_iter : int
        Rounds of (match every draw, recompute the reference).
    state_dim : str

    Returns
    -------
    aligned : xarray.Dataset
    perms : array (C, S, K)
        ``perms[c, s, i]`` = original label of draw (c, s) now called i.
    """
    feats = state_features(post, state_dim)
    if feats is None:
        return post, np.zeros((post.sizes.get("chain", 0), post.sizes.get("draw", 0), 0), dtype=int)
    C, S, K, _ = feats.shape
    perms = np.broadcast_to(np.arange(K), (C, S, K)).copy()
    ref = np.nanmean(feats[0], axis=0)  # (K, F)
    for _ in range(num_iter):
        cost = ((ref[None, None, :, None, :] - feats[:, :, None, :, :]) ** 2).sum(-1)  # (C,S,K,K)
        cost = np.nan_to_num(cost, nan=1e12)
        for c in range(C):
            for s in range(S):
                _, cols = linear_sum_assignment(cost[c, s])
                perms[c, s] = cols
        aligned = np.take_along_axis(feats, perms[..., None], axis=2)
        ref = np.nanmean(aligned.reshape(C * S, K, -1), axis=0)
    return _apply(post, perms, state_dim), perms


def _apply(post: xr.Dataset, perms: np.ndarray, state_dim: str) -> xr.Dataset:
    C, S, K = perms.shape
    inverse = np.argsort(perms, axis=-1)
    out = {}
    for name, da in post.data_vars.items():
        t = da.transpose("chain", "draw", ...)
        arr = t.values
        if state_dim in da.dims or "state_to" in da.dims:
            for d in (state_dim, "state_to"):
                if d in t.dims:
                    ax = t.dims.index(d)
                    idx = perms.reshape((C, S) + (1,) * (ax - 2) + (K,) + (1,) * (arr.ndim - ax - 1))
                    arr = np.take_along_axis(arr, idx, axis=ax)
        elif np.issubdtype(da.dtype, np.integer) and "time" in da.dims:
            flat = arr.reshape(C, S, -1)
            inside = (flat >= 0) & (flat < K)
            arr = np.where(inside, np.take_along_axis(inverse, np.clip(flat, 0, K - 1), axis=-1), flat)
            arr = arr.reshape(t.shape)
        out[name] = t.copy(data=arr).transpose(*da.dims)
    return xr.Dataset(out, attrs=post.attrs)
