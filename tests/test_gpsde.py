"""GP-SDE: program, inducing and Hilbert-space drifts, and a Van der Pol limit cycle from spikes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro import handlers as nh
from numpyro.infer.util import log_density

from benchmarks.gp_models import drift_recovery, fit_map_nuts
from inference.attractors import attractors
from zoo import systems
from zoo.gpsde import GPSDE
from zoo.sde import bin_observations

jax.config.update("jax_enable_x64", True)


@pytest.mark.parametrize("approx", ["inducing", "hsgp"])
@pytest.mark.parametrize("kernel", ["rbf", "matern52"])
def test_program_shapes_and_float32(approx, kernel):
    m = GPSDE(2, 5, kernel=kernel, approx=approx, emissions="poisson", num_inducing=4, num_basis=5, dt=0.05)
    data = m.simulate(jax.random.key(0), 20, num_trials=2)
    assert data["x"].shape == (2, 20, 2) and data["y"].shape == (2, 20, 5)
    p = data["params"]
    assert p["drift_weights"].shape == (m.num_features, 2)
    assert m.drift(p, data["x"]).shape == (2, 20, 2)
    np.testing.assert_allclose(m.regimes(p, data["x"]), 1.0)
    for name in p:
        assert name in m.dims, name
    vals = {k: jnp.asarray(v, jnp.float32) for k, v in p.items() if k != "drift_weights"}
    lp, tr = log_density(m, (jnp.asarray(data["y"], jnp.float32),), {}, dict(vals, x=jnp.asarray(data["x"], jnp.float32)))
    assert np.isfinite(float(lp)) and tr["drift_weights_mean"]["value"].dtype == jnp.float32
    mean, var = m.drift_moments(dict(vals, drift_weights_mean=tr["drift_weights_mean"]["value"],
                                     drift_weights_factor=tr["drift_weights_factor"]["value"]), jnp.zeros((3, 2)))
    assert mean.shape == var.shape == (3, 2) and np.all(var >= 0)


def test_bad_input_is_a_value_error():
    with pytest.raises(ValueError, match="kernel"):
        GPSDE(2, 3, kernel="periodic")
    with pytest.raises(ValueError, match="approx"):
        GPSDE(2, 3, approx="svgp")
    with pytest.raises(ValueError, match="num_inducing"):
        GPSDE(2, 3, num_inducing=1)
    with pytest.raises(ValueError, match="link"):
        GPSDE(2, 3, link="probit")
    m = GPSDE(2, 3, emissions="poisson")
    with pytest.raises(ValueError, match="integer"):
        nh.seed(m, 0)(np.full((10, 3), 0.5))
    with pytest.raises(ValueError, match="inputs"):
        nh.seed(m, 0)(np.ones((10, 3)), inputs=np.ones((10, 1)))


# ------------------------------------------------------------------ Van der Pol from Poisson spikes


@pytest.fixture(scope="module")
def vdp():
    d = systems.van_der_pol(jax.random.key(1), num_trials=4, duration=6.0)
    binsz = 5
    y = bin_observations(np.asarray(d["y"]), binsz)
    xt = np.asarray(d["x"])[:, ::binsz][:, : y.shape[1]]
    fits = {}
    for approx in ("inducing", "hsgp"):
        m = GPSDE(2, y.shape[-1], kernel="rbf", approx=approx, emissions="poisson", dt=d["dt"] * binsz,
                  bound=4.0, num_inducing=7, num_basis=8)
        s, info = fit_map_nuts(m, y, map_steps=1000, num_warmup=150, num_samples=150, max_tree_depth=6,
                               init_scale=1.5)
        fits[approx] = (m, s, info)
    return fits, xt, d


def _posterior_mean_flow(m, s, num_draws=40):
    seq = set(m.sequence_sites)
    idx = np.linspace(0, s["x"].shape[0] - 1, num_draws).round().astype(int)
    P = {k: jnp.asarray(v[idx]) for k, v in s.items() if k not in seq}

    @jax.jit
    def f(x):
        return jnp.mean(jax.vmap(lambda p: m.drift(p, x))(P), 0)

    return f


def _closed_orbit(f, x_start, dt=0.01, steps=4000):
    def step(x, _):
        x = x + dt * f(x)
        return x, x

    _, xs = jax.lax.scan(step, jnp.asarray(x_start), None, length=steps)
    return np.asarray(xs)


def test_van_der_pol_limit_cycle(vdp):
    fits, xt, d = vdp
    for approx, (m, s, info) in fits.items():
        res = attractors(m, s, num_draws=40)
        one_unstable = float(np.mean((res["num_fixed_points"].values == 1)
                                     & (res["kind"].values[:, 0] == 1)))
        f = _posterior_mean_flow(m, s)
        # the fixed point of the posterior-mean flow and a trajectory leaving it
        xs_path = s["x"].mean(0).reshape(-1, 2)
        centre = xs_path.mean(0)
        inner = _closed_orbit(f, centre + 0.05 * xs_path.std(0))
        outer = _closed_orbit(f, centre + 1.6 * (xs_path.max(0) - centre))
        r_in = np.linalg.norm(inner[-1500:] - centre, axis=1)
        r_out = np.linalg.norm(outer[-1500:] - centre, axis=1)
        print(f"\nVan der Pol ({approx}): P(one unstable fixed point) = {one_unstable:.2f}; late orbit radius "
              f"from inside {r_in.min():.2f}-{r_in.max():.2f}, from outside {r_out.min():.2f}-{r_out.max():.2f}; "
              f"NUTS {info['nuts_seconds']:.0f} s")
        assert one_unstable >= 0.8
        # both trajectories settle on the same closed orbit, away from the fixed point
        assert r_in.min() > 0.2 * r_in.max()
        np.testing.assert_allclose([r_in.min(), r_in.max()], [r_out.min(), r_out.max()], rtol=0.15)


def test_inducing_and_hsgp_agree_and_recover_the_drift(vdp):
    fits, xt, d = vdp
    recs = {a: drift_recovery(m, s, xt, d["drift"], grid_size=12, num_draws=40) for a, (m, s, _) in fits.items()}
    fi, fh = recs["inducing"]["drift_mean"], recs["hsgp"]["drift_mean"]
    rel = float(((fi - fh) ** 2).sum(-1).mean() / (fi**2).sum(-1).mean())
    print("\nVan der Pol drift: " + ", ".join(f"{a}: relative MSE {r['mse_relative']:.3f}, coverage {r['coverage']:.2f}"
                                             for a, r in recs.items()) + f"; inducing vs HSGP relative difference {rel:.3f}")
    assert rel < 0.15
    for r in recs.values():
        assert r["mse_relative"] < 0.3


@pytest.mark.slow
def test_through_inference_fit_and_attractors_on_the_datatree():
    """inference.fit returns the collapsed weights' moments as posterior variables with named
    dims; attractors reads the DataTree directly (slow: about 5 minutes on a loaded 2-core CPU)."""
    import inference

    d = systems.double_well(jax.random.key(0), num_trials=2, duration=2.0)
    y = bin_observations(np.asarray(d["y"]), 5)
    m = GPSDE(2, y.shape[-1], emissions="poisson", dt=0.05, num_inducing=5)
    post = inference.fit(m, y, method="nuts", num_chains=1, num_warmup=30, num_samples=30, progress_bar=False)
    assert post["posterior"]["drift_weights_factor"].dims == ("chain", "draw", "latent", "feature", "feature_in")
    res = attractors(m, post, num_draws=10, grid_size=8)
    assert res.sizes["draw"] == 10
    assert 0.0 <= float(res["p_line_attractor"]) <= 1.0
