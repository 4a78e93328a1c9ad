"""Test scheduling for ``pytest -n 2 --dist loadgroup`` (see ``./dev test``).

Each test module is one xdist group, so its module-scoped fixtures (compiled samplers, fitted
posteriors) are built once on one worker, except the notebooks, which are independent of each
other and each their own group so the two workers share them. The heaviest groups are collected
first: a worker that draws a long group at the end would otherwise run alone while the other idles.
"""

from __future__ import annotations

import pytest

# measured per-group wall times dominate the suite; everything else is short
HEAVY_FIRST = ("test_notebooks", "test_slds", "test_gpslds", "test_cli", "test_inference_sbc", "test_gpsde",
               "test_inference_quadrature", "test_attractors")


def _group(item: pytest.Item) -> str:
    module = item.module.__name__.rsplit(".", 1)[-1]
    if module == "test_notebooks" and "[" in item.nodeid:
        return item.nodeid  # one group per notebook
    return module


def _weight(item: pytest.Item) -> int:
    module = item.module.__name__.rsplit(".", 1)[-1]
    return HEAVY_FIRST.index(module) if module in HEAVY_FIRST else len(HEAVY_FIRST)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=_weight)  # stable: the order inside a module is kept
    for item in items:
        item.add_marker(pytest.mark.xdist_group(_group(item)))
