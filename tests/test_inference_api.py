"""fit's argument checking, DataTree conversion (dims, trials, masks, fallbacks), chain starts,
label alignment and loud diagnostics."""

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro import handlers

import inference
from inference.align import align_labels
from inference.starts import initial_positions
from zoo import HMM, LDS

jax.config.update("jax_enable_x64", True)


@pytest.fixture(scope="module")
def lds():
    model = LDS(latent_dim=1, obs_dim=1)
    y = np.asarray(model.simulate(jax.random.key(0), num_steps=12)["y"])
    return model, y


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"method": "gibbs"}, "method"),
        ({"num_chains": 0}, "num_chains"),
        ({"num_samples": 0}, "num_samples"),
        ({"chain_method": "threads"}, "chain_method"),
        ({"init": "kmeans"}, "init"),
        ({"init": {"not_a_site": 1.0}}, "not_a_site"),
        ({"max_tree_depth": 5, "method": "smc"}, "unknown option"),
        ({"step_sise": 0.1}, "unknown option"),
        ({"dense_mass": "dynamics"}, "dense_mass"),
        ({"dense_mass": []}, "dense_mass"),
        ({"dense_mass": [("dynamics", 3)]}, "dense_mass"),
        ({"dense_mass": [("dynamics", "not_a_site")]}, "not_a_site"),
        ({"precision": "half"}, "precision"),
    ],
)
def test_bad_options_raise_clear_errors(lds, kwargs, match):
    model, y = lds
    with pytest.raises(ValueError, match=match):
        inference.fit(model, y, **{"progress_bar": False, "num_warmup": 5, "num_samples": 5, **kwargs})


def test_structured_dense_mass_adapts_one_block(lds):
    """A dense block over two sites: NumPyro adapts a 2x2 inverse mass block for them."""
    model, y = lds
    post = inference.fit(model, y, dense_mass=[("dynamics", "dynamics_bias")], num_chains=1, num_warmup=40, num_samples=10,
                         seed=0, progress_bar=False)
    assert np.isfinite(post["posterior"]["dynamics"].values).all()
    from inference.numpyro_backend import cached_samplers
    block_key = ("dynamics", "dynamics_bias")
    mcmc = next(m for m in reversed(cached_samplers()) if m.last_state is not None
                and block_key in m.last_state.adapt_state.inverse_mass_matrix)
    inv_mass = mcmc.last_state.adapt_state.inverse_mass_matrix
    block = np.asarray(inv_mass[("dynamics", "dynamics_bias")])
    assert block.shape[-2:] == (2, 2) and np.all(block[..., 0, 1] != 0.0)  # dense: correlation adapted
    rest = [v for k, v in inv_mass.items() if k != ("dynamics", "dynamics_bias")]
    assert rest and all(np.ndim(v) == block.ndim - 1 for v in rest)  # the other sites: diagonal


def test_data_model_mismatch_raises(lds):
    model, y = lds
    with pytest.raises(ValueError, match="y"):
        inference.fit(model, np.zeros((12, 3)), progress_bar=False)  # obs_dim=1 model, 3 neurons
    with pytest.raises(ValueError, match="y"):
        inference.fit(model, np.zeros(12), progress_bar=False)
    with pytest.raises(ValueError, match="init value for site 'dynamics'"):
        inference.fit(model, y, init={"dynamics": np.zeros(3)}, progress_bar=False)


def test_chain_starts(lds):
    model, y = lds
    latent = {"dynamics": (1, 1), "dynamics_bias": (1,), "dynamics_noise": (1,), "emission_matrix": (1, 1),
              "emission_bias": (1,), "emission_noise": (1,)}
    key = jax.random.key(0)
    z, text = initial_positions(model, y, {}, "prior", key, 3, latent)
    assert z["dynamics"].shape == (3, 1, 1) and "prior draw" in text
    assert len(np.unique(np.asarray(z["dynamics"]))) == 3
    z, text = initial_positions(model, y, {}, {"dynamics_noise": np.array([0.3])}, key, 3, latent)
    # given values are unconstrained (log for a positive site) and jittered slightly per chain
    np.testing.assert_allclose(np.asarray(z["dynamics_noise"]), np.log(0.3), atol=0.05)
    assert np.ptp(np.asarray(z["dynamics_noise"])) > 0 and "jittered" in text
    z, text = initial_positions(model, y, {}, "auto", key, 2, latent)  # LDS has no initial_params
    assert "median" in text
    with pytest.raises(ValueError, match="initial_params"):
        initial_positions(model, y, {}, "pca", key, 2, latent)


def fake_hmm_posterior(rng, C=4, S=1000, swap=(1, 3)):
    """Draws of a 2-state HMM's parameters, with the labels of some chains swapped."""
    means = np.stack([rng.normal(-1, 0.05, (C, S)), rng.normal(1, 0.05, (C, S))], -1)[..., None]
    stay = np.stack([rng.normal(0.9, 0.01, (C, S)), rng.normal(0.7, 0.01, (C, S))], -1)
    P = np.stack([np.stack([stay[..., 0], 1 - stay[..., 0]], -1), np.stack([1 - stay[..., 1], stay[..., 1]], -1)], -2)
    scales = np.stack([np.full((C, S), 0.5), np.full((C, S), 2.0)], -1)[..., None] * np.exp(rng.normal(0, 0.02, (C, S, 2, 1)))
    init = np.broadcast_to([0.3, 0.7], (C, S, 2)).copy()
    out = {"means": means, "trans_probs": P, "scales": scales, "init_probs": init}
    for c in swap:
        out = {k: v.copy() for k, v in out.items()}
        for k in ("means", "scales", "init_probs"):
            out[k][c] = out[k][c][:, ::-1]
        out["trans_probs"][c] = out["trans_probs"][c][:, ::-1, ::-1]
    return out


def test_label_alignment_before_rhat():
    rng = np.random.default_rng(0)
    model = HMM(num_states=2, obs_dim=1)
    y = np.asarray(model.simulate(jax.random.key(0), num_steps=10)["y"])
    post = inference.to_datatree(model, fake_hmm_posterior(rng), y, log_likelihood=False)
    import arviz_stats as azs

    assert float(azs.rhat(post.posterior.to_dataset())["means"].max()) > 1.5  # label switching
    aligned, perms = align_labels(post.posterior.to_dataset())
    assert (perms[[1, 3]] == [1, 0]).all() and (perms[[0, 2]] == [0, 1]).all()
    np.testing.assert_allclose(aligned["trans_probs"].isel(chain=1).mean("draw"),
                               aligned["trans_probs"].isel(chain=0).mean("draw"), atol=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = inference.diagnose(post)
    assert d.table["rhat_max"].max() < 1.01


def test_diagnose_is_loud_about_nan_and_divergences(lds):
    model, y = lds
    rng = np.random.default_rng(1)
    C, S = 4, 100
    draws = {"dynamics": rng.normal(0.8, 0.1, (C, S, 1, 1)), "dynamics_bias": rng.normal(0, 0.1, (C, S, 1)),
             "dynamics_noise": np.abs(rng.normal(0.5, 0.1, (C, S, 1))), "emission_matrix": rng.normal(1, 0.1, (C, S, 1, 1)),
             "emission_bias": rng.normal(0, 0.1, (C, S, 1)), "emission_noise": np.abs(rng.normal(0.5, 0.1, (C, S, 1)))}
    stats = {"diverging": np.zeros((C, S), bool), "energy": rng.normal(size=(C, S))}
    good = inference.to_datatree(model, draws, y, sample_stats=stats, log_likelihood=False)
    d = inference.diagnose(good, emit=False)
    assert d.verdict in ("ok", "warning") and d.divergences == 0
    bad = {k: v.copy() for k, v in draws.items()}
    bad["dynamics"][2, 10] = np.nan
    div = {**stats, "diverging": rng.random((C, S)) < 0.05}
    post = inference.to_datatree(model, bad, y, sample_stats=div, log_likelihood=False)
    with pytest.warns(RuntimeWarning, match="NaN"):
        d = inference.diagnose(post)
    assert d.verdict == "fail"
    assert any("NaN" in w for w in d.warnings) and any("divergent" in w for w in d.warnings)
    shifted = {k: v.copy() for k, v in draws.items()}
    shifted["dynamics"][0] += 1.0  # one chain elsewhere
    d = inference.diagnose(inference.to_datatree(model, shifted, y, log_likelihood=False), emit=False)
    assert d.verdict == "fail" and any("R-hat" in w for w in d.warnings)


def test_fit_warns_about_nonfinite_draws():
    """A draw with NaN (here a deterministic site that is NaN for half the posterior) is flagged
    by fit itself, with counts per chain in the attributes, not only later by diagnose."""
    def model(y=None):
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        numpyro.deterministic("sqrt_mu", jnp.sqrt(mu))  # NaN whenever mu < 0
        numpyro.sample("y", dist.Normal(mu, 1.0).expand([3, 1]).to_event(2), obs=y)

    y = np.zeros((3, 1))
    with pytest.warns(RuntimeWarning, match="NaN/inf"):
        post = inference.fit(model, y, num_chains=1, num_warmup=30, num_samples=30, seed=0,
                             progress_bar=False, log_likelihood=False, init="prior")
    n_nan = int(np.isnan(post["posterior"]["sqrt_mu"].values).sum())
    assert n_nan > 0 and post.attrs["warning_nonfinite_draws_per_chain"] == str([n_nan])


def test_gp_models_warn_when_fitted_in_float32():
    """The GP models' collapsed Gaussians need float64 (measured: qualitatively wrong attractor
    posteriors in float32); fit says so instead of returning them silently."""
    import warnings

    from inference.fit import warn_if_float32
    from zoo.gpsde import GPSDE
    from zoo.gpslds import GPSLDS

    for model in (GPSLDS(2, 2, 5, emissions="poisson", dt=0.01), GPSDE(2, 5, dt=0.01)):
        with jax.enable_x64(False), pytest.warns(RuntimeWarning, match="float32"):
            warn_if_float32(model)
        with jax.enable_x64(True), warnings.catch_warnings():
            warnings.simplefilter("error")
            warn_if_float32(model)
    with jax.enable_x64(False), warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_float32(HMM(num_states=2, obs_dim=3))  # the switching models run in float32


def test_fit_runs_models_that_need_float64_in_float64_without_a_global_switch(lds):
    """precision='auto': double precision for a model that recommends it (the GP models), for
    that call only; JAX's default (float32 here) for the others; 'float32' can still be forced,
    and then warns. An LDS that declares float64_recommended stands in for the GP models (their
    SVI predictive fails, see the closing note of the session that added this)."""
    import warnings

    class LDS64(LDS):
        float64_recommended = True

    m, y = lds
    m64 = LDS64(latent_dim=1, obs_dim=1)
    fit = functools.partial(inference.fit, y=y, method="svi", num_samples=4, num_steps=3, seed=0,
                            progress_bar=False, log_likelihood=False)
    with jax.enable_x64(False), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="SVI did not converge")
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*float32.*")
            post = fit(m64)
        assert post.attrs["precision"] == "float64" and not jax.config.jax_enable_x64
        assert post["posterior"]["dynamics"].dtype == np.float64
        with pytest.warns(RuntimeWarning, match="float32"):
            post32 = fit(m64, precision="float32")
        assert post32.attrs["precision"] == "float32" and post32["posterior"]["dynamics"].dtype == np.float32
        assert fit(m).attrs["precision"] == "float32"


def test_datatree_dims_trials_mask_and_loglik():
    model = HMM(num_states=2, obs_dim=3)
    sim = model.simulate(jax.random.key(0), num_steps=8, num_trials=2)
    y = np.asarray(sim["y"])
    mask = np.ones((2, 8), bool)
    mask[1, 6:] = False
    draws = {k: np.broadcast_to(np.asarray(v), (2, 3) + np.shape(v)) for k, v in sim["params"].items()}
    post = inference.to_datatree(model, draws, y, model_kwargs={"mask": mask})
    assert post.posterior["means"].dims == ("chain", "draw", "state", "neuron")
    assert post.posterior["trans_probs"].dims == ("chain", "draw", "state", "state_to")
    assert post.observed_data["y"].dims == ("trial", "time", "neuron")
    assert post.log_likelihood["y"].dims == ("chain", "draw", "trial", "time")
    assert post.constant_data["mask"].dims == ("trial", "time")
    ll = post.log_likelihood["y"].values
    assert np.all(ll[..., 1, 6:] == 0) and np.isfinite(ll).all()
    # the pointwise terms sum to the model's log-likelihood of the data
    from numpyro.infer.util import log_density

    params = {k: np.asarray(v) for k, v in sim["params"].items()}
    _, tr = log_density(model, (y,), {"mask": mask}, params)
    np.testing.assert_allclose(ll[0, 0].sum(), tr["y"]["fn"].log_prob(tr["y"]["value"]).sum(), rtol=1e-10)


def test_plain_program_gets_fallback_dims_with_a_warning():
    def program(y):
        w = numpyro.sample("w", dist.Normal(0, 1).expand([2]).to_event(1))
        s = numpyro.sample("s", dist.HalfNormal(1.0))
        numpyro.sample("y", dist.Normal(w.sum() * 0.0, s).expand(y.shape).to_event(2), obs=y)

    y = np.random.default_rng(0).normal(size=(6, 2))
    draws = {"w": np.zeros((1, 3, 2)), "s": np.ones((1, 3))}
    with pytest.warns(UserWarning, match="w \\(2,\\)"):
        post = inference.to_datatree(program, draws, y, log_likelihood=False)
    assert post.posterior["w"].dims == ("chain", "draw", "w_dim_0")
    assert post.posterior["s"].dims == ("chain", "draw")


def test_conditioned_model_keeps_names_and_records_fixed_values(lds):
    model, y = lds
    cond = handlers.condition(model, data={"emission_matrix": np.ones((1, 1))})
    draws = {"dynamics": np.full((1, 2, 1, 1), 0.5)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no dims warning: the protocol is found through the handler
        post = inference.to_datatree(cond, draws, y, log_likelihood=False)
    assert post.constant_data["emission_matrix"].dims == ("neuron", "latent")


def test_lazy_exports():
    assert callable(inference.fit) and callable(inference.diagnose) and callable(inference.to_datatree)
    with pytest.raises(AttributeError):
        inference.no_such_thing  # noqa: B018


def test_abstract_program_trace_classifies_like_a_concrete_run():
    """inspect_program traces abstractly (no eager compilation of each operation); its sites,
    shapes and conditioned values equal those of a concrete run, and a program that needs
    concrete values (Python control flow on data) falls back to one."""
    from inference import program
    from zoo import SLDS

    model = SLDS(2, 2, 3, transitions="standard")
    y = np.random.default_rng(1).normal(size=(12, 3))
    kwargs = model.prepare(y, {})
    assert program.abstract_trace(model, y, kwargs) is not None
    fast = program.inspect_program(model, y, kwargs)
    concrete = handlers.trace(handlers.seed(model, 0)).get_trace(y, **kwargs)
    assert fast.latent == {k: tuple(np.shape(s["value"])) for k, s in concrete.items()
                           if s["type"] == "sample" and not s["is_observed"] and not s["infer"].get("collapsed")}
    assert set(fast.deterministic) == {k for k, s in concrete.items() if s["type"] == "deterministic"}

    def branching(y):
        s = numpyro.sample("s", dist.HalfNormal(1.0))
        scale = s * 2.0 if float(np.nanmax(y)) > 0 and float(s) > -1 else s  # concrete value needed
        numpyro.sample("y", dist.Normal(0.0, scale).expand(y.shape).to_event(2), obs=y)

    assert program.abstract_trace(branching, y, {}) is None
    assert program.inspect_program(branching, y, {}).latent == {"s": ()}
