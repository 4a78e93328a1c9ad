"""Scan kernels against independent truth: brute-force enumeration over all K^T paths and the
dense joint Gaussian of a linear-Gaussian state-space model."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from zoo import scans
from zoo.scans.hmm import scaled_path_ok
from zoo.scans.linalg import UNROLL_MAX_DIM, UNROLL_MAX_DIM_BATCHED

from .truth import brute_force, dense_joint, random_hmm, random_lgssm

jax.config.update("jax_enable_x64", True)


# ------------------------------------------------------------------ HMM brute force


CASES = [(1, 3, False), (5, 2, False), (6, 3, True), (7, 3, False), (7, 2, True)]


@pytest.mark.parametrize("T,K,tv", CASES)
@pytest.mark.parametrize("parallel", [False, True])
def test_hmm_against_enumeration(T, K, tv, parallel):
    rng = np.random.default_rng(T * 10 + K + tv)
    li, lt, ll = random_hmm(rng, T, K, tv)
    paths, lw = brute_force(li, lt, ll)
    logZ = np.logaddexp.reduce(lw)
    post = np.exp(lw - logZ)
    np.testing.assert_allclose(scans.hmm_log_normalizer(li, lt, ll, parallel), logZ, rtol=0, atol=1e-10)
    res = scans.hmm_smoother(li, lt, ll, parallel, pairwise=True)
    marg = np.array([[post[paths[:, t] == k].sum() for k in range(K)] for t in range(T)])
    np.testing.assert_allclose(res.smoothed_probs, marg, atol=1e-10)
    if T > 1:
        pair = np.array(
            [
                [[post[(paths[:, t] == i) & (paths[:, t + 1] == j)].sum() for j in range(K)] for i in range(K)]
                for t in range(T - 1)
            ]
        )
        np.testing.assert_allclose(res.pairwise_probs, pair, atol=1e-10)
    np.testing.assert_array_equal(scans.hmm_viterbi(li, lt, ll, parallel), paths[np.argmax(lw)])
    filt = scans.hmm_filter(li, lt, ll, parallel)
    np.testing.assert_allclose(filt.log_normalizer, logZ, atol=1e-10)
    np.testing.assert_allclose(jnp.sum(filt.pointwise), logZ, atol=1e-10)
    # filtered marginal at the last step equals the smoothed one
    np.testing.assert_allclose(filt.filtered_probs[-1], marg[-1], atol=1e-10)


@pytest.mark.parametrize("parallel", [False, True])
def test_ffbs_frequencies_match_exact_posterior(parallel):
    rng = np.random.default_rng(3)
    T, K = 4, 2
    li, lt, ll = random_hmm(rng, T, K, tv=True)
    ll = ll * 0.5
    paths, lw = brute_force(li, lt, ll)
    post = np.exp(lw - np.logaddexp.reduce(lw))
    n = 20000
    keys = jax.random.split(jax.random.key(0), n)
    draws = jax.jit(jax.vmap(lambda k: scans.hmm_sample(k, li, lt, ll, parallel)))(keys)
    codes = np.asarray(draws) @ (K ** np.arange(T)[::-1])
    counts = np.bincount(codes, minlength=K**T)
    order = paths @ (K ** np.arange(T)[::-1])
    expected = n * post[np.argsort(order)]
    chi2 = stats.chisquare(counts, expected)
    assert chi2.pvalue > 0.001, chi2


def test_hmm_batch_broadcast():
    rng = np.random.default_rng(1)
    li, lt, ll = random_hmm(rng, 6, 3, tv=True, batch=(2,))
    out = scans.hmm_log_normalizer(li, lt, ll)
    assert out.shape == (2,)
    for b in range(2):
        np.testing.assert_allclose(out[b], scans.hmm_log_normalizer(li[b], lt[b], ll[b]), atol=1e-12)
    # fixed transitions shared by a batch of log-likelihoods
    lt_fixed = np.log(rng.dirichlet(np.ones(3), size=3))
    out = scans.hmm_smoother(li, lt_fixed, ll).smoothed_probs
    assert out.shape == (2, 6, 3)
    z = scans.hmm_sample(jax.random.key(1), li, lt_fixed, ll)
    assert z.shape == (2, 6)


@pytest.mark.parametrize("tv", [False, True])
def test_gradients_match_finite_differences(tv):
    rng = np.random.default_rng(7)
    li, lt, ll = random_hmm(rng, 6, 3, tv)
    for parallel in (False, True):
        f = functools.partial(scans.hmm_log_normalizer, parallel=parallel)
        g = jax.grad(f, argnums=(0, 1, 2))(li, lt, ll)
        for arg, grad in zip(range(3), g, strict=True):
            x = [li, lt, ll][arg]
            direction = rng.normal(size=x.shape)
            eps = 1e-6
            args_p = [li, lt, ll]
            args_m = [li, lt, ll]
            args_p[arg] = x + eps * direction
            args_m[arg] = x - eps * direction
            fd = (f(*args_p) - f(*args_m)) / (2 * eps)
            np.testing.assert_allclose(np.sum(grad * direction), fd, rtol=1e-6, atol=1e-8)
    # the gradient with respect to log_lik is the smoothed marginal
    np.testing.assert_allclose(
        jax.grad(scans.hmm_log_normalizer, argnums=2)(li, lt, ll),
        scans.hmm_smoother(li, lt, ll).smoothed_probs,
        atol=1e-10,
    )


def _enumerated_log_normalizer(li, lt, ll):
    """log Z by summing over all K^T paths, written in JAX so that it can be differentiated."""
    T, K = ll.shape
    paths = jnp.asarray(list(itertools.product(range(K), repeat=T)))
    steps = jnp.arange(1, T)
    trans = lt[paths[:, :-1], paths[:, 1:]] if lt.ndim == 2 else lt[steps - 1, paths[:, :-1], paths[:, 1:]]
    lw = li[paths[:, 0]] + jnp.sum(trans, -1) + jnp.sum(ll[jnp.arange(T), paths], -1)
    return jax.scipy.special.logsumexp(lw)


@pytest.mark.parametrize("tv", [False, True])
@pytest.mark.parametrize("path", ["scaled", "exact"])
def test_log_normalizer_derivatives_equal_enumeration(tv, path):
    """The sequential log normalizer differentiates by its posterior expectations (a custom JVP
    rule), on the fast scaled path and on the exact log-space path (taken when a transition is
    extreme relative to its column); forward mode, reverse mode, second order, batches and vmap
    must all equal the derivatives of the enumerated sum."""
    rng = np.random.default_rng(11 + tv)
    args = [jnp.asarray(a) for a in random_hmm(rng, 6, 3, tv)]
    if path == "exact":
        args[1] = args[1].at[..., 0, 1].set(-50.0)
    args = tuple(args)
    assert bool(scaled_path_ok(args[1])) == (path == "scaled")
    dirs = tuple(jnp.asarray(rng.normal(size=a.shape)) for a in args)
    ours, truth = scans.hmm_log_normalizer, _enumerated_log_normalizer
    np.testing.assert_allclose(jax.jvp(ours, args, dirs)[1], jax.jvp(truth, args, dirs)[1], rtol=1e-10)
    g_ours = jax.grad(ours, argnums=(0, 1, 2))(*args)
    g_true = jax.grad(truth, argnums=(0, 1, 2))(*args)
    for a, b in zip(g_ours, g_true, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)

    def hvp(f):  # Hessian-vector product: forward over reverse
        return jax.jvp(lambda *a: jax.grad(f, argnums=(0, 1, 2))(*a), args, dirs)[1]

    for a, b in zip(hvp(ours), hvp(truth), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)
    # a batch of sequences under vmap: each gradient equals its own enumeration's
    lls = jnp.stack([args[2], args[2] + 0.3 * jnp.asarray(rng.normal(size=args[2].shape))])
    g_batch = jax.vmap(jax.grad(ours, argnums=2), in_axes=(None, None, 0))(args[0], args[1], lls)
    for n in range(2):
        np.testing.assert_allclose(g_batch[n], jax.grad(truth, argnums=2)(args[0], args[1], lls[n]),
                                   rtol=1e-9, atol=1e-12)
    # the same batch as leading dimensions, differentiated through the summed log normalizers
    g_lead = jax.grad(lambda a, b, c: jnp.sum(ours(a, b, c)), argnums=(0, 1, 2))(args[0], args[1], lls)
    g_sum = [sum(g) for g in zip(*(jax.grad(truth, argnums=(0, 1, 2))(args[0], args[1], lls[n])
                                   for n in range(2)), strict=True)]
    np.testing.assert_allclose(g_lead[0], g_sum[0], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(g_lead[1], g_sum[1], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(g_lead[2], g_batch, rtol=1e-9, atol=1e-12)


def test_float32_long_sequence_no_nan():
    jax.config.update("jax_enable_x64", False)
    try:
        T, K = 100_000, 10
        key = jax.random.key(0)
        k1, k2, k3 = jax.random.split(key, 3)
        li = jax.nn.log_softmax(jax.random.normal(k1, (K,)))
        lt = jax.nn.log_softmax(3 * jax.random.normal(k2, (K, K)), axis=-1)
        ll = 20 * jax.random.normal(k3, (T, K))
        values = {}
        for parallel in (False, True):
            f = functools.partial(scans.hmm_log_normalizer, parallel=parallel)
            val, grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))(li, lt, ll)
            values[parallel] = val
            assert val.dtype == jnp.float32
            assert np.isfinite(val)
            assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)
        # the two agree to float32 relative precision
        np.testing.assert_allclose(values[True], values[False], rtol=1e-4)
        probs = scans.hmm_smoother(li, lt, ll).smoothed_probs
        assert bool(jnp.all(jnp.isfinite(probs)))
        np.testing.assert_allclose(jnp.sum(probs, -1), 1.0, atol=1e-4)
    finally:
        jax.config.update("jax_enable_x64", True)


def test_float32_matches_float64():
    rng = np.random.default_rng(11)
    li, lt, ll = random_hmm(rng, 50, 4, tv=True)
    ref = scans.hmm_log_normalizer(li, lt, ll)
    for parallel in (False, True):
        v32 = scans.hmm_log_normalizer(*(x.astype(np.float32) for x in (li, lt, ll)), parallel=parallel)
        assert v32.dtype == jnp.float32
        np.testing.assert_allclose(v32, ref, rtol=1e-5)


def test_hmm_bad_input():
    rng = np.random.default_rng(0)
    li, lt, ll = random_hmm(rng, 5, 3, tv=False)
    with pytest.raises(ValueError, match="log_trans"):
        scans.hmm_log_normalizer(li, lt[:2, :2], ll)
    with pytest.raises(ValueError, match="log_trans"):
        scans.hmm_log_normalizer(li, np.zeros((3, 3, 3)), ll)  # wrong T-1
    with pytest.raises(ValueError, match="log_init"):
        scans.hmm_log_normalizer(li[:2], lt, ll)
    with pytest.raises(ValueError, match="log_init"):
        scans.hmm_log_normalizer(np.array([np.nan, 0.0, 0.0]), lt, ll)
    with pytest.raises(ValueError, match="log_lik"):
        scans.hmm_log_normalizer(li, lt, ll[0])


# ------------------------------------------------------------------ linear recurrence


@pytest.mark.parametrize("kind", ["diagonal", "dense", "constant"])
@pytest.mark.parametrize("reverse", [False, True])
def test_linear_recurrence_matches_loop(kind, reverse):
    rng = np.random.default_rng(2)
    T, D = 37, 3
    dense = kind == "dense"
    if dense:
        A = rng.normal(size=(T, D, D)) * 0.5
    elif kind == "diagonal":
        A = rng.normal(size=(T, D)) + 1j * rng.normal(size=(T, D))
    else:  # one diagonal for every step, inside the unit circle
        A = 0.9 * np.exp(1j * rng.uniform(0, np.pi, D))
    At = np.broadcast_to(A, (T, D)) if kind == "constant" else A
    b = rng.normal(size=(T, D))
    x0 = rng.normal(size=D)
    x = x0.astype(A.dtype)
    ref = np.zeros((T, D), A.dtype)
    order = range(T - 1, -1, -1) if reverse else range(T)
    for t in order:
        x = (At[t] @ x if dense else At[t] * x) + b[t]
        ref[t] = x
    for parallel in (False, True):
        out = scans.linear_recurrence(A, b, x0, parallel=parallel, reverse=reverse)
        np.testing.assert_allclose(out, ref, atol=1e-10)
    if kind == "constant":  # the gradient through the closed-over diagonal equals the broadcast one's
        def loss(a, constant):
            a = a if constant else jnp.broadcast_to(a, (T, D))
            return jnp.sum(jnp.abs(scans.linear_recurrence(a, b, x0, parallel=False, reverse=reverse)) ** 2)

        a = jnp.asarray(A)
        np.testing.assert_allclose(jax.grad(loss)(a, True), jax.grad(loss)(a, False), rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------ Kalman against dense Gaussians


@pytest.mark.parametrize("tv", [False, True])
@pytest.mark.parametrize("parallel", [False, True])
def test_kalman_against_dense_gaussian(tv, parallel):
    rng = np.random.default_rng(5 + tv)
    T, D, N = 7, 2, 3
    params = random_lgssm(rng, T, D, N, tv)
    mx, Cx, my, Cy, Cxy = dense_joint(T, *params)
    y = rng.multivariate_normal(my, Cy).reshape(T, N)
    y[2, :] = np.nan  # a missing row
    y[4, 1] = np.nan  # a missing entry
    obs = ~np.isnan(y.reshape(-1))
    yo = y.reshape(-1)[obs]
    ll = stats.multivariate_normal(my[obs], Cy[np.ix_(obs, obs)]).logpdf(yo)
    gain = np.linalg.solve(Cy[np.ix_(obs, obs)], Cxy[:, obs].T).T
    post_mean = mx + gain @ (yo - my[obs])
    post_cov = Cx - gain @ Cxy[:, obs].T

    res = scans.kalman_smoother(y, *params, parallel=parallel)
    np.testing.assert_allclose(res.log_likelihood, ll, atol=1e-8)
    np.testing.assert_allclose(res.smoothed_means, post_mean.reshape(T, D), atol=1e-8)
    blocks = np.stack([post_cov[t * D : (t + 1) * D, t * D : (t + 1) * D] for t in range(T)])
    np.testing.assert_allclose(res.smoothed_covariances, blocks, atol=1e-8)
    cross = np.stack([post_cov[(t + 1) * D : (t + 2) * D, t * D : (t + 1) * D] for t in range(T - 1)])
    np.testing.assert_allclose(res.smoothed_cross_covariances, cross, atol=1e-8)
    filt = scans.kalman_filter(y, *params, parallel=parallel)
    np.testing.assert_allclose(filt.log_likelihood, ll, atol=1e-8)
    np.testing.assert_allclose(jnp.sum(filt.pointwise), ll, atol=1e-8)
    # the filtered moment at the last step is the smoothed one
    np.testing.assert_allclose(filt.filtered_means[-1], post_mean.reshape(T, D)[-1], atol=1e-8)
    # the filter's first steps equal the dense posterior given only y_1..y_t
    t = 3
    o = obs.copy()
    o[(t + 1) * N :] = False
    g = np.linalg.solve(Cy[np.ix_(o, o)], Cxy[:, o].T).T
    fm = mx + g @ (y.reshape(-1)[o] - my[o])
    np.testing.assert_allclose(filt.filtered_means[t], fm.reshape(T, D)[t], atol=1e-8)


@pytest.mark.parametrize("parallel", [False, True])
def test_kalman_sample_moments(parallel):
    rng = np.random.default_rng(9)
    T, D, N = 5, 2, 2
    params = random_lgssm(rng, T, D, N, tv=False)
    y = rng.normal(size=(T, N))
    y[1, 0] = np.nan
    sm = scans.kalman_smoother(y, *params)
    n = 20000
    keys = jax.random.split(jax.random.key(4), n)
    xs = jax.jit(jax.vmap(lambda k: scans.kalman_sample(k, y, *params, parallel=parallel)))(keys)
    xs = np.asarray(xs)
    se = np.sqrt(np.diagonal(sm.smoothed_covariances, axis1=-1, axis2=-2) / n)
    assert np.all(np.abs(xs.mean(0) - sm.smoothed_means) < 5 * se)
    flat = xs.reshape(n, -1)
    emp_cov = np.cov(flat.T)
    for t in range(T):
        np.testing.assert_allclose(
            emp_cov[t * D : (t + 1) * D, t * D : (t + 1) * D], sm.smoothed_covariances[t], atol=0.05
        )
    # the lag-one cross covariance too (the sampler must get the joint right, not only marginals)
    np.testing.assert_allclose(emp_cov[D : 2 * D, 0:D], sm.smoothed_cross_covariances[0], atol=0.05)


def test_kalman_batch_and_gradients():
    rng = np.random.default_rng(12)
    T, D, N = 6, 2, 2
    m0, P0, F, b, Q, H, d, R = random_lgssm(rng, T, D, N, tv=False)
    y = rng.normal(size=(3, T, N))
    out = scans.kalman_filter(y, m0, P0, F, b, Q, H, d, R)
    assert out.log_likelihood.shape == (3,)
    np.testing.assert_allclose(out.log_likelihood[1], scans.kalman_filter(y[1], m0, P0, F, b, Q, H, d, R).log_likelihood)
    for parallel in (False, True):
        def f(F_, parallel=parallel):
            return scans.kalman_filter(y[0], m0, P0, F_, b, Q, H, d, R, parallel=parallel).log_likelihood

        g = jax.grad(f)(F)
        direction = rng.normal(size=F.shape)
        eps = 1e-6
        fd = (f(F + eps * direction) - f(F - eps * direction)) / (2 * eps)
        np.testing.assert_allclose(np.sum(g * direction), fd, rtol=1e-6)


def test_kalman_long_float32():
    jax.config.update("jax_enable_x64", False)
    try:
        rng = np.random.default_rng(0)
        T, D, N = 100_000, 2, 3
        th = 0.05
        F = 0.999 * np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]], np.float32)
        params = (np.zeros(D, np.float32), np.eye(D, dtype=np.float32), F, np.zeros(D, np.float32),
                  0.01 * np.eye(D, dtype=np.float32), rng.normal(size=(N, D)).astype(np.float32),
                  np.zeros(N, np.float32), 0.1 * np.eye(N, dtype=np.float32))
        y = rng.normal(size=(T, N)).astype(np.float32)
        y[::7] = np.nan
        lls = {}
        for parallel in (False, True):
            res = jax.jit(functools.partial(scans.kalman_smoother, parallel=parallel))(y, *params)
            lls[parallel] = res.log_likelihood
            assert res.log_likelihood.dtype == jnp.float32
            assert np.isfinite(res.log_likelihood)
            assert bool(jnp.all(jnp.isfinite(res.smoothed_means)))
            assert bool(jnp.all(jnp.isfinite(res.smoothed_covariances)))
        np.testing.assert_allclose(lls[True], lls[False], rtol=1e-4)
    finally:
        jax.config.update("jax_enable_x64", True)


def test_kalman_bad_input():
    rng = np.random.default_rng(0)
    m0, P0, F, b, Q, H, d, R = random_lgssm(rng, 4, 2, 3, tv=False)
    y = rng.normal(size=(4, 3))
    with pytest.raises(ValueError, match="F"):
        scans.kalman_filter(y, m0, P0, F[:1], b, Q, H, d, R)
    with pytest.raises(ValueError, match="H"):
        scans.kalman_filter(y[:, :2], m0, P0, F, b, Q, H, d, R)
    with pytest.raises(ValueError, match="P0"):
        scans.kalman_filter(y, m0, P0[:1], F, b, Q, H, d, R)


@pytest.mark.parametrize("D", [1, 3, 4, 5, 11])  # both sides of _UNROLL_MAX_DIM (4) and the batched 12
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_solve_lower_equals_dense_solve(D, dtype):
    """Unrolled forward substitution (small D) and LAPACK (large D) both equal numpy's solve."""
    rng = np.random.default_rng(D)
    L = np.tril(rng.normal(size=(4, D, D))) + 3 * np.eye(D)
    L[..., 0, -1] = 7.0 if D > 1 else L[..., 0, -1]  # the upper triangle is ignored
    B = rng.normal(size=(4, D, 5))
    v = rng.normal(size=(4, D))
    Lt = np.tril(L)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    got = scans.solve_lower(jnp.asarray(L, dtype), jnp.asarray(B, dtype))
    assert got.dtype == dtype and got.shape == B.shape
    np.testing.assert_allclose(got, np.linalg.solve(Lt, B), rtol=tol, atol=tol)
    gv = scans.solve_lower(jnp.asarray(L, dtype), jnp.asarray(v, dtype))
    np.testing.assert_allclose(gv, np.linalg.solve(Lt, v[..., None])[..., 0], rtol=tol, atol=tol)
    # vectors (T, 4, D) broadcast against the four factors, and the gradient through the solve
    R = rng.normal(size=(6, 4, D))
    gb = scans.solve_lower_broadcast(jnp.asarray(L, dtype), jnp.asarray(R, dtype))
    assert gb.dtype == dtype and gb.shape == R.shape
    np.testing.assert_allclose(gb, np.linalg.solve(Lt[None], R[..., None])[..., 0], rtol=tol, atol=tol)
    if dtype == np.float64:
        loss = lambda f: lambda A: jnp.sum(f(A, jnp.asarray(R)) ** 2)  # noqa: E731
        dense = lambda A, r: jnp.linalg.solve(jnp.tril(A)[None], r[..., None])[..., 0]  # noqa: E731
        np.testing.assert_allclose(jax.grad(loss(scans.solve_lower_broadcast))(jnp.asarray(L)),
                                   jax.grad(loss(dense))(jnp.asarray(L)), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("D", [1, 3, 4, 5, 11])  # both sides of _UNROLL_MAX_DIM (4) and the batched 12
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_small_dense_linear_algebra_equals_numpy(D, dtype):
    """Unrolled (small D) and LAPACK (large D) Cholesky, transposed triangular solve, Cholesky solve
    and pivoted general solve all equal numpy; the general solve needs its pivoting (a zero leading
    entry) and its gradient equals that of jnp.linalg.solve."""
    rng = np.random.default_rng(100 + D)
    tol = 2e-4 if dtype == np.float32 else 1e-10
    X = rng.normal(size=(3, D, D))
    S = X @ np.swapaxes(X, -1, -2) + D * np.eye(D)
    B = rng.normal(size=(3, D, 2))
    v = rng.normal(size=(3, D))
    L = np.linalg.cholesky(S)
    for max_unrolled in (UNROLL_MAX_DIM, UNROLL_MAX_DIM_BATCHED):
        got = scans.cholesky(jnp.asarray(S, dtype), max_unrolled)
        assert got.dtype == dtype
        np.testing.assert_allclose(got, L, rtol=tol, atol=tol)
    Lj = jnp.asarray(L, dtype)
    np.testing.assert_allclose(scans.solve_lower_transposed(Lj, jnp.asarray(B, dtype)),
                               np.linalg.solve(np.swapaxes(L, -1, -2), B), rtol=tol, atol=tol)
    np.testing.assert_allclose(scans.cho_solve_lower(Lj, jnp.asarray(v, dtype)),
                               np.linalg.solve(S, v[..., None])[..., 0], rtol=tol, atol=tol)
    A = rng.normal(size=(3, D, D)) + 0.5 * np.eye(D)
    if D > 1:
        A[0, 0, 0] = 0.0  # elimination without row exchanges would divide by zero here
    stol = 1e-3 if dtype == np.float32 else 1e-10  # a general A is less well conditioned than S
    np.testing.assert_allclose(scans.solve(jnp.asarray(A, dtype), jnp.asarray(B, dtype)),
                               np.linalg.solve(A, B), rtol=stol, atol=stol)
    np.testing.assert_allclose(scans.solve(jnp.asarray(A, dtype), jnp.asarray(v, dtype)),
                               np.linalg.solve(A, v[..., None])[..., 0], rtol=stol, atol=stol)
    if dtype == np.float64:
        def loss(solver):
            return lambda a: jnp.sum(jnp.sin(solver(a, jnp.asarray(B))))
        np.testing.assert_allclose(jax.grad(loss(scans.solve))(jnp.asarray(A)),
                                   jax.grad(loss(jnp.linalg.solve))(jnp.asarray(A)), rtol=1e-8, atol=1e-10)
