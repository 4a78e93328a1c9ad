"""Hidden Markov model with Gaussian or Poisson emissions, states summed out exactly."""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

from zoo._base import ModelMixin, check_choice, check_mask, check_positive_int, sequence_shape
from zoo.distributions import HMMEmissions
from zoo.handlers import marginalize

__all__ = ["HMM"]


@dataclass(frozen=True)
class HMM(ModelMixin):
    """Bayesian hidden Markov model as a NumPyro program.

    z_1 ~ Cat(pi), z_t | z_{t-1} = i ~ Cat(P[i]), y_t | z_t = k ~ emission_k (factorised over
    neurons). The states are summed out by the forward algorithm (:class:`zoo.handlers.
    marginalize`); :class:`zoo.handlers.decode` recovers them afterwards.

    Priors (weakly informative, for standardised data or spike counts per bin):

    - ``init_probs`` ~ Dirichlet(1), dims (state,)
    - ``trans_probs[i]`` ~ Dirichlet(1 + kappa e_i), dims (state, state_to); kappa = 0 for
      ``transitions="standard"``, ``stickiness`` for ``"sticky"``
    - Gaussian: ``means`` ~ Normal(0, 3), ``scales`` ~ LogNormal(0, 1), dims (state, neuron)
    - Poisson: ``rates`` ~ LogNormal(log 3, 1.5), dims (state, neuron) (counts per bin)

    Parameters
    ----------
    num_states : int
        K >= 1.
    obs_dim : int
        N >= 1.
    emissions : {"gaussian", "poisson"}
    transitions : {"standard", "sticky"}
    stickiness : float
        Extra Dirichlet mass kappa on self-transitions for sticky transitions.
    parallel : bool
        Sum the states with the parallel (associative) scan instead of the sequential one.
    """

    num_states: int
    obs_dim: int
    emissions: str = "gaussian"
    transitions: str = "standard"
    stickiness: float = 10.0
    parallel: bool = False
    sequence_sites = ("y",)

    def __post_init__(self):
        check_positive_int(self.num_states, "num_states")
        check_positive_int(self.obs_dim, "obs_dim")
        check_choice(self.emissions, "emissions", {"gaussian", "poisson"})
        check_choice(self.transitions, "transitions", {"standard", "sticky"})
        if not self.stickiness >= 0:
            raise ValueError(f"stickiness must be >= 0; got {self.stickiness}")

    @property
    def dims(self) -> dict:
        """Named dims of every site (ArviZ)."""
        return {
            "init_probs": ["state"],
            "trans_probs": ["state", "state_to"],
            "means": ["state", "neuron"],
            "scales": ["state", "neuron"],
            "rates": ["state", "neuron"],
            "y": ["time", "neuron"],
        }

    def dim_sizes(self) -> dict:
        return {"state": self.num_states, "state_to": self.num_states, "neuron": self.obs_dim}

    def __call__(self, y=None, num_steps=None, num_trials=None, mask=None):
        """The NumPyro program.

        Parameters
        ----------
        y : array (T, N) or (B, T, N), optional
            Observations (NaN = missing); None for the prior predictive.
        num_steps : int, optional
            T when ``y`` is None.
        num_trials : int, optional
            B when ``y`` is None (None: no trial axis).
        mask : bool array (T,) or (B, T), optional
            Steps that exist, for trials of different lengths (padding at the end).
        """
        K, N = self.num_states, self.obs_dim
        y, T, trials = sequence_shape(y, num_steps, num_trials, N, self.emissions == "poisson")
        mask = check_mask(mask, trials, T)
        pi = numpyro.sample("init_probs", dist.Dirichlet(jnp.ones(K)))
        kappa = self.stickiness if self.transitions == "sticky" else 0.0
        P = numpyro.sample("trans_probs", dist.Dirichlet(jnp.ones((K, K)) + kappa * jnp.eye(K)).to_event(1))
        if self.emissions == "gaussian":
            mu = numpyro.sample("means", dist.Normal(0.0, 3.0).expand([K, N]).to_event(2))
            sd = numpyro.sample("scales", dist.LogNormal(0.0, 1.0).expand([K, N]).to_event(2))
            emission = dist.Normal(mu, sd).to_event(1)
        else:
            rates = numpyro.sample("rates", dist.LogNormal(jnp.log(3.0), 1.5).expand([K, N]).to_event(2))
            emission = dist.Poisson(rates).to_event(1)
        fn = HMMEmissions(jnp.log(pi), jnp.log(P), emission, T, trials, mask=mask)
        with marginalize(parallel=self.parallel):
            return numpyro.sample("y", fn, obs=y)
