"""The ``zoo`` command line: every subcommand, its files, and its error paths (exit status 2)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from inference.cli import load_data, main


def run(capsys, *argv):
    """main(argv) -> (exit status, stdout, stderr)."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------ demo (also feeds the other tests)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    code = main(["demo", "--quick", "--quiet", "--out-dir", str(out)])
    assert code == 0
    return out


def test_demo_quick_writes_posterior_figures_and_summary(demo_dir):
    for name in ("data.nc", "posterior.nc", "attractors.nc", "attractors.png", "latents.png", "summary.json"):
        assert (demo_dir / name).stat().st_size > 0, name
    assert (demo_dir / "attractors.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((demo_dir / "summary.json").read_text())
    assert 0.0 <= summary["p_line_attractor"] <= 1.0
    assert sum(summary["p_num_stable"].values()) == pytest.approx(1.0)
    assert summary["verdict"] in ("ok", "warning", "fail")
    post = xr.open_datatree(demo_dir / "posterior.nc")
    assert post.attrs["zoo_model"] == "GPSLDS"
    assert json.loads(post.attrs["zoo_model_kwargs"])["input_dim"] == 1
    x = post["posterior"]["x"]
    assert x.dims[:2] == ("chain", "draw") and x.sizes["chain"] == 2 and x.sizes["latent"] == 2
    assert {"posterior", "sample_stats", "observed_data"} <= set(post.children)
    res = xr.open_dataset(demo_dir / "attractors.nc")
    assert res["p_slow"].dims == ("grid_0", "grid_1")
    assert res["p_num_stable"].sum() == pytest.approx(1.0)


def test_demo_prints_diagnostics_and_attractor_posterior(demo_dir, capsys, tmp_path):
    # the printed report of the (quiet) fixture run is gone: read the pieces it is made of instead
    from inference.cli import attractor_summary

    res = xr.open_dataset(demo_dir / "attractors.nc")
    text = attractor_summary(res)
    assert text.startswith("P(line attractor) = ")
    assert "P(number of stable fixed points = 0)" in text


# ------------------------------------------------------------------ simulate


def test_simulate_nascar_writes_named_dims(tmp_path, capsys):
    out = tmp_path / "nascar.nc"
    code, stdout, _ = run(capsys, "simulate", "nascar", "--out", out, "--num-steps", 60, "--num-trials", 2,
                          "--seed", 3)
    assert code == 0 and "wrote" in stdout
    ds = xr.open_dataset(out)
    assert ds["y"].dims == ("trial", "time", "neuron") and ds["y"].shape == (2, 60, 10)
    assert ds["x"].dims == ("trial", "time", "latent") and ds["x"].shape == (2, 60, 2)
    assert ds["z"].dims == ("trial", "time") and set(np.unique(ds["z"].values)) <= {0, 1, 2, 3}
    assert ds.attrs["system"] == "nascar" and ds.attrs["seed"] == 3 and ds.attrs["emissions"] == "gaussian"
    # same seed, same data
    out2 = tmp_path / "again.nc"
    assert run(capsys, "simulate", "nascar", "--out", out2, "--num-steps", 60, "--num-trials", 2,
               "--seed", 3, "--quiet")[0] == 0
    np.testing.assert_array_equal(xr.open_dataset(out2)["y"].values, ds["y"].values)


def test_simulate_driven_system_bins_counts_and_keeps_inputs(tmp_path, capsys):
    out = tmp_path / "line.nc"
    code, _, _ = run(capsys, "simulate", "line_attractor", "--out", out, "--num-steps", 25, "--bin-size", 4,
                     "--quiet")
    assert code == 0
    ds = xr.open_dataset(out)
    assert ds["y"].dims == ("time", "neuron") and ds["y"].shape == (25, 30)
    assert ds["inputs"].dims == ("time", "input") and ds["inputs"].shape == (25, 1)
    y = ds["y"].values
    assert np.all(y >= 0) and np.all(y == np.round(y))
    assert ds.attrs["dt"] == pytest.approx(0.04) and ds.attrs["emissions"] == "poisson"


@pytest.mark.parametrize("argv, message", [
    (["simulate", "lorenz", "--out", "x.nc"], "invalid choice"),
    (["simulate", "nascar"], "--out"),
    (["simulate", "nascar", "--out", "x.nc", "--num-steps", "-5"], "num-steps"),
    (["simulate", "nascar", "--out", "x.nc", "--num-trials", "two"], "num-trials"),
    (["simulate", "nascar", "--out", "x.txt"], ".nc"),
    (["simulate", "nascar", "--out", "x.nc", "--bin-size", "3"], "bin-size"),
    (["simulate", "nascar", "--out", "x.nc", "--num-steps", "1"], "num-steps"),
])
def test_simulate_usage_errors_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        code = main(argv)
        raise SystemExit(code)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "x.nc").exists()


# ------------------------------------------------------------------ fit


@pytest.fixture(scope="module")
def nascar_file(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "nascar.nc"
    assert main(["simulate", "nascar", "--out", str(out), "--num-steps", "40", "--quiet"]) == 0
    return out


def test_fit_hmm_from_netcdf_and_npz_then_diagnose(nascar_file, tmp_path, capsys):
    out = tmp_path / "hmm.nc"
    code, stdout, _ = run(capsys, "fit", "hmm", nascar_file, "--out", out, "--num-states", 2, "--num-chains", 2,
                          "--num-warmup", 20, "--num-samples", 10, "-o", "max_tree_depth=4", "--quiet")
    assert code == 0 and stdout == ""
    post = xr.open_datatree(out)
    assert post.attrs["zoo_model"] == "HMM" and post.attrs["method"] == "nuts"
    kw = json.loads(post.attrs["zoo_model_kwargs"])
    assert kw["num_states"] == 2 and kw["obs_dim"] == 10 and kw["emissions"] == "gaussian"
    ds = post["posterior"].to_dataset()
    assert ds.sizes["chain"] == 2 and ds.sizes["draw"] == 10
    assert post["observed_data"]["y"].shape == (40, 10)
    assert "max_tree_depth" in post.attrs["options"]
    code, stdout, _ = run(capsys, "diagnose", out)
    assert code == 0
    assert "verdict:" in stdout and "rhat_max" in stdout and "means" in stdout
    # the HMM has no latent dynamics to analyse: a usage error, not a traceback
    code, _, err = run(capsys, "attractors", out, "--out", tmp_path / "f.png")
    assert code == 2 and "latent dynamics" in err
    # the same data as a plain .npz array (documented axis order) gives the same observed data
    npz = tmp_path / "y.npz"
    np.savez(npz, y=xr.open_dataset(nascar_file)["y"].values)
    y, inputs, attrs = load_data(npz)
    np.testing.assert_array_equal(y, post["observed_data"]["y"].values)
    assert inputs is None and attrs == {}


def test_load_data_accepts_npy_and_orders_named_dims(tmp_path):
    y = np.arange(24.0).reshape(2, 3, 4)
    np.save(tmp_path / "y.npy", y)
    got, inputs, attrs = load_data(tmp_path / "y.npy")
    np.testing.assert_array_equal(got, y)
    assert inputs is None and attrs == {}
    # NetCDF with dims stored in another order is transposed by name
    ds = xr.Dataset({"y": (("neuron", "trial", "time"), y.transpose(2, 0, 1)),
                     "inputs": (("trial", "time", "input"), np.ones((2, 3, 1)))}, attrs={"dt": 0.5})
    ds.to_netcdf(tmp_path / "d.nc")
    got, inputs, attrs = load_data(tmp_path / "d.nc")
    np.testing.assert_array_equal(got, y)
    assert inputs.shape == (2, 3, 1) and attrs["dt"] == 0.5


@pytest.mark.parametrize("case, message", [
    ("missing", "no such data file"),
    ("garbage_nc", "not a readable NetCDF"),
    ("no_y", "no variable 'y'"),
    ("bad_dims", "dims"),
    ("one_d", "shape"),
    ("npz_no_y", "no array 'y'"),
    ("inputs_mismatch", "do not match"),
    ("suffix", "unknown file type"),
    ("wrong_emissions", "non-negative"),
])
def test_fit_bad_files_exit_2(case, message, tmp_path, capsys):
    path = tmp_path / "data.nc"
    extra = []
    if case == "garbage_nc":
        path.write_text("this is not netcdf")
    elif case == "no_y":
        xr.Dataset({"spikes": (("time", "neuron"), np.ones((5, 3)))}).to_netcdf(path)
    elif case == "bad_dims":
        xr.Dataset({"y": (("t", "n"), np.ones((5, 3)))}).to_netcdf(path)
    elif case == "one_d":
        path = tmp_path / "y.npy"
        np.save(path, np.ones(7))
    elif case == "npz_no_y":
        path = tmp_path / "d.npz"
        np.savez(path, spikes=np.ones((5, 3)))
    elif case == "inputs_mismatch":
        path = tmp_path / "d.npz"
        np.savez(path, y=np.ones((5, 3)), inputs=np.ones((4, 1)))
    elif case == "suffix":
        path = tmp_path / "d.csv"
        path.write_text("1,2\n")
    elif case == "wrong_emissions":
        path = tmp_path / "y.npy"
        np.save(path, -np.ones((6, 3)))
        extra = ["--emissions", "poisson"]
    code, _, err = run(capsys, "fit", "slds", path, "--out", tmp_path / "p.nc", *extra)
    assert code == 2
    assert message in err and err.startswith("zoo fit: error:") and err.count("\n") == 1
    assert not (tmp_path / "p.nc").exists()


@pytest.mark.parametrize("argv, message", [
    (["fit", "ssm", "d.npy", "--out", "p.nc"], "invalid choice"),
    (["fit", "slds", "d.npy", "--out", "p.nc", "--method", "gibbs"], "invalid choice"),
    (["fit", "slds", "d.npy", "--out", "p.nc", "--num-states", "0"], "num-states"),
    (["fit", "slds", "d.npy", "--out", "p.nc", "--emissions", "bernoulli"], "emissions"),
    (["fit", "slds", "d.npy"], "--out"),
    (["fit", "slds", "d.npy", "--out", "p.nc", "-o", "nonsense=1"], "unknown option"),
    (["fit", "slds", "d.npy", "--out", "p.nc", "-o", "novalue"], "KEY=VALUE"),
    (["fit", "hmm", "d.npy", "--out", "p.nc", "--transitions", "recurrent"], "transitions"),
    (["fit", "gpsde", "d.npy", "--out", "p.nc", "--num-states", "3"], "num-states"),
    (["fit", "slds", "d.npy", "--out", "p.nc", "--kernel", "matern52"], "gpsde only"),
    (["fit", "slds", "d.npy", "--out", "p.txt"], ".nc"),
    (["fit", "lds", "d.npy", "--out", "p.nc", "--emissions", "poisson"], "Gaussian"),
])
def test_fit_bad_options_exit_2(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "d.npy", np.abs(np.random.default_rng(0).normal(size=(20, 3))))
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "p.nc").exists()


# ------------------------------------------------------------------ attractors and diagnose


def test_attractors_from_demo_posterior(demo_dir, tmp_path, capsys):
    fig = tmp_path / "figure.png"
    res_nc = tmp_path / "attr.nc"
    code, out, _ = run(capsys, "attractors", demo_dir / "posterior.nc", "--out", fig, "--num-draws", 4,
                       "--grid-size", 6, "--out-nc", res_nc)
    assert code == 0
    assert out.startswith("P(line attractor) = ") and "P(number of stable fixed points" in out
    assert fig.read_bytes()[:4] == b"\x89PNG"
    res = xr.open_dataset(res_nc)
    assert res.sizes["draw"] == 4 and res["p_slow"].shape == (6, 6)
    p = float(out.split("=")[1].split()[0])
    assert p == pytest.approx(float(res["p_line_attractor"]), abs=1e-3)


def test_diagnose_from_demo_posterior(demo_dir, capsys):
    code, out, _ = run(capsys, "diagnose", demo_dir / "posterior.nc")
    assert code == 0
    assert "nuts, 2 chain(s) x" in out and "verdict:" in out
    for var in ("x", "diffusion", "emission_matrix"):
        assert var in out
    # --strict turns a failing verdict into exit status 1 (tiny quick-mode chains do fail)
    code, out, _ = run(capsys, "diagnose", demo_dir / "posterior.nc", "--strict")
    assert code == (1 if "verdict: fail" in out else 0)


@pytest.mark.parametrize("sub", ["attractors", "diagnose"])
def test_posterior_file_errors_exit_2(sub, tmp_path, capsys, nascar_file):
    extra = ["--out", str(tmp_path / "f.png")] if sub == "attractors" else []
    code, _, err = run(capsys, sub, tmp_path / "missing.nc", *extra)
    assert code == 2 and "no such posterior file" in err
    bad = tmp_path / "bad.nc"
    bad.write_bytes(b"\x00" * 64)
    code, _, err = run(capsys, sub, bad, *extra)
    assert code == 2 and "not a readable NetCDF" in err
    # a data file is not a posterior file
    code, _, err = run(capsys, sub, nascar_file, *extra)
    assert code == 2 and "posterior" in err


def test_attractors_bad_figure_suffix_exit_2(demo_dir, tmp_path, capsys):
    code, _, err = run(capsys, "attractors", demo_dir / "posterior.nc", "--out", tmp_path / "f.txt")
    assert code == 2 and ".png" in err


# ------------------------------------------------------------------ the console script itself


def test_console_script_usage_errors_exit_2():
    exe = shutil.which("zoo", path=str(Path(sys.executable).parent))
    assert exe is not None, "the zoo console script is not installed in this environment"
    bad = subprocess.run([exe, "frobnicate"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    none = subprocess.run([exe], capture_output=True, text=True, timeout=300)
    assert none.returncode == 2 and "required" in none.stderr
    ok = subprocess.run([exe, "demo", "--help"], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0 and "--quick" in ok.stdout and "--out-dir" in ok.stdout
