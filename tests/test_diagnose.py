"""inference.diagnose on small hand-built DataTrees: stuck chains, saturated NUTS trees, SMC and
SVI records (no sampler is run)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import xarray as xr

from inference.diagnose import diagnose


def fake_post(method="nuts", C=2, S=500, seed=0, attrs=None, stats=None, stuck=None, lp_only=False):
    """Independent N(0, 1) draws of a scalar ``a`` and a vector ``b`` (well mixed chains)."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(C, S))
    b = rng.normal(size=(C, S, 3))
    lp = -0.5 * (a**2 + (b**2).sum(-1))
    if stuck is not None:
        lp[stuck] = lp[stuck, 0]
        if not lp_only:
            a[stuck] = a[stuck, 0]
            b[stuck] = b[stuck, 0]
    ss = {"lp": (("chain", "draw"), lp), "diverging": (("chain", "draw"), np.zeros((C, S), bool))}
    ss.update({k: (("chain", "draw"), v) for k, v in (stats or {}).items()})
    dt = xr.DataTree.from_dict({"posterior": xr.Dataset({"a": (("chain", "draw"), a),
                                                         "b": (("chain", "draw", "k"), b)}),
                                "sample_stats": xr.Dataset(ss)})
    dt.attrs.update({"method": method, **(attrs or {})})
    return dt


def quiet_diagnose(post, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return diagnose(post, emit=False, **kw)


def test_well_mixed_control_is_ok():
    dg = quiet_diagnose(fake_post())
    assert dg.verdict == "ok", dg.warnings
    assert dg.stuck_chains == []


@pytest.mark.parametrize("lp_only", [False, True])
def test_stuck_chain_is_flagged_and_fails(lp_only):
    dg = quiet_diagnose(fake_post(C=3, stuck=1, lp_only=lp_only))
    assert dg.verdict == "fail"
    assert dg.stuck_chains == [1]
    assert "chain 1 is stuck" in dg.warnings[0]
    assert "log density is constant" in dg.warnings[0]
    # every draw identical but no log density recorded: still flagged
    post = fake_post(C=2, stuck=0)
    del post["sample_stats"]["lp"]
    dg = quiet_diagnose(post)
    assert dg.stuck_chains == [0] and "every draw of every variable is identical" in dg.warnings[0]
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        diagnose(post)
    assert any(issubclass(w.category, RuntimeWarning) and "chain 0 is stuck" in str(w.message) for w in rec)


def test_tree_depth_saturation_reported_and_warned():
    depth = np.full((2, 500), 4)
    depth[0, :200] = 6  # 20 % of all transitions at the cap of 6
    post = fake_post(stats={"tree_depth": depth}, attrs={"options": json.dumps({"max_tree_depth": 6})})
    dg = quiet_diagnose(post)
    td = dg.sampler["tree_depth"]
    assert td["max_tree_depth"] == 6
    assert td["fraction_at_max"] == pytest.approx(0.2)
    assert td["per_chain"] == pytest.approx([0.4, 0.0])
    assert dg.verdict == "warning"
    assert any("maximum tree depth 6" in w for w in dg.warnings)
    assert "20.0 % of transitions at max_tree_depth=6" in str(dg)
    # the same depths under the default cap (10, no option recorded): reported, no warning
    dg = quiet_diagnose(fake_post(stats={"tree_depth": depth}))
    assert dg.sampler["tree_depth"]["max_tree_depth"] == 10
    assert dg.sampler["tree_depth"]["fraction_at_max"] == 0.0 and dg.verdict == "ok"
    # numpyro-style record (n_steps only) and a dict of options: 2^8 - 1 = 255 steps is depth 8
    steps = np.full((2, 500), 7)
    steps[:, :100] = 255
    dg = quiet_diagnose(fake_post(stats={"n_steps": steps}, attrs={"options": {"max_tree_depth": 8}}))
    assert dg.sampler["tree_depth"]["fraction_at_max"] == pytest.approx(0.2)
    assert dg.verdict == "warning"


def smc_post(num_unique=200, N=200, ess=150.0, acceptance=(0.6, 0.5, 0.7), seed=1):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(num_unique, 3))
    rows = base[rng.integers(0, num_unique, N)] if num_unique < N else base
    dt = xr.DataTree.from_dict({
        "posterior": xr.Dataset({"a": (("chain", "draw"), rows[None, :, 0]),
                                 "b": (("chain", "draw", "k"), rows[None, :, 1:])}),
        "sample_stats": xr.Dataset({"lp": (("chain", "draw"), -(rows**2).sum(-1)[None])})})
    # the attributes as inference.fit stores them (lists as JSON text)
    dt.attrs.update({"method": "smc", "num_samples": N, "log_evidence": -12.5, "smc_iterations": len(acceptance),
                     "smc_ess": ess, "tempering_schedule": json.dumps([0.0, 0.1, 0.5, 1.0]),
                     "smc_acceptance": json.dumps(list(acceptance))})
    return dt


def test_smc_diagnostics_reported_and_collapse_fails():
    dg = quiet_diagnose(smc_post())
    smc = dg.sampler["smc"]
    assert dg.verdict == "ok", dg.warnings
    assert smc["num_steps"] == 3 and smc["num_particles"] == 200
    assert smc["unique_particles"] == 200 and smc["final_ess"] == 150.0
    assert smc["acceptance_mean"] == pytest.approx(0.6)
    assert "ess_per_step" in smc["not_recorded"]
    text = str(dg)
    assert "SMC: 3 tempering steps" in text and "200 unique particles" in text
    # collapsed: 5 distinct particles out of 200 and a degenerate final weight vector
    dg = quiet_diagnose(smc_post(num_unique=5, ess=1.3))
    assert dg.verdict == "fail"
    assert dg.sampler["smc"]["unique_particles"] <= 5
    assert any("SMC collapsed" in w for w in dg.warnings)
    assert any("weight degeneracy" in w for w in dg.warnings)
    # move steps that never accept
    dg = quiet_diagnose(smc_post(acceptance=(0.0, 0.0)))
    assert dg.verdict == "fail" and any("never accepted" in w for w in dg.warnings)
    # per-step weight ESS, when the fit records it
    post = smc_post()
    post.attrs["smc_ess_per_step"] = json.dumps([100.0, 4.0, 150.0])
    dg = quiet_diagnose(post)
    assert dg.sampler["smc"]["ess_per_step"] == [100.0, 4.0, 150.0]
    assert dg.verdict == "warning" and any("step 2" in w for w in dg.warnings)


def test_svi_record_and_loss_trace():
    rng = np.random.default_rng(0)
    post = xr.DataTree.from_dict({"posterior": xr.Dataset({"a": (("chain", "draw"), rng.normal(size=(1, 50)))})})
    post.attrs.update({"method": "svi", "svi_guide": "structured", "svi_steps": 300, "svi_final_loss": 123.4,
                       "svi_converged": 1})
    dg = quiet_diagnose(post)
    assert dg.verdict == "ok"
    assert dg.sampler["svi"]["final_loss"] == 123.4 and dg.sampler["svi"]["loss_trace"] == "not recorded"
    assert "SVI: guide structured" in str(dg)
    post.attrs["svi_losses"] = json.dumps(list(np.linspace(1000, 100, 300)))
    dg = quiet_diagnose(post)
    tr = dg.sampler["svi"]["loss_trace"]
    assert tr["initial"] == 1000 and tr["final"] == 100 and tr["length"] == 300
    post.attrs["svi_final_loss"] = float("nan")
    post.attrs["svi_converged"] = 0
    dg = quiet_diagnose(post)
    assert dg.verdict == "fail" and any("final loss is nan" in w for w in dg.warnings)


def test_identified_convergence_judges_the_log_likelihood_and_rates():
    """Chains drawn from one distribution pass the identified check; one chain shifted fails
    it, with the R-hat of the shifted quantity above 1.01; the text helper says the same."""
    from inference.diagnose import identified_convergence, identified_diagnostics

    rng = np.random.default_rng(0)
    C, S, T, N, D = 4, 600, 5, 3, 2

    def tree(shift):
        ll = rng.normal(size=(C, S, T))
        ll[0] += shift
        x = rng.normal(size=(C, S, T, D))
        return xr.DataTree.from_dict({
            "posterior": xr.Dataset({"x": (("chain", "draw", "time", "latent"), x),
                                     "emission_matrix": (("chain", "draw", "neuron", "latent"),
                                                         np.ones((C, S, N, D))),
                                     "emission_bias": (("chain", "draw", "neuron"), np.zeros((C, S, N)))}),
            "log_likelihood": xr.Dataset({"y": (("chain", "draw", "time"), ll)}),
            "sample_stats": xr.Dataset({"diverging": (("chain", "draw"), np.zeros((C, S), bool))}),
        })

    good = identified_convergence(tree(0.0))
    assert good["verdict"] == "ok", good["text"]
    assert good["total log-likelihood"]["rhat"] <= 1.01 and good["denoised log-rates"]["size"] == T * N
    shifted = tree(2.0)
    bad = identified_convergence(shifted)
    assert bad["verdict"] == "not converged" and bad["total log-likelihood"]["rhat"] > 1.01
    assert identified_diagnostics(shifted) == bad["text"]
