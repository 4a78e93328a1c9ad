"""Files: reading data and posterior files, and writing outputs safely.

Reading: :func:`load_data` (observations and inputs from NetCDF, ``.npy`` or ``.npz``, checked
once here) and :func:`load_posterior` (a posterior written by ``zoo fit``, with its model rebuilt
from the file's attributes, :mod:`inference.registry`). Bad files raise ``ValueError`` naming the
file and what is wrong.

Writing: every command of the ``zoo`` CLI that writes files goes through these two helpers:

- :func:`check_outputs` runs *before* any simulation or sampling. It refuses an output that
  already exists (unless ``overwrite``), an output that is one of the command's inputs (always,
  even with ``overwrite``: ``zoo fit hmm data.nc --out data.nc`` would destroy the data), two
  outputs with the same path, an output that is a directory, and an output whose folder cannot
  be created or written.
- :func:`atomic_write` runs the writer on a temporary file in the destination folder and moves
  it into place with :func:`os.replace` (atomic on one file system). A writer that fails or is
  interrupted (an exception, ``KeyboardInterrupt``) leaves the previous file untouched and no
  temporary file behind.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import xarray as xr

from inference.registry import model_from_attrs

__all__ = ["OutputError", "check_outputs", "atomic_write", "load_data", "load_posterior"]


class OutputError(ValueError):
    """An output path that must not or cannot be written."""


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def _creatable_folder(folder: Path) -> None:
    """Raise unless ``folder`` exists as a writable directory or can be created."""
    p = folder.resolve()
    probe = p
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(f"cannot create the folder {folder}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        what = "write into the folder" if probe == p else "create the folder"
        raise OutputError(f"cannot {what} {folder}: {probe} is not writable")


def check_outputs(outputs: Iterable[tuple[str, str | os.PathLike]], *, inputs: Iterable = (),
                  overwrite: bool = False) -> list[Path]:
    """Check output paths before any work is done.

    Parameters
    ----------
    outputs : iterable of (label, path)
        ``label`` names the option in messages (``"--out"``, ``"--out-nc"``, ...).
    inputs : iterable of path
        Files the command reads; no output may be one of them, whatever ``overwrite`` says.
    overwrite : bool
        Allow replacing existing outputs.

    Returns
    -------
    list of Path

    Raises
    ------
    OutputError
        With a one-line message naming the option and the path.
    """
    outs = [(label, Path(p)) for label, p in outputs]
    ins = [Path(p) for p in inputs if p is not None]
    seen: list[tuple[str, Path]] = []
    for label, p in outs:
        for src in ins:
            if _same_file(p, src):
                raise OutputError(f"{label} {p} is the input file {src}; refusing to write over the "
                                  "input (choose another output name)")
        for other_label, q in seen:
            if _same_file(p, q):
                raise OutputError(f"{label} and {other_label} name the same file {p}")
        if p.is_dir():
            raise OutputError(f"{label} {p} is a directory; give a file name")
        if p.exists() and not overwrite:
            raise OutputError(f"{label} {p} already exists; refusing to overwrite it (pass --overwrite "
                              "to replace it)")
        _creatable_folder(p.parent)
        seen.append((label, p))
    return [p for _, p in outs]


def atomic_write(path: str | os.PathLike, writer: Callable[[Path], object]) -> Path:
    """Write ``path`` through a temporary file in the same folder, then rename it into place.

    Parameters
    ----------
    path : path
        The destination; its folder is created if needed.
    writer : callable
        ``writer(tmp_path)`` writes the whole file to ``tmp_path`` (same suffix as ``path``, so
        writers that choose a format by suffix, like matplotlib's ``savefig``, still work).

    Returns
    -------
    Path
        ``path``.

    Notes
    -----
    If ``writer`` raises (or is interrupted), the temporary file is removed and an existing file
    at ``path`` is left as it was.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.stem}.partial-{uuid.uuid4().hex[:12]}{dest.suffix}")
    try:
        writer(tmp)
        if not tmp.exists():
            raise OSError(f"the writer did not create {tmp}")
        os.replace(tmp, dest)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise
    return dest


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------


def _check_array(name: str, arr: np.ndarray, path: str) -> np.ndarray:
    if arr.ndim not in (2, 3):
        raise ValueError(f"{path}: {name} must have dims (time, neuron) or (trial, time, neuron); "
                         f"got an array of shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) and arr.dtype != bool:
        raise ValueError(f"{path}: {name} must be numeric; got dtype {arr.dtype}")
    return np.asarray(arr, dtype=float)


def load_data(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Read observations (and inputs) from a NetCDF, ``.npy`` or ``.npz`` file.

    Parameters
    ----------
    path : str or path
        ``.nc``: an xarray Dataset with ``y`` (dims ``(time, neuron)`` or ``(trial, time,
        neuron)``, any order: they are transposed by name) and optionally ``inputs`` (dims
        ``(time, input)`` / ``(trial, time, input)``). ``.npy``: y with axes in that order.
        ``.npz``: key ``y`` and optionally ``inputs``, axes in that order.

    Returns
    -------
    y : array (T, N) or (B, T, N)
    inputs : array (T, I) or (B, T, I), or None
    attrs : dict
        File attributes (``dt``, ``system``, ...); empty for NumPy files.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ValueError
        Unreadable file, unknown suffix, missing ``y``, or arrays of the wrong shape.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such data file: {path}")
    suffix = p.suffix.lower()
    attrs: dict = {}
    inputs = None
    if suffix in (".nc", ".netcdf", ".h5", ".nc4"):
        try:
            ds = xr.load_dataset(p)
        except Exception as err:  # noqa: BLE001 - any reader failure is a bad file
            raise ValueError(f"{path}: not a readable NetCDF file ({type(err).__name__}: {err})") from None
        if "y" not in ds:
            raise ValueError(f"{path}: no variable 'y' (found {sorted(ds.data_vars)})")
        dims = set(ds["y"].dims)
        if dims not in ({"time", "neuron"}, {"trial", "time", "neuron"}):
            raise ValueError(f"{path}: y must have dims (time, neuron) or (trial, time, neuron); got "
                             f"{ds['y'].dims}")
        order = [d for d in ("trial", "time", "neuron") if d in dims]
        y = ds["y"].transpose(*order).values
        if "inputs" in ds:
            idims = set(ds["inputs"].dims)
            iorder = [d for d in ("trial", "time", "input") if d in idims]
            if set(iorder) != idims:
                raise ValueError(f"{path}: inputs must have dims (time, input) or (trial, time, input); "
                                 f"got {ds['inputs'].dims}")
            inputs = ds["inputs"].transpose(*iorder).values
        attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in ds.attrs.items()}
    elif suffix in (".npy", ".npz"):
        try:
            loaded = np.load(p, allow_pickle=False)
        except Exception as err:  # noqa: BLE001
            raise ValueError(f"{path}: not a readable NumPy file ({type(err).__name__}: {err})") from None
        if suffix == ".npy":
            y = loaded
        else:
            if "y" not in loaded.files:
                raise ValueError(f"{path}: the .npz file has no array 'y' (found {loaded.files})")
            y = loaded["y"]
            inputs = loaded["inputs"] if "inputs" in loaded.files else None
    else:
        raise ValueError(f"{path}: unknown file type {suffix!r}; use .nc (NetCDF), .npy or .npz")
    y = _check_array("y", np.asarray(y), str(path))
    if y.size and np.isnan(y).all():
        raise ValueError(f"{path}: y has no observed values (every entry is NaN); NaN marks missing "
                         "observations, so there is nothing to fit")
    if np.isinf(y).any():
        raise ValueError(f"{path}: y contains {int(np.isinf(y).sum())} inf value(s); use NaN for missing "
                         "observations")
    if inputs is not None:
        inputs = _check_array("inputs", np.asarray(inputs), str(path))
        if inputs.ndim != y.ndim or inputs.shape[:-1] != y.shape[:-1]:
            raise ValueError(f"{path}: inputs of shape {inputs.shape} do not match y of shape {y.shape} "
                             "(same trial and time axes expected)")
    return y, inputs, attrs


def load_posterior(path: str | os.PathLike):
    """Read a posterior written by ``zoo fit`` and rebuild its model.

    Returns
    -------
    post : xarray.DataTree
    model : zoo model or None
        None when the file does not name a zoo model.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such posterior file: {path}")
    try:
        post = xr.open_datatree(p)
        post.load()
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"{path}: not a readable NetCDF posterior ({type(err).__name__}: {err})") from None
    if "posterior" not in post.children:
        raise ValueError(f"{path}: no 'posterior' group (is this a file written by 'zoo fit'?)")
    return post, model_from_attrs(post.attrs, source=str(path))
