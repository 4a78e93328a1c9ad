"""What the inference layer needs to know about a program: its sites, read from one trace, and
the names the model protocol (:mod:`zoo.protocol`) gives them.

A plain NumPyro program, or a zoo model wrapped in NumPyro handlers, goes through
:func:`zoo.protocol.as_model`; sites the model does not name get ``<name>_dim_i`` dims.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import NamedTuple

import jax
import numpy as np
from numpyro import handlers

from zoo.protocol import as_model

__all__ = ["ProgramInfo", "inspect_program", "check_y", "abstract_trace"]


def check_y(y) -> np.ndarray:
    """Observations as a float array (T, N) or (B, T, N); NaN marks missing entries.

    Raises
    ------
    ValueError
        If ``y`` is None, not numeric, or of the wrong rank.
    """
    if y is None:
        raise ValueError("y must be an array of shape (T, N) or (B, T, N); got None")
    try:
        arr = np.asarray(y, dtype=float)
    except (TypeError, ValueError) as err:
        raise ValueError(f"y must be a numeric array of shape (T, N) or (B, T, N): {err}") from None
    if arr.ndim not in (2, 3):
        raise ValueError(f"y must have shape (T, N) or (B, T, N); got shape {arr.shape}")
    return arr


class ProgramInfo(NamedTuple):
    """Sites of a program run on the data.

    Attributes
    ----------
    latent : dict name -> shape
        Latent sample sites (what samplers see), not observed and not collapsed.
    deterministic : dict name -> shape
        Deterministic sites.
    observed : list of str
        Observed sites holding the data y (shape equal to y's), used for the log-likelihood.
    conditioned : dict name -> array
        Other observed sites (values fixed by ``numpyro.handlers.condition``).
    collapsed : list of str
        Sites integrated out (``infer["collapsed"]``).
    dims : dict name -> list of str
        Named dims of every site (from the model, or ``<name>_dim_i`` fallbacks).
    coords : dict dim -> array
    sequence_sites : tuple of str
    batched : bool
        Whether y has a trial axis.
    """

    latent: dict
    deterministic: dict
    observed: list
    conditioned: dict
    collapsed: list
    dims: dict
    coords: dict
    sequence_sites: tuple
    batched: bool


def abstract_trace(model, y, model_kwargs):
    """The program's sites traced with abstract values (shapes and dtypes only). Why: run
    eagerly, every operation of a long program compiles on its own (about 4 s per trace of the
    SLDS at T = 2000, several traces per fit).

    Parameters
    ----------
    model : callable
        A NumPyro program ``model(y, **model_kwargs)``.
    y : array
    model_kwargs : mapping

    Returns
    -------
    OrderedDict or None
        The NumPyro trace (site name -> site, values abstract); None when the program needs
        concrete values (Python control flow on them) or conditions a site on a computed value.
    """
    captured = {}

    def run():
        seeded = handlers.seed(model, jax.random.key(0))
        captured["trace"] = handlers.trace(seeded).get_trace(y, **model_kwargs)
        return 0

    try:
        jax.make_jaxpr(run)()
    except Exception:
        return None
    return captured["trace"]


def _trace(model, y, model_kwargs, concrete: bool = False):
    abstract = None if concrete else abstract_trace(model, y, model_kwargs)
    if abstract is not None:
        return abstract
    seeded = handlers.seed(model, jax.random.key(0))
    try:
        return handlers.trace(seeded).get_trace(y, **model_kwargs)
    except ValueError:
        raise
    except Exception as err:  # a bare shape error from inside JAX: say what went in
        shapes = {k: [np.shape(a) for a in jax.tree.leaves(v)] for k, v in model_kwargs.items()}
        raise ValueError(
            f"the model could not be run on y of shape {np.shape(y)} with model_kwargs shapes "
            f"{shapes}: {type(err).__name__}: {err}"
        ) from err


def site_dims(name: str, shape: tuple, info_dims: Mapping, sequence_sites, batched: bool,
              missing: list | None = None) -> list[str]:
    """Named dims of one site value of ``shape`` (without chain/draw).

    ``trial`` is prepended for sequence sites when the data are batched. Falls back to
    ``<name>_dim_i`` when the model does not name the site's dims, appending the name to
    ``missing`` (for one warning by the caller).
    """
    dims = info_dims.get(name)
    if dims is not None:
        dims = list(dims)
        if batched and name in sequence_sites and len(shape) == len(dims) + 1:
            dims = ["trial", *dims]
        if len(dims) == len(shape):
            return dims
    if len(shape) == 0:
        return []
    if missing is not None:
        missing.append(f"{name} {tuple(shape)}")
    return [f"{name}_dim_{i}" for i in range(len(shape))]


def inspect_program(model: Callable, y: np.ndarray, model_kwargs: Mapping | None = None) -> ProgramInfo:
    """Run the program once on the data and classify its sites.

    Parameters
    ----------
    model : callable
        NumPyro program called as ``model(y, **model_kwargs)``.
    y : array (T, N) or (B, T, N)
    model_kwargs : mapping, optional

    Returns
    -------
    ProgramInfo

    Raises
    ------
    ValueError
        When the program cannot run on data of this shape.
    """
    model_kwargs = dict(model_kwargs or {})
    tr = _trace(model, y, model_kwargs)
    if any(site["type"] == "sample" and site["is_observed"] and isinstance(site["value"], jax.core.Tracer)
           and tuple(np.shape(site["value"])) != tuple(np.shape(y)) for site in tr.values()):
        # a site conditioned on a computed value: ProgramInfo.conditioned needs it concretely
        tr = _trace(model, y, model_kwargs, concrete=True)
    proto = as_model(model)
    mdims = dict(proto.dims)
    seq = tuple(proto.sequence_sites)
    batched = np.ndim(y) == 3
    latent, det, observed, cond, collapsed = {}, {}, [], {}, []
    for name, site in tr.items():
        if site["type"] == "deterministic":
            det[name] = tuple(np.shape(site["value"]))
        elif site["type"] == "sample":
            if site["infer"].get("collapsed"):
                collapsed.append(name)
            elif not site["is_observed"]:
                latent[name] = tuple(np.shape(site["value"]))
            elif tuple(np.shape(site["value"])) == tuple(np.shape(y)) and (not seq or name in seq):
                observed.append(name)
            else:
                cond[name] = np.asarray(site["value"])
    if not observed:
        raise ValueError(
            f"the model has no observed site matching y of shape {np.shape(y)}: pass the data as "
            "the model's first argument (obs=y)"
        )
    dims, missing = {}, []
    for name, shape in {**latent, **det, **{k: np.shape(v) for k, v in cond.items()}}.items():
        dims[name] = site_dims(name, shape, mdims, seq, batched, missing)
    for name in observed:
        known = mdims if name in mdims else {name: ["time", "obs"]}
        dims[name] = site_dims(name, np.shape(y), known, seq or (name,), batched, missing)
    warn_missing_dims(missing)
    coords = {k: np.asarray(v) for k, v in proto.coords({"y": y}).items()}
    return ProgramInfo(latent, det, observed, cond, collapsed, dims, coords, seq, batched)


def warn_missing_dims(missing: list) -> None:
    """One warning naming every site whose dims the model does not give."""
    if missing:
        warnings.warn(
            "the model does not name the dims of these sites, so they get <name>_dim_i dims "
            f"(add them to the model's dims): {', '.join(missing)}",
            UserWarning,
            stacklevel=3,
        )


def coords_for(dims_by_var: Mapping, shapes: Mapping, coords: Mapping) -> dict:
    """Coordinates for every dim in use, from the model where the size agrees, else integers."""
    out: dict = {}
    for name, dims in dims_by_var.items():
        shape = shapes.get(name)
        if shape is None:
            continue
        for dim, size in zip(dims, shape, strict=True):
            if dim in out:
                continue
            c = coords.get(dim)
            out[dim] = np.asarray(c) if c is not None and len(c) == size else np.arange(size)
    return out
