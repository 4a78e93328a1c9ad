"""The structured Markov Gaussian guide against dense Gaussians, and SVI with it against the exact
posterior of a linear-Gaussian path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro import handlers
from scipy import stats

from inference.guides import MarkovGaussian, MarkovGaussianGuide, structured_guide
from inference.svi import run_svi
from zoo import LDS

from .truth import dense_joint

jax.config.update("jax_enable_x64", True)


def random_factor(rng, T, D, batch=()):
    L = np.tril(rng.normal(size=batch + (T, D, D)) * 0.3)
    idx = np.arange(D)
    L[..., idx, idx] = np.exp(rng.normal(size=batch + (T, D)) * 0.3) + 0.5
    M = rng.normal(size=batch + (T - 1, D, D)) * 0.5
    loc = rng.normal(size=batch + (T, D))
    return loc, L, M


def dense_factor(L, M):
    T, D = L.shape[:2]
    F = np.zeros((T * D, T * D))
    for t in range(T):
        F[t * D:(t + 1) * D, t * D:(t + 1) * D] = L[t]
        if t < T - 1:
            F[(t + 1) * D:(t + 2) * D, t * D:(t + 1) * D] = M[t]
    return F


@pytest.mark.parametrize("parallel", [False, True])
def test_markov_gaussian_is_exact(parallel):
    rng = np.random.default_rng(0)
    T, D = 6, 2
    loc, L, M = random_factor(rng, T, D, batch=(3,))
    d = MarkovGaussian(jnp.asarray(loc), jnp.asarray(L), jnp.asarray(M), parallel=parallel)
    key = jax.random.key(1)
    draw = np.asarray(d.sample(key, (2,)))
    eps = np.asarray(jax.random.normal(key, (2, 3, T, D)))
    x = rng.normal(size=(3, T, D))
    lp = np.asarray(d.log_prob(jnp.asarray(x)))
    ent = np.asarray(d.entropy())
    covs = np.asarray(d.marginal_covariances())
    for b in range(3):
        F = dense_factor(L[b], M[b])
        cov = np.linalg.inv(F @ F.T)
        # exact sampling: x = loc + F^{-T} eps
        for s in range(2):
            want = loc[b].ravel() + np.linalg.solve(F.T, eps[s, b].ravel())
            np.testing.assert_allclose(draw[s, b].ravel(), want, atol=1e-10)
        np.testing.assert_allclose(lp[b], stats.multivariate_normal(loc[b].ravel(), cov).logpdf(x[b].ravel()), atol=1e-9)
        np.testing.assert_allclose(ent[b], stats.multivariate_normal(loc[b].ravel(), cov).entropy(), atol=1e-9)
        for t in range(T):
            np.testing.assert_allclose(covs[b, t], cov[t * D:(t + 1) * D, t * D:(t + 1) * D], atol=1e-10)
    # O(T D^2) parameters: T D (mean) + T D^2 (diagonal blocks) + (T-1) D^2 (off-diagonal blocks)
    assert loc[0].size + L[0].size + M[0].size == T * D + T * D * D + (T - 1) * D * D


def test_markov_gaussian_rejects_bad_shapes():
    with pytest.raises(ValueError, match="off_diag"):
        MarkovGaussian(jnp.zeros((5, 2)), jnp.ones((5, 2, 2)), jnp.zeros((5, 2, 2)))


@pytest.fixture(scope="module")
def lds_path_problem():
    T, D, N = 12, 2, 3
    A = np.array([[0.9, 0.1], [-0.2, 0.8]])
    params = {"dynamics": A, "dynamics_bias": np.array([0.1, -0.1]), "dynamics_noise": np.array([0.4, 0.3]),
              "emission_matrix": np.array([[1.0, 0.0], [0.5, 1.0], [-0.3, 0.7]]),
              "emission_bias": np.array([0.2, 0.0, -0.1]), "emission_noise": np.array([0.5, 0.6, 0.4])}
    model = LDS(latent_dim=D, obs_dim=N, collapse=False)
    y = np.asarray(model.simulate(jax.random.key(0), num_steps=T, params=params)["y"])
    cond = handlers.condition(model, data=params)
    # the exact posterior of the path: condition the dense joint Gaussian of (x, y) on y
    mx, Sx, my, Sy, Sxy = dense_joint(T, np.zeros(D), np.eye(D), A, params["dynamics_bias"],
                                      np.diag(params["dynamics_noise"] ** 2), params["emission_matrix"],
                                      params["emission_bias"], np.diag(params["emission_noise"] ** 2))
    K = Sxy @ np.linalg.inv(Sy)
    mean = (mx + K @ (y.ravel() - my)).reshape(T, D)
    cov = Sx - K @ Sxy.T
    return cond, y, mean, cov


def test_structured_guide_svi_recovers_exact_path_posterior(lds_path_problem):
    cond, y, mean, cov = lds_path_problem
    guide = structured_guide(cond, y=y)
    assert isinstance(guide, MarkovGaussianGuide)  # every latent site is the path
    res = run_svi(cond, y, None, jax.random.key(0), num_steps=4000, guide=guide, learning_rate=0.02,
                  num_particles=16, tol=None, progress_bar=False)
    q = res.guide.get_distributions(res.params)["x"]
    sd = np.sqrt(np.diag(cov)).reshape(mean.shape)
    np.testing.assert_array_less(np.abs(np.asarray(q.loc) - mean) / sd, 0.1)
    q_sd = np.sqrt(np.asarray(q.variance))
    np.testing.assert_array_less(np.abs(q_sd / sd - 1.0), 0.1)
    # and its draws come through the autoguide interface with the model's shapes
    draws = res.guide.sample_posterior(jax.random.key(1), res.params, sample_shape=(5,))
    assert draws["x"].shape == (5,) + mean.shape


def test_structured_guide_combines_with_an_autoguide(lds_path_problem):
    cond, y, _, _ = lds_path_problem
    partly = handlers.condition(LDS(latent_dim=2, obs_dim=3, collapse=False),
                                data={"emission_matrix": np.array([[1.0, 0.0], [0.5, 1.0], [-0.3, 0.7]])})
    guide = structured_guide(partly, y=y)
    res = run_svi(partly, y, None, jax.random.key(0), num_steps=300, guide=guide, learning_rate=0.01,
                  tol=None, progress_bar=False)
    assert np.isfinite(res.losses).all() and res.losses[-50:].mean() < res.losses[:50].mean()
    med = res.guide.median(res.params)
    assert {"x", "dynamics", "emission_noise"} <= set(med)
    assert med["x"].shape == (12, 2)


def test_svi_fit_on_an_rslds_with_deterministic_sites(fast_compile):
    """The structured guide on a model with deterministic sites (the rSLDS's emission_matrix): the
    parameter sub-guide must not see them (AutoGuideList refuses), and fit(method="svi") returns
    draws of the deterministic sites too. About 850 small eager compiles (NumPyro initialises the
    three guides op by op) and 20 Adam steps: compiled without most XLA optimisations."""
    import inference
    from zoo.datasets import nascar

    data = nascar(seed=0, num_steps=30)
    post = inference.fit(data["model"], np.asarray(data["y"]), "svi", num_samples=4, progress_bar=False,
                         num_steps=20, log_likelihood=False)
    ds = post["posterior"].to_dataset()
    assert {"x", "dynamics", "emission_matrix"} <= set(ds.data_vars)
    assert ds.sizes["draw"] == 4 and ds["x"].sizes["time"] == 30
    assert np.isfinite(ds["emission_matrix"].values).all()
