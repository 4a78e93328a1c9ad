"""What every zoo model shares: input checking, trials, simulation and named dims."""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers

from zoo.conjugate import Delayed
from zoo.protocol import Model


def is_concrete(x) -> bool:
    return x is not None and not isinstance(x, jax.core.Tracer)


def check_positive_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return int(value)


def check_choice(value, name: str, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}; got {value!r}")
    return value


def check_observations(y, obs_dim: int, counts: bool = False, name: str = "y"):
    """Validate y of shape (T, N) or (B, T, N); NaN marks missing entries.

    Returns the array (float) and its trial shape.
    """
    arr = jnp.asarray(y) if not is_concrete(y) else np.asarray(y, dtype=float)
    if arr.ndim not in (2, 3):
        raise ValueError(
            f"{name} must have shape (T, N) or (B, T, N) with N={obs_dim}; got shape {arr.shape}"
        )
    if arr.shape[-1] != obs_dim:
        raise ValueError(
            f"{name} has trailing dimension {arr.shape[-1]} but the model has obs_dim={obs_dim}"
        )
    if arr.shape[-2] < 2:
        raise ValueError(f"{name} needs at least 2 time steps; got {arr.shape[-2]}")
    if is_concrete(y):
        if np.isinf(arr).any():
            raise ValueError(f"{name} contains inf; use NaN for missing observations")
        if counts:
            seen = arr[~np.isnan(arr)]
            if (seen < 0).any():
                raise ValueError(f"{name} holds Poisson counts and must be non-negative")
            if (seen != np.round(seen)).any():
                raise ValueError(f"{name} holds Poisson counts and must be integer-valued")
    return jnp.asarray(arr), tuple(arr.shape[:-2])


def check_mask(mask, trial_shape, T):
    """A boolean (..., T) mask of existing steps (trials of different lengths), or None."""
    if mask is None:
        return None
    m = jnp.asarray(mask)
    if m.dtype != jnp.bool_ or m.shape != tuple(trial_shape) + (T,):
        raise ValueError(
            f"mask must be a boolean array of shape {tuple(trial_shape) + (T,)} (trials, time); "
            f"got {m.dtype} {m.shape}"
        )
    return m


def sequence_shape(y, num_steps, num_trials, obs_dim, counts=False):
    """Resolve (y, T, trial_shape) from observations or from requested sizes."""
    if y is not None:
        y, trials = check_observations(y, obs_dim, counts)
        if num_steps is not None and num_steps != y.shape[-2]:
            raise ValueError(f"num_steps={num_steps} disagrees with y, which has {y.shape[-2]} steps")
        return y, y.shape[-2], trials
    if num_steps is None:
        raise ValueError("give observations y or, for the prior predictive, num_steps")
    T = check_positive_int(num_steps, "num_steps", 2)
    trials = () if num_trials is None else (check_positive_int(num_trials, "num_trials"),)
    return None, T, trials


class ModelMixin(Model):
    """Shared implementation of the model protocol (:class:`zoo.protocol.Model`): simulation.
    Subclasses define ``__call__``, ``dims`` and ``sequence_sites``."""

    sequence_sites: tuple[str, ...] = ("x", "y")

    def simulate(self, key, num_steps: int, num_trials: int = 1, params: Mapping | None = None,
                 **kwargs) -> dict:
        """Draw parameters (unless given), discrete states, latent path and observations.

        Parameters
        ----------
        key : jax.random key
        num_steps : int
            T.
        num_trials : int
            B; with 1 (the default) the arrays have no trial axis: y (T, N), else (B, T, N).
        params : mapping, optional
            Parameter values to use instead of prior draws (any subset).
        **kwargs
            Further model arguments (e.g. ``inputs``).

        Returns
        -------
        dict
            ``params`` (dict of arrays), ``y`` and, where the model has them, ``z`` (int) and
            ``x``.
        """
        check_positive_int(num_trials, "num_trials")
        trials = None if num_trials == 1 else num_trials
        model = handlers.substitute(handlers.seed(self, key), data=dict(params or {}))
        tr = handlers.trace(model).get_trace(None, num_steps=num_steps, num_trials=trials, **kwargs)
        out: dict = {"params": {}}
        for name, site in tr.items():
            if site["type"] == "deterministic":
                out["params"][name] = site["value"]
            if site["type"] != "sample":
                continue
            if name in self.sequence_sites:
                value = site["value"]
                if not isinstance(value, Delayed):
                    out[name] = value
                for extra in site.get("intermediates") or []:
                    key_name = "z" if jnp.issubdtype(jnp.result_type(extra), jnp.integer) else "x"
                    out.setdefault(key_name, extra)
            elif not site["infer"].get("collapsed"):
                out["params"][name] = site["value"]
        return out
