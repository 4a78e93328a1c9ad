"""``inference.diagnose``: convergence diagnostics on identified quantities with a clear verdict.

State-indexed variables are first aligned across chains and draws (:func:`inference.align.
align_labels`), then rank-normalised split R-hat, bulk and tail ESS (``arviz_stats``), the
divergence count and the E-BFMI are computed. The verdict is ``"fail"`` for NaN/inf draws,
R-hat > 1.05, more than 1 % divergent transitions or ESS < 100; ``"warning"`` for R-hat > 1.01,
any divergence, ESS < 400, E-BFMI < 0.3 or an SVI fit that did not converge; ``"ok"`` otherwise.
Every problem is listed in ``warnings`` and emitted as a ``RuntimeWarning``: nothing is silent.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import arviz_stats as azs
import numpy as np
import pandas as pd
import xarray as xr

from inference.align import align_labels

__all__ = ["diagnose", "Diagnostics"]

RHAT_FAIL, RHAT_WARN = 1.05, 1.01
ESS_FAIL, ESS_WARN = 100, 400
DIVERGENT_FAIL = 0.01
BFMI_WARN = 0.3


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
    """

    verdict: str
    table: pd.DataFrame
    warnings: list = field(default_factory=list)
    divergences: int = 0
    divergent_fraction: float = 0.0
    bfmi: np.ndarray | None = None
    aligned: xr.Dataset | None = None
    permutations: np.ndarray | None = None

    def __str__(self) -> str:
        lines = [f"verdict: {self.verdict}"] + [f"  - {w}" for w in self.warnings]
        return "\n".join(lines + [self.table.to_string()])

    __repr__ = __str__


def _worst(ds: xr.Dataset, name: str, fn) -> float:
    if name not in ds:
        return float("nan")
    v = np.asarray(ds[name].values, dtype=float)
    return float(fn(v)) if v.size else float("nan")


def diagnose(post: xr.DataTree, var_names: list[str] | None = None, *, emit: bool = True) -> Diagnostics:
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

    Returns
    -------
    Diagnostics
        ``.verdict`` ("ok" / "warning" / "fail"), ``.table``, ``.warnings``.
    """
    if "posterior" not in post.children:
        raise ValueError("post must have a 'posterior' group")
    ds = post["posterior"].to_dataset()
    if var_names is not None:
        missing = sorted(set(var_names) - set(ds.data_vars))
        if missing:
            raise ValueError(f"var_names {missing} are not posterior variables")
        ds = ds[list(var_names)]
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
    if mcmc and len(table):
        r, eb, et = table["rhat_max"].max(), table["ess_bulk_min"].min(), table["ess_tail_min"].min()
        worst_r = table["rhat_max"].idxmax() if np.isfinite(r) else None
        if not np.isfinite(r) and not table["nonfinite"].any():
            problems.append(("fail", "R-hat could not be computed (constant or degenerate draws)"))
        elif r > RHAT_FAIL:
            problems.append(("fail", f"R-hat {r:.3f} > {RHAT_FAIL} ({worst_r}): chains disagree"))
        elif r > RHAT_WARN:
            problems.append(("warning", f"R-hat {r:.3f} > {RHAT_WARN} ({worst_r})"))
        for label, e in (("bulk", eb), ("tail", et)):
            if np.isfinite(e) and e < ESS_FAIL:
                problems.append(("fail", f"{label} ESS {e:.0f} < {ESS_FAIL}"))
            elif np.isfinite(e) and e < ESS_WARN:
                problems.append(("warning", f"{label} ESS {e:.0f} < {ESS_WARN}"))
    n_div, frac, bfmi = 0, 0.0, None
    if "sample_stats" in post.children:
        ss = post["sample_stats"].to_dataset()
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
    if method == "svi" and not int(post.attrs.get("svi_converged", 1)):
        problems.append(("warning", "the SVI optimisation did not converge"))
    if method in ("svi", "smc"):
        problems.append(("note", f"{method}: draws are not a Markov chain; R-hat/ESS not computed"))
    levels = [lvl for lvl, _ in problems]
    verdict = "fail" if "fail" in levels else "warning" if "warning" in levels else "ok"
    msgs = [f"{lvl.upper()}: {m}" for lvl, m in problems]
    if emit:
        for lvl, m in problems:
            if lvl != "note":
                warnings.warn(f"diagnose: {m}", RuntimeWarning, stacklevel=2)
    return Diagnostics(verdict, table, msgs, n_div, frac, bfmi, aligned, perms)
