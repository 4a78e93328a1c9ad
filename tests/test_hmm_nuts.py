"""End to end: NUTS on the handler-marginalized HMM recovers simulated parameters and states."""

import jax
import numpy as np
from numpyro.infer import MCMC, NUTS

import inference
from zoo import HMM


def test_nuts_on_marginalized_hmm_recovers_parameters_and_states():
    K, N, T = 3, 2, 200
    m = HMM(num_states=K, obs_dim=N, transitions="sticky")
    truth = {
        "init_probs": np.full(K, 1 / K),
        "trans_probs": np.array([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]]),
        "means": np.array([[-3.0, 0.0], [0.0, 3.0], [3.0, -1.0]]),
        "scales": np.full((K, N), 0.7),
    }
    data = m.simulate(jax.random.key(0), T, params=truth)
    # plain NumPyro: the model is a program whose states are summed out inside its density
    mcmc = MCMC(NUTS(m), num_warmup=300, num_samples=300, progress_bar=False)
    mcmc.run(jax.random.key(1), data["y"])
    samples = mcmc.get_samples()
    draws = {k: np.asarray(v)[None] for k, v in samples.items()}
    dec = inference.decode(m, draws, data["y"], reference=data["z"], num_draws=60)
    assert float(dec["accuracy"]) >= 0.95
    # the thinned draws keep their own labels, so they can be matched back to the posterior
    np.testing.assert_array_equal(dec["draw"].values, np.linspace(0, 299, 60).round().astype(int))
    # align the parameters with the permutation that maps the chain's labels to the truth
    perm = np.asarray(dec["permutation"].values)[0, 0]
    means = np.asarray(samples["means"])[:, np.argsort(perm)]
    post_mean, post_sd = means.mean(0), means.std(0)
    assert np.all(np.abs(post_mean - truth["means"]) < 4 * post_sd + 0.05)
    P = np.asarray(samples["trans_probs"])[:, np.argsort(perm)][:, :, np.argsort(perm)]
    np.testing.assert_allclose(np.diag(P.mean(0)), np.diag(truth["trans_probs"]), atol=0.08)
    # one chain's labels are stable: every draw got the same permutation
    assert (np.asarray(dec["permutation"].values)[0] == perm).all()
