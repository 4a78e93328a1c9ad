"""DEER / quasi-DEER / ELK / quasi-ELK against independent truth: the sequential lax.scan
evaluation, dense Newton / Levenberg-Marquardt solves of the stacked T*D system, and autodiff
through lax.scan for gradients. float32 and float64 are both checked (x64 is enabled; the dtype
of x0 selects the precision)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.deterministic import elk, rnn

jax.config.update("jax_enable_x64", True)

TOL_ERR = {jnp.float32: 1e-5, jnp.float64: 1e-10}


def gru_problem(D, T, dtype, seed=0, scale=1.0, I=3):
    p = rnn.init_gru(jax.random.PRNGKey(seed), D, I, scale=scale, dtype=dtype)
    u = jax.random.normal(jax.random.PRNGKey(seed + 1), (T, I), dtype)
    x0 = 0.1 * jax.random.normal(jax.random.PRNGKey(seed + 2), (D,), dtype)
    return p, u, x0


@functools.partial(jax.jit, static_argnames=("method",))
def run_gru(p, x0, u, method):
    return elk.evaluate(functools.partial(rnn.gru_cell, p), x0, u, method=method, damping=1.0)


@jax.jit
def seq_gru(p, x0, u):
    return rnn.sequential(functools.partial(rnn.gru_cell, p), x0, u)


# ------------------------------------------------------------------ convergence to sequential


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("method", elk.METHODS)
def test_converges_to_sequential(method, dtype):
    T, D = 200, 3
    p, u, x0 = gru_problem(D, T, dtype, seed=D)
    res = run_gru(p, x0, u, method)
    ref = seq_gru(p, x0, u)
    assert res.states.dtype == dtype
    assert bool(res.converged)
    # far fewer sweeps than the T a sequential evaluation needs: Newton (DEER) converges
    # quadratically, the damped and quasi-Newton variants linearly (at T = 200: DEER 4, ELK 7-9,
    # quasi-DEER 9-15, quasi-ELK 11-17 iterations over float32/float64)
    assert int(res.iterations) <= MAX_ITERATIONS_T200[method]
    assert float(jnp.max(jnp.abs(res.states - ref))) <= TOL_ERR[dtype]


MAX_ITERATIONS_T200 = {"deer": 8, "elk": 20, "quasi_deer": 40, "quasi_elk": 40}


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("method", elk.METHODS)
@pytest.mark.parametrize("D", [4, 16])
def test_converges_long_sequences(method, dtype, D):
    T = 10_000
    p, u, x0 = gru_problem(D, T, dtype, seed=D)
    res = run_gru(p, x0, u, method)
    ref = seq_gru(p, x0, u)
    assert bool(res.converged)
    assert int(res.iterations) <= T
    assert float(jnp.max(jnp.abs(res.states - ref))) <= TOL_ERR[dtype]


def test_float32_and_float64_agree():
    p64, u64, x064 = gru_problem(5, 150, jnp.float64, seed=3)
    p32 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), p64)
    r64 = run_gru(p64, x064, u64, "deer")
    r32 = run_gru(p32, x064.astype(jnp.float32), u64.astype(jnp.float32), "deer")
    assert r32.states.dtype == jnp.float32 and r64.states.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(r32.states, np.float64), np.asarray(r64.states), atol=1e-5)


# ------------------------------------------------------------------ one step against dense solves


def dense_system(f, x0, u, x):
    """Residual e (T*D,) and Jacobian M (T*D, T*D) of G(x)_t = x_t - f(x_{t-1}, u_t)."""
    T, D = x.shape

    def G(flat):
        xs = flat.reshape(T, D)
        xp = jnp.concatenate([x0[None], xs[:-1]])
        return (xs - jax.vmap(f)(xp, u)).reshape(-1)

    return np.asarray(G(x.reshape(-1))), np.asarray(jax.jacfwd(G)(x.reshape(-1)))


def quasi_matrix(M, T, D):
    """Keep the identity blocks and the diagonals of the sub-diagonal blocks."""
    Mq = np.eye(T * D)
    for t in range(1, T):
        blk = M[t * D:(t + 1) * D, (t - 1) * D:t * D]
        Mq[t * D:(t + 1) * D, (t - 1) * D:t * D] = np.diag(np.diag(blk))
    return Mq


@pytest.mark.parametrize("method", elk.METHODS)
def test_step_equals_dense_solve(method):
    """DEER: x - M^{-1} e. ELK: x - (M^T M + lambda I)^{-1} M^T e (Levenberg-Marquardt).
    Quasi versions: the same with the diagonal approximation of the sub-diagonal blocks."""
    T, D, lam = 12, 3, 0.7
    p, u, x0 = gru_problem(D, T, jnp.float64, seed=11, scale=2.0)
    f = functools.partial(rnn.gru_cell, p)
    x = 0.5 * jax.random.normal(jax.random.PRNGKey(5), (T, D), jnp.float64)
    e, M = dense_system(f, x0, u, x)
    if method.startswith("quasi"):
        M = quasi_matrix(M, T, D)
    if method.endswith("deer"):
        delta = -np.linalg.solve(M, e)
    else:
        delta = -np.linalg.solve(M.T @ M + lam * np.eye(T * D), M.T @ e)
    expected = np.asarray(x).reshape(-1) + delta
    got = elk.linearized_step(f, x0, u, x, method=method, damping=lam)
    np.testing.assert_allclose(np.asarray(got).reshape(-1), expected, atol=1e-10, rtol=1e-10)


def test_deer_exact_prefix_and_at_most_T_iterations():
    """After i Newton iterations the first i states are exact, so T iterations always suffice,
    even for a large-weight network far from contracting."""
    T, D = 8, 4
    p = rnn.init_tanh_rnn(jax.random.PRNGKey(0), D, 2, gain=3.0, dtype=jnp.float64)
    f = functools.partial(rnn.tanh_rnn_cell, p)
    u = jax.random.normal(jax.random.PRNGKey(1), (T, 2), jnp.float64)
    x0 = jnp.zeros(D, jnp.float64)
    ref = np.asarray(rnn.sequential(f, x0, u))
    x = jnp.zeros((T, D), jnp.float64)
    for i in range(1, T + 1):
        for method in ("deer", "quasi_deer"):
            nxt = elk.linearized_step(f, x0, u, x, method=method)
            np.testing.assert_allclose(np.asarray(nxt)[:i], ref[:i], atol=1e-12)
        x = elk.linearized_step(f, x0, u, x, method="deer")
    for method in ("deer", "quasi_deer"):
        res = elk.evaluate(f, x0, u, method=method)
        assert bool(res.converged) and int(res.iterations) <= T


# ------------------------------------------------------------------ gradients


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("method", ["deer", "quasi_elk"])
def test_gradients_match_autodiff_through_scan(method, dtype):
    T, D = 60, 4
    p, u, x0 = gru_problem(D, T, dtype, seed=7)
    w = jax.random.normal(jax.random.PRNGKey(9), (T, D), dtype)

    def loss_par(p, x0, u):
        xs = elk.evaluate(lambda x, uu: rnn.gru_cell(p, x, uu), x0, u, method=method).states
        return jnp.sum(jnp.sin(xs) * w)

    def loss_seq(p, x0, u):
        return jnp.sum(jnp.sin(rnn.sequential(lambda x, uu: rnn.gru_cell(p, x, uu), x0, u)) * w)

    g_par = jax.jit(jax.grad(loss_par, argnums=(0, 1, 2)))(p, x0, u)
    g_seq = jax.jit(jax.grad(loss_seq, argnums=(0, 1, 2)))(p, x0, u)
    tol = 1e-4 if dtype == jnp.float32 else 1e-10
    for a, b in zip(jax.tree_util.tree_leaves(g_par), jax.tree_util.tree_leaves(g_seq), strict=True):
        assert a.dtype == dtype
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=tol, rtol=tol)


def test_gradient_uses_one_linear_scan_not_the_iterations():
    """The backward pass contains no while loop: it never differentiates the iterations."""
    p, u, x0 = gru_problem(3, 20, jnp.float64)

    def loss(x0):
        return jnp.sum(elk.evaluate(functools.partial(rnn.gru_cell, p), x0, u).states)

    jaxpr = jax.make_jaxpr(lambda x0: jax.vjp(loss, x0)[1](1.0))(x0)
    text = str(jaxpr)
    assert text.count("while[") == 1  # only the forward solve


# ------------------------------------------------------------------ failures are never silent


def test_unconverged_is_flagged_nan_or_raised():
    p, u, x0 = gru_problem(4, 100, jnp.float64, scale=3.0)
    f = functools.partial(rnn.gru_cell, p)
    res = elk.evaluate(f, x0, u, method="quasi_deer", max_iters=2)
    assert not bool(res.converged) and int(res.iterations) == 2
    assert bool(jnp.all(jnp.isnan(res.states)))
    res = elk.evaluate(f, x0, u, method="quasi_deer", max_iters=2, on_failure="flag")
    assert not bool(res.converged) and bool(jnp.all(jnp.isfinite(res.states)))
    assert float(res.residual) > 1e-12
    with pytest.raises(RuntimeError, match="did not converge"):
        elk.evaluate(f, x0, u, method="quasi_deer", max_iters=2, on_failure="raise")


def test_overflow_is_reported_not_converged():
    """A large-weight tanh RNN whose first Newton recurrence overflows in float32."""
    T, D = 1000, 8
    p = rnn.init_tanh_rnn(jax.random.PRNGKey(0), D, 2, gain=2.0, dtype=jnp.float32)
    u = jax.random.normal(jax.random.PRNGKey(1), (T, 2), jnp.float32)
    f = functools.partial(rnn.tanh_rnn_cell, p)
    for method in ("deer", "quasi_deer"):
        res = elk.evaluate(f, jnp.zeros(D, jnp.float32), u, method=method, on_failure="flag")
        assert not bool(res.converged)
        assert float(res.residual) == np.inf


def test_bad_arguments():
    p, u, x0 = gru_problem(3, 10, jnp.float64)
    f = functools.partial(rnn.gru_cell, p)
    with pytest.raises(ValueError, match="method"):
        elk.evaluate(f, x0, u, method="newton")
    with pytest.raises(ValueError, match="x0"):
        elk.evaluate(f, x0[None], u)
    with pytest.raises(ValueError, match="inputs"):
        elk.evaluate(f, x0, {"a": u, "b": u[:5]})
    with pytest.raises(ValueError, match="max_iters"):
        elk.evaluate(f, x0, u, max_iters=11)
    with pytest.raises(ValueError, match="max_iters"):
        elk.evaluate(f, x0, u, max_iters=0)
    with pytest.raises(ValueError, match="damping"):
        elk.evaluate(f, x0, u, method="elk", damping=0.0)
    with pytest.raises(ValueError, match="tol"):
        elk.evaluate(f, x0, u, tol=-1.0)
    with pytest.raises(ValueError, match="init"):
        elk.evaluate(f, x0, u, init=jnp.zeros((9, 3)))
    with pytest.raises(ValueError, match="on_failure"):
        elk.evaluate(f, x0, u, on_failure="ignore")
    with pytest.raises(ValueError, match="f"):
        elk.evaluate(lambda x, uu: x[:2], x0, u)
    with pytest.raises(ValueError, match="states"):
        elk.linearized_step(f, x0, u, jnp.zeros((10, 2)))


def test_batched_with_vmap():
    p, u, x0 = gru_problem(3, 50, jnp.float64)
    us = jnp.stack([u, 2 * u, -u])
    f = functools.partial(rnn.gru_cell, p)
    res = jax.vmap(lambda uu: elk.evaluate(f, x0, uu, method="deer"))(us)
    ref = jax.vmap(lambda uu: rnn.sequential(f, x0, uu))(us)
    assert bool(jnp.all(res.converged))
    np.testing.assert_allclose(np.asarray(res.states), np.asarray(ref), atol=1e-10)


# ------------------------------------------------------------------ predictability (slow)


@pytest.mark.slow
def test_iterations_constant_for_contracting_and_growing_for_large_gain():
    """Gonzalez et al. 2025 (predictability): DEER needs a T-independent number of iterations on a
    contracting system and a number growing with T otherwise. Our large-gain tanh RNN (gain 2.5,
    D = 16) is multistable, not chaotic: its Lyapunov exponent is negative along the solution, but
    its linearisations around the iterates are expanding, and the iterations still grow ~ T."""
    D = 16
    counts = {}
    for gain in (0.6, 2.5):
        p = rnn.init_tanh_rnn(jax.random.PRNGKey(0), D, 1, gain=gain, dtype=jnp.float64)
        f = functools.partial(rnn.tanh_rnn_cell, p)
        for T in (100, 300):
            u = 0.05 * jax.random.normal(jax.random.PRNGKey(1), (T, 1), jnp.float64)
            res = elk.evaluate(f, jnp.full(D, 0.1), u, method="deer", on_failure="flag")
            assert bool(res.converged)
            counts[gain, T] = int(res.iterations)
        if gain == 0.6:
            assert float(rnn.largest_lyapunov_exponent(f, jnp.full(D, 0.1), u, burn_in=100)) < 0
    assert counts[0.6, 300] <= counts[0.6, 100] + 1
    assert counts[2.5, 300] >= 2.5 * counts[2.5, 100]


@jax.jit
def _deer_on_tanh_map(Wg, h0, u):
    """DEER (tol 1e-8) on h_t = tanh(Wg h_{t-1} + 0.1 u_t); Wg is traced, so one compile per T."""
    return elk.evaluate(lambda h, uu: jnp.tanh(Wg @ h + 0.1 * uu), h0, u, method="deer", tol=1e-8,
                        on_failure="flag")


def test_predictability_iterations_flat_if_contracting_and_growing_if_chaotic():
    """Gonzalez et al. 2025 (predictability), small version of
    benchmarks/deterministic_elk_predictability.py: a random tanh map (D = 16) with gain 0.8
    contracts (largest Lyapunov exponent < 0) and DEER needs the same few iterations at T = 40
    and T = 200; with gain 2 it is chaotic (exponent > 0, QR estimate) and the iterations grow
    roughly in proportion to T."""
    D = 16
    W = jax.random.normal(jax.random.PRNGKey(0), (D, D), jnp.float64) / jnp.sqrt(D)
    u = jax.random.normal(jax.random.PRNGKey(1), (2000, D), jnp.float64)
    iters, lyap = {}, {}
    for gain in (0.8, 2.0):
        f = lambda h, uu, gain=gain: jnp.tanh(gain * W @ h + 0.1 * uu)  # noqa: E731
        h_init = jax.random.normal(jax.random.PRNGKey(100), (D,), jnp.float64)
        h0 = rnn.sequential(f, h_init, jnp.zeros((1000, D)))[-1]  # on the attractor
        lyap[gain] = float(rnn.lyapunov_spectrum(f, h0, u, k=1, burn_in=200)[0])
        for T in (40, 200):
            res = _deer_on_tanh_map(gain * W, h0, u[:T])
            assert bool(res.converged)
            np.testing.assert_allclose(np.asarray(res.states), np.asarray(rnn.sequential(f, h0, u[:T])),
                                       atol=1e-3 if gain > 1 else 1e-10)
            iters[gain, T] = int(res.iterations)
    assert lyap[0.8] < -0.1 and lyap[2.0] > 0.03
    assert abs(iters[0.8, 200] - iters[0.8, 40]) <= 2 and iters[0.8, 200] <= 10
    assert iters[2.0, 200] >= 3 * iters[2.0, 40]
    assert iters[2.0, 40] >= 2 * iters[0.8, 40]


def test_lyapunov_spectrum_of_a_linear_map():
    """For x_t = A x_{t-1} with A = diag(2, 0.5, 0.25) the exponents are log 2, log 0.5, log 0.25
    (after a burn-in that aligns the random start vectors with the axes)."""
    A = jnp.diag(jnp.array([2.0, 0.5, 0.25], jnp.float64))
    lam = rnn.lyapunov_spectrum(lambda x, u: A @ x, jnp.ones(3, jnp.float64), jnp.zeros((100, 1)), k=3,
                                burn_in=40)
    np.testing.assert_allclose(np.asarray(lam), np.log([2.0, 0.5, 0.25]), atol=1e-10)
