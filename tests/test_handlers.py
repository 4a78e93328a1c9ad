"""Handlers and sequence distributions against brute force, and under NumPyro's machinery."""

import itertools
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro import handlers as nh
from numpyro.infer import SVI, Predictive, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal
from numpyro.infer.util import log_density
from scipy import stats

from zoo import HMM, LDS
from zoo.distributions import HMMEmissions, SwitchingLinearDynamics
from zoo.handlers import collapse, decode, integrate_out, marginalize, pointwise, temper

from .truth import dense_joint

jax.config.update("jax_enable_x64", True)


# Compile-bound (small programs traced op by op; no long sampler runs): compiled without most
# XLA optimisations (conftest.fast_compile).
pytestmark = pytest.mark.usefixtures("fast_compile")


# ------------------------------------------------------------------ switching dynamics by brute force


def random_sld(rng, K, D, recurrent, tv_bias=False, T=5):
    A = np.stack([0.9 * np.linalg.qr(rng.normal(size=(D, D)))[0] for _ in range(K)])
    b = rng.normal(size=(T, K, D)) * 0.3 if tv_bias else rng.normal(size=(K, D)) * 0.3
    L = np.stack([np.linalg.cholesky(0.1 * np.eye(D) + 0.05 * np.diag(rng.random(D))) for _ in range(K)])
    log_init = np.log(rng.dirichlet(np.ones(K)))
    init_mean = rng.normal(size=(K, D))
    init_L = np.stack([np.eye(D)] * K)
    log_P = None if recurrent == "recurrent_only" else np.log(rng.dirichlet(np.ones(K) * 2, size=K))
    R = None if recurrent == "standard" else rng.normal(size=(K, D)) * 2
    r = None if recurrent == "standard" else rng.normal(size=K)
    return dict(log_init=log_init, A=A, b=b, scale_tril=L, init_mean=init_mean, init_scale_tril=init_L,
                log_P=log_P, R=R, r=r)


def sld_brute_force(p, x):
    """log sum_z p(z, x) by enumerating every path, written independently of the library."""
    T, D = x.shape
    K = p["A"].shape[0]
    total = []
    for z in itertools.product(range(K), repeat=T):
        s = p["log_init"][z[0]]
        s += stats.multivariate_normal(p["init_mean"][z[0]], p["init_scale_tril"][z[0]] @ p["init_scale_tril"][z[0]].T).logpdf(x[0])
        for t in range(1, T):
            if p["R"] is None:
                row = p["log_P"][z[t - 1]]
            else:
                logits = p["R"] @ x[t - 1] + p["r"]
                if p["log_P"] is not None:
                    logits = logits + p["log_P"][z[t - 1]]
                row = logits - np.logaddexp.reduce(logits)
            s += row[z[t]]
            bt = p["b"][z[t]] if p["b"].ndim == 2 else p["b"][t, z[t]]
            L = p["scale_tril"][z[t]]
            s += stats.multivariate_normal(p["A"][z[t]] @ x[t - 1] + bt, L @ L.T).logpdf(x[t])
        total.append(s)
    return np.logaddexp.reduce(total)


@pytest.mark.parametrize("recurrent", ["standard", "recurrent", "recurrent_only"])
@pytest.mark.parametrize("tv_bias", [False, True])
def test_switching_dynamics_equals_enumeration(recurrent, tv_bias):
    rng = np.random.default_rng(zlib.crc32(f"{recurrent}-{tv_bias}".encode()))
    T, K, D = 5, 3, 2
    p = random_sld(rng, K, D, recurrent, tv_bias, T)
    fn = SwitchingLinearDynamics(**{k: (None if v is None else jnp.asarray(v)) for k, v in p.items()}, num_steps=T)
    x = rng.normal(size=(T, D))
    truth = sld_brute_force(p, x)
    np.testing.assert_allclose(fn.log_prob(x), truth, atol=1e-10)
    np.testing.assert_allclose(fn.with_parallel(True).log_prob(x), truth, atol=1e-10)
    np.testing.assert_allclose(jnp.sum(fn.pointwise_log_prob(x)), truth, atol=1e-10)
    # draws are finite and have the declared shapes
    z, xs = fn.sample_with_states(jax.random.key(0), (3,))
    assert z.shape == (3, T) and xs.shape == (3, T, D)
    assert bool(jnp.all(jnp.isfinite(fn.log_prob(xs))))


def test_switching_dynamics_mask_drops_padding():
    rng = np.random.default_rng(4)
    T, K, D = 6, 2, 2
    p = {k: (None if v is None else jnp.asarray(v)) for k, v in random_sld(rng, K, D, "recurrent", T=T).items()}
    x = rng.normal(size=(2, T, D))
    mask = np.ones((2, T), bool)
    mask[1, 4:] = False  # the second trial has only 4 steps
    fn = SwitchingLinearDynamics(**p, num_steps=T, batch_shape=(2,), mask=jnp.asarray(mask))
    lp = fn.log_prob(x)
    short = SwitchingLinearDynamics(**p, num_steps=4)
    np.testing.assert_allclose(lp[1], short.log_prob(x[1, :4]), atol=1e-10)
    full = SwitchingLinearDynamics(**p, num_steps=T)
    np.testing.assert_allclose(lp[0], full.log_prob(x[0]), atol=1e-10)


# ------------------------------------------------------------------ HMM model: marginal and decode


def hmm_truth(params, y):
    """Enumerate all paths of the HMM model's y site (NaN entries dropped)."""
    T, N = y.shape
    K = params["init_probs"].shape[0]
    obs = ~np.isnan(y)
    ll = np.zeros((T, K))
    for k in range(K):
        e = stats.norm(params["means"][k], params["scales"][k]).logpdf(np.where(obs, y, 0.0))
        ll[:, k] = np.sum(np.where(obs, e, 0.0), axis=1)
    log_P = np.log(params["trans_probs"])
    lw = {}
    for z in itertools.product(range(K), repeat=T):
        lw[z] = np.log(params["init_probs"][z[0]]) + ll[0, z[0]] + sum(
            log_P[z[t - 1], z[t]] + ll[t, z[t]] for t in range(1, T)
        )
    return lw


@pytest.fixture(scope="module")
def hmm_small():
    m = HMM(num_states=3, obs_dim=2)
    data = m.simulate(jax.random.key(1), num_steps=6)
    y = np.array(data["y"])
    y[2, 1] = np.nan
    y[4, :] = np.nan
    return m, data["params"], y


def _site_log_prob(model, params, *args, **kwargs):
    tr = nh.trace(nh.substitute(model, params)).get_trace(*args, **kwargs)
    return tr["y"]["fn"].log_prob(tr["y"]["value"]), tr


def test_hmm_marginal_and_decode_equal_enumeration(hmm_small):
    m, params, y = hmm_small
    lw = hmm_truth({k: np.asarray(v) for k, v in params.items()}, y)
    paths = np.array(list(lw))
    w = np.array(list(lw.values()))
    logZ = np.logaddexp.reduce(w)
    lp, _ = _site_log_prob(m, params, y)
    np.testing.assert_allclose(lp, logZ, atol=1e-10)
    for parallel in (False, True):
        with decode(rng_key=jax.random.key(0)) as dec, marginalize(parallel=parallel):
            nh.substitute(m, params)(y)
        post = dec.posteriors["y"]
        probs = np.exp(w - logZ)
        marg = np.array([[probs[paths[:, t] == k].sum() for k in range(3)] for t in range(6)])
        np.testing.assert_allclose(post.marginals, marg, atol=1e-10)
        np.testing.assert_array_equal(post.viterbi, paths[np.argmax(w)])
        np.testing.assert_allclose(post.log_normalizer, logZ, atol=1e-10)
        assert post.sample.shape == (6,)


def test_marginalize_parallel_equals_sequential_with_gradients(hmm_small):
    m, params, y = hmm_small

    def density(p, parallel):
        with marginalize(parallel=parallel):
            return log_density(m, (y,), {}, p)[0]

    v1, g1 = jax.value_and_grad(density)(params, False)
    v2, g2 = jax.value_and_grad(density)(params, True)
    np.testing.assert_allclose(v1, v2, atol=1e-10)
    for k in g1:
        np.testing.assert_allclose(g1[k], g2[k], atol=1e-8)
        assert bool(jnp.all(jnp.isfinite(g1[k])))  # missing data does not poison gradients


def test_pointwise_and_temper(hmm_small):
    m, params, y = hmm_small
    with pointwise() as pw:
        nh.substitute(m, params)(y)
    lp, tr = _site_log_prob(m, params, y)
    assert pw.log_likelihood["y"].shape == (6,)
    np.testing.assert_allclose(jnp.sum(pw.log_likelihood["y"]), lp, atol=1e-10)
    full = log_density(m, (y,), {}, params)[0]
    prior = full - lp
    for beta in (0.0, 0.3, 1.0):
        tempered = log_density(temper(m, beta=beta), (y,), {}, params)[0]
        np.testing.assert_allclose(tempered, prior + beta * lp, atol=1e-10)


def test_temper_leaves_the_unconstraining_jacobian_alone(hmm_small):
    """In unconstrained space NumPyro adds each constrained site's log |det J| as an observed
    factor site; it belongs to the prior, so beta = 0 must give exactly the prior potential."""
    from numpyro.infer.util import potential_energy, unconstrain_fn

    m, params, y = hmm_small
    latent = {k: v for k, v in params.items() if k in nh.trace(nh.seed(m, 0)).get_trace(y)}
    u = unconstrain_fn(m, (y,), {}, latent)
    lp, _ = _site_log_prob(m, params, y)
    full = potential_energy(m, (y,), {}, u)
    for beta in (0.0, 0.5):
        got = potential_energy(temper(m, beta=beta), (y,), {}, u)
        np.testing.assert_allclose(got, full + (1 - beta) * lp, atol=1e-9)


def test_numpyro_handlers_compose(hmm_small):
    m, params, y = hmm_small
    lp, _ = _site_log_prob(m, params, y)
    full = log_density(m, (y,), {}, params)[0]
    prior = full - lp
    masked = log_density(nh.mask(m, mask=False), (y,), {}, params)[0]
    np.testing.assert_allclose(masked, 0.0, atol=1e-12)
    scaled = log_density(nh.scale(m, scale=2.0), (y,), {}, params)[0]
    np.testing.assert_allclose(scaled, 2 * full, atol=1e-9)
    # condition turns parameters into observations: same joint density
    cond = log_density(nh.condition(m, params), (y,), {}, {})[0]
    np.testing.assert_allclose(cond, full, atol=1e-10)
    np.testing.assert_allclose(prior, full - lp)
    # seed + trace: prior predictive under the handlers
    tr = nh.trace(nh.seed(m, 3)).get_trace(None, num_steps=7, num_trials=2)
    assert tr["y"]["value"].shape == (2, 7, 2)
    assert tr["y"]["intermediates"][0].shape == (2, 7)


def test_predictive_and_svi_run_on_the_hmm():
    m = HMM(num_states=2, obs_dim=1, emissions="poisson")
    prior = Predictive(m, num_samples=50)(jax.random.key(0), None, num_steps=30)
    assert prior["y"].shape == (50, 30, 1)
    assert bool(jnp.all(prior["y"] >= 0)) and bool(jnp.all(jnp.isfinite(prior["y"])))
    y = prior["y"][0]
    svi = SVI(m, AutoNormal(m), numpyro.optim.Adam(0.05), Trace_ELBO())
    res = svi.run(jax.random.key(1), 300, y, progress_bar=False)
    assert np.all(np.isfinite(res.losses))
    assert np.mean(res.losses[-50:]) < np.mean(res.losses[:50])


# ------------------------------------------------------------------ integrate_out: LDS against the dense Gaussian


@pytest.fixture(scope="module")
def lds_small():
    m = LDS(latent_dim=2, obs_dim=3)
    data = m.simulate(jax.random.key(5), num_steps=6)
    y = np.array(data["y"])
    y[1, 0] = np.nan
    y[3, :] = np.nan
    return m, data["params"], y, data


def _lds_dense(params, T):
    p = {k: np.asarray(v) for k, v in params.items()}
    D = p["dynamics"].shape[0]
    return dense_joint(T, np.zeros(D), np.eye(D), p["dynamics"], p["dynamics_bias"],
                       np.diag(p["dynamics_noise"] ** 2), p["emission_matrix"], p["emission_bias"],
                       np.diag(p["emission_noise"] ** 2))


def test_integrate_out_equals_dense_marginal(lds_small):
    m, params, y, data = lds_small
    assert data["x"].shape == (6, 2)
    T = 6
    mx, Cx, my, Cy, Cxy = _lds_dense(params, T)
    obs = ~np.isnan(y.reshape(-1))
    truth = stats.multivariate_normal(my[obs], Cy[np.ix_(obs, obs)]).logpdf(y.reshape(-1)[obs])
    lp, tr = _site_log_prob(m, params, y)
    np.testing.assert_allclose(lp, truth, atol=1e-9)
    assert tr["x"]["infer"].get("collapsed") and tr["x"]["is_observed"]
    # the path is not a latent site: inference sees only parameters
    uncollapsed = LDS(2, 3, collapse=False)
    tr2 = nh.trace(nh.substitute(nh.seed(uncollapsed, 0), params)).get_trace(y)
    assert not tr2["x"]["is_observed"]
    # decode draws the path from its exact posterior
    with decode(rng_key=jax.random.key(2)) as dec:
        nh.substitute(m, params)(y)
    post = dec.posteriors["y"]
    gain = np.linalg.solve(Cy[np.ix_(obs, obs)], Cxy[:, obs].T).T
    np.testing.assert_allclose(post.means.reshape(-1), mx + gain @ (y.reshape(-1)[obs] - my[obs]), atol=1e-9)
    assert post.sample.shape == (6, 2)
    # the parallel Kalman filter gives the same marginal
    par = LDS(2, 3, parallel=True)
    np.testing.assert_allclose(_site_log_prob(par, params, y)[0], truth, atol=1e-9)
    # pointwise terms of the collapsed site sum to the marginal
    with pointwise() as pw:
        nh.substitute(m, params)(y)
    np.testing.assert_allclose(jnp.sum(pw.log_likelihood["y"]), truth, atol=1e-9)
    # without integrate_out, the emission's pointwise terms are the per-step Gaussian densities
    with pointwise() as pw2:
        nh.substitute(uncollapsed, {**params, "x": data["x"]})(y)
    assert pw2.log_likelihood["y"].shape == (6,)


def test_integrate_out_on_a_user_program():
    """The handler works on any program written with the structured distributions."""
    from zoo.distributions import GaussMarkov, LinearGaussianEmission

    def program(y):
        a = numpyro.sample("a", dist.Uniform(-1, 1))
        prior = GaussMarkov(jnp.zeros(1), jnp.eye(1), a * jnp.eye(1), jnp.zeros(1), 0.1 * jnp.eye(1), 5)
        x = numpyro.sample("x", prior)
        numpyro.sample("y", LinearGaussianEmission(x, jnp.eye(1), jnp.zeros(1), 0.5 * jnp.eye(1)), obs=y)

    y = np.array([[0.3], [0.1], [np.nan], [-0.4], [0.2]])
    lp = log_density(integrate_out(program), (y,), {}, {"a": 0.5})[0]
    mx, Cx, my, Cy, _ = dense_joint(5, np.zeros(1), np.eye(1), 0.5 * np.eye(1), np.zeros(1), 0.1 * np.eye(1),
                                    np.eye(1), np.zeros(1), 0.5 * np.eye(1))
    obs = ~np.isnan(y.ravel())
    truth = stats.multivariate_normal(my[obs], Cy[np.ix_(obs, obs)]).logpdf(y.ravel()[obs]) + np.log(0.5)
    np.testing.assert_allclose(lp, truth, atol=1e-9)
    # using the integrated-out path directly is refused with a clear message
    def bad(y):
        prior = GaussMarkov(jnp.zeros(1), jnp.eye(1), jnp.eye(1), jnp.zeros(1), jnp.eye(1), 5)
        x = numpyro.sample("x", prior)
        numpyro.sample("y", dist.Normal(x, 1.0).to_event(2), obs=y)

    with pytest.raises(TypeError, match="integrated out.*LinearGaussianEmission"):
        log_density(integrate_out(bad), (y,), {}, {})


def _gauss_and_drift_program(y):
    """A Gauss-Markov path with linear-Gaussian emissions and an Euler-Maruyama path with drift
    weights, side by side: two conjugate pairs for the one handler."""
    from zoo.distributions import GaussMarkov, LinearGaussianEmission
    from zoo.sde_distributions import DriftWeights, EulerMaruyama

    a = numpyro.sample("a", dist.Uniform(-1, 1))
    x = numpyro.sample("x", GaussMarkov(jnp.zeros(1), jnp.eye(1), a * jnp.eye(1), jnp.zeros(1), 0.1 * jnp.eye(1), 5))
    numpyro.sample("y", LinearGaussianEmission(x, jnp.eye(1), jnp.zeros(1), 0.5 * jnp.eye(1)), obs=y)
    W = numpyro.sample("w", DriftWeights(0.5 * jnp.eye(2), 1))
    path = EulerMaruyama(lambda v: jnp.concatenate([v, v**2], -1), W, jnp.full(1, 0.3), 0.1, jnp.zeros(1),
                         jnp.ones(1), 6)
    numpyro.sample("path", path)


def test_integrate_out_handles_paths_and_drift_weights_and_decode_reads_both():
    from zoo.sde_distributions import CollapsedEulerMaruyama, WeightPosterior

    y = np.array([[0.3], [0.1], [np.nan], [-0.4], [0.2]])
    path = np.linspace(0.0, 0.5, 6)[:, None] ** 2
    lp, tr = log_density(integrate_out(_gauss_and_drift_program), (y,), {}, {"a": 0.5, "path": path})
    assert tr["x"]["infer"]["collapsed"] and tr["w"]["infer"]["collapsed"]
    assert isinstance(tr["path"]["fn"], CollapsedEulerMaruyama)
    # the sum of the two exact marginals and the uniform prior of a
    lp_drift = tr["path"]["fn"].log_prob(path)
    lp_y = tr["y"]["fn"].log_prob(y)
    np.testing.assert_allclose(lp, lp_drift + lp_y + np.log(0.5), rtol=1e-10)
    with decode(rng_key=jax.random.key(0)) as dec:
        nh.substitute(integrate_out(_gauss_and_drift_program), {"a": 0.5, "path": path})(y)
    assert set(dec.posteriors) == {"y", "path"}
    assert dec.posteriors["y"].sample.shape == (5, 1)
    assert isinstance(dec.posteriors["path"], WeightPosterior) and dec.posteriors["path"].sample.shape == (2, 1)


def test_deprecated_handler_names_warn_once_and_handle_their_own_kind():
    """collapse, collapse_drift and decode_drift are integrate_out and decode narrowed to what each
    handled before; each warns (once per process)."""
    import warnings

    from zoo.sde_handlers import collapse_drift, decode_drift

    y = np.array([[0.3], [0.1], [np.nan], [-0.4], [0.2]])
    path = np.linspace(0.0, 0.5, 6)[:, None] ** 2
    values = {"a": 0.5, "path": path}
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        tr_c = log_density(collapse(_gauss_and_drift_program), (y,), {}, {**values, "w": np.zeros((2, 1))})[1]
        collapse(_gauss_and_drift_program)
        tr_d = log_density(collapse_drift(_gauss_and_drift_program), (y,), {},
                           {**values, "x": np.zeros((5, 1))})[1]
        with decode_drift(rng_key=jax.random.key(0)) as dec:
            nh.substitute(integrate_out(_gauss_and_drift_program), values)(y)
    deprecations = [str(w.message) for w in rec if issubclass(w.category, DeprecationWarning)]
    # at most one warning per name (none if an earlier test in this process already warned)
    for name in ("collapse", "collapse_drift", "decode_drift"):
        assert sum(f".{name} is deprecated" in m for m in deprecations) <= 1
    assert tr_c["x"]["infer"].get("collapsed") and not tr_c["w"]["infer"].get("collapsed")
    assert tr_d["w"]["infer"].get("collapsed") and not tr_d["x"]["infer"].get("collapsed")
    assert set(dec.posteriors) == {"path"}
    assert issubclass(collapse, integrate_out) and issubclass(collapse_drift, integrate_out)
    assert issubclass(decode_drift, decode)


def test_deprecated_handler_names_warn_in_a_fresh_process():
    import subprocess
    import sys

    code = ("import warnings; warnings.simplefilter('error', DeprecationWarning)\n"
            "from zoo.handlers import collapse\n"
            "try:\n    collapse()\nexcept DeprecationWarning as e:\n    print('warned:', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "warned: zoo.handlers.collapse is deprecated: use zoo.handlers.integrate_out" in out.stdout, out.stderr


# ------------------------------------------------------------------ HMM emissions details


def test_hmm_emissions_poisson_and_trials():
    N, T = 3, 8
    rates = jnp.array([[1.0, 2.0, 0.5], [5.0, 0.2, 3.0]])
    fn = HMMEmissions(jnp.log(jnp.array([0.5, 0.5])), jnp.log(jnp.array([[0.9, 0.1], [0.2, 0.8]])),
                      dist.Poisson(rates).to_event(1), T, (4,))
    z, y = fn.sample_with_states(jax.random.key(0))
    assert z.shape == (4, T) and y.shape == (4, T, N)
    lp = fn.log_prob(y)
    assert lp.shape == (4,)
    single = HMMEmissions(fn.log_init, fn.log_trans, fn.emission, T)
    np.testing.assert_allclose(lp[2], single.log_prob(y[2]), rtol=1e-12)
    with pytest.raises(ValueError, match="emission"):
        HMMEmissions(fn.log_init, fn.log_trans, dist.Poisson(rates[0]).to_event(1), T)


# ------------------------------------------------------------------ bad input


def test_models_reject_bad_input():
    with pytest.raises(ValueError, match="num_states"):
        HMM(num_states=0, obs_dim=2)
    with pytest.raises(ValueError, match="emissions"):
        HMM(num_states=2, obs_dim=2, emissions="binomial")
    m = HMM(2, 3)
    with pytest.raises(ValueError, match="trailing dimension"):
        nh.seed(m, 0)(np.zeros((10, 2)))
    with pytest.raises(ValueError, match="shape"):
        nh.seed(m, 0)(np.zeros(10))
    with pytest.raises(ValueError, match="inf"):
        nh.seed(m, 0)(np.full((10, 3), np.inf))
    mp = HMM(2, 3, emissions="poisson")
    with pytest.raises(ValueError, match="non-negative"):
        nh.seed(mp, 0)(-np.ones((10, 3)))
    with pytest.raises(ValueError, match="integer"):
        nh.seed(mp, 0)(np.full((10, 3), 0.5))
    # NaN is missing data, not an error
    y = np.ones((10, 3))
    y[3] = np.nan
    nh.seed(mp, 0)(y)
    with pytest.raises(ValueError, match="mask"):
        nh.seed(m, 0)(np.zeros((10, 3)), mask=np.ones(9, bool))
    with pytest.raises(ValueError, match="num_steps"):
        nh.seed(m, 0)(None)
    with pytest.raises(ValueError, match="latent_dim"):
        LDS(latent_dim=-1, obs_dim=2)
