"""Label alignment: discrete states are identified only up to a permutation."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = ["overlap_matrix", "match_labels", "match_soft", "state_accuracy"]


def overlap_matrix(z_ref, z, num_states: int) -> np.ndarray:
    """Counts C[i, j] of steps with reference label i and label j; (K, K).

    Parameters
    ----------
    z_ref, z : int arrays of the same shape (..., T)
        Label sequences; negative entries (e.g. padding) are ignored.
    num_states : int
    """
    z_ref, z = np.asarray(z_ref).ravel(), np.asarray(z).ravel()
    if z_ref.shape != z.shape:
        raise ValueError(f"z_ref and z must have the same shape; got {z_ref.shape} and {z.shape}")
    keep = (z_ref >= 0) & (z >= 0)
    C = np.zeros((num_states, num_states))
    np.add.at(C, (z_ref[keep], z[keep]), 1.0)
    return C


def match_labels(z_ref, z, num_states: int) -> np.ndarray:
    """Permutation ``perm`` with ``perm[j]`` = reference label of label j, maximising overlap
    (Hungarian matching). Apply as ``perm[z]``; reorder per-state parameters with
    ``np.argsort(perm)`` along the state axis.
    """
    C = overlap_matrix(z_ref, z, num_states)
    rows, cols = linear_sum_assignment(-C)
    perm = np.empty(num_states, dtype=int)
    perm[cols] = rows
    return perm


def match_soft(ref_probs, probs) -> np.ndarray:
    """Hungarian matching on soft state assignments (..., T, K): overlap sum_t p_ref p."""
    ref = np.asarray(ref_probs).reshape(-1, np.shape(ref_probs)[-1])
    p = np.asarray(probs).reshape(-1, np.shape(probs)[-1])
    rows, cols = linear_sum_assignment(-(ref.T @ p))
    perm = np.empty(p.shape[-1], dtype=int)
    perm[cols] = rows
    return perm


def state_accuracy(z_true, z_est, num_states: int) -> float:
    """Fraction of steps whose estimated label, after the best permutation, equals the truth."""
    perm = match_labels(z_true, z_est, num_states)
    z_true, z_est = np.asarray(z_true), np.asarray(z_est)
    keep = (z_true >= 0) & (z_est >= 0)
    return float(np.mean(perm[z_est[keep]] == z_true[keep]))
