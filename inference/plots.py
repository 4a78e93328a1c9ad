"""Figures of the inference results: attractor maps over the posterior-mean flow field, and the
posterior latent path against the truth. Figures are drawn with matplotlib (imported on use); the
file-writing helpers use its non-interactive ``Agg`` backend.
"""

from __future__ import annotations

import os

import numpy as np
import xarray as xr

__all__ = ["plot_attractors", "attractor_figure", "latents_figure"]


def plot_attractors(result: xr.Dataset, which: str = "p_slow", ax=None, dims=(0, 1),
                    true_fixed_points=None, max_points: int = 2000, cmap: str = "Greys"):
    """Draw a posterior map under the posterior-mean flow field, fixed points marked by type.

    Parameters
    ----------
    result : xarray.Dataset
        The output of :func:`inference.attractors` (2-D maps).
    which : {"p_slow", "p_stable_in_cell", "speed_mean"}
        The map drawn as the background.
    ax : matplotlib Axes, optional
    dims : (int, int)
        Which latent dims (only 2-D latents are drawn).
    true_fixed_points : list of (location, kind), optional
        Overlaid as open markers (e.g. ``zoo.systems`` ground truth, in the same coordinates).
    max_points : int
        At most this many fixed points (pooled over draws) are scattered.

    Returns
    -------
    matplotlib Axes
    """
    import matplotlib.pyplot as plt

    from inference.attractors import KINDS

    if which not in ("p_slow", "p_stable_in_cell", "speed_mean"):
        raise ValueError(f"which must be 'p_slow', 'p_stable_in_cell' or 'speed_mean'; got {which!r}")
    if "grid_1" not in result.dims or "grid_2" in result.dims:
        raise ValueError("plot_attractors draws 2-D latent spaces only")
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4.5))
    g0, g1 = result["grid_0"].values, result["grid_1"].values
    img = result[which].values
    pm = ax.pcolormesh(g0, g1, img.T, cmap=cmap, shading="auto",
                       vmin=0, vmax=1 if which != "speed_mean" else None)
    plt.colorbar(pm, ax=ax, label={"p_slow": "P(|f(x)| < eps)", "p_stable_in_cell":
                                   "P(stable fixed point in cell)", "speed_mean": "|E f(x)|"}[which])
    flow = result["flow_mean"].values
    ax.streamplot(g0, g1, flow[..., 0].T, flow[..., 1].T, color="tab:blue", density=1.0,
                  linewidth=0.6, arrowsize=0.7)
    colors = {0: "tab:green", 1: "tab:red", 2: "tab:orange", 3: "tab:purple"}
    pts = result["fixed_points"].values.reshape(-1, result.sizes["latent"])
    kinds = result["kind"].values.reshape(-1)
    ok = kinds >= 0
    pts, kinds = pts[ok], kinds[ok]
    if len(pts) > max_points:
        sel = np.random.default_rng(0).choice(len(pts), max_points, replace=False)
        pts, kinds = pts[sel], kinds[sel]
    for code, name in enumerate(KINDS):
        s = kinds == code
        if s.any():
            ax.scatter(pts[s, dims[0]], pts[s, dims[1]], s=8, alpha=0.3, color=colors[code], label=name)
    if true_fixed_points:
        for loc, kind in true_fixed_points:
            code = KINDS.index(kind) if kind in KINDS else 3
            ax.scatter([loc[dims[0]]], [loc[dims[1]]], s=90, facecolors="none",
                       edgecolors=colors[code], linewidths=2)
    ax.set_xlim(g0[0], g0[-1])
    ax.set_ylim(g1[0], g1[-1])
    ax.set_xlabel(f"latent {dims[0]}")
    ax.set_ylabel(f"latent {dims[1]}")
    ax.set_title(f"P(line attractor) = {float(result['p_line_attractor']):.2f}")
    if ax.get_legend_handles_labels()[0]:  # no fixed point in any draw: nothing to explain
        ax.legend(loc="upper right", fontsize=7)
    return ax


def attractor_figure(result, path: str | os.PathLike, title: str | None = None,
                     true_fixed_points=None) -> None:
    """Two panels over the posterior-mean flow field: P(|f(x)| < eps) and P(stable fixed point)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), constrained_layout=True)
    plot_attractors(result, which="p_slow", ax=axes[0], true_fixed_points=true_fixed_points)
    plot_attractors(result, which="p_stable_in_cell", ax=axes[1], true_fixed_points=true_fixed_points)
    axes[0].set_title(f"slow points; P(line attractor) = {float(result['p_line_attractor']):.2f}")
    axes[1].set_title("P(stable fixed point in cell)")
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def latents_figure(post, data, path) -> None:
    """Posterior-mean latent path of the first trial next to the true one (up to an affine map)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = post["posterior"]["x"].values  # (chain, draw, [trial,] time, latent)
    xm = x.reshape((-1,) + x.shape[2:]).mean(0)
    xt = data["x"].values
    if xm.ndim == 3:
        xm, xt = xm[0], xt[0]
    T = min(len(xm), len(xt))
    xm, xt = xm[:T], xt[:T]
    A = np.c_[xm, np.ones(T)]
    coef, *_ = np.linalg.lstsq(A, xt, rcond=None)
    xa = A @ coef
    t = np.arange(T) * float(data.attrs.get("dt", 1.0))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2), constrained_layout=True)
    for d in range(2):
        axes[d].plot(t, xt[:, d], "k", lw=1.5, label="true")
        axes[d].plot(t, xa[:, d], "tab:blue", lw=1.2, label="posterior mean (affinely aligned)")
        axes[d].set_xlabel("time (s)")
        axes[d].set_ylabel(f"latent {d}")
    axes[0].legend(fontsize=7)
    fig.savefig(path, dpi=100)
    plt.close(fig)
