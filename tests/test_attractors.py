"""Attractor analysis on dynamics whose fixed points are known in closed form."""

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import pytest
import xarray as xr

from inference.attractors import attractors, plot_attractors
from zoo.gpslds import GPSLDS
from zoo.protocol import Model

matplotlib.use("Agg")
jax.config.update("jax_enable_x64", True)


# Compile-bound (small programs traced op by op; no long sampler runs): compiled without most
# XLA optimisations (conftest.fast_compile).
pytestmark = pytest.mark.usefixtures("fast_compile")


class _Toy(Model):
    """Dynamics given in closed form: the parts of the model protocol that attractor analysis
    reads (the toys are not NumPyro programs)."""

    sequence_sites = ("x", "y")

    def __call__(self, y=None, **kwargs):
        raise NotImplementedError("a toy dynamics, not a program")

    @property
    def dims(self):
        return {}

    def dim_sizes(self):
        return {"latent": self.latent_dim}


@dataclass(frozen=True)
class TwoWells(_Toy):
    """f(x) = R (k (z1 - z1^3 / 4), -lam z2) with z = R^T x: stable nodes at +-2 R e1, saddle at 0."""

    latent_dim: int = 2
    continuous_time = True

    def drift(self, params, x):
        th = params["angle"]
        R = jnp.array([[jnp.cos(th), -jnp.sin(th)], [jnp.sin(th), jnp.cos(th)]])
        z = x @ R
        fz = jnp.stack([params["k"] * (z[..., 0] - z[..., 0] ** 3 / 4), -params["lam"] * z[..., 1]], -1)
        return fz @ R.T

    def regimes(self, params, x):
        return jnp.ones(x.shape[:-1] + (1,))


@dataclass(frozen=True)
class Linear(_Toy):
    """f(x) = A x + b with A = V diag(l1, l2) V^{-1}."""

    latent_dim: int = 2
    continuous_time = True

    def drift(self, params, x):
        V = jnp.array([[1.0, -0.3], [0.5, 1.0]])
        A = V @ jnp.diag(jnp.stack([params["l1"], params["l2"]])) @ jnp.linalg.inv(V)
        return x @ A.T + params["b"]

    def regimes(self, params, x):
        return jnp.ones(x.shape[:-1] + (1,))


@dataclass(frozen=True)
class ToyRSLDS(_Toy):
    """Discrete-time, two regimes split by the sign of x1 (rSLDS protocol)."""

    latent_dim: int = 2
    num_states: int = 2
    dt: float = 0.1
    continuous_time = False

    def dim_sizes(self):
        return {"latent": self.latent_dim, "state": self.num_states}

    def step(self, params, x, z):
        return x @ params["dynamics"][z].T + params["dynamics_bias"][z]

    def regimes(self, params, x):
        logits = jnp.stack([10 * x[..., 0], -10 * x[..., 0]], -1)
        return jax.nn.softmax(logits, -1)


def test_two_point_attractors_found_with_right_stability():
    S = 12
    rng = np.random.default_rng(0)
    draws = {"k": 2 + 0.1 * rng.normal(size=S), "lam": 4 + 0.1 * rng.normal(size=S),
             "angle": np.full(S, np.pi / 6)}
    res = attractors(TwoWells(), draws, bounds=[[-3, 3], [-3, 3]], grid_size=12, num_draws=None)
    assert float(res["p_line_attractor"]) == 0.0
    np.testing.assert_allclose(res["p_num_stable"].values, [0, 0, 1])
    assert (res["num_fixed_points"].values == 3).all()
    assert (res["num_unconverged"].values == 0).all()
    for s in range(S):
        ok = res["valid"].values[s]
        pts, kind = res["fixed_points"].values[s][ok], res["kind"].values[s][ok]
        v1 = np.array([np.cos(np.pi / 6), np.sin(np.pi / 6)])
        stable = pts[kind == 0]
        np.testing.assert_allclose(np.sort(stable @ v1), [-2, 2], atol=1e-6)
        saddle = pts[kind == 2]
        np.testing.assert_allclose(saddle, [[0, 0]], atol=1e-6)
        # rates at the stable nodes: -2k and -lam
        re = np.sort(res["eigenvalues_real"].values[s][ok][kind == 0], -1)
        np.testing.assert_allclose(re[:, 0], -max(2 * draws["k"][s], draws["lam"][s]), rtol=1e-6)
    # the stable-cell map puts its mass at the two nodes; the slow map is a probability
    cell = res["p_stable_in_cell"]
    assert cell.sum() == pytest.approx(2.0)
    assert 0 <= float(res["p_slow"].min()) and float(res["p_slow"].max()) <= 1


def test_valley_between_two_point_attractors_is_not_a_line_attractor():
    """Between two point attractors the flow along the connecting valley is slow and one Jacobian
    eigenvalue crosses zero at its inflection points (here lam / k = 6 < 2^3, so no fixed point
    scores as a line attractor). Grid cells there are local minima of |v|; scored as they are,
    they flagged every draw (the previous criterion gave P(line) = 1.0 on exactly these draws);
    refined by Newton they flow into the fixed points."""
    S = 4
    rng = np.random.default_rng(3)
    draws = {"k": 1 + 0.05 * rng.normal(size=S), "lam": 6 + 0.1 * rng.normal(size=S),
             "angle": np.full(S, np.pi / 6)}
    res = attractors(TwoWells(), draws, bounds=[[-4, 4], [-4, 4]], grid_size=25, num_draws=None)
    assert float(res["p_line_attractor"]) == 0.0
    assert not res["line_attractor_source"].values.any()
    np.testing.assert_allclose(res["p_num_stable"].values, [0, 0, 1])


def test_line_attractor_detected_even_when_the_exact_fixed_point_is_far():
    S = 20
    rng = np.random.default_rng(1)
    l1 = 0.01 * rng.normal(size=S)  # slowest mode near zero, either sign
    draws = {"l1": l1, "l2": np.full(S, -4.0), "b": np.tile([0.05, 0.0], (S, 1))}
    res = attractors(Linear(), draws, bounds=[[-3, 3], [-3, 3]], grid_size=10, num_draws=None, eps=0.1)
    assert float(res["p_line_attractor"]) == 1.0
    # control: both modes fast -> no line attractor
    draws2 = {"l1": np.full(S, -3.0), "l2": np.full(S, -4.0), "b": np.zeros((S, 2))}
    res2 = attractors(Linear(), draws2, bounds=[[-3, 3], [-3, 3]], grid_size=10, num_draws=None)
    assert float(res2["p_line_attractor"]) == 0.0
    np.testing.assert_allclose(res2["p_num_stable"].values, [0, 1])
    tau = np.sort(res2["time_constants"].values[:, 0], -1)
    np.testing.assert_allclose(tau[:, 0], 0.25)
    np.testing.assert_allclose(tau[:, 1], 1 / 3)


def test_discrete_time_regime_fixed_points():
    rng = np.random.default_rng(2)
    S = 6
    th = 0.2
    R = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    A0 = 0.9 * R  # regime 0 (x1 > 0): fixed point at (2, 1) -> inside
    A1 = np.diag([0.999, 0.5])  # regime 1 (x1 < 0): a line attractor along x1, fixed point at (-2, 0)
    x0, x1 = np.array([2.0, 1.0]), np.array([-2.0, 0.0])
    b0, b1 = x0 - A0 @ x0, x1 - A1 @ x1
    draws = {"dynamics": np.tile(np.stack([A0, A1]), (S, 1, 1, 1)) + 1e-4 * rng.normal(size=(S, 2, 2, 2)),
             "dynamics_bias": np.tile(np.stack([b0, b1]), (S, 1, 1))}
    model = ToyRSLDS()
    res = attractors(model, draws, bounds=[[-4, 4], [-3, 3]], grid_size=8, num_draws=None)
    assert float(res["p_line_attractor"]) == 1.0
    for s in range(S):
        ok = res["valid"].values[s]
        pts = res["fixed_points"].values[s][ok]
        assert np.min(np.linalg.norm(pts - x0, axis=1)) < 1e-2
        assert np.min(np.linalg.norm(pts - x1, axis=1)) < 1.0  # ill-conditioned: |lambda| ~ 0.999
    # time constants -dt / log|lambda| at the regime-0 node: |lambda| = 0.9
    i0 = np.argmin(np.linalg.norm(np.nan_to_num(res["fixed_points"].values[0], nan=99) - x0, axis=1))
    np.testing.assert_allclose(res["time_constants"].values[0, i0], -0.1 / np.log(0.9), rtol=1e-2)
    assert res["kind"].values[0, i0] == 0
    # moving regime 0's fixed point outside its half removes it
    bad = dict(draws)
    bad["dynamics_bias"] = np.tile(np.stack([-x0 + A0 @ x0, b1]), (S, 1, 1))  # fixed point at -x0
    res2 = attractors(model, bad, bounds=[[-4, 4], [-3, 3]], grid_size=8, num_draws=None)
    for s in range(S):
        pts = res2["fixed_points"].values[s][res2["valid"].values[s]]
        assert np.all(np.linalg.norm(pts + x0, axis=1) > 0.5)


def test_real_slds_protocol_if_available():
    slds = pytest.importorskip("zoo.rslds")
    m = slds.RSLDS(num_states=2, latent_dim=2, obs_dim=3)
    data = m.simulate(jax.random.key(0), num_steps=20)
    draws = {k: np.asarray(v)[None].repeat(3, 0) for k, v in data["params"].items()}
    draws["x"] = np.asarray(data["x"])[None].repeat(3, 0)
    res = attractors(m, draws, grid_size=6, num_draws=None)
    assert res["num_fixed_points"].values.shape == (3,)
    assert np.all(res["kind"].values[res["valid"].values] >= 0)


def test_slow_point_map_uses_the_gp_posterior_variance():
    m = GPSLDS(1, 2, 3)
    # f(x) = A x + b with a 0.5 posterior sd on every weight: P(|f| < eps) is smooth, not 0/1
    P = 3
    mean = np.zeros((P, 2))
    mean[0, 0] = mean[1, 1] = -1.0
    params = {"centers": np.zeros((1, 2)), "dynamics_scale": np.ones((1, 2)), "dynamics_corr": np.eye(2)[None],
              "bias_scale": np.ones(1), "drift_weights_mean": mean}
    grid = (np.linspace(-2, 2, 9), np.linspace(-2, 2, 9))
    tight = dict(params, drift_weights_factor=np.zeros((2, P, P)))
    wide = dict(params, drift_weights_factor=np.tile(np.eye(P) * 0.5, (2, 1, 1)))
    r0 = attractors(m, {k: np.asarray(v)[None] for k, v in tight.items()}, grid=grid, eps=0.5, num_mc=2000)
    r1 = attractors(m, {k: np.asarray(v)[None] for k, v in wide.items()}, grid=grid, eps=0.5, num_mc=2000)
    g = np.stack(np.meshgrid(r0["grid_0"], r0["grid_1"], indexing="ij"), -1)
    np.testing.assert_array_equal(r0["p_slow"].values, (np.linalg.norm(g, axis=-1) < 0.5).astype(float))
    # with variance: P(|f| < eps) for f ~ N(-x, 0.25 (|x|^2 + 1) I), by Monte Carlo independently
    rng = np.random.default_rng(0)
    sd = 0.5 * np.sqrt((g**2).sum(-1) + 1)[..., None]
    f = -g + sd * rng.normal(size=(20000,) + g.shape)
    truth = (np.linalg.norm(f, axis=-1) < 0.5).mean(0)
    np.testing.assert_allclose(r1["p_slow"].values, truth, atol=0.05)
    assert r1["p_slow"].values.max() < 0.9


def test_bad_input_and_plot():
    draws = {"k": np.full(3, 2.0), "lam": np.full(3, 4.0), "angle": np.zeros(3)}
    with pytest.raises(ValueError, match="bounds"):
        attractors(TwoWells(), draws)
    with pytest.raises(ValueError, match="bounds"):
        attractors(TwoWells(), draws, bounds=[[1, -1], [0, 1]])
    with pytest.raises(ValueError, match="post"):
        attractors(TwoWells(), [1, 2, 3], bounds=[[-3, 3], [-3, 3]])
    with pytest.raises(ValueError, match="num_draws"):
        attractors(TwoWells(), draws, bounds=[[-3, 3], [-3, 3]], num_draws=0)
    res = attractors(TwoWells(), draws, bounds=[[-3, 3], [-3, 3]], grid_size=8)
    ax = plot_attractors(res, true_fixed_points=[(np.array([2.0, 0]), "stable")])
    assert ax.get_title().startswith("P(line attractor)")
    with pytest.raises(ValueError, match="which"):
        plot_attractors(res, which="nope")


def _two_chain_linear_posterior(D=8):
    """Chain 0: a line attractor in every draw; chain 1: in every other draw (l1 = -3 otherwise)."""
    rng = np.random.default_rng(4)
    l1 = 0.01 * rng.normal(size=(2, D))
    l1[1, 1::2] = -3.0
    post = xr.Dataset({"l1": (("chain", "draw"), l1), "l2": (("chain", "draw"), np.full((2, D), -4.0)),
                       "b": (("chain", "draw", "latent"), np.tile([0.05, 0.0], (2, D, 1)))},
                      coords={"chain": [0, 1], "draw": np.arange(D)})
    return xr.DataTree.from_dict({"posterior": post}), l1


def test_probabilities_keep_chains_with_mcse_and_per_chain_values(tmp_path):
    import arviz_stats as azs

    from inference.attractors import MCSE_METHOD, attractor_probabilities, by_chain, indicator_mcse

    post, l1 = _two_chain_linear_posterior()
    res = attractors(Linear(), post, bounds=[[-3, 3], [-3, 3]], grid_size=6, num_draws=None, eps=0.1)
    truth = np.abs(l1) < 1.0  # line attractor draws, (chain, draw)
    # the chain structure is kept: which chain and which draw of it each analysed draw is
    np.testing.assert_array_equal(res["chain_index"].values, np.repeat([0, 1], 8))
    np.testing.assert_array_equal(res["draw_index"].values, np.tile(np.arange(8), 2))
    line = by_chain(res, "has_line_attractor")
    assert line.dims == ("chain", "draw") and line.shape == (2, 8)
    np.testing.assert_array_equal(line.values, truth)
    # pooled probability (unchanged name), per chain, and its MCSE from ArviZ on the 0/1 indicator
    assert float(res["p_line_attractor"]) == pytest.approx(0.75)
    np.testing.assert_allclose(res["p_line_attractor_chain"].values, [1.0, 0.5])
    expected = float(azs.mcse(xr.Dataset({"i": (("chain", "draw"), truth.astype(float))}), method="mean")["i"])
    assert float(res["p_line_attractor_mcse"]) == pytest.approx(expected)
    assert 0 < expected < 0.5
    assert res.attrs["mcse_method"] == MCSE_METHOD and res.attrs["num_chains"] == 2
    # P(number of stable fixed points = n): one stable node in every draw of both chains
    np.testing.assert_allclose(res["p_num_stable_chain"].sum("num_stable_value"), 1.0)
    assert res["p_num_stable_mcse"].dims == ("num_stable_value",)
    table = attractor_probabilities(res)
    assert table["quantity"].iloc[0] == "P(line attractor)"
    assert table["per_chain"].iloc[0] == pytest.approx([1.0, 0.5])
    assert table["mcse"].iloc[0] == pytest.approx(expected)
    # the result still round-trips through NetCDF and the CLI prints the uncertainty
    res.to_netcdf(tmp_path / "res.nc")
    back = xr.open_dataset(tmp_path / "res.nc")
    from inference.attractors import attractor_summary

    text = attractor_summary(back)
    assert text.startswith(f"P(line attractor) = 0.750 ± {expected:.3f} (MCSE); per chain 1.00 0.50")
    # indicator MCSE: constant -> 0; too few draws for ArviZ -> the independent-draws formula
    assert indicator_mcse(np.ones((2, 10))) == 0.0
    assert indicator_mcse(np.array([[1, 0], [1, 1]])) == pytest.approx(np.sqrt(0.75 * 0.25 / 4))


def test_num_draws_thins_each_chain_evenly():
    post, _ = _two_chain_linear_posterior()
    res = attractors(Linear(), post, bounds=[[-3, 3], [-3, 3]], grid_size=4, num_draws=4, eps=0.1)
    np.testing.assert_array_equal(res["chain_index"].values, [0, 0, 1, 1])
    np.testing.assert_array_equal(res["draw_index"].values, [0, 7, 0, 7])
    assert res.sizes["draw"] == 4 and res.sizes["chain"] == 2


def test_attractors_store_the_chains_modes():
    from inference.attractors import attractor_probabilities

    post, _ = _two_chain_linear_posterior()
    kw = dict(bounds=[[-3, 3], [-3, 3]], grid_size=4, num_draws=4, eps=0.1)
    res = attractors(Linear(), post, **kw)  # grouped by inference.modes.chain_modes
    assert res["chain_mode"].dims == ("chain",) and res.attrs["modes_from"] == "inference.modes.chain_modes"
    given = attractors(Linear(), post, modes=[[0], [1]], **kw)
    np.testing.assert_array_equal(given["chain_mode"].values, [0, 1])
    assert given.attrs["modes_from"] == "given"
    assert attractor_probabilities(given).attrs["modes"] == [[0], [1]]
