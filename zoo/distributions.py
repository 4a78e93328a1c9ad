"""Sequence-level distributions that know their structure.

A switching site (:class:`SwitchingSequence` and subclasses) is one NumPyro sample site whose
value is a whole sequence (T, ...) and whose discrete states z_{1:T} are never sampled by the
inference algorithm: its ``log_prob`` is the exact marginal log sum_z p(z, value), computed by
the forward algorithm of :mod:`zoo.scans`. The handlers in :mod:`zoo.handlers` choose how the
sum is computed, decode the states afterwards, integrate linear-Gaussian paths out, temper and
record pointwise log-likelihoods; the numerical work lives here and in :mod:`zoo.scans`.

The linear-Gaussian paths (:class:`GaussMarkov`, :class:`LinearGaussianEmission`,
:class:`LinearGaussianSSM`, :class:`PathPosterior`) live in :mod:`zoo.gaussian_paths` and are
re-exported here; :class:`StateConditionedPath` (a Gauss-Markov path given switching states)
joins the two. ``DelayedPath`` is the old name of :class:`zoo.conjugate.Delayed`.

Shapes: ``batch_shape`` is the trial shape (B,) or (); ``event_shape`` is (T, N) or (T, D).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from jax import lax
from jax.scipy.special import logsumexp
from numpyro.distributions import constraints

from zoo import scans
from zoo.conjugate import Decodable, Delayed
from zoo.gaussian_paths import GaussMarkov, LinearGaussianEmission, LinearGaussianSSM, PathPosterior

__all__ = [
    "StatePosterior",
    "PathPosterior",
    "SwitchingSequence",
    "HMMEmissions",
    "SwitchingLinearDynamics",
    "GaussMarkov",
    "StateConditionedPath",
    "StateConditionedSwitchingPath",
    "AugmentedStatePath",
    "stick_breaking_log_probs",
    "LinearGaussianEmission",
    "LinearGaussianSSM",
    "DelayedPath",
    "pointwise_log_prob",
    "masked_log_prob",
    "support_point",
]

_LOG_2PI = math.log(2 * math.pi)


class StatePosterior(NamedTuple):
    """Exact conditional posterior of the discrete states of one switching site.

    Attributes
    ----------
    marginals : (..., T, K) p(z_t = k | everything else).
    viterbi : (..., T) the most probable path.
    sample : (..., T) one forward-filter backward-sample draw.
    log_normalizer : (...,) the marginal log density of the site.
    """

    marginals: jax.Array
    viterbi: jax.Array
    sample: jax.Array
    log_normalizer: jax.Array



def _per_state_mvn_logpdf(x, mean, scale_tril):
    """log N(x[..., k, :] | mean[..., k, :], L_k L_k^T) for every state k; x, mean (..., K, D).

    One triangular solve per state for all time steps at once (:func:`zoo.scans.
    solve_lower_broadcast`): batching a LAPACK solve per (step, state) pair instead makes the
    gradient two orders of magnitude slower.
    """
    r = x - mean
    D = r.shape[-1]
    w = scans.solve_lower_broadcast(scale_tril, r)
    half_logdet = jnp.sum(jnp.log(jnp.abs(jnp.diagonal(scale_tril, axis1=-2, axis2=-1))), -1)
    return -0.5 * jnp.sum(w**2, -1) - half_logdet - 0.5 * D * _LOG_2PI


def stick_breaking_log_probs(nu):
    """Log-probabilities of K states from K-1 stick-breaking logits.

    p(k) = sigmoid(nu_k) prod_{j<k} sigmoid(-nu_j) for k < K-1, and prod_{j<K-1} sigmoid(-nu_j)
    for the last state (Linderman et al. 2017): each logit is one binary decision, which is
    what makes the Polya-gamma augmentation Gaussian in nu.

    Parameters
    ----------
    nu : array (..., K-1)

    Returns
    -------
    array (..., K)
    """
    zero = jnp.zeros(nu.shape[:-1] + (1,), nu.dtype)
    stay = jnp.concatenate([jax.nn.log_sigmoid(nu), zero], -1)
    passed = jnp.concatenate([zero, jnp.cumsum(jax.nn.log_sigmoid(-nu), -1)], -1)
    return stay + passed


_TRANSITION_LINKS = {"softmax": lambda logits: jax.nn.log_softmax(logits, axis=-1),
                     "stick_breaking": stick_breaking_log_probs}


def _chain_log_prob(log_init, log_trans, states, mask=None):
    """log p(z) = log_init[z_1] + sum_t log_trans_t[z_{t-1}, z_t] of given state paths.

    Parameters
    ----------
    log_init : array (K,) or (..., K)
    log_trans : array (K, K) or (..., T-1, K, K)
    states : int array (..., T)
    mask : bool array (..., T), optional
        Steps that exist; the terms of padded steps are zero.

    Returns
    -------
    array (...,)
    """
    z = jnp.asarray(states)
    K = log_init.shape[-1]
    lead = log_trans.shape[:-3] if log_trans.ndim > 2 else ()
    batch = jnp.broadcast_shapes(z.shape[:-1], log_init.shape[:-1], lead)
    z = jnp.broadcast_to(z, batch + z.shape[-1:])
    first = jnp.take_along_axis(jnp.broadcast_to(log_init, batch + (K,)), z[..., :1], -1)[..., 0]
    if log_trans.ndim == 2:
        steps = log_trans[z[..., :-1], z[..., 1:]]
    else:
        lt = jnp.broadcast_to(log_trans, batch + log_trans.shape[-3:])
        rows = jnp.take_along_axis(lt, z[..., :-1, None, None], axis=-2)[..., 0, :]  # (..., T-1, K)
        steps = jnp.take_along_axis(rows, z[..., 1:, None], axis=-1)[..., 0]
    if mask is not None:
        first = jnp.where(mask[..., 0], first, 0.0)
        steps = jnp.where(mask[..., 1:], steps, 0.0)
    return first + jnp.sum(steps, -1)


def _select_states(per_state, states):
    """per_state (..., T, K) at the given states (..., T) -> (..., T)."""
    z = jnp.broadcast_to(states, per_state.shape[:-1])
    return jnp.take_along_axis(per_state, z[..., None], axis=-1)[..., 0]


def masked_log_prob(base: dist.Distribution, value):
    """Elementwise log density with NaN entries of ``value`` contributing exactly zero.

    NaN entries are replaced by a point of the support before evaluating, so that neither the
    value nor any gradient is poisoned by the missing data (the ``jnp.where`` gradient trap).
    """
    missing = jnp.isnan(value)
    safe = jnp.where(missing, support_point(base), value)
    return jnp.where(missing, 0.0, base.log_prob(safe))


def support_point(base: dist.Distribution) -> float:
    """A point of an elementwise distribution's support, to stand in for missing values.

    ``jnp.where(missing, support_point(base), value)`` keeps NaN entries of ``value`` out of
    ``base.log_prob`` and of its gradient (which a NaN would poison even where it is masked).

    Parameters
    ----------
    base : numpyro Distribution
        Discrete (0), positive (1) or real (0) support.

    Returns
    -------
    float
    """
    if base.is_discrete:
        return 0.0
    if base.support is constraints.positive:
        return 1.0
    return 0.0


# ----------------------------------------------------------------------------------------------
# Switching sequences: discrete states summed out
# ----------------------------------------------------------------------------------------------


class SwitchingSequence(Decodable, dist.Distribution):
    """Base class: a sequence whose discrete Markov states are summed out exactly.

    Subclasses provide the log initial state probabilities ``log_init`` (..., K), the
    transitions ``log_transitions(value)`` ((K, K) or (..., T-1, K, K)), the per-state
    log-likelihoods ``state_log_likelihoods(value)`` (..., T, K), and ancestral simulation
    ``sample_with_states(key, sample_shape)``. An optional boolean ``mask`` (..., T) marks the
    steps that exist (trials of different length: padded steps contribute nothing).

    ``parallel`` selects the scan (sequential or associative); the :class:`zoo.handlers.
    marginalize` handler sets it for every switching site of a program.
    """

    support = constraints.real_vector
    pytree_aux_fields = ("parallel", "num_states")

    def __init__(self, log_init, num_states, batch_shape, event_shape, mask=None, parallel=False,
                 validate_args=None):
        self.log_init = log_init
        self.num_states = num_states
        self.step_mask = mask
        self.parallel = parallel
        super().__init__(batch_shape, event_shape, validate_args=validate_args)

    # -- to be provided by subclasses
    def log_transitions(self, value):  # pragma: no cover - abstract
        raise NotImplementedError

    def state_log_likelihoods(self, value):  # pragma: no cover - abstract
        raise NotImplementedError

    def sample_with_states(self, key, sample_shape=()):  # pragma: no cover - abstract
        raise NotImplementedError

    def given_states(self, states) -> dist.Distribution:
        """The distribution of the sequence given its discrete states (int batch_shape + (T,)),
        whose ``log_prob`` is the joint log p(z, value); see :class:`zoo.handlers.
        condition_states`."""
        raise NotImplementedError(f"{type(self).__name__} cannot be conditioned on its states")

    # -- shared machinery
    def with_parallel(self, parallel: bool) -> SwitchingSequence:
        """A shallow copy computing its sums with the sequential or the parallel scan."""
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.parallel = parallel
        return new

    def _masked_state_log_likelihoods(self, value):
        ll = self.state_log_likelihoods(value)
        if self.step_mask is not None:
            m = jnp.broadcast_to(self.step_mask, ll.shape[:-1])
            ll = jnp.where(m[..., None], ll, 0.0)
        return ll

    def _hmm_args(self, value):
        return self.log_init, self.log_transitions(value), self._masked_state_log_likelihoods(value)

    def independent_state_log_probs(self, value):
        """log p(z_t | past) for t >= 2 when z_t does not depend on z_{t-1}, else ``None``.

        Subclasses whose transitions ignore the previous state (e.g. recurrent-only switching)
        return an array ``(..., T-1, K)``; the marginal then factorises over time and needs no
        forward scan.
        """
        return None

    def _independent_terms(self, value):
        """Per-step marginal terms when the states are independent given the path, else None."""
        logits = self.independent_state_log_probs(value)
        if logits is None:
            return None
        ll = self._masked_state_log_likelihoods(value)
        first = logsumexp(self.log_init + ll[..., 0, :], axis=-1)
        rest = logsumexp(logits + ll[..., 1:, :], axis=-1)
        return jnp.concatenate([first[..., None], rest], axis=-1)

    def log_prob(self, value):
        """Exact marginal log density log sum_z p(z, value), shape ``batch_shape``."""
        terms = self._independent_terms(value)
        if terms is not None:
            return jnp.sum(self._masked(terms), axis=-1)
        return scans.hmm_log_normalizer(*self._hmm_args(value), parallel=self.parallel)

    def _masked(self, terms):
        return terms if self.step_mask is None else jnp.where(self.step_mask, terms, 0.0)

    def pointwise_log_prob(self, value):
        """Per-step terms log p(v_t | v_{1:t-1}), shape ``batch_shape + (T,)``."""
        terms = self._independent_terms(value)
        if terms is not None:
            return self._masked(terms)
        terms = scans.hmm_pointwise_log_normalizer(*self._hmm_args(value), parallel=self.parallel)
        # padded steps contribute exactly nothing (differences of prefix sums leave round-off)
        return self._masked(terms)

    def state_posterior(self, value, key) -> StatePosterior:
        """Exact posterior of the discrete states given the sequence (smoothed marginals, the
        Viterbi path and one forward-filter backward-sample draw)."""
        args = self._hmm_args(value)
        sm = scans.hmm_smoother(*args, parallel=self.parallel)
        return StatePosterior(
            sm.smoothed_probs,
            scans.hmm_viterbi(*args, parallel=self.parallel),
            scans.hmm_sample(key, *args, parallel=self.parallel),
            sm.log_normalizer,
        )

    def posterior(self, value, key) -> StatePosterior:
        """:meth:`state_posterior`, the states being what this site sums out."""
        return self.state_posterior(value, key)

    def sample(self, key, sample_shape=()):
        return self.sample_with_states(key, sample_shape)[1]

    def sample_with_intermediates(self, key, sample_shape=()):
        z, value = self.sample_with_states(key, sample_shape)
        return value, [z]


def _sample_chain(key, log_init, log_trans_fn, T):
    """Ancestral draw of z_{1:T} when transitions are known in advance ((K,K) or (T-1,K,K))."""
    k0, k1 = jax.random.split(key)
    z0 = jax.random.categorical(k0, log_init)

    def step(z, inp):
        k, t = inp
        z = jax.random.categorical(k, log_trans_fn(t)[z])
        return z, z

    _, zs = lax.scan(step, z0, (jax.random.split(k1, T - 1), jnp.arange(T - 1)))
    return jnp.concatenate([z0[None], zs])


class HMMEmissions(SwitchingSequence):
    """Observed sequence of a hidden Markov model, states summed out.

    Parameters
    ----------
    log_init : array (K,)
        Log initial state probabilities.
    log_trans : array (K, K) or (..., T-1, K, K)
        Log transition probabilities.
    emission : numpyro Distribution
        State-conditional emission with ``batch_shape`` (..., K) (or (K,)) and event shape
        (N,): e.g. ``Normal(means, scales).to_event(1)`` with means (K, N). Must be an
        ``Independent`` wrapper of a factorised base so that missing entries can be dropped.
    num_steps : int
        T, the sequence length.
    batch_shape : tuple
        Trial shape, () or (B,).
    mask : array of bool (..., T), optional
        Steps that exist (False = padding of a shorter trial).
    """

    pytree_data_fields = ("log_init", "log_trans", "emission", "step_mask")

    def __init__(self, log_init, log_trans, emission, num_steps, batch_shape=(), mask=None,
                 parallel=False, validate_args=None):
        K = log_init.shape[-1]
        if not isinstance(emission, dist.Independent) or emission.batch_shape[-1:] != (K,):
            raise ValueError(
                "emission must be an Independent distribution with batch_shape (..., K) and event "
                f"shape (N,); got {type(emission).__name__} with batch_shape {emission.batch_shape}"
            )
        self.log_trans = log_trans
        self.emission = emission
        N = emission.event_shape[-1]
        super().__init__(log_init, K, tuple(batch_shape), (num_steps, N), mask, parallel,
                         validate_args)

    def log_transitions(self, value):
        return self.log_trans

    def state_log_likelihoods(self, value):
        # value (..., T, N) -> (..., T, K, N) elementwise, NaN-safe, summed over N
        lp = masked_log_prob(self.emission.base_dist, value[..., None, :])
        return jnp.sum(lp, axis=-1)

    def sample_with_states(self, key, sample_shape=()):
        T, N = self.event_shape
        shape = tuple(sample_shape) + self.batch_shape
        n = max(math.prod(shape), 1)
        lt = self.log_trans
        fn = (lambda t: lt) if lt.ndim == 2 else (lambda t: lt[t])
        kz, ky = jax.random.split(key)
        z = jax.vmap(lambda k: _sample_chain(k, self.log_init, fn, T))(jax.random.split(kz, n))
        y_all = self.emission.base_dist.sample(ky, (n, T))  # (n, T, K, N)
        y = jnp.take_along_axis(y_all, z[:, :, None, None], axis=2)[:, :, 0]
        return z.reshape(shape + (T,)), y.reshape(shape + (T, N))


class SwitchingLinearDynamics(SwitchingSequence):
    """Latent path of a (recurrent) switching linear dynamical system, states summed out.

    x_1 | z_1 = k ~ N(init_mean[k], init_scale_tril[k] init_scale_tril[k]^T),
    x_t | x_{t-1}, z_t = k ~ N(A_k x_{t-1} + b_k, Q_k) with Q_k = L_k L_k^T,
    p(z_t = j | z_{t-1} = i, x_{t-1}) = softmax_j(R_j x_{t-1} + r_j + log P[i, j]) (recurrent),
    softmax_j(R_j x_{t-1} + r_j) (recurrent-only, ``log_P=None``), or P[i, j] (``R=None``).

    Parameters
    ----------
    log_init : array (K,)
    A : array (K, D, D)
    b : array (K, D) or (..., T, K, D)
        Offsets; time-varying offsets carry inputs, b_k + V_k u_t (index t is used for step t).
    scale_tril : array (K, D, D)
        Cholesky factors of the dynamics noise covariances.
    init_mean : array (K, D)
    init_scale_tril : array (K, D, D)
    log_P : array (K, K) or None
        Log transition matrix (``None`` for recurrent-only transitions).
    R : array (K, D) or None
        Recurrence weights (``None`` for non-recurrent transitions).
    r : array (K,) or (..., T, K) or None
        Recurrence biases (time-varying ones carry inputs, r + W u_t).
    num_steps : int
    batch_shape : tuple
    mask : array of bool (..., T), optional
    link : {"softmax", "stick_breaking"}
        How the recurrence's logits give the transition probabilities. "stick_breaking"
        (recurrent-only transitions): R (K-1, D) and r (K-1,) give the logits nu = R x + r of
        :func:`stick_breaking_log_probs`, which a Polya-gamma augmentation makes Gaussian in x
        (:meth:`given_states` with ``augmentation``).
    """

    pytree_data_fields = (
        "log_init", "A", "b", "scale_tril", "init_mean", "init_scale_tril", "log_P", "R", "r", "step_mask",
    )
    pytree_aux_fields = ("link",)

    def __init__(self, log_init, A, b, scale_tril, init_mean, init_scale_tril, log_P=None, R=None,
                 r=None, num_steps=None, batch_shape=(), mask=None, parallel=False, link="softmax",
                 validate_args=None):
        K, D = A.shape[0], A.shape[-1]
        if log_P is None and R is None:
            raise ValueError("transitions need log_P, R, or both")
        if link not in _TRANSITION_LINKS:
            raise ValueError(f"link must be one of {sorted(_TRANSITION_LINKS)}; got {link!r}")
        if link == "stick_breaking" and (log_P is not None or R is None or jnp.shape(R)[0] != K - 1):
            got = None if R is None else jnp.shape(R)
            raise ValueError(f"link='stick_breaking' needs recurrent-only transitions (log_P None) and R "
                             f"of shape (K-1, D) = ({K - 1}, {D}); got R {got}")
        self.link = link
        self.A, self.b, self.scale_tril = A, b, scale_tril
        self.init_mean, self.init_scale_tril = init_mean, init_scale_tril
        self.log_P, self.R = log_P, R
        self.r = jnp.zeros(jnp.shape(R)[0], A.dtype) if (R is not None and r is None) else r
        super().__init__(log_init, K, tuple(batch_shape), (num_steps, D), mask, parallel,
                         validate_args)

    def _logits_from(self, x_prev, r_t):
        """Transition log-probabilities given the previous continuous state: (K, K), or (K,)
        rows shared by every previous state for recurrent-only transitions."""
        if self.R is None:
            return self.log_P
        logits = x_prev @ self.R.T + r_t  # over destination states
        if self.log_P is not None:
            logits = logits + self.log_P
        return _TRANSITION_LINKS[self.link](logits)

    def independent_state_log_probs(self, value):
        if self.log_P is not None or self.R is None:
            return None
        r = self.r if self.r.ndim == 1 else self.r[..., 1:, :]
        return _TRANSITION_LINKS[self.link](value[..., :-1, :] @ self.R.T + r)  # (..., T-1, K)

    def log_transitions(self, value):
        if self.R is None:
            return self.log_P
        r = self.r if self.r.ndim == 1 else self.r[..., 1:, :]  # r for the transition into t
        logits = (value[..., :-1, :] @ self.R.T + r)[..., None, :]  # (..., T-1, 1, K)
        if self.log_P is not None:
            logits = logits + self.log_P
        K = self.num_states
        return jnp.broadcast_to(_TRANSITION_LINKS[self.link](logits), logits.shape[:-2] + (K, K))

    def state_log_likelihoods(self, value):
        x_prev, x = value[..., :-1, :], value[..., 1:, :]
        mean = jnp.einsum("kij,...tj->...tki", self.A, x_prev)
        b = self.b if self.b.ndim == 2 else self.b[..., 1:, :, :]
        K = self.num_states
        ll = _per_state_mvn_logpdf(jnp.broadcast_to(x[..., None, :], mean.shape), mean + b,
                                   self.scale_tril)  # (..., T-1, K)
        x0 = jnp.broadcast_to(value[..., :1, None, :], value.shape[:-2] + (1, K, value.shape[-1]))
        ll0 = _per_state_mvn_logpdf(x0, jnp.broadcast_to(self.init_mean, x0.shape), self.init_scale_tril)
        return jnp.concatenate([ll0, ll], axis=-2)

    def sample_with_states(self, key, sample_shape=()):
        # parameters may arrive as NumPy arrays (e.g. from a dataset dict); traced state indices
        # can only index JAX arrays
        self = jax.tree.map(jnp.asarray, self)
        T, D = self.event_shape
        K = self.num_states
        sample_shape, batch = tuple(sample_shape), self.batch_shape
        nb, ns = max(math.prod(batch), 1), max(math.prod(sample_shape), 1)
        # time-varying offsets and recurrence biases, one row per trial
        b = jnp.broadcast_to(self.b, batch + (T, K, D)).reshape(nb, T, K, D) if self.b.ndim > 2 \
            else jnp.broadcast_to(self.b, (nb, T, K, D))
        r = jnp.zeros(K, b.dtype) if self.r is None else self.r
        rows = r.shape[-1]  # K, or K - 1 sticks
        r = jnp.broadcast_to(r, batch + (T, rows)).reshape(nb, T, rows) if r.ndim > 1 \
            else jnp.broadcast_to(r, (nb, T, rows))

        def one(k, bb, rr):
            k0, k1, k2 = jax.random.split(k, 3)
            z0 = jax.random.categorical(k0, self.log_init)
            x0 = self.init_mean[z0] + self.init_scale_tril[z0] @ jax.random.normal(k1, (D,), b.dtype)

            def step(carry, inp):
                z, x = carry
                kk, t = inp
                ka, kb = jax.random.split(kk)
                logits = self._logits_from(x, rr[t])
                z = jax.random.categorical(ka, logits if logits.ndim == 1 else logits[z])
                x = self.A[z] @ x + bb[t, z] + self.scale_tril[z] @ jax.random.normal(kb, (D,), x.dtype)
                return (z, x), (z, x)

            _, (zs, xs) = lax.scan(step, (z0, x0), (jax.random.split(k2, T - 1), jnp.arange(1, T)))
            return jnp.concatenate([z0[None], zs]), jnp.concatenate([x0[None], xs])

        keys = jax.random.split(key, ns * nb).reshape((ns, nb) + jax.random.split(key, 1).shape[1:])
        z, x = jax.vmap(jax.vmap(one), in_axes=(0, None, None))(keys, b, r)
        return z.reshape(sample_shape + batch + (T,)), x.reshape(sample_shape + batch + (T, D))

    def _gauss_markov_given(self, states) -> StateConditionedPath:
        """The Gauss-Markov path given the states (the transitions as if not recurrent)."""
        log_P = jnp.zeros((self.num_states,) * 2) if self.log_P is None else jnp.asarray(self.log_P)
        return StateConditionedPath(*self._path_given(states), states, jnp.asarray(self.log_init), log_P,
                                    self.event_shape[0], self.batch_shape, self.step_mask)

    def _path_given(self, states) -> tuple:
        """(m0, P0, F, b, Q) of the Gauss-Markov path x | z, per trial."""
        T, D = self.event_shape
        K, batch = self.num_states, self.batch_shape
        # parameters may be NumPy arrays; traced state indices can only index JAX arrays
        A, b, L = map(jnp.asarray, (self.A, self.b, self.scale_tril))
        init_mean, init_L = jnp.asarray(self.init_mean), jnp.asarray(self.init_scale_tril)
        z0, zs = states[..., 0], states[..., 1:]
        L0 = init_L[z0]
        Lq = L[zs]
        if b.ndim == 2:
            bt = b[zs]
        else:
            bb = jnp.broadcast_to(b, batch + (T, K, D))[..., 1:, :, :]  # b_t for the step into t
            bt = jnp.take_along_axis(bb, zs[..., None, None], axis=-2)[..., 0, :]
        return init_mean[z0], L0 @ jnp.swapaxes(L0, -1, -2), A[zs], bt, Lq @ jnp.swapaxes(Lq, -1, -2)

    def given_states(self, states, augmentation=None):
        """The distribution of the path given the discrete states z.

        Parameters
        ----------
        states : int array batch_shape + (T,)
        augmentation : array batch_shape + (T-1, K-1), optional
            Polya-gamma variables omega of the stick-breaking transitions (``link=
            "stick_breaking"``), one per transition into steps 2..T and stick; see
            :class:`AugmentedStatePath`.

        Returns
        -------
        StateConditionedPath, AugmentedStatePath or StateConditionedSwitchingPath
            Non-recurrent transitions (``R is None``): the Gauss-Markov path x | z (a
            :class:`GaussMarkov`, so :class:`zoo.handlers.integrate_out` integrates it out), whose
            ``log_prob`` is log p(z, x | theta) and ``states_log_prob()`` log p(z | theta).
            Stick-breaking transitions with ``augmentation``: the Gauss-Markov path x | z, omega
            (:class:`AugmentedStatePath`, also integrated out). Other recurrent transitions:
            :class:`StateConditionedSwitchingPath`, whose ``log_prob`` is log p(z, x | theta)
            (not Gaussian in x).
        """
        z = jnp.asarray(states)
        T = self.event_shape[0]
        if not jnp.issubdtype(z.dtype, jnp.integer) or z.shape != self.batch_shape + (T,):
            raise ValueError(f"states must be an integer array of shape batch_shape + (T,) = "
                             f"{self.batch_shape + (T,)}; got {z.dtype} {z.shape}")
        if augmentation is not None:
            return self._augmented_given(z, augmentation)
        if self.R is None:
            return self._gauss_markov_given(z)
        return StateConditionedSwitchingPath(self, z)

    def _augmented_given(self, z, omega) -> AugmentedStatePath:
        """x | z, omega for stick-breaking transitions: the transition into step t, given the
        Polya-gamma variables omega_{t,k} of the sticks it reached (z_t >= k), is the factor
        prod_k 2^-1 exp(kappa nu_k - omega nu_k^2 / 2) with nu = R x_{t-1} + r_t and kappa =
        [z_t = k] - 1/2 (Polson, Scott and Windle 2013): Gaussian information on x_{t-1}."""
        T = self.event_shape[0]
        K = self.num_states
        if self.link != "stick_breaking":
            raise ValueError(f"augmentation needs link='stick_breaking'; this path has link={self.link!r}")
        omega = jnp.asarray(omega)
        if omega.shape != self.batch_shape + (T - 1, K - 1):
            raise ValueError(f"augmentation must have shape batch_shape + (T-1, K-1) = "
                             f"{self.batch_shape + (T - 1, K - 1)}; got {omega.shape}")
        J, h, constant = self.transition_information(z[..., 1:], omega)
        # the last step's state informs no transition
        information = (jnp.concatenate([J, jnp.zeros_like(J[..., :1, :, :])], -3),
                       jnp.concatenate([h, jnp.zeros_like(h[..., :1, :])], -2))
        return AugmentedStatePath(*self._path_given(z), z, jnp.asarray(self.log_init), constant, T,
                                  self.batch_shape, self.step_mask, information)

    def transition_information(self, next_states, omega) -> tuple[jax.Array, jax.Array, jax.Array]:
        """The Polya-gamma-augmented stick-breaking transitions as Gaussian factors on the path.

        Given omega, the transition into step t + 1 with state z_{t+1} contributes
        exp(-x_t' J_t x_t / 2 + h_t' x_t + c_t) (:meth:`given_states`). For a candidate
        ``next_states`` that need not be the chain's (:func:`zoo.collapsed_states.
        single_move_states` scores every state of a site with it).

        Parameters
        ----------
        next_states : int array batch_shape + (T-1,)
            z_2 .. z_T.
        omega : array batch_shape + (T-1, K-1)

        Returns
        -------
        J : array batch_shape + (T-1, D, D)
        h : array batch_shape + (T-1, D)
        c : array batch_shape + (T-1,)
            Padded steps (``mask``) give zeros.
        """
        from zoo.polya_gamma import stick_breaking_factor

        r = jnp.asarray(self.r)
        r = r if r.ndim == 1 else r[..., 1:, :]  # r for the transition into t
        present = None if self.step_mask is None else self.step_mask[..., 1:]
        return stick_breaking_factor(jnp.asarray(self.R), r, omega, next_states, present)


# ----------------------------------------------------------------------------------------------
# Switching paths given their states
# ----------------------------------------------------------------------------------------------


class StateConditionedPath(GaussMarkov):
    """Path of a (non-recurrent) switching linear dynamical system given its discrete states.

    Given z_{1:T}, x_1 ~ N(init_mean[z_1], init_scale_tril[z_1] init_scale_tril[z_1]^T) and
    x_t = A[z_t] x_{t-1} + b_t[z_t] + N(0, Q[z_t]): a Gauss-Markov path with time-varying (and,
    with trials, per-trial) parameters, which :class:`zoo.handlers.integrate_out` integrates out and
    :class:`zoo.handlers.decode` draws exactly. Built by
    :meth:`SwitchingLinearDynamics.given_states`.

    ``log_prob(x)`` is the joint log p(z, x | theta) = :meth:`states_log_prob` + the Gaussian
    path density; integrated out, the site contributes :meth:`states_log_prob` alone.

    Parameters
    ----------
    m0, P0, F, b, Q : arrays
        As :class:`GaussMarkov`: batch_shape + (D,), (D, D), (T-1, D, D), (T-1, D), (T-1, D, D).
    states : int array batch_shape + (T,)
        The discrete states z.
    log_init : array (K,)
        Log initial state probabilities.
    log_trans : array (K, K)
        Log transition probabilities.
    num_steps : int
    batch_shape : tuple
    mask : bool array batch_shape + (T,), optional
        Steps that exist (trials padded at the end); padded steps contribute nothing.
    """

    pytree_data_fields = ("states", "log_init", "log_trans")

    def __init__(self, m0, P0, F, b, Q, states, log_init, log_trans, num_steps, batch_shape=(),
                 mask=None, validate_args=None):
        self.states, self.log_init, self.log_trans = states, log_init, log_trans
        super().__init__(m0, P0, F, b, Q, num_steps, batch_shape, mask, validate_args)

    def states_log_prob(self):
        """log p(z | theta) = log_init[z_1] + sum_t log_trans[z_{t-1}, z_t] over existing
        steps, shape ``batch_shape``."""
        return _chain_log_prob(self.log_init, self.log_trans, self.states, self.step_mask)


class AugmentedStatePath(GaussMarkov):
    """Path of a stick-breaking recurrent SLDS given its states and Polya-gamma variables.

    Given z and the Polya-gamma variables omega of the stick-breaking transitions, the
    transitions' likelihood is Gaussian in x (:meth:`SwitchingLinearDynamics._augmented_given`),
    so x | z, omega is a Gauss-Markov path with extra information factors, which
    :class:`zoo.handlers.integrate_out` integrates out by the Kalman filter and
    :class:`zoo.handlers.decode` draws exactly.

    ``log_prob(x)`` is log p(z, omega, x | theta) up to sum log PG(omega | 1, 0), which depends
    on no parameter: log_init[z_1] + the Gaussian path density + the transitions' factors
    (their x-free part is ``constant``).

    Parameters
    ----------
    m0, P0, F, b, Q : arrays
        As :class:`GaussMarkov` (per trial).
    states : int array batch_shape + (T,)
    log_init : array (K,)
    constant : array batch_shape + (T-1,)
        The x-free part of each transition's log factor.
    num_steps : int
    batch_shape : tuple
    mask : bool array batch_shape + (T,), optional
    information : tuple of arrays
        (J, h), batch_shape + (T, D, D) and (T, D).
    """

    pytree_data_fields = ("states", "log_init", "constant")

    def __init__(self, m0, P0, F, b, Q, states, log_init, constant, num_steps, batch_shape=(), mask=None,
                 information=None, validate_args=None):
        self.states, self.log_init, self.constant = states, log_init, constant
        super().__init__(m0, P0, F, b, Q, num_steps, batch_shape, mask, information, validate_args)

    def states_log_prob(self):
        """log p(z, omega | theta) without its x-dependent part, shape ``batch_shape``."""
        first = self.log_init[self.states[..., 0]]
        if self.step_mask is not None:
            first = jnp.where(self.step_mask[..., 0], first, 0.0)
        return first + jnp.sum(self.constant, -1)


class StateConditionedSwitchingPath(dist.Distribution):
    """Path of a recurrent switching linear dynamical system given its discrete states.

    The transitions p(z_t | z_{t-1}, x_{t-1}) depend on the path, so x given z is not Gaussian
    and :class:`zoo.handlers.integrate_out` leaves it alone. Built by
    :meth:`SwitchingLinearDynamics.given_states`.

    ``log_prob(x)`` = log p(z, x | theta) = log_init[z_1] + log N(x_1 | z_1)
    + sum_t [log p(z_t | z_{t-1}, x_{t-1}) + log N(x_t | A_{z_t} x_{t-1} + b_t[z_t], Q_{z_t})],
    padded steps excluded; shape (...,) for x (..., T, D).

    Parameters
    ----------
    dynamics : SwitchingLinearDynamics
        The switching path (with recurrent transitions).
    states : int array batch_shape + (T,)
        The discrete states z.
    """

    support = constraints.real_vector
    pytree_data_fields = ("dynamics", "states")

    def __init__(self, dynamics: SwitchingLinearDynamics, states, validate_args=None):
        self.dynamics, self.states = dynamics, states
        super().__init__(dynamics.batch_shape, dynamics.event_shape, validate_args=validate_args)

    def log_prob(self, value):
        dyn = self.dynamics
        gauss = jnp.sum(_select_states(dyn._masked_state_log_likelihoods(value), self.states), -1)
        return gauss + _chain_log_prob(dyn.log_init, dyn.log_transitions(value), self.states, dyn.step_mask)

    def sample(self, key, sample_shape=()):
        """A draw of the Gauss-Markov part given the states (x_t = A_{z_t} x_{t-1} + b + noise),
        which ignores how the transition probabilities depend on x: not an exact draw of
        p(x | z, theta); good enough as a starting value."""
        return self.dynamics._gauss_markov_given(self.states).sample(key, sample_shape)


# ----------------------------------------------------------------------------------------------
# Pointwise log-likelihoods of any site
# ----------------------------------------------------------------------------------------------


def pointwise_log_prob(fn: dist.Distribution, value, time_axis_event_dim: int | None = None):
    """Per-time-step log density of a sequence-level site, shape ``batch_shape + (T,)``.

    Sequence distributions of this module provide it exactly (log p(v_t | v_{1:t-1}) for
    sequences whose steps are dependent). For factorised sites (``Independent`` or masked
    wrappers of elementwise distributions with event shape (T, ...)), the elementwise terms are
    summed over the event dims after time. Returns None when the site has no time axis.
    """
    if hasattr(fn, "pointwise_log_prob"):
        return fn.pointwise_log_prob(value)
    if isinstance(fn, dist.MaskedDistribution):
        inner = pointwise_log_prob(fn.base_dist, value)
        if inner is None:
            return None
        mask = fn._mask
        if mask is True or mask is None:
            return inner
        if mask is False:
            return jnp.zeros_like(inner)
        return jnp.where(jnp.broadcast_to(mask, inner.shape[: jnp.ndim(mask)])[..., None], inner, 0.0) \
            if jnp.ndim(mask) < inner.ndim else jnp.where(mask, inner, 0.0)
    if isinstance(fn, dist.Independent):
        ev = len(fn.event_shape)
        if ev == 0:
            return None
        lp = masked_log_prob(fn.base_dist, value) if jnp.issubdtype(jnp.result_type(value), jnp.floating) \
            else fn.base_dist.log_prob(value)
        # sum all event dims after the first (time) one, plus base event dims already summed
        base_ev = len(fn.base_dist.event_shape)
        extra = ev - base_ev - 1
        return jnp.sum(lp, axis=tuple(range(-extra, 0))) if extra > 0 else lp
    return None


# the old name of the delayed value, importable for a release
DelayedPath = Delayed
