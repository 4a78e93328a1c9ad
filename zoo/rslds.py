"""Recurrent switching linear dynamical system (rSLDS, Linderman et al., AISTATS 2017)."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

from zoo._base import check_choice
from zoo.distributions import stick_breaking_log_probs
from zoo.protocol import BlockedSpec
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

    Stick-breaking transitions (``transition_link="stick_breaking"``, recurrent-only, Linderman
    et al. 2017): p(z_t = k | x_{t-1}) = sigmoid(nu_k) prod_{j<k} sigmoid(-nu_j) with nu = R
    x_{t-1} + r + W u_t, R (K-1, D) and r (K-1,) (the site dims ``stick``). Polya-gamma variables
    then make the transitions Gaussian in x given the states, so with Gaussian emissions the
    blocked sampler integrates the path out exactly as for the SLDS
    (:meth:`blocked_sampler`). The states are ordered: state K-1 is what no stick claims.

    Parameters
    ----------
    transitions : {"recurrent", "recurrent_only"}
    transition_link : {"softmax", "stick_breaking"}
        "stick_breaking" needs ``transitions="recurrent_only"``.
    recurrence_scale : float
        Prior standard deviation of the recurrence weights and biases.
    **others
        As :class:`SLDS`.
    """

    transitions: str = "recurrent_only"
    recurrence_scale: float = 3.0
    transition_link: str = "softmax"

    _transition_choices = ("recurrent", "recurrent_only")

    def __post_init__(self):
        super().__post_init__()
        check_choice(self.transition_link, "transition_link", {"softmax", "stick_breaking"})
        if self.transition_link == "stick_breaking" and self.transitions != "recurrent_only":
            raise ValueError("transition_link='stick_breaking' needs transitions='recurrent_only'; "
                             f"got transitions={self.transitions!r}")

    @property
    def switching_link(self) -> str:
        """The link of the recurrent transitions (``transition_link``)."""
        return self.transition_link

    @property
    def _sticks(self) -> bool:
        return self.transition_link == "stick_breaking"

    @property
    def dims(self) -> dict:
        """Named dims of every site (ArviZ); stick-breaking weights have one row per stick."""
        dims = dict(super().dims)
        if self._sticks:
            dims.update({"recurrence_weights": ["stick", "latent"], "recurrence_bias": ["stick"],
                         "input_transitions": ["stick", "input"]})
        return dims

    def dim_sizes(self) -> dict:
        sizes = super().dim_sizes()
        if self._sticks:
            sizes["stick"] = self.num_states - 1
        return sizes

    def regimes(self, params, x):
        """Regime probabilities at x, (..., K): softmax(R x + r) (for "recurrent", the
        x-dependent part of the transition from any state), or the stick-breaking
        probabilities."""
        R, r = params["recurrence_weights"], params["recurrence_bias"]
        logits = jnp.einsum("kd,...d->...k", R, x) + r
        if self._sticks:
            return jnp.exp(stick_breaking_log_probs(logits))
        return jax.nn.softmax(logits, axis=-1)

    def blocked_sampler(self) -> BlockedSpec | None:
        """The exact blocked sampler (:mod:`inference.blocked`): with stick-breaking
        transitions and Gaussian emissions the path is integrated out given the states and
        their Polya-gamma variables (``augmented``); otherwise as :meth:`SLDS.blocked_sampler`."""
        if self._sticks and self.emissions == "gaussian":
            return BlockedSpec("x", augmented=True)
        return super().blocked_sampler()

    def _transition_params(self, K, inputs):
        D = self.latent_dim
        s = self.recurrence_scale
        rows = K - 1 if self._sticks else K
        R = numpyro.sample("recurrence_weights", dist.Normal(0.0, s).expand([rows, D]).to_event(2))
        r = numpyro.sample("recurrence_bias", dist.Normal(0.0, s).expand([rows]).to_event(1))
        if self.input_dim:
            W = numpyro.sample(
                "input_transitions", dist.Normal(0.0, 1.0).expand([rows, self.input_dim]).to_event(2)
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
