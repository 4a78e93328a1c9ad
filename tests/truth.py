"""Independent truth for the tests: brute-force enumeration and dense joint Gaussians."""

import itertools

import numpy as np


def random_hmm(rng, T, K, tv, batch=()):
    log_init = np.log(rng.dirichlet(np.ones(K), size=batch))
    shape = batch + ((T - 1,) if tv else ()) + (K,)
    log_trans = np.log(rng.dirichlet(np.ones(K), size=shape))
    log_lik = rng.normal(size=batch + (T, K)) * 2.0
    return log_init, log_trans, log_lik


def brute_force(log_init, log_trans, log_lik):
    """Joint log p(z, y) of every path; returns paths (K^T, T) and log weights (K^T,)."""
    T, K = log_lik.shape
    paths = np.array(list(itertools.product(range(K), repeat=T)))
    lw = np.empty(len(paths))
    for n, z in enumerate(paths):
        s = log_init[z[0]] + log_lik[0, z[0]]
        for t in range(1, T):
            lt = log_trans if log_trans.ndim == 2 else log_trans[t - 1]
            s += lt[z[t - 1], z[t]] + log_lik[t, z[t]]
        lw[n] = s
    return paths, lw


def random_lgssm(rng, T, D, N, tv):
    def rot(n):
        q, _ = np.linalg.qr(rng.normal(size=(n, n)))
        return q

    def spd(n, scale):
        a = rng.normal(size=(n, n))
        return scale * (a @ a.T / n + 0.5 * np.eye(n))

    m0 = rng.normal(size=D)
    P0 = spd(D, 1.0)
    if tv:
        F = np.stack([0.9 * rot(D) for _ in range(T - 1)])
        b = rng.normal(size=(T - 1, D)) * 0.3
        Q = np.stack([spd(D, 0.2) for _ in range(T - 1)])
        H = rng.normal(size=(T, N, D))
        d = rng.normal(size=(T, N))
        R = np.stack([spd(N, 0.3) for _ in range(T)])
    else:
        F, b, Q = 0.9 * rot(D), rng.normal(size=D) * 0.3, spd(D, 0.2)
        H, d, R = rng.normal(size=(N, D)), rng.normal(size=N), spd(N, 0.3)
    return m0, P0, F, b, Q, H, d, R


def dense_joint(T, m0, P0, F, b, Q, H, d, R):
    """Mean and covariance of (x_1..x_T, y_1..y_T) built by propagating x_t = G_t w + c_t."""
    D, N = m0.shape[0], (H.shape[-2])
    get = lambda M, t, fixed_nd: M if M.ndim == fixed_nd else M[t]  # noqa: E731
    nw = T * D
    G = np.zeros((T, D, nw))
    c = np.zeros((T, D))
    L0 = np.linalg.cholesky(P0)
    G[0][:, :D] = L0
    c[0] = m0
    for t in range(1, T):
        Ft, bt, Qt = get(F, t - 1, 2), get(b, t - 1, 1), get(Q, t - 1, 2)
        G[t] = Ft @ G[t - 1]
        G[t][:, t * D : (t + 1) * D] += np.linalg.cholesky(Qt)
        c[t] = Ft @ c[t - 1] + bt
    Gx = G.reshape(T * D, nw)
    cov_x = Gx @ Gx.T
    mean_x = c.reshape(-1)
    Hb = np.zeros((T * N, T * D))
    Rb = np.zeros((T * N, T * N))
    db = np.zeros(T * N)
    for t in range(T):
        Hb[t * N : (t + 1) * N, t * D : (t + 1) * D] = get(H, t, 2)
        Rb[t * N : (t + 1) * N, t * N : (t + 1) * N] = get(R, t, 2)
        db[t * N : (t + 1) * N] = get(d, t, 1)
    mean_y = Hb @ mean_x + db
    cov_y = Hb @ cov_x @ Hb.T + Rb
    cov_xy = cov_x @ Hb.T
    return mean_x, cov_x, mean_y, cov_y, cov_xy
