"""Geweke's joint-distribution test of the blocked sweep (Geweke 2004).

The successive-conditional simulator alternates y ~ p(y | theta, z, x) with one sweep of the
blocked sampler given y. If every block leaves its conditional invariant, the chain's stationary
distribution is the joint prior p(theta, z, x, y), so the means of test functions of
(theta, z, x) along the chain must equal their prior means, computed here from independent prior
draws. Two sweeps: the SLDS's (states site by site with the path integrated out) and the
stick-breaking rSLDS's (states by FFBS, Polya-gamma variables, boundary shifts with the path
integrated out given them). The sweep runs with a fixed step size and unit inverse mass (no adaptation: the kernel
must be exact for any setting). The frame is fixed (``default_frame``), since a frame computed
from y would change the model with every y.
"""

from __future__ import annotations

import arviz_stats as azs
import blackjax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr
from jax.flatten_util import ravel_pytree
from numpyro import handlers
from numpyro.infer.util import unconstrain_fn

from inference.blocked import SweepState, build_blocks, sweep
from zoo import RSLDS, SLDS
from zoo.frame import default_frame

T, K, D, N = 5, 2, 1, 2
CHAINS, SWEEPS = 16, 600


def _functions(values, states, path, sticks=False):
    """Test functions of (theta, z, x): shape (..., F). The last ones couple all three: the
    fraction of standardised dynamics residuals of x given z and theta inside (-1, 1) (0.683
    under the prior; bounded, so one wild draw cannot hide a bias in a huge variance), and
    state-path products, which a wrong state or path update biases."""
    A = values["dynamics"][..., 0, 0]  # (..., K)
    b = values["dynamics_bias"][..., 0]
    q = values["dynamics_noise"][..., 0]
    x = path[..., 0]
    zs = states[..., 1:]
    pick = lambda v: jnp.take_along_axis(v, zs, -1)  # noqa: E731
    resid = (x[..., 1:] - pick(A) * x[..., :-1] - pick(b)) / pick(q)
    zf = states.astype(path.dtype)
    return jnp.stack([
        values["dynamics"][..., 0, 0, 0], values["dynamics"][..., 1, 0, 0],
        jnp.log(values["dynamics_noise"][..., 0, 0]), jnp.log(values["dynamics_noise"][..., 1, 0]),
        jnp.log(values["emission_noise"][..., 0]), values["emission_free"][..., 0, 0],
        values["recurrence_weights"][..., 0, 0] if sticks else values["trans_probs"][..., 0, 0],
        values["dynamics_bias"][..., 0, 0],
        jnp.mean(zf, -1), jnp.mean(x ** 2, -1), x[..., -1],
        jnp.mean(jnp.abs(resid) < 1.0, -1), jnp.mean(zf * x, -1), jnp.mean(zf[..., 1:] != zf[..., :-1], -1),
    ], -1)


NAMES = ["a_0", "a_1", "log_q_0", "log_q_1", "log_r_0", "c_free", "p_00 (w_0 for sticks)", "b_0", "mean_z",
         "mean_x2", "x_T", "resid_inside_1", "zx", "switches"]


@pytest.fixture(scope="module", params=["slds", "sticks"])
def geweke(request):
    sticks = request.param == "sticks"
    with jax.enable_x64(True):
        if sticks:
            model = RSLDS(num_states=K, latent_dim=D, obs_dim=N, transition_link="stick_breaking")
            transitions = ("recurrence_weights", "recurrence_bias")
        else:
            model = SLDS(num_states=K, latent_dim=D, obs_dim=N)
            transitions = ("trans_probs",)
        # the program fit runs: offsets centred (bias_centres)
        kwargs = {"frame": default_frame(N, D, jnp.float64), "bias_centres": jnp.array([[0.5], [-0.5]])}
        params = ("init_probs", *transitions, "dynamics", "dynamics_bias_centred", "dynamics_noise",
                  "emission_free", "emission_bias_free", "emission_noise")

        def prior_with_states(key):
            k1, k2 = jax.random.split(key)
            tr = handlers.trace(handlers.seed(model, k1)).get_trace(None, num_steps=T, **kwargs)
            values = {k: tr[k]["value"] for k in params + ("dynamics_bias",)}
            z, x = tr["x"]["fn"].sample_with_states(k2)
            z = z.astype(jnp.int32)
            y = _emit(model, values, x, jax.random.fold_in(k2, 1), kwargs)
            return values, z, x, y

        v0, z0, x0, y0 = prior_with_states(jax.random.key(0))
        theta_example = unconstrain_fn(model, (y0,), kwargs, {k: v0[k] for k in params} | {"x": x0})
        theta_example = {k: theta_example[k] for k in params}
        spec = model.blocked_sampler()
        dim = ravel_pytree(theta_example)[0].shape[0]

        def one_chain(key):
            k0, kr = jax.random.split(key)
            values, z, x, y = prior_with_states(k0)
            # the sweep's first block draws the states and the Polya-gamma variables afresh
            states = (z, jnp.zeros((T - 1, K - 1))) if sticks else z
            flat = ravel_pytree({k: v for k, v in unconstrain_fn(
                model, (y,), kwargs, {k: values[k] for k in params} | {"x": x}).items() if k in params})[0]

            def body(carry, k):
                flat, states, x, y = carry
                ky, ks = jax.random.split(k)
                blocks = build_blocks(model, y, kwargs, spec, theta_example)
                hmc = blackjax.nuts.init(flat, lambda f: blocks.theta_logdensity(f, states))
                state, _ = sweep(ks, SweepState(hmc, states, x), blocks, 0.2, jnp.ones(dim), 6)
                rec = blocks.record(state.hmc.position, state.states, state.path)
                y = _emit(model, {k: rec[k] for k in params}, state.path, ky, kwargs)
                g = _functions(rec, rec["z"], state.path, sticks)
                return (state.hmc.position, state.states, state.path, y), g

            _, g = jax.lax.scan(body, (flat, states, x, y), jax.random.split(kr, SWEEPS))
            return g

        chains = np.asarray(jax.jit(jax.vmap(one_chain))(jax.random.split(jax.random.key(1), CHAINS)))

        def prior_g(key):
            values, z, x, _ = prior_with_states(key)
            return _functions(values, z, x, sticks)

        prior = np.asarray(jax.jit(jax.vmap(prior_g))(jax.random.split(jax.random.key(2), 20000)))
    return chains, prior


def _emit(model, values, x, key, kwargs):
    """y ~ p(y | theta, x): the program's own emission site, path and parameters given."""
    data = {**values, "x": x}
    tr = handlers.trace(handlers.substitute(handlers.seed(model, key), data=data)).get_trace(
        None, num_steps=T, **kwargs)
    return tr["y"]["value"]


def test_successive_conditional_means_equal_prior_means(geweke):
    chains, prior = geweke
    burn = 50
    g = chains[:, burn:]
    assert np.all(np.isfinite(g))
    for i, name in enumerate(NAMES):
        ds = xr.Dataset({"v": (("chain", "draw"), g[..., i])})
        ess = float(azs.ess(ds, method="mean")["v"])
        se_chain = g[..., i].std() / np.sqrt(ess)
        se_prior = prior[:, i].std() / np.sqrt(prior.shape[0])
        zscore = (g[..., i].mean() - prior[:, i].mean()) / np.hypot(se_chain, se_prior)
        print(f"{name}: z = {zscore:+.2f} (chain {g[..., i].mean():.4f}, prior {prior[:, i].mean():.4f}, "
              f"ess {ess:.0f})")
        assert abs(zscore) < 4.0, (name, g[..., i].mean(), prior[:, i].mean(), se_chain, ess)
