"""The built-in models and simulated systems, by name (what ``zoo fit MODEL`` and ``zoo simulate
SYSTEM`` name), and how a posterior file records the model it came from.

- :data:`MODELS` (command-line names) and :data:`MODEL_CLASSES` (their zoo classes);
  :func:`make_model` builds one from its class name and constructor arguments.
- :func:`record_model` writes a model's class name and constructor arguments into a posterior's
  attributes (``zoo_model``, ``zoo_model_kwargs``); :func:`model_from_attrs` rebuilds it.
- :data:`SYSTEMS` and :func:`simulate_system`: the built-in data sets as ``xarray.Dataset``.

Bad names or arguments raise ``ValueError`` naming them.
"""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Mapping
from dataclasses import asdict, fields

import numpy as np

__all__ = ["SYSTEMS", "MODELS", "MODEL_CLASSES", "DYNAMICS_MODELS", "model_class", "make_model",
           "record_model", "model_from_attrs", "simulate_system"]

SYSTEMS = ("nascar", "two_spirals", "line_attractor", "two_point_attractors", "van_der_pol",
           "double_well")
MODELS = ("hmm", "lds", "slds", "rslds", "gpslds", "gpsde")
#: command-line name -> zoo class name
MODEL_CLASSES = {"hmm": "HMM", "lds": "LDS", "slds": "SLDS", "rslds": "RSLDS", "gpslds": "GPSLDS",
                 "gpsde": "GPSDE"}
_MODULES = {"HMM": "zoo.hmm", "LDS": "zoo.lds", "SLDS": "zoo.slds", "RSLDS": "zoo.rslds",
            "GPSLDS": "zoo.gpslds", "GPSDE": "zoo.gpsde"}
#: class names of the models with latent dynamics (attractor analysis applies)
DYNAMICS_MODELS = ("SLDS", "RSLDS", "GPSLDS", "GPSDE")


def model_class(name: str) -> type:
    """The zoo model class of a class name in :data:`MODEL_CLASSES` (imported on demand)."""
    if name not in _MODULES:
        raise ValueError(f"unknown model class {name!r}; known: {sorted(_MODULES)}")
    return getattr(importlib.import_module(_MODULES[name]), name)  # the class, from its module


def make_model(name: str, kwargs: Mapping):
    """Build a zoo model from its class name and constructor arguments (a ``ValueError`` for bad
    arguments names the argument)."""
    cls = model_class(name)
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ValueError(f"bad arguments for {name}: {err}") from None


def record_model(post, model) -> None:
    """Record a zoo model in a posterior's attributes: ``zoo_model`` (class name) and
    ``zoo_model_kwargs`` (constructor arguments as JSON), which :func:`model_from_attrs` reads."""
    init = {f.name for f in fields(model) if f.init}
    kw = {k: v for k, v in asdict(model).items() if k in init}
    post.attrs["zoo_model"] = type(model).__name__
    post.attrs["zoo_model_kwargs"] = json.dumps(kw, sort_keys=True)


def model_from_attrs(attrs: Mapping, source: str = "posterior"):
    """The model recorded by :func:`record_model`, or None when ``attrs`` name none.

    Raises
    ------
    ValueError
        When the recorded arguments are not valid JSON or do not build the model.
    """
    name = attrs.get("zoo_model")
    if name is None:
        return None
    try:
        kw = json.loads(attrs.get("zoo_model_kwargs", "{}"))
    except json.JSONDecodeError:
        raise ValueError(f"{source}: the attribute zoo_model_kwargs is not valid JSON") from None
    return make_model(str(name), kw)


def simulate_system(system: str, seed: int = 0, num_steps: int | None = None, num_trials: int = 1,
                    num_neurons: int | None = None, emissions: str | None = None, bin_size: int = 1):
    """Simulate a built-in system and return it as an ``xarray.Dataset`` with named dims.

    Parameters
    ----------
    system : {"nascar", "two_spirals", "line_attractor", "two_point_attractors", "van_der_pol",
              "double_well"}
    seed : int
    num_steps : int, optional
        Time steps per trial *after* binning (default: the system's own duration).
    num_trials : int
    num_neurons : int, optional
        Observed dimension (NASCAR: ``obs_dim``, default 10).
    emissions : {"gaussian", "poisson"}, optional
        Default: Gaussian for NASCAR, Poisson for the others.
    bin_size : int
        For the continuous-time systems: sum counts over ``bin_size`` simulation steps
        (``dt`` grows accordingly); x and inputs are subsampled at the bin starts.

    Returns
    -------
    xarray.Dataset
        ``y`` (trial, time, neuron) or (time, neuron), ``x`` (..., latent), ``z`` (NASCAR),
        ``inputs`` (driven systems), attrs ``system``, ``seed``, ``dt``, ``emissions``,
        ``num_trials``, ``bin_size``.
    """
    import jax

    if system not in SYSTEMS:
        raise ValueError(f"unknown system {system!r}; choose from {', '.join(SYSTEMS)}")
    for name, value, low in (("num_trials", num_trials, 1), ("bin_size", bin_size, 1), ("seed", seed, 0)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"--{name.replace('_', '-')} must be an integer >= {low}; got {value!r}")
    if num_steps is not None and num_steps < 2:
        raise ValueError(f"--num-steps must be an integer >= 2; got {num_steps}")
    if num_neurons is not None and num_neurons < 2:
        raise ValueError(f"--num-neurons must be an integer >= 2; got {num_neurons}")
    if emissions is not None and emissions not in ("gaussian", "poisson"):
        raise ValueError(f"--emissions must be 'gaussian' or 'poisson'; got {emissions!r}")
    attrs = {"system": system, "seed": seed, "num_trials": num_trials, "bin_size": bin_size}
    if system == "nascar":
        from zoo.datasets import nascar

        if bin_size != 1:
            raise ValueError("--bin-size applies to the continuous-time systems, not to nascar")
        em = emissions or "gaussian"
        d = nascar(seed=seed, num_steps=num_steps or 1000, num_trials=num_trials, emissions=em,
                   obs_dim=num_neurons or 10)
        attrs.update(dt=1.0, emissions=em, description="NASCAR track (rSLDS, 4 regimes, 2-D latent)")
        return _system_dataset(d, attrs)
    from zoo import systems
    from zoo.preprocess import bin_observations

    fn = getattr(systems, system)  # the simulator function of zoo.systems of that name
    em = emissions or "poisson"
    kw = {"num_trials": num_trials, "emissions": em}
    if num_neurons is not None:
        kw["num_neurons"] = num_neurons
    sig = inspect.signature(fn).parameters
    dt = float(sig["dt"].default)
    if num_steps is not None:
        kw["duration"] = num_steps * bin_size * dt + 0.5 * dt
    d = fn(jax.random.key(seed), **kw)
    y = np.asarray(d["y"])
    counts = em == "poisson"
    yb = bin_observations(y, bin_size, counts=counts) if bin_size > 1 else y
    T = yb.shape[-2]
    if num_steps is not None:
        T = min(T, num_steps)
        yb = yb[..., :T, :]
    out = {"y": yb, "x": np.asarray(d["x"])[..., ::bin_size, :][..., :T, :]}
    if d.get("inputs") is not None:
        out["inputs"] = np.asarray(d["inputs"])[..., ::bin_size, :][..., :T, :]
    if num_trials == 1:
        out = {k: v[0] for k, v in out.items()}
    doc = (fn.__doc__ or "").strip().splitlines()[0]
    attrs.update(dt=float(d["dt"]) * bin_size, emissions=em, description=doc)
    return _system_dataset(out, attrs)


def _system_dataset(data: Mapping, attrs: Mapping):
    """An xarray Dataset with named dims from a dict of y, x, z, inputs."""
    import xarray as xr

    y = np.asarray(data["y"])
    lead = ("trial", "time") if y.ndim == 3 else ("time",)
    vars_ = {"y": (lead + ("neuron",), y)}
    for name, last in (("x", "latent"), ("inputs", "input")):
        v = data.get(name)
        if v is not None and np.shape(v)[:-1] == y.shape[:-1]:
            vars_[name] = (lead + (last,), np.asarray(v))
    if data.get("z") is not None and np.shape(data["z"]) == y.shape[:-1]:
        vars_["z"] = (lead, np.asarray(data["z"]).astype(np.int32))
    coords = {"time": np.arange(y.shape[-2]) * float(attrs.get("dt", 1.0))}
    ds = xr.Dataset(vars_, coords=coords, attrs=dict(attrs))
    ds["y"].attrs["description"] = "observations (counts for Poisson systems)"
    if "x" in ds:
        ds["x"].attrs["description"] = "true latent state"
    return ds
