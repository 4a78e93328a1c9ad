"""Every teaching notebook runs top to bottom in quick mode (``ZOO_QUICK=1``) without an error."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
TIMEOUT = 900  # seconds per cell; quick mode takes a minute or two per notebook on a loaded 2-core CPU


def test_the_teaching_notebooks_exist_with_stored_outputs():
    names = [p.stem for p in PATHS]
    assert names == ["01_quickstart", "02_marginalization", "03_line_attractors", "04_spikes_gpsde",
                     "05_samplers", "06_deterministic", "07_model_checking"]
    for path in PATHS:
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code and all(c.get("execution_count") for c in code), f"{path.name} is not stored executed"
        assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
                   for c in code for o in c.get("outputs", [])), f"{path.name} has no figure"
        assert nb.cells[0].cell_type == "markdown" and "ZOO_QUICK" in nb.cells[0].source


def test_python3_kernel_is_this_interpreter():
    spec = KernelSpecManager().get_kernel_spec("python3")
    exe = spec.argv[0]
    assert exe in ("python", "python3", "{python}", sys.executable) or \
        Path(exe).resolve() == Path(sys.executable).resolve(), spec.argv


def _run_in_quick_mode(path, monkeypatch):
    monkeypatch.setenv("ZOO_QUICK", "1")
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, kernel_name="python3", timeout=TIMEOUT,
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    t0 = time.perf_counter()
    client.execute()  # raises CellExecutionError on any error
    elapsed = time.perf_counter() - t0
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
                      if o.get("output_type") == "stream")
    assert "QUICK mode" in printed
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.get("output_type") == "error"]
    assert not errors
    print(f"\n{path.name}: {elapsed:.0f} s in quick mode")


def _notebook_class(path):
    class Notebook:
        def test_runs_in_quick_mode(self, monkeypatch):
            _run_in_quick_mode(path, monkeypatch)
    return Notebook


# One class per notebook: ``--dist loadscope`` (./dev test) schedules each class on its own, so the
# two workers share the notebooks instead of one worker running all six.
for _path in PATHS:
    globals()[f"TestNotebook_{_path.stem}"] = _notebook_class(_path)
