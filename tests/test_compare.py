"""One-step-ahead predictive densities and PSIS-LFO against independent truths.

- exact one-step terms (LDS, HMM) against the dense joint Gaussian and enumeration of all paths;
- the SLDS / rSLDS particle filter against enumeration of all K^T state paths, each a dense
  joint Gaussian;
- PSIS-LFO (approximate, and with a refit at every step) on a one-parameter LDS against the
  leave-future-out elpd of the dense joint Gaussian with the parameter integrated out (it is a
  linear-Gaussian parameter, so p(y_t | y_{1:t-1}) is a Gaussian conditional).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from numpyro import handlers
from scipy.special import logsumexp
from scipy.stats import multivariate_normal, poisson

import inference
import zoo
from inference.compare import (
    compare,
    one_step_kind,
    one_step_log_likelihood,
    particle_filter_log_likelihood,
    psis_lfo,
)
from inference.convert import to_datatree

# ---------------------------------------------------------------- a one-parameter LDS (D = N = 1)

A, Q, R, S_D = 0.8, 0.5, 0.3, 2.0  # d ~ Normal(0, 2) is the LDS's emission_bias prior
FIXED = {"dynamics": np.array([[A]]), "dynamics_bias": np.zeros(1), "dynamics_noise": np.array([Q]),
         "emission_matrix": np.ones((1, 1)), "emission_noise": np.array([R])}
T, L = 14, 10


def _series():
    rng = np.random.default_rng(0)
    x = np.zeros(T)
    x[0] = rng.normal()
    for t in range(1, T):
        x[t] = A * x[t - 1] + Q * rng.normal()
    return (x + 1.5 + R * rng.normal(size=T))[:, None]


def _cov(extra=0.0):
    var = np.zeros(T)
    var[0] = 1.0
    for t in range(1, T):
        var[t] = A**2 * var[t - 1] + Q**2
    cov = np.array([[A ** abs(t - s) * var[min(s, t)] for t in range(T)] for s in range(T)])
    return cov + R**2 * np.eye(T) + extra


def _conditional_lpd(cov, mean, y, t):
    w = np.linalg.solve(cov[:t, :t], cov[t, :t]) if t else np.zeros(0)
    mu = mean + w @ (y[:t] - mean)
    v = cov[t, t] - w @ cov[t, :t]
    return -0.5 * np.log(2 * np.pi * v) - 0.5 * (y[t] - mu) ** 2 / v


@pytest.fixture(scope="module")
def lds_fit():
    m = handlers.condition(zoo.LDS(1, 1), data=FIXED)
    y = _series()
    post = inference.fit(m, y, "nuts", num_chains=1, num_warmup=200, num_samples=600,
                         progress_bar=False)
    return m, y, post


def test_one_step_terms_of_the_lds_are_the_dense_gaussian_conditionals(lds_fit):
    m, y, post = lds_fit
    ll = one_step_log_likelihood(m, post)
    assert ll.dims == ("chain", "draw", "time") and ll.attrs["one_step"] == "exact"
    cov = _cov()
    d = post["posterior"]["emission_bias"].values[0, :4, 0]
    for i, di in enumerate(d):
        want = [_conditional_lpd(cov, di, y[:, 0], t) for t in range(T)]
        np.testing.assert_allclose(ll.values[0, i], want, atol=2e-4)


def test_psis_lfo_matches_brute_force_leave_future_out(lds_fit):
    m, y, post = lds_fit
    cov = _cov(S_D**2)  # d integrated out: a Gaussian with covariance + S_D^2 everywhere
    truth = sum(_conditional_lpd(cov, 0.0, y[:, 0], t) for t in range(L, T))
    approx = psis_lfo(m, post, min_observations=L)
    exact = psis_lfo(m, post, min_observations=L, method="exact")
    assert approx.one_step == "exact" and approx.n_data_points == T - L
    assert approx.num_fits == 1 + approx.n_refits and exact.num_fits == T - L
    assert abs(exact.elpd - truth) < 0.1, (exact.elpd, truth)
    assert abs(approx.elpd - truth) < 0.1, (approx.elpd, truth)
    per_step = [_conditional_lpd(cov, 0.0, y[:, 0], t) for t in range(L, T)]
    # Monte Carlo error of each refit's log-mean-exp (600 NUTS draws; largest at an outlying step)
    np.testing.assert_allclose(exact.elpd_i.values, per_step, atol=0.08)

    table = compare({"approx": approx, "exact": exact})
    assert list(table.columns[:4]) == ["elpd", "se", "elpd_diff", "dse"]
    assert table["elpd_diff"].iloc[0] == 0.0 and table["elpd_diff"].iloc[1] <= 0.0
    best, other = (approx, exact) if table.index[0] == "approx" else (exact, approx)
    diff = other.elpd_i.values - best.elpd_i.values
    np.testing.assert_allclose(table["dse"].iloc[1], np.sqrt(len(diff) * np.var(diff)), rtol=1e-6)
    assert set(table["one_step"]) == {"exact"}


# ---------------------------------------------------------------- HMM: enumeration of paths


def test_one_step_terms_of_the_hmm_equal_enumeration():
    m = zoo.HMM(2, 2, emissions="poisson")
    pi, P = np.array([0.3, 0.7]), np.array([[0.9, 0.1], [0.2, 0.8]])
    rates = np.array([[1.0, 4.0], [5.0, 0.5]])
    y = np.array([[0, 3], [4, 1], [6, 0], [1, 2], [2, 5]], dtype=float)
    samples = {"init_probs": pi[None, None].repeat(2, 1), "trans_probs": P[None, None].repeat(2, 1),
               "rates": rates[None, None].repeat(2, 1)}
    post = to_datatree(m, samples, y, log_likelihood=False)
    ll = one_step_log_likelihood(m, post)
    joint = []
    for t in range(1, len(y) + 1):
        terms = [np.log(pi[z[0]]) + sum(np.log(P[z[s - 1], z[s]]) for s in range(1, t))
                 + sum(poisson.logpmf(y[s], rates[z[s]]).sum() for s in range(t))
                 for z in itertools.product(range(2), repeat=t)]
        joint.append(logsumexp(terms))
    np.testing.assert_allclose(ll.values[0, 0], np.diff(np.concatenate([[0.0], joint])), atol=1e-4)


# ---------------------------------------------------------------- SLDS / rSLDS particle filter

PI = np.array([0.6, 0.4])
TRANS = np.array([[0.8, 0.2], [0.3, 0.7]])
DYN_A, DYN_B, DYN_Q = np.array([0.9, -0.5]), np.array([0.5, -1.0]), np.array([0.4, 0.7])
EM_C, EM_D, EM_R = 1.3, 0.2, 0.5


def _slds_exact(y, pi, P, init_scale):
    """log p(y_t | y_{1:t-1}) by enumerating every state path, each a dense joint Gaussian."""
    T_ = len(y)
    joint = []
    for t in range(1, T_ + 1):
        terms = []
        for z in itertools.product(range(2), repeat=t):
            lz = np.log(pi[z[0]]) + sum(np.log(P[z[s - 1], z[s]]) for s in range(1, t))
            mu, var = np.zeros(t), np.zeros(t)
            var[0] = init_scale**2
            for s in range(1, t):
                mu[s] = DYN_A[z[s]] * mu[s - 1] + DYN_B[z[s]]
                var[s] = DYN_A[z[s]] ** 2 * var[s - 1] + DYN_Q[z[s]] ** 2
            cov = np.zeros((t, t))
            for s1 in range(t):
                for s2 in range(s1, t):
                    cov[s1, s2] = cov[s2, s1] = np.prod([DYN_A[z[u]] for u in range(s1 + 1, s2 + 1)]) * var[s1]
            terms.append(lz + multivariate_normal(EM_C * mu + EM_D, EM_C**2 * cov + EM_R**2 * np.eye(t))
                         .logpdf(y[:t, 0]))
        joint.append(logsumexp(terms))
    return np.diff(np.concatenate([[0.0], joint]))


def _slds_samples(extra, draws=4):
    base = {"dynamics": DYN_A[:, None, None], "dynamics_bias": DYN_B[:, None],
            "dynamics_noise": DYN_Q[:, None], "emission_matrix": np.array([[EM_C]]),
            "emission_bias": np.array([EM_D]), "emission_noise": np.array([EM_R]), **extra}
    return {k: np.broadcast_to(np.asarray(v), (1, draws) + np.shape(v)) for k, v in base.items()}


def test_particle_filter_matches_enumeration_for_a_tiny_slds():
    m = zoo.SLDS(2, 1, 1)
    y = np.random.default_rng(1).normal(size=(6, 1)) * 1.5
    want = _slds_exact(y, PI, TRANS, m.init_scale)
    samples = _slds_samples({"init_probs": PI, "trans_probs": TRANS})
    pf = particle_filter_log_likelihood(m, samples, y, num_particles=50_000)
    assert pf.shape == (1, 4, 6)
    np.testing.assert_allclose(pf.mean((0, 1)), want, atol=0.025)
    assert one_step_kind(m, y) == "particle_filter"


def test_particle_filter_takes_the_rslds_transitions():
    # recurrent-only transitions with R = 0 and r = log p: every row of the transition matrix is p
    m = zoo.RSLDS(2, 1, 1, transitions="recurrent_only")
    p = np.array([0.35, 0.65])
    y = np.random.default_rng(2).normal(size=(5, 1))
    want = _slds_exact(y, PI, np.stack([p, p]), m.init_scale)
    samples = _slds_samples({"init_probs": PI, "recurrence_weights": np.zeros((2, 1)),
                             "recurrence_bias": np.log(p)})
    pf = particle_filter_log_likelihood(m, samples, y, num_particles=50_000, seed=3)
    np.testing.assert_allclose(pf.mean((0, 1)), want, atol=0.025)


def test_one_step_kind_refuses_the_gp_models():
    m = zoo.GPSLDS(2, 2, 3)
    y = np.zeros((5, 3))
    with pytest.raises(NotImplementedError, match="GPSLDS"):
        one_step_kind(m, y)
