"""Deprecated handlers of the continuous-time models.

The drift weights are integrated out and decoded by the one mechanism of :mod:`zoo.conjugate`:
:class:`zoo.handlers.integrate_out` and :class:`zoo.handlers.decode`. ``collapse_drift`` and
``decode_drift`` are their old names for drift weights alone; each warns once.
"""

from __future__ import annotations

import warnings

from zoo.handlers import decode, integrate_out
from zoo.sde_distributions import CollapsedEulerMaruyama, DriftWeights, EulerMaruyama

__all__ = ["collapse_drift", "decode_drift"]


class collapse_drift(integrate_out):
    """Deprecated name of :class:`zoo.handlers.integrate_out` for drift weights alone.

    A latent :class:`~zoo.sde_distributions.DriftWeights` site is not sampled and the
    :class:`~zoo.sde_distributions.EulerMaruyama` path that consumes it gets the exact marginal
    :class:`~zoo.sde_distributions.CollapsedEulerMaruyama`; other conjugate sites are left alone.

    Parameters
    ----------
    fn : callable, optional
    parallel : bool
        Unused (the marginal has no scan).
    """

    latents = (DriftWeights,)
    consumers = (EulerMaruyama,)
    _warned = False

    def __init__(self, fn=None, parallel: bool = False):
        if not collapse_drift._warned:
            collapse_drift._warned = True
            warnings.warn("zoo.sde_handlers.collapse_drift is deprecated: use zoo.handlers.integrate_out",
                          DeprecationWarning, stacklevel=2)
        super().__init__(fn, parallel)


class decode_drift(decode):
    """Deprecated name of :class:`zoo.handlers.decode` for drift weights alone.

    ``self.posteriors[path_site_name]`` is a :class:`~zoo.sde_distributions.WeightPosterior` with
    one exact draw; other decodable sites are left alone.

    Parameters
    ----------
    fn : callable, optional
    rng_key : jax.random key
    """

    decodes = (CollapsedEulerMaruyama,)
    _warned = False

    def __init__(self, fn=None, rng_key=None):
        if not decode_drift._warned:
            decode_drift._warned = True
            warnings.warn("zoo.sde_handlers.decode_drift is deprecated: use zoo.handlers.decode",
                          DeprecationWarning, stacklevel=2)
        super().__init__(fn, rng_key)
