"""Discrete states of a switching linear-Gaussian model drawn with the path integrated out.

Gibbs sampling of z given the path x crawls where the dynamics noise is small: the path then
nearly determines the states and the states the path. Drawing z from p(z | theta, y), with x
integrated out, removes that coupling. No exact block draw of z from it is tractable (the
Kalman mixture grows as K^T), but its single-site conditionals are: Gerlach, Carter and Kohn
(2000) obtain p(z_t | z_{-t}, theta, y) for all K values of z_t in O(1) per step from

- a forward Kalman filter over the states already updated (z_{<t}, new), and
- a backward information filter over the states still to be updated (z_{>t}, old),

so a systematic sweep t = 1 .. T costs O(T K D^3), like one Kalman filter per state. Each
site is drawn exactly from its conditional, so a sweep leaves p(z | theta, y) invariant.

Site by site, a boundary between two segments moves about one step per sweep (a random walk).
:func:`window_move_states` redraws windows of several steps exactly from their conditional
restricted to one-change-point configurations (a boundary anywhere in the window, a short
segment born or removed), scored from the same forward and backward filters;
:func:`boundary_shift` adds Metropolis moves that shift a whole boundary by several steps,
accepted on the same target (one Kalman filter each).

Model (one trial), as :class:`zoo.distributions.SwitchingLinearDynamics` with non-recurrent
transitions and linear-Gaussian emissions:

    z_1 ~ Cat(exp(log_init)),          z_t | z_{t-1} ~ Cat(exp(log_trans[z_{t-1}])),
    x_1 ~ N(m0[z_1], P0[z_1]),         x_t = A[z_t] x_{t-1} + b_t[z_t] + N(0, Q[z_t]),
    y_t = H x_t + d_t + N(0, diag(r)), NaN entries of y missing.

The backward filter's message is a Gaussian information pair: p(y_{t+1:T} | x_t, z_{t+1:T})
is proportional to exp(-x' Omega_t x / 2 + mu_t' x) (its constant does not depend on z_t). The
conditional of z_t = k is then

    log p(z_t = k | ...) = log_trans[z_{t-1}, k] + log_trans[k, z_{t+1}]
                           + log  integral N(x; m_k, V_k) exp(-x' O x / 2 + u' x) dx + const,

with (m_k, V_k) the one-step prediction of x_t under state k, O = Omega_t + H' W_t H and
u = mu_t + H' W_t (y_t - d_t) (W_t the observed precision). With V_k = L L' and
S = I + L' O L the integral is
|S|^{-1/2} exp(-m' O m / 2 + u' m + |S^{-1/2} L' (u - O m)|^2 / 2): Cholesky factors and
triangular solves only, no inverse of a covariance.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from zoo.polya_gamma import sample_pg1, stick_breaking_factor
from zoo.scans.linalg import cholesky, matmul, matvec, solve_lower
from zoo.scans.linalg import transpose as tr

__all__ = ["single_move_states", "window_move_states", "sweep_states", "window_sweep_states",
           "emission_information", "boundary_shift", "augmented_sweep_states",
           "candidate_transition_information"]


def _sym(M):
    return 0.5 * (M + tr(M))


def emission_information(y, H, d, r, mask=None):
    """The observations as information about x_t: J_t = H' W_t H and h_t = H' W_t (y_t - d_t).

    Parameters
    ----------
    y : array (T, N)
        NaN entries are missing.
    H : array (N, D)
    d : array (N,) or (T, N)
    r : array (N,)
        Emission noise variances.
    mask : bool array (T,), optional
        Steps that exist; padded steps carry no information.

    Returns
    -------
    J : array (T, D, D)
    h : array (T, D)
    """
    observed = jnp.isfinite(y)
    if mask is not None:
        observed = observed & mask[:, None]
    w = jnp.where(observed, 1.0 / r, 0.0)
    resid = jnp.where(observed, y - d, 0.0)
    J = jnp.einsum("ni,tn,nj->tij", H, w, H)
    h = jnp.einsum("ni,tn->ti", H, w * resid)
    return J, h


# The scans below run once per time step on D x D blocks with D a handful: the unrolled
# small-matrix routines of zoo.scans.linalg replace LAPACK calls, whose per-call overhead
# dominates at these sizes (about 5x faster per sweep at D = 2, K = 4).


def _backward_messages(states, J, h, A, b, Q_tril, unroll):
    """Omega_t, mu_t (t = 1 .. T) of p(y_{t+1:T} | x_t, z_{t+1:T}); zero at t = T."""
    T, D = h.shape
    eye = jnp.eye(D, dtype=h.dtype)

    def step(carry, inp):
        Om, mu = carry
        Jt, ht, k, bt = inp
        O, u = Om + Jt, mu + ht  # information about x_t from y_{t:T}
        Lq = Q_tril[k]
        G = matmul(tr(Lq), O)
        Ls = cholesky(eye + matmul(G, Lq))
        W = solve_lower(Ls, G)
        v = solve_lower(Ls, matvec(tr(Lq), u))
        # integrate x_t ~ N(A x_{t-1} + b, Q) against exp(-x' O x / 2 + u' x):
        # (O - O M O, u - O M u) with M = (Q^-1 + O)^-1 = Lq S^-1 Lq'
        Jn = _sym(O - matmul(tr(W), W))
        hn = u - matvec(tr(W), v)
        A_k, b_k = A[k], bt[k]
        return (_sym(matmul(matmul(tr(A_k), Jn), A_k)), matvec(tr(A_k), hn - matvec(Jn, b_k))), (Om, mu)

    init = (jnp.zeros((D, D), h.dtype), jnp.zeros(D, h.dtype))
    (Om0, mu0), (Om, mu) = lax.scan(step, init, (J[1:], h[1:], states[1:], b[1:]), reverse=True,
                                    unroll=unroll)
    return jnp.concatenate([Om0[None], Om]), jnp.concatenate([mu0[None], mu])


def _log_integral(m, L, O, u):
    """log of the integral of N(x; m, L L') exp(-x' O x / 2 + u' x) over x, batched over the
    leading axes of ``m`` (..., D) and ``L`` (..., D, D)."""
    D = m.shape[-1]
    Ls = cholesky(jnp.eye(D, dtype=m.dtype) + matmul(matmul(tr(L), O), L))
    Om = matvec(O, m)
    g = solve_lower(Ls, matvec(tr(L), u - Om))
    return (-jnp.sum(jnp.log(jnp.diagonal(Ls, axis1=-2, axis2=-1)), -1) - 0.5 * jnp.sum(m * Om, -1)
            + jnp.sum(u * m, -1) + 0.5 * jnp.sum(g * g, -1))


def _update(m, L, Jt, ht):
    """Condition N(m, L L') on the information (Jt, ht): the filtered mean and covariance."""
    D = m.shape[-1]
    Ls = cholesky(jnp.eye(D, dtype=m.dtype) + matmul(matmul(tr(L), Jt), L))
    B = solve_lower(Ls, tr(L))  # S^{-1/2} L'
    P = matmul(tr(B), B)  # L S^-1 L'
    return m + matvec(P, ht - matvec(Jt, m)), _sym(P)


def _filters_of_trial(states, y, A, b, Q_tril, H, d, r, mask, unroll, next_factors=None):
    """What the state moves of one trial share: the working dtype, offsets (T, K, D), int32
    states, the present steps, the emission information (J, h) and the backward messages
    (Omega, mu) of the current states (with ``next_factors`` (J, h) on each x_t, the backward
    messages also carry the transitions' factors under the current states)."""
    T, D = y.shape[0], A.shape[-1]
    K = A.shape[0]
    dtype = jnp.result_type(A, y, jnp.float32)
    b = jnp.broadcast_to(b, (T, K, D)).astype(dtype)
    states = jnp.asarray(states, jnp.int32)
    present = jnp.ones(T, bool) if mask is None else jnp.asarray(mask, bool)
    J, h = emission_information(y.astype(dtype), H, d, r, present)
    Jb, hb = (J, h) if next_factors is None else (J + next_factors[0], h + next_factors[1])
    Om, mu = _backward_messages(states, Jb, hb, A, b, Q_tril, unroll)
    return dtype, b, states, present, J, h, Om, mu


def _next_transition_information(transition_info, states):
    """The factors on each x_t of the transition out of t under the current z_{t+1} (zero at
    the last step), from ``transition_info`` (J (T, K, D, D), h (T, K, D), c (T, K)), whose row
    t holds the factor on x_{t-1} of the transition into t for every state k."""
    Jtr, htr, _ = transition_info
    nxt = states[1:]
    J = jnp.take_along_axis(Jtr[1:], nxt[:, None, None, None], 1)[:, 0]
    h = jnp.take_along_axis(htr[1:], nxt[:, None, None], 1)[:, 0]
    return (jnp.concatenate([J, jnp.zeros_like(J[:1])]), jnp.concatenate([h, jnp.zeros_like(h[:1])]))


def single_move_states(key, states, y, log_init, log_trans, A, b, Q_tril, m0, P0_tril, H, d, r,
                       mask=None, unroll: int = 4, transition_info=None, refresh=None):
    """One systematic sweep of z_t ~ p(z_t | z_{-t}, theta, y), t = 1 .. T, path integrated out.

    Parameters
    ----------
    key : jax.random key
    states : int array (T,)
        The current states (z_{>t} of each conditional).
    y : array (T, N)
        Observations; NaN entries are missing.
    log_init : array (K,)
    log_trans : array (K, K)
        Log transition probabilities (rows: from).
    A : array (K, D, D)
    b : array (K, D) or (T, K, D)
        Offsets; row t of a time-varying one is the offset of the step into t.
    Q_tril : array (K, D, D)
        Cholesky factors of the dynamics noise covariances.
    m0 : array (K, D)
    P0_tril : array (K, D, D)
        Cholesky factors of the initial covariances.
    H : array (N, D)
    d : array (N,) or (T, N)
    r : array (N,)
        Emission noise variances.
    mask : bool array (T,), optional
        Steps that exist (a trial padded at its end): padded steps add nothing.
    unroll : int
        Time steps per iteration of the compiled loops (fewer loop iterations of tiny bodies).
    transition_info : tuple of arrays (T, K, D, D), (T, K, D), (T, K), optional
        Transitions that depend on the path through Gaussian factors (Polya-gamma-augmented
        stick-breaking transitions, :meth:`zoo.distributions.SwitchingLinearDynamics.
        transition_information`): row t (t >= 1) holds, for every state k, the factor
        exp(-x' J x / 2 + h' x + c) on x_{t-1} of the transition into t with z_t = k (row 0 is
        not used). The factor of z_t = k then enters the filtered x_{t-1} before the prediction
        of x_t; pass ``log_trans`` zeros for transitions with no Markov part.
    refresh : tuple of arrays (K-1, D), (T, K-1), (T, K-1), optional
        (R, r, omega) of stick-breaking transitions (row t: the transition into t; row 0 not
        used), with ``transition_info`` computed from this omega. Each site then moves (z_t,
        omega_t) together: every state k other than the current one gets fresh Polya-gamma
        variables omega^(k) ~ PG(1, nu-hat) on the sticks it reaches (PG(1, 0) on the others),
        nu-hat = R m + r_t from the filtered mean m of x_{t-1}, which depends on neither z_t nor
        omega_t; the current state keeps its omega_t; k is drawn with probability proportional
        to p(z_t = k, omega^(k) | rest) / q(omega^(k) | k). That is a Gibbs step on an extended
        space whose marginal is the target (the PG(1, 0) densities cancel, leaving the tilts
        cosh(c / 2) exp(-c^2 omega / 2)). Without it, z_t moves given the current omega_t, which
        encodes where x_{t-1} was relative to each regime boundary and holds z_t there.

    Returns
    -------
    states : int32 array (T,)
        The updated states.
    log_conditionals : array (T, K)
        Normalised log p(z_t = k | new z_{<t}, old z_{>t}, theta, y) used at each site (with
        ``refresh``: of the extended-space step).
    omega : array (T, K-1)
        With ``refresh`` only: the new omega (row 0 unchanged).
    """
    T, D = y.shape[0], A.shape[-1]
    K = log_init.shape[0]
    states = jnp.asarray(states, jnp.int32)
    # the factors on x_t of the transition out of t under the old z_{t+1}: the site sees them
    # through its backward message; the forward filter leaves them out (the next site scores them)
    next_factors = None if transition_info is None else _next_transition_information(transition_info, states)
    dtype, b, states, present, J, h, Om, mu = _filters_of_trial(states, y, A, b, Q_tril, H, d, r, mask,
                                                                unroll, next_factors)
    # transitions into t (from the new z_{t-1}) and out of t (to the old z_{t+1}); padded steps
    # add no transition terms
    into_ok = present
    out_ok = jnp.concatenate([present[1:], jnp.zeros(1, bool)])
    nxt = jnp.concatenate([states[1:], states[-1:]])
    if transition_info is None:
        Jo, ho = J, h
        Jtr, htr, ctr = (jnp.zeros((T, K, D, D), dtype), jnp.zeros((T, K, D), dtype),
                         jnp.zeros((T, K), dtype))
    else:
        Jo, ho = J + next_factors[0], h + next_factors[1]
        Jtr, htr, ctr = (a.astype(dtype) for a in transition_info)
    augmented = transition_info is not None
    if refresh is not None:
        R_sb, r_sb, omega = (jnp.asarray(a, dtype) for a in refresh)
        key, k_omega = jax.random.split(key)
        omega_keys = jax.random.split(k_omega, T)
        cand = jnp.arange(K)
        reaches = cand[:, None] >= jnp.arange(K - 1)  # (K, K-1)
    else:
        r_sb = omega = jnp.zeros((T, 0), dtype)
        omega_keys = jax.random.split(key, T)

    Q = matmul(Q_tril, tr(Q_tril))
    # Gumbel noise for every site at once: argmax(logits + g) is a categorical draw
    gumbel = jax.random.gumbel(key, (T, K), dtype)
    first = jnp.arange(T) == 0

    def refreshed(m, z_now, into_t, r_t, om_t, k_t):
        # fresh omega for every state but the current one, and each state's factor and tilt
        c = jnp.where(reaches, (R_sb @ m + r_t)[None, :], 0.0)  # (K, K-1)
        om = jnp.where((cand == z_now)[:, None], om_t[None, :], sample_pg1(k_t, c))
        Jk, hk, ck = stick_breaking_factor(R_sb, r_t, om, cand, jnp.broadcast_to(into_t, (K,)))
        tilt = jnp.sum(jnp.where(reaches, jnp.logaddexp(0.5 * c, -0.5 * c) - jnp.log(2.0) - 0.5 * c * c * om,
                                 0.0), -1)
        return Jk, hk, ck, om, jnp.where(into_t, tilt, 0.0)

    def step(carry, inp):
        m, P, z_prev = carry
        O, u, Jt, ht, bt, z_next, into_t, out_t, g, t0, Jk, hk, ck, z_now, r_t, om_t, k_t = inp
        om = tilt = None
        if refresh is not None:
            Jk, hk, ck, om, tilt = refreshed(m, z_now, into_t & ~t0, r_t, om_t, k_t)
        if augmented:
            # the transition into t with z_t = k informs x_{t-1}: condition the filter on it
            Lp = jnp.broadcast_to(cholesky(P), (K, D, D))
            mp = jnp.broadcast_to(m, (K, D))
            lt = jnp.where(t0 | ~into_t, 0.0, _log_integral(mp, Lp, Jk, hk) + ck)
            mk, Pk = jax.vmap(_update)(mp, Lp, Jk, hk)
        else:
            lt, mk, Pk = 0.0, m, P
        # one-step predictions of x_t under every state k; the initial distribution at t = 0
        means = jnp.where(t0, m0, matvec(A, mk) + bt)
        L = jnp.where(t0, P0_tril, cholesky(_sym(matmul(matmul(A, Pk), tr(A))) + Q))
        ll = _log_integral(means, L, O, u) + lt
        if refresh is not None:
            ll = ll - tilt
        into = jnp.where(t0, log_init, log_trans[z_prev])
        logits = ll + jnp.where(into_t, into, 0.0) + jnp.where(out_t, log_trans[:, z_next], 0.0)
        logits = jax.nn.log_softmax(logits)
        k = jnp.argmax(logits + g).astype(jnp.int32)
        m_f, P_f = _update(means[k], L[k], Jt, ht)
        om_new = om_t if refresh is None else om[k]
        return (m_f, P_f, k), (k, logits, om_new)

    init = (jnp.zeros(D, dtype), jnp.eye(D, dtype=dtype), jnp.int32(0))
    xs = (Om + Jo, mu + ho, J, h, b, nxt, into_ok, out_ok, gumbel, first, Jtr, htr, ctr, states, r_sb, omega,
          omega_keys)
    _, (new, logits, omega_new) = lax.scan(step, init, xs, unroll=unroll)
    if refresh is not None:
        return new, logits, omega_new
    return new, logits


def _map_trials(fn, key, dynamics, states, y, H, d, R, **per_trial):
    """Apply ``fn(key, states, y, log_init, log_trans, A, b, Q_tril, m0, P0_tril, H, d, r, mask)``
    (one trial) to a switching path's trials; ``per_trial`` keywords (``transition_info``,
    ``refresh``: tuples of arrays with batch_shape in front) go to ``fn`` trial by trial."""
    if dynamics.R is not None and per_trial.get("transition_info") is None:
        raise ValueError("dynamics: non-recurrent transitions needed (dynamics.R is None): with "
                         "recurrent ones, x given z is not Gaussian and cannot be integrated out")
    if jnp.ndim(R) != 1:
        raise ValueError(f"R must be the (N,) variances of a diagonal emission covariance; got shape "
                         f"{jnp.shape(R)}")
    batch = dynamics.batch_shape
    T, D = dynamics.event_shape
    K = dynamics.num_states
    mask = dynamics.step_mask
    # recurrent-only transitions: no Markov part, all of it in transition_info
    log_P = jnp.zeros((K, K)) if dynamics.log_P is None else jnp.asarray(dynamics.log_P)
    args = (jnp.asarray(dynamics.log_init), log_P, jnp.asarray(dynamics.A))
    tail = (jnp.asarray(dynamics.scale_tril), jnp.asarray(dynamics.init_mean),
            jnp.asarray(dynamics.init_scale_tril), H)
    if not batch:
        return fn(key, states, y, *args, dynamics.b, *tail, d, R, mask, **per_trial)
    B = batch[0]
    b = jnp.asarray(dynamics.b)
    b = jnp.broadcast_to(b, batch + b.shape[-3:]) if b.ndim > 3 else jnp.broadcast_to(b, (B,) + (
        (T, K, D) if b.ndim == 3 else (K, D)))
    d = jnp.asarray(d)
    d = jnp.broadcast_to(d, batch + (T, H.shape[0])) if d.ndim >= 2 else jnp.broadcast_to(d, (B, H.shape[0]))
    mask = jnp.ones(batch + (T,), bool) if mask is None else jnp.broadcast_to(mask, batch + (T,))

    def one(k, z, yy, bb, dd, mm, extra):
        return fn(k, z, yy, *args, bb, *tail, dd, R, mm, **extra)

    return jax.vmap(one)(jax.random.split(key, B), states, y, b, d, mask, per_trial)


def sweep_states(key, dynamics, states, y, H, d, R):
    """:func:`single_move_states` for a switching path and its linear-Gaussian emission, trials
    mapped.

    Parameters
    ----------
    key : jax.random key
    dynamics : zoo.distributions.SwitchingLinearDynamics
        Non-recurrent transitions (``R is None``); batch_shape () or (B,).
    states : int array batch_shape + (T,)
    y : array batch_shape + (T, N)
        NaN entries are missing.
    H : array (N, D)
    d : array (N,), (T, N) or batch_shape + (T, N)
    R : array (N,)
        Emission noise variances (a diagonal emission covariance).

    Returns
    -------
    int32 array batch_shape + (T,)
    """
    def single(*a, transition_info=None):
        return single_move_states(*a, transition_info=transition_info)[0]

    return _map_trials(single, key, dynamics, states, y, H, d, R)


def candidate_transition_information(dynamics, omega):
    """Every state's Polya-gamma-augmented transition factors, the ``transition_info`` of
    :func:`single_move_states`.

    Parameters
    ----------
    dynamics : zoo.distributions.SwitchingLinearDynamics
        Stick-breaking transitions; batch_shape () or (B,).
    omega : array batch_shape + (T-1, K-1)

    Returns
    -------
    tuple of arrays batch_shape + (T, K, D, D), (T, K, D), (T, K)
        Row t (t >= 1): the factor on x_{t-1} of the transition into t with z_t = k; row 0 zero.
    """
    K = dynamics.num_states
    shape = dynamics.batch_shape + (dynamics.event_shape[0] - 1,)
    per_state = [dynamics.transition_information(jnp.full(shape, k, jnp.int32), omega) for k in range(K)]
    time = len(shape) - 1
    out = []
    for parts in zip(*per_state, strict=True):
        a = jnp.stack(parts, axis=time + 1)  # batch + (T-1, K, ...)
        first = jnp.zeros_like(jax.lax.slice_in_dim(a, 0, 1, axis=time))
        out.append(jnp.concatenate([first, a], axis=time))
    return tuple(out)


def augmented_sweep_states(key, dynamics, omega, states, y, H, d, R):
    """:func:`single_move_states` for a stick-breaking switching path and its Polya-gamma
    variables ``omega`` (batch_shape + (T-1, K-1)): each site moves (z_t, omega_t) together by
    the extended-space Gibbs step of ``refresh``, the path integrated out; other arguments as
    :func:`sweep_states`.

    Returns
    -------
    states : int32 array batch_shape + (T,)
    omega : array batch_shape + (T-1, K-1)
    """
    def single(*a, transition_info=None, refresh=None):
        new, _, om = single_move_states(*a, transition_info=transition_info, refresh=refresh)
        return new, om[1:]

    batch, T = dynamics.batch_shape, dynamics.event_shape[0]
    info = candidate_transition_information(dynamics, omega)
    r = jnp.asarray(dynamics.r)
    r = jnp.broadcast_to(r, batch + (T, r.shape[-1]) if r.ndim == 1 else batch + r.shape[-2:])
    rows = jnp.concatenate([jnp.zeros_like(omega[..., :1, :]), omega], -2)  # row t: into t
    R_sb = jnp.broadcast_to(jnp.asarray(dynamics.R), batch + jnp.shape(dynamics.R))
    return _map_trials(single, key, dynamics, states, y, H, d, R, transition_info=info,
                       refresh=(R_sb, r, rows))


def window_sweep_states(key, dynamics, states, y, H, d, R, length: int = 8):
    """:func:`window_move_states` for a switching path and its linear-Gaussian emission, trials
    mapped; arguments as :func:`sweep_states`, ``length`` the window length.

    Returns
    -------
    int32 array batch_shape + (T,)
    """
    def block(*a, transition_info=None):  # non-recurrent transitions: no transition factors
        return window_move_states(*a, length=int(length))

    return _map_trials(block, key, dynamics, states, y, H, d, R)


def boundary_shift(key, states, log_density, max_shift: int = 8, log_density_value=None):
    """One Metropolis move of a segment boundary of z, exact for the target ``log_density``.

    Single-site updates move a boundary between two segments by about one step per sweep (a
    random walk); this move shifts a uniformly chosen boundary by s steps, |s| uniform in
    1 .. ``max_shift`` with a random sign, relabelling the s steps it passes over, and accepts
    with the Metropolis ratio. Moves that would remove a segment are rejected, so the number of
    boundaries is kept and the proposal is symmetric.

    Parameters
    ----------
    key : jax.random key
    states : int array (..., T)
        Leading axes are trials; boundaries never cross a trial's edge.
    log_density : callable int array (..., T) -> scalar
        log p(z | ...) up to a constant (e.g. log p(theta, z | y) with the path integrated out).
    max_shift : int
    log_density_value : scalar, optional
        ``log_density(states)`` if known.

    Returns
    -------
    states : int array (..., T)
    value : scalar
        ``log_density`` at the returned states.
    accepted : bool scalar
    """
    shape = states.shape
    T = shape[-1]
    rows = states.reshape(-1, T)
    current = log_density(states) if log_density_value is None else log_density_value
    change = (rows[:, 1:] != rows[:, :-1]).ravel()  # boundary before step t + 1 of its trial
    k_pick, k_size, k_sign, k_accept = jax.random.split(key, 4)
    any_boundary = jnp.any(change)
    idx = jax.random.categorical(k_pick, jnp.where(change | ~any_boundary, 0.0, -jnp.inf))
    trial, b = idx // (T - 1), idx % (T - 1) + 1  # z[b - 1] != z[b] in that trial
    size = jax.random.randint(k_size, (), 1, max_shift + 1)
    s = jnp.where(jax.random.bernoulli(k_sign), size, -size)
    row = rows[trial]
    left, right = row[b - 1], row[b]
    t = jnp.arange(T)
    # s > 0: steps b .. b + s - 1 become `left`; the right segment must outlast them (z[b + s]
    # is still `right`). s < 0: steps b + s .. b - 1 become `right`; z[b + s - 1] stays `left`.
    grow_left = (t >= b) & (t < b + s)
    grow_right = (t >= b + s) & (t < b)
    span_ok = jnp.where(s > 0,
                        (b + s <= T - 1) & jnp.all(jnp.where((t >= b) & (t <= b + s), row == right, True)),
                        (b + s - 1 >= 0) & jnp.all(jnp.where((t >= b + s - 1) & (t < b), row == left, True)))
    new_row = jnp.where(grow_left, left, jnp.where(grow_right, right, row))
    proposal = rows.at[trial].set(new_row).reshape(shape)
    value = log_density(proposal)
    log_ratio = jnp.where(jnp.isfinite(value), value - current, -jnp.inf)
    accept = any_boundary & span_ok & (jnp.log(jax.random.uniform(k_accept, (), current.dtype)) < log_ratio)
    return (jnp.where(accept, proposal, states).astype(states.dtype), jnp.where(accept, value, current),
            accept)


def window_move_states(key, states, y, log_init, log_trans, A, b, Q_tril, m0, P0_tril, H, d, r, mask=None,
                       length: int = 16, unroll: int = 4):
    """One sweep of exact block updates of z over windows of ``length`` steps, path integrated out.

    Single-site draws move a boundary one step per sweep, and cannot remove or create a short
    segment whose steps are each unlikely alone; where the posterior of a boundary is wide
    (the start of a last segment that only a few observations support, measured on NASCAR:
    spread over 15 steps, lag-10 autocorrelation 0.3) they crawl. This sweep tiles the trial
    with windows (a random offset each sweep) and draws each window's states, left to right,
    from their exact conditional restricted to a family of configurations:

    - anchored left on a = z_{s-1}: a^j c^(n-j) for every change point j and new state c
      (a boundary anywhere in the window, or a last segment born or removed), or
    - anchored right on e = z_{s+n}: c^j e^(n-j),

    chosen by a coin that does not depend on z (left only at a trial's end, right only at its
    start). The family depends only on the states outside the window, so the families and the
    remaining configurations (each alone) partition the window's configurations; a
    configuration outside its family is kept. A Gibbs draw within the partition's cell leaves
    p(z | theta, y) invariant. Each candidate is scored by a Kalman filter over the window,
    from the forward filter of the states already updated to the backward information filter
    of those not yet updated (as in :func:`single_move_states`).

    Parameters
    ----------
    key : jax.random key
    states, y, log_init, log_trans, A, b, Q_tril, m0, P0_tril, H, d, r, mask, unroll
        As in :func:`single_move_states` (states (T,), y (T, N)).
    length : int
        Window length n >= 2; L (K - 1) + 1 candidates per window.

    Returns
    -------
    int32 array (T,)
        The updated states.
    """
    T, D = y.shape[0], A.shape[-1]
    K, L = log_init.shape[0], int(length)
    if L < 2:
        raise ValueError(f"length must be an integer >= 2; got {length!r}")
    dtype, b, states, present, J, h, Om, mu = _filters_of_trial(states, y, A, b, Q_tril, H, d, r, mask,
                                                                unroll)
    Q = matmul(Q_tril, tr(Q_tril))
    T_eff = jnp.sum(present)  # padding sits at a trial's end
    k_off, k_win = jax.random.split(key)
    offset = jax.random.randint(k_off, (), 0, L)
    num_windows = T // L + 2
    v = jnp.arange(L)
    M = L * (K - 1) + 1  # the family; row M is the current configuration
    j_of = jnp.concatenate([jnp.arange(L * (K - 1)) // (K - 1), jnp.array([L])])
    c_step = jnp.concatenate([jnp.arange(L * (K - 1)) % (K - 1) + 1, jnp.array([0])])

    def window(carry, i):
        z, m, P = carry
        s = offset - L + i * L
        ts = s + v
        tc = jnp.clip(ts, 0, T - 1)
        valid = (ts >= 0) & (ts < T_eff)
        lo, hi = jnp.maximum(-s, 0), jnp.clip(T_eff - s, 0, L)  # valid steps lo .. hi - 1
        has_left, has_right = s > 0, s + L < T_eff
        a, e = z[jnp.clip(s - 1, 0, T - 1)], z[jnp.clip(s + L, 0, T - 1)]
        coin = jax.random.bernoulli(jax.random.fold_in(k_win, i))
        left = has_left & (coin | ~has_right)
        anchor = jnp.where(left, a, e)
        other = ((anchor + c_step) % K).astype(jnp.int32)
        # left: a up to the change point j, then c; right: c before step j + 1, then e
        jj = jnp.where(left, j_of, j_of + 1)
        first, second = jnp.where(left, anchor, other), jnp.where(left, other, anchor)
        family = jnp.where(v[None] < jj[:, None], first[:, None], second[:, None])  # (M, L)
        family = family.at[M - 1].set(anchor)
        in_range = jnp.where(left, (j_of >= lo) & (j_of < hi), (j_of + 1 > lo) & (j_of + 1 <= hi))
        in_range = in_range.at[M - 1].set(True) & (has_left | has_right) & (hi > lo)
        current = z[tc]
        matches = in_range & jnp.all(jnp.where(valid[None], family == current[None], True), axis=1)
        member = jnp.any(matches)
        cand = jnp.concatenate([family.astype(jnp.int32), current[None]])  # (M + 1, L)

        def step(c, inp):
            m_c, P_c, prev, ll = c
            k, t, ok, last = inp
            t0 = t == 0
            mean = jnp.where(t0, m0[k], matvec(A[k], m_c) + b[t, k])
            Lp = jnp.where(t0, P0_tril[k], cholesky(_sym(matmul(matmul(A[k], P_c), tr(A[k]))) + Q[k]))
            O = J[t] + jnp.where(last, Om[t], 0.0)
            u = h[t] + jnp.where(last, mu[t], 0.0)
            into = jnp.where(t0, log_init[k], log_trans[prev, k])
            ll_t = _log_integral(mean, Lp, O, u) + into
            m_f, P_f = _update(mean, Lp, J[t], h[t])
            return (jnp.where(ok, m_f, m_c), jnp.where(ok, P_f, P_c), jnp.where(ok, k, prev),
                    ll + jnp.where(ok, ll_t, 0.0)), None

        init = (jnp.broadcast_to(m, (M + 1, D)), jnp.broadcast_to(P, (M + 1, D, D)),
                jnp.full(M + 1, a, jnp.int32), jnp.zeros(M + 1, dtype))
        last_step = v == hi - 1
        (m_all, P_all, end, ll), _ = lax.scan(step, init, (cand.T, tc, valid, last_step))
        ll = ll + jnp.where(has_right, log_trans[end, e], 0.0)
        logits = jnp.where(jnp.concatenate([in_range, jnp.array([False])]), ll, -jnp.inf)
        pick = jax.random.categorical(jax.random.fold_in(k_win, T + i), logits)
        pick = jnp.where(member, pick, M)
        # steps outside the trial are dropped (a clipped index could overwrite a valid step)
        z = z.at[jnp.where(valid, ts, T)].set(cand[pick], mode="drop")
        return (z, m_all[pick], P_all[pick]), None

    init = (states, jnp.zeros(D, dtype), jnp.eye(D, dtype=dtype))
    (z, _, _), _ = lax.scan(window, init, jnp.arange(num_windows))
    return z
