"""The data frame that anchors an SLDS's latent space (zoo.frame): constraints, uniqueness,
determinism, missing data, padding and counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro import handlers

from zoo import RSLDS, SLDS
from zoo.frame import default_frame, latent_frame
from zoo.initialize import pca_latents

jax.config.update("jax_enable_x64", True)  # float64 cases; float32 ones cast their data


def _noiseless(rng, T=200, N=6, D=2):
    x = np.cumsum(rng.normal(size=(T, D)), axis=0) * 0.3
    C = rng.normal(size=(N, D))
    d = rng.normal(size=N)
    return x, C, d, x @ C.T + d


def _trace(m, y, key=0, **kw):
    return handlers.trace(handlers.seed(m, jax.random.key(key))).get_trace(y, **kw)


@pytest.mark.parametrize("emissions", ["gaussian", "poisson"])
def test_emissions_satisfy_the_frame_constraints_for_any_free_values(emissions):
    """P^T C = s I and P^T d = P^T o whatever G and h are; without data C = [I; G], d = [0; h]."""
    m = RSLDS(num_states=2, latent_dim=2, obs_dim=5, emissions=emissions)
    y = np.asarray(m.simulate(jax.random.key(0), 60)["y"])
    f = m.data_frame(y)
    for key in range(3):
        tr = _trace(m, y, key)
        C, d = tr["emission_matrix"]["value"], tr["emission_bias"]["value"]
        assert float(jnp.abs(tr["emission_free"]["value"]).max()) > 0
        np.testing.assert_allclose(f.basis.T @ C, f.scale * np.eye(2), atol=1e-5)
        np.testing.assert_allclose(f.basis.T @ (d - f.offset), 0.0, atol=1e-5)
    np.testing.assert_allclose(f.basis.T @ f.basis, np.eye(2), atol=1e-5)
    np.testing.assert_allclose(f.complement.T @ f.basis, 0.0, atol=1e-5)
    prior = _trace(m, None, num_steps=10)
    np.testing.assert_allclose(prior["emission_matrix"]["value"][:2], np.eye(2), atol=0)
    np.testing.assert_allclose(prior["emission_bias"]["value"][:2], 0.0, atol=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_frame_fixes_the_affine_map_uniquely(dtype):
    """Noiseless Gaussian data: the PCA latents in the frame reproduce y exactly, and of all
    (M x + c, C M^{-1}, d - C M^{-1} c) only M = I, c = 0 satisfies the constraints."""
    rng = np.random.default_rng(1)
    x, C, d, y = _noiseless(rng)
    y = y.astype(dtype)
    m = SLDS(num_states=1, latent_dim=2, obs_dim=6)
    f = m.data_frame(y)
    assert f.basis.dtype == dtype
    x0, C0, d0 = pca_latents(m, y, frame=f)
    tol = 1e-4 if dtype == np.float32 else 1e-9
    np.testing.assert_allclose(x0 @ C0.T + d0, y, atol=tol * 10 * np.abs(y).max())
    P, s, o = (np.asarray(a, float) for a in (f.basis, f.scale, f.offset))
    # the frame's unit: the latents' mean variance is one
    np.testing.assert_allclose(x0.var(0).mean(), 1.0, rtol=1e-3)
    # the true parameters map into the frame by one affine map: M = P^T C / s, c = P^T (d - o) / s
    M = P.T @ C / s
    c = P.T @ (d - o) / s
    np.testing.assert_allclose(x @ M.T + c, x0, atol=tol * 100)
    for _ in range(3):  # any other affine map breaks P^T C' = s I or P^T d' = P^T o
        M2 = np.eye(2) + 0.3 * rng.normal(size=(2, 2))
        c2 = rng.normal(size=2)
        C2 = C0 @ np.linalg.inv(M2)
        d2 = d0 - C2 @ c2
        assert np.abs(P.T @ C2 - s * np.eye(2)).max() > 1e-2 or np.abs(P.T @ (d2 - o)).max() > 1e-2


def test_frame_is_deterministic_under_jit_and_ignores_padding_and_gaps():
    rng = np.random.default_rng(2)
    *_, y = _noiseless(rng, T=120)
    y = y + 0.1 * rng.normal(size=y.shape)
    eager = latent_frame(y, 2)
    traced = jax.jit(lambda v: latent_frame(v, 2))(y)
    for a, b in zip(eager, traced, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # signs: the largest-magnitude entry of each direction is positive
    big = np.take_along_axis(np.asarray(eager.basis), np.abs(eager.basis).argmax(0)[None], 0)
    assert np.all(big > 0)
    # padded steps (mask False) carry garbage and do not move the frame
    padded = np.concatenate([y, 1e3 * np.ones((30, y.shape[1]))])
    mask = np.arange(150) < 120
    f = latent_frame(padded, 2, mask=mask)
    for a, b in zip(eager, f, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # missing entries are filled, not propagated
    gappy = y.copy()
    gappy[::7, 1] = np.nan
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in latent_frame(gappy, 2))


def test_poisson_frame_is_in_the_linear_predictors_space():
    """Counts from rates softplus(C x + d): the frame's latents track x (up to the frame's affine
    map) closely, a silent neuron and NaNs keep everything finite."""
    rng = np.random.default_rng(3)
    T, N = 1500, 9
    t = np.arange(T)
    x = np.stack([np.sin(2 * np.pi * t / 300), np.cos(2 * np.pi * t / 170)], -1)
    C = rng.normal(size=(N, 2))
    eta = x @ C.T + 1.0
    y = rng.poisson(jax.nn.softplus(eta)).astype(float)
    y[:, 8] = 0.0  # a silent neuron
    y[100:110, 5] = np.nan
    m = SLDS(num_states=1, latent_dim=2, obs_dim=N, emissions="poisson")
    f = m.data_frame(y)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in f)
    x0, _, _ = pca_latents(m, y, frame=f)
    # the best affine map from the true x explains most of the frame latents' variance (0.96 and
    # 0.89 on these data)
    X = np.concatenate([x, np.ones((T, 1))], 1)
    coef, *_ = np.linalg.lstsq(X, x0, rcond=None)
    r2 = 1 - ((x0 - X @ coef) ** 2).sum(0) / ((x0 - x0.mean(0)) ** 2).sum(0)
    assert np.all(r2 > 0.85), r2


def test_default_frame_shapes():
    f = default_frame(4, 1)
    assert f.basis.shape == (4, 1) and f.complement.shape == (4, 3)
    assert float(f.scale) == 1.0 and float(jnp.abs(f.offset).sum()) == 0.0
