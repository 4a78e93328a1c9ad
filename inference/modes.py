"""Chains grouped into posterior modes on identified quantities.

Chains started from several restarts of a point fit may settle in different modes. Pooling them
hides that: R-hat fails, but says neither how many modes there are nor which chains are where.
:func:`group_chains` compares every pair of chains on per-draw quantities that are invariant to
the labels' permutation and the latent gauge (the total log-likelihood, the sorted state
occupancy, label-aligned variables of a gauge-fixed model) and links two chains unless they
differ on some quantity both

- *practically*: the rank-normalised split R-hat of the two chains alone exceeds
  :data:`MODE_RHAT` = 1.1. For independent draws two chains whose means differ by d within-chain
  standard deviations give R-hat 1.01 (d = 0.25), 1.08 (d = 0.75), 1.15 (d = 1), 1.31 (d = 1.5):
  1.1 asks for means about one within-chain sd apart, the classic Gelman-Rubin cut. Four
  i.i.d. chains of 500 draws never reach it (max pairwise R-hat 1.013 over 200 seeds); and
- *beyond Monte Carlo error*: the difference of the two chain means exceeds :data:`MODE_Z` = 5
  standard errors, sqrt(mcse_i^2 + mcse_j^2) with each chain's MCSE of the mean from its own
  autocorrelation (``arviz_stats.mcse``). R-hat alone is not enough: a slowly mixing chain
  wanders, and for AR(1) chains with lag-one correlation 0.9 (ESS ~ 25 of 500 draws) the max
  pairwise R-hat of four chains from one distribution exceeds 1.1 in 14 % of seeds, while the
  largest standardised difference stays below 4.3 (99th percentile 3.7). The two conditions
  together split none of those 200 seeds (and 1 of 200 at correlation 0.97, ESS ~ 8 per chain,
  where diagnose already fails the run on ESS).

Modes are the connected components of the "linked" graph: a chain links to a mode when it
agrees with any of its chains. Quantities are compared on location (means); two chains that
differ only in spread are one mode.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import arviz_stats as azs
import numpy as np
import xarray as xr

__all__ = ["ChainModes", "MODE_RHAT", "MODE_Z", "chain_modes", "group_chains",
           "identified_quantities"]

MODE_RHAT = 1.1  # two-chain rank R-hat above which chains differ practically (means ~1 sd apart)
MODE_Z = 5.0  # |difference of means| / its Monte Carlo standard error above which it is not noise


@dataclass
class ChainModes:
    """Result of :func:`group_chains`.

    Attributes
    ----------
    labels : array (chain,) of int
        The mode of each chain; modes are numbered in the order of their first chain.
    groups : list of list of int
        The chains of each mode (chain positions 0 .. C-1), ``groups[m]`` for mode m.
    means : dict of str to array (mode, ...)
        Each quantity's mean over the draws of each mode's chains.
    quantities : list of str
        The quantities compared.
    separating : list of str
        The quantities on which some pair of chains differs (both conditions).
    rhat : array (chain, chain)
        The largest two-chain R-hat over all quantity elements for each pair (NaN on the
        diagonal and where it could not be computed).
    z : array (chain, chain)
        The largest |difference of means| / its MCSE over the quantity elements for each pair.
    rhat_threshold, z_threshold : float
        The thresholds used (:data:`MODE_RHAT`, :data:`MODE_Z`).
    """

    labels: np.ndarray
    groups: list
    means: dict = field(default_factory=dict)
    quantities: list = field(default_factory=list)
    separating: list = field(default_factory=list)
    rhat: np.ndarray | None = None
    z: np.ndarray | None = None
    rhat_threshold: float = MODE_RHAT
    z_threshold: float = MODE_Z

    @property
    def num_modes(self) -> int:
        """Number of modes."""
        return len(self.groups)

    def describe(self) -> str:
        """One line: ``"chains split into 2 modes: [0, 1] | [2, 3] (they differ on
        total_log_likelihood)"`` (``"chains agree: one mode"`` when there is one)."""
        if self.num_modes <= 1:
            return "chains agree: one mode"
        groups = " | ".join(str([int(c) for c in g]) for g in self.groups)
        return (f"chains split into {self.num_modes} modes: {groups} (they differ on "
                f"{', '.join(self.separating)})")

    def __str__(self) -> str:
        lines = [self.describe()]
        if self.num_modes > 1:
            for name, m in self.means.items():
                flat = np.asarray(m, float).reshape(self.num_modes, -1)
                if flat.shape[1] <= 4:
                    vals = " | ".join(" ".join(f"{v:.4g}" for v in row) for row in flat)
                    lines.append(f"  mean {name} per mode: {vals}")
        return "\n".join(lines)

    __repr__ = __str__


def _components(linked: np.ndarray) -> np.ndarray:
    """Connected components of a symmetric boolean adjacency matrix (C, C): label per node,
    numbered in the order of each component's first node."""
    C = linked.shape[0]
    labels = np.full(C, -1)
    nxt = 0
    for start in range(C):
        if labels[start] >= 0:
            continue
        stack = [start]
        labels[start] = nxt
        while stack:
            i = stack.pop()
            for j in np.flatnonzero(linked[i] & (labels < 0)):
                labels[j] = nxt
                stack.append(int(j))
        nxt += 1
    return labels


def group_chains(quantities: Mapping[str, np.ndarray], *, rhat_threshold: float = MODE_RHAT,
                 z_threshold: float = MODE_Z) -> ChainModes:
    """Group chains into modes by pairwise agreement on per-draw quantities.

    Parameters
    ----------
    quantities : mapping of str to array (chain, draw, ...)
        Identified (label- and gauge-invariant) per-draw quantities, all with the same chain
        and draw sizes; trailing dims are compared element by element.
    rhat_threshold : float
        Two chains differ practically on an element when their two-chain rank-normalised split
        R-hat (``arviz_stats.rhat``) exceeds it (default :data:`MODE_RHAT`).
    z_threshold : float
        ... and beyond Monte Carlo error when |mean_i - mean_j| > z_threshold *
        sqrt(mcse_i^2 + mcse_j^2) (default :data:`MODE_Z`).

    Returns
    -------
    ChainModes
        Chains are in different modes when no path of agreeing pairs joins them; a pair agrees
        unless some element differs on both counts. Elements constant in both chains differ
        when their values differ. NaN elements never separate chains (``diagnose`` reports
        them). With fewer than 4 draws, one chain or no elements, all chains form one mode.
    """
    if not quantities:
        raise ValueError("quantities is empty: nothing to group the chains on")
    flat = {}
    for name, v in quantities.items():
        a = np.asarray(v, dtype=float)
        if a.ndim < 2:
            raise ValueError(f"quantity {name!r} must have dims (chain, draw, ...); got shape {a.shape}")
        flat[name] = a.reshape(a.shape[:2] + (-1,))
    shapes = {a.shape[:2] for a in flat.values()}
    if len(shapes) != 1:
        raise ValueError(f"quantities disagree on (chain, draw) sizes: {sorted(shapes)}")
    C, S = shapes.pop()
    X = np.concatenate(list(flat.values()), axis=-1)  # (C, S, Q)
    owner = np.concatenate([np.full(a.shape[-1], k) for k, a in enumerate(flat.values())])
    separates = np.zeros(len(flat), bool)
    means_c = X.mean(axis=1)  # (C, Q)
    rhat = np.full((C, C), np.nan)
    z = np.full((C, C), np.nan)
    linked = np.eye(C, dtype=bool)
    if C >= 2 and S >= 4 and X.shape[-1]:
        sd = X.std(axis=1)
        with np.errstate(all="ignore"):
            # each chain alone: MCSE of its mean from its own autocorrelation
            mcse = np.asarray(azs.mcse(X[:, None], chain_axis=1, draw_axis=2, method="mean"), float)
        mcse = np.where(sd == 0, 0.0, mcse)  # a constant chain's mean has no Monte Carlo error
        for i in range(C):
            for j in range(i + 1, C):
                with np.errstate(all="ignore"):
                    r = np.asarray(azs.rhat(X[[i, j]], chain_axis=0, draw_axis=1, method="rank"), float)
                    d = np.abs(means_c[i] - means_c[j])
                    se = np.hypot(mcse[i], mcse[j])
                    zz = np.where(se > 0, d / se, np.where(d > 0, np.inf, 0.0))
                # R-hat is undefined when both chains are constant: then only the values count
                far = (r > rhat_threshold) | (~np.isfinite(r) & (sd[i] == 0) & (sd[j] == 0))
                apart = far & (zz > z_threshold) & np.isfinite(d)
                rhat[i, j] = rhat[j, i] = np.nanmax(r) if np.isfinite(r).any() else np.nan
                z[i, j] = z[j, i] = np.nanmax(np.where(np.isfinite(d), zz, np.nan)) \
                    if np.isfinite(d).any() else np.nan
                linked[i, j] = linked[j, i] = not apart.any()
                separates[np.unique(owner[apart])] = True
    else:
        linked[:] = True
    labels = _components(linked)
    groups = [[int(c) for c in np.flatnonzero(labels == m)] for m in range(int(labels.max()) + 1)]
    means = {}
    for name, v in quantities.items():
        a = np.asarray(v, dtype=float)
        means[name] = np.stack([a[g].mean(axis=(0, 1)) for g in groups])
    names = list(quantities)
    return ChainModes(labels, groups, means, names, [n for n, s in zip(names, separates, strict=True) if s],
                      rhat, z, float(rhat_threshold), float(z_threshold))


def _total_log_likelihood(post: xr.DataTree) -> np.ndarray | None:
    """(chain, draw): every observed site's pointwise log-likelihood summed."""
    if "log_likelihood" not in post.children:
        return None
    ll = post["log_likelihood"].to_dataset()
    parts = [np.asarray(da.transpose("chain", "draw", ...).values, float)
             for da in ll.data_vars.values() if {"chain", "draw"} <= set(da.dims)]
    if not parts:
        return None
    return sum(p.reshape(p.shape[:2] + (-1,)).sum(-1) for p in parts)


def _sorted_occupancy(ds: xr.Dataset, name: str = "z") -> np.ndarray | None:
    """(chain, draw, state): the fraction of time steps in each state, sorted in decreasing
    order (so invariant to the labels' permutation)."""
    if name not in ds or not {"chain", "draw"} <= set(ds[name].dims):
        return None
    z = np.asarray(ds[name].transpose("chain", "draw", ...).values)
    if not (np.issubdtype(z.dtype, np.integer) or np.issubdtype(z.dtype, np.bool_)):
        if not np.all(np.isnan(z) | (z == np.round(z))):
            return None  # not a decoded state sequence
    z = z.reshape(z.shape[:2] + (-1,))
    valid = np.isfinite(z) & (z >= 0)  # negative or NaN entries mark padding
    zi = np.where(valid, z, -1).astype(int)
    K = int(ds.sizes.get("state", 0)) or int(zi.max()) + 1
    if K < 1:
        return None
    n = np.maximum(valid.sum(-1, keepdims=True), 1)
    occ = np.stack([(zi == k).sum(-1) for k in range(K)], -1) / n
    return -np.sort(-occ, axis=-1)


def identified_quantities(post: xr.DataTree, variables: list[str] | None = None,
                          aligned: xr.Dataset | None = None) -> dict[str, np.ndarray]:
    """Per-draw quantities of a posterior that are invariant to labels and gauge.

    Parameters
    ----------
    post : xarray.DataTree
        With a ``posterior`` group (chain, draw, ...), optionally ``log_likelihood``.
    variables : list of str, optional
        Posterior variables to add, after label alignment (use it for variables identified in
        your model: a framed SLDS's latent path and parameters are; a GP-SLDS's are not, its
        latent coordinates are free up to an affine map).
    aligned : xarray.Dataset, optional
        The label-aligned posterior (:func:`inference.align.align_labels`), when already
        computed; aligned here otherwise (only when variables are needed).

    Returns
    -------
    dict of str to array (chain, draw, ...)
        ``total_log_likelihood`` (chain, draw) when the ``log_likelihood`` group exists;
        ``sorted_state_occupancy`` (chain, draw, state) when the posterior holds integer
        states ``z`` (chain, draw, [trial,] time); the requested aligned variables. Without
        any of the first two and no ``variables``, every floating-point variable of ``aligned``
        (when given, else of the posterior, aligned): a fallback that is gauge-invariant only
        for gauge-fixed models.
    """
    if "posterior" not in post.children:
        raise ValueError("post must have a 'posterior' group")
    ds = post["posterior"].to_dataset()
    out: dict[str, np.ndarray] = {}
    ll = _total_log_likelihood(post)
    if ll is not None:
        out["total_log_likelihood"] = ll
    occ = _sorted_occupancy(ds)
    if occ is not None:
        out["sorted_state_occupancy"] = occ
    pool = aligned if aligned is not None else ds
    names = list(variables) if variables is not None else [] if out else \
        [k for k, da in pool.data_vars.items()
         if np.issubdtype(da.dtype, np.floating) and {"chain", "draw"} <= set(da.dims)]
    missing = sorted(set(names) - set(ds.data_vars))
    if missing:
        raise ValueError(f"variables {missing} are not posterior variables")
    todo = [k for k in names if aligned is None or k not in aligned]
    if todo:
        from inference.align import align_labels

        aligned = xr.merge([aligned[[k for k in names if k not in todo]], align_labels(ds[todo])[0]]) \
            if aligned is not None else align_labels(ds[todo])[0]
    for k in names:
        out[k] = np.asarray(aligned[k].transpose("chain", "draw", ...).values, float)
    return out


def chain_modes(post: xr.DataTree, variables: list[str] | None = None, **thresholds) -> ChainModes:
    """:func:`group_chains` on :func:`identified_quantities` of a posterior.

    Parameters
    ----------
    post : xarray.DataTree
        With a ``posterior`` group (chain, draw, ...).
    variables : list of str, optional
        Aligned posterior variables to compare besides the log-likelihood and occupancy.
    **thresholds
        ``rhat_threshold``, ``z_threshold`` of :func:`group_chains`.

    Returns
    -------
    ChainModes
    """
    return group_chains(identified_quantities(post, variables), **thresholds)
