"""Helpers shared by the deterministic-module benchmarks: machine and package versions, and
repeated timings summarised by their median and spread."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version

import jax

SHARED_NOTE = ("The machine (2 CPU cores, no GPU) may be shared with other jobs (the 1-minute load "
               "average at the start of the run says how busy it was), so absolute times are noisy; "
               "ratios measured side by side in one run are the figures to compare.")


def environment() -> dict:
    """Machine, JAX backend, the parallel-scan default and package versions."""
    from zoo.deterministic import elk

    out = {"machine": platform.processor() or platform.machine(), "python": platform.python_version(),
           "backend": jax.default_backend(), "devices": jax.device_count(),
           "parallel_default": elk.parallel_default(), "load_average_1min": os.getloadavg()[0]}
    for pkg in ("jax", "jaxlib", "numpy", "optax", "scipy", "scikit-learn", "matplotlib"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def environment_line(env: dict) -> str:
    """One markdown line naming the machine, backend and package versions."""
    pkgs = ", ".join(f"{k} {env[k]}" for k in ("jax", "jaxlib", "numpy", "optax", "scipy", "scikit-learn")
                     if env.get(k))
    load = env.get("load_average_1min")
    load_text = f"; load average at the start {load:.2f}" if load is not None else ""
    return (f"Machine: {env['machine']}, {env['devices']} JAX device(s), backend `{env['backend']}` "
            f"(parallel-scan default: {env['parallel_default']}{load_text}); Python {env['python']}, {pkgs}.")


def time_repeats(fn: Callable, *args, repeat: int = 7) -> dict:
    """Wall times of ``fn(*args)`` after one compiling call: median, min, max and all repeats (s)."""
    jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t0)
    return {"median": statistics.median(ts), "min": min(ts), "max": max(ts), "all": ts}
