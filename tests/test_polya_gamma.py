"""Exact PG(1, c) draws against independent truth: the closed-form mean, variance, Laplace
transform and CDF of the Polya-gamma distribution, in float32 and float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from zoo.polya_gamma import _log_mixture_weights, pg1_mean, sample_pg1

CS = np.array([0.0, 0.5, 2.0, 10.0, -3.0, 50.0, 1e3, -1e3])
N = 20_000  # draws per c
SIGMAS = 4  # tolerance in Monte Carlo standard errors


def true_mean(c):
    c = np.abs(c)
    return 0.25 if c == 0 else np.tanh(c / 2) / (2 * c)


def true_var(c):
    c = np.abs(c)
    return 1 / 24 if c == 0 else (np.sinh(c) - c) / (4 * c**3 * np.cosh(c / 2) ** 2)


def true_laplace(c, s):
    """E[exp(-s omega)] = cosh(c/2) / cosh(sqrt(c^2/4 + s/2))."""
    return np.cosh(c / 2) / np.cosh(np.sqrt(c**2 / 4 + s / 2))


def true_cdf(w, c, terms=400):
    """P(omega <= w): omega = J/4 with J's density cosh(z) e^{-z^2 x/2} sum_n (-1)^n pi (n+1/2)
    e^{-(n+1/2)^2 pi^2 x/2}, z = |c|/2, integrated term by term over (x, inf)."""
    z, x = abs(c) / 2, 4 * np.asarray(w)[:, None]
    h = np.arange(terms) + 0.5
    rate = (h**2 * np.pi**2 + z**2) / 2
    return 1 - np.cosh(z) * np.sum((-1) ** np.arange(terms) * np.pi * h * np.exp(-rate * x) / rate, axis=1)


@pytest.fixture(scope="module", params=[np.float32, np.float64], ids=["float32", "float64"])
def draws(request):
    dtype = request.param
    with jax.enable_x64(dtype == np.float64):
        c = jnp.asarray(np.repeat(CS[:, None], N, axis=1), dtype)
        w = sample_pg1(jax.random.key(0), c)
        assert w.shape == c.shape and w.dtype == dtype
        return np.asarray(w, np.float64)


def test_finite_and_positive(draws):
    assert np.all(np.isfinite(draws)) and np.all(draws > 0)


@pytest.mark.parametrize("i", range(6), ids=[f"c={c:g}" for c in CS[:6]])
def test_mean_and_variance(draws, i):
    w, c = draws[i], CS[i]
    d = w - w.mean()
    mcse_mean = w.std() / np.sqrt(N)
    mcse_var = np.sqrt((np.mean(d**4) - np.mean(d**2) ** 2) / N)
    assert abs(w.mean() - true_mean(c)) < SIGMAS * mcse_mean
    assert abs(w.var() - true_var(c)) < SIGMAS * mcse_var


@pytest.mark.parametrize("s", [1.0, 10.0, 100.0])
def test_laplace_transform(draws, s):
    for w, c in zip(draws[:6], CS[:6], strict=True):
        e = np.exp(-s * w)
        assert abs(e.mean() - true_laplace(c, s)) < SIGMAS * e.std() / np.sqrt(N) + 1e-12, c


def test_cdf_kolmogorov_smirnov(draws):
    for i in (0, 1, 2, 3):  # c = 0, 0.5, 2, 10: both proposal pieces and both IG branches
        assert stats.kstest(draws[i], lambda w, c=CS[i]: true_cdf(w, c)).pvalue > 1e-3, CS[i]


def test_large_c(draws):
    for w, c in zip(draws[6:], CS[6:], strict=True):  # |c| = 1e3: mean tanh(c/2)/(2c) = 1/(2|c|)
        assert abs(w.mean() - 1 / (2 * abs(c))) < SIGMAS * w.std() / np.sqrt(N)
        np.testing.assert_allclose(w.mean(), 1 / (2 * abs(c)), rtol=0.01)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mixture_weights(dtype):
    """log p and log q against scipy's inverse-Gaussian CDF, and finite at z = |c|/2 = 500."""
    with jax.enable_x64(dtype == np.float64):
        for z in (0.0, 0.3, 1.0, 2.0, 8.0):
            log_p, log_q = _log_mixture_weights(jnp.asarray(z, dtype))
            K = np.pi**2 / 8 + z**2 / 2
            F = 2 * stats.norm.cdf(-1 / 0.8) if z == 0 else stats.invgauss.cdf(0.64, 1 / z)
            np.testing.assert_allclose(np.exp(log_p), np.pi / (2 * K) * np.exp(-K * 0.64), rtol=1e-5)
            np.testing.assert_allclose(np.exp(log_q), 2 * np.exp(-z) * F, rtol=1e-5)
        log_p, log_q = _log_mixture_weights(jnp.asarray(500.0, dtype))
        assert np.isfinite(log_p) and np.isfinite(log_q) and log_p < log_q


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_jit_vmap_shapes_and_reproducibility(dtype):
    with jax.enable_x64(dtype == np.float64):
        key = jax.random.key(1)
        c = jnp.asarray([[0.0, 1.0, -2.0], [5.0, 0.1, 1e3]], dtype)
        w = sample_pg1(key, c)
        assert w.shape == (2, 3) and w.dtype == dtype and np.all(np.asarray(w) > 0)
        np.testing.assert_array_equal(sample_pg1(key, c), w)  # same key, same draws
        assert not np.any(np.asarray(sample_pg1(jax.random.key(2), c)) == np.asarray(w))
        # inside a jitted, vmapped caller (as in MCMC over chains): each key's draws as alone
        keys = jax.random.split(key, 2)
        cs = jnp.stack([c, -c])
        wv = jax.jit(jax.vmap(sample_pg1))(keys, cs)
        assert wv.shape == (2, 2, 3) and wv.dtype == dtype
        for k in range(2):
            np.testing.assert_allclose(wv[k], sample_pg1(keys[k], cs[k]), rtol=1e-6)
        w0 = sample_pg1(key, jnp.asarray(0.0, dtype))  # scalar c
        assert w0.shape == () and w0.dtype == dtype and float(w0) > 0


def test_pg1_mean():
    c = np.array([0.0, 1e-6, -1e-6, 5e-3, 0.02, -0.7, 3.0, 1e3], np.float32)
    expected = np.where(c == 0, 0.25, np.tanh(c.astype(np.float64) / 2) / (2 * np.where(c == 0, 1, c)))
    got = pg1_mean(jnp.asarray(c))
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert float(jax.grad(pg1_mean)(jnp.float32(0.0))) == 0.0
