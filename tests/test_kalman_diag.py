"""The information-form Kalman filter for diagonal emission noise equals the general filter.

``R`` given as variances (N,) runs the observation update in the latent space; the result must
equal the filter with the full matrix ``diag(R)`` (itself tested against the dense joint
Gaussian in test_scans.py): log-likelihood, pointwise terms, filtered moments, gradients,
smoother and simulation-smoother draws, with missing entries and time-varying parameters, in
float32 and float64.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo import scans


def _problem(rng, T=40, D=2, N=6, dtype=np.float64):
    A = 0.9 * np.linalg.qr(rng.normal(size=(D, D)))[0]
    F = np.stack([A * s for s in rng.uniform(0.8, 1.0, T - 1)])
    b = 0.1 * rng.normal(size=(T - 1, D))
    Q = np.stack([np.diag(rng.uniform(0.05, 0.2, D)) for _ in range(T - 1)])
    H = rng.normal(size=(N, D))
    d = rng.normal(size=(T, N))
    r2 = rng.uniform(0.05, 0.5, N)
    x = np.zeros(D)
    y = np.empty((T, N))
    for t in range(T):
        x = (F[t - 1] @ x + b[t - 1] if t else x) + rng.normal(size=D) * 0.3
        y[t] = H @ x + d[t] + np.sqrt(r2) * rng.normal(size=N)
    y[3, 1] = y[10, 0] = y[10, 4] = np.nan
    y[20] = np.nan  # a step with nothing observed
    args = (np.zeros(D), np.eye(D), F, b, Q, H, d)
    return y.astype(dtype), tuple(a.astype(dtype) for a in args), r2.astype(dtype)


@pytest.mark.parametrize("x64", [False, True])
def test_diagonal_filter_equals_full(x64):
    with jax.enable_x64(x64):
        dtype = np.float64 if x64 else np.float32
        y, args, r2 = _problem(np.random.default_rng(0), dtype=dtype)
        full = scans.kalman_filter(y, *args, np.diag(r2))
        diag = scans.kalman_filter(y, *args, r2)
        tol = dict(rtol=1e-9, atol=1e-9) if x64 else dict(rtol=2e-4, atol=2e-4)
        np.testing.assert_allclose(diag.log_likelihood, full.log_likelihood, **tol)
        np.testing.assert_allclose(diag.pointwise, full.pointwise, **tol)
        np.testing.assert_allclose(diag.filtered_means, full.filtered_means, **tol)
        np.testing.assert_allclose(diag.filtered_covariances, full.filtered_covariances, **tol)

        def ll(F, H, r, R_full):
            R = jnp.diag(r) if R_full else r
            return scans.kalman_filter(y, args[0], args[1], F, args[3], args[4], H, args[6], R).log_likelihood

        g_full = jax.grad(ll, argnums=(0, 1, 2))(args[2], args[5], r2, True)
        g_diag = jax.grad(ll, argnums=(0, 1, 2))(args[2], args[5], r2, False)
        for a, b in zip(g_diag, g_full, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6 if x64 else 2e-3, atol=1e-6 if x64 else 2e-3)


def test_diagonal_smoother_and_draws_equal_full():
    with jax.enable_x64(True):
        y, args, r2 = _problem(np.random.default_rng(1))
        a = scans.kalman_smoother(y, *args, np.diag(r2))
        b = scans.kalman_smoother(y, *args, r2)
        np.testing.assert_allclose(b.smoothed_means, a.smoothed_means, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(b.smoothed_covariances, a.smoothed_covariances, rtol=1e-9, atol=1e-9)
        key = jax.random.key(3)
        np.testing.assert_allclose(scans.kalman_sample(key, y, *args, r2),
                                   scans.kalman_sample(key, y, *args, np.diag(r2)), rtol=1e-8, atol=1e-8)


def test_diagonal_noise_shape_is_checked():
    y, args, r2 = _problem(np.random.default_rng(2), T=25)
    with pytest.raises(ValueError, match="diagonal R"):
        scans.kalman_filter(y, *args, r2[:-1])


def test_diagonal_filter_with_singular_covariance():
    # a known start and a state whose dynamics noise vanishes in one direction make the
    # covariance singular: the information-form update must not factor it
    with jax.enable_x64(True):
        y, args, r2 = _problem(np.random.default_rng(3))
        m0, P0, F, b, Q, H, d = args
        Q = Q.copy()
        Q[5:25] = np.diag([0.1, 0.0])
        P0 = np.zeros_like(P0)
        full = scans.kalman_filter(y, m0, P0, F, b, Q, H, d, np.diag(r2))
        out = scans.kalman_filter(y, m0, P0, F, b, Q, H, d, r2)
        assert np.isfinite(out.filtered_means).all() and np.isfinite(out.pointwise).all()
        np.testing.assert_allclose(out.log_likelihood, full.log_likelihood, rtol=1e-8)
        np.testing.assert_allclose(out.filtered_covariances, full.filtered_covariances, atol=1e-9)
