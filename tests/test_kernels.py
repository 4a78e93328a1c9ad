"""SSL and stationary kernels in weight space, and the collapsed Euler-Maruyama likelihood,
against their defining formulas, dense Gaussian integrals and Monte Carlo."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from zoo import kernels
from zoo.preprocess import bin_observations
from zoo.sde_distributions import (
    CollapsedEulerMaruyama,
    DriftWeights,
    EulerMaruyama,
    euler_maruyama_simulate,
)

jax.config.update("jax_enable_x64", True)


def random_ssl(rng, J, D, features="linear"):
    F = kernels.num_partition_features(D, features)
    w = rng.normal(size=(J - 1, F))
    tau = 0.7
    c = rng.normal(size=(J, D)) * 2
    Lm = np.tril(rng.normal(size=(J, D, D))) * 0.5 + np.eye(D) * 0.8
    M = Lm @ np.swapaxes(Lm, -1, -2)
    s = rng.random(J) + 0.3
    return w, tau, c, Lm, M, s


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("features", ["linear", "quadratic"])
def test_ssl_gram_equals_weight_space_covariance(dtype, features):
    rng = np.random.default_rng(0)
    J, D = 3, 2
    w, tau, c, Lm, M, s = random_ssl(rng, J, D, features)
    x1 = jnp.asarray(rng.normal(size=(40, D)) * 3, dtype)
    x2 = jnp.asarray(rng.normal(size=(30, D)) * 3, dtype)
    cast = lambda a: jnp.asarray(a, dtype)  # noqa: E731
    K = kernels.ssl_kernel(x1, x2, cast(w), tau, cast(c), cast(M), cast(s), features)
    L = kernels.ssl_weight_scale_tril(cast(Lm), cast(s))
    S = L @ L.T
    f1 = kernels.ssl_features(x1, cast(w), tau, cast(c), features)
    f2 = kernels.ssl_features(x2, cast(w), tau, cast(c), features)
    assert K.dtype == dtype and f1.dtype == dtype
    tol = 1e-4 if dtype == jnp.float32 else 1e-12
    np.testing.assert_allclose(K, f1 @ S @ f2.T, rtol=tol, atol=tol * np.abs(K).max())


def test_ssl_rank_and_monte_carlo_covariance():
    rng = np.random.default_rng(1)
    J, D = 3, 2
    w, tau, c, Lm, M, s = random_ssl(rng, J, D)
    x = jnp.asarray(rng.normal(size=(60, D)) * 3)
    K = np.asarray(kernels.ssl_kernel(x, x, w, tau, c, M, s))
    sv = np.linalg.svd(K, compute_uv=False)
    rank = int(np.sum(sv > sv[0] * 1e-10))
    assert rank == J * (D + 1)
    # f(x) = sum_j pi_j(x) [A_j (x - c_j) + b_j], rows of A_j ~ N(0, M_j), b_j ~ N(0, s_j^2)
    n = 100_000
    A = np.einsum("jde,njke->njkd", Lm, rng.normal(size=(n, J, D, D)))  # rows ~ N(0, M_j)
    b = rng.normal(size=(n, J, D)) * s[:, None]
    pi = np.asarray(kernels.partition(x[:5], w, tau))
    f = np.einsum("aj,njka->nak", pi, np.einsum("njkd,ajd->njka", A, np.asarray(x[:5, None] - c))) \
        + np.einsum("aj,njk->nak", pi, b)
    emp = np.einsum("nak,nbk->ab", f, f) / (n * D)
    np.testing.assert_allclose(emp, K[:5, :5], rtol=0.05, atol=0.05 * np.abs(K[:5, :5]).max())


def test_partition_properties():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(7, 2))
    w = rng.normal(size=(2, 3))
    p = kernels.partition(x, w, 0.5)
    np.testing.assert_allclose(p.sum(-1), 1.0)
    p1 = kernels.partition(x, np.zeros((0, 3)), 1.0)
    np.testing.assert_allclose(p1, 1.0)
    with pytest.raises(ValueError, match="features"):
        kernels.partition(x, w, 0.5, features="cubic")


def test_inducing_features_nystrom_and_hsgp_approximation():
    rng = np.random.default_rng(3)
    Z = kernels.grid_points(3.0, 6, 2)
    ls, var = jnp.array([1.2, 0.9]), 1.7
    x = jnp.asarray(rng.uniform(-2.5, 2.5, size=(25, 2)))
    for name in ("rbf", "matern52"):
        k = kernels.stationary_kernel(name)
        phi = kernels.inducing_features(x, Z, name, ls, var, jitter=0.0)
        Kxz, Kzz = k(x, Z, ls, var), k(Z, Z, ls, var)
        np.testing.assert_allclose(phi @ phi.T, Kxz @ np.linalg.solve(Kzz, Kxz.T), rtol=1e-6, atol=1e-8)
        phz = kernels.inducing_features(Z, Z, name, ls, var, jitter=0.0)
        np.testing.assert_allclose(phz @ phz.T, Kzz, atol=1e-8)
        # the Hilbert-space approximation converges to the kernel inside the box
        ph = kernels.hsgp_features(x, name, ls, var, ell=7.0, num_basis=30)
        np.testing.assert_allclose(ph @ ph.T, k(x, x, ls, var), atol=0.02 * var)
    with pytest.raises(ValueError, match="kernel"):
        kernels.stationary_kernel("periodic")


# ------------------------------------------------------------ collapsed Euler-Maruyama likelihood


def dense_collapsed_log_prob(x, kern, sigma, dt, init_loc, init_scale, drive=None, mask=None):
    """log p(x) with the GP drift integrated out, from the dense joint Gaussian of all increments
    (every trial, every step), covariance dt^2 K(X, X) + sigma_d^2 dt I per output dimension."""
    x = np.asarray(x)
    B, T, D = x.shape
    X = x[:, :-1].reshape(-1, D)
    r = (x[:, 1:] - x[:, :-1])
    if drive is not None:
        r = r - dt * np.asarray(drive)
    r = r.reshape(-1, D)
    keep = np.ones(len(X), bool) if mask is None else np.asarray(mask)[:, 1:].reshape(-1)
    K = np.asarray(kern(X[keep], X[keep]))
    total = stats.norm(init_loc, init_scale).logpdf(x[:, 0]).sum()
    for d in range(D):
        cov = dt**2 * K + sigma[d] ** 2 * dt * np.eye(keep.sum())
        total += stats.multivariate_normal(np.zeros(keep.sum()), cov).logpdf(r[keep, d])
    return total


@pytest.mark.parametrize("with_drive", [False, True])
def test_collapsed_euler_maruyama_equals_dense_gaussian(with_drive):
    rng = np.random.default_rng(4)
    J, D, B, T, dt = 2, 2, 2, 6, 0.1
    w, tau, c, Lm, M, s = random_ssl(rng, J, D)
    feats = lambda z: kernels.ssl_features(z, w, tau, c)  # noqa: E731
    kern = lambda a, b: kernels.ssl_kernel(a, b, w, tau, c, M, s)  # noqa: E731
    L = kernels.ssl_weight_scale_tril(jnp.asarray(Lm), jnp.asarray(s))
    x = rng.normal(size=(B, T, D)) * 2
    sigma = np.array([0.5, 0.8])
    drive = rng.normal(size=(B, T - 1, D)) if with_drive else None
    mask = np.ones((B, T), bool)
    mask[1, -2:] = False
    fn = CollapsedEulerMaruyama(feats, L, jnp.asarray(sigma), dt, jnp.zeros(D), jnp.full(D, 3.0), T, (B,),
                                None if drive is None else jnp.asarray(drive), jnp.asarray(mask))
    truth = dense_collapsed_log_prob(x, kern, sigma, dt, 0.0, 3.0, drive, mask)
    np.testing.assert_allclose(fn.log_prob(jnp.asarray(x)), truth, rtol=1e-10)
    # exact weight posterior (dense Bayesian linear regression) per output dimension
    post = fn.weight_posterior(jnp.asarray(x), jax.random.key(0))
    Phi = np.asarray(feats(jnp.asarray(x[:, :-1]))).reshape(-1, J * (D + 1))
    r = (x[:, 1:] - x[:, :-1]) - (0 if drive is None else dt * drive)
    r = r.reshape(-1, D)
    keep = mask[:, 1:].reshape(-1)
    S = np.asarray(L @ L.T)
    for d in range(D):
        prec = np.linalg.inv(S) + dt * Phi[keep].T @ Phi[keep] / sigma[d] ** 2
        cov = np.linalg.inv(prec)
        mean = cov @ Phi[keep].T @ r[keep, d] / sigma[d] ** 2
        np.testing.assert_allclose(post.mean[:, d], mean, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(post.factor[d] @ post.factor[d].T, cov, rtol=1e-8, atol=1e-12)
    assert post.sample.shape == (J * (D + 1), D)
    # with the weights given, the uncollapsed path density matches the Gaussian increments
    W = DriftWeights(L, D).sample(jax.random.key(1))
    em = EulerMaruyama(feats, W, jnp.asarray(sigma), dt, jnp.zeros(D), jnp.full(D, 3.0), T, (B,),
                       None if drive is None else jnp.asarray(drive), jnp.asarray(mask))
    mean = dt * (np.asarray(feats(jnp.asarray(x[:, :-1]))) @ np.asarray(W))
    ref = stats.norm(mean.reshape(-1, D), sigma * np.sqrt(dt)).logpdf(r).sum(-1)[keep].sum()
    ref += stats.norm(0, 3.0).logpdf(x[:, 0]).sum()
    np.testing.assert_allclose(em.log_prob(jnp.asarray(x)), ref, rtol=1e-10)


def test_collapsed_float32_is_finite_on_long_paths():
    rng = np.random.default_rng(5)
    J, D = 2, 2
    w, tau, c, Lm, M, s = random_ssl(rng, J, D)
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    feats = lambda z: kernels.ssl_features(z, f32(w), 0.7, f32(c))  # noqa: E731
    L = kernels.ssl_weight_scale_tril(f32(Lm), f32(s))
    x = jnp.cumsum(f32(rng.normal(size=(4, 5000, D)) * 0.05), 1)
    fn = CollapsedEulerMaruyama(feats, L, f32([0.5, 0.5]), 0.001, f32([0, 0]), f32([3, 3]), 5000, (4,))
    lp = fn.log_prob(x)
    lp64 = CollapsedEulerMaruyama(lambda z: kernels.ssl_features(z, w, 0.7, c),
                                  kernels.ssl_weight_scale_tril(jnp.asarray(Lm), jnp.asarray(s)),
                                  jnp.array([0.5, 0.5]), 0.001, jnp.zeros(2), jnp.full(2, 3.0), 5000,
                                  (4,)).log_prob(jnp.asarray(x, jnp.float64))
    assert lp.dtype == jnp.float32 and np.isfinite(lp)
    np.testing.assert_allclose(lp, lp64, rtol=1e-4)
    g = jax.grad(lambda z: fn.log_prob(z))(x)
    assert np.all(np.isfinite(g))


def test_euler_maruyama_simulate_and_binning():
    x = euler_maruyama_simulate(jax.random.key(0), lambda z: -z, jnp.ones((3, 2)), 0.0, 0.1, 5)
    np.testing.assert_allclose(x[0, :, 0], 0.9 ** np.arange(5))
    y = np.arange(24.0).reshape(2, 6, 2)
    yb = bin_observations(y, 3)
    assert yb.shape == (2, 2, 2)
    np.testing.assert_allclose(yb[0, 0], y[0, :3].sum(0))
    with pytest.raises(ValueError, match="bin_size"):
        bin_observations(y, 0)
