"""The blocked sampler (inference.blocked) against brute-force truth.

A tiny SLDS (K = 2, D = N = 1, T = 6) with every parameter fixed but the two dynamics
coefficients has a posterior that can be computed exactly: a 2-D grid over (a_1, a_2), all
2^6 state paths enumerated, the path integrated out by a scalar Kalman filter written here
in NumPy. The composed sweep's posterior means of a_k and of P(z_t = 1) must match it within
4 Monte Carlo standard errors.
"""

from __future__ import annotations

import itertools

import arviz as az
import jax
import numpy as np
import pytest
from numpyro import handlers

import inference
from inference.blocked_warmup import warmup_schedule
from zoo import SLDS

T = 6
FIXED = {
    "init_probs": np.array([0.7, 0.3]),
    "trans_probs": np.array([[0.8, 0.2], [0.3, 0.7]]),
    "dynamics_bias": np.array([[0.6], [-0.6]]),
    "dynamics_noise": np.array([[0.3], [0.3]]),
    "emission_noise": np.array([0.25]),
}
A_TRUE = np.array([0.9, 0.7])


def _kalman_loglik(y, z, a, b, q, c, d, r, s0):
    """log p(y | z, a) for every grid point of a (..., 2), scalar state and observation."""
    shape = a.shape[:-1]
    m, P = np.zeros(shape), np.full(shape, s0**2)
    ll = np.zeros(shape)
    for t in range(len(y)):
        if t > 0:
            k = z[t]
            m, P = a[..., k] * m + b[k], a[..., k] ** 2 * P + q[k] ** 2
        S = c**2 * P + r**2
        e = y[t] - (c * m + d)
        ll += -0.5 * (np.log(2 * np.pi * S) + e**2 / S)
        K = P * c / S
        m, P = m + K * e, (1 - K * c) * P
    return ll


@pytest.fixture(scope="module")
def truth():
    """The tiny model (conditioned on FIXED), its data, and the brute-force posterior means of
    a_k and of P(z_t = 1)."""
    m = SLDS(num_states=2, latent_dim=1, obs_dim=1)
    data = m.simulate(jax.random.key(2), num_steps=T, params={**FIXED, "dynamics": A_TRUE[:, None, None]})
    y = np.asarray(data["y"])
    model = handlers.condition(m, data=FIXED)
    # the emission frame is a fixed function of y: read C and d from the program
    tr = handlers.trace(handlers.seed(model, jax.random.key(0))).get_trace(y)
    c = float(tr["emission_matrix"]["value"][0, 0])
    d = float(tr["emission_bias"]["value"][0])
    grid1 = np.linspace(0.85 - 7 * 0.085, 0.85 + 7 * 0.085, 241)
    a = np.stack(np.meshgrid(grid1, grid1, indexing="ij"), -1)
    log_prior = (-0.5 * ((a - 0.85) / 0.085) ** 2).sum(-1)
    P0, P = FIXED["init_probs"], FIXED["trans_probs"]
    joint = []
    paths = list(itertools.product([0, 1], repeat=T))
    for z in paths:
        lz = np.log(P0[z[0]]) + sum(np.log(P[z[t - 1], z[t]]) for t in range(1, T))
        joint.append(log_prior + lz + _kalman_loglik(
            y[:, 0], z, a, FIXED["dynamics_bias"][:, 0], FIXED["dynamics_noise"][:, 0], c, d,
            FIXED["emission_noise"][0], m.init_scale))
    joint = np.stack(joint)  # (paths, grid, grid)
    w = np.exp(joint - joint.max())
    w /= w.sum()
    mean_a = np.array([(w.sum(0) * a[..., k]).sum() for k in range(2)])
    z_arr = np.array(paths)  # (paths, T)
    p_z1 = (w.sum((1, 2))[:, None] * z_arr).sum(0)
    return model, y, mean_a, p_z1


@pytest.fixture(scope="module")
def tiny(truth):
    model, y, mean_a, p_z1 = truth
    post = inference.fit(model, y, num_chains=4, num_warmup=300, num_samples=1500, seed=3,
                         progress_bar=False, log_likelihood=False)
    return post, mean_a, p_z1


def _within_4_mcse(A, z, mean_a, p_z1):
    """Posterior means of a_k (A: (C, S, K)) and P(z_t = 1) (z: (C, S, T)) within 4 MCSE."""
    for name, draws, want in [("a", A, mean_a), ("z", (z == 1).astype(float), p_z1)]:
        for i in range(draws.shape[-1]):
            x = draws[..., i]
            if x.std() == 0:
                assert x.mean() == pytest.approx(want[i], abs=1e-3), (name, i)
                continue
            mcse = float(az.mcse(x, method="mean"))
            assert abs(x.mean() - want[i]) < 4 * mcse, (name, i, x.mean(), want[i], mcse)


def test_blocked_matches_brute_force(tiny):
    post, mean_a, p_z1 = tiny
    assert post.attrs["method"] == "blocked"
    A = post["posterior"]["dynamics"].values[..., 0, 0]  # (C, S, K)
    z = post["posterior"]["z"].values  # (C, S, T)
    _within_4_mcse(A, z, mean_a, p_z1)
    assert not post["sample_stats"]["diverging"].values.any()


def test_numpyro_mcmc_kernel_matches_brute_force(truth):
    """The same sweep through numpyro.infer.MCMC (inference.blocked_kernel.BlockedKernel)."""
    from numpyro.infer import MCMC

    from inference.blocked_kernel import BlockedKernel

    model, y, mean_a, p_z1 = truth
    kernel = BlockedKernel(model)
    mcmc = MCMC(kernel, num_warmup=300, num_samples=2000, progress_bar=False)
    mcmc.run(jax.random.key(5), y)
    draws = mcmc.get_samples(group_by_chain=True)
    assert draws["z"].dtype == np.int32 and draws["x"].shape == (1, 2000, T, 1)
    _within_4_mcse(np.asarray(draws["dynamics"])[..., 0, 0], np.asarray(draws["z"]), mean_a, p_z1)

    # the BlackJAX-shaped algorithm with the kernel's adapted step size and mass
    from inference.blocked_kernel import blocked_algorithm

    last = mcmc.last_state
    alg = blocked_algorithm(kernel.blocks, last.adapt.step_size, last.adapt.inverse_mass)
    state = alg.init(last.sweep.hmc.position, last.sweep.states, last.sweep.path)

    def body(st, k):
        st, _ = alg.step(k, st)
        rec = kernel.blocks.record(st.hmc.position, st.states, st.path)
        return st, (rec["dynamics"][..., 0, 0], st.states)

    _, (A, z) = jax.jit(lambda k: jax.lax.scan(body, state, jax.random.split(k, 2000)))(jax.random.key(6))
    _within_4_mcse(np.asarray(A)[None], np.asarray(z)[None], mean_a, p_z1)


def test_chunks_of_one_size_where_a_divisor_allows():
    from inference.blocked import chunk_lengths, chunk_size

    assert [chunk_size(n, 25) for n in (500, 30, 40, 60, 7, 101, 0)] == [25, 15, 20, 20, 7, 25, 1]
    assert chunk_lengths(101, chunk_size(101, 25)) == [25, 25, 25, 25, 1]  # a prime: one short chunk


def test_step_size_after_warmup_is_the_average_unless_the_average_just_restarted():
    from blackjax.adaptation.step_size import dual_averaging_adaptation

    from inference.blocked_warmup import final_step_size

    da_init, da_update, da_final = dual_averaging_adaptation(0.8)
    fresh = da_init(0.2)  # a window's end restarted the averaging on the last warmup sweep
    assert np.isclose(float(final_step_size(fresh)), 0.2)
    da = fresh
    for acc in (0.9, 0.5, 0.95, 0.7):
        da = da_update(da, acc)
    assert np.isclose(float(final_step_size(da)), float(da_final(da)))
    # a 60-sweep warmup in chunks of 10 ends its only slow window on the last sweep
    assert warmup_schedule(60, curvature=True, align=10)[-1, 1] == 1


def test_warmup_schedule_windows():
    s = warmup_schedule(500)
    assert s[:75, 0].sum() == 0 and s[-50:, 0].sum() == 0  # fast windows at both ends
    assert s[75:450, 0].all() and s[:, 1].sum() >= 3 and s[449, 1] == 1
    assert not warmup_schedule(10).any()
    # the curvature mass is also set once early in the first fast window, nothing else changes
    c = warmup_schedule(500, curvature=True)
    assert c[9, 1] == 1 and c[9, 0] == 0 and (np.delete(c, 9, 0) == np.delete(s, 9, 0)).all()
    # aligned to blocks of 20: each window ends with its block, the slow windows are unchanged
    a = warmup_schedule(500, curvature=True, align=20)
    assert (a[:, 0] == s[:, 0]).all()
    assert list(np.flatnonzero(a[:, 1])) == [19, 99, 159, 259, 459]  # 99 already ends a block


# ---------------------------------------------------------------------------------------------
# The whitened path (recurrent transitions): (z, x) | y of a tiny rSLDS with every parameter
# fixed, against a grid over the three path values and all 2^3 state paths.

T_R = 3
FIXED_R = {
    "init_probs": np.array([0.6, 0.4]),
    "recurrence_weights": np.array([[2.0], [-2.0]]),
    "recurrence_bias": np.array([0.0, 0.3]),
    "dynamics": np.array([[[0.9]], [[0.5]]]),
    "dynamics_bias": np.array([[0.4], [-0.4]]),
    "dynamics_noise": np.array([[0.4], [0.4]]),
    "emission_noise": np.array([0.3]),
}


@pytest.fixture(scope="module")
def tiny_recurrent():
    from scipy.special import log_softmax
    from scipy.stats import norm

    from zoo import RSLDS

    m = RSLDS(num_states=2, latent_dim=1, obs_dim=1, transitions="recurrent_only")
    y = np.array([[0.8], [0.1], [-0.6]])
    model = handlers.condition(m, data=FIXED_R)
    tr = handlers.trace(handlers.seed(model, jax.random.key(0))).get_trace(y)
    c = float(tr["emission_matrix"]["value"][0, 0])
    d = float(tr["emission_bias"]["value"][0])
    g = np.linspace(-4.0, 4.0, 121)
    x = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1)  # (G, G, G, 3)
    A, b = FIXED_R["dynamics"][:, 0, 0], FIXED_R["dynamics_bias"][:, 0]
    q, R, r = FIXED_R["dynamics_noise"][:, 0], FIXED_R["recurrence_weights"][:, 0], FIXED_R["recurrence_bias"]
    emis = sum(norm.logpdf(y[t, 0], c * x[..., t] + d, FIXED_R["emission_noise"][0]) for t in range(T_R))
    logs, paths = [], list(itertools.product([0, 1], repeat=T_R))
    for z in paths:
        lp = np.log(FIXED_R["init_probs"][z[0]]) + norm.logpdf(x[..., 0], 0.0, m.init_scale) + emis
        for t in range(1, T_R):
            logits = log_softmax(R[None, :] * x[..., t - 1, None] + r, axis=-1)
            lp = lp + logits[..., z[t]] + norm.logpdf(x[..., t], A[z[t]] * x[..., t - 1] + b[z[t]], q[z[t]])
        logs.append(lp)
    logs = np.stack(logs)
    w = np.exp(logs - logs.max())
    w /= w.sum()
    mean_x = np.array([(w.sum(0) * x[..., t]).sum() for t in range(T_R)])
    p_z1 = (w.sum((1, 2, 3))[:, None] * np.array(paths)).sum(0)
    post = inference.fit(model, y, num_chains=4, num_warmup=300, num_samples=1000, seed=4,
                         progress_bar=False, log_likelihood=False)
    return post, mean_x, p_z1


def test_whitened_blocked_matches_brute_force(tiny_recurrent):
    post, mean_x, p_z1 = tiny_recurrent
    assert post.attrs["method"] == "blocked" and "whitened" in post.attrs["sampler"]
    x = post["posterior"]["x"].values[..., 0]  # (C, S, T)
    z = post["posterior"]["z"].values
    for name, draws, truth in [("x", x, mean_x), ("z", (z == 1).astype(float), p_z1)]:
        for t in range(T_R):
            v = draws[..., t]
            mcse = float(az.mcse(v, method="mean"))
            assert abs(v.mean() - truth[t]) < 4 * mcse, (name, t, v.mean(), truth[t], mcse)
    assert 0.05 < p_z1.min() and p_z1.max() < 0.95  # the states are uncertain: a real test


def test_curvature_mass_is_the_pooled_inverse_precision():
    """Gaussian targets with precisions P_c per chain: the dense mass is (mean_c P_c)^-1, the
    diagonal one 1 / diag(mean_c P_c), in the directions where the pooled curvature is positive;
    a non-concave direction keeps the previous mass's variance, a nearly flat one grows at most
    ``growth`` times over it."""
    from inference.blocked_warmup import curvature_mass

    rng = np.random.default_rng(0)
    B = rng.normal(size=(3, 5, 5))
    P = np.einsum("cij,ckj->cik", B, B) + np.eye(5)
    P[:, 3:, :] = P[:, :, 3:] = 0.0
    P[:, 3, 3] = -1.0  # a direction of negative curvature
    P[:, 4, 4] = 1e-6  # a nearly flat one

    def logdensity(f, Pc):
        return -0.5 * f @ Pc @ f

    pos = jax.numpy.asarray(rng.normal(size=(3, 5)))
    Pbar = P.mean(0)
    Pj = jax.numpy.asarray(P)
    previous = np.diag([2.0, 2.0, 2.0, 0.3, 0.7])
    dense = np.asarray(curvature_mass(logdensity, pos, Pj, dense=True,
                                      previous=jax.numpy.asarray(previous), growth=10.0))
    want = np.zeros((5, 5))
    want[:3, :3] = np.linalg.inv(Pbar[:3, :3])  # variances <= 1 < 10 x 2: not capped
    want[3, 3] = 0.3
    want[4, 4] = 7.0
    np.testing.assert_allclose(dense, want, rtol=1e-4, atol=1e-4)
    diag = np.asarray(curvature_mass(logdensity, pos, Pj, dense=False,
                                     previous=jax.numpy.asarray(np.diagonal(previous)), growth=10.0))
    np.testing.assert_allclose(diag, np.r_[1.0 / np.diagonal(Pbar)[:3], 0.3, 7.0], rtol=1e-5)
    # without a previous mass the fallback is the identity
    diag = np.asarray(curvature_mass(logdensity, pos, Pj, dense=False))
    np.testing.assert_allclose(diag, np.r_[1.0 / np.diagonal(Pbar)[:3], 1.0, 10.0], rtol=1e-5)
