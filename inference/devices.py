"""Chains over the local devices: one mesh axis ("chain"), and functions run per device.

Used inside :mod:`inference`: the blocked sampler and the BlackJAX backend split their chains
this way when two or more of the devices divide them evenly.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import jax
import numpy as np

__all__ = ["chain_mesh", "shard_chains", "per_device", "use_cpu_devices"]


def use_cpu_devices(count: int) -> bool:
    """Ask JAX for ``count`` host devices on the CPU, so that chains run one per device
    (:func:`chain_mesh`), if JAX has not run anything yet in this process and ``XLA_FLAGS`` does
    not set the count already. The same from a script: ``jax.config.update("jax_num_cpu_devices",
    4)`` right after ``import jax``.

    Parameters
    ----------
    count : int

    Returns
    -------
    bool
        Whether the request took effect (False once JAX has started: its devices are fixed
        for the process).
    """
    if int(count) < 2 or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return False
    try:
        jax.config.update("jax_num_cpu_devices", int(count))
    except RuntimeError:  # JAX's backends already started
        return False
    return True


def chain_mesh(num_chains: int):
    """A one-axis ("chain") mesh of as many local devices as divide the chains evenly (the most
    that do, at least two), else None. E.g. with
    XLA_FLAGS=--xla_force_host_platform_device_count=4 on a 2-core CPU, 4 chains run one per
    device and 2 chains on two of them. Why one chain per device rather than two chains
    vectorised on each core: a vectorised NUTS step runs until the deeper of its chains' trees
    is done (the NASCAR SLDS benchmark ran 1.3-1.4x faster on four host devices than on two,
    ``benchmarks/results/slds_blocked.md`` and the commit that made this change).

    Parameters
    ----------
    num_chains : int

    Returns
    -------
    jax.sharding.Mesh or None
    """
    devices = jax.local_devices()
    usable = [d for d in range(2, len(devices) + 1) if num_chains % d == 0]
    if not usable:
        return None
    return jax.sharding.Mesh(np.array(devices[:max(usable)]), ("chain",))


def shard_chains(tree, num_chains: int):
    """``tree``'s arrays placed with their leading (chain) axis split over :func:`chain_mesh`
    (unchanged without one).

    Parameters
    ----------
    tree : pytree of arrays (C, ...)
    num_chains : int
        C.

    Returns
    -------
    pytree of arrays (C, ...)
    """
    mesh = chain_mesh(num_chains)
    if mesh is None:
        return tree
    return jax.device_put(tree, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("chain")))


def per_device(fn: Callable, num_chains: int, replicated: int = 0) -> Callable:
    """``fn`` run by each device on its own chains (``shard_map``): every argument and output is
    split along its leading (chain) axis, except the last ``replicated`` arguments, which each
    device gets whole. ``fn`` must not mix chains.

    Why not sharded arrays under ``jit``: the partitioner then runs the chains' vectorised NUTS
    loops in lockstep across devices, synchronising at every iteration, and XLA's CPU runtime
    kept memory at each synchronisation (the NASCAR benchmark was killed for lack of memory,
    where one device stayed flat). Under ``shard_map`` each device runs its own loops, with no
    communication at all.

    Parameters
    ----------
    fn : callable (*chain arguments (C_d, ...), *replicated arguments) -> pytree (C_d, ...)
        C_d = C / number of devices chains per device.
    num_chains : int
        C.
    replicated : int
        How many trailing arguments every device gets whole.

    Returns
    -------
    callable
        Same signature, on all C chains (``fn`` itself without a :func:`chain_mesh`).
    """
    mesh = chain_mesh(num_chains)
    if mesh is None:
        return fn
    P = jax.sharding.PartitionSpec

    def wrapped(*args):
        specs = (P("chain"),) * (len(args) - replicated) + (P(),) * replicated
        return jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=P("chain"), check_vma=False)(*args)

    return wrapped
