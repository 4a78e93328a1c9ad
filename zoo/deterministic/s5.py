"""The S5 layer (Smith, Warrington & Linderman, ICLR 2023) and a small sequence model built from it.

Written in plain JAX (parameters are dicts of arrays, structure is a frozen dataclass, every
method is a pure function of the parameters) and trained with optax. We add no NN library:
the layer is a few array expressions, the model a handful of dense layers and norms, and a
plain pytree keeps the project free of a dependency and of mutable module state.

The layer. Input u_k (H,), complex diagonal state x_k (P',). Continuous time:
x' = Lambda x + B u, y = C x + D u, with Lambda the eigenvalues of the HiPPO-N matrix
(block-diagonal, ``blocks`` = J blocks of size P / J), B = V^H B_real and C = C_real V in the
eigenbasis V. With conjugate symmetry (default) only the eigenvalues with positive imaginary
part are kept (P' = P / 2) and y = 2 Re(C x) + D u.

Discretisation with per-state time steps Delta = exp(log_step) (P',), times an optional
per-step interval dt_k for irregular sampling (Delta_k = Delta * dt_k):
- ZOH: Lambda_bar = exp(Lambda Delta), B_bar = (Lambda_bar - 1) / Lambda * B
- bilinear: Lambda_bar = (1 + Lambda Delta / 2) / (1 - Lambda Delta / 2),
  B_bar = Delta / (1 - Lambda Delta / 2) * B.
B_bar is never formed per step: B u_k (L, P') is computed once and scaled elementwise by the
(L, P') factors, so irregular sampling costs O(L P') memory, never O(L P' H).

The recurrence x_k = Lambda_bar_k x_{k-1} + B_bar_k u_k runs on
:func:`zoo.scans.linear_recurrence` with complex diagonal A: a parallel associative scan
(``parallel=True``) or a sequential scan (``parallel=False``). The default ``parallel=None``
picks the parallel scan on a GPU or TPU and the sequential one on a CPU, where it is faster
(:func:`zoo.deterministic.elk.parallel_default`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.linalg

from zoo.deterministic.parallel import resolve_parallel
from zoo.scans import linear_recurrence

__all__ = [
    "S5Layer",
    "S5Model",
    "discretize",
    "fit",
    "hippo_n",
    "hippo_n_diagonal",
    "make_irregular_task",
]

Params = dict[str, Any]


# ----------------------------------------------------------------------------------------------
# HiPPO-N initialisation
# ----------------------------------------------------------------------------------------------


def hippo_n(N: int) -> np.ndarray:
    """The normal part of the HiPPO-LegS matrix, A_N = A_LegS + p p^T with p_n = sqrt(n + 1/2).

    Parameters
    ----------
    N : int
        Size.

    Returns
    -------
    ndarray (N, N), float64
        -1/2 on the diagonal plus a skew-symmetric matrix: its eigenvalues are -1/2 + i omega.
    """
    if int(N) < 1:
        raise ValueError(f"N must be a positive integer; got {N}")
    n = np.arange(N)
    s = np.sqrt(2 * n + 1.0)
    legs = -np.tril(np.outer(s, s), -1) - np.diag(n + 1.0)
    p = np.sqrt(n + 0.5)
    return legs + np.outer(p, p)


def hippo_n_diagonal(N: int, conj_sym: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of :func:`hippo_n`: A_N = V diag(Lambda) V^H with V unitary.

    Parameters
    ----------
    N : int
        Size (even when ``conj_sym``).
    conj_sym : bool
        Keep only the N/2 eigenvalues with positive imaginary part (their conjugates are implied).

    Returns
    -------
    Lambda : ndarray (N,) or (N/2,), complex128
        Real parts exactly -1/2.
    V : ndarray (N, N) or (N, N/2), complex128
        The matching eigenvectors (columns).
    """
    if conj_sym and N % 2:
        raise ValueError(f"N must be even with conj_sym=True; got {N}")
    A = hippo_n(N)
    S = A + 0.5 * np.eye(N)  # skew-symmetric
    omega, V = np.linalg.eigh(-1j * S)  # -iS Hermitian: S = V diag(i omega) V^H
    order = np.argsort(-omega)  # positive frequencies first
    omega, V = omega[order], V[:, order]
    if conj_sym:
        omega, V = omega[: N // 2], V[:, : N // 2]
    return -0.5 + 1j * omega, V


def discretize(Lambda: jax.Array, delta: jax.Array, method: str = "zoh") -> tuple[jax.Array, jax.Array]:
    """Diagonal discretisation factors.

    Parameters
    ----------
    Lambda : array (..., P) complex
        Continuous-time eigenvalues.
    delta : array broadcastable to (..., P)
        Time steps (per state and/or per step).
    method : {"zoh", "bilinear"}

    Returns
    -------
    Lambda_bar : array (..., P) complex
    gamma : array (..., P) complex
        B_bar = gamma[..., None] * B, i.e. B_bar u = gamma * (B u).
    """
    if method == "zoh":
        Lbar = jnp.exp(Lambda * delta)
        return Lbar, (Lbar - 1.0) / Lambda
    if method == "bilinear":
        half = Lambda * delta / 2
        denom = 1.0 - half
        return (1.0 + half) / denom, delta / denom
    raise ValueError(f"method (discretization) must be 'zoh' or 'bilinear'; got {method!r}")


def _complex(p):
    return jax.lax.complex(p[..., 0], p[..., 1])


# ----------------------------------------------------------------------------------------------
# The layer
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class S5Layer:
    """Structure of one S5 layer.

    Attributes
    ----------
    H : int
        Input and output features.
    P : int
        State size of the real HiPPO-N system (the complex state has P/2 entries with
        ``conj_sym``, P without).
    blocks : int
        J, number of HiPPO-N blocks on the diagonal (P divisible by J; P/J even with conj_sym).
    conj_sym : bool
        Conjugate symmetry.
    discretization : {"zoh", "bilinear"}
    bidirectional : bool
        Add a backward-in-time recurrence with its own C; ``step`` is then unavailable.
    dt_min, dt_max : float
        Range of the log-uniform initial time steps.
    parallel : bool or None
        Associative scan (True) or sequential scan (False) in ``linear_recurrence``; None
        (default) chooses at call time: parallel on a GPU / TPU, sequential on a CPU.
    """

    H: int
    P: int
    blocks: int = 1
    conj_sym: bool = True
    discretization: str = "zoh"
    bidirectional: bool = False
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    parallel: bool | None = None

    def __post_init__(self):
        resolve_parallel(self.parallel)  # validates
        if self.H < 1:
            raise ValueError(f"H must be a positive integer; got {self.H}")
        if self.P < 1 or self.blocks < 1 or self.P % self.blocks:
            raise ValueError(f"P must be a positive multiple of blocks; got P={self.P}, blocks={self.blocks}")
        if self.conj_sym and (self.P // self.blocks) % 2:
            raise ValueError(
                f"P / blocks must be even with conj_sym=True; got P={self.P}, blocks={self.blocks}"
            )
        if self.discretization not in ("zoh", "bilinear"):
            raise ValueError(f"discretization must be 'zoh' or 'bilinear'; got {self.discretization!r}")
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max; got dt_min={self.dt_min}, dt_max={self.dt_max}")

    @property
    def state_size(self) -> int:
        """Size P' of the complex state."""
        return self.P // 2 if self.conj_sym else self.P

    def eigenbasis(self) -> tuple[np.ndarray, np.ndarray]:
        """Block-diagonal HiPPO-N eigenvalues (P',) and eigenvectors V (P, P')."""
        N = self.P // self.blocks
        Lam, V = hippo_n_diagonal(N, self.conj_sym)
        return np.tile(Lam, self.blocks), scipy.linalg.block_diag(*([V] * self.blocks))

    def init(self, key: jax.Array, dtype=jnp.float32) -> Params:
        """Initial parameters.

        Parameters
        ----------
        key : PRNG key
        dtype : float32 or float64 (complex quantities are stored as real/imaginary pairs)

        Returns
        -------
        dict
            ``Lambda`` (P', 2), ``B`` (P', H, 2), ``C`` (n_dir, H, P', 2), ``D`` (H,),
            ``log_step`` (P',).
        """
        Lam, V = self.eigenbasis()
        kb, kc, kd, ks = jax.random.split(key, 4)
        H, P = self.H, self.P
        n_dir = 2 if self.bidirectional else 1
        B_real = np.asarray(jax.random.normal(kb, (P, H)), dtype=np.float64)
        B = V.conj().T @ (B_real / math.sqrt(H))  # (P', H)
        C_real = np.asarray(jax.random.truncated_normal(kc, -2.0, 2.0, (n_dir, H, P)), dtype=np.float64)
        C_real = C_real / math.sqrt(P)
        C = C_real @ V  # (n_dir, H, P')
        split = lambda z: jnp.asarray(np.stack([z.real, z.imag], -1), dtype)  # noqa: E731
        log_step = jax.random.uniform(
            ks, (self.state_size,), dtype, math.log(self.dt_min), math.log(self.dt_max)
        )
        return {
            "Lambda": split(Lam),
            "B": split(B),
            "C": split(C),
            "D": jax.random.normal(kd, (H,), dtype),
            "log_step": log_step,
        }

    def _factors(self, params: Params, dt):
        Lam = _complex(params["Lambda"])
        delta = jnp.exp(params["log_step"])
        if dt is not None:
            delta = jnp.asarray(dt)[..., None] * delta  # (L, P') or (P',)
        return discretize(Lam, delta, self.discretization)

    def _out(self, params, xs, u, direction: int):
        C = _complex(params["C"][direction])  # (H, P')
        y = jnp.einsum("hp,...p->...h", C, xs)
        return (2.0 * y.real) if self.conj_sym else y.real

    def __call__(self, params: Params, u: jax.Array, dt: jax.Array | None = None) -> jax.Array:
        """Apply the layer to one sequence.

        Parameters
        ----------
        params : dict from :meth:`init`
        u : array (L, H)
        dt : array (L,), optional
            Time interval before each step (irregular sampling); None means 1 for every step.

        Returns
        -------
        array (L, H)
        """
        if u.ndim != 2 or u.shape[-1] != self.H:
            raise ValueError(f"u must have shape (L, H) with H={self.H}; got {u.shape}")
        L = u.shape[0]
        if dt is not None and jnp.shape(dt) != (L,):
            raise ValueError(f"dt must have shape (L,) = ({L},); got {jnp.shape(dt)}")
        Lbar, gamma = self._factors(params, dt)
        Bu = jnp.einsum("phc,lh->lpc", params["B"], u)  # B u in O(L P')
        Bu = jax.lax.complex(Bu[..., 0], Bu[..., 1])
        b = gamma * Bu  # (L, P')
        A = Lbar  # (P',) with regular steps (closed over by the sequential scan), else (L, P')
        x0 = jnp.zeros(b.shape[-1], b.dtype)
        parallel = resolve_parallel(self.parallel)
        xs = linear_recurrence(A, b, x0, parallel=parallel)
        y = self._out(params, xs, u, 0)
        if self.bidirectional:
            xb = linear_recurrence(A, b, x0, parallel=parallel, reverse=True)
            y = y + self._out(params, xb, u, 1)
        return y + params["D"] * u

    def initial_state(self, dtype=jnp.float32) -> jax.Array:
        """Zero state (P',) complex (complex64 for float32, complex128 for float64)."""
        return jnp.zeros(self.state_size, jnp.complex128 if dtype == jnp.float64 else jnp.complex64)

    def step(self, params: Params, state: jax.Array, u: jax.Array, dt=None) -> tuple[jax.Array, jax.Array]:
        """One step of the recurrence for autoregressive use; equal to :meth:`__call__`.

        Parameters
        ----------
        params : dict
        state : array (P',) complex
        u : array (H,)
        dt : scalar, optional
            Interval since the previous step (default 1).

        Returns
        -------
        state : array (P',) complex
        y : array (H,)
        """
        if self.bidirectional:
            raise ValueError("step is undefined for a bidirectional layer (bidirectional=True)")
        if u.shape != (self.H,):
            raise ValueError(f"u must have shape (H,) = ({self.H},); got {u.shape}")
        if state.shape != (self.state_size,):
            raise ValueError(f"state must have shape ({self.state_size},); got {state.shape}")
        Lbar, gamma = self._factors(params, dt)
        Bu = _complex(jnp.einsum("phc,h->pc", params["B"], u))
        x = Lbar * state + gamma * Bu
        return x, self._out(params, x, u, 0) + params["D"] * u


# ----------------------------------------------------------------------------------------------
# The sequence model
# ----------------------------------------------------------------------------------------------


def _layer_norm(p, x, eps=1e-5):
    m = jnp.mean(x, -1, keepdims=True)
    v = jnp.var(x, -1, keepdims=True)
    return (x - m) / jnp.sqrt(v + eps) * p["scale"] + p["bias"]


def _dense_init(key, n_in, n_out, dtype):
    return {
        "W": jax.random.normal(key, (n_in, n_out), dtype) / math.sqrt(n_in),
        "b": jnp.zeros(n_out, dtype),
    }


def _dense(p, x):
    return x @ p["W"] + p["b"]


def _dropout(key, x, rate):
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)


@dataclasses.dataclass(frozen=True)
class S5Model:
    """Encoder -> n_layers x [LayerNorm -> S5 -> activation -> dropout -> residual] -> pool -> head.

    Attributes
    ----------
    input_dim : int
        Features per time step of the input.
    output_dim : int
        Classes (logits) or regression targets.
    H, P, blocks, conj_sym, discretization, bidirectional, dt_min, dt_max, parallel
        As in :class:`S5Layer` (shared by all layers).
    n_layers : int
    activation : {"gelu", "glu", "half_glu"}
        ``gelu``: GELU(y); ``glu``: W1 g * sigmoid(W2 g) with g = GELU(y); ``half_glu``:
        g * sigmoid(W g).
    dropout : float
        Rate, applied after the activation when a dropout key is given.
    pool : {"mean", "last", None}
        Pool over time before the head (sequence classification/regression) or keep every
        step (None: per-step outputs; required for :meth:`step` to equal :meth:`__call__`).
    prenorm : bool
        Normalise before (True) or after (False) the S5 block.
    """

    input_dim: int
    output_dim: int
    H: int = 32
    P: int = 32
    n_layers: int = 2
    blocks: int = 1
    conj_sym: bool = True
    discretization: str = "zoh"
    bidirectional: bool = False
    activation: str = "half_glu"
    dropout: float = 0.0
    pool: str | None = "mean"
    prenorm: bool = True
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    parallel: bool | None = None

    def __post_init__(self):
        resolve_parallel(self.parallel)  # validates
        if self.input_dim < 1 or self.output_dim < 1:
            raise ValueError(
                f"input_dim and output_dim must be positive; got {self.input_dim}, {self.output_dim}"
            )
        if self.n_layers < 1:
            raise ValueError(f"n_layers must be a positive integer; got {self.n_layers}")
        if self.activation not in ("gelu", "glu", "half_glu"):
            raise ValueError(f"activation must be 'gelu', 'glu' or 'half_glu'; got {self.activation!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {self.dropout}")
        if self.pool not in ("mean", "last", None):
            raise ValueError(f"pool must be 'mean', 'last' or None; got {self.pool!r}")
        if self.bidirectional and self.pool == "last":
            raise ValueError("pool='last' with bidirectional=True: use pool='mean'")

    @property
    def layer(self) -> S5Layer:
        """The (shared) structure of each S5 layer."""
        return S5Layer(
            self.H, self.P, self.blocks, self.conj_sym, self.discretization, self.bidirectional,
            self.dt_min, self.dt_max, self.parallel,
        )

    def init(self, key: jax.Array, dtype=jnp.float32) -> Params:
        """Initial parameters: a dict with ``encoder``, ``layers`` (list) and ``decoder``."""
        keys = jax.random.split(key, self.n_layers + 2)
        layer = self.layer
        layers = []
        for k in keys[2:]:
            ks, k1, k2 = jax.random.split(k, 3)
            lp = {
                "norm": {"scale": jnp.ones(self.H, dtype), "bias": jnp.zeros(self.H, dtype)},
                "s5": layer.init(ks, dtype),
            }
            if self.activation in ("glu", "half_glu"):
                lp["gate"] = _dense_init(k1, self.H, self.H, dtype)
            if self.activation == "glu":
                lp["value"] = _dense_init(k2, self.H, self.H, dtype)
            layers.append(lp)
        return {
            "encoder": _dense_init(keys[0], self.input_dim, self.H, dtype),
            "layers": layers,
            "decoder": _dense_init(keys[1], self.H, self.output_dim, dtype),
        }

    def _activate(self, lp, y, key):
        g = jax.nn.gelu(y)
        if self.activation == "gelu":
            return g
        k1, k2 = (None, None) if key is None else jax.random.split(key)
        g = _dropout(k1, g, self.dropout)
        gate = jax.nn.sigmoid(_dense(lp["gate"], g))
        return (_dense(lp["value"], g) if self.activation == "glu" else g) * gate

    def _block(self, lp, x, key, s5_fn):
        z = _layer_norm(lp["norm"], x) if self.prenorm else x
        z = s5_fn(z)
        k1, k2 = (None, None) if key is None else jax.random.split(key)
        z = _dropout(k2, self._activate(lp, z, k1), self.dropout)
        x = x + z
        return x if self.prenorm else _layer_norm(lp["norm"], x)

    def _single(self, params, u, dt, key):
        x = _dense(params["encoder"], u)
        keys = [None] * self.n_layers if key is None else list(jax.random.split(key, self.n_layers))
        layer = self.layer
        for lp, k in zip(params["layers"], keys, strict=True):
            x = self._block(lp, x, k, lambda z, lp=lp: layer(lp["s5"], z, dt))
        if self.pool == "mean":
            x = jnp.mean(x, axis=0)
        elif self.pool == "last":
            x = x[-1]
        return _dense(params["decoder"], x)

    def __call__(self, params: Params, u: jax.Array, dt: jax.Array | None = None,
                 key: jax.Array | None = None) -> jax.Array:
        """Apply the model.

        Parameters
        ----------
        params : dict from :meth:`init`
        u : array (..., L, input_dim)
            Leading dims are a batch.
        dt : array (..., L), optional
            Per-step time intervals (irregular sampling), same batch dims as ``u``.
        key : PRNG key, optional
            Enables dropout (training); None = deterministic (evaluation).

        Returns
        -------
        array (..., output_dim) if ``pool`` else (..., L, output_dim)
        """
        u = jnp.asarray(u)
        if u.ndim < 2 or u.shape[-1] != self.input_dim:
            raise ValueError(f"u must have shape (..., L, input_dim={self.input_dim}); got {u.shape}")
        batch = u.shape[:-2]
        if dt is not None:
            dt = jnp.asarray(dt)
            if dt.shape != u.shape[:-1]:
                raise ValueError(f"dt must have shape (..., L) = {u.shape[:-1]}; got {dt.shape}")
        n = math.prod(batch)
        uf = u.reshape((n,) + u.shape[-2:])
        dtf = None if dt is None else dt.reshape((n, u.shape[-2]))
        keys = None if key is None else jax.random.split(key, n)
        in_axes = (None, 0, None if dt is None else 0, None if key is None else 0)
        out = jax.vmap(self._single, in_axes=in_axes)(params, uf, dtf, keys)
        return out.reshape(batch + out.shape[1:])

    def initial_state(self, dtype=jnp.float32) -> list[jax.Array]:
        """Zero states of every layer: a list of (P',) complex arrays."""
        return [self.layer.initial_state(dtype) for _ in range(self.n_layers)]

    def step(self, params: Params, states: list[jax.Array], u: jax.Array, dt=None):
        """One autoregressive step (no dropout); equals :meth:`__call__` with ``pool=None``.

        Parameters
        ----------
        params : dict
        states : list of (P',) complex arrays, one per layer
        u : array (input_dim,)
        dt : scalar, optional

        Returns
        -------
        states : list of (P',) complex arrays
        y : array (output_dim,)
            The per-step output (the decoder applied before any pooling).
        """
        if len(states) != self.n_layers:
            raise ValueError(f"states must hold {self.n_layers} layer states; got {len(states)}")
        x = _dense(params["encoder"], u)
        layer = self.layer
        new = []
        for lp, s in zip(params["layers"], states, strict=True):
            holder = {}

            def s5_fn(z, lp=lp, s=s, holder=holder):
                holder["s"], y = layer.step(lp["s5"], s, z, dt)
                return y

            x = self._block(lp, x, None, s5_fn)
            new.append(holder["s"])
        return new, _dense(params["decoder"], x)


# ----------------------------------------------------------------------------------------------
# Training and a synthetic irregular-sampling task
# ----------------------------------------------------------------------------------------------


def _ssm_label(path) -> str:
    names = [getattr(k, "key", None) for k in path]
    return "ssm" if any(n in ("Lambda", "B", "log_step") for n in names) else "other"


def fit(
    model: S5Model,
    params: Params,
    u: jax.Array,
    targets: jax.Array,
    dt: jax.Array | None = None,
    loss: str = "cross_entropy",
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 3e-3,
    ssm_lr: float = 1e-3,
    weight_decay: float = 0.01,
    key: jax.Array | None = None,
    callback: Callable[[int, Params, float], None] | None = None,
) -> tuple[Params, list[float]]:
    """Train with AdamW and a cosine schedule; SSM parameters get ``ssm_lr`` and no weight decay.

    Parameters
    ----------
    model : S5Model
    params : dict
    u : array (N, L, input_dim)
    targets : int array (N,) class labels (``loss="cross_entropy"``) or float array
        (N, output_dim) / (N, L, output_dim) (``loss="mse"``).
    dt : array (N, L), optional
        Per-step time intervals.
    loss : {"cross_entropy", "mse"}
    epochs, batch_size : int
    lr, ssm_lr, weight_decay : float
    key : PRNG key (shuffling and dropout)
    callback : callable(epoch, params, mean_loss), optional

    Returns
    -------
    params : dict
        Trained parameters.
    history : list of float
        Mean training loss per epoch.
    """
    if loss not in ("cross_entropy", "mse"):
        raise ValueError(f"loss must be 'cross_entropy' or 'mse'; got {loss!r}")
    N = u.shape[0]
    if targets.shape[0] != N:
        raise ValueError(f"targets must have {N} rows like u; got {targets.shape}")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be positive; got {epochs}, {batch_size}")
    key = jax.random.PRNGKey(0) if key is None else key
    steps_per_epoch = max(N // batch_size, 1)
    total = epochs * steps_per_epoch

    def make(rate, wd):
        sched = optax.warmup_cosine_decay_schedule(0.0, rate, min(100, total // 10 + 1), total)
        return optax.adamw(sched, weight_decay=wd)

    labels = jax.tree_util.tree_map_with_path(lambda p, _: _ssm_label(p), params)
    opt = optax.multi_transform({"ssm": make(ssm_lr, 0.0), "other": make(lr, weight_decay)}, labels)
    state = opt.init(params)

    def loss_fn(p, ub, tb, db, k):
        out = model(p, ub, db, key=k if model.dropout > 0 else None)
        if loss == "cross_entropy":
            return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(out, tb))
        return jnp.mean((out - tb) ** 2)

    @jax.jit
    def train_step(p, s, ub, tb, db, k):
        val, g = jax.value_and_grad(loss_fn)(p, ub, tb, db, k)
        upd, s = opt.update(g, s, p)
        return optax.apply_updates(p, upd), s, val

    history = []
    for epoch in range(epochs):
        key, kp = jax.random.split(key)
        perm = np.asarray(jax.random.permutation(kp, N))
        losses = []
        for i in range(steps_per_epoch):
            idx = perm[i * batch_size:(i + 1) * batch_size]
            key, kd = jax.random.split(key)
            params, state, val = train_step(
                params, state, u[idx], targets[idx], None if dt is None else dt[idx], kd
            )
            losses.append(val)
        history.append(float(jnp.mean(jnp.stack(losses))))
        if callback is not None:
            callback(epoch, params, history[-1])
    return params, history


def make_irregular_task(key: jax.Array, n: int, L: int, mean_dt: float = 0.3,
                        taus: tuple[float, ...] = (0.5, 2.0), dtype=jnp.float32):
    """Irregularly sampled continuous-time regression.

    Inputs u_k ~ N(0, 1) are held constant over random intervals dt_k (a mixture of short and
    long gaps, mean about ``mean_dt``); the per-step target is the sum over time constants tau
    of the exactly integrated leaky integrals y_k = exp(-dt_k / tau) y_{k-1} +
    (1 - exp(-dt_k / tau)) u_k. Knowing the true dt_k makes it exactly solvable; with uniform
    steps the elapsed time is invisible.

    Parameters
    ----------
    key : PRNG key
    n, L : int
        Number of sequences and their length.
    mean_dt : float
    taus : tuple of float
    dtype : dtype

    Returns
    -------
    u : array (n, L, 1)
    dt : array (n, L)
    y : array (n, L, 1)
    """
    if n < 1 or L < 1:
        raise ValueError(f"n and L must be positive; got n={n}, L={L}")
    ku, k1, k2, kc = jax.random.split(key, 4)
    u = jax.random.normal(ku, (n, L), dtype)
    short = jax.random.exponential(k1, (n, L), dtype) * 0.2 * mean_dt
    long = jax.random.exponential(k2, (n, L), dtype) * 1.8 * mean_dt
    dt = jnp.where(jax.random.bernoulli(kc, 0.5, (n, L)), short, long) + 1e-3

    def leaky(tau):
        a = jnp.exp(-dt / tau)

        def one(a_row, b_row):
            x0 = jnp.zeros(1, dtype)
            return linear_recurrence(a_row[:, None], b_row[:, None], x0, parallel=False)[:, 0]

        return jax.vmap(one)(a, (1 - a) * u)

    y = sum(leaky(t) for t in taus)
    return u[..., None], dt, y[..., None]
