"""The table of inference backends: one shape for every sampler.

Each backend module declares its methods as :class:`Backend` entries (options it accepts and a
``run(problem, key, settings) -> RunResult``); :func:`inference.fit` prepares the data once as a
:class:`Problem`, looks the method up here and converts the one result type to a DataTree. A new
sampler enters by adding a module and a line to ``_MODULES``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import NamedTuple

import numpy as np

from inference.program import ProgramInfo
from zoo.protocol import Model

__all__ = ["Backend", "Problem", "Settings", "RunResult", "backend", "method_names", "COMMON_OPTIONS"]

# options every method accepts (handled by fit itself or by the shared chain starts)
COMMON_OPTIONS = frozenset({"shard_trials", "log_likelihood", "init_svi_steps", "init_svi_learning_rate",
                            "init_guide", "path_reparam"})

# method -> module defining it in a module-level BACKENDS dict
_MODULES = {
    "blocked": "inference.blocked",
    "nuts": "inference.numpyro_backend",
    "hmc": "inference.numpyro_backend",
    "svi": "inference.svi_method",
    "blackjax_nuts": "inference.blackjax_backend",
    "chees": "inference.blackjax_backend",
    "mclmc": "inference.blackjax_backend",
    "smc": "inference.smc",
}


class Problem(NamedTuple):
    """The data, prepared once at ``fit``'s entry and handed to the backend as one value.

    Attributes
    ----------
    model : zoo.protocol.Model
        The model protocol of the program (the zoo model, or the :class:`zoo.protocol.Program`
        adapter of a user's program); it is also what the samplers run.
    y : array (T, N) or (B, T, N)
        Validated observations (NaN = missing), possibly sharded over devices along trials.
    y_host : numpy array
        The same observations on the host.
    model_kwargs : dict
        The user's model arguments (``inputs``, ``mask``), validated.
    run_kwargs : dict
        What the program is called with: ``model_kwargs`` plus the arguments the model derives
        from the data once (:meth:`zoo.protocol.Model.prepare`), possibly sharded.
    info : ProgramInfo
        The program's sites on these data.
    """

    model: Model
    y: object
    y_host: np.ndarray
    model_kwargs: dict
    run_kwargs: dict
    info: ProgramInfo


class Settings(NamedTuple):
    """What the user asked for (validated by ``fit``)."""

    num_chains: int
    num_warmup: int
    num_samples: int
    chain_method: str
    init: object
    progress_bar: bool
    options: Mapping


class RunResult(NamedTuple):
    """What every backend returns.

    Attributes
    ----------
    samples : dict name -> array (C, S, ...)
        Constrained latent and deterministic sites.
    stats : dict name -> array (C, S)
        Sampler statistics (``diverging``, ``energy``, ``n_steps``, ``tree_depth``, ``lp``, ...).
    initialization : str
        How the chains were started, in words.
    attrs : dict
        Extra root attributes of the DataTree (e.g. SMC's log evidence).
    """

    samples: dict
    stats: dict
    initialization: str
    attrs: dict


class Backend(NamedTuple):
    """One inference method.

    Attributes
    ----------
    library : str
        ``"numpyro"`` or ``"blackjax"`` (recorded in the DataTree).
    options : frozenset of str
        Method options it accepts (beyond :data:`COMMON_OPTIONS`).
    run : callable
        ``run(problem: Problem, key, settings: Settings) -> RunResult``.
    chains : bool
        Whether it runs Markov chains (warmup >= 1, chain starts); False for SVI and SMC, which
        return one "chain" of independent draws.
    """

    library: str
    options: frozenset
    run: Callable
    chains: bool = True


def method_names() -> tuple[str, ...]:
    """Every method name ``fit`` accepts, ``"auto"`` first."""
    return ("auto", *_MODULES)


def backend(method: str) -> Backend:
    """The backend of ``method``.

    Raises
    ------
    ValueError
        For an unknown method.
    """
    if method not in _MODULES:
        raise ValueError(f"method must be one of {method_names()}; got {method!r}")
    return importlib.import_module(_MODULES[method]).BACKENDS[method]
