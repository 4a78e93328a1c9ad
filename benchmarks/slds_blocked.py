"""Gaussian SLDS (standard transitions) fitted by the blocked sampler: convergence on identified
quantities, state accuracy and wall time.

Data: the NASCAR track (``zoo.datasets.nascar``, Gaussian emissions, N = 10) of length T; model:
``SLDS(4, 2, 10, transitions="standard")`` (the track's own transitions are recurrent, so the
model is misspecified in its transitions only). Fit: ``inference.fit(model, y)`` with its
default, the blocked sampler (states site by site with the path integrated out | NUTS with the
path collapsed | simulation smoother).

Identified quantities (unchanged by labels and the latent gauge): the total log-likelihood of
each draw, the denoised observations C x_t + d (every t and neuron), the sorted moduli of the
eigenvalues of all A_k, and the sorted state occupancy of the z draws. The bar: R-hat <= 1.01,
bulk and tail ESS >= 400, no divergences, median tree depth <= 5.

Usage: ``./dev bench slds_blocked [--steps 2000] [--chains 4] [--warmup 500] [--samples 1000]``;
writes ``benchmarks/results/slds_blocked.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import arviz_stats as azs
import jax
import numpy as np
import xarray as xr
from scipy.optimize import linear_sum_assignment

import inference
from inference.convert import package_versions
from inference.devices import use_cpu_devices
from zoo import SLDS
from zoo.datasets import nascar

RESULTS = Path(__file__).parent / "results"


def hungarian_accuracy(z_true, z_est, K):
    conf = np.zeros((K, K))
    np.add.at(conf, (z_true.ravel(), z_est.ravel()), 1)
    rows, cols = linear_sum_assignment(-conf)
    return conf[rows, cols].sum() / z_true.size


def identified(post, K, every: int = 1):
    p = post["posterior"]
    A = p["dynamics"].values  # (C, S, K, D, D)
    eig = np.sort(np.abs(np.linalg.eigvals(A)).reshape(A.shape[:2] + (-1,)), axis=-1)
    z = p["z"].values
    occ = np.sort(np.stack([(z == k).mean(-1) for k in range(K)], -1), axis=-1)
    C, d, x = p["emission_matrix"].values, p["emission_bias"].values, p["x"].values
    T = x.shape[2]
    steps = np.union1d(np.arange(0, T, every), [T - 1])  # the last step always (one-sided information)
    denoised = np.einsum("csnd,cstd->cstn", C, x[:, :, steps]) + d[:, :, None, :]
    ll = post["log_likelihood"]["y"].values.reshape(A.shape[:2] + (-1,)).sum(-1)
    return {"log_likelihood": ll, "eigenvalue_moduli": eig, "state_occupancy": occ, "denoised": denoised}


def summarise(q: dict) -> dict:
    out = {}
    for name, v in q.items():
        v = v.reshape(v.shape[:2] + (-1,))
        ds = xr.Dataset({"v": (("chain", "draw", "i"), v)})
        out[name] = {"rhat_max": float(azs.rhat(ds)["v"].max()),
                     "ess_bulk_min": float(azs.ess(ds, method="bulk")["v"].min()),
                     "ess_tail_min": float(azs.ess(ds, method="tail")["v"].min()),
                     "ess_bulk_median": float(np.median(azs.ess(ds, method="bulk")["v"]))}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default="slds_blocked")
    ap.add_argument("--state-sweeps", type=int, default=None, help="option state_sweeps (default: fit's)")
    ap.add_argument("--boundary-moves", type=int, default=None, help="option boundary_moves (default: fit's)")
    ap.add_argument("--window-length", type=int, default=None, help="option window_length (default: fit's)")
    ap.add_argument("--denoised-every", type=int, default=1,
                    help="denoised observations at every k-th step and the last (memory at long T)")
    ap.add_argument("--save", type=Path, default=None, help="also write the posterior DataTree here (NetCDF)")
    args = ap.parse_args(argv)
    use_cpu_devices(args.chains)  # one host device per chain (inference.devices.chain_mesh says why)
    data = nascar(seed=args.seed, num_steps=args.steps)
    y = data["y"]
    model = SLDS(4, 2, y.shape[-1], transitions="standard")
    t0 = time.perf_counter()
    opts = {k: v for k, v in (("state_sweeps", args.state_sweeps), ("boundary_moves", args.boundary_moves),
                              ("window_length", args.window_length)) if v is not None}
    post = inference.fit(model, y, num_chains=args.chains, num_warmup=args.warmup, num_samples=args.samples,
                         seed=args.seed, progress_bar=True, **opts)
    wall = time.perf_counter() - t0
    if args.save is not None:
        post.to_netcdf(args.save)
    q = identified(post, 4, args.denoised_every)
    summary = summarise(q)
    z = post["posterior"]["z"].values
    acc = [hungarian_accuracy(data["z"], z[c, -1], 4) for c in range(z.shape[0])]
    ss = post["sample_stats"]
    occ = q["state_occupancy"]
    # autocorrelation of the sorted occupancy across sweeps (the z-x coupling of the issue)
    lag1 = [float(np.corrcoef(occ[c, :-1, -1], occ[c, 1:, -1])[0, 1]) for c in range(occ.shape[0])]
    res = {
        "T": args.steps, "chains": args.chains, "denoised_every": args.denoised_every, "options": opts, "precision": post.attrs.get("precision"),
        "warmup": args.warmup, "samples": args.samples,
        "wall_time_s": wall, "sampling_time_s": float(post.attrs["sampling_time"]),
        "state_accuracy_last_draw_per_chain": acc,
        "divergences": int(ss["diverging"].values.sum()),
        "median_tree_depth": float(np.median(ss["tree_depth"].values)),
        "mean_n_steps": float(ss["n_steps"].values.mean()),
        "occupancy_lag1_autocorrelation_per_chain": lag1,
        "identified": summary, "versions": package_versions(),
        "date": time.strftime("%Y-%m-%d"), "host_devices": jax.local_device_count(),
    }
    worst = max(v["rhat_max"] for v in summary.values())
    ess_min = min(min(v["ess_bulk_min"], v["ess_tail_min"]) for v in summary.values())
    res["rhat_max_identified"], res["ess_min_identified"] = worst, ess_min
    res["converged"] = bool(worst <= 1.01 and ess_min >= 400 and res["divergences"] == 0)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(res, indent=2))
    lines = [f"# Gaussian SLDS (standard transitions), blocked sampler, NASCAR T = {args.steps}", "",
             f"Measured {res['date']} on this machine (2 cores, {res['host_devices']} host devices); "
             f"{args.chains} chains x ({args.warmup} warmup + "
             f"{args.samples} draws); `inference.fit(model, y)` defaults"
             + (f" except {opts}." if opts else ".")
             + (f" Denoised observations at every {args.denoised_every}th step and the last."
                if args.denoised_every > 1 else ""), "",
             "| figure | value |", "|---|---:|",
             f"| wall time (fit, incl. compilation and start) | {wall:.0f} s |",
             f"| R-hat max over identified quantities | {worst:.3f} |",
             f"| min bulk/tail ESS over identified quantities | {ess_min:.0f} |",
             f"| divergences | {res['divergences']} |",
             f"| median tree depth | {res['median_tree_depth']:.0f} |",
             f"| state accuracy (last draw, per chain) | {', '.join(f'{a:.3f}' for a in acc)} |",
             f"| lag-1 autocorrelation of the largest occupancy | {', '.join(f'{a:.2f}' for a in lag1)} |",
             f"| converged (R-hat <= 1.01, ESS >= 400, no divergences) | {res['converged']} |", "",
             "| identified quantity | R-hat max | bulk ESS min | tail ESS min | bulk ESS median |",
             "|---|---:|---:|---:|---:|"]
    for k, v in summary.items():
        lines.append(f"| {k} | {v['rhat_max']:.3f} | {v['ess_bulk_min']:.0f} | {v['ess_tail_min']:.0f} | "
                     f"{v['ess_bulk_median']:.0f} |")
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    jax.config.update("jax_platforms", "cpu")
    main()
