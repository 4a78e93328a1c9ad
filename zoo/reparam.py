"""Non-centred latent paths for the switching models: x = mu(theta) + S(theta) eps.

Why: with the states summed out, NUTS samples the continuous path x jointly with the dynamics
parameters theta = (A_k, b_k, Q_k). When the dynamics noise is small next to the emission noise
(NASCAR: q ~ 0.01 vs 0.1), most of the path is set by the prior given theta, and the centred
parameterisation is a funnel: the path can only move with q, and NUTS runs at its tree-depth cap
with chains that do not agree (R-hat ~2 on the dynamics noise, measured).

The fix is a *Gaussian* non-centring. Fix a reference state sequence z_ref (the point fit's
Viterbi path) and a Gaussian approximation of the emissions around the point fit (its negative
Hessian H_t and information h_t in x_t, exact for Gaussian emissions). Given the current theta,
these define a Gauss-Markov posterior N(mu(theta), Lam(theta)^{-1}) of the path, with Lam
block-tridiagonal. The sampler moves eps, and the path is x = mu + U^{-1} eps with Lam = U^T U
(:func:`zoo.scans.block_tridiagonal_cholesky`). Where that approximation is good, eps is close to
N(0, I) whatever theta is, so the funnel is gone; where it is not (near switches the reference
misses) the density is still exact: the model's own marginal density of x (states summed out)
plus the log-Jacobian -sum log diag(chol) of the transform. Nothing is approximated in the
target, only in the coordinates.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro import handlers
from numpyro.infer.reparam import Reparam

from zoo import scans
from zoo.distributions import SwitchingLinearDynamics
from zoo.scans.linalg import matmul, matvec, transpose

__all__ = ["GaussianPathReparam", "emission_information", "reference_states", "state_centres",
           "gauss_markov_factor", "path_from_whitened", "whitened_from_path"]


def _offsets(b, z):
    """Offsets b_{z_t} for fixed (K, D) or time-varying (..., T, K, D) offsets; z (..., T)."""
    if b.ndim == 2:
        return b[z]
    b = jnp.broadcast_to(b, z.shape + b.shape[-2:])
    return jnp.take_along_axis(b, z[..., None, None], axis=-2)[..., 0, :]


class GaussianPathReparam(Reparam):
    """NumPyro reparameteriser of a :class:`~zoo.distributions.SwitchingLinearDynamics` site.

    The site becomes a deterministic site with the path x; the sampler sees a new latent site
    ``<name>_whitened`` (eps, standard normal prior) and a factor ``<name>_log_density`` holding
    log p(x | theta) (states summed out by the forward algorithm) plus the log-Jacobian minus
    the standard normal log density of eps: the joint density is exactly the model's.

    Parameters
    ----------
    states : int array (..., T)
        Reference states z_ref (e.g. the Viterbi path of a point fit).
    obs_precision : array (..., T, D, D)
        H_t, the emissions' information about x_t (symmetric positive semi-definite; zero for
        missing steps).
    obs_info : array (..., T, D)
        h_t, so that the emission term is approximately -x_t^T H_t x_t / 2 + h_t^T x_t.
    given_states : bool
        False: the factor holds the path's marginal density, states summed out (the states
        are only the approximation's reference). True: its density given these states,
        log p(z, x | theta) (the path block of the blocked sampler, :mod:`inference.blocked`).
    """

    def __init__(self, states, obs_precision, obs_info, given_states: bool = False):
        self.given_states = bool(given_states)
        self.states = jnp.asarray(states)
        self.obs_precision = jnp.asarray(obs_precision)
        self.obs_info = jnp.asarray(obs_info)
        T, D = self.obs_info.shape[-2:]
        if self.states.shape[-1] != T or self.obs_precision.shape[-3:] != (T, D, D):
            raise ValueError(f"states (..., {T}), obs_precision (..., {T}, {D}, {D}) and obs_info "
                             f"(..., {T}, {D}) disagree: got {self.states.shape}, "
                             f"{self.obs_precision.shape}, {self.obs_info.shape}")

    def factor(self, fn: SwitchingLinearDynamics) -> scans.BlockTridiagonalCholesky:
        """The Gauss-Markov precision of the path given the reference states, factorised.

        Dynamics x_1 ~ N(m0, P0), x_t = A x_{t-1} + b + N(0, Q) with the reference state's
        parameters at every step, plus the emission terms (H_t, h_t).
        """
        z = self.states
        # parameters may be NumPy arrays (e.g. conditioned values): traced states index JAX arrays
        fn = jax.tree.map(jnp.asarray, fn)
        return gauss_markov_factor(fn.A[z[..., 1:]], _offsets(fn.b, z)[..., 1:, :], fn.scale_tril[z[..., 1:]],
                                   fn.init_mean[z[..., 0]], fn.init_scale_tril[z[..., 0]],
                                   self.obs_precision, self.obs_info)

    def transform(self, fn: SwitchingLinearDynamics, eps) -> tuple[jax.Array, jax.Array]:
        """x = mu + U^{-1} eps and log |det dx/deps|, summed over trials.

        Parameters
        ----------
        fn : SwitchingLinearDynamics
        eps : array (..., T, D)

        Returns
        -------
        x : array (..., T, D)
        log_det : scalar
        """
        return path_from_whitened(self.factor(fn), eps)

    def whiten(self, fn: SwitchingLinearDynamics, x) -> jax.Array:
        """eps with :meth:`transform` (fn, eps) = x: eps = U (x - mu).

        Parameters
        ----------
        fn : SwitchingLinearDynamics
        x : array (..., T, D)

        Returns
        -------
        array (..., T, D)
        """
        return whitened_from_path(self.factor(fn), x)

    def __call__(self, name, fn, obs):
        if obs is not None:
            raise ValueError(f"GaussianPathReparam: site {name!r} is observed; only a latent path can "
                             "be reparameterised")
        if not isinstance(fn, SwitchingLinearDynamics):
            raise ValueError(f"GaussianPathReparam: site {name!r} must be a SwitchingLinearDynamics "
                             f"path; got {type(fn).__name__}")
        shape = fn.batch_shape + fn.event_shape
        # eps gets a standard normal prior (so that the program can be run forwards: x is then a
        # draw of the Gaussian approximation) and the factor holds the exact density's ratio to it
        base = dist.Normal(jnp.zeros(shape, fn.A.dtype), 1.0).to_event(len(shape))
        eps = numpyro.sample(f"{name}_whitened", base)
        x, log_det = self.transform(fn, eps)
        path_lp = fn.given_states(self.states).log_prob(x) if self.given_states else fn.log_prob(x)
        numpyro.factor(f"{name}_log_density", jnp.sum(path_lp) + log_det - base.log_prob(eps))
        return None, x


def gauss_markov_factor(A, b, scale_tril, init_mean, init_scale_tril, obs_precision,
                        obs_info) -> scans.BlockTridiagonalCholesky:
    """The factorised precision of a linear-Gaussian path with Gaussian(-approximated) emissions.

    x_0 ~ N(m0, L0 L0^T), x_{t+1} = A_t x_t + b_t + N(0, L_t L_t^T), and emission terms
    -x_t^T H_t x_t / 2 + h_t^T x_t: the posterior precision Lam (block-tridiagonal) and
    information, factorised as Lam = U^T U (:func:`zoo.scans.block_tridiagonal_cholesky`). The
    path's posterior mean is ``block_bidiagonal_solve(f, f.rhs_solved)``. Shared by the
    switching models' whitened path (the reference states' dynamics) and the GP models' Laplace
    path (the drift linearised at the previous iterate, :mod:`zoo.sde_laplace`).

    Parameters
    ----------
    A : array (..., T-1, D, D)
        Transition of step t -> t+1.
    b : array (..., T-1, D)
        Offset of step t -> t+1.
    scale_tril : array (..., T-1, D, D)
        Lower Cholesky factor of the transition noise covariance.
    init_mean : array (..., D)
    init_scale_tril : array (..., D, D)
    obs_precision : array (..., T, D, D)
        H_t (symmetric positive semi-definite).
    obs_info : array (..., T, D)
        h_t.

    Returns
    -------
    zoo.scans.BlockTridiagonalCholesky
    """
    dtype = A.dtype
    eye = jnp.eye(A.shape[-1], dtype=dtype)
    Lq = scale_tril  # (..., T-1, D, D)
    Li = scans.solve_lower(Lq, jnp.broadcast_to(eye, Lq.shape))  # L^{-1}
    Li_A = scans.solve_lower(Lq, A)
    Li_b = scans.solve_lower(Lq, b)
    L0 = init_scale_tril
    Li0 = scans.solve_lower(L0, jnp.broadcast_to(eye, L0.shape))
    # small (D x D) products as fused broadcast sums, as in the scan kernels (hot path: every
    # gradient evaluation)
    mm, mv, tr = matmul, matvec, transpose
    H = jnp.asarray(obs_precision).astype(dtype)
    h = jnp.asarray(obs_info).astype(dtype)
    batch = jnp.broadcast_shapes(H.shape[:-3], A.shape[:-3], L0.shape[:-2])
    H = jnp.broadcast_to(H, batch + H.shape[-3:])
    h = jnp.broadcast_to(h, batch + h.shape[-2:])
    diag = H.at[..., 0, :, :].add(mm(tr(Li0), Li0))
    diag = diag.at[..., 1:, :, :].add(mm(tr(Li), Li))
    diag = diag.at[..., :-1, :, :].add(mm(tr(Li_A), Li_A))
    off = -mm(tr(Li_A), Li)  # Lam[t, t+1] = -A_t^T Q_t^{-1}
    h = h.at[..., 0, :].add(mv(tr(Li0), mv(Li0, init_mean)))
    h = h.at[..., 1:, :].add(mv(tr(Li), Li_b))
    h = h.at[..., :-1, :].add(-mv(tr(Li_A), Li_b))
    return scans.block_tridiagonal_cholesky(diag, off, h)


def path_from_whitened(factor: scans.BlockTridiagonalCholesky, eps) -> tuple[jax.Array, jax.Array]:
    """x = mu + U^{-1} eps for Lam = U^T U and mu = Lam^{-1} h, with log |det dx/deps|.

    Parameters
    ----------
    factor : zoo.scans.BlockTridiagonalCholesky
        From :func:`gauss_markov_factor`.
    eps : array (..., T, D)

    Returns
    -------
    x : array (..., T, D)
    log_det : scalar
        -sum log diag(chol), summed over trials.
    """
    x = scans.block_bidiagonal_solve(factor, factor.rhs_solved + eps)
    log_det = -jnp.sum(jnp.log(jnp.diagonal(factor.chol, axis1=-2, axis2=-1)))
    return x, log_det


def whitened_from_path(factor: scans.BlockTridiagonalCholesky, x) -> jax.Array:
    """eps = U (x - mu), the inverse of :func:`path_from_whitened`, (..., T, D)."""
    return scans.block_bidiagonal_multiply(factor, jnp.asarray(x, factor.chol.dtype)) - factor.rhs_solved


def emission_information(C, d, from_eta, x_ref, y, mask=None) -> tuple[jax.Array, jax.Array]:
    """Gaussian approximation of factorised emissions in x_t, at a reference path.

    For y_tn ~ p(y_tn | eta_tn) with eta = x C^T + d: with g = d log p / d eta and
    w = -d^2 log p / d eta^2 at the reference (elementwise, by automatic differentiation),
    H_t = C^T diag(w_t) C and h_t = H_t x_ref_t + C^T g_t. Exact for Gaussian emissions (where it
    does not depend on x_ref), the Laplace approximation for counts. Missing entries (NaN) and
    padded steps add nothing.

    Parameters
    ----------
    C : array (N, D)
    d : array (N,) or (..., T, N)
    from_eta : callable
        eta (..., T, N) -> the emission distribution of y (batch shape (..., T, N)).
    x_ref : array (..., T, D)
    y : array (..., T, N)
        NaN = missing.
    mask : bool array (..., T), optional

    Returns
    -------
    H : array (..., T, D, D)
    h : array (..., T, D)
    """
    if y is None:
        raise ValueError("a non-centred path (path_reference) needs the observations y")
    seen = ~jnp.isnan(y)
    if mask is not None:
        seen = seen & mask[..., None]
    y_fill = jnp.where(seen, y, 0.0)
    x_ref = jnp.asarray(x_ref, dtype=C.dtype)
    eta_ref = x_ref @ C.T + d

    def log_lik(eta):
        return jnp.sum(jnp.where(seen, from_eta(eta).log_prob(y_fill), 0.0))

    score = jax.grad(log_lik)
    g = score(eta_ref)
    # the log-likelihood is separable in eta, so its Hessian is diagonal: one Hessian-vector
    # product with ones gives it
    w = -jax.jvp(score, (eta_ref,), (jnp.ones_like(eta_ref),))[1]
    w = jnp.where(seen, jnp.maximum(w, 0.0), 0.0)  # a non-concave link: keep the PSD part
    H = jnp.einsum("...n,nd,ne->...de", w, C, C)
    h = jnp.einsum("...de,...e->...d", H, x_ref) + g @ C
    return H, h


def reference_states(model, y, values: Mapping, key=None, site: str = "x", **model_kwargs) -> jax.Array:
    """Viterbi path of the discrete states given a point estimate's path, (..., T) int.

    Parameters
    ----------
    model : callable
        A program ``model(y, **model_kwargs)`` with a SwitchingLinearDynamics site ``site``.
    y : array (T, N) or (B, T, N)
    values : mapping
        Constrained values of the latent sites, including the path.
    key : jax.random key, optional
    site : str
    **model_kwargs
        ``inputs``, ``mask`` (None values are dropped).
    """
    if site not in values:
        raise ValueError(f"values must contain the path {site!r}; got {sorted(values)}")
    key = jax.random.key(0) if key is None else key
    kwargs = {k: v for k, v in model_kwargs.items() if v is not None}

    # compiled as a whole: run eagerly, the program and the Viterbi recursion dispatched every
    # operation on its own (5.2 s at NASCAR T = 2000)
    @jax.jit
    def viterbi(values, key):
        tr = handlers.trace(handlers.substitute(handlers.seed(model, key), data=values)).get_trace(
            y, **kwargs)
        fn = tr[site]["fn"]
        if not isinstance(fn, SwitchingLinearDynamics):
            raise ValueError(f"site {site!r} is not a SwitchingLinearDynamics path")
        return fn.state_posterior(values[site], key).viterbi

    return viterbi({k: jnp.asarray(v) for k, v in values.items()}, key)


def state_centres(x, states, num_states: int, mask=None) -> jax.Array:
    """Mean of the path over the steps assigned to each state, (K, D); the overall mean for a
    state with no steps.

    Parameters
    ----------
    x : array (..., T, D)
    states : int array (..., T)
    num_states : int
    mask : bool array (..., T), optional
    """
    x = jnp.asarray(x)
    w = jax.nn.one_hot(states, num_states, dtype=x.dtype)  # (..., T, K)
    if mask is not None:
        w = w * jnp.asarray(mask, x.dtype)[..., None]
    D = x.shape[-1]
    W = w.reshape(-1, num_states)
    X = x.reshape(-1, D)
    n = W.sum(0)
    overall = (X * W.sum(1, keepdims=True)).sum(0) / jnp.maximum(W.sum(), 1.0)
    mean = (W.T @ X) / jnp.maximum(n, 1.0)[:, None]
    return jnp.where(n[:, None] > 0, mean, overall)
