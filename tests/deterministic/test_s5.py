"""S5 against independent truth: a Python loop of the recurrence, dense matrix exponentials
(jax.scipy.linalg.expm) and dense bilinear solves, the HiPPO-N matrix itself; the jaxpr of the
irregular-sampling path; a short training smoke test (the full digits run is marked slow)."""

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.scipy.linalg import expm

from zoo.deterministic import s5

jax.config.update("jax_enable_x64", True)

TOL = {jnp.float32: 1e-4, jnp.float64: 1e-10}


def loop_reference(layer, params, u, dt=None):
    """Sequential recurrence in NumPy complex128, discretising each step from scratch."""
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    Lam = p["Lambda"][:, 0] + 1j * p["Lambda"][:, 1]
    B = p["B"][..., 0] + 1j * p["B"][..., 1]
    C = p["C"][..., 0] + 1j * p["C"][..., 1]
    step = np.exp(p["log_step"])
    u = np.asarray(u, np.float64)
    L = u.shape[0]
    dts = np.ones(L) if dt is None else np.asarray(dt, np.float64)
    Lbar, gamma = [], []
    for k in range(L):
        d = step * dts[k]
        if layer.discretization == "zoh":
            lb = np.exp(Lam * d)
            g = (lb - 1) / Lam
        else:
            lb = (1 + Lam * d / 2) / (1 - Lam * d / 2)
            g = d / (1 - Lam * d / 2)
        Lbar.append(lb)
        gamma.append(g)
    scale = 2.0 if layer.conj_sym else 1.0
    x = np.zeros(layer.state_size, complex)
    ys = []
    for k in range(L):
        x = Lbar[k] * x + gamma[k] * (B @ u[k])
        ys.append(scale * (C[0] @ x).real)
    ys = np.array(ys)
    if layer.bidirectional:
        x = np.zeros(layer.state_size, complex)
        back = np.zeros_like(ys)
        for k in reversed(range(L)):
            x = Lbar[k] * x + gamma[k] * (B @ u[k])
            back[k] = scale * (C[1] @ x).real
        ys = ys + back
    return ys + p["D"] * u


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(discretization="bilinear", blocks=2),
        dict(conj_sym=False, blocks=4),
        dict(bidirectional=True, blocks=2),
        dict(parallel=True),  # the default is sequential on a CPU
        dict(parallel=True, bidirectional=True, blocks=2),
    ],
)
@pytest.mark.parametrize("irregular", [False, True])
def test_parallel_scan_equals_sequential_loop(kw, irregular, dtype):
    layer = s5.S5Layer(H=3, P=8, dt_min=0.05, dt_max=0.5, **kw)
    params = layer.init(jax.random.PRNGKey(0), dtype)
    u = jax.random.normal(jax.random.PRNGKey(1), (37, 3), dtype)
    dt = jax.random.uniform(jax.random.PRNGKey(2), (37,), dtype, 0.05, 3.0) if irregular else None
    y = layer(params, u, dt)
    assert y.dtype == dtype
    np.testing.assert_allclose(np.asarray(y, np.float64), loop_reference(layer, params, u, dt),
                               atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("irregular", [False, True])
def test_layer_step_equals_parallel_call(irregular, dtype):
    layer = s5.S5Layer(H=4, P=12, blocks=3, dt_min=0.05, dt_max=0.5)
    params = layer.init(jax.random.PRNGKey(3), dtype)
    u = jax.random.normal(jax.random.PRNGKey(4), (25, 4), dtype)
    dt = jax.random.uniform(jax.random.PRNGKey(5), (25,), dtype, 0.1, 2.0) if irregular else None
    y = layer(params, u, dt)
    state = layer.initial_state(dtype)
    step = jax.jit(layer.step)
    for k in range(25):
        state, yk = step(params, state, u[k], None if dt is None else dt[k])
        np.testing.assert_allclose(np.asarray(yk), np.asarray(y[k]), atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("activation", ["gelu", "glu", "half_glu"])
@pytest.mark.parametrize("prenorm", [True, False])
def test_model_step_equals_call(activation, prenorm):
    model = s5.S5Model(input_dim=2, output_dim=3, H=6, P=8, n_layers=2, pool=None,
                       activation=activation, prenorm=prenorm, dropout=0.2)
    params = model.init(jax.random.PRNGKey(0), jnp.float64)
    u = jax.random.normal(jax.random.PRNGKey(1), (15, 2), jnp.float64)
    dt = jax.random.uniform(jax.random.PRNGKey(2), (15,), jnp.float64, 0.5, 1.5)
    y = model(params, u, dt)
    states = model.initial_state(jnp.float64)
    for k in range(15):
        states, yk = model.step(params, states, u[k], dt[k])
        np.testing.assert_allclose(np.asarray(yk), np.asarray(y[k]), atol=1e-10)


def test_model_batch_and_dropout():
    model = s5.S5Model(input_dim=2, output_dim=3, H=6, P=8, n_layers=2, dropout=0.5)
    params = model.init(jax.random.PRNGKey(0), jnp.float64)
    u = jax.random.normal(jax.random.PRNGKey(1), (4, 5, 15, 2), jnp.float64)
    out = model(params, u)
    assert out.shape == (4, 5, 3)
    np.testing.assert_allclose(np.asarray(out[1, 2]), np.asarray(model(params, u[1, 2])), atol=1e-12)
    a = model(params, u, key=jax.random.PRNGKey(1))
    b = model(params, u, key=jax.random.PRNGKey(2))
    assert float(jnp.max(jnp.abs(a - b))) > 1e-3  # dropout active only with a key
    np.testing.assert_array_equal(np.asarray(model(params, u)), np.asarray(out))


# ------------------------------------------------------------------ HiPPO-N and discretisation


@pytest.mark.parametrize("N", [2, 8, 16])
def test_hippo_n_eigenvalues(N):
    A = s5.hippo_n(N)
    ev = np.linalg.eigvals(A)
    np.testing.assert_allclose(ev.real, -0.5, atol=1e-9)
    Lam, V = s5.hippo_n_diagonal(N, conj_sym=False)
    np.testing.assert_allclose(Lam.real, -0.5, atol=0)
    np.testing.assert_allclose(V @ np.diag(Lam) @ V.conj().T, A, atol=1e-10)
    np.testing.assert_allclose(np.sort(Lam.imag), np.sort(ev.imag), atol=1e-8)
    # conjugate symmetry keeps one of each conjugate pair
    half, _ = s5.hippo_n_diagonal(N, conj_sym=True)
    np.testing.assert_allclose(np.sort(np.concatenate([half.imag, -half.imag])), np.sort(ev.imag), atol=1e-8)
    # HiPPO-N is HiPPO-LegS plus a rank one term
    n = np.arange(N)
    legs = np.where(n[:, None] > n[None], -np.sqrt((2 * n[:, None] + 1) * (2 * n[None] + 1)), 0.0)
    legs -= np.diag(n + 1.0)
    np.testing.assert_allclose(A - legs, np.outer(np.sqrt(n + 0.5), np.sqrt(n + 0.5)), atol=1e-12)


def test_block_diagonal_initialisation():
    layer = s5.S5Layer(H=2, P=12, blocks=3)
    Lam, V = layer.eigenbasis()
    assert Lam.shape == (6,) and V.shape == (12, 6)
    A = np.kron(np.eye(3), s5.hippo_n(4))
    # the kept eigenpairs and their conjugates diagonalise the block-diagonal HiPPO-N matrix
    np.testing.assert_allclose(A @ V, V * Lam, atol=1e-10)
    np.testing.assert_allclose(V.conj().T @ V, np.eye(6), atol=1e-10)


def test_zoh_and_bilinear_against_dense_system():
    """Diagonal discretisation mapped back by V equals the dense HiPPO-N discretisation."""
    N, H, delta = 8, 3, 0.37
    A = s5.hippo_n(N)
    Lam, V = s5.hippo_n_diagonal(N, conj_sym=False)
    B = np.random.default_rng(0).normal(size=(N, H))
    Bt = V.conj().T @ B
    # ZOH: expm of the augmented matrix [[A, B], [0, 0]] delta gives A_bar and B_bar together
    aug = np.zeros((N + H, N + H))
    aug[:N, :N], aug[:N, N:] = A * delta, B * delta
    E = np.asarray(expm(jnp.asarray(aug)))
    Lbar, gamma = s5.discretize(jnp.asarray(Lam), delta, "zoh")
    np.testing.assert_allclose((V * np.asarray(Lbar)) @ V.conj().T, E[:N, :N], atol=1e-10)
    np.testing.assert_allclose(V @ (np.asarray(gamma)[:, None] * Bt), E[:N, N:], atol=1e-10)
    # bilinear: (I - A d/2)^{-1} (I + A d/2) and (I - A d/2)^{-1} d B
    Lbar, gamma = s5.discretize(jnp.asarray(Lam), delta, "bilinear")
    M = np.eye(N) - A * delta / 2
    np.testing.assert_allclose((V * np.asarray(Lbar)) @ V.conj().T,
                               np.linalg.solve(M, np.eye(N) + A * delta / 2), atol=1e-10)
    np.testing.assert_allclose(V @ (np.asarray(gamma)[:, None] * Bt), np.linalg.solve(M, delta * B), atol=1e-10)


def test_per_state_steps_against_complex_expm():
    """Per-state time steps: expm([[diag(Lambda Delta), diag(Delta) B], [0, 0]])."""
    layer = s5.S5Layer(H=3, P=8, dt_min=0.01, dt_max=2.0)
    p = layer.init(jax.random.PRNGKey(0), jnp.float64)
    Lam = np.asarray(p["Lambda"][:, 0] + 1j * p["Lambda"][:, 1])
    B = np.asarray(p["B"][..., 0] + 1j * p["B"][..., 1])
    d = np.exp(np.asarray(p["log_step"])) * 1.7
    Pp, H = B.shape
    aug = np.zeros((Pp + H, Pp + H), complex)
    aug[:Pp, :Pp] = np.diag(Lam * d)
    aug[:Pp, Pp:] = d[:, None] * B
    E = np.asarray(expm(jnp.asarray(aug)))
    Lbar, gamma = s5.discretize(jnp.asarray(Lam), jnp.asarray(d), "zoh")
    np.testing.assert_allclose(np.diag(E[:Pp, :Pp]), np.asarray(Lbar), atol=1e-12)
    np.testing.assert_allclose(E[:Pp, Pp:], np.asarray(gamma)[:, None] * B, atol=1e-12)


@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
def test_irregular_steps_equal_dense_per_step_discretisation(discretization):
    """Each step discretised with its own interval via the dense (L, P', H) B_bar, built
    here on purpose, matches the O(L P') path of the layer."""
    layer = s5.S5Layer(H=3, P=8, discretization=discretization, dt_min=0.05, dt_max=0.5)
    p = layer.init(jax.random.PRNGKey(1), jnp.float64)
    L = 30
    u = np.asarray(jax.random.normal(jax.random.PRNGKey(2), (L, 3), jnp.float64))
    dt = np.asarray(jax.random.uniform(jax.random.PRNGKey(3), (L,), jnp.float64, 0.01, 4.0))
    Lam = np.asarray(p["Lambda"][:, 0] + 1j * p["Lambda"][:, 1])
    B = np.asarray(p["B"][..., 0] + 1j * p["B"][..., 1])
    C = np.asarray(p["C"][0, ..., 0] + 1j * p["C"][0, ..., 1])
    Pp, H = B.shape
    step = np.exp(np.asarray(p["log_step"]))
    x = np.zeros(Pp, complex)
    ys = []
    for k in range(L):
        A = np.diag(Lam * step * dt[k])
        if discretization == "zoh":
            aug = np.zeros((Pp + H, Pp + H), complex)
            aug[:Pp, :Pp], aug[:Pp, Pp:] = A, (step * dt[k])[:, None] * B
            E = np.asarray(expm(jnp.asarray(aug)))
            Abar, Bbar = E[:Pp, :Pp], E[:Pp, Pp:]
        else:
            M = np.eye(Pp) - A / 2
            Abar = np.linalg.solve(M, np.eye(Pp) + A / 2)
            Bbar = np.linalg.solve(M, (step * dt[k])[:, None] * B)
        x = Abar @ x + Bbar @ u[k]
        ys.append(2 * (C @ x).real + np.asarray(p["D"]) * u[k])
    np.testing.assert_allclose(np.asarray(layer(p, jnp.asarray(u), jnp.asarray(dt))), np.array(ys), atol=1e-10)


def _all_avals(jaxpr):
    for eqn in jaxpr.eqns:
        for v in list(eqn.invars) + list(eqn.outvars):
            if hasattr(v, "aval") and hasattr(v.aval, "shape"):
                yield v.aval.shape
        for sub in jax.core.subjaxprs(eqn) if hasattr(jax.core, "subjaxprs") else []:
            yield from _all_avals(sub)
        for val in eqn.params.values():
            for j in val if isinstance(val, (tuple, list)) else [val]:
                if hasattr(j, "jaxpr") and hasattr(j.jaxpr, "eqns"):
                    yield from _all_avals(j.jaxpr)
                elif hasattr(j, "eqns"):
                    yield from _all_avals(j)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_irregular_path_never_allocates_L_P_H(bidirectional):
    L, P, H = 211, 26, 17  # P' = 13; distinct primes make the check unambiguous
    layer = s5.S5Layer(H=H, P=P, bidirectional=bidirectional)
    p = layer.init(jax.random.PRNGKey(0))
    u = jnp.ones((L, H))
    dt = jnp.ones(L)
    limit = L * layer.state_size * H
    for fn in (lambda p, u, dt: layer(p, u, dt),
               jax.grad(lambda p, u, dt: jnp.sum(layer(p, u, dt) ** 2), argnums=(0, 1, 2))):
        jaxpr = jax.make_jaxpr(fn)(p, u, dt).jaxpr
        shapes = list(_all_avals(jaxpr))
        assert len(shapes) > 20
        biggest = max(int(np.prod(s)) for s in shapes)
        assert biggest < limit, (biggest, limit)
    # and the check would catch the naive (L, P', H) discretisation
    naive = jax.make_jaxpr(lambda dt: jnp.exp(dt[:, None, None] * jnp.ones((layer.state_size, H))))(dt)
    assert max(int(np.prod(s)) for s in _all_avals(naive.jaxpr)) >= limit


def test_bad_arguments():
    with pytest.raises(ValueError, match="blocks"):
        s5.S5Layer(H=2, P=10, blocks=3)
    with pytest.raises(ValueError, match="even"):
        s5.S5Layer(H=2, P=6, blocks=2)
    with pytest.raises(ValueError, match="discretization"):
        s5.S5Layer(H=2, P=4, discretization="euler")
    with pytest.raises(ValueError, match="dt_min"):
        s5.S5Layer(H=2, P=4, dt_min=1.0, dt_max=0.1)
    layer = s5.S5Layer(H=2, P=4)
    p = layer.init(jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="u must"):
        layer(p, jnp.ones((5, 3)))
    with pytest.raises(ValueError, match="dt must"):
        layer(p, jnp.ones((5, 2)), jnp.ones(4))
    with pytest.raises(ValueError, match="bidirectional"):
        s5.S5Layer(H=2, P=4, bidirectional=True).step(p, layer.initial_state(), jnp.ones(2))
    with pytest.raises(ValueError, match="activation"):
        s5.S5Model(input_dim=1, output_dim=2, activation="relu")
    with pytest.raises(ValueError, match="pool"):
        s5.S5Model(input_dim=1, output_dim=2, pool="max")
    with pytest.raises(ValueError, match="loss"):
        m = s5.S5Model(input_dim=1, output_dim=2)
        s5.fit(m, m.init(jax.random.PRNGKey(0)), jnp.ones((4, 3, 1)), jnp.zeros(4, int), loss="hinge")


# ------------------------------------------------------------------ learning


def digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    X = (d.images.reshape(-1, 64, 1) / 16.0).astype(np.float32)
    return train_test_split(X, d.target, test_size=0.2, random_state=0, stratify=d.target)


def test_digits_smoke_loss_decreases():
    Xtr, _, ytr, _ = digits()
    X, y = jnp.asarray(Xtr[:256]), jnp.asarray(ytr[:256])
    model = s5.S5Model(input_dim=1, output_dim=10, H=16, P=16, n_layers=1, dt_min=0.01, dt_max=0.5)
    params = model.init(jax.random.PRNGKey(0))

    def loss(p):
        return float(jnp.mean(optax.softmax_cross_entropy_with_integer_labels(model(p, X), y)))

    trained, hist = s5.fit(model, params, X, y, epochs=5, batch_size=32, lr=2e-2, ssm_lr=1e-2,
                           key=jax.random.PRNGKey(1))
    assert len(hist) == 5
    assert loss(trained) < loss(params) - 0.03


DIGITS_MODEL = dict(input_dim=1, output_dim=10, H=64, P=64, n_layers=3, bidirectional=True,
                    activation="half_glu", dropout=0.1, pool="mean", parallel=False)


@pytest.mark.slow
def test_digits_reaches_95_percent():
    Xtr, Xte, ytr, yte = digits()
    model = s5.S5Model(**DIGITS_MODEL)
    t0 = time.perf_counter()
    params, _ = s5.fit(model, model.init(jax.random.PRNGKey(0)), jnp.asarray(Xtr), jnp.asarray(ytr),
                       epochs=30, batch_size=32, lr=4e-3, ssm_lr=2e-3, key=jax.random.PRNGKey(1))
    pred = np.asarray(jnp.argmax(jax.jit(model)(params, jnp.asarray(Xte)), -1))
    acc = float(np.mean(pred == yte))
    print(f"digits test accuracy {acc:.4f} after {time.perf_counter() - t0:.0f} s")
    assert acc >= 0.95


@pytest.mark.slow
def test_irregular_task_true_steps_beat_uniform():
    key = jax.random.PRNGKey(0)
    u, dt, y = s5.make_irregular_task(key, 600, 100)
    ut, dtt, yt = s5.make_irregular_task(jax.random.PRNGKey(1), 200, 100)
    model = s5.S5Model(input_dim=1, output_dim=1, H=16, P=16, n_layers=1, pool=None,
                       activation="gelu", dt_min=0.1, dt_max=3.0)
    mse = {}
    for name, d, dtest in (("true", dt, dtt), ("uniform", None, None)):
        params, _ = s5.fit(model, model.init(jax.random.PRNGKey(2)), u, y, dt=d, loss="mse", epochs=40,
                           batch_size=32, lr=5e-3, ssm_lr=5e-3, key=jax.random.PRNGKey(3))
        mse[name] = float(jnp.mean((model(params, ut, dtest) - yt) ** 2))
    print(mse)
    assert mse["true"] < 0.5 * mse["uniform"]
