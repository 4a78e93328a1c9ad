"""Sizes for the teaching notebooks: full sizes normally, tiny ones when ``ZOO_QUICK=1``.

The test suite executes every notebook with ``ZOO_QUICK=1`` (``tests/test_notebooks.py``); the
numbers a quick run prints are a smoke test, not results.
"""

from __future__ import annotations

import os

QUICK: bool = os.environ.get("ZOO_QUICK", "0") not in ("", "0", "false", "False")


def size(full, quick):
    """``quick`` when the notebook runs in quick mode (``ZOO_QUICK=1``), else ``full``."""
    return quick if QUICK else full


def banner() -> str:
    """One line saying which mode the notebook runs in."""
    return ("QUICK mode (ZOO_QUICK=1): tiny sizes, numbers are a smoke test only" if QUICK
            else "full mode: the sizes the text discusses")
