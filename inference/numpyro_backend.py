"""NUTS and HMC through NumPyro's ``MCMC`` (its own progress bar, parallel or vectorized chains).

Compiled samplers are cached by model, sizes and options (``jit_model_args=True``), so repeated
fits of the same model to new data of the same shape (simulation-based calibration, refits)
reuse the compiled code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import numpy as np
from numpyro.infer import HMC, MCMC, NUTS

from inference.starts import mcmc_backends

__all__ = ["run_numpyro", "cached_samplers", "NUMPYRO_OPTIONS", "BACKENDS"]

NUMPYRO_OPTIONS = {
    "nuts": {"target_accept_prob", "max_tree_depth", "dense_mass", "thinning"},
    "hmc": {"target_accept_prob", "num_steps", "trajectory_length", "dense_mass", "thinning"},
}
_EXTRA = ("diverging", "energy", "num_steps", "accept_prob", "adapt_state.step_size", "potential_energy")
_CACHE: dict = {}


def _kernel(model, method, opts):
    common = dict(target_accept_prob=float(opts.get("target_accept_prob", 0.8)),
                  dense_mass=_numpyro_dense_mass(opts.get("dense_mass", False)))
    if method == "nuts":
        return NUTS(model, max_tree_depth=int(opts.get("max_tree_depth", 10)), **common)
    if "num_steps" in opts:
        return HMC(model, num_steps=int(opts["num_steps"]), **common)
    return HMC(model, trajectory_length=float(opts.get("trajectory_length", 2 * np.pi)), **common)


def _dense_mass(value):
    """``dense_mass``: a bool, or groups of site names whose unconstrained coordinates share one
    dense block of the mass matrix (the rest stay diagonal), as NumPyro's structured mass."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    expected = f"dense_mass must be a bool or a list of tuples of site names; got {value!r}"
    if isinstance(value, str) or not isinstance(value, list | tuple) or not value:
        raise ValueError(expected)
    groups = [(g,) if isinstance(g, str) else tuple(g) for g in value]
    if not all(groups) or not all(isinstance(n, str) for g in groups for n in g):
        raise ValueError(expected)
    return groups


def _numpyro_dense_mass(value):
    # run_numpyro stores the groups as a tuple (hashable, for the sampler cache); NumPyro takes a list
    return value if isinstance(value, bool) else list(value)


def _mcmc(model, method, num_chains, num_warmup, num_samples, chain_method, progress_bar, opts, shapes):
    # x64 in the key: a sampler compiled in one precision must not serve the other (fit's
    # precision argument switches it per call)
    rest = (method, num_chains, num_warmup, num_samples, chain_method, progress_bar,
            tuple(sorted(opts.items())), shapes, bool(jax.config.jax_enable_x64))
    try:
        key = (model, *rest)
        hash(key)
    except TypeError:
        key = (id(model), *rest)
    mcmc = _CACHE.get(key)
    if mcmc is None:
        mcmc = MCMC(_kernel(model, method, opts), num_warmup=num_warmup, num_samples=num_samples,
                    num_chains=num_chains, chain_method=chain_method, progress_bar=progress_bar,
                    thinning=int(opts.get("thinning", 1)), jit_model_args=True)
        if len(_CACHE) > 16:
            _CACHE.clear()
        _CACHE[key] = mcmc
    return mcmc


def cached_samplers() -> list[MCMC]:
    """The compiled NumPyro samplers kept for reuse, oldest first: after a fit, the last one holds
    its adapted state (``last_state.adapt_state``: step size, inverse mass matrix)."""
    return list(_CACHE.values())


def run_numpyro(model: Callable, y, model_kwargs: Mapping, method: str, key, *, num_chains: int,
                num_warmup: int, num_samples: int, chain_method: str, init_positions: Mapping,
                progress_bar: bool, options: Mapping) -> tuple[dict, dict]:
    """Run NumPyro NUTS or HMC.

    Parameters
    ----------
    model : callable
    y : array (T, N) or (B, T, N)
        Possibly sharded over devices along the trial axis.
    model_kwargs : mapping
    method : {"nuts", "hmc"}
    key : jax.random key
    num_chains, num_warmup, num_samples : int
    chain_method : {"parallel", "vectorized", "sequential"}
    init_positions : dict name -> array (num_chains, ...)
        Unconstrained starting points.
    progress_bar : bool
    options : mapping
        Kernel options (``target_accept_prob``, ``max_tree_depth``, ``dense_mass`` (bool, or a
        list of tuples of latent site names, each tuple one dense block),
        ``num_steps`` / ``trajectory_length`` for HMC, ``thinning``).

    Returns
    -------
    samples : dict name -> array (C, S, ...)
        Latent and deterministic sites, constrained.
    stats : dict name -> array (C, S)
        ``diverging``, ``energy``, ``n_steps``, ``tree_depth`` (NUTS), ``acceptance_rate``,
        ``step_size``, ``lp``.
    """
    shapes = (np.shape(y), tuple(sorted((k, tuple(np.shape(a) for a in jax.tree.leaves(v)))
                                        for k, v in model_kwargs.items())))
    options = dict(options)
    if "dense_mass" in options:  # validated and normalised once, here
        groups = _dense_mass(options["dense_mass"])
        if not isinstance(groups, bool):
            unknown = sorted({n for g in groups for n in g} - set(init_positions))
            if unknown:
                raise ValueError(f"dense_mass names sites the model does not sample: {unknown}; "
                                 f"latent sites are {sorted(init_positions)}")
            groups = tuple(groups)
        options["dense_mass"] = groups
    mcmc = _mcmc(model, method, num_chains, num_warmup, num_samples, chain_method, progress_bar,
                 options, shapes)
    init = dict(init_positions)
    if num_chains == 1:
        init = jax.tree.map(lambda v: v[0], init)
    mcmc.run(key, y, extra_fields=_EXTRA, init_params=init, **model_kwargs)
    samples = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
    ex = {k: np.asarray(v) for k, v in mcmc.get_extra_fields(group_by_chain=True).items()}
    stats = {
        "diverging": ex["diverging"].astype(bool),
        "energy": ex["energy"],
        "n_steps": ex["num_steps"].astype(np.int64),
        "acceptance_rate": ex["accept_prob"],
        "step_size": ex["adapt_state.step_size"],
        "lp": -ex["potential_energy"],
    }
    if method == "nuts":
        n = np.maximum(stats["n_steps"], 1)
        stats["tree_depth"] = (np.floor(np.log2(n)).astype(np.int64) + 1)
    return samples, stats


BACKENDS = mcmc_backends("numpyro", NUMPYRO_OPTIONS, run_numpyro)
