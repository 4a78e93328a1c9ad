"""Simulation-based calibration of NUTS on a small HMM (states summed out by the marginalize
handler): ranks of the true parameters among posterior draws are uniform. Label-invariant
summaries are ranked (the lower and higher state mean, the scale of the lower-mean state) so that
label switching cannot matter. A shifted truth must fail the same test (the test has power)."""

import jax
import numpy as np
import pytest

from inference.calibration import rank_uniformity, sbc_ranks
from zoo import HMM

jax.config.update("jax_enable_x64", True)

NUM_REPS, T, WARMUP, DRAWS, THIN, BINS = 120, 30, 150, 120, 6, 7  # 21 rank values, 3 per bin


def summaries(p):
    m, s = np.asarray(p["means"])[..., 0], np.asarray(p["scales"])[..., 0]
    lo = np.argmin(m, axis=-1)[..., None]
    return {"mean_low": m.min(-1), "mean_high": m.max(-1),
            "scale_of_low": np.take_along_axis(s, lo, -1)[..., 0]}


MODEL = HMM(num_states=2, obs_dim=1)


@jax.jit
def simulate(key):
    # jitted: one compile of the whole prior-predictive draw instead of dozens of eager op
    # compiles and 120 op-by-op runs (the same draws: the key fixes every random number)
    sim = MODEL.simulate(key, num_steps=T)
    return sim["y"], {"means": sim["params"]["means"], "scales": sim["params"]["scales"]}


@pytest.fixture(scope="module")
def sbc():
    return sbc_ranks(MODEL, simulate, summaries, NUM_REPS, num_warmup=WARMUP, num_samples=DRAWS, thin=THIN)


@pytest.mark.parametrize("name", ["mean_low", "mean_high", "scale_of_low"])
def test_sbc_rank_histograms_are_uniform(sbc, name):
    assert sbc.num_ranks == DRAWS // THIN + 1  # 120 // 6 draws kept
    counts, p = rank_uniformity(sbc.ranks[name], sbc.num_ranks, BINS)
    assert counts.sum() == NUM_REPS
    assert p > 0.01, (name, counts, p)


def test_sbc_detects_a_miscalibrated_posterior(sbc):
    # the same test must reject ranks of a truth shifted by 0.6 posterior sd (as if the posterior
    # were off-centre by that much); otherwise passing above would mean little. Power of this
    # test (120 replications, 21 rank values in 7 bins, chi-square at 0.01), simulated with
    # uniform ranks shifted on the normal scale: 0.13 for a shift of 0.2 sd (too weak to rely on:
    # detection would be luck), 0.40 for 0.3, 0.96 for 0.5, 0.997 for 0.6. SBC at this size
    # detects half-sd errors, not fifth-sd ones.
    sd = sbc.draws["mean_high"].std(axis=1)
    shifted = sbc.truth["mean_high"] + 0.6 * sd
    ranks = (sbc.draws["mean_high"] < shifted[:, None]).sum(axis=1)
    counts, p = rank_uniformity(ranks, sbc.num_ranks, BINS)
    assert p < 0.01, (counts, p)


def test_sbc_divergences_are_rare(sbc):
    assert sbc.divergences.sum() <= 0.01 * NUM_REPS * DRAWS, sbc.divergences


def test_sbc_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_bins"):
        rank_uniformity(np.zeros(5, int), num_ranks=21, num_bins=4)
    with pytest.raises(ValueError, match="thin"):
        sbc_ranks(MODEL, simulate, summaries, 2, num_samples=10, thin=6)
    with pytest.raises(ValueError, match="num_reps"):
        sbc_ranks(MODEL, simulate, summaries, 0)
