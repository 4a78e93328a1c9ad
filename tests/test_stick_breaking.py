"""Stick-breaking recurrent transitions and their Polya-gamma augmentation, against independent
truth: explicit products for the probabilities, a dense Gaussian for the path integrated out
given (z, omega), the Polya-gamma Laplace transform for the augmentation, and a grid over the
path and a parameter for the blocked sampler's posterior."""

from __future__ import annotations

import itertools

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro import handlers
from numpyro.infer.util import log_density

import inference
from zoo import RSLDS
from zoo.distributions import stick_breaking_log_probs
from zoo.frame import default_frame
from zoo.handlers import condition_states, integrate_out
from zoo.polya_gamma import sample_pg1


def test_stick_breaking_probabilities_are_the_products_of_their_decisions():
    nu = np.array([[0.3, -1.2, 2.0], [-4.0, 0.0, 7.5]])
    p = np.exp(np.asarray(stick_breaking_log_probs(jnp.asarray(nu))))
    sig = 1.0 / (1.0 + np.exp(-nu))
    for row, s in zip(p, sig, strict=True):
        expected = [s[0], (1 - s[0]) * s[1], (1 - s[0]) * (1 - s[1]) * s[2], np.prod(1 - s)]
        np.testing.assert_allclose(row, expected, rtol=1e-6)
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-6)
    # far in the tails the log-probabilities stay finite
    assert np.isfinite(np.asarray(stick_breaking_log_probs(jnp.array([200.0, -200.0])))).all()


def test_stick_breaking_needs_recurrent_only_transitions():
    with pytest.raises(ValueError, match="recurrent_only"):
        RSLDS(num_states=3, latent_dim=2, obs_dim=4, transitions="recurrent", transition_link="stick_breaking")
    with pytest.raises(ValueError, match="transition_link"):
        RSLDS(num_states=3, latent_dim=2, obs_dim=4, transition_link="probit")


K, D, N, T = 3, 2, 4, 6


def _tiny(dtype):
    m = RSLDS(num_states=K, latent_dim=D, obs_dim=N, transition_link="stick_breaking")
    kw = {"frame": default_frame(N, D)}
    tr = handlers.trace(handlers.seed(m, 1)).get_trace(num_steps=T, **kw)
    params = {k: jnp.asarray(v["value"], dtype) for k, v in tr.items()
              if v["type"] == "sample" and k not in ("x", "y")}
    assert params["recurrence_weights"].shape == (K - 1, D)
    y = jnp.asarray(tr["y"]["value"], dtype)
    z = jnp.array([0, 1, 2, 2, 1, 0], jnp.int32)
    omega = jax.random.uniform(jax.random.key(0), (T - 1, K - 1), dtype, 0.1, 2.0)
    return m, kw, params, y, z, omega


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_path_integrated_out_given_states_and_omega_is_the_dense_gaussian_integral(dtype):
    with jax.enable_x64(dtype == jnp.float64):
        m, kw, params, y, z, omega = _tiny(dtype)
        cond = condition_states(m, states={"x": z}, augmentation={"x": omega})
        collapsed, _ = log_density(integrate_out(cond), (y,), kw, params)

        # the same joint with the path as a latent: quadratic in x, integrated by its Hessian
        def joint(xflat):
            return log_density(cond, (y,), kw, {**params, "x": xflat.reshape(T, D)})[0]

        with jax.enable_x64(True):
            p64 = {k: v.astype(jnp.float64) for k, v in params.items()}

            def joint64(xflat):
                return log_density(cond, (y.astype(jnp.float64),), kw, {**p64, "x": xflat.reshape(T, D)})[0]

            x0 = jnp.zeros(T * D)
            H, g = jax.hessian(joint64)(x0), jax.grad(joint64)(x0)
            xs = jnp.linalg.solve(-H, g)
            dense = joint64(xs) + 0.5 * T * D * np.log(2 * np.pi) - 0.5 * jnp.linalg.slogdet(-H)[1]
        assert collapsed.dtype == dtype
        tol = 1e-4 if dtype == jnp.float32 else 1e-10
        np.testing.assert_allclose(float(collapsed), float(dense), rtol=tol)
        assert np.isfinite(float(joint(jnp.zeros(T * D))))


def test_augmentation_integrates_to_the_stick_breaking_likelihood():
    """E over omega ~ PG(1, 0) of the augmented transition factors is p(z | x) (Polson, Scott and
    Windle 2013), checked by Monte Carlo per transition, which also checks the sampler."""
    with jax.enable_x64(True):
        m, kw, params, y, z, omega = _tiny(jnp.float64)
        x = jax.random.normal(jax.random.key(3), (T, D)) * 0.7
        values = {**params, "x": x}
        seeded = handlers.substitute(handlers.seed(m, 0), data=values)
        path = handlers.trace(seeded).get_trace(y, **kw)["x"]["fn"]
        exact = np.asarray(path.log_transitions(x))[np.arange(T - 1), 0, np.asarray(z[1:])]  # (T-1,)

        draws = 40000
        w = sample_pg1(jax.random.key(5), jnp.zeros((draws, T - 1, K - 1)))

        def transition_factors(om):
            aug = path.given_states(z, augmentation=om)
            J, h = aug.information
            quad = jnp.einsum("ti,ti->t", x, h - 0.5 * jnp.einsum("tij,tj->ti", J, x))[:-1]
            return quad + aug.constant  # the log factor of each transition (T-1,)

        f = jnp.exp(jax.vmap(transition_factors)(w))  # (draws, T-1)
        mean, se = np.asarray(f.mean(0)), np.asarray(f.std(0)) / np.sqrt(draws)
        assert (np.abs(mean - np.exp(exact)) < 4 * se + 1e-12).all(), (mean, np.exp(exact), se)


def test_single_site_conditionals_given_omega_are_the_integrated_densities():
    """z_t | z_-t, omega, theta, y with the path integrated out (the Gerlach-Carter-Kohn sweep
    with the transitions' factors) against the Kalman-integrated density of each candidate state
    path, site by site along the sweep."""
    from zoo.collapsed_states import candidate_transition_information, single_move_states

    with jax.enable_x64(True):
        m, kw, params, y, z, omega = _tiny(jnp.float64)
        T_ = y.shape[0]

        def log_p(states):
            c = integrate_out(condition_states(m, states={"x": states}, augmentation={"x": omega}))
            return float(log_density(c, (y,), kw, params)[0])

        seeded = handlers.substitute(handlers.seed(m, 0), data={**params, "x": jnp.zeros((T_, D))})
        tr = handlers.trace(seeded).get_trace(y, **kw)
        dyn = tr["x"]["fn"]
        C, d = tr["emission_matrix"]["value"], tr["emission_bias"]["value"]
        new, logits = single_move_states(
            jax.random.key(0), z, y, dyn.log_init, jnp.zeros((K, K)), dyn.A, dyn.b, dyn.scale_tril,
            dyn.init_mean, dyn.init_scale_tril, C, d, params["emission_noise"] ** 2,
            transition_info=candidate_transition_information(dyn, omega))
        current = np.asarray(z).copy()
        for t in range(T_):
            direct = []
            for k in range(K):
                current[t] = k
                direct.append(log_p(jnp.asarray(current)))
            direct = np.array(direct) - np.logaddexp.reduce(direct)
            np.testing.assert_allclose(np.asarray(logits[t]), direct, atol=1e-8)
            current[t] = int(new[t])  # the sweep goes on from its own draw
        assert np.ptp(np.exp(np.asarray(logits)), axis=1).min() < 0.99  # some sites are uncertain


# ---------------------------------------------------------------------------------------------
# The blocked sampler with the path integrated out given (z, omega): a tiny stick-breaking
# rSLDS (K = 2, D = N = 1, T = 3) with every parameter fixed but the recurrence bias, against a
# grid over the three path values and the bias, all 2^3 state paths enumerated.

T_SB = 3
FIXED_SB = {
    "init_probs": np.array([0.6, 0.4]),
    "recurrence_weights": np.array([[2.0]]),
    "dynamics": np.array([[[0.9]], [[0.5]]]),
    "dynamics_bias": np.array([[0.4], [-0.4]]),
    "dynamics_noise": np.array([[0.4], [0.4]]),
    "emission_noise": np.array([0.3]),
}


@pytest.fixture(scope="module")
def tiny_sticks():
    from scipy.stats import norm

    m = RSLDS(num_states=2, latent_dim=1, obs_dim=1, transition_link="stick_breaking")
    y = np.array([[0.8], [0.8], [0.3]])
    model = handlers.condition(m, data=FIXED_SB)
    tr = handlers.trace(handlers.seed(model, jax.random.key(0))).get_trace(y)
    c = float(tr["emission_matrix"]["value"][0, 0])
    d = float(tr["emission_bias"]["value"][0])
    g = np.linspace(-4.0, 4.0, 61)
    rg = np.linspace(-12.0, 12.0, 97)
    x = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1)[..., None, :]  # (G, G, G, 1, 3)
    r = rg[None, None, None, :]
    A, b = FIXED_SB["dynamics"][:, 0, 0], FIXED_SB["dynamics_bias"][:, 0]
    q, w = FIXED_SB["dynamics_noise"][:, 0], FIXED_SB["recurrence_weights"][0, 0]
    base = (sum(norm.logpdf(y[t, 0], c * x[..., t] + d, FIXED_SB["emission_noise"][0]) for t in range(T_SB))
            + norm.logpdf(r, 0.0, m.recurrence_scale) + norm.logpdf(x[..., 0], 0.0, m.init_scale))
    paths = list(itertools.product([0, 1], repeat=T_SB))
    log_z, sums = [], []
    for z in paths:
        lp = np.log(FIXED_SB["init_probs"][z[0]]) + base
        for t in range(1, T_SB):
            nu = w * x[..., t - 1] + r
            # stick 0 claims state 0 with probability sigmoid(nu)
            lp = lp + (-np.logaddexp(0.0, -nu) if z[t] == 0 else -np.logaddexp(0.0, nu))
            lp = lp + norm.logpdf(x[..., t], A[z[t]] * x[..., t - 1] + b[z[t]], q[z[t]])
        top = lp.max()
        wts = np.exp(lp - top)
        total = wts.sum()
        log_z.append(top + np.log(total))
        sums.append([(wts * x[..., t]).sum() / total for t in range(T_SB)]
                    + [(wts * r).sum() / total])
    p_path = np.exp(np.array(log_z) - max(log_z))
    p_path /= p_path.sum()
    means = p_path @ np.array(sums)  # E[x_1..x_3], E[r]
    p_z1 = p_path @ np.array(paths)
    post = inference.fit(model, y, num_chains=4, num_warmup=300, num_samples=1000, seed=4,
                         progress_bar=False, log_likelihood=False)
    return post, means, p_z1


def test_augmented_blocked_matches_brute_force(tiny_sticks):
    post, means, p_z1 = tiny_sticks
    assert post.attrs["method"] == "blocked" and "Polya-gamma" in post.attrs["sampler"]
    p = post["posterior"]
    x = p["x"].values[..., 0]  # (C, S, T)
    z = p["z"].values
    checks = [("x", x[..., t], means[t]) for t in range(T_SB)]
    checks += [("r", p["recurrence_bias"].values[..., 0], means[T_SB])]
    checks += [("z", (z[..., t] == 1).astype(float), p_z1[t]) for t in range(T_SB)]
    for name, v, truth in checks:
        mcse = float(az.mcse(v, method="mean"))
        assert abs(v.mean() - truth) < 4 * mcse, (name, v.mean(), truth, mcse)
    assert 0.05 < p_z1.min() and p_z1.max() < 0.95  # the states are uncertain: a real test


def test_the_link_is_recorded_with_the_model():
    import xarray as xr

    from inference.registry import model_from_attrs, record_model

    m = RSLDS(num_states=3, latent_dim=2, obs_dim=4, transition_link="stick_breaking")
    post = xr.DataTree()
    record_model(post, m)
    assert model_from_attrs(post.attrs) == m
    assert m.dims["recurrence_weights"] == ["stick", "latent"] and m.dim_sizes()["stick"] == 2
    assert m.blocked_sampler().augmented
    assert not RSLDS(num_states=3, latent_dim=2, obs_dim=4, transition_link="stick_breaking",
                     emissions="poisson").blocked_sampler().augmented


def test_the_recurrence_update_leaves_the_logistic_posterior_invariant():
    """The independence Metropolis-Hastings step of one stick's logistic regression, run as a
    chain, against the posterior on a grid (2 coefficients, 40 transitions)."""
    from inference.blocked_augmented import stick_regressions_step

    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        x = rng.normal(size=40)
        nxt = (rng.uniform(size=40) < 1 / (1 + np.exp(-(3.0 * x - 0.5)))).astype(np.int32)
        nxt = np.where(nxt == 1, 0, 1)  # stick 0 claims state 0; the rest go on to state 1
        phi = jnp.asarray(np.stack([x, np.ones(40)], -1))
        prior = jnp.array([1 / 9.0, 1 / 9.0])
        present = jnp.ones(40, bool)

        @jax.jit
        def chain(key):
            def step(b, k):
                b, acc = stick_regressions_step(k, b, phi, jnp.asarray(nxt), present, prior)
                return b, (b[0], acc[0])
            return jax.lax.scan(step, jnp.zeros((1, 2)), jax.random.split(key, 4000))[1]

        draws, accepted = jax.vmap(chain)(jax.random.split(jax.random.key(1), 4))
        g = np.linspace(-4, 12, 321)
        w1, w0 = np.meshgrid(g, np.linspace(-6, 5, 221), indexing="ij")
        eta = w1[..., None] * x + w0[..., None]
        a = (nxt == 0)
        logp = (np.sum(a * eta - np.logaddexp(0, eta), -1) - 0.5 * (w1**2 + w0**2) / 9.0)
        p = np.exp(logp - logp.max())
        p /= p.sum()
        truth = [np.sum(p * w1), np.sum(p * w0)]
        draws = np.asarray(draws)[:, 100:]
        for j in range(2):
            v = draws[..., j]
            mcse = float(az.mcse(v, method="mean"))
            assert abs(v.mean() - truth[j]) < 4 * mcse, (j, v.mean(), truth[j], mcse)
        assert float(np.mean(accepted)) > 0.5  # the Laplace proposal fits: most steps move
