"""The one mechanism by which a latent site is integrated out and decoded afterwards.

A latent site whose distribution is a :class:`ConjugatePrior` (a Gauss-Markov path, drift
weights) can be integrated out in closed form by the site that consumes it. Under
:class:`zoo.handlers.integrate_out` the latent site is not sampled: a :class:`Delayed` value stands
for it (refusing any arithmetic), its distribution becomes :class:`IntegratedOut` (which adds only
what the prior still contributes, e.g. log p(z) of the states a path is conditioned on), and the
consuming site -- a :class:`ConsumesDelayed` distribution such as a linear-Gaussian emission of
the path or an Euler-Maruyama path of the drift weights -- is swapped for its exact marginal
(:meth:`ConsumesDelayed.integrated`). After inference, :class:`zoo.handlers.decode` asks every
:class:`Decodable` site for the exact conditional posterior of what it sums or integrates out
(:meth:`Decodable.posterior`).

A new conjugate pair enters by subclassing these three classes; the handlers need no change.
"""

from __future__ import annotations

from typing import Any, NoReturn

import jax
import jax.numpy as jnp
import numpyro.distributions as dist

__all__ = ["ConjugatePrior", "ConsumesDelayed", "Decodable", "Delayed", "IntegratedOut"]


class ConjugatePrior(dist.Distribution):
    """A latent distribution that a consuming site can integrate out in closed form.

    Subclasses set :attr:`consumer` (named in the error a misuse of the :class:`Delayed` value
    raises) and may override :meth:`integrated_log_prob`.
    """

    #: what may consume the integrated-out value, e.g. "the x of a LinearGaussianEmission"
    consumer: str = "the distribution that integrates it out"

    def integrated_log_prob(self) -> jax.Array:
        """What the site still contributes once its value is integrated out.

        Returns
        -------
        array ``batch_shape``
            Zero here: the prior's density lives in the consumer's marginal.
        """
        return jnp.zeros(self.batch_shape)


class ConsumesDelayed:
    """Mixin of a distribution that may take a :class:`Delayed` value as a parameter."""

    def integrated(self, parallel: bool = False) -> dist.Distribution | None:  # pragma: no cover
        """This site's distribution with the delayed latent it consumes integrated out.

        Parameters
        ----------
        parallel : bool
            Sequential or associative-scan kernels, where the marginal runs a scan.

        Returns
        -------
        Distribution or None
            The exact marginal, or None when no parameter is a :class:`Delayed` value this
            distribution can integrate out.
        """
        raise NotImplementedError


class Decodable:
    """Mixin of a distribution that can give the exact conditional posterior of what it sums or
    integrates out (discrete states, a path, drift weights), given its value."""

    def posterior(self, value, key) -> Any:  # pragma: no cover
        """Exact conditional posterior given the site's value.

        Parameters
        ----------
        value : array
            The site's value (observations or a path), of the site's shape.
        key : jax.random key
            For the exact draw the posterior includes.

        Returns
        -------
        NamedTuple
            E.g. :class:`zoo.distributions.StatePosterior`,
            :class:`zoo.distributions.PathPosterior`, :class:`zoo.sde_distributions.WeightPosterior`.
        """
        raise NotImplementedError


class Delayed:
    """Stand-in value of a latent site that :class:`zoo.handlers.integrate_out` integrates out.

    It carries the site's name and prior; only the prior's consumer may take it, and any
    arithmetic, indexing or conversion to an array raises ``TypeError``.

    Parameters
    ----------
    name : str
        The latent site.
    prior : ConjugatePrior
        Its distribution.

    Attributes
    ----------
    shape : tuple
        ``prior.batch_shape + prior.event_shape``, the shape the value would have.
    """

    def __init__(self, name: str, prior: ConjugatePrior):
        self.name = name
        self.prior = prior
        self.shape = tuple(prior.batch_shape) + tuple(prior.event_shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def refuse(self, *args) -> NoReturn:
        """Raise the ``TypeError`` every use other than by the prior's consumer meets."""
        raise TypeError(
            f"{self.name!r} is integrated out (integrate_out); it can only be "
            f"{self.prior.consumer} (run without integrate_out to compute with it, or decode it)"
        )

    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = refuse
    __matmul__ = __rmatmul__ = __getitem__ = __array__ = refuse


class IntegratedOut(dist.Distribution):
    """Distribution of an integrated-out latent site: the prior's :meth:`ConjugatePrior.
    integrated_log_prob`, whatever the value. Never sampled (the site is marked observed).

    Parameters
    ----------
    prior : ConjugatePrior
    """

    pytree_data_fields = ("prior",)

    def __init__(self, prior: ConjugatePrior):
        self.prior = prior
        super().__init__(prior.batch_shape, prior.event_shape)

    def log_prob(self, value):
        return self.prior.integrated_log_prob()

    def sample(self, key, sample_shape=()):  # pragma: no cover - never sampled
        raise RuntimeError(f"an integrated-out value is not sampled; it can only be {self.prior.consumer} "
                           "(decode it instead)")
