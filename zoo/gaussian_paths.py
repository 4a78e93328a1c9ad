"""Linear-Gaussian paths: the Gauss-Markov prior, linear-Gaussian emissions of a path, and their
Kalman marginal with the path integrated out.

:class:`GaussMarkov` is a :class:`~zoo.conjugate.ConjugatePrior`: under
:class:`zoo.handlers.integrate_out` the path is not sampled, a :class:`~zoo.conjugate.Delayed`
value stands for it, and the :class:`LinearGaussianEmission` that consumes it becomes the Kalman
marginal :class:`LinearGaussianSSM`, whose :meth:`LinearGaussianSSM.posterior` draws the path
exactly afterwards (:class:`zoo.handlers.decode`).

Shapes: ``batch_shape`` is the trial shape (B,) or (); ``event_shape`` is (T, N) or (T, D).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from numpyro.distributions import constraints

from zoo import scans
from zoo.conjugate import ConjugatePrior, ConsumesDelayed, Decodable, Delayed
from zoo.scans.kalman import canonical_lgssm, mask_missing

__all__ = ["PathPosterior", "GaussMarkov", "LinearGaussianEmission", "LinearGaussianSSM"]

_LOG_2PI = math.log(2 * math.pi)


class PathPosterior(NamedTuple):
    """Exact conditional posterior of a collapsed linear-Gaussian path.

    Attributes
    ----------
    sample : (..., T, D) one exact draw of the path.
    means : (..., T, D) smoothed means.
    covariances : (..., T, D, D) smoothed covariances.
    """

    sample: jax.Array
    means: jax.Array
    covariances: jax.Array


def _mvn_logpdf_tril(x, mean, scale_tril):
    """log N(x | mean, L L^T) with a Cholesky factor; broadcasts over leading dims."""
    r = x - mean
    w = scans.solve_lower(scale_tril, r[..., None])[..., 0]
    half_logdet = jnp.sum(jnp.log(jnp.abs(jnp.diagonal(scale_tril, axis1=-2, axis2=-1))), -1)
    return -0.5 * jnp.sum(w**2, -1) - half_logdet - 0.5 * x.shape[-1] * _LOG_2PI


def _mvn_logpdf_tril_bc(x, mean, scale_tril):
    """:func:`_mvn_logpdf_tril` with the factor broadcast to the batch dims of x - mean."""
    shape = jnp.broadcast_shapes(x.shape, mean.shape)[:-1] + scale_tril.shape[-2:]
    return _mvn_logpdf_tril(x, mean, jnp.broadcast_to(scale_tril, shape))


class GaussMarkov(ConjugatePrior):
    """Gauss-Markov path x_1 ~ N(m0, P0), x_t = F_t x_{t-1} + b_t + N(0, Q_t).

    Parameters
    ----------
    m0 : array (D,) or batch_shape + (D,)
    P0 : array (D, D) or batch_shape + (D, D)
    F : array (D, D) or (T-1, D, D), or either with batch_shape in front
    b : array (D,) or (T-1, D), or either with batch_shape in front
    Q : array (D, D) or (T-1, D, D), or either with batch_shape in front
        Time-varying parameters carry the T-1 transitions into steps 2..T.
    num_steps : int
        T.
    batch_shape : tuple
        Trial shape, () or (B,). The trials share the parameters when ``m0`` is (D,); when ``m0``
        is batch_shape + (D,), every parameter has the batch_shape in front (per-trial
        parameters, e.g. a path given each trial's discrete states).
    mask : bool array batch_shape + (T,), optional
        Steps that exist (trials padded at the end): padded steps add nothing to ``log_prob``.
    information : tuple of arrays (T, D, D) and (T, D), optional
        Extra factors exp(-x_t' J_t x_t / 2 + h_t' x_t) on each step (batch_shape in front with
        per-trial parameters), e.g. a Polya-gamma-augmented transition likelihood: ``log_prob``
        includes them and the Kalman marginal integrates them (the density is then unnormalised
        in x, and the path cannot be sampled from it alone).

    Under the :class:`zoo.handlers.integrate_out` handler the path is not sampled: a
    :class:`~zoo.conjugate.Delayed` value stands for it, and a :class:`LinearGaussianEmission` of
    it becomes the Kalman marginal :class:`LinearGaussianSSM`.
    """

    support = constraints.real_vector
    pytree_data_fields = ("m0", "P0", "F", "b", "Q", "step_mask", "information")
    consumer = "the x of a LinearGaussianEmission"

    def __init__(self, m0, P0, F, b, Q, num_steps, batch_shape=(), mask=None, information=None,
                 validate_args=None):
        batch_shape = tuple(batch_shape)
        pb = jnp.shape(m0)[:-1]
        if pb not in ((), batch_shape):
            raise ValueError(f"m0 must have shape (D,) or batch_shape + (D,) = {batch_shape + (-1,)}; "
                             f"got {jnp.shape(m0)}")
        nb, T = len(pb), num_steps
        for name, val, per_trial in (("P0", P0, (2,)), ("F", F, (2, 3)), ("b", b, (1, 2)), ("Q", Q, (2, 3))):
            if jnp.ndim(val) - nb not in per_trial or jnp.shape(val)[:nb] != pb:
                raise ValueError(f"{name} must have {pb} in front of its per-trial shape when m0 has "
                                 f"shape {jnp.shape(m0)}; got {jnp.shape(val)} (num_steps={T})")
        self.m0, self.P0, self.F, self.b, self.Q = m0, P0, F, b, Q
        self.step_mask = mask
        D = jnp.shape(m0)[-1]
        if information is not None and (jnp.shape(information[0]) != pb + (T, D, D)
                                        or jnp.shape(information[1]) != pb + (T, D)):
            raise ValueError(f"information must be (J, h) of shapes {pb + (T, D, D)} and {pb + (T, D)}; "
                             f"got {jnp.shape(information[0])} and {jnp.shape(information[1])}")
        self.information = information
        super().__init__(batch_shape, (num_steps, jnp.shape(m0)[-1]), validate_args=validate_args)

    def _param_batch_ndim(self) -> int:
        """Number of leading batch dims of the parameters: 0 (shared) or len(batch_shape)."""
        return jnp.ndim(self.m0) - 1

    def _tv(self):
        """Parameters with an explicit time axis: m0 (P..., D), P0 (P..., D, D), F (P..., T-1,
        D, D), b (P..., T-1, D), Q (P..., T-1, D, D), with P... the parameters' batch dims."""
        T, D = self.event_shape

        dtype = jnp.result_type(self.m0, self.P0, self.F, self.b, self.Q, jnp.float32)

        def canon(m0, P0, F, b, Q):
            p = canonical_lgssm(T, m0, P0, F, b, Q, jnp.zeros((1, D), dtype), jnp.zeros(1, dtype),
                                jnp.eye(1, dtype=dtype), dtype)
            return p.m0, p.P0, p.F, p.b, p.Q

        for _ in range(self._param_batch_ndim()):
            canon = jax.vmap(canon)
        return canon(self.m0, self.P0, self.F, self.b, self.Q)

    def states_log_prob(self):
        """log p(z | theta) of the discrete states the path is conditioned on, shape
        ``batch_shape``: none here (zero); see :class:`StateConditionedPath`."""
        return jnp.zeros(self.batch_shape, jnp.result_type(self.m0, jnp.float32))

    def integrated_log_prob(self):
        """What the site contributes with the path integrated out: :meth:`states_log_prob`."""
        return self.states_log_prob()

    def path_log_prob(self, value):
        """The Gaussian path density log N(value | m0, P0, F, b, Q), padded steps excluded.

        Parameters
        ----------
        value : array (..., T, D), ... ending with batch_shape

        Returns
        -------
        array (...,)
        """
        m0, P0, F, b, Q = self._tv()
        lp0 = _mvn_logpdf_tril_bc(value[..., 0, :], m0, jnp.linalg.cholesky(P0))
        mean = jnp.einsum("...tij,...tj->...ti", F, value[..., :-1, :]) + b
        lp = _mvn_logpdf_tril_bc(value[..., 1:, :], mean, jnp.linalg.cholesky(Q))
        if self.information is not None:
            J, h = self.information
            Jx = jnp.einsum("...tij,...tj->...ti", J, value)
            extra = jnp.einsum("...ti,...ti->...t", value, h - 0.5 * Jx)
            lp = lp + extra[..., 1:]
            lp0 = lp0 + extra[..., 0]
        if self.step_mask is not None:
            lp0 = jnp.where(self.step_mask[..., 0], lp0, 0.0)
            lp = jnp.where(self.step_mask[..., 1:], lp, 0.0)
        return lp0 + jnp.sum(lp, -1)

    def log_prob(self, value):
        """log p(z, x) = ``states_log_prob()`` + ``path_log_prob(value)``, shape (...,)."""
        return self.states_log_prob() + self.path_log_prob(value)

    def sample(self, key, sample_shape=()):
        if self.information is not None:
            raise NotImplementedError("a Gauss-Markov path with extra information factors has no "
                                      "sampler of its own: draw it given observations (zoo.handlers.decode)")
        m0, P0, F, b, Q = self._tv()
        T, D = self.event_shape
        sample_shape, batch = tuple(sample_shape), self.batch_shape
        ns, nbt = max(math.prod(sample_shape), 1), max(math.prod(batch), 1)

        def one(k, m0, P0, F, b, Q):
            k0, k1 = jax.random.split(k)
            x0 = m0 + jnp.linalg.cholesky(P0) @ jax.random.normal(k0, (D,), m0.dtype)
            eps = jax.random.normal(k1, (T - 1, D), m0.dtype)
            noise = jnp.einsum("tij,tj->ti", jnp.linalg.cholesky(Q), eps)
            xs = scans.linear_recurrence(F, b + noise, x0, parallel=False)
            return jnp.concatenate([x0[None], xs])

        keys = jax.random.split(key, ns * nbt).reshape((ns, nbt) + jax.random.split(key, 1).shape[1:])
        params = (m0, P0, F, b, Q)
        if self._param_batch_ndim():
            params = tuple(p.reshape((nbt,) + p.shape[len(batch):]) for p in params)
            inner = jax.vmap(one)
        else:
            inner = jax.vmap(one, in_axes=(0,) + (None,) * 5)
        x = jax.vmap(inner, in_axes=(0,) + (None,) * 5)(keys, *params)
        return x.reshape(sample_shape + batch + (T, D))


class LinearGaussianEmission(ConsumesDelayed, dist.Distribution):
    """y_t = H x_t + d + N(0, R) given a path x (or a :class:`~zoo.conjugate.Delayed` path under
    :class:`zoo.handlers.integrate_out`, which swaps in :meth:`integrated`).

    Parameters
    ----------
    x : array (..., T, D) or Delayed
    H : array (N, D)
    d : array (N,) or (..., T, N)
        Offsets (time-varying ones carry inputs).
    R : array (N, N) or (N,)
        Emission covariance, or the variances of a diagonal one (which the Kalman marginal
        with the path integrated out handles in information form); NaN entries of an observed
        y are missing.
    """

    support = constraints.real_vector
    pytree_data_fields = ("x", "H", "d", "R")

    def __init__(self, x, H, d, R, validate_args=None):
        if jnp.ndim(R) not in (1, 2):
            raise ValueError(f"R must have shape (N, N) or (N,); got {jnp.shape(R)}")
        self.x, self.H, self.d, self.R = x, H, d, R
        shape = x.shape
        super().__init__(tuple(shape[:-2]), (shape[-2], H.shape[0]), validate_args=validate_args)

    def _covariance(self):
        return jnp.diag(self.R) if jnp.ndim(self.R) == 1 else self.R

    def integrated(self, parallel: bool = False) -> LinearGaussianSSM | None:
        """The Kalman marginal of y when x is a delayed Gauss-Markov path, else None.

        Parameters
        ----------
        parallel : bool
            Sequential or associative-scan Kalman filter.

        Returns
        -------
        LinearGaussianSSM or None
        """
        if isinstance(self.x, Delayed) and isinstance(self.x.prior, GaussMarkov):
            return LinearGaussianSSM(self.x.prior, self.H, self.d, self.R, parallel=parallel)
        return None

    def log_prob(self, value):
        return jnp.sum(self.pointwise_log_prob(value), -1)

    def pointwise_log_prob(self, value):
        # condition on the observed entries of each row: zero out the missing ones
        mean = self.x @ self.H.T + self.d
        missing = jnp.isnan(value)
        y0, _, _, R0, corr = mask_missing(value, jnp.zeros(value.shape + (1,)),
                                          jnp.zeros(value.shape[-1]), self._covariance())
        return _mvn_logpdf_tril(y0, jnp.where(missing, 0.0, mean), jnp.linalg.cholesky(R0)) + corr

    def sample(self, key, sample_shape=()):
        shape = tuple(sample_shape) + self.batch_shape + self.event_shape
        eps = jax.random.normal(key, shape, self.H.dtype)
        return self.x @ self.H.T + self.d + eps @ jnp.linalg.cholesky(self._covariance()).T


class LinearGaussianSSM(Decodable, dist.Distribution):
    """Observed sequence of a linear-Gaussian state-space model, path integrated out.

    ``log_prob`` is the Kalman-filter marginal likelihood (NaN entries missing); the path's
    exact posterior is available through :meth:`path_posterior` (:meth:`posterior`, which
    :class:`zoo.handlers.decode` reads). Trials run through one Kalman
    filter each, with their own parameters where the prior has per-trial parameters or the
    emission offsets are per trial.

    Parameters
    ----------
    prior : GaussMarkov
        The latent path's prior (parameters m0, P0, F, b, Q, shared or per trial; trial batch
        shape).
    H : array (N, D)
    d : array (N,), (T, N) or batch_shape + (T, N)
        Emission offsets (time-varying ones carry inputs).
    R : array (N, N) or (N,)
        Emission covariance, or the variances of a diagonal one.
    parallel : bool
        Sequential or associative-scan Kalman filter.
    """

    support = constraints.real_vector
    pytree_data_fields = ("prior", "H", "d", "R")
    pytree_aux_fields = ("parallel",)

    def __init__(self, prior: GaussMarkov, H, d, R, parallel=False, validate_args=None):
        self.prior, self.H, self.d, self.R, self.parallel = prior, H, d, R, parallel
        T = prior.event_shape[0]
        super().__init__(prior.batch_shape, (T, H.shape[0]), validate_args=validate_args)

    def _params(self):
        p = self.prior
        return (p.m0, p.P0, p.F, p.b, p.Q, self.H, self.d, self.R)

    def _per_trial(self, fn, value, key=None):
        """``fn(y, key, information, m0, P0, F, b, Q, H, d, R)`` of one trial's parameters,
        mapped over the trials when their parameters differ; leaves of the result have shape
        value.shape[:-2] in front."""
        batch = self.batch_shape
        nb = len(batch)
        T, N = self.event_shape
        per_trial_d = jnp.ndim(self.d) > 2
        info = self.prior.information
        if nb == 0 or (self.prior._param_batch_ndim() == 0 and not per_trial_d):
            return fn(value, key, info, *self._params())
        nbt = math.prod(batch)
        m0, P0, F, b, Q = self.prior._tv()
        d = jnp.broadcast_to(self.d, batch + (T, N))
        per_trial = ((m0, 1), (P0, 2), (F, 3), (b, 2), (Q, 3))
        if info is not None:
            per_trial += ((info[0], 3), (info[1], 2))
        prior = tuple(jnp.broadcast_to(a, batch + a.shape[a.ndim - s:]).reshape((nbt,) + a.shape[a.ndim - s:])
                      for a, s in per_trial)
        value = jnp.broadcast_to(value, jnp.broadcast_shapes(value.shape, batch + (T, N)))
        lead = value.shape[: value.ndim - 2 - nb]
        y = value.reshape(lead + (nbt, T, N))
        keys = None if key is None else jax.random.split(key, nbt)

        def one(yy, k, d, m0, P0, F, b, Q, *info):
            return fn(yy, k, info or None, m0, P0, F, b, Q, self.H, d, self.R)

        out = jax.vmap(one, in_axes=(len(lead), None if key is None else 0) + (0,) * (1 + len(prior)))(
            y, keys, d.reshape((nbt, T, N)), *prior)
        # the trial axis comes first: move it behind the sample dims and unflatten it
        s = len(lead)
        return jax.tree.map(lambda a: jnp.moveaxis(a, 0, s).reshape(lead + batch + a.shape[s + 1:]), out)

    def _filter(self, value):
        return self._per_trial(lambda y, k, info, *p: scans.kalman_filter(y, *p, parallel=self.parallel,
                                                                           information=info), value)

    def log_prob(self, value):
        return self._filter(value).log_likelihood

    def pointwise_log_prob(self, value):
        return self._filter(value).pointwise

    def path_posterior(self, value, key) -> PathPosterior:
        """Exact posterior of the integrated-out path given the observations.

        Parameters
        ----------
        value : array (..., T, N)
            Observations, NaN = missing.
        key : jax.random key

        Returns
        -------
        PathPosterior
            One exact draw (..., T, D), smoothed means (..., T, D) and covariances
            (..., T, D, D).
        """
        def one(y, k, info, *p):
            sm = scans.kalman_smoother(y, *p, parallel=self.parallel, information=info)
            draw = scans.kalman_sample(k, y, *p, parallel=self.parallel, information=info)
            return PathPosterior(draw, sm.smoothed_means, sm.smoothed_covariances)

        return self._per_trial(one, value, key)

    def posterior(self, value, key) -> PathPosterior:
        """:meth:`path_posterior`, the path being what this site integrates out."""
        return self.path_posterior(value, key)

    def sample_with_intermediates(self, key, sample_shape=()):
        k1, k2 = jax.random.split(key)
        x = self.prior.sample(k1, sample_shape)
        y = LinearGaussianEmission(x, self.H, self.d, self.R).sample(k2)
        return y, [x]

    def sample(self, key, sample_shape=()):
        return self.sample_with_intermediates(key, sample_shape)[0]
