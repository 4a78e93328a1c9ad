"""Gaussian SLDS (standard transitions) on NASCAR: the blocked sampler against NumPyro's
funsor-enumerated NUTS of the same model, in bulk ESS per second, one chain each, in one run.

Model: ``SLDS(4, 2, 10, transitions="standard")`` on ``zoo.datasets.nascar`` (T steps, seed
``--seed``). The funsor program is the same model written the usual NumPyro way: the path x
one latent site (centred), z_t enumerated in parallel inside ``contrib.control_flow.scan``,
the same priors, site names and data frame (``model.frame_emissions``). Its potential is
checked against the zoo program's (z summed out by the project's own handlers) at one point.

Each sampler runs one chain from the point fit (``model.initial_params``; the blocked sampler
from its own default start, which is the same fit): a warmup, then a timed sampling call,
compiled ahead, whose draws give the bulk ESS of label-invariant quantities (the sampling call is one compiled scan of
the adapted kernel: ``MCMC.run`` recompiled the blocked kernel's loop at every call): the sorted eigenvalue moduli of all A_k
and the emission noise scales. ESS per second = the smallest of those ESS / the timed call's
seconds. The ratio is the blocked sampler's over funsor's.

Usage: ``./dev bench slds_funsor [--steps 2000] [--funsor-warmup 150] [--funsor-samples 150]
[--blocked-warmup 500] [--blocked-samples 1000]``; writes
``benchmarks/results/slds_funsor.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from nascar import make_funsor_model  # benchmarks/ is on the path when run as a script

from inference.convert import package_versions
from zoo import SLDS
from zoo.datasets import nascar

RESULTS = Path(__file__).parent / "results"


def invariant_ess(samples) -> dict:
    """Bulk ESS of the sorted eigenvalue moduli of all A_k and the emission noise scales, one
    chain (S draws)."""
    import arviz as az

    A = np.asarray(samples["dynamics"])  # (S, K, D, D)
    mods = np.sort(np.abs(np.linalg.eigvals(A)).reshape(A.shape[0], -1), axis=-1)
    cols = {f"eig_modulus_{i}": mods[:, i] for i in range(mods.shape[1])}
    for i, v in enumerate(np.asarray(samples["emission_noise"]).T):
        cols[f"emission_noise_{i}"] = v
    return {k: float(az.ess(v[None, :], method="bulk")) for k, v in cols.items()}


def _timed_scan(step, state, num_samples, seed) -> dict:
    """Run ``step(state, key) -> (state, draws)`` num_samples times in one compiled scan
    (compiled ahead, untimed); the run's time and its draws' ESS."""

    def run(state, key):
        return jax.lax.scan(step, state, jax.random.split(key, num_samples))

    key = jax.random.key(seed + 1)
    compiled = jax.jit(run).lower(state, key).compile()
    t0 = time.perf_counter()
    _, draws = jax.block_until_ready(compiled(state, key))
    t_run = time.perf_counter() - t0
    ess = invariant_ess(draws)
    worst = min(ess, key=ess.get)
    return {"samples": num_samples, "sampling_seconds": t_run, "ess_bulk": ess, "ess_bulk_min": ess[worst],
            "ess_bulk_min_quantity": worst, "ess_bulk_min_per_second": ess[worst] / t_run}


def timed_nuts_chain(program, y, num_warmup, num_samples, seed, init, max_tree_depth) -> dict:
    """NumPyro NUTS on ``program``: warmup through ``numpyro.infer.MCMC``, then the sampling
    kernel in one compiled scan (:func:`_timed_scan`)."""
    from numpyro.infer import MCMC, NUTS

    kernel = NUTS(program, max_tree_depth=max_tree_depth)
    mcmc = MCMC(kernel, num_warmup=num_warmup, num_samples=1, num_chains=1, progress_bar=False)
    t0 = time.perf_counter()
    mcmc.warmup(jax.random.key(seed), y, init_params=init)
    t_warm = time.perf_counter() - t0
    constrain = kernel.postprocess_fn((y,), {})

    def step(state, key):
        state = kernel.sample(state._replace(rng_key=key), (y,), {})
        c = constrain(state.z)
        return state, {k: c[k] for k in ("dynamics", "emission_noise")}

    return {"warmup": num_warmup, "warmup_seconds_incl_compile": t_warm,
            **_timed_scan(step, mcmc.post_warmup_state, num_samples, seed)}


def timed_blocked_chain(model, y, num_warmup, num_samples, seed) -> dict:
    """The blocked sampler: warmup through ``numpyro.infer.MCMC``
    (:class:`inference.blocked_kernel.BlockedKernel`), then the adapted sweep as a
    BlackJAX-style algorithm in one compiled scan (:func:`_timed_scan`)."""
    from numpyro.infer import MCMC

    from inference.blocked_kernel import BlockedKernel, blocked_algorithm

    kernel = BlockedKernel(model)
    mcmc = MCMC(kernel, num_warmup=num_warmup, num_samples=1, num_chains=1, progress_bar=False)
    t0 = time.perf_counter()
    mcmc.warmup(jax.random.key(seed), y)
    t_warm = time.perf_counter() - t0
    last = mcmc.post_warmup_state
    alg = blocked_algorithm(kernel.blocks, last.adapt.step_size, last.adapt.inverse_mass)

    def step(state, key):
        state, _ = alg.step(key, state)
        rec = kernel.blocks.record(state.hmc.position, state.states, state.path)
        return state, {k: rec[k] for k in ("dynamics", "emission_noise")}

    state = alg.init(last.sweep.hmc.position, last.sweep.states, last.sweep.path)
    return {"warmup": num_warmup, "warmup_seconds_incl_compile": t_warm,
            **_timed_scan(step, state, num_samples, seed)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--funsor-warmup", type=int, default=150)
    ap.add_argument("--funsor-samples", type=int, default=150)
    ap.add_argument("--max-tree-depth", type=int, default=10)
    ap.add_argument("--blocked-warmup", type=int, default=500)
    ap.add_argument("--blocked-samples", type=int, default=1000)
    ap.add_argument("--name", default="slds_funsor")
    args = ap.parse_args(argv)
    jax.config.update("jax_enable_x64", True)  # as inference.fit runs the blocked sampler
    from numpyro.infer.util import initialize_model

    from inference.starts import initial_positions, latent_sites

    data = nascar(seed=args.seed, num_steps=args.steps)
    y = jnp.asarray(data["y"])
    model = SLDS(4, 2, y.shape[-1], transitions="standard")
    frame = model.data_frame(np.asarray(y))
    fmodel = make_funsor_model(model, frame)
    key = jax.random.key(args.seed)
    centred = model.initial_params(np.asarray(y), key, frame=frame)
    # the start in the zoo program's coordinates (the same sites and transforms as funsor's; the
    # enumerated program cannot be traced without funsor's handlers)
    kw = {"frame": frame}
    latent = latent_sites(model, y, kw, values=centred)
    z0, _ = initial_positions(model, y, kw, {k: v for k, v in centred.items() if k in latent}, key, 1, latent)
    start = jax.tree.map(lambda v: v[0], z0)

    # the two programs' densities agree (the zoo program sums z out with its own handlers)
    potentials = {name: initialize_model(jax.random.key(0), m, model_args=(y,), model_kwargs=kw).potential_fn
                  for name, m, kw in (("zoo", model, {"frame": frame}), ("funsor", fmodel, {}))}
    check = {name: float(f(start)) for name, f in potentials.items()}
    grad = jax.jit(jax.value_and_grad(potentials["funsor"]))
    jax.block_until_ready(grad(start))
    times = []
    for _ in range(10):
        t0 = time.perf_counter()
        jax.block_until_ready(grad(start))
        times.append(time.perf_counter() - t0)
    print(f"potentials at the start {check}; funsor value+grad {1e3 * np.median(times):.1f} ms", flush=True)

    runs = {}
    t0 = time.perf_counter()
    runs["funsor"] = timed_nuts_chain(fmodel, y, args.funsor_warmup, args.funsor_samples, args.seed, start,
                                      args.max_tree_depth)
    print("funsor", runs["funsor"], f"({time.perf_counter() - t0:.0f} s)", flush=True)
    t0 = time.perf_counter()
    runs["blocked"] = timed_blocked_chain(model, y, args.blocked_warmup, args.blocked_samples, args.seed)
    print("blocked", runs["blocked"], f"({time.perf_counter() - t0:.0f} s)", flush=True)
    ratio = runs["blocked"]["ess_bulk_min_per_second"] / runs["funsor"]["ess_bulk_min_per_second"]
    res = {"T": args.steps, "seed": args.seed, "potentials_at_start": check,
           "funsor_value_and_grad_median_s": float(np.median(times)), "max_tree_depth": args.max_tree_depth,
           "runs": runs, "ratio_blocked_over_funsor_ess_per_second": ratio, "versions": package_versions(),
           "date": time.strftime("%Y-%m-%d")}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(res, indent=2))
    lines = [f"# Gaussian SLDS on NASCAR T = {args.steps}: blocked sampler vs funsor-enumerated NUTS", "",
             f"Measured {res['date']} on this machine (2 cores), one chain each, in one run; "
             f"float64. Potentials of the two programs at the funsor start: {check}.", "",
             "| sampler | warmup | timed draws | sampling s | min bulk ESS (quantity) | ESS / s |",
             "|---|---:|---:|---:|---|---:|"]
    for name, r in runs.items():
        lines.append(f"| {name} | {r['warmup']} | {r['samples']} | {r['sampling_seconds']:.1f} | "
                     f"{r['ess_bulk_min']:.1f} ({r['ess_bulk_min_quantity']}) | {r['ess_bulk_min_per_second']:.3f} |")
    lines += ["", f"Ratio, blocked over funsor, of min bulk ESS per second: **{ratio:.1f}x**. Funsor's "
              f"value and gradient: {1e3 * np.median(times):.1f} ms (median of 10); NUTS max tree depth "
              f"{args.max_tree_depth}."]
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    jax.config.update("jax_platforms", "cpu")
    main()
