"""The probabilities of an attractor analysis and their Monte Carlo error (the second half of
:mod:`inference.attractors`, which finds and classifies the fixed points of each draw).

A per-draw 0/1 indicator (a line attractor; n stable fixed points) becomes a probability per
chain, pooled over chains (:data:`POOLED_WEIGHTING`), with an MCSE from its (chain, draw)
structure (:data:`MCSE_METHOD`), and per posterior mode where the chains split
(:func:`attractor_probabilities`, :func:`attractor_summary`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import xarray as xr

from inference.diagnose import Diagnostics
from inference.modes import ChainModes, chain_modes, identified_quantities

__all__ = ["attractor_probabilities", "attractor_summary", "by_chain", "draws_with_chains", "indicator_mcse",
           "indicator_probability", "modes_of", "thin_by_chain", "MCSE_METHOD", "POOLED_WEIGHTING"]


# ----------------------------------------------------------------------------------------------
# Draws
# ----------------------------------------------------------------------------------------------


def draws_with_chains(post) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """Posterior draws flattened to one sample axis, with where each sample came from.

    Parameters
    ----------
    post : xarray.DataTree, xarray.Dataset or mapping
        A DataTree with a ``posterior`` group or a Dataset of draws, dims (chain, draw, ...); or
        a dict of arrays with one leading sample axis (one chain).

    Returns
    -------
    draws : dict name -> array (S, ...)
    chain : int array (S,)
        Chain position of each sample.
    draw : int array (S,)
        Position of each sample within its chain.
    labels : array (C,)
        The chains' labels (the ``chain`` coordinate).

    Raises
    ------
    ValueError
        An empty posterior, dict arrays of different lengths, or another type.
    """
    if isinstance(post, xr.DataTree) and "posterior" in post.children:
        ds = post["posterior"].to_dataset()
        out = {}
        C = D = None
        for name, var in ds.data_vars.items():
            v = var.transpose("chain", "draw", ...).values
            C, D = v.shape[:2]
            out[name] = v.reshape((-1,) + v.shape[2:])
        if C is None:
            raise ValueError("post has an empty 'posterior' group")
        labels = np.asarray(ds["chain"].values) if "chain" in ds.coords else np.arange(C)
        return out, np.repeat(np.arange(C), D), np.tile(np.arange(D), C), labels
    if isinstance(post, xr.Dataset):
        return draws_with_chains(xr.DataTree.from_dict({"posterior": post}))
    if isinstance(post, Mapping):
        out = {k: np.asarray(v) for k, v in post.items()}
        sizes = {v.shape[0] for v in out.values() if v.ndim > 0}
        if len(sizes) != 1:
            raise ValueError("post must be a dict of arrays sharing one leading sample axis; got "
                             f"leading sizes {sorted(sizes)}")
        S = sizes.pop()
        return out, np.zeros(S, int), np.arange(S), np.arange(1)
    raise ValueError("post must be a DataTree with a 'posterior' group, an xarray.Dataset of draws, "
                     f"or a dict of arrays with a leading sample axis; got {type(post).__name__}")


def thin_by_chain(draws: dict, chain: np.ndarray, num_draws):
    """Evenly spaced draws from every chain: ``ceil(num_draws / num_chains)`` per chain.

    Parameters
    ----------
    draws : dict name -> array (S, ...)
    chain : int array (S,)
        Chain position of each sample.
    num_draws : int or None
        How many draws in all; None (or at least S) keeps every draw.

    Returns
    -------
    draws : dict name -> array (S', ...)
    index : int array (S',)
        Positions of the kept samples in the input.
    """
    S = len(chain)
    if num_draws is None:
        return draws, np.arange(S)
    if isinstance(num_draws, bool) or not isinstance(num_draws, int | np.integer) or num_draws < 1:
        raise ValueError(f"num_draws must be a positive integer; got {num_draws!r}")
    if num_draws >= S:
        return draws, np.arange(S)
    chains = np.unique(chain)
    per = -(-int(num_draws) // len(chains))
    idx = []
    for c in chains:
        pos = np.flatnonzero(chain == c)
        k = min(per, len(pos))
        idx.append(pos[np.linspace(0, len(pos) - 1, k).round().astype(int)])
    idx = np.concatenate(idx)
    return {k: v[idx] for k, v in draws.items()}, idx


# ----------------------------------------------------------------------------------------------
# Monte Carlo error of the probabilities
# ----------------------------------------------------------------------------------------------

MCSE_METHOD = ("arviz_stats.mcse(method='mean') of the per-draw 0/1 indicator with its (chain, draw) "
               "structure (ESS from the chains' autocorrelation); 0 when the indicator is constant; "
               "with fewer than 4 draws per chain the independent-draws value sqrt(p (1 - p) / n)")


def indicator_mcse(indicator) -> float:
    """Monte Carlo standard error of the mean of a 0/1 indicator of shape (chain, draw).

    See :data:`MCSE_METHOD`: ArviZ's MCSE of the mean (it accounts for autocorrelation within
    chains and disagreement between them); exactly 0 for a constant indicator; the
    independent-draws formula when the chains are too short for ArviZ (fewer than 4 draws).
    """
    ind = np.asarray(indicator, dtype=float)
    if ind.ndim == 1:
        ind = ind[None]
    if ind.size == 0:
        return float("nan")
    p = float(ind.mean())
    if ind.min() == ind.max():
        return 0.0
    if ind.shape[1] >= 4:
        import arviz_stats as azs

        with np.errstate(all="ignore"):
            v = float(azs.mcse(xr.Dataset({"i": (("chain", "draw"), ind)}), method="mean")["i"])
        if np.isfinite(v):
            return v
    return float(np.sqrt(p * (1 - p) / ind.size))


def _per_chain(values: np.ndarray, chain: np.ndarray, chains: np.ndarray) -> np.ndarray:
    """(chain, n) array of a per-sample quantity; chains of unequal length padded with NaN."""
    groups = [values[chain == c] for c in chains]
    n = max(len(g) for g in groups)
    out = np.full((len(chains), n), np.nan)
    for i, g in enumerate(groups):
        out[i, :len(g)] = g
    return out


POOLED_WEIGHTING = ("modes weighted by their number of chains (equal weight per chain), not by "
                    "posterior mass")
"""How the pooled probabilities weight the modes. The share of chains that land in a mode is set by
where the restarts began, not by the mode's posterior mass, so the pooled figure is a chain average,
not a posterior probability, when the chains split into modes."""


def _rectangle(grid: np.ndarray) -> np.ndarray:
    """A (chain, draw) grid cut to its shortest chain (ArviZ needs a rectangle)."""
    if np.isnan(grid).any():
        grid = grid[:, : int(np.min(np.sum(~np.isnan(grid), 1)))]
    return grid


def indicator_probability(indicator: np.ndarray, chain: np.ndarray, chains: np.ndarray):
    """The probability of a per-sample 0/1 indicator, pooled over chains and per chain. The pooled
    figure is the mean of the chains' figures (:data:`POOLED_WEIGHTING`); with equal numbers of
    draws per chain (what :func:`inference.attractors.attractors` analyses) it is also the mean
    over draws.

    Parameters
    ----------
    indicator : bool array (S,)
    chain : int array (S,)
        Chain position of each sample.
    chains : array (C,)
        The chain positions to report, in order.

    Returns
    -------
    probability : float
    mcse : float
        :func:`indicator_mcse` of the (chain, draw) grid.
    per_chain : array (C,)
    """
    grid = _per_chain(indicator.astype(float), chain, chains)
    per = np.nanmean(grid, axis=1)
    return float(np.mean(per)), indicator_mcse(_rectangle(grid)), per


def _groups(modes) -> list:
    """The chain groups of ``modes``: a posterior DataTree (grouped by
    :func:`inference.modes.chain_modes`), a :class:`inference.modes.ChainModes`, an
    :class:`inference.diagnose.Diagnostics`, or the groups themselves."""
    if isinstance(modes, xr.DataTree):
        modes = chain_modes(modes)
    if isinstance(modes, ChainModes):
        return modes.groups
    if isinstance(modes, Diagnostics):
        return modes.modes
    return modes


def _mode_groups(modes, result: xr.Dataset, chains: np.ndarray) -> list[list[int]]:
    """The chain groups of ``modes`` (see :func:`attractor_probabilities`) as chain positions,
    checked to partition the result's chains."""
    if modes is None:
        if "chain_mode" not in result.coords:
            return [[int(c) for c in chains]]
        label = np.asarray(result["chain_mode"].values, int)
        return [[int(c) for c in chains[label == m]] for m in np.unique(label)]
    groups = [[int(c) for c in g] for g in _groups(modes)]
    flat = sorted(c for g in groups for c in g)
    if flat != sorted(int(c) for c in chains) or any(not g for g in groups):
        raise ValueError(f"modes {groups} must split the result's chains {chains.tolist()} into "
                         "non-empty groups, each chain in exactly one")
    return groups


def modes_of(post, modes, chains: np.ndarray) -> tuple[list[list[int]], dict]:
    """How the chains of ``post`` group into posterior modes, for
    :func:`inference.attractors.attractors`.

    Parameters
    ----------
    post : xarray.DataTree or xarray.Dataset
    modes : None or groups
        None: grouped by :func:`inference.modes.chain_modes` on the identified quantities; else
        what :func:`attractor_probabilities` accepts as ``modes``.
    chains : array (C,)
        The chain positions analysed.

    Returns
    -------
    groups : list of list of int
    attrs : dict
        Where the groups came from (``modes_from``, and ``mode_quantities`` when computed).
    """
    if modes is None:
        tree = xr.DataTree.from_dict({"posterior": post}) if isinstance(post, xr.Dataset) else post
        if not identified_quantities(tree):  # nothing to compare (no floating-point draws)
            return [[int(c) for c in chains]], {}
        found = chain_modes(tree)
        on = ", ".join(found.separating or found.quantities)
        return found.groups, {"mode_quantities": on, "modes_from": "inference.modes.chain_modes"}
    # a dummy result: only the chain positions are needed to check the groups
    return _mode_groups(modes, xr.Dataset(), chains), {"modes_from": "given"}


def _by_mode(indicator: np.ndarray, chain: np.ndarray, chains: np.ndarray, groups: list[list[int]]):
    """(probabilities, MCSEs) of a per-sample 0/1 indicator in each mode's chains."""
    grid = _per_chain(indicator.astype(float), chain, chains)
    pos = {int(c): i for i, c in enumerate(chains)}
    probs, ses = [], []
    for g in groups:
        sub = grid[[pos[c] for c in g]]
        probs.append(float(np.mean(np.nanmean(sub, axis=1))))
        ses.append(indicator_mcse(_rectangle(sub)))
    return probs, ses


def attractor_probabilities(result: xr.Dataset, modes=None):
    """Each attractor probability with its Monte Carlo standard error, per chain and per mode.

    Parameters
    ----------
    result : xarray.Dataset
        The output of :func:`attractors` (older results without chain information are read as
        one chain).
    modes : optional
        How the chains group into posterior modes: a list of lists of chain positions (the
        ``chain_index`` values, e.g. ``[[0, 1], [2, 3]]``), an
        :class:`inference.modes.ChainModes`, an :class:`inference.diagnose.Diagnostics` (its
        ``modes``) or the posterior DataTree (grouped by :func:`inference.modes.chain_modes`).
        Default: the grouping :func:`attractors` stored (coordinate ``chain_mode``), else one
        mode.

    Returns
    -------
    pandas.DataFrame
        One row per quantity: ``quantity`` ("P(line attractor)", "P(number of stable fixed
        points = n)", ...), ``probability`` (pooled: the mean of the chains' probabilities, so
        modes weighted by their number of chains, :data:`POOLED_WEIGHTING`), ``mcse`` (see
        :data:`MCSE_METHOD`), ``per_chain`` (list, one value per chain), ``per_mode`` and
        ``per_mode_mcse`` (lists, one value per mode: the probability in that mode's chains and
        its MCSE), ``num_chains_per_mode`` (list), ``num_draws``. ``attrs`` holds ``modes`` (the
        chain groups) and ``pooled_weighting``.
    """
    import pandas as pd

    line = np.asarray(result["has_line_attractor"].values, bool)
    nstab = np.asarray(result["num_stable"].values, int)
    chain = np.asarray(result["chain_index"].values) if "chain_index" in result.coords else \
        np.zeros(len(line), int)
    chains = np.unique(chain)
    groups = _mode_groups(modes, result, chains)
    values = result["num_stable_value"].values if "num_stable_value" in result.coords else \
        np.arange(nstab.max() + 1 if nstab.size else 1)
    indicators = [("P(line attractor)", line)] + \
        [(f"P(number of stable fixed points = {int(n)})", nstab == int(n)) for n in values]
    rows = []
    for quantity, ind in indicators:
        p, se, per = indicator_probability(ind, chain, chains)
        pm, sm = _by_mode(ind, chain, chains, groups)
        rows.append({"quantity": quantity, "probability": p, "mcse": se,
                     "per_chain": [float(v) for v in per], "per_mode": pm, "per_mode_mcse": sm,
                     "num_chains_per_mode": [len(g) for g in groups], "num_draws": int(len(line))})
    table = pd.DataFrame(rows)
    table.attrs.update({"modes": groups, "pooled_weighting": POOLED_WEIGHTING})
    return table


def attractor_summary(result, modes=None) -> str:
    """A few lines summarising an :func:`inference.attractors` result.

    Parameters
    ----------
    result : xarray.Dataset
        The output of :func:`attractors`.
    modes : optional
        The chains' modes, as for :func:`attractor_probabilities`.

    Returns
    -------
    str
        Each probability with its Monte Carlo standard error and its value in each chain
        (:func:`attractor_probabilities`); when the chains split into more than one mode, each
        probability per mode (with its MCSE and number of chains) and how the pooled figure
        weights the modes (:data:`POOLED_WEIGHTING`); the line-attractor score.
    """
    table = attractor_probabilities(result, modes)
    n_chains = len(table["per_chain"].iloc[0])
    lines = []
    for i, row in enumerate(table.itertuples()):
        text = f"{row.quantity} = {row.probability:.3f} ± {row.mcse:.3f} (MCSE)"
        if n_chains > 1:
            text += "; per chain " + " ".join(f"{v:.2f}" for v in row.per_chain)
        if i == 0:
            text += f"   ({int(result.attrs.get('num_draws', row.num_draws))} posterior draws, {n_chains} " \
                    f"chain{'s' if n_chains > 1 else ''})"
        lines.append(text)
    groups = table.attrs["modes"]
    if len(groups) > 1:
        # say what the chains were grouped on only when it is known for these groups
        on = result.attrs.get("mode_quantities") if modes is None else \
            ", ".join(modes.separating) if isinstance(modes, ChainModes) and modes.separating else None
        lines.append(f"chains split into {len(groups)} modes: " + " | ".join(str(g) for g in groups)
                     + (f" (grouped on {on})" if on else "") + "; per mode:")
        for row in table.itertuples():
            lines.append(f"  {row.quantity}: " + " | ".join(
                f"{p:.3f} ± {se:.3f} ({n} chain{'s' if n > 1 else ''})"
                for p, se, n in zip(row.per_mode, row.per_mode_mcse, row.num_chains_per_mode, strict=True)))
        lines.append(f"  pooled figures above: {POOLED_WEIGHTING}")
    score = result["line_attractor_score"].values
    if np.isfinite(score).any():
        best = np.nanmax(np.where(np.isfinite(score), score, -np.inf), axis=1)
        best = best[np.isfinite(best)]
        if best.size:
            lo, hi = np.percentile(best, [5, 95])
            lines.append("line-attractor score log2(tau1/tau2) at fixed points: "
                         f"median {np.median(best):.2f} (90% interval {lo:.2f} .. {hi:.2f})")
    return "\n".join(lines)


def by_chain(result: xr.Dataset, name: str) -> xr.DataArray:
    """A per-draw variable of an :func:`attractors` result with dims (chain, draw, ...): the
    draws analysed from each chain side by side (chains of unequal length padded with NaN)."""
    da = result[name]
    if "draw" not in da.dims:
        raise ValueError(f"{name} is not a per-draw variable (dims {da.dims})")
    chain = np.asarray(result["chain_index"].values) if "chain_index" in result.coords else \
        np.zeros(result.sizes["draw"], int)
    chains = np.unique(chain)
    parts = []
    for c in chains:
        sel = np.flatnonzero(chain == c)
        drop = [v for v in ("draw", "chain_index", "draw_index") if v in da.coords]
        part = da.isel(draw=sel).drop_vars(drop)
        parts.append(part.assign_coords(draw=np.arange(len(sel))))
    out = xr.concat(parts, dim="chain", join="outer")
    labels = result["chain"].values if "chain" in result.coords and result.sizes.get("chain") == len(chains) \
        else chains
    return out.assign_coords(chain=labels).transpose("chain", "draw", ...)
