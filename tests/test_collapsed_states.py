"""The single-move state sampler with the path integrated out, against dense Gaussians.

Each site's conditional p(z_t = k | new z_{<t}, old z_{>t}, theta, y) is recomputed by brute
force: for each k, the marginal likelihood of y given the whole state sequence from the dense
joint Gaussian of the stacked observations (numpy/scipy, float64), plus log p(z).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import multivariate_normal

from zoo.collapsed_states import single_move_states

K, D, N = 2, 2, 3


def _params(rng, T, time_varying=False):
    A = np.stack([0.9 * np.eye(D) + 0.1 * rng.normal(size=(D, D)) for _ in range(K)])
    b = rng.normal(scale=0.5, size=(T, K, D) if time_varying else (K, D))
    Q_tril = np.stack([np.diag(rng.uniform(0.1, 0.4, D)) + np.tril(0.05 * rng.normal(size=(D, D)), -1)
                       for _ in range(K)])
    m0 = rng.normal(size=(K, D))
    P0_tril = np.stack([np.eye(D) * s for s in (0.5, 1.0)])
    H = rng.normal(size=(N, D))
    d = rng.normal(size=N)
    r = rng.uniform(0.2, 0.5, N)
    log_P = np.log(np.array([[0.8, 0.2], [0.3, 0.7]]))
    log_init = np.log(np.array([0.6, 0.4]))
    return dict(log_init=log_init, log_trans=log_P, A=A, b=b, Q_tril=Q_tril, m0=m0, P0_tril=P0_tril,
                H=H, d=d, r=r)


def _dense_log_marginal(z, y, p, T):
    """log p(y | z, theta) from the dense joint Gaussian of the stacked x and y."""
    b = np.broadcast_to(p["b"], (T, K, D))
    mean_x, cov_x = np.zeros((T, D)), np.zeros((T * D, T * D))
    # x = M w + c with w the stacked innovations (x_1 noise, then each step's noise)
    M = np.zeros((T * D, T * D))
    mean_x[0] = p["m0"][z[0]]
    noise = [p["P0_tril"][z[0]]] + [p["Q_tril"][z[t]] for t in range(1, T)]
    for t in range(1, T):
        mean_x[t] = p["A"][z[t]] @ mean_x[t - 1] + b[t, z[t]]
    for t in range(T):
        for s in range(t + 1):
            prod = np.eye(D)
            for u in range(s + 1, t + 1):
                prod = p["A"][z[u]] @ prod
            M[t * D:(t + 1) * D, s * D:(s + 1) * D] = prod @ noise[s]
    cov_x = M @ M.T
    Hb = np.kron(np.eye(T), p["H"])
    mean_y = (mean_x @ p["H"].T + p["d"]).ravel()
    cov_y = Hb @ cov_x @ Hb.T + np.diag(np.tile(p["r"], T))
    obs = np.isfinite(y.ravel())
    return multivariate_normal(mean_y[obs], cov_y[np.ix_(obs, obs)]).logpdf(y.ravel()[obs])


def _log_chain(z, p):
    return p["log_init"][z[0]] + sum(p["log_trans"][z[t - 1], z[t]] for t in range(1, len(z)))


def _brute_conditionals(old, new, y, p, T):
    out = np.zeros((T, K))
    for t in range(T):
        for k in range(K):
            z = np.concatenate([new[:t], [k], old[t + 1:]]).astype(int)
            out[t, k] = _dense_log_marginal(z, y, p, T) + _log_chain(z, p)
        out[t] -= np.logaddexp.reduce(out[t])
    return out


def _data(rng, p, T, missing=0.0):
    z = rng.integers(0, K, T)
    x = np.zeros((T, D))
    b = np.broadcast_to(p["b"], (T, K, D))
    x[0] = p["m0"][z[0]] + p["P0_tril"][z[0]] @ rng.normal(size=D)
    for t in range(1, T):
        x[t] = p["A"][z[t]] @ x[t - 1] + b[t, z[t]] + p["Q_tril"][z[t]] @ rng.normal(size=D)
    y = x @ p["H"].T + p["d"] + np.sqrt(p["r"]) * rng.normal(size=(T, N))
    if missing:
        y[rng.uniform(size=y.shape) < missing] = np.nan
    return z, y


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("time_varying,missing", [(False, 0.0), (True, 0.3)])
def test_site_conditionals_match_dense_gaussian(dtype, time_varying, missing):
    rng = np.random.default_rng(3 + time_varying)
    T = 6
    p = _params(rng, T, time_varying)
    _, y = _data(rng, p, T, missing)
    old = rng.integers(0, K, T)
    with jax.enable_x64(dtype == jnp.float64):
        args = {k: jnp.asarray(v, dtype) for k, v in p.items()}
        new, logits = single_move_states(jax.random.key(1), jnp.asarray(old), jnp.asarray(y, dtype), **args)
        new, logits = np.asarray(new), np.asarray(logits, np.float64)
    brute = _brute_conditionals(old, new, y, p, T)
    tol = 2e-3 if dtype == jnp.float32 else 1e-8
    np.testing.assert_allclose(logits, brute, atol=tol)


def test_padded_steps_add_nothing():
    """A trial padded at its end: the real steps' conditionals are those of the short trial,
    the padded steps' uniform."""
    rng = np.random.default_rng(5)
    T, T_real = 7, 5
    p = _params(rng, T)
    _, y = _data(rng, p, T)
    old = rng.integers(0, K, T)
    mask = np.arange(T) < T_real
    with jax.enable_x64():
        args = {k: jnp.asarray(v) for k, v in p.items()}
        new, logits = single_move_states(jax.random.key(2), jnp.asarray(old), jnp.asarray(y), **args,
                                         mask=jnp.asarray(mask))
        new, logits = np.asarray(new), np.asarray(logits)
    brute = _brute_conditionals(old[:T_real], new[:T_real], y[:T_real], p, T_real)
    np.testing.assert_allclose(logits[:T_real], brute, atol=1e-8)
    np.testing.assert_allclose(logits[T_real:], np.log(0.5), atol=1e-12)


def test_sweeps_leave_the_state_posterior_invariant():
    """Repeated sweeps from one start reach the exact posterior p(z | theta, y), enumerated."""
    rng = np.random.default_rng(11)
    T = 4
    p = _params(rng, T)
    _, y = _data(rng, p, T)
    seqs = np.array(np.meshgrid(*[range(K)] * T, indexing="ij")).reshape(T, -1).T
    logp = np.array([_dense_log_marginal(z, y, p, T) + _log_chain(z, p) for z in seqs])
    prob = np.exp(logp - np.logaddexp.reduce(logp))
    with jax.enable_x64():
        args = {k: jnp.asarray(v) for k, v in p.items()}

        def body(z, key):
            z, _ = single_move_states(key, z, jnp.asarray(y), **args)
            return z, z

        chains = jax.vmap(lambda k: jax.lax.scan(body, jnp.zeros(T, jnp.int32), jax.random.split(k, 400))[1])(
            jax.random.split(jax.random.key(0), 50))
        draws = np.asarray(chains)[:, 50:].reshape(-1, T)  # 50 chains x 350 sweeps
    codes = draws @ (K ** np.arange(T)[::-1])
    freq = np.bincount(codes, minlength=K**T) / len(codes)
    # multinomial standard errors of the frequencies (conservative for autocorrelated chains:
    # the sweeps here mix within a few steps)
    se = np.sqrt(prob * (1 - prob) / (len(codes) / 5))
    assert np.all(np.abs(freq - prob) <= 4 * se + 1e-3), np.c_[freq, prob]


def test_long_sequence_small_noise_is_finite():
    """T = 3000 with dynamics noise 0.01 (the NASCAR regime), float32: no NaN."""
    rng = np.random.default_rng(0)
    T = 3000
    p = _params(rng, T)
    p["Q_tril"] = np.stack([0.01 * np.eye(D)] * K)
    p["A"] = np.stack([np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) for a in (0.05, -0.05)])
    _, y = _data(rng, p, T)
    args = {k: jnp.asarray(v, jnp.float32) for k, v in p.items()}
    new, logits = jax.jit(single_move_states)(jax.random.key(0), jnp.zeros(T, jnp.int32),
                                              jnp.asarray(y, jnp.float32), **args)
    assert np.all(np.isfinite(np.asarray(logits)))
    assert np.asarray(new).min() >= 0 and np.asarray(new).max() < K


def test_trials_are_swept_one_by_one():
    """sweep_states on a two-trial switching path equals single_move_states per trial."""
    from zoo.collapsed_states import sweep_states
    from zoo.distributions import SwitchingLinearDynamics

    rng = np.random.default_rng(8)
    T, B = 5, 2
    p = _params(rng, T)
    y = np.stack([_data(rng, p, T)[1] for _ in range(B)])
    mask = np.array([[True] * T, [True] * 3 + [False] * 2])
    old = rng.integers(0, K, (B, T))
    with jax.enable_x64():
        a = {k: jnp.asarray(v) for k, v in p.items()}
        dyn = SwitchingLinearDynamics(a["log_init"], a["A"], a["b"], a["Q_tril"], a["m0"], a["P0_tril"],
                                      log_P=a["log_trans"], num_steps=T, batch_shape=(B,), mask=jnp.asarray(mask))
        key = jax.random.key(4)
        got = np.asarray(sweep_states(key, dyn, jnp.asarray(old), jnp.asarray(y), a["H"], a["d"], a["r"]))
        for i, k in enumerate(jax.random.split(key, B)):
            want, _ = single_move_states(k, jnp.asarray(old[i]), jnp.asarray(y[i]), **a, mask=jnp.asarray(mask[i]))
            np.testing.assert_array_equal(got[i], np.asarray(want))


@pytest.mark.parametrize("trials", [1, 2])
def test_boundary_shift_leaves_the_target_invariant(trials):
    """z drawn exactly from a chain-structured target (enumerated), then one boundary move:
    the moved draws must have the target's distribution (frequencies within 4.5 multinomial
    standard errors, every configuration)."""
    from zoo.collapsed_states import boundary_shift

    rng = np.random.default_rng(trials)
    Kz, T = 3, 6 // trials
    unary = rng.normal(size=(trials, T, Kz))
    pair = rng.normal(size=(Kz, Kz))
    seqs = np.array(np.meshgrid(*[range(Kz)] * (trials * T), indexing="ij")).reshape(trials * T, -1).T
    seqs = seqs.reshape(-1, trials, T)

    def logp_np(z):
        tr = np.arange(trials)[:, None]
        return unary[tr, np.arange(T)[None], z].sum() + pair[z[:, :-1], z[:, 1:]].sum()

    logp = np.array([logp_np(z) for z in seqs])
    prob = np.exp(logp - np.logaddexp.reduce(logp))
    U, P = jnp.asarray(unary), jnp.asarray(pair)

    def log_density(z):
        z = z.reshape(trials, T)
        return jnp.take_along_axis(U, z[..., None], -1).sum() + P[z[:, :-1], z[:, 1:]].sum()

    n = 200_000
    idx = rng.choice(len(prob), size=n, p=prob)
    start = jnp.asarray(seqs[idx].reshape((n,) + ((trials, T) if trials > 1 else (T,))), jnp.int32)
    moved, _, acc = jax.jit(jax.vmap(lambda k, z: boundary_shift(k, z, log_density, 3)))(
        jax.random.split(jax.random.key(0), n), start)
    moved = np.asarray(moved).reshape(n, -1)
    assert 0.01 < float(np.mean(acc)) < 0.95  # the move does something (short segments here)
    codes = moved @ (Kz ** np.arange(trials * T)[::-1])
    freq = np.bincount(codes, minlength=len(prob)) / n
    se = np.sqrt(prob * (1 - prob) / n)
    assert np.all(np.abs(freq - prob) <= 4.5 * se + 2e-5)


@pytest.mark.parametrize("length,padded", [(2, False), (3, False), (3, True)])
def test_window_moves_leave_the_state_posterior_invariant(length, padded):
    """z drawn exactly from p(z | theta, y) (enumerated over all K^T sequences, dense Gaussians),
    then one sweep of window moves: the moved draws keep that distribution (every configuration
    within 4.5 multinomial standard errors), and the move does change the states."""
    from zoo.collapsed_states import window_move_states

    rng = np.random.default_rng(21 + length + padded)
    T_real = 6
    T = T_real + 2 if padded else T_real
    p = _params(rng, T)
    _, y = _data(rng, p, T)
    seqs = np.array(np.meshgrid(*[range(K)] * T_real, indexing="ij")).reshape(T_real, -1).T
    logp = np.array([_dense_log_marginal(z, y[:T_real], p, T_real) + _log_chain(z, p) for z in seqs])
    prob = np.exp(logp - np.logaddexp.reduce(logp))
    n = 40000
    start = seqs[rng.choice(len(seqs), size=n, p=prob)]
    if padded:  # padded steps carry arbitrary states, which must stay untouched
        start = np.concatenate([start, rng.integers(0, K, (n, 2))], axis=1)
    mask = jnp.asarray(np.arange(T) < T_real) if padded else None
    with jax.enable_x64():
        args = {k: jnp.asarray(v) for k, v in p.items()}
        moved = jax.jit(jax.vmap(lambda k, z: window_move_states(k, z, jnp.asarray(y), **args, mask=mask,
                                                                 length=length)))(
            jax.random.split(jax.random.key(4), n), jnp.asarray(start, jnp.int32))
        moved = np.asarray(moved)
    if padded:
        np.testing.assert_array_equal(moved[:, T_real:], start[:, T_real:])
    assert np.mean(np.any(moved != start, axis=1)) > 0.05
    codes = moved[:, :T_real] @ (K ** np.arange(T_real)[::-1])
    freq = np.bincount(codes, minlength=K ** T_real) / n
    se = np.sqrt(prob * (1 - prob) / n)
    assert np.all(np.abs(freq - prob) <= 4.5 * se + 2e-4), np.c_[freq, prob][np.abs(freq - prob) > 4.5 * se]


def test_window_moves_long_sequence_float32_is_finite():
    """T = 3000, dynamics noise 0.01 (the NASCAR regime), float32, window 16: a boundary placed
    10 steps off the simulated one returns within a few block sweeps, no NaN on the way."""
    from zoo.collapsed_states import window_move_states

    rng = np.random.default_rng(1)
    T = 3000
    p = _params(rng, T)
    p["Q_tril"] = np.stack([0.01 * np.eye(D)] * K)
    p["A"] = np.stack([np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) for a in (0.05, -0.05)])
    p["b"] = np.zeros((K, D))
    p["m0"] = np.array([[1.0, 0.0], [1.0, 0.0]])
    p["r"] = np.full(N, 0.01)
    z_true = (np.arange(T) >= 2000).astype(np.int32)
    x = np.zeros((T, D))
    x[0] = [1.0, 0.0]
    for t in range(1, T):
        x[t] = p["A"][z_true[t]] @ x[t - 1] + p["b"][z_true[t]] + p["Q_tril"][z_true[t]] @ rng.normal(size=D)
    y = x @ p["H"].T + p["d"] + np.sqrt(p["r"]) * rng.normal(size=(T, N))
    start = (np.arange(T) >= 2010).astype(np.int32)
    args = {k: jnp.asarray(v, jnp.float32) for k, v in p.items()}
    f = jax.jit(lambda k, z: window_move_states(k, z, jnp.asarray(y, jnp.float32), **args, length=16))
    z = jnp.asarray(start)
    for i in range(4):
        z = f(jax.random.key(i), z)
    z = np.asarray(z)
    assert set(np.unique(z)) <= {0, 1}
    # isolated one-step flips are real posterior mass here (a flip moves x by 0.1 against
    # observation noise 0.06; the float64 single-site sampler flips 2008-2009 too): the displaced
    # steps 2000-2009 (all 0 at the start) are mostly back in state 1
    assert np.mean(z == z_true) > 0.98 and np.mean(z[2000:2010]) >= 0.7, np.flatnonzero(z != z_true)
