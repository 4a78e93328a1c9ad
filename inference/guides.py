"""Structured variational guides for latent paths.

:class:`MarkovGaussian` is a Gaussian over a whole path x_{1:T} (D-dimensional steps) whose
precision is Lambda = L L^T with L lower *block-bidiagonal*: diagonal blocks L_t (lower
triangular, positive diagonal) and sub-diagonal blocks M_t at (t+1, t). Lambda is block
tridiagonal (a Gauss-Markov chain), the parameters are O(T D^2), and sampling, log density,
entropy and marginal covariances are exact and cost O(T D^3) (one backward recursion).

:class:`MarkovGaussianGuide` is an :class:`~numpyro.infer.autoguide.AutoGuide` putting that
distribution on the model's path sites; :func:`structured_guide` combines it with an autoguide
for the remaining (parameter) sites through :class:`~numpyro.infer.autoguide.AutoGuideList`.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from jax.scipy.linalg import solve_triangular
from numpyro import handlers
from numpyro.distributions import constraints
from numpyro.infer.autoguide import AutoGuide, AutoGuideList, AutoNormal
from numpyro.infer.initialization import init_to_median

from zoo.protocol import as_model
from zoo.scans import linear_recurrence

__all__ = ["MarkovGaussian", "MarkovGaussianGuide", "structured_guide", "path_sites"]

_LOG_2PI = math.log(2 * math.pi)


def _flat_batch(fn, batch_shape, *arrays):
    """Apply ``fn`` over flattened leading batch dims of ``arrays``."""
    n = max(math.prod(batch_shape), 1)
    flat = [a.reshape((n,) + a.shape[len(batch_shape):]) for a in arrays]
    out = jax.vmap(fn)(*flat)
    return jax.tree.map(lambda o: o.reshape(tuple(batch_shape) + o.shape[1:]), out)


class MarkovGaussian(dist.Distribution):
    """Gaussian path with block-bidiagonal precision factor.

    Parameters
    ----------
    loc : array (..., T, D)
        Mean.
    diag_tril : array (..., T, D, D)
        Diagonal blocks L_t of the precision factor (lower triangular, positive diagonal).
    off_diag : array (..., T-1, D, D)
        Sub-diagonal blocks M_t (row block t+1, column block t).
    parallel : bool
        Sample by the associative scan instead of the sequential one.

    Notes
    -----
    Lambda = L L^T. A draw is x = loc + v with L^T v = eps, eps ~ N(0, I):
    v_T = L_T^{-T} eps_T, v_t = L_t^{-T} (eps_t - M_t^T v_{t+1}).
    """

    arg_constraints = {"loc": constraints.real}
    support = constraints.real_matrix
    reparametrized_params = ["loc", "diag_tril", "off_diag"]
    pytree_data_fields = ("loc", "diag_tril", "off_diag")
    pytree_aux_fields = ("parallel",)

    def __init__(self, loc, diag_tril, off_diag, parallel: bool = False, validate_args=None):
        T, D = jnp.shape(loc)[-2:]
        if jnp.shape(diag_tril)[-3:] != (T, D, D) or jnp.shape(off_diag)[-3:] != (T - 1, D, D):
            raise ValueError(
                f"diag_tril must be (..., {T}, {D}, {D}) and off_diag (..., {T - 1}, {D}, {D}); got "
                f"{jnp.shape(diag_tril)} and {jnp.shape(off_diag)}"
            )
        batch = jax.lax.broadcast_shapes(jnp.shape(loc)[:-2], jnp.shape(diag_tril)[:-3],
                                         jnp.shape(off_diag)[:-3])
        self.loc = jnp.broadcast_to(loc, batch + (T, D))
        self.diag_tril = jnp.broadcast_to(diag_tril, batch + (T, D, D))
        self.off_diag = jnp.broadcast_to(off_diag, batch + (T - 1, D, D))
        self.parallel = parallel
        super().__init__(batch, (T, D), validate_args=validate_args)

    def _solve_up(self, eps, L, M):
        """v with L^T v = eps for one path: eps (T, D), L (T, D, D), M (T-1, D, D)."""
        T, D = eps.shape
        LT = jnp.swapaxes(L, -1, -2)
        b = solve_triangular(LT, eps[..., None], lower=False)[..., 0]
        A = -solve_triangular(LT[:-1], jnp.swapaxes(M, -1, -2), lower=False)
        A = jnp.concatenate([A, jnp.zeros((1, D, D), A.dtype)])
        return linear_recurrence(A, b, jnp.zeros(D, b.dtype), parallel=self.parallel, reverse=True)

    def sample(self, key, sample_shape=()):
        shape = tuple(sample_shape) + self.batch_shape + self.event_shape
        eps = jax.random.normal(key, shape, self.loc.dtype)
        L = jnp.broadcast_to(self.diag_tril, tuple(sample_shape) + self.diag_tril.shape)
        M = jnp.broadcast_to(self.off_diag, tuple(sample_shape) + self.off_diag.shape)
        batch = tuple(sample_shape) + self.batch_shape
        return self.loc + _flat_batch(self._solve_up, batch, eps, L, M)

    def _whiten(self, value):
        """L^T (value - loc): (..., T, D)."""
        r = value - self.loc
        w = jnp.einsum("...tji,...tj->...ti", self.diag_tril, r)
        w_off = jnp.einsum("...tji,...tj->...ti", self.off_diag, r[..., 1:, :])
        return w.at[..., :-1, :].add(w_off)

    def _half_logdet(self):
        return jnp.sum(jnp.log(jnp.abs(jnp.diagonal(self.diag_tril, axis1=-2, axis2=-1))), (-2, -1))

    def log_prob(self, value):
        """Exact log density, shape ``sample_shape + batch_shape``."""
        T, D = self.event_shape
        w = self._whiten(value)
        return -0.5 * jnp.sum(w**2, (-2, -1)) + self._half_logdet() - 0.5 * T * D * _LOG_2PI

    def entropy(self):
        """Exact entropy, shape ``batch_shape``."""
        T, D = self.event_shape
        return 0.5 * T * D * (1.0 + _LOG_2PI) - self._half_logdet()

    @property
    def mean(self):
        return self.loc

    def marginal_covariances(self):
        """Cov(x_t), shape (..., T, D, D), by the backward recursion
        C_t = A_t C_{t+1} A_t^T + B_t B_t^T with A_t = -L_t^{-T} M_t^T, B_t = L_t^{-T}."""

        def one(L, M):
            T, D = L.shape[:2]
            LT = jnp.swapaxes(L, -1, -2)
            B = solve_triangular(LT, jnp.broadcast_to(jnp.eye(D, dtype=L.dtype), L.shape), lower=False)
            A = -solve_triangular(LT[:-1], jnp.swapaxes(M, -1, -2), lower=False)
            BBt = B @ jnp.swapaxes(B, -1, -2)

            def step(C, inp):
                a, bb = inp
                C = a @ C @ a.T + bb
                return C, C

            _, Cs = jax.lax.scan(step, BBt[-1], (A, BBt[:-1]), reverse=True)
            return jnp.concatenate([Cs, BBt[-1:]])

        return _flat_batch(one, self.batch_shape, self.diag_tril, self.off_diag)

    @property
    def variance(self):
        return jnp.diagonal(self.marginal_covariances(), axis1=-2, axis2=-1)


def path_sites(trace, sequence_sites: Sequence[str] | None = None) -> list[str]:
    """Latent sample sites of a trace that hold real-valued paths (event shape (T, D)).

    With ``sequence_sites`` (the model protocol's list) only those names are considered.
    """
    out = []
    for name, site in trace.items():
        if site["type"] != "sample" or site["is_observed"] or site["infer"].get("collapsed"):
            continue
        if sequence_sites is not None and name not in sequence_sites:
            continue
        fn = site["fn"]
        if len(fn.event_shape) == 2 and not fn.support.is_discrete and \
                fn.support in (constraints.real_vector, constraints.real_matrix, constraints.real):
            out.append(name)
    return out


def _site_seed(name: str) -> int:
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


class MarkovGaussianGuide(AutoGuide):
    """A :class:`MarkovGaussian` on each latent path site of a model.

    Parameters
    ----------
    model : callable
        The model, usually blocked to expose only the path sites (see :func:`structured_guide`).
    sites : sequence of str, optional
        Path site names (default: every real latent site with event shape (T, D)).
    prefix : str
        Prefix of the guide's parameter names.
    init_loc_fn : callable
        Initial means (NumPyro init strategy); defaults to the prior median.
    init_scale : float
        Initial marginal standard deviation of every step.
    parallel : bool
        Sample with the associative scan.
    """

    def __init__(self, model: Callable, *, sites: Sequence[str] | None = None, prefix: str = "markov",
                 init_loc_fn=init_to_median, init_scale: float = 0.1, parallel: bool = False):
        if not init_scale > 0:
            raise ValueError(f"init_scale must be > 0; got {init_scale}")
        self.sites = None if sites is None else list(sites)
        self._init_scale = float(init_scale)
        self.parallel = parallel
        self._paths: list[str] = []
        super().__init__(model, prefix=prefix, init_loc_fn=init_loc_fn)

    def _setup_prototype(self, *args, **kwargs):
        super()._setup_prototype(*args, **kwargs)
        found = path_sites(self.prototype_trace, self.sites)
        if self.sites is not None and sorted(found) != sorted(self.sites):
            raise ValueError(f"sites {sorted(set(self.sites) - set(found))} are not latent real paths "
                             "with event shape (T, D)")
        if not found:
            raise ValueError("the model has no latent path site (event shape (T, D)) for a Markov guide")
        self._paths = found

    def _dist(self, name: str):
        site = self.prototype_trace[name]
        shape = jnp.shape(site["value"])
        T, D = shape[-2:]
        batch = shape[:-2]
        loc = numpyro.param(f"{self.prefix}_{name}_loc", self._init_locs[name])
        raw = numpyro.param(f"{self.prefix}_{name}_diag",
                            jnp.broadcast_to(jnp.eye(D) * _softplus_inv(1.0 / self._init_scale),
                                             batch + (T, D, D)))
        off = numpyro.param(f"{self.prefix}_{name}_off", jnp.zeros(batch + (T - 1, D, D)))
        diag = jax.nn.softplus(jnp.diagonal(raw, axis1=-2, axis2=-1))
        L = jnp.tril(raw, -1) + jnp.eye(D) * diag[..., None, :]
        return MarkovGaussian(loc, L, off, parallel=self.parallel)

    def __call__(self, *args, **kwargs):
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        return {name: numpyro.sample(name, self._dist(name)) for name in self._paths}

    def get_distributions(self, params) -> dict:
        """The fitted :class:`MarkovGaussian` of each path site, given SVI params."""
        with handlers.substitute(data=params):
            return {name: self._dist(name) for name in self._paths}

    def sample_posterior(self, rng_key, params, *args, sample_shape=(), **kwargs):
        dists = self.get_distributions(params)
        return {name: d.sample(jax.random.fold_in(rng_key, _site_seed(name)), sample_shape)
                for name, d in dists.items()}

    def median(self, params):
        return {name: d.loc for name, d in self.get_distributions(params).items()}

    def quantiles(self, params, quantiles):
        q = jnp.asarray(quantiles)
        out = {}
        for name, d in self.get_distributions(params).items():
            z = dist.Normal(0.0, 1.0).icdf(q).reshape((-1,) + (1,) * d.loc.ndim)
            out[name] = d.loc + z * jnp.sqrt(d.variance)
        return out


def _softplus_inv(x: float) -> float:
    return float(math.log(math.expm1(x)))


def structured_guide(model: Callable, *, sites: Sequence[str] | None = None, y=None,
                     model_kwargs=None, param_guide: type = AutoNormal, init_scale: float = 0.1,
                     init_loc_fn=init_to_median) -> AutoGuide:
    """Markov Gaussian guide on the path sites plus an autoguide on everything else.

    Parameters
    ----------
    model : callable
    sites : sequence of str, optional
        Path sites; found from a trace of ``model(y, **model_kwargs)`` (restricted to the model's
        ``sequence_sites`` when it has them) when not given.
    y, model_kwargs :
        Data used to find the path sites when ``sites`` is None.
    param_guide : AutoGuide class
        Guide for the remaining latent sites (``AutoNormal`` by default; ``AutoDelta`` for MAP).
    init_scale : float
    init_loc_fn : callable

    Returns
    -------
    AutoGuide
        An ``AutoGuideList`` (or a single ``MarkovGaussianGuide`` when every latent site is a path,
        or ``param_guide`` alone when there is no path).
    """
    if sites is None:
        if y is None:
            raise ValueError("give y (and model_kwargs) or sites to find the path sites")
        tr = handlers.trace(handlers.seed(model, jax.random.key(0))).get_trace(y, **dict(model_kwargs or {}))
        seq = as_model(model).sequence_sites or None  # a plain program: any path site
        paths = path_sites(tr, seq)
        others = [n for n, s in tr.items()
                  if s["type"] == "sample" and not s["is_observed"] and n not in paths]
    else:
        paths, others = list(sites), None
    if not paths:
        return param_guide(model, init_loc_fn=init_loc_fn)
    markov = MarkovGaussianGuide(handlers.block(model, expose=list(paths)), sites=paths,
                                 init_scale=init_scale, init_loc_fn=init_loc_fn)
    if others is not None and not others:
        return markov
    guide = AutoGuideList(model)
    guide.append(markov)
    # AutoGuideList refuses sub-guides whose model exposes deterministic sites (e.g. an SLDS's
    # emission_matrix), so the parameter guide sees neither the paths nor the deterministic sites
    hidden = set(paths)
    guide.append(param_guide(handlers.block(model, hide_fn=lambda site: site.get("name") in hidden
                                            or site["type"] == "deterministic"), init_loc_fn=init_loc_fn))
    return guide
