"""Simulation-based calibration (Talts et al., 2018) of NUTS on a zoo model, all replications in
one compiled program.

Each replication draws parameters and data from the model's prior predictive, runs NUTS on that
data set, and records the rank of the true value of each summary among the (thinned) posterior
draws. If the sampler and the model's marginalization are correct, every rank is uniform on
``0..L`` (``L`` = number of thinned draws). All replications run inside one compiled program of
NumPyro's functional NUTS kernel (``numpyro.infer.hmc.hmc``): a ``jax.lax.map`` over replications,
compiled once, far faster on a CPU than one ``MCMC`` run after another. By default the replications
run one after another inside it rather than as one ``jax.vmap``: under ``vmap`` NUTS' tree-building
loop runs until the longest trajectory in the batch has finished, so every replication pays for the
deepest tree of any (a 2-state HMM, T = 30, 120 replications: 24 leapfrog steps per iteration on
average, 170 for the batch maximum; 38 s of sampling against 8 s one by one).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer import init_to_median
from numpyro.infer.hmc import hmc
from numpyro.infer.util import initialize_model
from scipy import stats

__all__ = ["SBCResult", "sbc_ranks", "sbc_blocked_ranks", "rank_uniformity", "rank_statistics"]


class SBCResult(NamedTuple):
    """SBC output; ``name`` runs over the summaries.

    ranks[name] : (num_reps,) rank of the truth among the thinned draws, in ``0..num_ranks-1``.
    num_ranks : number of possible rank values (thinned draws + 1).
    truth[name] : (num_reps,) true summary per replication.
    draws[name] : (num_reps, num_ranks - 1) thinned posterior draws of the summary.
    divergences : (num_reps,) divergent transitions after warmup, per replication.
    """

    ranks: dict
    num_ranks: int
    truth: dict
    draws: dict
    divergences: np.ndarray


def sbc_ranks(
    model: Callable,
    simulate: Callable,
    summaries: Callable,
    num_reps: int,
    num_warmup: int = 150,
    num_samples: int = 120,
    thin: int = 6,
    seed: int = 0,
    max_tree_depth: int = 8,
    batch_size: int | None = None,
) -> SBCResult:
    """Run simulation-based calibration of NUTS, all replications in one compiled program.

    Parameters
    ----------
    model : callable
        A NumPyro program called as ``model(y)``.
    simulate : callable
        ``simulate(key) -> (y, truth)``: one prior-predictive data set ``y`` (same shape every call)
        and the dict of true parameter values it was drawn from.
    summaries : callable
        ``summaries(params) -> dict name -> array``: scalar summaries of a parameter dict whose
        arrays carry leading batch axes (label-invariant summaries for mixture-like models).
    num_reps : int
        Number of replications (simulated data sets).
    num_warmup, num_samples : int
        NUTS warmup (step size and diagonal mass adaptation) and kept iterations per replication.
    thin : int
        Keep every ``thin``-th draw, so the ranks are over nearly independent draws.
    seed : int
        Seed of the simulations and of the samplers.
    max_tree_depth : int
        NUTS maximum tree depth.
    batch_size : int or None
        Replications vectorized together (``jax.lax.map``'s ``batch_size``); ``None`` (default) runs
        them one after another inside the compiled program, which is fastest on a CPU (see the
        module docstring).

    Returns
    -------
    SBCResult
        ``ranks[name]`` (num_reps,) integers in ``0..L`` with ``L = ceil(num_samples / thin)`` thinned
        draws, ``num_ranks = L + 1``, the true and drawn summaries, and divergences per replication.
    """
    _check_sizes(num_reps, num_warmup, num_samples, thin)
    key_sim, key_mcmc, key_init = jax.random.split(jax.random.key(seed), 3)
    sims = [simulate(k) for k in jax.random.split(key_sim, num_reps)]
    ys = jnp.stack([jnp.asarray(y) for y, _ in sims])
    truths = jax.tree.map(lambda *v: np.stack([np.asarray(x) for x in v]), *[t for _, t in sims])

    info = initialize_model(key_init, model, model_args=(ys[0],), dynamic_args=True,
                            init_strategy=init_to_median)
    init_kernel, sample_kernel = hmc(potential_fn_gen=info.potential_fn, algo="NUTS")
    z0, postprocess = info.param_info.z, info.postprocess_fn

    def one(key, y):
        state = init_kernel(z0, num_warmup, model_args=(y,), rng_key=key, max_tree_depth=max_tree_depth)

        def step(s, _):
            s = sample_kernel(s, model_args=(y,))
            return s, (s.z, s.diverging)

        state, _ = jax.lax.scan(step, state, None, length=num_warmup)
        _, (zs, div) = jax.lax.scan(step, state, None, length=num_samples)
        zs = jax.tree.map(lambda a: a[::thin], zs)
        return jax.vmap(postprocess(y))(zs), div.sum()

    run = jax.jit(lambda keys, ys: jax.lax.map(lambda a: one(*a), (keys, ys), batch_size=batch_size))
    draws, divergences = run(jax.random.split(key_mcmc, num_reps), ys)
    return _result(summaries, truths, draws, divergences, seed)


def _check_sizes(num_reps, num_warmup, num_samples, thin) -> None:
    for name, value in (("num_reps", num_reps), ("num_warmup", num_warmup), ("num_samples", num_samples),
                        ("thin", thin)):
        if int(value) < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if num_samples // thin < 2:
        raise ValueError(f"num_samples // thin must be at least 2, got {num_samples} // {thin}")


def _result(summaries: Callable, truths, draws, divergences, seed: int) -> SBCResult:
    """The ranks of the true summaries among the thinned draws' summaries."""
    draws = jax.tree.map(np.asarray, draws)
    true_s = {k: np.asarray(v) for k, v in summaries(truths).items()}
    draw_all = summaries(draws)
    draw_s = {k: np.asarray(draw_all[k]) for k in true_s}
    num_ranks = draw_s[next(iter(true_s))].shape[1] + 1
    return SBCResult(ranks=rank_statistics(draw_s, true_s, seed), num_ranks=num_ranks, truth=true_s,
                     draws=draw_s, divergences=np.asarray(divergences))


def rank_statistics(draws: Mapping, truth: Mapping, seed: int) -> dict:
    """Rank of each truth among its draws: the number of draws below it, plus a uniform share of
    the draws equal to it. Why the share: a discrete summary (a state occupancy, a count) ties
    with its draws, and counting only the draws strictly below would push every tied rank to
    the bottom of the histogram.

    Parameters
    ----------
    draws : mapping name -> array (num_reps, L)
        L posterior draws of each summary per replication.
    truth : mapping name -> array (num_reps,)
        The simulated truth of each summary.
    seed : int
        Seed of the random share among ties.

    Returns
    -------
    dict name -> int array (num_reps,)
        Ranks in 0 .. L.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for k in truth:
        below = (draws[k] < truth[k][:, None]).sum(axis=1)
        ties = (draws[k] == truth[k][:, None]).sum(axis=1)
        out[k] = below + rng.integers(0, ties + 1)
    return out


def rank_uniformity(ranks: np.ndarray, num_ranks: int, num_bins: int) -> tuple[np.ndarray, float]:
    """Chi-square test that ranks are uniform on ``0..num_ranks-1``.

    Parameters
    ----------
    ranks : array (num_reps,)
        Integer ranks.
    num_ranks : int
        Number of possible rank values; must be a multiple of ``num_bins`` so that every bin holds
        the same number of values (unequal bins would make a uniform histogram look non-uniform).
    num_bins : int
        Number of histogram bins.

    Returns
    -------
    counts : array (num_bins,)
    p_value : float
    """
    if num_ranks % num_bins:
        raise ValueError(f"num_bins must divide num_ranks, got num_ranks={num_ranks}, num_bins={num_bins}")
    ranks = np.asarray(ranks)
    if ranks.min() < 0 or ranks.max() >= num_ranks:
        raise ValueError(f"ranks must lie in 0..{num_ranks - 1}")
    counts = np.bincount(ranks // (num_ranks // num_bins), minlength=num_bins)
    return counts, float(stats.chisquare(counts).pvalue)


def sbc_blocked_ranks(
    model,
    simulate: Callable,
    summaries: Callable,
    num_reps: int,
    num_warmup: int = 150,
    num_samples: int = 120,
    thin: int = 6,
    seed: int = 0,
    model_kwargs: Mapping | None = None,
    options: Mapping | None = None,
    start: str = "estimate",
) -> SBCResult:
    """Simulation-based calibration of the blocked sampler (:mod:`inference.blocked`) of a
    switching model, all replications in one compiled program.

    Each replication runs one chain of the sweep with the same start and warmup as
    :func:`inference.fit` (the model's point estimate of its data set; Stan's windows, the step
    size by dual averaging, the inverse mass from the chain's curvature or Welford variances),
    and ranks the truth among the thinned draws.

    Parameters
    ----------
    model : zoo model
        A model with a blocked sampler (``model.blocked_sampler()``).
    simulate : callable
        ``simulate(key) -> (y, truth)``: a prior-predictive data set and the constrained values of
        every latent site of the program it was drawn from (the path included) and the states
        ``z``.
    summaries : callable
        ``summaries(values) -> dict name -> array``: scalar summaries of a dict of constrained
        values with leading batch axes (the recorded draws hold the parameters, the path and
        ``z``); label- and gauge-invariant for switching models.
    num_reps, num_warmup, num_samples, thin, seed : int
        As in :func:`sbc_ranks`.
    model_kwargs : mapping, optional
        Fixed program arguments; a model with a data-derived frame needs a fixed one here
        (e.g. ``{"frame": zoo.frame.default_frame(N, D)}``), since a frame computed from y would
        change the model with every y.
    options : mapping, optional
        The blocked sampler's options (``state_sweeps``, ``boundary_moves``, ``max_tree_depth``,
        ``target_accept_prob``, ``dense_mass``, ``mass_adaptation``).
    start : {"estimate", "prior"}
        Each chain's start: the model's point estimate of its data set (``initial_params``, then
        ``blocked_start``, as in :func:`inference.fit`), or an independent prior draw (another
        call's ``truth``), a harder test of the sampler's reach from afar.

    Returns
    -------
    SBCResult
    """
    from jax.flatten_util import ravel_pytree
    from numpyro.infer.util import unconstrain_fn

    from inference.blocked import (
        build_blocks,
        chain_starts,
        initial_inverse_mass,
        parameter_mask,
        start_state,
        sweep,
    )
    from inference.blocked_kernel import adapt_after_sweep
    from inference.blocked_warmup import adaptation_init, warmup_schedule

    _check_sizes(num_reps, num_warmup, num_samples, thin)
    spec = model.blocked_sampler()
    if spec is None:
        raise ValueError(f"model: {type(model).__name__} has no blocked sampler")
    kwargs = dict(model_kwargs or {})
    opts = dict(options or {})
    target = float(opts.get("target_accept_prob", 0.8))
    depth = int(opts.get("max_tree_depth", 8))
    dense = bool(opts.get("dense_mass", spec.collapsed))
    welford = str(opts.get("mass_adaptation", "curvature" if spec.collapsed else "welford")) == "welford"
    site = spec.path_site
    key_sim, key_start, key_mcmc = jax.random.split(jax.random.key(seed), 3)
    sims = [simulate(k) for k in jax.random.split(key_sim, num_reps)]
    ys = jnp.stack([jnp.asarray(y) for y, _ in sims])
    truths = jax.tree.map(lambda *v: np.stack([np.asarray(x) for x in v]), *[t for _, t in sims])

    def unconstrained(values, y):
        plain = {k: v for k, v in values.items() if k != "z"}
        u = unconstrain_fn(model, (y,), kwargs, plain)
        theta = {k: v for k, v in u.items() if k != site}
        if not spec.collapsed:
            theta[f"{site}_whitened"] = jnp.zeros_like(jnp.asarray(values[site]))
        return theta, jnp.asarray(values[site])

    if start == "estimate":  # as inference.fit: the model's point estimate of each data set
        firsts = []
        for i, y in enumerate(ys):
            k = jax.random.fold_in(key_start, i)
            estimate = model.initial_params(np.asarray(y), k)
            z0, run_kwargs, x_ref, _ = chain_starts(model, y, kwargs, k, 1, estimate)
            theta = {n: v[0] for n, v in z0.items() if n != site}
            if not spec.collapsed:
                theta[f"{site}_whitened"] = jnp.zeros_like(z0[site][0])
            extra = {n: jnp.asarray(v) for n, v in run_kwargs.items() if n not in kwargs}
            firsts.append((theta, jnp.asarray(z0[site][0]), extra, jnp.asarray(x_ref)))
    elif start == "prior":
        starts = [simulate(k)[1] for k in jax.random.split(key_start, num_reps)]
        firsts = [(*unconstrained(s, y), {}, jnp.zeros_like(jnp.asarray(s[site])))
                  for s, y in zip(starts, ys, strict=True)]
    else:
        raise ValueError(f"start must be 'estimate' or 'prior'; got {start!r}")
    theta_example = firsts[0][0]
    which = parameter_mask(theta_example)
    flat_starts = jnp.stack([ravel_pytree(f[0])[0] for f in firsts])
    path_starts = jnp.stack([f[1] for f in firsts])
    extras = jax.tree.map(lambda *v: jnp.stack(v), *[f[2] for f in firsts])
    refs = jnp.stack([f[3] for f in firsts])
    schedule = jnp.asarray(warmup_schedule(num_warmup, curvature=not welford))

    def one(key, y, flat, path, extra, ref):
        ref = None if spec.collapsed else ref
        blocks = build_blocks(model, y, {**kwargs, **extra}, spec, theta_example, ref,
                              str(opts.get("state_sampler", "collapsed")), int(opts.get("state_sweeps", 4)),
                              int(opts.get("boundary_moves", 8)), int(opts.get("max_shift", 8)))
        k0, kw, ks = jax.random.split(key, 3)
        state = start_state(blocks, k0, flat, path)
        one_chain = jax.tree.map(lambda v: v[None], state)
        inv0 = initial_inverse_mass(blocks, one_chain, which)[0]
        adapt = adaptation_init(inv0, 0.1, dense)

        def warm(carry, inp):
            state, ad = carry
            k, stage, i = inp
            new, info = sweep(k, state, blocks, ad.step_size, ad.inverse_mass, depth)
            ad = adapt_after_sweep(ad, stage, new, info, blocks, target, dense, welford,
                                   last=i == num_warmup - 1)
            return (new, ad), None

        (state, ad), _ = jax.lax.scan(warm, (state, adapt),
                                      (jax.random.split(kw, num_warmup), schedule, jnp.arange(num_warmup)))

        def draw(state, k):
            state, info = sweep(k, state, blocks, ad.step_size, ad.inverse_mass, depth)
            return state, (blocks.record(state.hmc.position, state.states, state.path), info.is_divergent)

        _, (rec, div) = jax.lax.scan(draw, state, jax.random.split(ks, num_samples))
        return jax.tree.map(lambda a: a[::thin], rec), div.sum()

    run = jax.jit(lambda *a: jax.lax.map(lambda b: one(*b), a))
    draws, divergences = run(jax.random.split(key_mcmc, num_reps), ys, flat_starts, path_starts, extras, refs)
    return _result(summaries, truths, draws, divergences, seed)
