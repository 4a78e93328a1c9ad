"""Test-session set-up for ``pytest -n 2 --dist loadscope`` (see ``./dev test``).

Compilation cache. Most of the suite's time is XLA compilation, much of it repeated: NumPyro
initialises a single chain op by op (hundreds of tiny eager compiles), every ``inference.fit``
builds new jitted samplers, and the notebooks and CLI tests run in their own processes. A shared
persistent cache (``.cache/jax`` in the checkout, or ``JAX_COMPILATION_CACHE_DIR`` if set) lets
every process and every re-created function reuse identical compiled code. It starts empty on a
clean checkout, so CI times are cold-cache times.

Ordering. loadscope keeps each test module on one worker, so its module-scoped fixtures (compiled
samplers, fitted posteriors) are built once; the notebooks are one test class each, so the two
workers share them. The heaviest scopes are collected first and ``--no-loadscope-reorder`` keeps
that order (xdist would otherwise order scopes by test count and start the one-test notebooks
last, where they end the run on one worker). ``--dist loadgroup`` would be the natural tool,
but pytest-xdist 3.8 marks groups by rewriting ``item._nodeid``, which pytest 9.2 does not read.
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

# Scopes whose wall time dominates the suite, heaviest first (measured cold-cache call + fixture
# times); everything else is short. ``./dev test`` passes ``--no-loadscope-reorder``
# so xdist hands the scopes out in this order and the long ones do not end the run on one worker.
HEAVY_FIRST = ("TestNotebook_05_samplers", "test_slds", "TestNotebook_03_line_attractors",
               "TestNotebook_01_quickstart", "test_cli", "test_gpslds", "TestNotebook_04_spikes_gpsde",
               "test_given_states", "test_inference_sbc", "test_blocked", "test_guides", "test_scans",
               "test_elk", "test_blocked_geweke", "test_inference_quadrature", "test_inference_api",
               "TestNotebook_06_deterministic", "test_inference_devices", "test_gpsde",
               "test_collapsed_states", "test_reproducible", "test_attractors")


# Compile-bound, run-cheap code. XLA's optimisation passes cost about half of every compile here
# (measured: 71 eager compiles of zoo.datasets.nascar 7 s against 15 s; NumPyro's eager
# initialisation of an HMM 30 s against 53 s) and pay off only in long runs (a 600-iteration NUTS
# program ran 10x slower unoptimised). Tests whose work is a few hundred small compiles and a few
# cheap iterations, and whose assertions are structural or exact (no run-time budget, no numerics
# that optimisation could change beyond rounding), skip those passes: ``FAST_COMPILE_ENV`` for
# subprocesses, the ``fast_compile`` fixture in process.
FAST_COMPILE_ENV = {"JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}


@pytest.fixture
def fast_compile():
    """Compile without most XLA optimisations for the duration of one test.

    The flag is read at compile time and is not part of JAX's in-memory cache keys, so the
    executables compiled here stay unoptimised if a later test on the same worker calls the same
    function with the same shapes; use it only where that is harmless (small eager programs).
    """
    before = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", before)


def _weight(item: pytest.Item) -> int:
    module = item.module.__name__.rsplit(".", 1)[-1]
    parts = item.nodeid.split("::")
    scope = parts[1] if len(parts) > 2 and parts[1].startswith("TestNotebook_") else module
    return HEAVY_FIRST.index(scope) if scope in HEAVY_FIRST else len(HEAVY_FIRST)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=_weight)  # stable: the order inside a module is kept


# ``ZOO_TEST_TIMELINE=path``: append "worker start end nodeid" per test (wall-clock seconds) to
# path, to see how the scopes were spread over the workers and when each worker went idle.
_TIMELINE = os.environ.get("ZOO_TEST_TIMELINE")


if _TIMELINE:
    import time

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(item, nextitem):
        start = time.time()
        yield
        with open(_TIMELINE, "a") as f:
            f.write(f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')} {start:.1f} {time.time():.1f} "
                    f"{item.nodeid}\n")
