"""Choice between the parallel (associative) and the sequential scan, shared by S5 and ELK."""

from __future__ import annotations

import jax
import numpy as np

__all__ = ["parallel_default", "resolve_parallel"]


def parallel_default() -> bool:
    """Whether the linear recurrences run as parallel associative scans when ``parallel=None``.

    True on an accelerator (JAX's default backend is a GPU or TPU), False on a CPU, where a
    parallel scan does O(log T) times more work on a few cores and the sequential scan is faster.

    Returns
    -------
    bool
    """
    return jax.default_backend() != "cpu"


def resolve_parallel(parallel: bool | None) -> bool:
    """``parallel`` checked, with None replaced by :func:`parallel_default`.

    Parameters
    ----------
    parallel : bool or None

    Returns
    -------
    bool

    Raises
    ------
    ValueError
        ``parallel`` is neither a bool nor None.
    """
    if parallel is None:
        return parallel_default()
    if not isinstance(parallel, (bool, np.bool_)):
        raise ValueError(f"parallel must be True, False or None (automatic); got {parallel!r}")
    return bool(parallel)
