"""Prior and posterior predictive groups, ArviZ's predictive checks on them, and the rootogram.

Independent truths: the LDS's analytic mean E[y_t | theta] = C m_t + d (m_1 = 0, m_t = A m_{t-1}
+ b); the SLDS's conditional mean C x_t + d given the substituted path; numpy's bincount.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import xarray as xr  # noqa: E402
from numpyro import handlers  # noqa: E402

import zoo  # noqa: E402
from inference.convert import to_datatree  # noqa: E402
from inference.predictive import (  # noqa: E402
    add_predictive,
    loo_pit,
    plot_rootogram,
    posterior_predictive,
    prior_predictive,
    rootogram,
)

# Every test here is compile-bound (programs traced op by op, a few hundred draws of tiny
# models): compiled without most XLA optimisations (conftest.fast_compile). Isolated, cold cache:
# 757 s at load 12.5 against 248 s at load 8.4 on 2 cores, the same 517 compilations.
pytestmark = pytest.mark.usefixtures("fast_compile")


def _stack(params_per_chain, S):
    """Samples (C, S, ...) with every draw of chain c equal to params_per_chain[c]."""
    names = params_per_chain[0].keys()
    return {k: np.stack([np.broadcast_to(np.asarray(p[k]), (S,) + np.shape(p[k])) for p in params_per_chain])
            for k in names}


def test_lds_predictive_groups_have_named_dims_and_the_analytic_mean():
    m = zoo.LDS(2, 3)
    T, S = 8, 400
    sims = [m.simulate(jax.random.key(i), num_steps=T) for i in (1, 2)]
    y = np.asarray(sims[0]["y"])
    params = [{k: np.asarray(v) for k, v in s["params"].items()} for s in sims]
    post = to_datatree(m, _stack(params, S), y, log_likelihood=False)
    dt = add_predictive(post, m, num_prior_samples=50, seed=3)

    pp = dt["posterior_predictive"].to_dataset()["y"]
    obs = dt["observed_data"].to_dataset()["y"]
    assert pp.dims == ("chain", "draw", "time", "neuron") and pp.shape == (2, S, T, 3)
    for dim in ("time", "neuron"):
        np.testing.assert_array_equal(pp[dim].values, obs[dim].values)
    prior = dt["prior"].to_dataset()
    assert prior["dynamics"].dims == ("chain", "draw", "latent", "latent_in")
    assert prior["x"].dims == ("chain", "draw", "time", "latent") and prior.sizes["draw"] == 50
    assert dt["prior_predictive"].to_dataset()["y"].dims == ("chain", "draw", "time", "neuron")
    assert set(dt.children) >= {"posterior", "observed_data", "prior", "prior_predictive",
                                "posterior_predictive"}

    # the path is not a posterior variable of the collapsed LDS, so y_rep ~ p(y | theta)
    for c, p in enumerate(params):
        A, b = p["dynamics"], p["dynamics_bias"]
        mean_x = np.zeros((T, 2))
        for t in range(1, T):
            mean_x[t] = A @ mean_x[t - 1] + b
        expected = mean_x @ p["emission_matrix"].T + p["emission_bias"]
        draws = pp.values[c]
        se = draws.std(0) / np.sqrt(S)
        z = np.abs(draws.mean(0) - expected) / se
        assert z.max() < 5.0, z.max()


def test_slds_posterior_predictive_is_conditional_on_the_draws_path():
    m = zoo.SLDS(2, 2, 3)
    T, S = 10, 300
    sim = m.simulate(jax.random.key(0), num_steps=T)
    y = np.asarray(sim["y"])
    draw = {k: np.asarray(v) for k, v in sim["params"].items()
            if k not in ("emission_matrix", "emission_bias")}
    draw["x"] = np.asarray(sim["x"])
    post = to_datatree(m, _stack([draw], S), y, log_likelihood=False)
    pp = posterior_predictive(m, post, seed=1)["y"]
    # C and d of the program in the fit's data frame (deterministic sites)
    tr = handlers.trace(handlers.substitute(handlers.seed(m, jax.random.key(0)), data=draw)).get_trace(y)
    C, d = np.asarray(tr["emission_matrix"]["value"]), np.asarray(tr["emission_bias"]["value"])
    expected = draw["x"] @ C.T + d
    sd = np.asarray(draw["emission_noise"])
    z = np.abs(pp.values[0].mean(0) - expected) / (sd / np.sqrt(S))
    assert z.max() < 5.0, z.max()


def test_prior_predictive_without_data_takes_sizes():
    m = zoo.HMM(2, 3, emissions="poisson")
    dt = prior_predictive(m, num_steps=7, num_trials=2, num_samples=5)
    y = dt["prior_predictive"].to_dataset()["y"]
    assert y.dims == ("chain", "draw", "trial", "time", "neuron") and y.shape == (1, 5, 2, 7, 3)
    assert dt["prior"].to_dataset()["rates"].dims == ("chain", "draw", "state", "neuron")
    with pytest.raises(ValueError, match="num_steps"):
        prior_predictive(m)


def test_rootogram_counts_equal_numpy_bincount():
    rng = np.random.default_rng(0)
    y = rng.poisson(2.0, size=(30, 4)).astype(float)
    y[3, 1] = np.nan
    rep = rng.poisson(2.5, size=(2, 6, 30, 4))
    dims = ("time", "neuron")
    dt = xr.DataTree.from_dict({
        "observed_data": xr.Dataset({"y": (dims, y)}),
        "posterior_predictive": xr.Dataset({"y": (("chain", "draw") + dims, rep)}),
    })
    rg = rootogram(dt, max_count=40)
    seen = ~np.isnan(y)
    np.testing.assert_array_equal(rg["observed"].values, np.bincount(y[seen].astype(int), minlength=41))
    for c in range(2):
        for s in range(6):
            np.testing.assert_array_equal(rg["predicted"].values[c, s],
                                          np.bincount(rep[c, s][seen], minlength=41))
    np.testing.assert_allclose(rg["expected"].values, rg["predicted"].values.mean((0, 1)))
    assert (rg["lower"] <= rg["expected"]).all() and (rg["expected"] <= rg["upper"]).all()
    assert rootogram(dt)["count"].values.max() >= np.nanmax(y)
    plot_rootogram(rg)
    with pytest.raises(ValueError, match="integer counts"):
        rootogram(dt.assign(observed_data=xr.DataTree(xr.Dataset({"y": (dims, y + 0.5)}))))


def test_arviz_predictive_checks_run_on_a_poisson_hmm_tree():
    # prior draws stand in for posterior draws (no sampler to compile here; notebook 07 runs the
    # same checks on real NUTS fits in the suite's quick mode)
    import arviz_plots as azp

    m = zoo.HMM(2, 3, emissions="poisson")
    y = np.asarray(m.simulate(jax.random.key(4), num_steps=40)["y"], dtype=float)
    prior = prior_predictive(m, y, num_samples=120, seed=5)["prior"].to_dataset()
    draws = {k: prior[k].values.reshape((2, 60) + prior[k].shape[2:]) for k in prior.data_vars}
    post = to_datatree(m, draws, y)
    dt = add_predictive(post, m, num_prior_samples=20)
    assert dt["posterior_predictive"].to_dataset()["y"].shape == (2, 60, 40, 3)
    assert dt["observed_data"].to_dataset()["y"].dtype.kind == "i"  # counts stored as integers
    azp.plot_ppc_dist(dt)
    azp.plot_ppc_rootogram(dt, coords={"neuron": 0})  # ArviZ tabulates one 1-D variable
    pit, k = loo_pit(dt)
    vals = pit["y"].values
    assert vals.shape == (40, 3) and np.all((vals >= 0) & (vals <= 1))
    assert k.dims == ("time",)
    rg = rootogram(dt)
    assert int(rg["observed"].sum()) == y.size
