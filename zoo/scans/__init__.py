"""Scan kernels: hidden Markov models, Kalman filtering and smoothing, linear recurrences.

Every kernel is a pure, jit-able and differentiable function with a ``parallel`` switch:
``parallel=False`` runs a sequential :func:`jax.lax.scan` (the fastest choice on a CPU),
``parallel=True`` runs :func:`jax.lax.associative_scan` (O(log T) depth, for accelerators).
Both give the same result up to rounding.

One subject per module, all re-exported here (``from zoo import scans; scans.kalman_filter``):

- :mod:`zoo.scans.linalg` -- small-matrix linear algebra (unrolled Cholesky factors, triangular
  and general solves, fused products) that the kernels are written with;
- :mod:`zoo.scans.hmm` -- HMM message passing: filter, log normalizer, smoother, FFBS, Viterbi;
- :mod:`zoo.scans.kalman` -- Kalman filter, RTS smoother, forward-filtering backward-sampling;
- :mod:`zoo.scans.recurrence` -- linear recurrences x_t = A_t x_{t-1} + b_t;
- :mod:`zoo.scans.block_tridiagonal` -- block Cholesky factors of block-tridiagonal precisions.

The conventions for the arguments of each family are in its module's docstring; the helpers
that other modules build on (e.g. :func:`zoo.scans.linalg.matmul`,
:func:`zoo.scans.kalman.canonical_lgssm`) are imported from their submodule.
"""

from zoo.scans.block_tridiagonal import (
    BlockTridiagonalCholesky,
    block_bidiagonal_multiply,
    block_bidiagonal_solve,
    block_tridiagonal_cholesky,
)
from zoo.scans.hmm import (
    HMMFiltered,
    HMMPosterior,
    hmm_filter,
    hmm_log_normalizer,
    hmm_pointwise_log_normalizer,
    hmm_sample,
    hmm_smoother,
    hmm_viterbi,
)
from zoo.scans.kalman import KalmanFiltered, KalmanSmoothed, kalman_filter, kalman_sample, kalman_smoother
from zoo.scans.linalg import (
    cho_solve_lower,
    cholesky,
    solve,
    solve_lower,
    solve_lower_broadcast,
    solve_lower_transposed,
)
from zoo.scans.recurrence import linear_recurrence

__all__ = [
    "HMMFiltered",
    "HMMPosterior",
    "KalmanFiltered",
    "KalmanSmoothed",
    "hmm_filter",
    "hmm_log_normalizer",
    "hmm_pointwise_log_normalizer",
    "hmm_smoother",
    "hmm_sample",
    "hmm_viterbi",
    "kalman_filter",
    "kalman_smoother",
    "kalman_sample",
    "linear_recurrence",
    "BlockTridiagonalCholesky",
    "block_tridiagonal_cholesky",
    "block_bidiagonal_solve",
    "block_bidiagonal_multiply",
    "solve_lower",
    "solve_lower_broadcast",
    "solve_lower_transposed",
    "cholesky",
    "cho_solve_lower",
    "solve",
]
