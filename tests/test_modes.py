"""Chains grouped into modes (inference.modes), said by inference.diagnose and reported per mode by
inference.attractors: hand-built draws with known modes, no sampler run."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from inference.attractors import POOLED_WEIGHTING, attractor_probabilities, attractor_summary, indicator_mcse
from inference.diagnose import diagnose
from inference.modes import MODE_RHAT, MODE_Z, chain_modes, group_chains, identified_quantities

# Compile-bound (small programs traced op by op; no long sampler runs): compiled without most
# XLA optimisations (conftest.fast_compile).
pytestmark = pytest.mark.usefixtures("fast_compile")


def _ar1(rng, C, S, rho):
    """C independent stationary AR(1) chains of S draws, unit marginal variance."""
    e = rng.normal(size=(C, S))
    out = np.empty((C, S))
    out[:, 0] = e[:, 0]
    for t in range(1, S):
        out[:, t] = rho * out[:, t - 1] + np.sqrt(1 - rho**2) * e[:, t]
    return out


def test_two_modes_found_with_their_chains_and_means():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(4, 500))
    q[[1, 3]] += 3.0  # modes interleaved in chain order: [0, 2] and [1, 3]
    other = rng.normal(size=(4, 500, 2))  # a quantity all chains agree on
    m = group_chains({"q": q, "other": other})
    assert m.groups == [[0, 2], [1, 3]] and m.num_modes == 2
    np.testing.assert_array_equal(m.labels, [0, 1, 0, 1])
    assert m.separating == ["q"]
    np.testing.assert_allclose(m.means["q"], [0.0, 3.0], atol=0.1)
    assert m.means["other"].shape == (2, 2)
    assert m.describe() == "chains split into 2 modes: [0, 2] | [1, 3] (they differ on q)"
    # the pairwise figures behind it: big within a split pair, small within a mode
    assert m.rhat[0, 1] > MODE_RHAT and m.z[0, 1] > MODE_Z
    assert m.rhat[0, 2] < MODE_RHAT
    assert m.rhat_threshold == MODE_RHAT and m.z_threshold == MODE_Z


@pytest.mark.parametrize("rho", [0.0, 0.9])
def test_chains_from_one_distribution_are_not_split(rho):
    # 20 seeds of 4 chains x 500 draws: independent draws, and slowly mixing chains (ESS ~ 25 of
    # 500) whose two-chain R-hat alone exceeds 1.1 in about one seed in seven
    for seed in range(20):
        rng = np.random.default_rng(seed)
        m = group_chains({"q": _ar1(rng, 4, 500, rho), "v": rng.normal(size=(4, 500, 3))})
        assert m.groups == [[0, 1, 2, 3]], (seed, m.rhat, m.z)
        assert m.describe() == "chains agree: one mode"


def test_constant_quantities_and_edge_cases():
    c = np.ones((3, 20))
    assert group_chains({"c": c}).groups == [[0, 1, 2]]  # equal constants: R-hat undefined, agree
    c[2] = 2.0
    assert group_chains({"c": c}).groups == [[0, 1], [2]]  # different constants: apart
    # too few draws, one chain: one mode
    assert group_chains({"c": np.arange(6.0).reshape(2, 3)}).groups == [[0, 1]]
    assert group_chains({"c": np.zeros((1, 50))}).groups == [[0]]
    with pytest.raises(ValueError, match="empty"):
        group_chains({})
    with pytest.raises(ValueError, match="disagree"):
        group_chains({"a": np.zeros((2, 10)), "b": np.zeros((3, 10))})


def _switching_post(split=True, seed=0, C=4, S=300, T=200):
    """A posterior with integer states z (chain, draw, time), a state-indexed variable and a
    log-likelihood group. Chains 1 and 3 use swapped labels (the same mode); with ``split``,
    chains 2 and 3 sit in a mode with another occupancy and a lower log-likelihood."""
    rng = np.random.default_rng(seed)
    occ = np.where(np.arange(C)[:, None] >= 2, 0.5, 0.8) if split else np.full((C, 1), 0.8)
    z = (rng.random((C, S, T)) > occ[..., None]).astype(np.int32)  # state 0 with prob. occ
    mu = np.stack([rng.normal(-1.0, 0.1, (C, S)), rng.normal(1.0, 0.1, (C, S))], -1)
    for c in (1, 3):  # label switching: not a mode
        z[c] = 1 - z[c]
        mu[c] = mu[c, :, ::-1]
    ll = rng.normal(-1.0, 0.05, (C, S, T))
    if split:
        ll[2:] -= 0.05  # total log-likelihood lower by 10 in chains 2 and 3
    post = xr.DataTree.from_dict({
        "posterior": xr.Dataset({"z": (("chain", "draw", "time"), z), "mu": (("chain", "draw", "state"), mu)}),
        "log_likelihood": xr.Dataset({"y": (("chain", "draw", "time"), ll)}),
        "sample_stats": xr.Dataset({"diverging": (("chain", "draw"), np.zeros((C, S), bool))})})
    post.attrs["method"] = "nuts"
    return post


def test_identified_quantities_are_label_invariant():
    post = _switching_post(split=False)
    q = identified_quantities(post)
    assert sorted(q) == ["sorted_state_occupancy", "total_log_likelihood"]
    assert q["total_log_likelihood"].shape == (4, 300)
    occ = q["sorted_state_occupancy"]
    assert occ.shape == (4, 300, 2) and np.all(occ[..., 0] >= occ[..., 1])
    np.testing.assert_allclose(occ.mean((1, 2)), 0.5)
    np.testing.assert_allclose(occ[..., 0].mean(1), 0.8, atol=0.01)  # swapped labels included
    assert chain_modes(post).groups == [[0, 1, 2, 3]]
    # aligned variables on request: mu is state-indexed, its labels swapped in chains 1 and 3
    q = identified_quantities(post, ["mu"])
    np.testing.assert_allclose(q["mu"].mean((0, 1)), [-1.0, 1.0], atol=0.05)
    assert chain_modes(post, ["mu"]).groups == [[0, 1, 2, 3]]
    with pytest.raises(ValueError, match="not posterior variables"):
        identified_quantities(post, ["nope"])
    # nothing identified recorded: every floating-point variable, aligned
    bare = xr.DataTree.from_dict({"posterior": post["posterior"].to_dataset()[["mu"]]})
    assert list(identified_quantities(bare)) == ["mu"]
    m = chain_modes(_switching_post(split=True))
    assert m.groups == [[0, 1], [2, 3]]
    assert set(m.separating) == {"sorted_state_occupancy", "total_log_likelihood"}


def _quiet(post, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return diagnose(post, emit=False, **kw)


def test_diagnose_says_the_chains_split():
    post = _switching_post(split=True)
    dg = _quiet(post)
    assert dg.verdict == "fail"
    split = "chains split into 2 modes: [0, 1] | [2, 3]"
    assert any(w.startswith(f"FAIL: {split}") for w in dg.warnings), dg.warnings
    assert dg.modes == [[0, 1], [2, 3]] and dg.mode_detail.num_modes == 2
    text = str(dg)
    assert split in text and "mean total_log_likelihood per mode" in text
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        diagnose(post)
    assert any(split in str(w.message) for w in rec)
    # one mode: nothing new is said
    dg = _quiet(_switching_post(split=False))
    assert dg.modes == [[0, 1, 2, 3]] and not any("split" in w for w in dg.warnings)
    assert "mode" not in str(dg)


def test_diagnose_groups_on_identified_quantities_only():
    # chains disagree on a variable (R-hat fails) but agree on the log-likelihood: a gauge-like
    # disagreement is not a mode unless the variable is named in mode_vars
    rng = np.random.default_rng(1)
    a = rng.normal(size=(4, 400))
    a[2:] += 5.0
    post = xr.DataTree.from_dict({
        "posterior": xr.Dataset({"a": (("chain", "draw"), a)}),
        "log_likelihood": xr.Dataset({"y": (("chain", "draw", "time"), rng.normal(size=(4, 400, 5)))})})
    post.attrs["method"] = "nuts"
    dg = _quiet(post)
    assert dg.verdict == "fail" and any("R-hat" in w for w in dg.warnings)
    assert dg.modes == [[0, 1, 2, 3]] and not any("split" in w for w in dg.warnings)
    dg = _quiet(post, mode_vars=["a"])
    assert dg.modes == [[0, 1], [2, 3]]
    with pytest.raises(ValueError, match="mode_vars"):
        _quiet(post, mode_vars=["nope"])
    assert any("chains split into 2 modes: [0, 1] | [2, 3] (they differ on a)" in w for w in dg.warnings)


def _attractor_result(line, nstab, chain_mode=None):
    """A result Dataset the way attractors() lays it out: draws chain after chain."""
    C, S = line.shape
    coords = {"chain": np.arange(C), "chain_index": ("draw", np.repeat(np.arange(C), S)),
              "draw_index": ("draw", np.tile(np.arange(S), C)),
              "num_stable_value": np.arange(int(nstab.max()) + 1)}
    if chain_mode is not None:
        coords["chain_mode"] = ("chain", np.asarray(chain_mode))
    return xr.Dataset({"has_line_attractor": (("draw",), line.ravel()),
                       "num_stable": (("draw",), nstab.ravel()),
                       "line_attractor_score": (("draw", "point"), np.full((C * S, 1), np.nan))},
                      coords=coords, attrs={"num_draws": C * S})


def test_attractor_probabilities_per_mode():
    rng = np.random.default_rng(2)
    C, S = 4, 50
    # chains 0, 1, 2: a line attractor with probability 0.9; chain 3: 0.1 and two stable points
    p = np.array([0.9, 0.9, 0.9, 0.1])[:, None]
    line = rng.random((C, S)) < p
    nstab = np.where(np.arange(C)[:, None] == 3, 2, rng.integers(0, 2, (C, S)))
    res = _attractor_result(line, nstab)
    groups = [[0, 1, 2], [3]]
    table = attractor_probabilities(res, modes=groups)
    assert table.attrs["modes"] == groups and table.attrs["pooled_weighting"] == POOLED_WEIGHTING
    row = table.iloc[0]
    assert row["quantity"] == "P(line attractor)"
    assert row["per_mode"] == pytest.approx([line[:3].mean(), line[3].mean()])
    assert row["per_mode_mcse"] == pytest.approx([indicator_mcse(line[:3]), indicator_mcse(line[3:])])
    assert row["num_chains_per_mode"] == [3, 1]
    # pooled: equal weight per chain = modes weighted by their number of chains
    assert row["probability"] == pytest.approx(line.mean(1).mean())
    assert row["probability"] == pytest.approx((3 * row["per_mode"][0] + row["per_mode"][1]) / 4)
    two = table[table["quantity"] == "P(number of stable fixed points = 2)"].iloc[0]
    assert two["per_mode"] == pytest.approx([0.0, 1.0]) and two["per_mode_mcse"] == [0.0, 0.0]
    text = attractor_summary(res, modes=groups)
    assert "chains split into 2 modes: [0, 1, 2] | [3]; per mode:" in text
    assert (f"  P(line attractor): {line[:3].mean():.3f} ± {indicator_mcse(line[:3]):.3f} (3 chains) | "
            f"{line[3].mean():.3f} ± {indicator_mcse(line[3:]):.3f} (1 chain)") in text
    assert f"pooled figures above: {POOLED_WEIGHTING}" in text
    assert "equal weight per chain" in POOLED_WEIGHTING and "not by posterior mass" in POOLED_WEIGHTING
    # the grouping stored by attractors() (chain_mode) is the default; Diagnostics are accepted
    stored = _attractor_result(line, nstab, chain_mode=[0, 0, 0, 1])
    assert attractor_probabilities(stored).attrs["modes"] == groups
    assert "chains split into 2 modes" in attractor_summary(stored)

    from inference.diagnose import Diagnostics

    diag = Diagnostics(verdict="fail", table=pd.DataFrame(), modes=groups)
    assert attractor_probabilities(res, modes=diag).iloc[0]["per_mode"] == row["per_mode"]
    # one mode: the per-mode figure is the pooled one, and no per-mode lines are printed
    one = attractor_probabilities(res)
    assert one.attrs["modes"] == [[0, 1, 2, 3]]
    assert one.iloc[0]["per_mode"] == pytest.approx([one.iloc[0]["probability"]])
    assert "mode" not in attractor_summary(res)
    with pytest.raises(ValueError, match="exactly one"):
        attractor_probabilities(res, modes=[[0, 1], [1, 2, 3]])
    with pytest.raises(ValueError, match="exactly one"):
        attractor_probabilities(res, modes=[[0, 1]])
