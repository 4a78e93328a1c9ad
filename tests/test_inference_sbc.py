"""Simulation-based calibration of NUTS on a small HMM (states summed out): ranks of the true
parameters among posterior draws are uniform. Label-invariant summaries are ranked (the lower and
higher state mean, the scale of the lower-mean state) so that label switching cannot matter."""

import jax
import numpy as np
import pytest
from numpyro.infer import MCMC, NUTS
from scipy import stats

from zoo import HMM

jax.config.update("jax_enable_x64", True)

NUM_REPS, T, DRAWS, THIN, BINS = 24, 30, 120, 6, 4


def summaries(means, scales):
    """(..., K, 1) arrays -> dict of label-invariant scalars (...,)."""
    m, s = np.asarray(means)[..., 0], np.asarray(scales)[..., 0]
    lo = np.argmin(m, axis=-1)[..., None]
    return {"mean_low": m.min(-1), "mean_high": m.max(-1),
            "scale_of_low": np.take_along_axis(s, lo, -1)[..., 0]}


def sbc_ranks(num_reps: int, seed: int = 0) -> dict:
    """Ranks of the true summaries among thinned NUTS draws, one replication per simulated data set.

    One NumPyro MCMC object is reused with ``jit_model_args=True``, so every replication runs the
    same compiled sampler on new data (the model, the marginalization and NUTS are exactly what
    ``inference.fit`` runs; only the per-call compilation is shared).
    """
    model = HMM(num_states=2, obs_dim=1)
    mcmc = MCMC(NUTS(model), num_warmup=150, num_samples=DRAWS, num_chains=1, progress_bar=False,
                jit_model_args=True)
    ranks: dict = {}
    for r in range(num_reps):
        sim = model.simulate(jax.random.key(1000 * seed + r), num_steps=T)
        mcmc.run(jax.random.key(10_000 + r), np.asarray(sim["y"]))
        post = mcmc.get_samples()
        truth = summaries(sim["params"]["means"], sim["params"]["scales"])
        draws = summaries(post["means"][::THIN], post["scales"][::THIN])
        for k in truth:
            ranks.setdefault(k, []).append(int((draws[k] < truth[k]).sum()))
    return {k: np.array(v) for k, v in ranks.items()}


@pytest.fixture(scope="module")
def ranks():
    return sbc_ranks(NUM_REPS)


@pytest.mark.slow  # ~24 NUTS fits: too long for the default suite on the shared 2-core machine
@pytest.mark.parametrize("name", ["mean_low", "mean_high", "scale_of_low"])
def test_sbc_rank_histograms_are_uniform(ranks, name):
    L = DRAWS // THIN  # ranks take values 0..L
    counts = np.histogram(ranks[name], bins=BINS, range=(0, L + 1))[0]
    p = stats.chisquare(counts).pvalue
    assert p > 0.01, (name, counts, p)
