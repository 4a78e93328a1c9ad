"""NumPyro effect handlers that interpret the zoo's sequence-level sites.

Each handler is a few lines: it swaps a site's distribution for its marginal or reads its exact
conditional posterior; the numerical work lives in :mod:`zoo.distributions` and
:mod:`zoo.scans`. They compose with NumPyro's own handlers (seed, trace, substitute, condition,
mask, scale) and work under MCMC, SVI and Predictive.

- :class:`marginalize` -- discrete states of switching sites summed out by the forward algorithm,
  sequentially or with a parallel scan.
- :class:`condition_states` -- switching sites given their discrete states: the path x | z (a
  Gauss-Markov path for non-recurrent transitions, which :class:`integrate_out` then integrates
  out).
- :class:`integrate_out` -- every conjugate latent site (:class:`zoo.conjugate.ConjugatePrior`:
  a Gauss-Markov path, GP drift weights) integrated out in closed form by the site that consumes
  it (the Kalman filter for linear-Gaussian emissions, Bayesian linear regression for an
  Euler-Maruyama path), so that inference runs on the parameters only.
- :class:`decode` -- exact posterior of whatever a site sums or integrates out
  (:class:`zoo.conjugate.Decodable`: discrete states, paths, drift weights), given the other
  sites' values.
- :class:`temper` -- likelihood (observed sites) scaled by beta, for tempered SMC.
- :class:`pointwise` -- per-time-step log-likelihoods of observed sites, for LOO.

``collapse`` is the deprecated name of :class:`integrate_out` for Gauss-Markov paths (NumPyro's
``numpyro.handlers.collapse`` is a different handler).
"""

from __future__ import annotations

import warnings
import zlib

import jax
import jax.numpy as jnp
from numpyro.primitives import Messenger

from zoo.conjugate import ConjugatePrior, ConsumesDelayed, Decodable, Delayed, IntegratedOut
from zoo.distributions import SwitchingSequence, pointwise_log_prob
from zoo.gaussian_paths import GaussMarkov, LinearGaussianEmission

__all__ = ["marginalize", "condition_states", "decode", "integrate_out", "collapse", "temper", "pointwise"]


def _is_sample(msg) -> bool:
    return msg["type"] == "sample"


class marginalize(Messenger):
    """Sum out the discrete states of every switching site by the forward algorithm.

    A switching site's log density becomes log sum_z p(z, value), with gradients; this is what
    NUTS, HMC, SVI and BlackJAX see. The zoo's models apply it themselves; wrap a program in it
    to choose the scan.

    Parameters
    ----------
    fn : callable, optional
        The program.
    parallel : bool
        Sequential ``lax.scan`` (False, fastest on CPU) or log-semiring ``associative_scan``.
    """

    def __init__(self, fn=None, parallel: bool = False):
        self.parallel = parallel
        super().__init__(fn)

    def process_message(self, msg):
        if _is_sample(msg) and isinstance(msg["fn"], SwitchingSequence):
            msg["fn"] = msg["fn"].with_parallel(self.parallel)


class condition_states(Messenger):
    """Condition switching sites on given discrete states.

    Every unobserved :class:`~zoo.distributions.SwitchingSequence` sample site named in
    ``states`` gets ``fn.given_states(states[name])``: its log density becomes the joint
    log p(z, value | theta) instead of the marginal log sum_z p(z, value | theta). For the
    (non-recurrent) SLDS this is a :class:`~zoo.distributions.StateConditionedPath`, a
    Gauss-Markov path that :class:`integrate_out` integrates out when applied outside this handler:
    ``integrate_out(condition_states(program, states={"x": z}))`` has the log density
    log p(theta) + log p(z | theta) + log p(y | theta, z), and :class:`decode` of it draws
    x | z, theta, y exactly.

    Parameters
    ----------
    fn : callable, optional
    states : dict of str to int array
        Site name -> states of shape batch_shape + (T,).
    augmentation : dict of str to array, optional
        Site name -> auxiliary variables that make the path Gaussian given the states (the
        Polya-gamma variables of stick-breaking transitions, batch_shape + (T-1, K-1); see
        :meth:`zoo.distributions.SwitchingLinearDynamics.given_states`): the site's
        ``log_prob`` is then log p(z, omega, x | theta), up to a term free of every parameter.
    """

    def __init__(self, fn=None, states=None, augmentation=None):
        self.states = dict(states or {})
        self.augmentation = dict(augmentation or {})
        super().__init__(fn)

    def process_message(self, msg):
        if (_is_sample(msg) and not msg["is_observed"] and msg["name"] in self.states
                and isinstance(msg["fn"], SwitchingSequence)):
            name = msg["name"]
            if name in self.augmentation:
                msg["fn"] = msg["fn"].given_states(self.states[name], augmentation=self.augmentation[name])
            else:
                msg["fn"] = msg["fn"].given_states(self.states[name])


def _site_key(key, name: str):
    return jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)


class decode(Messenger):
    """Exact conditional posterior of what a model sums or integrates out.

    Given values for the continuous sites (one posterior draw, e.g. by ``substitute``), every
    :class:`~zoo.conjugate.Decodable` site gives its exact posterior: a switching site's discrete
    states (:class:`~zoo.distributions.StatePosterior`: smoothed marginals, Viterbi path, one
    FFBS draw), an integrated-out linear-Gaussian path (:class:`~zoo.distributions.
    PathPosterior`: an exact draw and smoothed moments), integrated-out drift weights
    (:class:`~zoo.sde_distributions.WeightPosterior`, keyed by the path site). Results are
    collected in ``self.posteriors`` by site name and attached to the site as
    ``msg["infer"]["posterior"]``; vmap the decoding function over draws for a posterior over
    states.

    Parameters
    ----------
    fn : callable, optional
    rng_key : jax.random key
        Randomness for the FFBS and path draws (folded with each site's name).
    """

    def __init__(self, fn=None, rng_key=None):
        self.rng_key = jax.random.key(0) if rng_key is None else rng_key
        self.posteriors: dict = {}
        super().__init__(fn)

    def __enter__(self):
        super().__enter__()
        return self

    # the site distributions decoded (narrowed by the deprecated decode_drift)
    decodes: tuple[type, ...] = (Decodable,)

    def postprocess_message(self, msg):
        if not _is_sample(msg) or msg["value"] is None or not isinstance(msg["fn"], self.decodes):
            return
        name = msg["name"]
        post = msg["fn"].posterior(msg["value"], _site_key(self.rng_key, name))
        self.posteriors[name] = post
        msg["infer"]["posterior"] = post


class integrate_out(Messenger):
    """Integrate every conjugate latent site out in closed form.

    A latent site whose distribution is a :class:`~zoo.conjugate.ConjugatePrior` (a
    :class:`~zoo.distributions.GaussMarkov` path, :class:`~zoo.sde_distributions.DriftWeights`)
    is not sampled: a :class:`~zoo.conjugate.Delayed` value stands for it, its distribution
    becomes :class:`~zoo.conjugate.IntegratedOut` (log p(z) of the states a path is conditioned
    on, else zero) and the site is marked ``infer["collapsed"]``. The site that consumes it
    (:class:`~zoo.conjugate.ConsumesDelayed`) gets its exact marginal instead: the Kalman
    marginal :class:`~zoo.distributions.LinearGaussianSSM` of a
    :class:`~zoo.distributions.LinearGaussianEmission`, the
    :class:`~zoo.sde_distributions.CollapsedEulerMaruyama` of an Euler-Maruyama path. Inference
    then runs on the parameters only; afterwards :class:`decode` draws what was integrated out,
    exactly, for each posterior draw.

    Parameters
    ----------
    fn : callable, optional
        The program.
    parallel : bool
        Sequential or associative-scan kernels where the marginal runs a scan (the Kalman
        filter).
    """

    # the latent and consuming distributions handled (narrowed by the deprecated aliases)
    latents: tuple[type, ...] = (ConjugatePrior,)
    consumers: tuple[type, ...] = (ConsumesDelayed,)

    def __init__(self, fn=None, parallel: bool = False):
        self.parallel = parallel
        super().__init__(fn)

    def process_message(self, msg):
        if not _is_sample(msg):
            return
        fn = msg["fn"]
        if isinstance(fn, self.latents) and not msg["is_observed"] and msg["value"] is None:
            msg["value"] = Delayed(msg["name"], fn)
            msg["fn"] = IntegratedOut(fn)
            msg["is_observed"] = True  # nothing to sample: inference never sees the value
            msg["infer"]["collapsed"] = True
        elif isinstance(fn, self.consumers):
            marginal = fn.integrated(self.parallel)
            if marginal is not None:
                msg["fn"] = marginal


class collapse(integrate_out):
    """Deprecated name of :class:`integrate_out` for Gauss-Markov paths with linear-Gaussian
    emissions (what it handled before drift weights joined the mechanism); warns once.

    Parameters
    ----------
    fn : callable, optional
    parallel : bool
        Sequential or associative-scan Kalman filter.
    """

    latents = (GaussMarkov,)
    consumers = (LinearGaussianEmission,)
    _warned = False

    def __init__(self, fn=None, parallel: bool = False):
        if not collapse._warned:
            collapse._warned = True
            warnings.warn("zoo.handlers.collapse is deprecated: use zoo.handlers.integrate_out",
                          DeprecationWarning, stacklevel=2)
        super().__init__(fn, parallel)


class temper(Messenger):
    """Scale the log density of observed sites by ``beta`` (the likelihood of tempered SMC).

    Sites marked collapsed carry no density of their own and are left alone; the Kalman marginal
    of a collapsed model is an observed site and is tempered as the likelihood.

    Parameters
    ----------
    fn : callable, optional
    beta : float or scalar array
        Inverse temperature in [0, 1].
    """

    def __init__(self, fn=None, beta=1.0):
        self.beta = beta
        super().__init__(fn)

    def process_message(self, msg):
        if _is_sample(msg) and msg["is_observed"] and not msg["infer"].get("collapsed"):
            name = msg["name"]
            if name.startswith("_") and name.endswith("_log_det"):
                return  # NumPyro's change-of-variables factor of a reparameterised prior site
            msg["scale"] = self.beta if msg["scale"] is None else self.beta * msg["scale"]


class pointwise(Messenger):
    """Record the per-time-step log-likelihood of every observed sequence site.

    ``self.log_likelihood[name]`` gets an array ``batch_shape + (T,)`` whose sum over time is
    the site's log density (exact one-step-ahead predictive terms for sites whose steps are
    dependent, e.g. HMM and Kalman marginals). Masks applied by ``numpyro.handlers.mask`` are
    respected; scales are not (pointwise values are unscaled log-likelihoods).
    """

    def __init__(self, fn=None):
        self.log_likelihood: dict = {}
        super().__init__(fn)

    def __enter__(self):
        super().__enter__()
        return self

    def postprocess_message(self, msg):
        if not _is_sample(msg) or not msg["is_observed"] or msg["infer"].get("collapsed"):
            return
        lp = pointwise_log_prob(msg["fn"], msg["value"])
        if lp is None:
            return
        if msg.get("mask") is not None and jnp.ndim(msg["mask"]) <= lp.ndim - 1:
            lp = jnp.where(jnp.asarray(msg["mask"])[..., None], lp, 0.0)
        self.log_likelihood[msg["name"]] = lp
