"""Test ordering for ``pytest -n 2 --dist loadscope`` (see ``./dev test``).

loadscope keeps each test module on one worker, so its module-scoped fixtures (compiled samplers,
fitted posteriors) are built once; the notebooks are one test class each, so the two workers share
them. The heaviest modules are collected first (xdist's default loadscope reordering then puts the
scopes with the most tests first). With ``--no-loadscope-reorder`` (heaviest first, notebooks
early) the suite took 16 min 50 s instead of 17 min 30 s, but the Gaussian rSLDS NASCAR recovery
test failed its eigenvalue check (2 of 4) in that order while passing alone and in the default
order: an order dependence not yet understood, so the default order is kept.
(``--dist loadgroup`` would be the natural tool, but
pytest-xdist 3.8 marks groups by rewriting ``item._nodeid``, which pytest 9.2 no longer reads.)
"""

from __future__ import annotations

import pytest

# the modules whose wall time dominates the suite, heaviest first; everything else is short
HEAVY_FIRST = ("test_notebooks", "test_slds", "test_cli", "test_gpslds", "test_inference_sbc", "test_guides",
               "test_gpsde", "test_inference_quadrature", "test_scans", "test_attractors")


def _weight(item: pytest.Item) -> int:
    module = item.module.__name__.rsplit(".", 1)[-1]
    return HEAVY_FIRST.index(module) if module in HEAVY_FIRST else len(HEAVY_FIRST)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=_weight)  # stable: the order inside a module is kept
