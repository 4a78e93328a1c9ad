"""``inference.diagnose``: convergence diagnostics on identified quantities with a clear verdict.

State-indexed variables are first aligned across chains and draws (:func:`inference.align.
align_labels`), then rank-normalised split R-hat, bulk and tail ESS (``arviz_stats``), the
divergence count and the E-BFMI are computed. The verdict is ``"fail"`` for NaN/inf draws,
R-hat > 1.05, more than 1 % divergent transitions, ESS < 100, a stuck chain (its log density, or
every draw of every variable, constant over all its draws) or a collapsed SMC run (fewer than
10 % unique particles, or a final weight ESS below 10 % of the particles); ``"warning"`` for
R-hat > 1.01, any divergence, ESS < 400, E-BFMI < 0.3, more than 10 % of NUTS trees at the
depth cap (``max_tree_depth`` from the fit's ``options``, default 10), a low SMC acceptance rate
or an SVI fit that did not converge; ``"ok"`` otherwise. When R-hat fails, the chains are grouped
into modes on identified quantities (:func:`inference.modes.chain_modes`: the total
log-likelihood, the sorted state occupancy, chosen aligned variables); a split into more than
one mode is listed with the problems ("chains split into 2 modes: [0, 1] | [2, 3] ...") and kept
in ``modes``; the verdict stays "fail". Every problem is listed in ``warnings`` and emitted as a
``RuntimeWarning``: nothing is silent. Sampler-specific figures (tree depth, SMC tempering steps,
weight ESS, unique particles and acceptance, the SVI loss) are in ``sampler`` and printed with the
verdict.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field

import arviz_stats as azs
import numpy as np
import pandas as pd
import xarray as xr

from inference.align import align_labels
from inference.modes import ChainModes, group_chains, identified_quantities

__all__ = ["diagnose", "Diagnostics", "identified_convergence", "identified_diagnostics"]

RHAT_FAIL, RHAT_WARN = 1.05, 1.01
ESS_FAIL, ESS_WARN = 100, 400
DIVERGENT_FAIL = 0.01
BFMI_WARN = 0.3
TREE_DEPTH_WARN = 0.10  # fraction of NUTS transitions at the depth cap
SMC_UNIQUE_FAIL = 0.10  # fraction of unique particles after the final resampling
SMC_ESS_FAIL = 0.10  # final weight ESS as a fraction of the particles
SMC_ACCEPT_WARN = 0.10  # mean acceptance rate of the SMC move steps
DEFAULT_MAX_TREE_DEPTH = 10  # NumPyro's and BlackJAX's default, used when the options omit it


@dataclass
class Diagnostics:
    """Result of :func:`diagnose`.

    Attributes
    ----------
    verdict : {"ok", "warning", "fail"}
    table : pandas.DataFrame
        One row per variable: ``size``, ``nonfinite``, ``rhat_max``, ``ess_bulk_min``,
        ``ess_tail_min`` (worst element of the variable).
    warnings : list of str
    divergences : int
    divergent_fraction : float
    bfmi : array (chain,) or None
    aligned : xarray.Dataset
        The posterior after label alignment.
    permutations : array (chain, draw, K)
        Label permutations applied (empty when there are no state variables).
    stuck_chains : list of int
        Chains whose log density (``sample_stats.lp``) or every draw of every variable is
        constant over all their draws.
    sampler : dict
        Sampler-specific figures: ``tree_depth`` (``max_tree_depth``, ``fraction_at_max``,
        ``per_chain``, ``mean_depth``) for NUTS; ``smc`` (``num_steps``, ``num_particles``,
        ``final_ess``, ``final_ess_fraction``, ``unique_particles``, ``unique_fraction``,
        ``acceptance_mean``, ``acceptance_min``, ``ess_per_step`` when recorded,
        ``log_evidence``); ``svi`` (``guide``, ``num_steps``, ``final_loss``, ``converged``,
        and a loss-trace summary when the trace is recorded).
    modes : list of list of int
        The chains of each mode (chain positions): one group of every chain unless R-hat failed
        and the chains split (:mod:`inference.modes`).
    mode_detail : inference.modes.ChainModes or None
        The grouping (per-mode means, pairwise R-hat and standardised differences) when it was
        computed (R-hat failed).
    """

    verdict: str
    table: pd.DataFrame
    warnings: list = field(default_factory=list)
    divergences: int = 0
    divergent_fraction: float = 0.0
    bfmi: np.ndarray | None = None
    aligned: xr.Dataset | None = None
    permutations: np.ndarray | None = None
    stuck_chains: list = field(default_factory=list)
    sampler: dict = field(default_factory=dict)
    modes: list = field(default_factory=list)
    mode_detail: ChainModes | None = None

    def __str__(self) -> str:
        lines = [f"verdict: {self.verdict}"] + [f"  - {w}" for w in self.warnings]
        if self.mode_detail is not None and self.mode_detail.num_modes > 1:
            # the split itself is in the warnings; here the per-mode means that tell modes apart
            lines += [f"  {line.strip()}" for line in str(self.mode_detail).splitlines()[1:]]
        lines += _sampler_lines(self.sampler)
        return "\n".join(lines + [self.table.to_string()])

    __repr__ = __str__


def _worst(ds: xr.Dataset, name: str, fn) -> float:
    if name not in ds:
        return float("nan")
    v = np.asarray(ds[name].values, dtype=float)
    return float(fn(v)) if v.size else float("nan")


def _attr_value(attrs, key: str, default=None):
    """A root attribute, JSON-decoded when it was stored as JSON text (``to_datatree`` stores
    dicts and lists that way)."""
    v = attrs.get(key, default)
    if isinstance(v, str):
        try:
            return json.loads(v)
        except json.JSONDecodeError:
            return v
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


def _chain_draw(da: xr.DataArray) -> np.ndarray:
    """Values with (chain, draw) leading, the rest flattened: (C, S, -1)."""
    v = np.asarray(da.transpose("chain", "draw", ...).values, dtype=float)
    return v.reshape(v.shape[:2] + (-1,))


def _stuck_chains(ds: xr.Dataset, ss: xr.Dataset | None, C: int, S: int) -> list[tuple[int, str]]:
    """Chains whose log density, or every draw of every variable, is constant over all draws."""
    if S < 2:
        return []
    lp = _chain_draw(ss["lp"]) if ss is not None and "lp" in ss and {"chain", "draw"} <= set(ss["lp"].dims) \
        else None
    values = [_chain_draw(da) for da in ds.data_vars.values() if {"chain", "draw"} <= set(da.dims)]
    out = []
    for c in range(C):
        if lp is not None and np.all(np.isfinite(lp[c])) and np.all(lp[c] == lp[c, :1]):
            out.append((c, f"its log density is constant ({float(lp[c, 0, 0]):.6g}) over all {S} draws"))
        elif values and all(np.array_equal(v[c], np.broadcast_to(v[c, :1], v[c].shape), equal_nan=True)
                            for v in values):
            out.append((c, f"every draw of every variable is identical over all {S} draws"))
    return out


def _tree_depth(ss: xr.Dataset, attrs, method: str) -> dict | None:
    """Fraction of NUTS transitions whose tree reached the depth cap."""
    if "tree_depth" in ss:
        depth = np.asarray(ss["tree_depth"].transpose("chain", "draw").values, dtype=float)
    elif "n_steps" in ss and method == "nuts":
        n = np.maximum(np.asarray(ss["n_steps"].transpose("chain", "draw").values, dtype=float), 1)
        depth = np.floor(np.log2(n)) + 1  # the NumPyro backend's definition
    else:
        return None
    if depth.size == 0:
        return None
    opts = _attr_value(attrs, "options", {})
    cap = opts.get("max_tree_depth", DEFAULT_MAX_TREE_DEPTH) if isinstance(opts, dict) else \
        DEFAULT_MAX_TREE_DEPTH
    if isinstance(cap, list | tuple):  # NumPyro accepts (warmup, sampling) caps
        cap = cap[-1]
    cap = int(cap)
    at = depth >= cap
    return {"max_tree_depth": cap, "fraction_at_max": float(at.mean()),
            "per_chain": [float(f) for f in at.mean(axis=1)], "mean_depth": float(np.nanmean(depth)),
            "max_depth_seen": int(np.nanmax(depth))}


def _unique_draws(ds: xr.Dataset) -> tuple[int, int]:
    """(unique draws, draws) over all variables jointly: the distinct particles of an SMC run."""
    rows = [_chain_draw(da).reshape(-1, int(np.prod(_chain_draw(da).shape[2:])))
            for da in ds.data_vars.values() if {"chain", "draw"} <= set(da.dims)]
    if not rows:
        return 0, 0
    flat = np.concatenate(rows, axis=1)
    flat = np.where(np.isnan(flat), np.inf, flat)  # NaN rows compare equal to each other
    return int(len(np.unique(flat, axis=0))), int(flat.shape[0])


def _smc(ds: xr.Dataset, attrs) -> tuple[dict, list[tuple[str, str]]]:
    """SMC's own diagnostics from the DataTree (see inference.smc.run_smc) and their problems."""
    problems: list[tuple[str, str]] = []
    unique, n = _unique_draws(ds)
    n_particles = int(attrs.get("num_samples", n) or n)
    info: dict = {"num_particles": n_particles, "unique_particles": unique,
                  "unique_fraction": unique / max(n, 1)}
    steps = _attr_value(attrs, "smc_iterations")
    if steps is not None:
        info["num_steps"] = int(steps)
    if "log_evidence" in attrs:
        info["log_evidence"] = float(attrs["log_evidence"])
    ess = _attr_value(attrs, "smc_ess")
    if ess is not None:
        info["final_ess"] = float(ess)
        info["final_ess_fraction"] = float(ess) / max(n_particles, 1)
    per_step = _attr_value(attrs, "smc_ess_per_step")
    if isinstance(per_step, list) and per_step:
        info["ess_per_step"] = [float(e) for e in per_step]
    acc = _attr_value(attrs, "smc_acceptance")
    if isinstance(acc, list) and acc:
        a = np.asarray(acc, dtype=float)
        info["acceptance_mean"] = float(np.mean(a))
        info["acceptance_min"] = float(np.min(a))
        info["acceptance_per_step"] = a.tolist()
    missing = [k for k, name in (("final_ess", "smc_ess"), ("num_steps", "smc_iterations"),
                                 ("acceptance_mean", "smc_acceptance"), ("ess_per_step", "smc_ess_per_step"))
               if k not in info]
    if missing:
        info["not_recorded"] = missing
    if n and info["unique_fraction"] < SMC_UNIQUE_FAIL:
        problems.append(("fail", f"SMC collapsed: only {unique} of {n} particles are distinct "
                                 f"({100 * info['unique_fraction']:.1f} % < {100 * SMC_UNIQUE_FAIL:.0f} %)"))
    if "final_ess" in info and not (info["final_ess_fraction"] >= SMC_ESS_FAIL):
        problems.append(("fail", f"SMC weight degeneracy: the final weights' ESS is {info['final_ess']:.1f} "
                                 f"of {n_particles} particles (< {100 * SMC_ESS_FAIL:.0f} %)"))
    if "ess_per_step" in info:
        frac = np.asarray(info["ess_per_step"]) / max(n_particles, 1)
        low = np.flatnonzero(~(frac >= SMC_ESS_FAIL))
        if low.size:
            first = f"first: step {int(low[0]) + 1}, ESS {info['ess_per_step'][low[0]]:.1f}"
            problems.append(("warning", f"SMC weight ESS below {100 * SMC_ESS_FAIL:.0f} % of the particles "
                                        f"at {low.size} tempering step(s) ({first})"))
    if "acceptance_mean" in info:
        if info["acceptance_mean"] == 0:
            problems.append(("fail", "SMC move steps never accepted a proposal: the particles were only "
                                     "resampled, never moved"))
        elif info["acceptance_mean"] < SMC_ACCEPT_WARN:
            problems.append(("warning", f"SMC mean acceptance rate {info['acceptance_mean']:.3f} < "
                                        f"{SMC_ACCEPT_WARN}: the move steps barely move the particles"))
    return info, problems


def _svi(post: xr.DataTree, attrs) -> tuple[dict, list[tuple[str, str]]]:
    """SVI's record in the DataTree (inference.svi_method.fit_svi) and its problems."""
    problems: list[tuple[str, str]] = []
    info: dict = {}
    for key, name in (("guide", "svi_guide"), ("num_steps", "svi_steps"), ("final_loss", "svi_final_loss"),
                      ("converged", "svi_converged"), ("seconds", "svi_time")):
        if name in attrs:
            info[key] = _attr_value(attrs, name)
    losses = _attr_value(attrs, "svi_losses")
    if losses is None:
        for group in ("svi", "sample_stats"):
            if group in post.children and "loss" in post[group].to_dataset():
                losses = np.asarray(post[group].to_dataset()["loss"].values).ravel().tolist()
                break
    if isinstance(losses, list) and losses:
        tr = np.asarray(losses, dtype=float)
        k = max(1, len(tr) // 10)
        last, prev = tr[-k:], tr[-2 * k:-k] if len(tr) >= 2 * k else tr[:k]
        info["loss_trace"] = {"length": int(len(tr)), "initial": float(tr[0]), "final": float(tr[-1]),
                              "min": float(np.nanmin(tr)), "last_10pct_mean": float(np.mean(last)),
                              "last_10pct_sd": float(np.std(last)),
                              "relative_change_last_10pct": float((np.mean(prev) - np.mean(last))
                                                                  / max(abs(np.mean(last)), 1e-12))}
        if not np.all(np.isfinite(tr)):
            bad = int((~np.isfinite(tr)).sum())
            problems.append(("fail", f"the SVI loss trace has {bad} NaN/inf values"))
    else:
        info["loss_trace"] = "not recorded"
    fl = info.get("final_loss")
    if fl is not None and not np.isfinite(float(fl)):
        problems.append(("fail", f"the SVI final loss is {fl}"))
    if not int(info.get("converged", 1)):
        problems.append(("warning", "the SVI optimisation did not converge"))
    return info, problems


def _sampler_lines(sampler: dict) -> list[str]:
    lines = []
    td = sampler.get("tree_depth")
    if td:
        per = " ".join(f"{100 * f:.0f}" for f in td["per_chain"])
        lines.append(f"tree depth: {100 * td['fraction_at_max']:.1f} % of transitions at max_tree_depth="
                     f"{td['max_tree_depth']} (per chain {per} %), mean depth {td['mean_depth']:.1f}")
    smc = sampler.get("smc")
    if smc:
        parts = []
        if "num_steps" in smc:
            parts.append(f"{smc['num_steps']} tempering steps")
        if "final_ess" in smc:
            parts.append(f"final weight ESS {smc['final_ess']:.1f} of {smc['num_particles']}")
        if "ess_per_step" in smc:
            parts.append(f"weight ESS per step min {min(smc['ess_per_step']):.1f}")
        parts.append(f"{smc['unique_particles']} unique particles ({100 * smc['unique_fraction']:.0f} %)")
        if "acceptance_mean" in smc:
            parts.append(f"acceptance mean {smc['acceptance_mean']:.2f} (min {smc['acceptance_min']:.2f})")
        if "log_evidence" in smc:
            parts.append(f"log evidence {smc['log_evidence']:.2f}")
        if smc.get("not_recorded"):
            parts.append("not recorded: " + ", ".join(smc["not_recorded"]))
        lines.append("SMC: " + "; ".join(parts))
    svi = sampler.get("svi")
    if svi:
        parts = [f"{k} {svi[k]}" for k in ("guide", "num_steps", "final_loss", "converged") if k in svi]
        tr = svi.get("loss_trace")
        if isinstance(tr, dict):
            parts.append(f"loss {tr['initial']:.4g} -> {tr['final']:.4g} (min {tr['min']:.4g}; last 10 %: "
                         f"mean {tr['last_10pct_mean']:.4g}, sd {tr['last_10pct_sd']:.3g}, relative change "
                         f"{tr['relative_change_last_10pct']:.2g})")
        else:
            parts.append("loss trace not recorded")
        lines.append("SVI: " + "; ".join(parts))
    return lines


def _modes(post: xr.DataTree, aligned: xr.Dataset, mode_vars: list[str] | None) -> ChainModes | None:
    """The chains' modes on identified quantities, None when there is nothing to compare."""
    q = identified_quantities(post, mode_vars, aligned=aligned)
    return group_chains(q) if q else None


def diagnose(post: xr.DataTree, var_names: list[str] | None = None, *, emit: bool = True,
             mode_vars: list[str] | None = None) -> Diagnostics:
    """Diagnose a result of :func:`inference.fit` (or any ArviZ DataTree with a posterior).

    Parameters
    ----------
    post : xarray.DataTree
        With a ``posterior`` group (chain, draw, ...) and optionally ``sample_stats``
        (``diverging``, ``energy``).
    var_names : list of str, optional
        Variables to diagnose (default: every posterior variable).
    emit : bool
        Also emit each problem as a ``RuntimeWarning``.
    mode_vars : list of str, optional
        Posterior variables (label-aligned) to group chains into modes on, besides the total
        log-likelihood and the sorted state occupancy (:func:`inference.modes.
        identified_quantities`; without either, every diagnosed variable). Give only variables
        your model identifies: a GP-SLDS's latent coordinates are free up to an affine map.

    Returns
    -------
    Diagnostics
        ``.verdict`` ("ok" / "warning" / "fail"), ``.table``, ``.warnings``, ``.modes``.
    """
    if "posterior" not in post.children:
        raise ValueError("post must have a 'posterior' group")
    ds = post["posterior"].to_dataset()
    if var_names is not None:
        missing = sorted(set(var_names) - set(ds.data_vars))
        if missing:
            raise ValueError(f"var_names {missing} are not posterior variables")
        ds = ds[list(var_names)]
    missing = sorted(set(mode_vars or ()) - set(post["posterior"].data_vars))
    if missing:  # checked up front, not only when R-hat fails and the modes are needed
        raise ValueError(f"mode_vars {missing} are not posterior variables")
    method = str(post.attrs.get("method", ""))
    aligned, perms = align_labels(ds)
    problems: list[tuple[str, str]] = []  # (level, message)
    C, S = aligned.sizes["chain"], aligned.sizes["draw"]
    rows = {}
    mcmc = method not in ("svi", "smc") and S >= 4
    rhat = azs.rhat(aligned) if mcmc else xr.Dataset()
    ess_b = azs.ess(aligned, method="bulk") if mcmc else xr.Dataset()
    ess_t = azs.ess(aligned, method="tail") if mcmc else xr.Dataset()
    for name, da in aligned.data_vars.items():
        vals = np.asarray(da.values, dtype=float)
        bad = int((~np.isfinite(vals)).sum())
        rows[name] = {"size": int(vals.size // max(C * S, 1)), "nonfinite": bad,
                      "rhat_max": _worst(rhat, name, np.nanmax),
                      "ess_bulk_min": _worst(ess_b, name, np.nanmin),
                      "ess_tail_min": _worst(ess_t, name, np.nanmin)}
        if bad:
            problems.append(("fail", f"{name}: {bad} NaN/inf values in the draws"))
    table = pd.DataFrame.from_dict(rows, orient="index")
    modes, mode_detail = [list(range(C))], None
    if mcmc and len(table):
        r, eb, et = table["rhat_max"].max(), table["ess_bulk_min"].min(), table["ess_tail_min"].min()
        worst_r = table["rhat_max"].idxmax() if np.isfinite(r) else None
        if not np.isfinite(r) and not table["nonfinite"].any():
            problems.append(("fail", "R-hat could not be computed (constant or degenerate draws)"))
        elif r > RHAT_FAIL:
            problems.append(("fail", f"R-hat {r:.3f} > {RHAT_FAIL} ({worst_r}): chains disagree"))
            if C >= 2:
                mode_detail = _modes(post, aligned, mode_vars)
                if mode_detail is not None and mode_detail.num_modes > 1:
                    modes = mode_detail.groups
                    problems.append(("fail", mode_detail.describe()))
        elif r > RHAT_WARN:
            problems.append(("warning", f"R-hat {r:.3f} > {RHAT_WARN} ({worst_r})"))
        for label, e in (("bulk", eb), ("tail", et)):
            if np.isfinite(e) and e < ESS_FAIL:
                problems.append(("fail", f"{label} ESS {e:.0f} < {ESS_FAIL}"))
            elif np.isfinite(e) and e < ESS_WARN:
                problems.append(("warning", f"{label} ESS {e:.0f} < {ESS_WARN}"))
    n_div, frac, bfmi = 0, 0.0, None
    sampler: dict = {}
    ss = post["sample_stats"].to_dataset() if "sample_stats" in post.children else None
    full = post["posterior"].to_dataset()
    stuck = _stuck_chains(full, ss, C, S) if method not in ("svi", "smc") else []
    # first in the list: a stuck chain explains the R-hat and ESS failures above it
    problems[:0] = [("fail", f"chain {c} is stuck: {why}") for c, why in stuck]
    if ss is not None:
        if "diverging" in ss:
            n_div = int(np.asarray(ss["diverging"].values).sum())
            frac = n_div / max(np.asarray(ss["diverging"].values).size, 1)
            if frac > DIVERGENT_FAIL:
                problems.append(("fail", f"{n_div} divergent transitions ({100 * frac:.1f} % > 1 %)"))
            elif n_div:
                problems.append(("warning", f"{n_div} divergent transitions ({100 * frac:.2f} %)"))
        if "energy" in ss and S >= 4:
            bfmi = np.asarray(azs.bfmi(post)["energy"].values, dtype=float)
            if np.any(bfmi < BFMI_WARN):
                problems.append(("warning", f"E-BFMI {np.nanmin(bfmi):.2f} < {BFMI_WARN}: poor energy "
                                            "exploration"))
        td = _tree_depth(ss, post.attrs, method)
        if td is not None:
            sampler["tree_depth"] = td
            if td["fraction_at_max"] > TREE_DEPTH_WARN:
                problems.append(("warning", f"{100 * td['fraction_at_max']:.1f} % of transitions hit the "
                                            f"maximum tree depth {td['max_tree_depth']} (> "
                                            f"{100 * TREE_DEPTH_WARN:.0f} %): trajectories are cut short; "
                                            "raise max_tree_depth or reparametrise"))
    if method == "smc":
        sampler["smc"], found = _smc(full, post.attrs)
        problems += found
    if method == "svi":
        sampler["svi"], found = _svi(post, post.attrs)
        problems += found
    if method in ("svi", "smc"):
        problems.append(("note", f"{method}: draws are not a Markov chain; R-hat/ESS not computed"))
    levels = [lvl for lvl, _ in problems]
    verdict = "fail" if "fail" in levels else "warning" if "warning" in levels else "ok"
    msgs = [f"{lvl.upper()}: {m}" for lvl, m in problems]
    if emit:
        for lvl, m in problems:
            if lvl != "note":
                warnings.warn(f"diagnose: {m}", RuntimeWarning, stacklevel=2)
    return Diagnostics(verdict, table, msgs, n_div, frac, bfmi, aligned, perms,
                       [c for c, _ in stuck], sampler, modes, mode_detail)


def identified_diagnostics(post) -> str:
    """:func:`identified_convergence`'s text: R-hat and ESS of the quantities every chain agrees on
    at convergence whatever the affine gauge of its latent coordinates (the latent path, emission
    matrix and drift weights of a GP-SLDS are identified only up to an affine map of x); "" when
    the posterior has no log-likelihood group or fewer than 2 chains of 4 draws."""
    if "log_likelihood" not in post.children or not post["log_likelihood"].to_dataset().data_vars:
        return ""
    sizes = post["posterior"].sizes
    if sizes.get("chain", 1) < 2 or sizes.get("draw", 0) < 4:
        return ""
    return identified_convergence(post)["text"]


def identified_convergence(post, res=None, max_rate_points: int = 4000) -> dict:
    """A convergence check on identified quantities only (the latent space of a GP-SLDS
    has no identifying frame, so its path, emission matrix, weights, partition and centres are
    compared across chains only up to an affine map): the total log-likelihood, the denoised
    log-rates C x_t + d (a deterministic subset of at most ``max_rate_points`` (trial, time,
    neuron) cells), and, from the attractor analysis, the per-draw line-attractor indicator and
    number of stable fixed points.

    Parameters
    ----------
    post : xarray.DataTree
    res : xarray.Dataset, optional
        :func:`inference.attractors` of ``post``.
    max_rate_points : int

    Returns
    -------
    dict
        ``rhat``, ``ess_bulk``, ``ess_tail`` per quantity (the worst over its elements),
        ``divergences``, ``min_bfmi``, ``verdict`` ("ok" at R-hat <= 1.01, bulk and tail ESS >= 400,
        no divergences and E-BFMI >= 0.3 on the log-likelihood and the rates; else "not
        converged"), ``text``.
    """
    ds = post["posterior"]
    out: dict = {}
    pieces = {}
    if "log_likelihood" in post.children:
        ll = post["log_likelihood"].to_dataset()
        v = np.asarray(next(iter(ll.data_vars.values())).values, float)
        pieces["total log-likelihood"] = v.reshape(v.shape[:2] + (-1,)).sum(-1)[..., None]
    if "emission_matrix" in ds and "x" in ds:
        C, d = ds["emission_matrix"].values, ds["emission_bias"].values
        x = ds["x"].values  # (chain, draw, [trial,] time, latent)
        x = x.reshape(x.shape[:2] + (-1, x.shape[-1]))
        rng = np.random.default_rng(0)
        n_cells = x.shape[2] * C.shape[2]
        pick = np.sort(rng.choice(n_cells, min(max_rate_points, n_cells), replace=False))
        t_idx, n_idx = np.divmod(pick, C.shape[2])
        eta = np.einsum("cskd,cskd->csk", x[:, :, t_idx], C[:, :, n_idx]) + d[:, :, n_idx]
        pieces["denoised log-rates"] = eta
    if res is not None and "has_line_attractor" in res:
        nc = int(res.attrs.get("num_chains", 1))
        ind = np.asarray(res["has_line_attractor"].values, float)
        ns = np.asarray(res["num_stable"].values, float)
        chain_index = np.asarray(res["chain_index"].values)
        counts = np.bincount(chain_index, minlength=nc)
        if nc > 1 and np.all(counts == counts[0]) and counts[0] >= 4:
            order = np.argsort(chain_index, kind="stable")
            pieces["P(line) indicator"] = ind[order].reshape(nc, -1)[..., None]
            pieces["number of stable fixed points"] = ns[order].reshape(nc, -1)[..., None]
    lines, ok = [], True
    for name, arr in pieces.items():
        dsx = xr.Dataset({"q": (("chain", "draw", "k"), np.asarray(arr, float))})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = np.asarray(azs.rhat(dsx)["q"].values, float)
            eb = np.asarray(azs.ess(dsx, method="bulk")["q"].values, float)
            et = np.asarray(azs.ess(dsx, method="tail")["q"].values, float)
        const = np.asarray(arr).std(axis=(0, 1)) == 0  # e.g. an indicator that never changes
        rr = float(np.nanmax(np.where(const, 1.0, r)))
        b = float(np.nanmin(np.where(const, np.inf, eb)))
        t = float(np.nanmin(np.where(const, np.inf, et)))
        out[name] = {"rhat": rr, "ess_bulk": b, "ess_tail": t, "size": int(np.shape(arr)[-1])}
        judged = name in ("total log-likelihood", "denoised log-rates")
        if judged and not (rr <= RHAT_WARN and b >= ESS_WARN and t >= ESS_WARN):
            ok = False
        src = "" if judged else ", from the attractor draws"
        lines.append(f"  {name} ({np.shape(arr)[-1]} value(s){src}): "
                     f"max R-hat {rr:.3f}, min bulk ESS {b:.0f}, min tail ESS {t:.0f}")
    ss = post["sample_stats"].to_dataset() if "sample_stats" in post.children else xr.Dataset()
    div = int(np.asarray(ss["diverging"].values).sum()) if "diverging" in ss else 0
    bfmi = None
    if "energy" in ss:
        bfmi = float(np.min(azs.bfmi(post)["energy"].values))
    ok = ok and div == 0 and (bfmi is None or bfmi >= BFMI_WARN) and bool(pieces)
    out.update(divergences=div, min_bfmi=bfmi, verdict="ok" if ok else "not converged")
    lines.append(f"  divergences {div}, min E-BFMI {bfmi if bfmi is None else round(bfmi, 3)}")
    head = (f"identified quantities: {out['verdict']} (R-hat <= {RHAT_WARN}, bulk and tail ESS >= "
            f"{ESS_WARN} on the log-likelihood and the rates, no divergences, E-BFMI >= {BFMI_WARN})")
    out["text"] = "\n".join([head] + lines)
    return out
