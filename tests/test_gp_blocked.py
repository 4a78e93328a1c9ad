"""The GP models' blocked sampler (W | x exactly, then NUTS on theta and the whitened path)
against independent truth at small sizes.

- the drift weights' conditional given the path against a dense Gaussian computation;
- the whitened path's log-Jacobian against a brute-force determinant, its inverse, and the
  Gauss-Newton mean against the mode of p(x | W, theta, y);
- the whitened program's density against the plain program's joint density of (theta, W, x);
- the composed sweep's posterior means on a tiny GP-SDE against a brute-force quadrature.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from numpyro import handlers
from numpyro.infer.util import log_density

import inference
from zoo import GPSDE, GPSLDS
from zoo.handlers import decode
from zoo.protocol import BlockedSpec
from zoo.reparam import emission_information
from zoo.sde_laplace import LaplacePath, laplace_path_factor

jax.config.update("jax_enable_x64", True)


def _tiny_gpslds_draw(seed=0, trials=2, T=6, poisson=True):
    m = GPSLDS(num_regimes=2, latent_dim=2, obs_dim=4, emissions="poisson" if poisson else "gaussian",
               dt=0.1, init_scale=2.0)
    data = m.simulate(jax.random.key(seed), T, num_trials=trials)
    return m, data


def test_weights_given_path_match_a_dense_gaussian_computation():
    m, data = _tiny_gpslds_draw(poisson=False)
    p = {k: v for k, v in data["params"].items() if k != "drift_weights"}
    x, y = np.asarray(data["x"]), np.asarray(data["y"])
    with decode(rng_key=jax.random.key(1)) as dec:
        handlers.substitute(handlers.seed(m, 0), data={**p, "x": x})(y)
    post = dec.posteriors["x"]
    # dense Bayesian linear regression of the Euler increments on Phi(x), per latent dimension
    phi = np.asarray(m.drift_features(p, x[:, :-1])).reshape(-1, m.num_features)
    r = (x[:, 1:] - x[:, :-1]).reshape(-1, 2)
    L = np.asarray(m._prior_scale_tril(p))
    S = L @ L.T
    for dim in range(2):
        s2 = float(p["diffusion"][dim]) ** 2
        prec = np.linalg.inv(S) + m.dt / s2 * phi.T @ phi
        cov = np.linalg.inv(prec)
        mean = cov @ phi.T @ r[:, dim] / s2
        np.testing.assert_allclose(post.mean[:, dim], mean, rtol=1e-8, atol=1e-10)
        f = np.asarray(post.factor[dim])
        np.testing.assert_allclose(f @ f.T, cov, rtol=1e-8, atol=1e-12)
    # the draw is mean + factor z
    z = (np.asarray(post.sample) - np.asarray(post.mean))
    assert np.all(np.isfinite(z)) and z.shape == post.mean.shape


def _laplace_setup(num_iterations):
    m, data = _tiny_gpslds_draw(seed=3, trials=2, T=5)
    p = data["params"]
    W = jnp.asarray(p["drift_weights"])
    C, d = jnp.asarray(p["emission_matrix"]), jnp.asarray(p["emission_bias"])
    y = jnp.asarray(data["y"])
    def from_eta(eta):
        return dist.Poisson(m.dt * jax.nn.softplus(eta))

    def info(xb):
        return emission_information(C, d, from_eta, xb, y)

    def drift(v):
        return m.drift_features(p, v) @ W

    x_ref = jnp.asarray(data["x"]) + 0.3
    f = laplace_path_factor(drift, jnp.asarray(p["diffusion"]), m.dt, jnp.zeros(2), jnp.full(2, 2.0), info,
                            x_ref, num_iterations)

    def log_p(x):  # the exact log p(x | W, theta) + log p(y | x), up to a constant
        sd = jnp.asarray(p["diffusion"]) * np.sqrt(m.dt)
        inc = x[:, 1:] - x[:, :-1] - m.dt * drift(x[:, :-1])
        lp = jnp.sum(dist.Normal(0.0, sd).log_prob(inc)) + jnp.sum(dist.Normal(0.0, 2.0).log_prob(x[:, 0]))
        return lp + jnp.sum(from_eta(x @ C.T + d).log_prob(y))

    return f, log_p


def test_whitened_path_log_jacobian_inverse_and_gauss_newton_mode():
    f, log_p = _laplace_setup(2)
    lap = LaplacePath(f)
    eps = jax.random.normal(jax.random.key(0), f.rhs_solved.shape)
    x, log_det = lap.transform(eps)
    J = jax.jacfwd(lambda e: lap.transform(e.reshape(eps.shape))[0].reshape(-1))(eps.reshape(-1))
    sign, brute = np.linalg.slogdet(np.asarray(J))
    assert sign > 0
    np.testing.assert_allclose(float(log_det), brute, rtol=1e-10)
    np.testing.assert_allclose(lap.whiten(x), eps, atol=1e-10)
    # iterated to convergence, the Gauss-Newton mean is the mode of p(x | W, theta, y)
    f30, _ = _laplace_setup(30)
    mode = LaplacePath(f30).mean
    g = jax.grad(log_p)(mode)
    assert float(jnp.max(jnp.abs(g))) < 1e-6 * float(jnp.max(jnp.abs(jax.grad(log_p)(mode + 0.1))))


def test_whitened_program_density_is_the_joint_density_plus_log_jacobian():
    m, data = _tiny_gpslds_draw(seed=4)
    p = {k: jnp.asarray(v) for k, v in data["params"].items()}
    y = jnp.asarray(data["y"])
    x_ref = jnp.asarray(data["x"]) - 0.2
    eps = 0.5 * jax.random.normal(jax.random.key(2), x_ref.shape)
    ref = {"states": p["drift_weights"], "path": x_ref, "given_states": True}
    theta = {k: v for k, v in p.items() if k != "drift_weights"}
    lp_w, tr = log_density(m, (y,), {"path_reference": ref}, {**theta, "x_whitened": eps})
    x = tr["x"]["value"]
    f = LaplacePath(laplace_path_factor(lambda v: m.drift_features(p, v) @ p["drift_weights"], p["diffusion"],
                                        m.dt, jnp.zeros(2), jnp.full(2, m.init_scale),
                                        lambda xb: _emission_info(m, p, y, xb), x_ref, 2))
    _, log_det = f.transform(eps)
    lp_plain, _ = log_density(m, (y,), {"collapse": False}, {**p, "x": x})
    np.testing.assert_allclose(float(lp_w), float(lp_plain) + float(log_det), rtol=1e-10)
    # the target eps of a path is its whitening
    _, tr2 = log_density(m, (y,), {"path_reference": {**ref, "whiten": x}}, {**theta, "x_whitened": eps})
    np.testing.assert_allclose(tr2["x_whitened_target"]["value"], eps, atol=1e-9)


def test_collapsed_whitened_program_density_is_the_marginal_plus_log_jacobian():
    """Weights integrated out: the whitened program's density is the collapsed program's at
    x(eps) plus the log-Jacobian (brute force), and the recorded weight moments are the same."""
    m, data = _tiny_gpslds_draw(seed=5)
    p = {k: jnp.asarray(v) for k, v in data["params"].items() if k != "drift_weights"}
    y = jnp.asarray(data["y"])
    ref = {"states": None, "path": jnp.asarray(data["x"]) + 0.1, "given_states": True, "iterations": 3}
    eps = 0.5 * jax.random.normal(jax.random.key(3), ref["path"].shape)

    def x_of(e):
        return log_density(m, (y,), {"path_reference": ref}, {**p, "x_whitened": e})[1]["x"]["value"]

    lp_w, tr = log_density(m, (y,), {"path_reference": ref}, {**p, "x_whitened": eps})
    x = tr["x"]["value"]
    J = jax.jacfwd(lambda e: x_of(e.reshape(eps.shape)).reshape(-1))(eps.reshape(-1))
    log_det = np.linalg.slogdet(np.asarray(J))[1]
    lp_plain, tr_plain = log_density(m, (y,), {}, {**p, "x": x})
    np.testing.assert_allclose(float(lp_w), float(lp_plain) + log_det, rtol=1e-10)
    for k in ("drift_weights_mean", "drift_weights_factor"):
        np.testing.assert_allclose(tr[k]["value"], tr_plain[k]["value"], rtol=1e-10, atol=1e-12)


def _emission_info(m, p, y, xb):
    def from_eta(eta):
        return dist.Poisson(m.dt * jax.nn.softplus(eta))

    return emission_information(p["emission_matrix"], p["emission_bias"], from_eta, xb, y)


# ------------------------------------------------------------- the composed sweep vs quadrature

FIXED = {"lengthscale": np.array([1.0]), "output_scale": np.array(1.0), "emission_matrix": np.array([[1.0]]),
         "emission_bias": np.array([0.0]), "emission_noise": np.array([0.4])}
Y_TINY = np.array([[0.8], [0.2], [-0.5]])


@dataclass(frozen=True)
class _GivenWeightsGPSDE(GPSDE):
    """The variant that draws W exactly given the path and runs NUTS given W."""

    def blocked_sampler(self):
        return BlockedSpec("x", collapsed=False, states_site="drift_weights")


def _tiny(cls):
    return cls(1, 1, num_inducing=3, bound=2.0, dt=0.2, init_scale=1.0, diffusion_scale=0.5)


@pytest.fixture(scope="module")
def tiny_truth():
    """A GP-SDE with D = N = 1, T = 3, all but the diffusion and the path fixed: the brute-force
    posterior means of log sigma and x_t by quadrature (W integrated out in closed form)."""
    model = handlers.condition(_tiny(GPSDE), data=FIXED)
    ls = np.linspace(np.log(0.5) - 4 * 0.5, np.log(0.5) + 4 * 0.5, 41)
    g = np.linspace(-2.5, 2.5, 61)
    X = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3, 1)

    @jax.jit
    def log_joint(log_s):
        vals = {**FIXED, "diffusion": jnp.exp(log_s)[None]}
        lp = jax.vmap(lambda x: log_density(model, (jnp.asarray(Y_TINY),), {}, {**vals, "x": x})[0])(
            jnp.asarray(X))
        return lp + log_s  # LogNormal density in log sigma: the Jacobian of sigma = exp(log s)

    lj = np.stack([np.asarray(log_joint(jnp.asarray(v))) for v in ls])  # (41, n)
    w = np.exp(lj - lj.max())
    w /= w.sum()
    return {"log_sigma": float(np.sum(w.sum(1) * ls)), "x": np.einsum("sn,nt->t", w, X[..., 0])}


def _check_against_truth(post, truth):
    # imported here: arviz imported before numpyro.distributions leaves that package without its
    # ``distribution`` attribute, which numpyro.factor reads (an AttributeError in numpyro's init)
    import arviz as az

    assert post.attrs["method"] == "blocked"
    ds = post["posterior"]
    log_s = np.log(ds["diffusion"].values[..., 0])
    xs = ds["x"].values[..., 0]
    checks = [("log_sigma", log_s, truth["log_sigma"])] + [(f"x{t}", xs[..., t], truth["x"][t]) for t in range(3)]
    for name, draws, want in checks:
        mcse = float(az.mcse(draws, method="mean"))
        assert abs(draws.mean() - want) < 4 * mcse + 2e-3, (name, draws.mean(), want, mcse)
    assert int(post["sample_stats"]["diverging"].sum()) == 0


def test_blocked_sweep_matches_brute_force_posterior(tiny_truth):
    """The default GP path block (weights integrated out, path whitened)."""
    post = inference.fit(handlers.condition(_tiny(GPSDE), data=FIXED), Y_TINY, num_chains=2, num_warmup=200,
                         num_samples=600, seed=1, progress_bar=False, log_likelihood=False)
    assert {"drift_weights_mean", "drift_weights_factor"} <= set(post["posterior"].data_vars)
    _check_against_truth(post, tiny_truth)


@pytest.mark.slow
def test_weights_given_sweep_matches_brute_force_posterior(tiny_truth):
    """The variant W | x exactly, NUTS on (theta, eps) given W, eps remapped after each W draw."""
    post = inference.fit(handlers.condition(_tiny(_GivenWeightsGPSDE), data=FIXED), Y_TINY, num_chains=2,
                         num_warmup=300, num_samples=1000, seed=1, progress_bar=False, log_likelihood=False)
    assert "drift_weights" in post["posterior"]
    _check_against_truth(post, tiny_truth)
