"""Posterior draws to an ArviZ 1.x ``xarray.DataTree`` with named dims and coords from the model.

Groups: ``posterior`` (latent and deterministic sites), ``sample_stats``, ``observed_data`` (y,
NaN kept), ``log_likelihood`` (per time step, by the :class:`zoo.handlers.pointwise` handler, so
``arviz.loo`` works), ``constant_data`` (model keyword arrays such as inputs and masks, and values
fixed by ``numpyro.handlers.condition``). Every variable gets dims from ``model.dims``; ``trial``
is prepended to sequence sites of batched data.

:func:`draws_group` builds further groups of draws with the same dims and coords (``prior``,
``prior_predictive``, ``posterior_predictive``; see :mod:`inference.predictive`).
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from numpyro import handlers

from inference.program import (
    ProgramInfo,
    check_y,
    coords_for,
    inspect_program,
    site_dims,
    warn_missing_dims,
)
from zoo.handlers import pointwise
from zoo.protocol import as_model

__all__ = ["to_datatree", "pointwise_log_likelihood", "package_versions", "draws_group", "array_kwargs"]

# dims of common model keyword arrays (without the trial axis)
_KWARG_DIMS = {"mask": ["time"], "inputs": ["time", "input"]}


def package_versions() -> dict:
    """Versions of the packages a result depends on."""
    import arviz
    import blackjax
    import numpyro

    out = {"jax": jax.__version__, "numpyro": numpyro.__version__, "blackjax": blackjax.__version__,
           "arviz": arviz.__version__, "xarray": xr.__version__, "numpy": np.__version__}
    try:
        from importlib.metadata import version

        out["statespace-zoo"] = version("statespace-zoo")
    except Exception:  # pragma: no cover - not installed as a distribution
        pass
    return out


_LL_CACHE: dict = {}


def _ll_function(model: Callable, observed: tuple, latent: tuple, kw_names: tuple):
    try:
        key = (model, observed, latent, kw_names)
        hash(key)
    except TypeError:
        key = (id(model), observed, latent, kw_names)
    fn = _LL_CACHE.get(key)
    if fn is None:
        def one(draw, y, kwargs):
            with pointwise() as pw:
                handlers.substitute(handlers.seed(model, jax.random.key(0)), data=draw)(y, **kwargs)
            return {name: pw.log_likelihood[name] for name in observed}

        def many(flat, y, kwargs, batch_size):
            return jax.lax.map(lambda d: one(d, y, kwargs), flat, batch_size=batch_size)

        fn = jax.jit(many, static_argnums=3)
        if len(_LL_CACHE) > 64:
            _LL_CACHE.clear()
        _LL_CACHE[key] = fn
    return fn


def pointwise_log_likelihood(model: Callable, samples: Mapping, y, observed, model_kwargs=None,
                             batch_size: int = 64) -> dict:
    """Per-time-step log-likelihood of each observed site for every draw.

    Parameters
    ----------
    model : callable
        The NumPyro program, ``model(y, **model_kwargs)``.
    samples : mapping name -> array (C, S, ...)
        Latent site values with leading (chain, draw) axes.
    y : array (T, N) or (B, T, N)
    observed : sequence of str
        Observed site names.
    model_kwargs : mapping, optional
    batch_size : int
        Draws evaluated together (vectorized) per step of a ``lax.map``.

    Returns
    -------
    dict name -> array (C, S, [B,] T)
    """
    kwargs = {k: v for k, v in dict(model_kwargs or {}).items() if v is not None}
    first = next(iter(samples.values()))
    C, S = np.shape(first)[:2]
    flat = {k: jnp.reshape(jnp.asarray(v), (C * S,) + np.shape(v)[2:]) for k, v in samples.items()}
    fn = _ll_function(model, tuple(observed), tuple(sorted(flat)), tuple(sorted(kwargs)))
    out = fn(flat, jnp.asarray(y), kwargs, int(min(batch_size, C * S)))
    return {k: np.asarray(v).reshape((C, S) + v.shape[1:]) for k, v in out.items()}


def _group(variables: Mapping, dims: Mapping, coords: Mapping, sample: bool = True) -> xr.Dataset:
    shapes = {k: np.shape(v)[2:] if sample else np.shape(v) for k, v in variables.items()}
    cds = coords_for(dims, shapes, coords)
    data_vars = {}
    for name, value in variables.items():
        lead = ["chain", "draw"] if sample else []
        data_vars[name] = (lead + list(dims[name]), np.asarray(value))
    ds = xr.Dataset(data_vars)
    used = {d for v in ds.data_vars.values() for d in v.dims}
    ds = ds.assign_coords({d: c for d, c in cds.items() if d in used})
    if sample and ds.data_vars:
        C, S = np.shape(next(iter(variables.values())))[:2]
        ds = ds.assign_coords(chain=np.arange(C), draw=np.arange(S))
    return ds


def _attrs(library: str) -> dict:
    import numpyro

    version = numpyro.__version__
    if library == "blackjax":
        import blackjax

        version = blackjax.__version__
    return {"created_at": datetime.datetime.now(datetime.UTC).isoformat(),
            "inference_library": library, "inference_library_version": version,
            "creation_library": "statespace-zoo"}


def _jsonable(value):
    try:
        return json.dumps(value, default=repr, sort_keys=True)
    except Exception:  # pragma: no cover
        return repr(value)


def array_kwargs(model_kwargs: Mapping) -> dict:
    """Model arguments as arrays, as the DataTree's ``constant_data`` stores them.

    Parameters
    ----------
    model_kwargs : mapping
        Program arguments.

    Returns
    -------
    dict
        An array argument as it is; a named tuple (e.g. a fixed frame, ``zoo.frame.Frame``)
        one entry per field, ``<argument>_<field>``; other pytrees one per leaf,
        ``<argument>_<i>``.
    """
    out = {}
    for k, v in model_kwargs.items():
        if isinstance(v, tuple) and hasattr(v, "_fields"):
            out.update({f"{k}_{f}": getattr(v, f) for f in v._fields})
        elif isinstance(v, (tuple, list, dict)):
            out.update({f"{k}_{i}": leaf for i, leaf in enumerate(jax.tree.leaves(v))})
        else:
            out[k] = v
    return out


def to_datatree(
    model: Callable,
    samples: Mapping,
    y,
    *,
    sample_stats: Mapping | None = None,
    model_kwargs: Mapping | None = None,
    log_likelihood: bool = True,
    dims: Mapping | None = None,
    attrs: Mapping | None = None,
    library: str = "numpyro",
    info: ProgramInfo | None = None,
) -> xr.DataTree:
    """Convert draws with leading (chain, draw) axes into an ArviZ 1.x DataTree.

    Parameters
    ----------
    model : callable
        The NumPyro program (a zoo model, or any program; handler wrappers are looked through
        for the model protocol's ``dims``, ``coords`` and ``sequence_sites``).
    samples : mapping name -> array (C, S, *site_shape)
        Posterior draws of latent and deterministic sites (and any derived quantity named in
        ``model.dims`` or in ``dims``).
    y : array (T, N) or (B, T, N)
        The observations (NaN = missing), kept in ``observed_data``.
    sample_stats : mapping name -> array (C, S), optional
        Sampler statistics (``diverging``, ``energy``, ``step_size``, ``tree_depth``,
        ``n_steps``, ``acceptance_rate``, ``lp``).
    model_kwargs : mapping, optional
        Extra model arguments (``inputs``, ``mask``): arrays go to ``constant_data``.
    log_likelihood : bool
        Compute the pointwise log-likelihood group (one model evaluation per draw).
    dims : mapping name -> list of str, optional
        Dims for variables the model does not name (without chain/draw).
    attrs : mapping, optional
        Root attributes (method, options, seed, initialization, ...); non-scalar values are
        stored as JSON strings so that the tree saves to netCDF.
    library : str
        ``"numpyro"`` or ``"blackjax"`` (recorded in group attributes).
    info : ProgramInfo, optional
        A previous :func:`inference.program.inspect_program` result (saves one model trace).

    Returns
    -------
    xarray.DataTree
        Groups ``posterior``, ``sample_stats`` (if given), ``observed_data``,
        ``log_likelihood`` (if requested), ``constant_data`` (if any).
    """
    y = check_y(y)
    model_kwargs = {k: v for k, v in dict(model_kwargs or {}).items() if v is not None}
    if not samples:
        raise ValueError("samples must hold at least one site with leading (chain, draw) axes")
    lead = {np.shape(v)[:2] for v in samples.values()}
    if len(lead) != 1 or any(len(v) < 2 for v in lead):
        raise ValueError(f"every entry of samples needs the same leading (chain, draw) axes; got {lead}")
    info = info or inspect_program(model, y, model_kwargs)
    mdims = dict(as_model(model).dims)
    all_dims = {**mdims, **dict(info.dims), **dict(dims or {})}
    post = {k: np.asarray(v) for k, v in samples.items()}
    missing: list = []
    pdims = {k: site_dims(k, v.shape[2:], all_dims, info.sequence_sites, info.batched, missing)
             for k, v in post.items()}
    groups = {"posterior": _group(post, pdims, info.coords)}
    library_attrs = _attrs(library)
    if sample_stats:
        ss = {k: np.asarray(v) for k, v in sample_stats.items()}
        ssd = {k: site_dims(k, v.shape[2:], {}, (), False, missing) for k, v in ss.items()}
        groups["sample_stats"] = _group(ss, ssd, {})
    ydims = info.dims[info.observed[0]]
    obs = {name: y for name in info.observed}
    groups["observed_data"] = _group(obs, {n: info.dims[n] for n in obs}, info.coords, sample=False)
    if log_likelihood:
        latent = {k: v for k, v in samples.items() if k in info.latent}
        ll = pointwise_log_likelihood(model, latent, y, info.observed, model_kwargs)
        lld = {}
        for name, value in ll.items():
            d = info.dims[name][:-1]
            lld[name] = d if len(d) == value.ndim - 2 else \
                site_dims(name, value.shape[2:], {}, (), False, missing)
        groups["log_likelihood"] = _group(ll, lld, info.coords)
        if not all(np.isfinite(v).all() for v in ll.values()):
            library_attrs["warning"] = "non-finite pointwise log-likelihood values"
    const = {k: np.asarray(v) for k, v in array_kwargs(model_kwargs).items() if np.ndim(v) > 0}
    const.update({k: np.asarray(v) for k, v in info.conditioned.items()})
    if const:
        cdims = {}
        for k, v in const.items():
            known = {k: _KWARG_DIMS[k]} if k in _KWARG_DIMS else all_dims
            seq = (k,) if k in _KWARG_DIMS else info.sequence_sites
            cdims[k] = site_dims(k, v.shape, known, seq, info.batched, missing)
        groups["constant_data"] = _group(const, cdims, info.coords, sample=False)
    warn_missing_dims(missing)
    for ds in groups.values():
        ds.attrs.update(library_attrs)
    dt = xr.DataTree.from_dict(groups)
    root = {"observed_dims": ",".join(ydims)}
    for k, v in dict(attrs or {}).items():
        plain = isinstance(v, str | int | float | np.integer | np.floating) and not isinstance(v, bool)
        root[k] = v if plain else _jsonable(v)
    dt.attrs.update(root)
    return dt


def draws_group(model: Callable, draws: Mapping, y, *, model_kwargs: Mapping | None = None,
                dims: Mapping | None = None, info: ProgramInfo | None = None,
                library: str = "numpyro") -> xr.Dataset:
    """Draws with leading (chain, draw) axes as one DataTree group, named like :func:`to_datatree`
    names the posterior and observed data.

    Observed sites (y and its replicates) get the dims and coords of ``observed_data``; every
    other site the model's dims (``trial`` prepended to sequence sites of batched data).

    Parameters
    ----------
    model : callable
        The zoo model or NumPyro program.
    draws : mapping name -> array (C, S, *site_shape)
    y : array (T, N) or (B, T, N)
        The observations the group belongs to (for the observed sites' dims and the coords).
    model_kwargs : mapping, optional
    dims : mapping name -> list of str, optional
        Dims for variables the model does not name (without chain/draw).
    info : ProgramInfo, optional
        A previous :func:`inference.program.inspect_program` result.
    library : str
        Recorded in the group's attributes.

    Returns
    -------
    xarray.Dataset
    """
    y = check_y(y)
    model_kwargs = {k: v for k, v in dict(model_kwargs or {}).items() if v is not None}
    info = info or inspect_program(model, y, model_kwargs)
    all_dims = {**dict(as_model(model).dims), **dict(info.dims), **dict(dims or {})}
    values = {k: np.asarray(v) for k, v in draws.items()}
    missing: list = []
    gdims = {}
    for name, value in values.items():
        if name in info.observed:
            gdims[name] = list(info.dims[name])
        else:
            gdims[name] = site_dims(name, value.shape[2:], all_dims, info.sequence_sites,
                                    info.batched, missing)
    warn_missing_dims(missing)
    ds = _group(values, gdims, info.coords)
    ds.attrs.update(_attrs(library))
    return ds
