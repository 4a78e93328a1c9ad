"""``fit(method="svi")``: fit a guide, then draw from it in the same DataTree format (chain = 1)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import numpy as np
from numpyro.infer import Predictive

from inference.backends import Backend, RunResult
from inference.program import ProgramInfo
from inference.svi import run_svi

__all__ = ["fit_svi", "BACKENDS"]


def fit_svi(model: Callable, y, model_kwargs: Mapping, key, num_samples: int, progress_bar: bool,
            options: Mapping, info: ProgramInfo) -> tuple[dict, dict, str, dict]:
    """SVI fit and ``num_samples`` guide draws of every latent and deterministic site.

    Parameters
    ----------
    model : callable
    y : array (T, N) or (B, T, N)
    model_kwargs : mapping
    key : jax.random key
    num_samples : int
    progress_bar : bool
    options : mapping
        ``guide`` (default "structured": Markov Gaussian on paths + AutoNormal), ``num_steps``
        (default 5000), ``learning_rate`` (0.01), ``num_particles`` (1), ``tol`` (1e-4).
    info : ProgramInfo

    Returns
    -------
    samples : dict name -> array (1, num_samples, ...)
    stats : dict
        ``lp``: log joint density (constrained space) of each draw minus nothing (for reference).
    description : str
    attrs : dict
        ``svi_guide``, ``svi_steps``, ``svi_final_loss``, ``svi_converged`` (0/1), ``svi_time``.
    """
    k_fit, k_draw = jax.random.split(key)
    res = run_svi(model, y, model_kwargs, k_fit, num_steps=int(options.get("num_steps", 5000)),
                  guide=options.get("guide", "structured"),
                  learning_rate=float(options.get("learning_rate", 0.01)),
                  num_particles=int(options.get("num_particles", 1)),
                  tol=options.get("tol", 1e-4), progress_bar=progress_bar)
    sites = list(info.latent) + list(info.deterministic)
    pred = Predictive(model, guide=res.guide, params=res.params, num_samples=num_samples,
                      return_sites=sites)
    draws = pred(k_draw, y, **dict(model_kwargs))
    samples = {k: np.asarray(v)[None] for k, v in draws.items() if k in sites}
    attrs = {"svi_guide": res.guide_name, "svi_steps": res.num_steps, "svi_final_loss": res.final_loss,
             "svi_converged": int(res.converged), "svi_time": res.seconds,
             # the ELBO trace for diagnose, thinned to at most 1000 evenly spaced steps
             "svi_losses": np.asarray(res.losses)[np.unique(np.linspace(0, len(res.losses) - 1, 1000)
                                                            .astype(int))].tolist()}
    text = (f"SVI guide {res.guide_name} initialised at the prior median; {res.num_steps} Adam steps "
            f"({'converged' if res.converged else 'NOT converged'}); {num_samples} independent guide draws")
    return samples, {}, text, attrs


def _run(problem, key, settings) -> RunResult:
    _, key_run = jax.random.split(key)
    return RunResult(*fit_svi(problem.model, problem.y, problem.run_kwargs, key_run, settings.num_samples,
                              settings.progress_bar, settings.options, problem.info))


SVI_OPTIONS = frozenset({"guide", "num_steps", "learning_rate", "num_particles", "tol"})
BACKENDS = {"svi": Backend("numpyro", SVI_OPTIONS, _run, chains=False)}
