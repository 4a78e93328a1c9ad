"""Canonical synthetic systems with known ground truth.

Each data set is a function ``name(seed=0, num_steps=..., num_trials=1, ...)`` returning a dict
with ``y`` (T, N) or (B, T, N), ``x`` (latents), ``z`` (discrete states, where they exist),
``params`` (the true parameters, named like the matching model's sites) and ``model`` (a zoo
model of the right structure to fit).

The continuous-time systems of :mod:`zoo.systems` (two spirals, line attractor, two point
attractors, Van der Pol, double well) are re-exported here; they take a JAX key, a duration and
a recording step instead of a number of steps, because they are simulated on a fine SDE grid.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from zoo._base import check_choice, check_positive_int
from zoo.distributions import SwitchingLinearDynamics
from zoo.rslds import RSLDS
from zoo.systems import double_well, line_attractor, two_point_attractors, two_spirals, van_der_pol

__all__ = [
    "double_well", "line_attractor", "nascar", "nascar_params", "two_point_attractors", "two_spirals",
    "van_der_pol",
]


def _rotation(theta: float) -> np.ndarray:
    return np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])


def nascar_params(obs_dim: int = 10, emissions: str = "gaussian", seed: int = 0) -> dict:
    """True parameters of the NASCAR track (the rSLDS example of lindermanlab's ssm).

    K = 4 regimes of a 2-D latent: clockwise rotations about (+2, 0) by pi/24 and about (-2, 0)
    by pi/48 at the two ends, straights with drift (+0.1, 0) on top and (-0.25, 0) below;
    recurrent-only transitions with R = [[100, 0], [-100, 0], [0, 10], [0, -10]] and
    r = [-200, -200, 0, 0] (so x1 > 2, x1 < -2, x2 > 0 and x2 < 0 pick the regimes); dynamics
    noise variance 1e-4; an orthonormal emission matrix; emission noise variance 1e-2 (Gaussian)
    or Poisson counts with softplus rates.
    """
    rng = np.random.default_rng(seed)
    centres = [np.array([2.0, 0.0]), np.array([-2.0, 0.0])]
    A = [_rotation(-np.pi / 24), _rotation(-np.pi / 48), np.eye(2), np.eye(2)]
    b = [c - Ak @ c for Ak, c in zip(A[:2], centres, strict=True)]
    b += [np.array([0.1, 0.0]), np.array([-0.25, 0.0])]
    C = np.linalg.qr(rng.normal(size=(obs_dim, 2)))[0]
    params = {
        "init_probs": np.full(4, 0.25),
        "recurrence_weights": np.array([[100.0, 0.0], [-100.0, 0.0], [0.0, 10.0], [0.0, -10.0]]),
        "recurrence_bias": np.array([-200.0, -200.0, 0.0, 0.0]),
        "dynamics": np.stack(A),
        "dynamics_bias": np.stack(b),
        "dynamics_noise": np.full((4, 2), 1e-2),  # standard deviation: variance 1e-4
        "init_mean": np.array([0.0, 1.0]),
        "init_noise": 1e-2,
    }
    if emissions == "gaussian":
        params["emission_matrix"] = C
        params["emission_bias"] = rng.normal(size=obs_dim)
        params["emission_noise"] = np.full(obs_dim, 0.1)  # variance 1e-2
    else:
        # rates between about 0.3 and 6 spikes per bin along the track
        params["emission_matrix"] = 1.5 * C * np.sqrt(obs_dim / 2)
        params["emission_bias"] = np.full(obs_dim, 1.0)
    return params


def nascar(seed: int = 0, num_steps: int = 1000, num_trials: int = 1, emissions: str = "gaussian",
           obs_dim: int = 10) -> dict:
    """Simulate the NASCAR track (see :func:`nascar_params`).

    Parameters
    ----------
    seed : int
    num_steps : int
        T.
    num_trials : int
        B; 1 gives arrays without a trial axis.
    emissions : {"gaussian", "poisson"}
    obs_dim : int
        N (10 in the original).

    Returns
    -------
    dict
        ``y`` (T, N) float, ``x`` (T, 2), ``z`` (T,) int, ``params``, ``model`` (an
        ``RSLDS(4, 2, N, transitions="recurrent_only")`` with the matching emissions).
    """
    check_positive_int(num_steps, "num_steps", 2)
    check_positive_int(num_trials, "num_trials")
    check_positive_int(obs_dim, "obs_dim", 2)
    check_choice(emissions, "emissions", {"gaussian", "poisson"})
    p = nascar_params(obs_dim, emissions, seed)
    K, D = 4, 2
    f = lambda a: jnp.asarray(a, dtype=jnp.float32)  # noqa: E731
    path = SwitchingLinearDynamics(
        jnp.log(f(p["init_probs"])), f(p["dynamics"]), f(p["dynamics_bias"]),
        jax.vmap(jnp.diag)(f(p["dynamics_noise"])), jnp.tile(f(p["init_mean"]), (K, 1)),
        jnp.broadcast_to(p["init_noise"] * jnp.eye(D), (K, D, D)),
        R=f(p["recurrence_weights"]), r=f(p["recurrence_bias"]), num_steps=num_steps,
        batch_shape=() if num_trials == 1 else (num_trials,),
    )
    kz, ky = jax.random.split(jax.random.key(seed))
    z, x = path.sample_with_states(kz)
    pre = x @ f(p["emission_matrix"]).T + f(p["emission_bias"])
    if emissions == "gaussian":
        y = pre + f(p["emission_noise"]) * jax.random.normal(ky, pre.shape)
    else:
        y = jax.random.poisson(ky, jax.nn.softplus(pre)).astype(jnp.float32)
    model = RSLDS(K, D, obs_dim, transitions="recurrent_only", emissions=emissions)
    return {"y": np.asarray(y), "x": np.asarray(x), "z": np.asarray(z), "params": p, "model": model}
