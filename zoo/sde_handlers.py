"""NumPyro handlers of the continuous-time models: integrate the drift weights out of an
Euler-Maruyama path (:class:`collapse_drift`) and read their exact posterior back
(:class:`decode_drift`). The distributions they swap are in :mod:`zoo.sde_distributions`.
"""

from __future__ import annotations

import zlib

import jax
from numpyro.primitives import Messenger

from zoo.handlers import decode
from zoo.sde_distributions import (
    CollapsedEulerMaruyama,
    CollapsedWeights,
    DelayedWeights,
    DriftWeights,
    EulerMaruyama,
)

__all__ = ["collapse_drift", "decode_drift"]


def _site_key(key, name: str):
    return jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)


class collapse_drift(Messenger):
    """Integrate the drift weights of Euler-Maruyama paths out in closed form.

    A latent :class:`DriftWeights` site is not sampled: a :class:`DelayedWeights` stands for its
    value and the site is marked ``infer["collapsed"]``. The :class:`EulerMaruyama` path that
    consumes it gets the exact marginal :class:`CollapsedEulerMaruyama` instead. After
    inference, :class:`decode_drift` (or the model's ``weight_posterior``) draws W exactly.
    """

    def process_message(self, msg):
        if msg["type"] != "sample":
            return
        fn = msg["fn"]
        if isinstance(fn, DriftWeights) and not msg["is_observed"] and msg["value"] is None:
            msg["value"] = DelayedWeights(msg["name"], fn)
            msg["fn"] = CollapsedWeights(fn)
            msg["is_observed"] = True
            msg["infer"]["collapsed"] = True
        elif isinstance(fn, EulerMaruyama) and isinstance(fn.weights, DelayedWeights):
            msg["fn"] = fn.collapsed(fn.weights.prior.scale_tril)


class decode_drift(decode):
    """Exact posterior of collapsed drift weights given the path and hyperparameter values.

    Use under ``substitute`` with one posterior draw; ``self.posteriors[path_site_name]`` is a
    :class:`WeightPosterior` with one exact draw (vmap over draws). The drift-weight case of
    :class:`zoo.handlers.decode` (same arguments and result layout).
    """

    def postprocess_message(self, msg):
        if msg["type"] == "sample" and isinstance(msg["fn"], CollapsedEulerMaruyama) \
                and msg["value"] is not None:
            post = msg["fn"].weight_posterior(msg["value"], _site_key(self.rng_key, msg["name"]))
            self.posteriors[msg["name"]] = post
            msg["infer"]["posterior"] = post
