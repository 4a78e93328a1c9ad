"""Safe output files: check every path before any work, write to a temporary name, rename.

Every command of the ``zoo`` CLI that writes files goes through these two helpers:

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

__all__ = ["OutputError", "check_outputs", "atomic_write"]


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
