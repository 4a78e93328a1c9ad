"""The SLDS path given its discrete states: log p(z, x) by hand-written loops, the collapsed
program's potential against the dense joint Gaussian of (x, y) given z, and exact path draws."""

import zlib
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro import handlers as nh
from numpyro.infer.util import log_density
from scipy import stats
from scipy.special import gammaln

from zoo import HMM, LDS, RSLDS, SLDS
from zoo.distributions import (
    GaussMarkov,
    StateConditionedPath,
    StateConditionedSwitchingPath,
    SwitchingLinearDynamics,
)
from zoo.handlers import condition_states, decode, integrate_out

from .truth import dense_joint

jax.config.update("jax_enable_x64", True)  # float64 cases; float32 ones cast their data

TOL = {np.float32: dict(rtol=2e-5, atol=2e-3), np.float64: dict(rtol=1e-10, atol=1e-8)}


def _seed(*parts) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32("-".join(map(str, parts)).encode()))


# ------------------------------------------------------------------ given_states against loops


def random_sld(rng, K, D, T, transitions, batch=(), tv=False):
    """Parameters of a switching linear dynamics site (NumPy); time-varying b and r per trial."""
    A = np.stack([0.9 * np.linalg.qr(rng.normal(size=(D, D)))[0] for _ in range(K)])
    b = rng.normal(size=batch + (T, K, D)) * 0.3 if tv else rng.normal(size=(K, D)) * 0.3
    L = np.stack([np.linalg.cholesky(0.1 * np.eye(D) + 0.05 * np.diag(rng.random(D))) for _ in range(K)])
    init_L = np.stack([np.linalg.cholesky(np.eye(D) + 0.3 * np.ones((D, D))) * (1 + k) for k in range(K)])
    log_P = {
        "standard": np.log(rng.dirichlet(np.ones(K) * 2, size=K)),
        "sticky": np.log(np.stack([rng.dirichlet(np.ones(K) + 20 * np.eye(K)[k]) for k in range(K)])),
        "recurrent": np.log(rng.dirichlet(np.ones(K) * 2, size=K)),
        "recurrent_only": None,
    }[transitions]
    recurrent = transitions.startswith("recurrent")
    R = rng.normal(size=(K, D)) * 2 if recurrent else None
    r = (rng.normal(size=batch + (T, K)) if tv else rng.normal(size=K)) if recurrent else None
    return dict(log_init=np.log(rng.dirichlet(np.ones(K))), A=A, b=b, scale_tril=L,
                init_mean=rng.normal(size=(K, D)), init_scale_tril=init_L, log_P=log_P, R=R, r=r)


def log_p_states_and_path(p, z, x, steps=None):
    """log p(z, x) of one trial by a loop over its first ``steps`` steps (scipy densities)."""
    T = x.shape[0] if steps is None else steps
    mvn = stats.multivariate_normal
    L0 = p["init_scale_tril"][z[0]]
    s = p["log_init"][z[0]] + mvn(p["init_mean"][z[0]], L0 @ L0.T).logpdf(x[0])
    for t in range(1, T):
        if p["R"] is None:
            row = p["log_P"][z[t - 1]]
        else:
            r_t = p["r"] if p["r"].ndim == 1 else p["r"][t]
            logits = p["R"] @ x[t - 1] + r_t
            if p["log_P"] is not None:
                logits = logits + p["log_P"][z[t - 1]]
            row = logits - np.logaddexp.reduce(logits)
        s += row[z[t]]
        b_t = p["b"][z[t]] if p["b"].ndim == 2 else p["b"][t, z[t]]
        L = p["scale_tril"][z[t]]
        s += mvn(p["A"][z[t]] @ x[t - 1] + b_t, L @ L.T).logpdf(x[t])
    return s


def log_p_states(p, z, steps=None):
    T = z.shape[0] if steps is None else steps
    return p["log_init"][z[0]] + sum(p["log_P"][z[t - 1], z[t]] for t in range(1, T))


def _trial(p, i):
    """Trial i's parameters (time-varying b and r carry the trial axis)."""
    out = dict(p)
    if p["b"].ndim == 4:
        out["b"] = p["b"][i]
    if p["r"] is not None and p["r"].ndim == 3:
        out["r"] = p["r"][i]
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", ["plain", "tv_bias_trials_mask"])
@pytest.mark.parametrize("transitions", ["standard", "sticky", "recurrent", "recurrent_only"])
def test_given_states_log_prob_equals_loop(transitions, case, dtype):
    rng = _seed(transitions, case)
    T, K, D = 6, 3, 2
    trials = case != "plain"
    batch = (2,) if trials else ()
    p = random_sld(rng, K, D, T, transitions, batch, tv=trials)
    x = rng.normal(size=batch + (T, D))
    z = rng.integers(0, K, size=batch + (T,))
    mask = None
    if trials:
        mask = np.ones(batch + (T,), bool)
        mask[1, 4:] = False  # the second trial has 4 steps; its padding must not matter
        x[1, 4:] = 1e3
    cast = {k: None if v is None else jnp.asarray(v, dtype) for k, v in p.items()}
    fn = SwitchingLinearDynamics(**cast, num_steps=T, batch_shape=batch,
                                 mask=None if mask is None else jnp.asarray(mask))
    cond = fn.given_states(jnp.asarray(z))
    recurrent = transitions.startswith("recurrent")
    assert isinstance(cond, StateConditionedSwitchingPath if recurrent else StateConditionedPath)
    assert cond.batch_shape == batch and cond.event_shape == (T, D)
    xc = jnp.asarray(x, dtype)
    lp = cond.log_prob(xc)
    assert lp.shape == batch and lp.dtype == dtype
    if trials:
        steps = [T, 4]
        truth = np.array([log_p_states_and_path(_trial(p, i), z[i], x[i], steps[i]) for i in range(2)])
    else:
        truth = log_p_states_and_path(p, z, x)
    np.testing.assert_allclose(lp, truth, **TOL[dtype])
    # a registered pytree: the same through jit
    np.testing.assert_allclose(jax.jit(lambda f, v: f.log_prob(v))(cond, xc), lp, **TOL[dtype])
    if not recurrent:
        # log p(z, x) = log p(z) + the Gaussian path density
        if trials:
            zt = np.array([log_p_states(p, z[i], steps[i]) for i in range(2)])
        else:
            zt = log_p_states(p, z)
        np.testing.assert_allclose(cond.states_log_prob(), zt, **TOL[dtype])
        np.testing.assert_allclose(cond.path_log_prob(xc), truth - zt, **TOL[dtype])
        # gradients with respect to the switching parameters pass through the gathers
        floats = {k: v for k, v in cast.items() if v is not None}

        def total(c):
            f = SwitchingLinearDynamics(**{**cast, **c}, num_steps=T, batch_shape=batch,
                                        mask=None if mask is None else jnp.asarray(mask))
            return jnp.sum(f.given_states(jnp.asarray(z)).log_prob(xc))

        grads = jax.grad(total)(floats)
        assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads.values())
        assert float(jnp.max(jnp.abs(grads["log_P"]))) > 0
    # wrong states are refused with the expected shape in the message
    with pytest.raises(ValueError, match="states must be an integer array"):
        fn.given_states(jnp.zeros(batch + (T + 1,), int))
    with pytest.raises(ValueError, match="states must be an integer array"):
        fn.given_states(jnp.zeros(batch + (T,)))


def test_state_conditioned_path_draws_per_trial():
    """Draws of the Gauss-Markov path given each trial's states have the dense moments."""
    rng = _seed("draws")
    T, K, D = 5, 2, 2
    p = random_sld(rng, K, D, T, "standard", (2,), tv=True)
    z = rng.integers(0, K, size=(2, T))
    fn = SwitchingLinearDynamics(**{k: None if v is None else jnp.asarray(v) for k, v in p.items()},
                                 num_steps=T, batch_shape=(2,))
    cond = fn.given_states(jnp.asarray(z))
    n = 4000
    xs = np.asarray(cond.sample(jax.random.key(0), (n,)))
    assert xs.shape == (n, 2, T, D)
    for i in range(2):
        F = p["A"][z[i, 1:]]
        b = p["b"][i, np.arange(1, T), z[i, 1:]]
        Q = np.stack([L @ L.T for L in p["scale_tril"][z[i, 1:]]])
        L0 = p["init_scale_tril"][z[i, 0]]
        H = np.zeros((1, D))
        mx, Cx, *_ = dense_joint(T, p["init_mean"][z[i, 0]], L0 @ L0.T, F, b, Q, H, np.zeros(1), np.eye(1))
        se = np.sqrt(np.diag(Cx) / n)
        assert np.all(np.abs(xs[:, i].reshape(n, -1).mean(0) - mx) < 5 * se)
        np.testing.assert_allclose(np.cov(xs[:, i].reshape(n, -1).T), Cx, atol=0.15 * np.max(np.diag(Cx)))


# ------------------------------------------------------------------ the collapsed SLDS program


def _prior_log_density(m, params, frame):
    """log p(theta) of the SLDS's parameters, written with scipy."""
    K, D, N = m.num_states, m.latent_dim, m.obs_dim
    v = {k: np.asarray(a, float) for k, a in params.items()}
    s = float(frame.scale)
    kappa = m.stickiness if m.transitions == "sticky" else 0.0

    def dirichlet(alpha, p):  # scipy's checks the simplex to 1e-9, too tight for float32 values
        return gammaln(alpha.sum()) - gammaln(alpha).sum() + np.sum((alpha - 1) * np.log(p))

    lp = dirichlet(np.ones(K), v["init_probs"])
    lp += sum(dirichlet(np.ones(K) + kappa * np.eye(K)[k], v["trans_probs"][k]) for k in range(K))
    lp += stats.norm(0.85 * np.eye(D), 0.085 / np.sqrt(D)).logpdf(v["dynamics"]).sum()
    lp += stats.norm(0, 0.3).logpdf(v["dynamics_bias"]).sum()
    lp += stats.halfnorm(scale=0.2).logpdf(v["dynamics_noise"]).sum()
    if N > D:
        lp += stats.norm(0, s).logpdf(v["emission_free"]).sum()
        lp += stats.norm(0, 2 * s).logpdf(v["emission_bias_free"]).sum()
    lp += stats.halfnorm(scale=1.0).logpdf(v["emission_noise"]).sum()
    if m.input_dim:
        lp += stats.norm(0, 1).logpdf(v["input_dynamics"]).sum()
        lp += stats.norm(0, 1).logpdf(v["input_emissions"]).sum()
    return lp


def _dense_given_states(m, params, frame, z, u):
    """Dense joint Gaussian of (x_{1:T}, y_{1:T}) of one trial given its states z (NumPy)."""
    v = {k: np.asarray(a, float) for k, a in params.items()}
    D, T = m.latent_dim, z.shape[0]
    basis, comp, s, o = (np.asarray(a, float) for a in frame)
    C, d = s * basis, o
    if m.obs_dim > D:
        C, d = C + comp @ v["emission_free"], d + comp @ v["emission_bias_free"]
    b = v["dynamics_bias"][z[1:]]
    d = np.broadcast_to(d, (T, m.obs_dim))
    if m.input_dim:
        b = b + np.einsum("tdm,tm->td", v["input_dynamics"][z[1:]], u[1:])
        d = d + u @ v["input_emissions"].T
    Q = np.stack([np.diag(q**2) for q in v["dynamics_noise"][z[1:]]])
    return dense_joint(T, np.zeros(D), m.init_scale**2 * np.eye(D), v["dynamics"][z[1:]], b, Q, C, d,
                       np.diag(v["emission_noise"] ** 2))


def slds_params(rng, K, D, N, M):
    """Parameter values of the SLDS's sample sites, drawn directly (not from the program)."""
    out = dict(
        init_probs=rng.dirichlet(np.ones(K)),
        trans_probs=np.stack([rng.dirichlet(np.ones(K) + 5 * np.eye(K)[k]) for k in range(K)]),
        dynamics=0.85 * np.eye(D) + 0.06 * rng.normal(size=(K, D, D)),
        dynamics_bias=0.3 * rng.normal(size=(K, D)),
        dynamics_noise=0.05 + 0.2 * np.abs(rng.normal(size=(K, D))),
        emission_free=rng.normal(size=(N - D, D)),
        emission_bias_free=rng.normal(size=N - D),
        emission_noise=0.3 + 0.3 * np.abs(rng.normal(size=N)),
    )
    if M:
        out.update(input_dynamics=rng.normal(size=(K, D, M)), input_emissions=rng.normal(size=(N, M)))
    return out


def _collapsed_setup(case, dtype):
    """An SLDS, fixed parameter values, data with missing entries and the states to condition on."""
    rng = _seed("collapsed", case)
    K, D, N, T, B = 2, 2, 3, 6, (2 if case.startswith("trials") else 1)
    M = 1 if "inputs" in case else 0
    m = SLDS(num_states=K, latent_dim=D, obs_dim=N, input_dim=M)
    lead = (B,) if B > 1 else ()
    u = rng.normal(size=lead + (T, M)) if M else None
    y = 2.0 * rng.normal(size=lead + (T, N))
    z = rng.integers(0, K, size=lead + (T,))
    mask = None
    if B > 1:
        y[0, 1, 0] = np.nan
        y[1, 2, :] = np.nan
        mask = np.ones((B, T), bool)
        mask[1, 4:] = False
        y[1, 4:] = 1e3  # padding: must not matter
    else:
        y[1, 0] = np.nan
        y[3, :] = np.nan
    frame = m.data_frame(y, None if mask is None else jnp.asarray(mask))
    params = {k: jnp.asarray(v, dtype) for k, v in slds_params(rng, K, D, N, M).items()}
    y = y.astype(dtype)
    kw = dict(frame=frame, mask=mask, **({} if u is None else {"inputs": u}))
    return m, params, y, z, u, mask, frame, kw


def _collapsed_truth(m, params, y, z, u, mask, frame):
    """log p(theta) + sum over trials of [log p(z | theta) + log N(y_obs; dense mean, cov)], and
    each trial's dense conditional mean and covariance of x given y and z."""
    v = {k: np.asarray(a, float) for k, a in params.items()}
    y = np.asarray(y, float)
    trials = [(y, z, u, y.shape[0])] if y.ndim == 2 else [
        (y[i], z[i], None if u is None else u[i], int(mask[i].sum())) for i in range(y.shape[0])]
    total = _prior_log_density(m, params, frame)
    post = []
    for yi, zi, ui, steps in trials:
        mx, Cx, my, Cy, Cxy = _dense_given_states(m, params, frame, zi, ui)
        obs = ~np.isnan(yi)
        obs[steps:] = False
        obs = obs.reshape(-1)
        yv = yi.reshape(-1)[obs]
        total += np.log(v["init_probs"][zi[0]]) + sum(np.log(v["trans_probs"][zi[t - 1], zi[t]])
                                                       for t in range(1, steps))
        total += stats.multivariate_normal(my[obs], Cy[np.ix_(obs, obs)]).logpdf(yv)
        So = Cy[np.ix_(obs, obs)]
        gain = np.linalg.solve(So, Cxy[:, obs].T).T
        post.append((mx + gain @ (yv - my[obs]), Cx - gain @ Cxy[:, obs].T))
    return total, post


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", ["missing", "inputs", "trials", "trials_inputs"])
def test_collapsed_potential_equals_dense_gaussian(case, dtype):
    # the program makes its own constants in JAX's default float: float32 runs without x64
    with jax.enable_x64(dtype == np.float64):
        _collapsed_potential(case, dtype)


def _collapsed_potential(case, dtype):
    m, params, y, z, u, mask, frame, kw = _collapsed_setup(case, dtype)
    program = integrate_out(condition_states(m, states={"x": jnp.asarray(z)}))
    seen = {}

    def potential(p, program=program):
        lp, tr = log_density(program, (y,), kw, p)
        seen["x"] = tr["x"]
        return lp

    lp, g = jax.jit(jax.value_and_grad(potential))(params)
    truth, _ = _collapsed_truth(m, params, y, z, u, mask, frame)
    np.testing.assert_allclose(lp, truth, **TOL[dtype])
    assert lp.dtype == dtype
    assert seen["x"]["infer"].get("collapsed") and seen["x"]["is_observed"]
    assert isinstance(seen["x"]["fn"].prior, StateConditionedPath)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in g.values())
    if case == "trials_inputs" and dtype == np.float64:
        # the parallel Kalman filter gives the same potential (one case: it compiles slowly)
        par = integrate_out(condition_states(m, states={"x": jnp.asarray(z)}), parallel=True)
        np.testing.assert_allclose(jax.jit(partial(potential, program=par))(params), truth, **TOL[dtype])


def test_decode_draws_the_path_given_states_exactly():
    m, params, y, z, u, mask, frame, kw = _collapsed_setup("trials_inputs", np.float64)
    program = integrate_out(condition_states(m, states={"x": jnp.asarray(z)}))
    _, post = _collapsed_truth(m, params, y, z, u, mask, frame)

    def draw(key):
        with decode(rng_key=key) as dec:
            nh.substitute(program, params)(y, **kw)
        return dec.posteriors["y"]

    one = draw(jax.random.key(0))
    T, D = 6, 2
    assert one.sample.shape == (2, T, D) and one.covariances.shape == (2, T, D, D)
    n = 4000
    draws = np.asarray(jax.jit(jax.vmap(lambda k: draw(k).sample))(jax.random.split(jax.random.key(1), n)))
    for i, (mean, cov) in enumerate(post):
        np.testing.assert_allclose(np.asarray(one.means[i]).reshape(-1), mean, atol=1e-8)
        blocks = np.stack([cov[t * D:(t + 1) * D, t * D:(t + 1) * D] for t in range(T)])
        np.testing.assert_allclose(one.covariances[i], blocks, atol=1e-8)
        flat = draws[:, i].reshape(n, -1)
        se = np.sqrt(np.diag(cov) / n)
        assert np.all(np.abs(flat.mean(0) - mean) < 5 * se)
        np.testing.assert_allclose(np.cov(flat.T), cov, atol=0.15 * np.max(np.diag(cov)))


# ------------------------------------------------------------------ the plain programs are unchanged


def test_plain_slds_density_and_states_conditioned_without_collapse():
    """The plain SLDS log density is log p(theta) + log sum_z p(z, x) + log p(y | x) (by
    enumeration); conditioned on z without collapse, the sum over z becomes log p(z, x)."""
    import itertools

    m, params, y, z, u, mask, frame, kw = _collapsed_setup("inputs", np.float64)
    x = _seed("plain").normal(size=(6, 2))
    v = {k: np.asarray(a) for k, a in params.items()}
    K, T = 2, 6
    b = v["dynamics_bias"][None] + np.einsum("kdm,tm->tkd", v["input_dynamics"], u)
    p = dict(log_init=np.log(v["init_probs"]), A=v["dynamics"], b=b,
             scale_tril=np.stack([np.diag(q) for q in v["dynamics_noise"]]),
             init_mean=np.zeros((K, 2)), init_scale_tril=np.stack([m.init_scale * np.eye(2)] * K),
             log_P=np.log(v["trans_probs"]), R=None, r=None)
    basis, comp, s, o = (np.asarray(a) for a in frame)
    C = s * basis + comp @ v["emission_free"]
    d = o + comp @ v["emission_bias_free"] + u @ v["input_emissions"].T
    obs = ~np.isnan(y)
    emis = stats.norm(x @ C.T + d, v["emission_noise"]).logpdf(np.where(obs, y, 0.0))[obs].sum()
    prior = _prior_log_density(m, params, frame)
    marginal = np.logaddexp.reduce([log_p_states_and_path(p, np.array(zz), x)
                                    for zz in itertools.product(range(K), repeat=T)])
    lp = log_density(m, (y,), kw, {**params, "x": jnp.asarray(x)})[0]
    np.testing.assert_allclose(lp, prior + marginal + emis, rtol=1e-10)
    cond = log_density(condition_states(m, states={"x": jnp.asarray(z)}), (y,), kw, {**params, "x": jnp.asarray(x)})[0]
    np.testing.assert_allclose(cond, prior + log_p_states_and_path(p, z, x) + emis, rtol=1e-10)


def test_recurrent_path_given_states_is_not_collapsed():
    m = RSLDS(num_states=2, latent_dim=2, obs_dim=3, transitions="recurrent")
    data = m.simulate(jax.random.key(4), 6)
    y, z, x = np.asarray(data["y"]), np.asarray(data["z"]), np.asarray(data["x"])
    params = {k: v for k, v in data["params"].items() if k not in ("emission_matrix", "emission_bias")}
    values = {**params, "x": jnp.asarray(x)}
    frame = m.data_frame(y)
    program = integrate_out(condition_states(m, states={"x": jnp.asarray(z)}))
    lp, tr = log_density(program, (y,), {"frame": frame}, values)
    assert isinstance(tr["x"]["fn"], StateConditionedSwitchingPath) and not tr["x"]["is_observed"]
    # the other sites as in the plain program; the path site is log p(z, x)
    _, plain = log_density(m, (y,), {"frame": frame}, values)
    rest = sum(float(jnp.sum(s["fn"].log_prob(s["value"]))) for n, s in plain.items()
               if s["type"] == "sample" and n != "x")
    fn = plain["x"]["fn"]
    p = dict(log_init=np.asarray(fn.log_init), A=np.asarray(fn.A), b=np.asarray(fn.b),
             scale_tril=np.asarray(fn.scale_tril), init_mean=np.asarray(fn.init_mean),
             init_scale_tril=np.asarray(fn.init_scale_tril), log_P=np.asarray(fn.log_P),
             R=np.asarray(fn.R), r=np.asarray(fn.r))
    np.testing.assert_allclose(lp, rest + log_p_states_and_path(p, z, x), rtol=1e-10)
    # a draw for a starting value: finite, of the path's shape
    assert tr["x"]["fn"].sample(jax.random.key(0)).shape == (6, 2)


def test_condition_states_leaves_other_programs_alone():
    rng = _seed("alone")
    lds = LDS(latent_dim=2, obs_dim=3)
    data = lds.simulate(jax.random.key(1), 6)
    y = np.asarray(data["y"])
    z = jnp.zeros(6, int)
    a = log_density(lds, (y,), {}, data["params"])[0]
    b = log_density(condition_states(lds, states={"x": z}), (y,), {}, data["params"])[0]
    assert float(a) == float(b)
    hmm = HMM(num_states=2, obs_dim=3)
    hd = hmm.simulate(jax.random.key(2), 6)
    a = log_density(hmm, (hd["y"],), {}, hd["params"])[0]
    b = log_density(condition_states(hmm, states={"y": z}), (hd["y"],), {}, hd["params"])[0]
    assert float(a) == float(b)  # an observed switching site keeps its marginal

    def program():
        numpyro.sample("x", dist.Normal(0.0, 1.0).expand([6, 2]).to_event(2))

    xv = rng.normal(size=(6, 2))
    a = log_density(program, (), {}, {"x": xv})[0]
    b = log_density(condition_states(program, states={"x": z}), (), {}, {"x": xv})[0]
    assert float(a) == float(b)
    # a plain Gauss-Markov path integrated out contributes nothing of its own
    gm = GaussMarkov(jnp.zeros(2), jnp.eye(2), jnp.eye(2), jnp.zeros(2), jnp.eye(2), 6)
    assert float(gm.states_log_prob()) == 0.0


def test_poisson_emissions_cannot_be_collapsed():
    m = SLDS(num_states=2, latent_dim=2, obs_dim=3, emissions="poisson")
    data = m.simulate(jax.random.key(0), 6)
    params = {k: v for k, v in data["params"].items() if k not in ("emission_matrix", "emission_bias")}
    program = integrate_out(condition_states(m, states={"x": jnp.asarray(data["z"])}))
    with pytest.raises(ValueError, match="linear-Gaussian emissions"):
        log_density(program, (np.asarray(data["y"]),), {}, params)
