"""The non-centred path (zoo.reparam): block-tridiagonal factorisation against dense matrices, the
transform's exactness (density and Jacobian against brute force) and its purpose (the Gaussian
case becomes exactly standard normal), and its use by inference.fit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro import handlers
from numpyro.infer.util import log_density

import inference
from zoo import RSLDS, SLDS, scans
from zoo.reparam import emission_information

jax.config.update("jax_enable_x64", True)


def _dense(diag, off):
    T, D = diag.shape[0], diag.shape[-1]
    Lam = np.zeros((T * D, T * D))
    for t in range(T):
        Lam[t * D:(t + 1) * D, t * D:(t + 1) * D] = diag[t]
        if t < T - 1:
            Lam[t * D:(t + 1) * D, (t + 1) * D:(t + 2) * D] = off[t]
            Lam[(t + 1) * D:(t + 2) * D, t * D:(t + 1) * D] = off[t].T
    return Lam


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_block_tridiagonal_cholesky_matches_dense(dtype):
    rng = np.random.default_rng(0)
    B, T, D = 2, 7, 3
    diag = np.empty((B, T, D, D))
    off = rng.normal(size=(B, T - 1, D, D))
    for b in range(B):
        for t in range(T):
            M = rng.normal(size=(D, D))
            diag[b, t] = M @ M.T + 4 * D * np.eye(D)
    h = rng.normal(size=(B, T, D))
    v = rng.normal(size=(B, T, D))
    f = scans.block_tridiagonal_cholesky(jnp.asarray(diag, dtype), jnp.asarray(off, dtype), jnp.asarray(h, dtype))
    x = scans.block_bidiagonal_solve(f, jnp.asarray(v, dtype))
    mean = scans.block_bidiagonal_solve(f, f.rhs_solved)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    for b in range(B):
        Lam = _dense(diag[b], off[b])
        U = np.zeros_like(Lam)
        for t in range(T):
            U[t * D:(t + 1) * D, t * D:(t + 1) * D] = np.asarray(f.chol[b, t]).T
            if t < T - 1:
                U[t * D:(t + 1) * D, (t + 1) * D:(t + 2) * D] = f.coupling[b, t]
        assert np.allclose(U.T @ U, Lam, atol=tol * 50)
        assert np.allclose(np.asarray(x[b]).ravel(), np.linalg.solve(U, v[b].ravel()), atol=tol)
        assert np.allclose(np.asarray(mean[b]).ravel(), np.linalg.solve(Lam, h[b].ravel()), atol=tol)
        logdet = 2 * np.sum(np.log(np.diagonal(np.asarray(f.chol[b]), axis1=-2, axis2=-1)))
        assert np.isclose(logdet, np.linalg.slogdet(Lam)[1], atol=tol * 100)
    assert np.isfinite(np.asarray(x)).all()


def _reference_and_values(m, data, y, **kw):
    # the simulated C and d are deterministic sites: substituting them would bypass the free ones
    vals = {k: v for k, v in data["params"].items() if k not in ("emission_matrix", "emission_bias")}
    vals["x"] = data["x"]
    ref = m.path_reference(y, vals, **kw)
    return ref, {k: v for k, v in m.reference_values(vals, ref).items() if k != "x_whitened"}


def test_gaussian_path_is_exactly_standard_normal_given_the_parameters():
    """One state, Gaussian emissions: the path's conditional posterior is the Gaussian the
    transform is built from, for any dynamics and emission parameters (not only the reference's),
    so the log density in eps is -|eps|^2 / 2 + const: grad = -eps. Trials, inputs, a NaN."""
    m = SLDS(num_states=1, latent_dim=2, obs_dim=4, input_dim=1)
    u = np.random.default_rng(1).normal(size=(3, 40, 1))
    data = m.simulate(jax.random.key(0), 40, num_trials=3, inputs=u)
    y = np.array(data["y"])
    y[0, 5, 1] = np.nan
    ref, theta = _reference_and_values(m, data, y, inputs=u)
    theta = {**theta, "dynamics": theta["dynamics"] * 0.9, "dynamics_noise": theta["dynamics_noise"] * 1.7,
             "emission_free": theta["emission_free"] * 1.3, "emission_noise": theta["emission_noise"] * 0.8}

    def lp(eps):
        return log_density(m, (y,), {"path_reference": ref, "inputs": u}, {**theta, "x_whitened": eps})[0]

    eps = jax.random.normal(jax.random.key(1), data["x"].shape)
    np.testing.assert_allclose(jax.grad(lp)(eps), -eps, atol=1e-9)


@pytest.mark.parametrize("emissions", ["gaussian", "poisson"])
def test_noncentred_density_is_the_model_density_times_the_jacobian(emissions):
    """Three recurrent states: log p(eps, theta) = log p(x(eps), theta) + log |det dx/deps|, with
    the Jacobian determinant taken densely by automatic differentiation."""
    m = RSLDS(num_states=3, latent_dim=2, obs_dim=5, transitions="recurrent", emissions=emissions)
    data = m.simulate(jax.random.key(3), 12)
    y = np.asarray(data["y"])
    ref, theta = _reference_and_values(m, data, y)
    theta = {**theta, "dynamics_noise": theta["dynamics_noise"] * 1.5}
    eps = jax.random.normal(jax.random.key(4), data["x"].shape)

    def run(e):
        seeded = handlers.substitute(handlers.seed(m, jax.random.key(0)), data={**theta, "x_whitened": e})
        return handlers.trace(seeded).get_trace(y, path_reference=ref)

    tr = run(eps)
    x = tr["x"]["value"]
    plain = {k: v for k, v in theta.items() if k != "dynamics_bias_centred"}
    plain.update(x=x, dynamics_bias=tr["dynamics_bias"]["value"])
    J = jax.jacfwd(lambda e: run(e)["x"]["value"].ravel())(eps).reshape(x.size, eps.size)
    lp_nc = log_density(m, (y,), {"path_reference": ref}, {**theta, "x_whitened": eps})[0]
    lp_plain = log_density(m, (y,), {}, plain)[0]
    assert np.isclose(float(lp_nc), float(lp_plain) + np.linalg.slogdet(np.asarray(J))[1], atol=1e-8)


def test_emission_information_is_the_negative_hessian_for_counts():
    rng = np.random.default_rng(2)
    T, N, D = 6, 4, 2
    C, d = jnp.asarray(rng.normal(size=(N, D))), jnp.asarray(rng.normal(size=N))
    x_ref = jnp.asarray(rng.normal(size=(T, D)))
    y = rng.poisson(2.0, size=(T, N)).astype(float)
    y[2, 1] = np.nan

    import numpyro.distributions as dist

    def from_eta(eta):
        return dist.Poisson(jax.nn.softplus(eta))

    H, h = emission_information(C, d, from_eta, x_ref, jnp.asarray(y))
    seen = ~np.isnan(y)

    def ll(x):
        return jnp.sum(jnp.where(seen, from_eta(x @ C.T + d).log_prob(jnp.nan_to_num(y)), 0.0))

    full = -jax.hessian(ll)(x_ref)  # (T, D, T, D)
    for t in range(T):
        np.testing.assert_allclose(H[t], full[t, :, t, :], atol=1e-10)
    np.testing.assert_allclose(h, jnp.einsum("tij,tj->ti", H, x_ref) + jax.grad(ll)(x_ref), atol=1e-10)


def test_fit_samples_the_path_noncentred_and_reports_the_model_sites():
    m = SLDS(num_states=2, latent_dim=2, obs_dim=5)
    data = m.simulate(jax.random.key(0), 50, num_trials=2)
    y = np.array(data["y"])
    y[1, 7, 3] = np.nan
    post = inference.fit(m, y, "nuts", num_chains=1, num_warmup=30, num_samples=10, progress_bar=False)
    names = set(post["posterior"].data_vars)
    assert {"x", "dynamics_bias"} <= names and not names & {"x_whitened", "dynamics_bias_centred"}
    assert post["posterior"]["x"].dims == ("chain", "draw", "trial", "time", "latent")
    assert np.isfinite(post["posterior"]["x"].values).all()
    assert "non-centred" in post.attrs["initialization"]
    from inference.starts import path_reference

    values = m.initial_params(y, jax.random.key(0))
    assert path_reference(m, y, {}, values, False) is None
    assert path_reference(m, y, {}, None, "auto") is None  # no point estimate (init="prior", ...)
    assert set(path_reference(m, y, {}, values, "auto")) == {"states", "path", "centres"}
    with pytest.raises(ValueError, match="path_reparam"):
        inference.fit(m, y, "nuts", num_chains=1, num_warmup=5, num_samples=5, progress_bar=False,
                      path_reparam="yes")
    with pytest.raises(ValueError, match="path_reparam=True"):
        inference.fit(m, y, "nuts", num_chains=1, num_warmup=5, num_samples=5, progress_bar=False,
                      init="prior", path_reparam=True)
    with pytest.raises(ValueError, match="needs the observations"):
        handlers.seed(m, jax.random.key(0))(None, num_steps=5, path_reference={"states": None, "path": None,
                                                                            "centres": np.zeros((2, 2))})
