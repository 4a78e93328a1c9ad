"""Inference on any zoo model: the blocked sampler of the switching models, NUTS/HMC (NumPyro), SVI
with structured guides, BlackJAX (NUTS, ChEES, adjusted MCLMC), adaptive tempered SMC; ArviZ-native
results, diagnostics, label alignment, predictive checks and model comparison.

The public functions are imported eagerly. Several share their name with the module that defines
them (``inference.decode``, ``inference.diagnose``, ``inference.attractors``,
``inference.compare``): binding the function
here, after its module has been imported, keeps ``inference.decode(...)`` a function even when
other code later runs ``import inference.decode`` (a lazy re-export would be shadowed by the
submodule attribute that import sets).
"""

from __future__ import annotations

from inference.align import align_labels
from inference.attractors import attractors, plot_attractors
from inference.compare import compare, psis_lfo
from inference.convert import to_datatree
from inference.decode import decode
from inference.diagnose import diagnose
from inference.fit import METHODS, fit
from inference.guides import structured_guide
from inference.predictive import (
           add_predictive,
           loo_pit,
           plot_rootogram,
           posterior_predictive,
           prior_predictive,
           rootogram,
)

__all__ = ["fit", "diagnose", "to_datatree", "METHODS", "decode", "attractors",
           "plot_attractors", "align_labels", "structured_guide", "add_predictive", "prior_predictive",
           "posterior_predictive", "rootogram", "plot_rootogram", "loo_pit", "compare", "psis_lfo"]
