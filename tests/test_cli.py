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
    from inference.attractors import attractor_summary

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
                          "--num-warmup", 20, "--num-samples", 10, "-o", "max_tree_depth=4", "--quiet",
                          "--method", "nuts")
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
    assert code == (1 if "verdict: fail" in stdout else 0)  # 10 draws per chain: ESS fails
    assert "verdict:" in stdout and "rhat_max" in stdout and "means" in stdout
    assert "tree depth:" in stdout and "max_tree_depth=4" in stdout
    assert run(capsys, "diagnose", out, "--no-strict")[0] == 0
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
    (["fit", "slds", "d.npy", "--out", "p.nc", "--transition-link", "stick_breaking"], "rslds only"),
    (["fit", "rslds", "d.npy", "--out", "p.nc", "--transitions", "recurrent", "--transition-link",
      "stick_breaking"], "recurrent_only"),
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
    code, out, _ = run(capsys, "diagnose", demo_dir / "posterior.nc", "--no-strict")
    assert code == 0
    assert "method blocked, 2 chain(s) x" in out and "verdict:" in out  # the demo's default sampler
    for var in ("x", "diffusion", "emission_matrix"):
        assert var in out
    # a failing verdict exits with status 1 by default (tiny quick-mode chains do fail)
    for extra in ([], ["--strict"]):
        code, out, _ = run(capsys, "diagnose", demo_dir / "posterior.nc", *extra)
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


# ------------------------------------------------------------------ nothing lost: outputs checked first


def _no_work(*_args, **_kwargs):
    raise AssertionError("simulation or sampling started before the output paths were checked")


def _fake_posterior(method="nuts", C=2, S=50, stuck=False, seed=0):
    """A small posterior DataTree as ``zoo fit`` writes it (an SLDS the CLI can rebuild)."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(C, S))
    lp = -0.5 * a**2
    if stuck:
        a[1] = a[1, 0]
        lp[1] = lp[1, 0]
    dt = xr.DataTree.from_dict({
        "posterior": xr.Dataset({"a": (("chain", "draw"), a)}),
        "sample_stats": xr.Dataset({"lp": (("chain", "draw"), lp),
                                    "diverging": (("chain", "draw"), np.zeros((C, S), bool))})})
    dt.attrs.update({"method": method, "zoo_model": "SLDS",
                     "zoo_model_kwargs": json.dumps({"num_states": 2, "latent_dim": 2, "obs_dim": 3})})
    return dt


def _tiny_dataset(*_args, **_kwargs):
    return xr.Dataset({"y": (("time", "neuron"), np.ones((5, 3)))}, attrs={"system": "fake"})


def test_simulate_refuses_to_overwrite_before_simulating(tmp_path, capsys, monkeypatch):
    import inference.cli as cli

    out = tmp_path / "x.nc"
    out.write_bytes(b"precious")
    monkeypatch.setattr(cli, "simulate_system", _no_work)
    code, _, err = run(capsys, "simulate", "nascar", "--out", out)
    assert code == 2 and "already exists" in err and "--overwrite" in err
    assert out.read_bytes() == b"precious"
    # a folder that cannot be created: refused before simulating too
    code, _, err = run(capsys, "simulate", "nascar", "--out", out / "sub" / "y.nc")
    assert code == 2 and "not a directory" in err
    monkeypatch.setattr(cli, "simulate_system", _tiny_dataset)
    code, _, _ = run(capsys, "simulate", "nascar", "--out", out, "--overwrite", "--quiet")
    assert code == 0 and xr.open_dataset(out).attrs["system"] == "fake"


def test_fit_never_writes_over_its_input_or_an_existing_file(tmp_path, capsys, monkeypatch):
    import inference

    monkeypatch.setattr(inference, "fit", _no_work)
    data = tmp_path / "data.nc"
    xr.Dataset({"y": (("time", "neuron"), np.random.default_rng(0).normal(size=(20, 3)))}).to_netcdf(data)
    before = data.read_bytes()
    for extra in ([], ["--overwrite"]):
        code, _, err = run(capsys, "fit", "hmm", data, "--out", data, *extra)
        assert code == 2 and "input" in err and err.count("\n") == 1, err
        assert data.read_bytes() == before
    other = tmp_path / "post.nc"
    other.write_bytes(b"old posterior")
    code, _, err = run(capsys, "fit", "hmm", data, "--out", other)
    assert code == 2 and "already exists" in err
    assert other.read_bytes() == b"old posterior"


def test_interrupted_fit_write_keeps_the_old_posterior(tmp_path, capsys, monkeypatch):
    import inference.cli as cli

    data = tmp_path / "y.npy"
    np.save(data, np.random.default_rng(0).normal(size=(20, 3)))
    out = tmp_path / "post.nc"
    out.write_bytes(b"old posterior")
    monkeypatch.setattr(cli, "_fit_model", lambda *a, **k: _fake_posterior())

    def killed_write(self, path, *args, **kwargs):
        with open(path, "wb") as fh:
            fh.write(b"CDF\x01 half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(xr.DataTree, "to_netcdf", killed_write)
    with pytest.raises(KeyboardInterrupt):
        main(["fit", "hmm", str(data), "--out", str(out), "--overwrite", "--quiet"])
    assert out.read_bytes() == b"old posterior"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["post.nc", "y.npy"]
    monkeypatch.undo()
    monkeypatch.setattr(cli, "_fit_model", lambda *a, **k: _fake_posterior())
    code, _, _ = run(capsys, "fit", "hmm", data, "--out", out, "--overwrite", "--quiet")
    assert code == 0 and xr.open_datatree(out).attrs["zoo_model"] == "HMM"


def test_attractors_and_demo_refuse_existing_outputs_before_any_work(tmp_path, capsys, monkeypatch):
    import inference.cli as cli

    post = tmp_path / "post.nc"
    _fake_posterior().to_netcdf(post)
    fig = tmp_path / "fig.png"
    fig.write_bytes(b"old figure")
    monkeypatch.setattr(cli, "_run_attractors", _no_work)
    code, _, err = run(capsys, "attractors", post, "--out", fig)
    assert code == 2 and "already exists" in err and fig.read_bytes() == b"old figure"
    code, _, err = run(capsys, "attractors", post, "--out", tmp_path / "new.png", "--out-nc", post, "--overwrite")
    assert code == 2 and "input" in err
    code, _, err = run(capsys, "attractors", post, "--out", tmp_path / "new.png", "--out-nc", tmp_path / "r.txt")
    assert code == 2 and ".nc" in err
    out_dir = tmp_path / "demo"
    out_dir.mkdir()
    (out_dir / "summary.json").write_text("{}")
    monkeypatch.setattr(cli, "simulate_system", _no_work)
    code, _, err = run(capsys, "demo", "--quick", "--out-dir", out_dir)
    assert code == 2 and "summary.json" in err and "already exists" in err
    assert (out_dir / "summary.json").read_text() == "{}"
    assert sorted(p.name for p in out_dir.iterdir()) == ["summary.json"]


# ------------------------------------------------------------------ bad input refused clearly


@pytest.mark.parametrize("case, extra, message", [
    ("negative_count", [], "negative"),
    ("fractional_count", [], "non-integer"),
    ("declared_poisson", [], "negative"),
    ("explicit_poisson", ["--emissions", "poisson"], "non-integer"),
    ("all_nan", [], "every entry is NaN"),
])
def test_bad_counts_and_empty_data_refused_naming_y(case, extra, message, tmp_path, capsys, monkeypatch):
    import inference

    monkeypatch.setattr(inference, "fit", _no_work)
    y = np.random.default_rng(1).poisson(3.0, size=(40, 3)).astype(float)
    path = tmp_path / "y.npy"
    if case == "negative_count":
        y[7, 1] = -1  # one corrupted count must not turn the model Gaussian
    elif case in ("fractional_count", "explicit_poisson"):
        y[3, 2] = 2.5
    elif case == "declared_poisson":
        y[:] = -y
        path = tmp_path / "y.nc"
        xr.Dataset({"y": (("time", "neuron"), y)}, attrs={"emissions": "poisson"}).to_netcdf(path)
    elif case == "all_nan":
        y[:] = np.nan
    if path.suffix == ".npy":
        np.save(path, y)
    code, _, err = run(capsys, "fit", "hmm", path, "--out", tmp_path / "p.nc", *extra)
    assert code == 2 and err.count("\n") == 1, err
    assert message in err and " y" in err
    assert not (tmp_path / "p.nc").exists()


def test_real_valued_data_still_gets_gaussian_emissions():
    from inference.cli import choose_emissions

    y = np.random.default_rng(0).normal(size=(30, 3))
    assert choose_emissions(y, "auto", {}) == "gaussian"
    assert choose_emissions(np.abs(np.round(y * 3)), "auto", {}) == "poisson"
    assert choose_emissions(np.abs(np.round(y * 3)), "gaussian", {}) == "gaussian"


@pytest.mark.parametrize("option, message", [
    ("max_tree_depth=abc", "-o max_tree_depth: expected an integer >= 1; got \"abc\""),
    ("max_tree_depth=2.5", "max_tree_depth: expected an integer"),
    ("target_accept_prob=1.5", "target_accept_prob: expected a number in (0, 1)"),
    ("dense_mass=maybe", "dense_mass: expected true, false or"),
])
def test_bad_option_values_name_the_option_and_type(option, message, tmp_path, capsys, monkeypatch):
    import inference

    monkeypatch.setattr(inference, "fit", _no_work)
    np.save(tmp_path / "y.npy", np.random.default_rng(0).normal(size=(20, 3)))
    code, _, err = run(capsys, "fit", "hmm", tmp_path / "y.npy", "--out", tmp_path / "p.nc", "--method", "nuts",
                       "-o", option)
    assert code == 2 and message in err, err


def test_quiet_silences_chatter_but_not_warnings(tmp_path, capsys, monkeypatch):
    import warnings

    import inference.cli as cli

    def fit_with_warnings(*_a, **_k):
        warnings.warn("fit: 3 draws have NaN/inf values", RuntimeWarning, stacklevel=1)
        warnings.warn("fit: GPSLDS is running in float32", RuntimeWarning, stacklevel=1)
        return _fake_posterior()

    monkeypatch.setattr(cli, "_fit_model", fit_with_warnings)
    np.save(tmp_path / "y.npy", np.random.default_rng(0).normal(size=(20, 3)))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        code, out, _ = run(capsys, "fit", "hmm", tmp_path / "y.npy", "--out", tmp_path / "p.nc", "--quiet")
    assert code == 0 and out == ""
    messages = [str(w.message) for w in rec if issubclass(w.category, RuntimeWarning)]
    assert any("NaN" in m for m in messages) and any("float32" in m for m in messages)


def test_diagnose_exits_nonzero_on_fail_by_default(tmp_path, capsys):
    bad, good = tmp_path / "bad.nc", tmp_path / "good.nc"
    _fake_posterior(stuck=True).to_netcdf(bad)
    _fake_posterior(S=400).to_netcdf(good)
    code, out, err = run(capsys, "diagnose", bad)
    assert code == 1 and "verdict: fail" in out and "chain 1 is stuck" in out and "--no-strict" in err
    assert run(capsys, "diagnose", bad, "--strict")[0] == 1
    code, out, _ = run(capsys, "diagnose", bad, "--no-strict")
    assert code == 0 and "verdict: fail" in out
    code, out, _ = run(capsys, "diagnose", good)
    assert code == 0 and "verdict: fail" not in out


def test_fit_defaults_match_inference_fit_and_help_shows_defaults(capsys):
    import inspect

    from inference.cli import build_parser
    from inference.fit import fit

    args = build_parser().parse_args(["fit", "hmm", "d.npy", "--out", "p.nc"])
    params = inspect.signature(fit).parameters
    for name in ("method", "num_chains", "num_warmup", "num_samples"):
        assert getattr(args, name) == params[name].default, name
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"(default: {params['num_samples'].default})" in text
    assert f"(default: {params['num_chains'].default})" in text and "--overwrite" in text
