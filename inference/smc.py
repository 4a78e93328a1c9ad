"""Adaptive tempered SMC (BlackJAX) with the likelihood tempered through :class:`zoo.handlers.temper`.

The log-likelihood is the program's density at beta = 1 minus that at beta = 0 (observed sites
scaled away), evaluated at constrained values; the prior is the joint density in NumPyro's
unconstrained space (with the Jacobian) minus that log-likelihood. Particles
start as exact prior draws; each tempering step moves them with HMC whose diagonal mass matrix is
the particles' variance and whose step size follows the previous step's acceptance rate. The sum
of the log-likelihood increments is the log evidence, the log normalizer of the program's joint
density (for a program wrapped in ``numpyro.handlers.condition`` it includes the conditioned
sites' prior densities, which ``temper`` treats as observed).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import blackjax
import jax
import jax.numpy as jnp
import numpy as np
from blackjax.smc import resampling
from jax.flatten_util import ravel_pytree
from numpyro.infer import Predictive
from numpyro.infer.util import potential_energy, unconstrain_fn
from tqdm.auto import tqdm

from inference.backends import Backend, RunResult
from inference.blackjax_backend import log_density_fns
from inference.program import inspect_program
from zoo.handlers import temper

__all__ = ["run_smc", "SMC_OPTIONS"]

SMC_OPTIONS = {"target_ess", "num_mcmc_steps", "num_integration_steps", "max_iterations"}


def run_smc(model: Callable, y, model_kwargs: Mapping, key, num_particles: int, progress_bar: bool,
            options: Mapping) -> tuple[dict, dict, str, dict]:
    """Adaptive tempered SMC from the prior to the posterior.

    Parameters
    ----------
    model : callable
    y : array (T, N) or (B, T, N)
    model_kwargs : mapping
    key : jax.random key
    num_particles : int
    progress_bar : bool
    options : mapping
        ``target_ess`` (fraction, default 0.5), ``num_mcmc_steps`` (HMC moves per tempering
        step, default 10), ``num_integration_steps`` (leapfrog steps per move, default 8),
        ``max_iterations`` (default 500).

    Returns
    -------
    samples : dict name -> array (1, num_particles, ...)
        Equally weighted particles (resampled by the final weights), constrained.
    stats : dict name -> array (1, num_particles)
        ``lp`` (log joint, unconstrained).
    description : str
    attrs : dict
        ``log_evidence``, ``smc_iterations``, ``smc_ess`` (effective sample size of the final
        weights), ``tempering_schedule``, ``smc_acceptance``.

    Raises
    ------
    RuntimeError
        If the temperature does not reach 1 within ``max_iterations`` or the evidence is not finite.
    """
    target_ess = float(options.get("target_ess", 0.5))
    if not 0 < target_ess < 1:
        raise ValueError(f"target_ess must be in (0, 1); got {target_ess}")
    n_mcmc = int(options.get("num_mcmc_steps", 10))
    n_leap = int(options.get("num_integration_steps", 8))
    max_iter = int(options.get("max_iterations", 500))
    kwargs = dict(model_kwargs)
    info = inspect_program(model, y, kwargs)
    k_prior, k_run, k_final = jax.random.split(key, 3)
    prior = Predictive(model, num_samples=num_particles, return_sites=list(info.latent))(k_prior, y, **kwargs)
    z = jax.vmap(lambda p: unconstrain_fn(model, (y,), kwargs, p))(prior)
    _, unravel = ravel_pytree(jax.tree.map(lambda v: v[0], z))
    x0 = jax.vmap(lambda t: ravel_pytree(t)[0])(z)
    joint, postprocess = log_density_fns(model, y, kwargs)

    def tempered(x, beta):
        # unconstrained log density (with the Jacobian) of the program tempered by beta: exactly
        # log prior + beta * log likelihood, so one evaluation gives both through a JVP in beta
        return -potential_energy(temper(model, beta=beta), (y,), kwargs, unravel(x))

    def logprior(x):
        return tempered(x, jnp.zeros((), x.dtype))

    def loglik(x):
        return jax.jvp(lambda b: tempered(x, b), (jnp.zeros((), x.dtype),), (jnp.ones((), x.dtype),))[1]

    kernel = blackjax.adaptive_tempered.build_kernel(
        logprior, loglik, blackjax.hmc.build_kernel(), blackjax.hmc.init, resampling.systematic, target_ess)

    @jax.jit
    def smc_step(k, state, step_size):
        w = state.weights[:, None]
        mean = jnp.sum(w * state.particles, axis=0)
        var = jnp.sum(w * (state.particles - mean) ** 2, axis=0) + 1e-10
        params = {"step_size": step_size[None], "inverse_mass_matrix": var[None],
                  "num_integration_steps": jnp.array([n_leap])}
        state, inf = kernel(k, state, n_mcmc, params)
        ess = 1.0 / jnp.sum(state.weights**2)  # of the weights at the new temperature
        return state, inf.log_likelihood_increment, jnp.mean(inf.update_info.acceptance_rate), ess

    state = blackjax.adaptive_tempered.init(x0)
    log_z, schedule, accs, esss, step_size = 0.0, [0.0], [], [], jnp.asarray(0.3)
    with tqdm(total=1.0, desc="adaptive tempered SMC", disable=not progress_bar, leave=False,
              bar_format="{desc}: beta={n:.3f} {elapsed}") as bar:
        while float(state.tempering_param) < 1.0:
            if len(schedule) > max_iter:
                raise RuntimeError(f"SMC did not reach temperature 1 in {max_iter} steps (at "
                                   f"{float(state.tempering_param):.3g}); raise max_iterations or target_ess")
            state, inc, acc, ess = smc_step(jax.random.fold_in(k_run, len(schedule)), state, step_size)
            log_z += float(inc)
            accs.append(float(acc))
            esss.append(float(ess))
            schedule.append(float(state.tempering_param))
            step_size = step_size * jnp.exp(1.5 * (acc - 0.65))
            bar.n = schedule[-1]
            bar.refresh()
    if not np.isfinite(log_z):
        raise RuntimeError(f"SMC log evidence is {log_z}: the likelihood is not finite on the particles")
    idx = resampling.systematic(k_final, state.weights, num_particles)
    xs = state.particles[idx]
    samples = jax.jit(jax.vmap(lambda x: postprocess(unravel(x), y, kwargs)))(xs)
    lp = jax.jit(jax.vmap(lambda x: joint(unravel(x), y, kwargs)))(xs)
    samples = {k: np.asarray(v)[None] for k, v in samples.items()}
    w = np.asarray(state.weights)
    attrs = {"log_evidence": log_z, "smc_iterations": len(schedule) - 1, "smc_ess": float(1.0 / np.sum(w**2)),
             "tempering_schedule": [round(b, 6) for b in schedule], "smc_acceptance": accs,
             "smc_ess_per_step": [round(e, 3) for e in esss]}
    text = f"{num_particles} particles drawn exactly from the prior, tempered to the posterior in " \
           f"{len(schedule) - 1} adaptive steps"
    return samples, {"lp": np.asarray(lp)[None]}, text, attrs


def _run(problem, key, settings) -> RunResult:
    _, key_run = jax.random.split(key)
    return RunResult(*run_smc(problem.model, problem.y, problem.run_kwargs, key_run, settings.num_samples,
                              settings.progress_bar, settings.options))


BACKENDS = {"smc": Backend("blackjax", frozenset(SMC_OPTIONS), _run, chains=False)}
