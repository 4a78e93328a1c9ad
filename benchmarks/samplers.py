"""Samplers side by side on the rSLDS NASCAR problem: ESS per second of BlackJAX ChEES-HMC (16
vectorized chains) vs NumPyro NUTS (4 chains), and SVI (structured guide) time-to-fit vs NUTS.

Run: ``./dev bench samplers [--num-steps T] [--warmup W] [--samples S]``. Writes
``benchmarks/results/samplers.json`` and ``samplers.md``. ESS is the bulk ESS after label
alignment (``inference.diagnose``), min and median over the parameters (every posterior variable
without a time axis) and over the latent path; figures are ratios, absolute times beside them.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time
import warnings

import jax
import numpy as np

import inference
from zoo.datasets import nascar

OUT = pathlib.Path(__file__).parent / "results"


def ess_figures(post) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = inference.diagnose(post)
    dims = {k: post.posterior[k].dims for k in post.posterior.data_vars}
    params = [k for k in d.table.index if "time" not in dims[k]]
    paths = [k for k in d.table.index if "time" in dims[k]]
    return {"ess_bulk_min_params": float(d.table.loc[params, "ess_bulk_min"].min()),
            "ess_bulk_median_params": float(np.median(d.table.loc[params, "ess_bulk_min"])),
            "ess_bulk_min_path": float(d.table.loc[paths, "ess_bulk_min"].min()) if paths else None,
            "rhat_max": float(d.table["rhat_max"].max()), "divergences": d.divergences,
            "verdict": d.verdict}


def run(method: str, model, y, **kw) -> dict:
    t0 = time.perf_counter()
    post = inference.fit(model, y, method, progress_bar=False, **kw)
    wall = time.perf_counter() - t0
    out = {"method": method, "wall_seconds": wall, "sampling_seconds": float(post.attrs["sampling_time"]),
           "num_chains": int(post.posterior.sizes["chain"]), "num_draws": int(post.posterior.sizes["draw"]),
           "initialization": post.attrs["initialization"]}
    if method == "svi":
        out.update(svi_seconds=float(post.attrs["svi_time"]), svi_converged=int(post.attrs["svi_converged"]),
                   svi_steps=int(post.attrs["svi_steps"]))
    else:
        out.update(ess_figures(post))
        out["ess_per_second_min_params"] = out["ess_bulk_min_params"] / out["sampling_seconds"]
        out["ess_per_second_median_params"] = out["ess_bulk_median_params"] / out["sampling_seconds"]
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--num-steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=400)
    ap.add_argument("--samples", type=int, default=400)
    ap.add_argument("--chees-chains", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    data = nascar(seed=args.seed, num_steps=args.num_steps)
    model, y = data["model"], np.asarray(data["y"])
    common = dict(num_warmup=args.warmup, num_samples=args.samples, seed=args.seed, init="auto")
    results = {
        "problem": f"rSLDS NASCAR (K=4, D=2, N={y.shape[-1]}, T={args.num_steps})",
        "devices": jax.local_device_count(), "backend": jax.default_backend(),
        "nuts": run("nuts", model, y, num_chains=4, chain_method="vectorized", **common),
        "chees": run("chees", model, y, num_chains=args.chees_chains, **common),
        "svi": run("svi", model, y, num_samples=args.samples, seed=args.seed),
    }
    n, c, s = results["nuts"], results["chees"], results["svi"]
    results["ratios"] = {
        "chees_over_nuts_ess_per_second_min_params": c["ess_per_second_min_params"] / n["ess_per_second_min_params"],
        "chees_over_nuts_ess_per_second_median_params":
            c["ess_per_second_median_params"] / n["ess_per_second_median_params"],
        "nuts_wall_over_svi_wall": n["wall_seconds"] / s["wall_seconds"],
    }
    OUT.mkdir(exist_ok=True)
    (OUT / "samplers.json").write_text(json.dumps(results, indent=2, default=float))
    rows = [
        "| run | chains x draws | sampling s | wall s | min bulk ESS (params) | min ESS/s | median ESS/s | R-hat max | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in (n, c):
        rows.append(f"| {r['method']} | {r['num_chains']} x {r['num_draws']} | {r['sampling_seconds']:.1f} | "
                    f"{r['wall_seconds']:.1f} | {r['ess_bulk_min_params']:.0f} | {r['ess_per_second_min_params']:.2f} | "
                    f"{r['ess_per_second_median_params']:.2f} | {r['rhat_max']:.3f} | {r['verdict']} |")
    rows.append(f"| svi | 1 x {s['num_draws']} | {s['svi_seconds']:.1f} (fit) | {s['wall_seconds']:.1f} | - | - | - | - | "
                f"{'converged' if s['svi_converged'] else 'not converged'} |")
    ratios = results["ratios"]
    text = "\n".join([
        f"# Samplers on {results['problem']}", "",
        f"ChEES ({c['num_chains']} chains) / NUTS (4 chains), ESS per second, min over parameters: "
        f"**{ratios['chees_over_nuts_ess_per_second_min_params']:.2f}**; median: "
        f"**{ratios['chees_over_nuts_ess_per_second_median_params']:.2f}**.",
        f"NUTS wall time / SVI wall time: **{ratios['nuts_wall_over_svi_wall']:.1f}**.", "", *rows, "",
        f"{results['devices']} {results['backend']} device(s); machine shared with other jobs, so absolute times "
        "are indicative only.", ""])
    (OUT / "samplers.md").write_text(text)
    print(text)
    return results


if __name__ == "__main__":
    main()
