"""The state-space model zoo: Bayesian switching and Gaussian-process dynamical systems on NumPyro.

Models are frozen dataclasses that are themselves NumPyro programs; discrete states are summed
out exactly by the scan kernels of :mod:`zoo.scans` through the handlers of :mod:`zoo.handlers`.
"""

from zoo import datasets, distributions, handlers, kernels, scans, systems
from zoo.gpsde import GPSDE
from zoo.gpslds import GPSLDS
from zoo.hmm import HMM
from zoo.lds import LDS
from zoo.rslds import RSLDS
from zoo.slds import SLDS

__all__ = [
    "GPSDE", "GPSLDS", "HMM", "LDS", "RSLDS", "SLDS",
    "datasets", "distributions", "handlers", "kernels", "scans", "systems",
]
