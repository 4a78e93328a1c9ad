"""Inference on any zoo model: NUTS/HMC (NumPyro), SVI with structured guides, BlackJAX (NUTS, ChEES,
adjusted MCLMC), adaptive tempered SMC; ArviZ-native results, diagnostics and label alignment.

``fit``, ``diagnose`` and ``to_datatree`` live here; ``decode``, ``initialize``, ``attractors`` and
``plot_attractors`` are re-exported lazily from their modules (:mod:`inference.decode`,
:mod:`inference.initialize`, :mod:`inference.attractors`), so importing this package never fails
because one of them is missing.
"""

from __future__ import annotations

import importlib

from inference.convert import to_datatree
from inference.fit import METHODS, fit

_LAZY = {
    "decode": "inference.decode",
    "initialize": "inference.initialize",
    "attractors": "inference.attractors",
    "plot_attractors": "inference.attractors",
    "diagnose": "inference.diagnose",
    "align_labels": "inference.align",
    "structured_guide": "inference.guides",
}

__all__ = ["fit", "diagnose", "to_datatree", "METHODS", "decode", "initialize", "attractors",
           "plot_attractors", "align_labels", "structured_guide"]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'inference' has no attribute {name!r}")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name != module:
            raise
        raise AttributeError(f"inference.{name} is not available yet ({module} does not exist)") from None
    value = getattr(mod, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
