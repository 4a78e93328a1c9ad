"""The model protocol: what every zoo model provides, and what the inference layer relies on.

A model is a frozen dataclass holding the structure (sizes and choices) that is itself the
NumPyro program. :class:`Model` lists everything :mod:`inference` may ask of it; the optional
parts have defaults here, so the inference layer calls them without probing. A user's plain
NumPyro program (or a zoo model wrapped in NumPyro handlers such as ``condition``) is fitted
through the :class:`Program` adapter, which :func:`as_model` builds.

Required: ``__call__(y=None, *, num_steps=None, num_trials=None, **model_kwargs)`` (the program;
y is (T, N) or (B, T, N) with NaN missing, or None for the prior predictive) and ``dims`` (named
dims of every site, for ArviZ).

Optional, with the defaults below: ``sequence_sites`` (sites holding whole sequences, which gain
a ``trial`` dim when y is batched), ``continuous_time``, ``dt`` (time between observations),
``float64_recommended``, ``dim_sizes`` (whose ``"latent"`` and ``"state"`` entries are the latent
dimension and the number of discrete states), ``coords``, ``initial_params`` (a point estimate to
start chains from), ``prepare`` (program arguments derived from the data once, e.g. the SLDS's
latent frame), ``path_reference`` and ``reference_values`` (a non-centred path),
``blocked_sampler`` (the model's exact blocked posterior sampler, see :mod:`inference.blocked`).

Deterministic dynamics, for attractor analysis (:mod:`inference.attractors`): continuous-time
models give ``drift``, discrete-time models ``step``, both ``regimes``; models whose drift is
integrated out during fitting also give ``drift_moments`` and ``dynamics_params``. The defaults
raise ``NotImplementedError`` (a model without dynamics) or leave the draw as it is.

Sizes are read through ``dim_sizes()`` rather than attributes such as ``latent_dim``: a default
attribute on this base class would become the default value of the models' dataclass fields of
the same name.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numpyro.primitives import Messenger

__all__ = ["Model", "Program", "BlockedSpec", "as_model"]


class BlockedSpec(NamedTuple):
    """What a model's exact blocked sampler needs to know (:mod:`inference.blocked`).

    Attributes
    ----------
    path_site : str
        The switching path site: its states are drawn by FFBS given the path.
    collapsed : bool
        True: given the states the path is linear-Gaussian with linear-Gaussian emissions, so
        it is integrated out for the parameters and drawn exactly after them. False: the path is
        whitened given the states and moved by NUTS with the parameters; the program then takes
        ``path_reference={"states": z, "path": x_ref, "given_states": True, "whiten": x}`` (see
        :class:`zoo.slds.SLDS`).
    states_site : str
        The name under which the block drawn exactly given the path is recorded: ``"z"``, the
        discrete states (FFBS; int), or a conjugate site integrated out by the program, e.g. the
        GP models' ``"drift_weights"`` (its exact conditional given the path, drawn by
        :class:`zoo.handlers.decode`; then ``path_reference["states"]`` carries its value, None
        when only the constrained parameters are wanted); or None: no block is drawn given the
        path (the program integrates it out, ``path_reference["states"]`` is None), and the
        sweep is one NUTS transition on the parameters and the whitened path.
    augmented : bool
        The states' transitions depend on the path but are made Gaussian in it by Polya-gamma
        variables (stick-breaking transitions): each sweep draws z | x, theta by FFBS and the
        variables given (x, z), then integrates the path out given both (``collapsed``); the
        program's switching site takes them through
        ``zoo.handlers.condition_states(..., augmentation=...)``.
    """

    path_site: str = "x"
    collapsed: bool = True
    states_site: str | None = "z"
    augmented: bool = False


class Model(abc.ABC):
    """Abstract base of every zoo model (the model protocol)."""

    sequence_sites: tuple[str, ...] = ("x", "y")
    continuous_time: bool = False
    #: time between consecutive observations, in the units of the dynamics' rates (the
    #: continuous-time models' bin width; one step for the discrete-time models)
    dt: float = 1.0
    float64_recommended: bool = False

    @abc.abstractmethod
    def __call__(self, y=None, *args, **kwargs):
        """The NumPyro program."""

    @property
    @abc.abstractmethod
    def dims(self) -> dict[str, list[str]]:
        """Named dims of every site (without chain, draw and trial)."""

    def dim_sizes(self) -> dict[str, int]:
        """Sizes of the model's own dims (not ``time`` or ``trial``).

        The inference layer reads ``"latent"`` (the latent dimension D) and ``"state"`` (the
        number K of discrete states) from here; a model without them leaves them out.
        """
        return {}

    def coords(self, data=None) -> dict[str, np.ndarray]:
        """Coordinates for the named dims, from data (a dict with ``y``, or an array).

        Parameters
        ----------
        data : mapping or array (T, N) or (B, T, N), optional

        Returns
        -------
        dict dim -> array
        """
        y = data.get("y") if isinstance(data, Mapping) else data
        coords: dict = {}
        if y is not None:
            shape = np.shape(y)
            coords["time"] = np.arange(shape[-2])
            coords["neuron"] = np.arange(shape[-1])
            if len(shape) == 3:
                coords["trial"] = np.arange(shape[0])
        for dim, size in self.dim_sizes().items():
            coords.setdefault(dim, np.arange(size))
        return coords

    def initial_params(self, y, key, **model_kwargs) -> dict | None:
        """A point estimate of the latent sites (constrained) to start chains from, or None when
        the model has none (chains then start at the prior median)."""
        return None

    def prepare(self, y, model_kwargs: Mapping) -> dict:
        """Program arguments derived from the data once, before inference (default: none).

        Parameters
        ----------
        y : array (T, N) or (B, T, N)
        model_kwargs : mapping
            The user's model arguments (``mask``, ``inputs``).

        Returns
        -------
        dict
            Extra keyword arguments for the program.
        """
        return {}

    def path_reference(self, y, values: Mapping, key=None, **model_kwargs) -> dict | None:
        """The reference a non-centred path is built around (:mod:`zoo.reparam`), or None."""
        return None

    def reference_values(self, values: Mapping, reference: Mapping) -> dict:
        """Site values of the non-centred program from values of the plain one."""
        return dict(values)

    def blocked_sampler(self) -> BlockedSpec | None:
        """The model's exact blocked posterior sampler (:mod:`inference.blocked`), or None."""
        return None

    def blocked_start(self, y, values: Mapping, key=None, **model_kwargs) -> tuple[dict, dict]:
        """(start values, extra program arguments) for the blocked sampler, from a point
        estimate of the plain program's latent sites; default: unchanged, none."""
        return dict(values), {}

    # ------------------------------------------------------------ deterministic dynamics
    def drift(self, params, x):
        """Continuous-time drift f(x) of one posterior draw, x (..., D) -> (..., D)."""
        raise NotImplementedError(f"{type(self).__name__} has no continuous-time drift")

    def step(self, params, x, z=None):
        """Discrete-time dynamics of one draw: the next mean given x (..., D) in state z."""
        raise NotImplementedError(f"{type(self).__name__} has no discrete-time dynamics")

    def regimes(self, params, x):
        """Which regime (discrete state, soft partition) is active at x: probabilities (..., K)."""
        raise NotImplementedError(f"{type(self).__name__} has no regimes")

    def drift_moments(self, params, x) -> tuple | None:
        """Posterior mean and variance of f(x), each (..., D), when the drift was integrated out
        during fitting and ``params`` carry its conditional moments; None otherwise (the default:
        f is a deterministic function of the draw)."""
        return None

    def dynamics_params(self, params: Mapping, key) -> dict:
        """One draw's parameters completed for :meth:`drift` / :meth:`step`: sites integrated out
        during fitting are drawn from their exact conditional with ``key``. Default: unchanged."""
        return dict(params)


@dataclass(frozen=True, eq=True)
class Program(Model):
    """Adapter giving a plain NumPyro program the model protocol.

    Calls go to ``fn``; the protocol's properties come from the zoo model that ``fn`` wraps in
    NumPyro handlers, if any (a conditioned model keeps its names), else the defaults. The
    model-specific helpers (``initial_params``, ``prepare``, ``path_reference``) keep their
    defaults: they assume the unwrapped program; ``blocked_sampler`` is the wrapped model's.

    Parameters
    ----------
    fn : callable
        The NumPyro program, called as ``fn(y, **model_kwargs)``.
    """

    fn: Callable

    @property
    def inner(self) -> Model | None:
        """The zoo model wrapped by ``fn``'s NumPyro handlers, or None."""
        obj = self.fn
        while isinstance(obj, Messenger):
            obj = obj.fn
        return obj if isinstance(obj, Model) else None

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    @property
    def dims(self) -> dict[str, list[str]]:
        return dict(self.inner.dims) if self.inner is not None else {}

    @property
    def sequence_sites(self) -> tuple[str, ...]:
        return tuple(self.inner.sequence_sites) if self.inner is not None else ()

    @property
    def continuous_time(self) -> bool:
        return bool(self.inner.continuous_time) if self.inner is not None else False

    @property
    def dt(self) -> float:
        return float(self.inner.dt) if self.inner is not None else 1.0

    @property
    def float64_recommended(self) -> bool:
        return bool(self.inner.float64_recommended) if self.inner is not None else False

    def dim_sizes(self) -> dict[str, int]:
        return self.inner.dim_sizes() if self.inner is not None else {}

    # the dynamics are the wrapped model's: handlers change the program, not the maths of a draw
    def drift(self, params, x):
        return self._require_inner("drift").drift(params, x)

    def step(self, params, x, z=None):
        return self._require_inner("step").step(params, x, z)

    def regimes(self, params, x):
        return self._require_inner("regimes").regimes(params, x)

    def drift_moments(self, params, x) -> tuple | None:
        return self.inner.drift_moments(params, x) if self.inner is not None else None

    def dynamics_params(self, params: Mapping, key) -> dict:
        return self.inner.dynamics_params(params, key) if self.inner is not None else dict(params)

    def _require_inner(self, what: str) -> Model:
        if self.inner is None:
            raise NotImplementedError(f"a plain NumPyro program has no {what}; wrap a zoo model")
        return self.inner

    def blocked_sampler(self) -> BlockedSpec | None:
        # the blocks only reinterpret the path site, so handlers that fix parameter values
        # (condition, substitute) keep the wrapped model's blocked sampler valid
        return self.inner.blocked_sampler() if self.inner is not None else None


def as_model(program: Callable) -> Model:
    """The model protocol of ``program``: the zoo model itself, or a :class:`Program` adapter.

    Parameters
    ----------
    program : callable
        A zoo model, a zoo model wrapped in NumPyro handlers, or any NumPyro program.

    Returns
    -------
    Model

    Raises
    ------
    ValueError
        When ``program`` is not callable.
    """
    if isinstance(program, Model):
        return program
    if not callable(program):
        raise ValueError(f"model must be a zoo model or a NumPyro program (a callable); got {program!r}")
    return Program(program)
