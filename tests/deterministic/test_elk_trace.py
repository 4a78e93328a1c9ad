"""elk.trace (per-iteration history, the zeroing heuristic) and the parallel / sequential
switch of the linear solves: both checked against elk.evaluate and the sequential scan."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.deterministic import elk, rnn, s5

jax.config.update("jax_enable_x64", True)


def gru(T=120, D=3, dtype=jnp.float64):
    p = rnn.init_gru(jax.random.PRNGKey(0), D, 2, dtype=dtype)
    u = jax.random.normal(jax.random.PRNGKey(1), (T, 2), dtype)
    return functools.partial(rnn.gru_cell, p), jnp.zeros(D, dtype), u


def test_parallel_default_is_sequential_on_cpu():
    assert elk.parallel_default() is (jax.default_backend() != "cpu")
    with pytest.raises(ValueError, match="parallel"):
        s5.S5Layer(H=2, P=2, parallel="yes")
    with pytest.raises(ValueError, match="parallel"):
        s5.S5Model(input_dim=1, output_dim=1, parallel=1)


@pytest.mark.parametrize("method", elk.METHODS)
def test_parallel_and_sequential_solves_agree(method):
    # One linearised solve per method (cheap to compile); whole evaluations with both solvers
    # are compared, with gradients, in test_gradients_agree_across_solvers.
    f, x0, u = gru(T=40)
    x = 0.9 * elk.sequential(f, x0, u)
    step_a, step_b = (jax.jit(lambda x, p=p: elk.linearized_step(f, x0, u, x, method=method, damping=0.3,
                                                                   parallel=p))(x) for p in (True, False))
    np.testing.assert_allclose(np.asarray(step_a), np.asarray(step_b), atol=1e-10)


def test_gradients_agree_across_solvers():
    f, x0, u = gru(T=60)

    def loss(uu, parallel):
        return jnp.sum(elk.evaluate(f, x0, uu, method="deer", parallel=parallel).states ** 2)

    np.testing.assert_allclose(np.asarray(elk.evaluate(f, x0, u, parallel=True).states),
                               np.asarray(elk.evaluate(f, x0, u, parallel=False).states), atol=1e-10)
    g_par = jax.grad(loss)(u, True)
    g_seq = jax.grad(loss)(u, False)
    g_ref = jax.grad(lambda uu: jnp.sum(elk.sequential(f, x0, uu) ** 2))(u)
    np.testing.assert_allclose(np.asarray(g_par), np.asarray(g_ref), atol=1e-8)
    np.testing.assert_allclose(np.asarray(g_seq), np.asarray(g_ref), atol=1e-8)


# Fixed damping 0.5 converges only linearly (residual 3e-4 after T = 120 solves); 0.01 in 23.
@pytest.mark.parametrize("method,adaptive,damping", [("deer", True, 0.5), ("quasi_elk", True, 0.5),
                                                     ("elk", False, 0.01)])
def test_trace_follows_evaluate(method, adaptive, damping):
    f, x0, u = gru()
    ref = elk.sequential(f, x0, u)
    res = elk.evaluate(f, x0, u, method=method, adaptive=adaptive, damping=damping)
    tr = elk.trace(f, x0, u, ref[:, :1], method=method, components=(0,), adaptive=adaptive,
                   damping=damping)
    n = int(tr.iterations)
    assert n == int(res.iterations) and bool(tr.converged)
    np.testing.assert_allclose(np.asarray(tr.states), np.asarray(res.states), atol=1e-12)
    assert float(tr.residual[n - 1]) == pytest.approx(float(res.residual))
    assert float(tr.deviation[n - 1]) == pytest.approx(float(jnp.mean(jnp.abs(res.states[:, 0] - ref[:, 0]))))
    assert not bool(jnp.any(tr.nonfinite))
    assert bool(jnp.all(jnp.isnan(tr.residual[n:]))) and bool(jnp.all(jnp.isnan(tr.deviation[n:])))
    if method != "deer":
        assert float(tr.damping[0]) == damping


def test_zeroing_heuristic_recovers_from_overflow():
    # A bistable map whose Newton recurrence overflows float32 at the first iteration from zeros.
    def f(x, u):
        return 1.5 * jnp.tanh(3.0 * x) + u

    u = 0.5 * jax.random.normal(jax.random.PRNGKey(0), (300, 1), jnp.float32)
    x0 = jnp.zeros(1, jnp.float32)
    ref = elk.sequential(f, x0, u)
    stop = elk.trace(f, x0, u, ref, method="deer")
    assert int(stop.iterations) == 1 and bool(stop.nonfinite[0]) and not bool(stop.converged)
    reset = elk.trace(f, x0, u, ref, method="deer", on_nonfinite="reset")
    n = int(reset.iterations)
    assert bool(reset.converged) and bool(reset.nonfinite[0]) and n < 300
    assert bool(jnp.all(jnp.isfinite(reset.states)))
    assert float(reset.deviation[n - 1]) < 1e-5


def test_trace_validates():
    f, x0, u = gru(T=10)
    ref = elk.sequential(f, x0, u)
    with pytest.raises(ValueError, match="reference"):
        elk.trace(f, x0, u, ref[:, :2])
    with pytest.raises(ValueError, match="components"):
        elk.trace(f, x0, u, ref[:, :1], components=(7,))
    with pytest.raises(ValueError, match="on_nonfinite"):
        elk.trace(f, x0, u, ref, on_nonfinite="zero")
    with pytest.raises(ValueError, match="parallel"):
        elk.evaluate(f, x0, u, parallel="yes")
