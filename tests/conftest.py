"""Test-session set-up for ``pytest -n 2 --dist loadscope`` (see ``./dev test``).

Compilation cache. Most of the suite's time is XLA compilation, much of it repeated: NumPyro
initialises a single chain op by op (hundreds of tiny eager compiles), every ``inference.fit``
builds new jitted samplers, and the notebooks and CLI tests run in their own processes. A shared
persistent cache (``.cache/jax`` in the checkout, or ``JAX_COMPILATION_CACHE_DIR`` if set) lets
every process and every re-created function reuse identical compiled code. It starts empty on a
clean checkout, so CI times are cold-cache times.

Ordering. loadscope keeps each test module on one worker, so its module-scoped fixtures (compiled
samplers, fitted posteriors) are built once; the notebooks are one test class each, so the two
workers share them. The heaviest modules are collected first (xdist's default loadscope
reordering then puts the scopes with the most tests first). ``--dist loadgroup`` would be the
natural tool, but pytest-xdist 3.8 marks groups by rewriting ``item._nodeid``, which pytest 9.2
no longer reads.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Set before any compilation; the environment variables reach the notebook kernels and CLI
# subprocesses started by the tests.
_CACHE = os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                               str(Path(__file__).resolve().parents[1] / ".cache" / "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402  (after the environment, in case nothing imported jax yet)

jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
jax.config.update("jax_persistent_cache_min_entry_size_bytes",
                  int(os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"]))

# the modules whose wall time dominates the suite, heaviest first; everything else is short
HEAVY_FIRST = ("test_notebooks", "test_slds", "test_cli", "test_gpslds", "test_inference_sbc", "test_guides",
               "test_gpsde", "test_inference_quadrature", "test_scans", "test_attractors")


def _weight(item: pytest.Item) -> int:
    module = item.module.__name__.rsplit(".", 1)[-1]
    return HEAVY_FIRST.index(module) if module in HEAVY_FIRST else len(HEAVY_FIRST)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=_weight)  # stable: the order inside a module is kept
