"""Stochastic variational inference with convergence monitoring and a progress bar."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoDelta, AutoGuide, AutoGuideList, AutoMultivariateNormal, AutoNormal
from numpyro.infer.initialization import init_to_median
from numpyro.optim import optax_to_numpyro
from tqdm.auto import tqdm

from inference.guides import structured_guide

__all__ = ["SVIResult", "run_svi", "GUIDES"]

GUIDES = ("structured", "auto_normal", "auto_mvn", "auto_delta")


class SVIResult(NamedTuple):
    """Outcome of :func:`run_svi`.

    Attributes
    ----------
    guide : AutoGuide
    params : dict
        Fitted variational parameters.
    losses : array (num_steps,)
        Negative ELBO per step.
    num_steps : int
        Steps run (fewer than asked when converged early).
    final_loss : float
        Mean loss over the last chunk.
    converged : bool
    guide_name : str
    seconds : float
    """

    guide: Any
    params: dict
    losses: np.ndarray
    num_steps: int
    final_loss: float
    converged: bool
    guide_name: str
    seconds: float


def make_guide(model: Callable, guide, y, model_kwargs) -> tuple[Any, str]:
    """An autoguide from a name in :data:`GUIDES` (or pass an AutoGuide / callable through)."""
    if isinstance(guide, AutoGuide) or (callable(guide) and not isinstance(guide, str)):
        return guide, type(guide).__name__
    if guide == "structured":
        g = structured_guide(model, y=y, model_kwargs=model_kwargs)
        names = type(g).__name__
        if isinstance(g, AutoGuideList):
            # NumPyro keeps an AutoGuideList's parts in ``_guides`` (it has no public accessor)
            names = " + ".join(type(p).__name__ for p in g._guides)
        return g, f"structured ({names})"
    if guide == "auto_normal":
        return AutoNormal(model, init_loc_fn=init_to_median, init_scale=0.1), "AutoNormal"
    if guide == "auto_mvn":
        guide = AutoMultivariateNormal(model, init_loc_fn=init_to_median, init_scale=0.1)
        return guide, "AutoMultivariateNormal"
    if guide == "auto_delta":
        return AutoDelta(model, init_loc_fn=init_to_median), "AutoDelta (MAP)"
    raise ValueError(f"guide must be one of {GUIDES} or an AutoGuide; got {guide!r}")


def run_svi(model: Callable, y, model_kwargs: Mapping | None, key, *, num_steps: int = 5000,
            guide="structured", learning_rate: float = 0.01, num_particles: int = 1,
            tol: float | None = 1e-4, chunk: int = 100, progress_bar: bool = True,
            anneal: bool = True) -> SVIResult:
    """Fit a guide by maximising the ELBO with Adam, stopping early once the loss settles.

    Parameters
    ----------
    model : callable
        ``model(y, **model_kwargs)``.
    y : array (T, N) or (B, T, N)
    model_kwargs : mapping or None
    key : jax.random key
    num_steps : int
        Maximum number of optimisation steps.
    guide : str or AutoGuide
        One of :data:`GUIDES` or a guide object.
    learning_rate : float
    num_particles : int
        Monte Carlo draws per ELBO estimate.
    tol : float or None
        Converged when the mean loss of consecutive chunks changes by less than
        ``max(tol * |loss|, 2 standard errors)`` twice in a row; None runs all steps.
    chunk : int
        Steps per compiled chunk (and per progress-bar update).
    progress_bar : bool
    anneal : bool
        Cosine-decay the learning rate to 1 % of its value over ``num_steps`` (reduces the
        stochastic jitter of the final parameters).

    Returns
    -------
    SVIResult

    Raises
    ------
    FloatingPointError
        If the loss becomes NaN or infinite.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1; got {num_steps}")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0; got {learning_rate}")
    kwargs = dict(model_kwargs or {})
    g, name = make_guide(model, guide, y, kwargs)
    lr = optax.cosine_decay_schedule(learning_rate, num_steps, alpha=0.01) if anneal else learning_rate
    optim = optax_to_numpyro(optax.chain(optax.clip_by_global_norm(10.0), optax.adam(lr)))
    svi = SVI(model, g, optim, Trace_ELBO(num_particles=num_particles))
    t0 = time.perf_counter()
    state = svi.init(key, y, **kwargs)

    @jax.jit
    def run_chunk(state, y, kwargs):
        def body(s, _):
            s, loss = svi.update(s, y, **kwargs)
            return s, loss

        return jax.lax.scan(body, state, None, length=chunk)

    losses, means, settled, converged = [], [], 0, False
    yj = jnp.asarray(y)
    bar = tqdm(total=num_steps, desc=f"SVI {name}", disable=not progress_bar, leave=False)
    done = 0
    while done < num_steps:
        state, chunk_losses = run_chunk(state, yj, kwargs)
        cl = np.asarray(chunk_losses)[: num_steps - done]
        losses.append(cl)
        done += len(cl)
        bar.update(len(cl))
        if not np.isfinite(cl).all():
            bar.close()
            raise FloatingPointError(
                f"SVI loss became {cl[~np.isfinite(cl)][0]} at step ~{done}: lower learning_rate or "
                "check the model's initialization")
        means.append(float(cl.mean()))
        bar.set_postfix(loss=f"{means[-1]:.4g}")
        if tol is not None and len(means) >= 2:
            se = float(cl.std()) / np.sqrt(len(cl))
            settled = settled + 1 if abs(means[-1] - means[-2]) < max(tol * abs(means[-1]), 2 * se) else 0
            if settled >= 2:
                converged = True
                break
    bar.close()
    if tol is not None and not converged:
        warnings.warn(f"SVI did not converge in {num_steps} steps (loss still changing); raise num_steps "
                      "or learning_rate", RuntimeWarning, stacklevel=2)
    params = svi.get_params(state)
    return SVIResult(g, params, np.concatenate(losses), done, means[-1], converged, name,
                     time.perf_counter() - t0)
