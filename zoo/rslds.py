"""Recurrent switching linear dynamical system (rSLDS, Linderman et al., AISTATS 2017)."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

from zoo.slds import SLDS


@dataclass(frozen=True)
class RSLDS(SLDS):
    """Recurrent SLDS: the discrete transitions depend on the previous continuous state.

    p(z_t = j | z_{t-1} = i, x_{t-1}) = softmax_j(R_j x_{t-1} + r_j + W_j u_t + log P[i, j])
    for ``transitions="recurrent"`` and softmax_j(R_j x_{t-1} + r_j + W_j u_t) for
    ``"recurrent_only"`` (the partition of the latent space into regimes by hyperplanes). The
    time-varying (T-1, K, K) transition matrices are computed from the path and the states are
    summed out by the forward algorithm, so NUTS sees a smooth density.

    Priors beyond :class:`SLDS`: ``recurrence_weights`` R ~ Normal(0, 3) (K, D),
    ``recurrence_bias`` r ~ Normal(0, 3) (K,), ``input_transitions`` W ~ Normal(0, 1) (K, M),
    and for "recurrent", ``trans_probs`` as in the sticky/standard SLDS (Dirichlet(1 + kappa
    e_i), kappa = ``stickiness``). Large recurrence weights give sharp regime boundaries.

    Parameters
    ----------
    transitions : {"recurrent", "recurrent_only"}
    **others
        As :class:`SLDS`.
    """

    transitions: str = "recurrent_only"
    recurrence_scale: float = 3.0

    _transition_choices = ("recurrent", "recurrent_only")

    def regimes(self, params, x):
        """Regime probabilities at x, (..., K): softmax(R x + r) (for "recurrent", the
        x-dependent part of the transition from any state)."""
        R, r = params["recurrence_weights"], params["recurrence_bias"]
        return jax.nn.softmax(jnp.einsum("kd,...d->...k", R, x) + r, axis=-1)

    def _transition_params(self, K, inputs):
        D = self.latent_dim
        s = self.recurrence_scale
        R = numpyro.sample("recurrence_weights", dist.Normal(0.0, s).expand([K, D]).to_event(2))
        r = numpyro.sample("recurrence_bias", dist.Normal(0.0, s).expand([K]).to_event(1))
        if self.input_dim:
            W = numpyro.sample(
                "input_transitions", dist.Normal(0.0, 1.0).expand([K, self.input_dim]).to_event(2)
            )
            r = r + inputs @ W.T  # (..., T, K)
        log_P = None
        if self.transitions == "recurrent":
            P = numpyro.sample(
                "trans_probs",
                dist.Dirichlet(jnp.ones((K, K)) + self.stickiness * jnp.eye(K)).to_event(1),
            )
            log_P = jnp.log(P)
        return log_P, R, r
