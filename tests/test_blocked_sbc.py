"""Simulation-based calibration of the blocked sampler on a small SLDS (path integrated out,
states site by site) and a small rSLDS (``recurrent_only``; states by FFBS and boundary shifts,
path whitened given them): one chain per simulated data set, with the same warmup as
``inference.fit`` (windows, dual averaging, curvature or Welford mass), started as ``fit``
starts, from the model's point estimate of each data set. Ranks of label- and gauge-invariant
summaries of the truth among the thinned draws must be uniform (the frame is fixed,
``default_frame``, so the latent gauge is too). A shifted truth must fail the same test (the
test has power).

The calibration runs are marked slow: one model's 100 replications took about 15 minutes on a
loaded 2-core machine (``-m slow``); the tie-breaking of the ranks and the fixed frame that the
calibration relies on are checked in the default suite."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inference.calibration import rank_uniformity, sbc_blocked_ranks
from zoo import RSLDS, SLDS
from zoo.frame import default_frame

NUM_REPS, T, WARMUP, DRAWS, THIN, BINS = 100, 20, 100, 120, 6, 7  # 21 rank values, 3 per bin
K, D, N = 2, 1, 2
MODELS = {"slds": SLDS(num_states=K, latent_dim=D, obs_dim=N),
          "rslds": RSLDS(num_states=K, latent_dim=D, obs_dim=N, transitions="recurrent_only")}
SUMMARIES = ["a_sum", "log_q_sum", "log_r", "occupancy_max", "mean_x2"]


def summaries(v):
    """Label-invariant: sums over states, the emission noise, the larger state occupancy and the
    path's second moment."""
    z = np.asarray(v["z"])
    occ = (z == 1).mean(-1)
    return {"a_sum": np.asarray(v["dynamics"])[..., 0, 0].sum(-1),
            "log_q_sum": np.log(np.asarray(v["dynamics_noise"])[..., 0]).sum(-1),
            "log_r": np.log(np.asarray(v["emission_noise"])[..., 0]),
            "occupancy_max": np.maximum(occ, 1 - occ),
            "mean_x2": (np.asarray(v["x"])[..., 0] ** 2).mean(-1)}


@pytest.fixture(scope="module", params=sorted(MODELS))
def sbc(request):
    model = MODELS[request.param]
    with jax.enable_x64(True):
        kwargs = {"frame": default_frame(N, D, jnp.float64)}

        def simulate(key):
            sim = model.simulate(key, T, **kwargs)
            return sim["y"], {**sim["params"], "x": sim["x"], "z": sim["z"].astype(jnp.int32)}

        return sbc_blocked_ranks(model, simulate, summaries, NUM_REPS, num_warmup=WARMUP, num_samples=DRAWS,
                                 thin=THIN, model_kwargs=kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("name", SUMMARIES)
def test_blocked_sbc_rank_histograms_are_uniform(sbc, name):
    assert sbc.num_ranks == DRAWS // THIN + 1
    counts, p = rank_uniformity(sbc.ranks[name], sbc.num_ranks, BINS)
    assert counts.sum() == NUM_REPS
    assert p > 0.01, (name, counts, p)


@pytest.mark.slow
def test_blocked_sbc_detects_a_shifted_truth(sbc):
    # power check (as in test_inference_sbc): a truth shifted by 0.6 posterior sd must fail
    sd = sbc.draws["log_r"].std(axis=1)
    ranks = (sbc.draws["log_r"] < (sbc.truth["log_r"] + 0.6 * sd)[:, None]).sum(axis=1)
    _, p = rank_uniformity(ranks, sbc.num_ranks, BINS)
    assert p < 0.01, p


@pytest.mark.slow
def test_blocked_sbc_has_no_divergences_to_speak_of(sbc):
    assert sbc.divergences.sum() <= 0.01 * NUM_REPS * DRAWS, sbc.divergences.sum()


def test_ranks_share_ties_uniformly():
    """A discrete summary equal to every draw gets a uniform rank over 0..L, not rank 0."""
    from inference.calibration import rank_statistics

    L, reps = 20, 20000
    draws = {"s": np.zeros((reps, L))}
    ranks = rank_statistics(draws, {"s": np.zeros(reps)}, 0)["s"]
    counts = np.bincount(ranks, minlength=L + 1)
    assert counts.shape == (L + 1,)
    assert abs(counts.mean() - reps / (L + 1)) < 1e-9 and counts.min() > 0.8 * reps / (L + 1)
    # continuous summaries are unchanged: the number of draws below the truth
    rng = np.random.default_rng(1)
    d, t = rng.normal(size=(50, L)), rng.normal(size=50)
    assert np.array_equal(rank_statistics({"s": d}, {"s": t}, 0)["s"], (d < t[:, None]).sum(1))


def test_a_fixed_frame_is_kept_and_recorded():
    """A frame given by the caller (as SBC needs) is not replaced by the data frame, and a
    pytree argument is hashed and stored as constant data field by field."""
    from inference.convert import array_kwargs
    from inference.fit import prepare_problem, provenance

    model = MODELS["slds"]
    frame = default_frame(N, D)
    y = np.asarray(model.simulate(jax.random.key(0), T)["y"])
    assert model.prepare(y, {"frame": frame}) == {}
    assert "frame" in model.prepare(y, {})
    problem = prepare_problem(model, y, {"frame": frame}, {})
    assert problem.run_kwargs["frame"] is frame
    assert len(provenance(problem)["data_sha256"]) == 64
    fields = array_kwargs({"frame": frame})
    assert sorted(fields) == sorted(f"frame_{f}" for f in frame._fields)
