"""The same seed gives bit-identical posteriors in separate processes.

Python salts ``hash()`` of strings per process (PYTHONHASHSEED); nothing that feeds random
numbers may depend on it. Two subprocesses with different hash seeds fit the same small LDS
from given start values (jittered per site: the path that once used ``hash(name)``) and must
agree bit for bit.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from .conftest import FAST_COMPILE_ENV

_SCRIPT = r"""
import sys
import jax
import numpy as np
import inference
from zoo import LDS

m = LDS(latent_dim=1, obs_dim=2)
y = np.asarray(m.simulate(jax.random.key(3), num_steps=20)["y"])
start = {"dynamics": np.full((1, 1), 0.5), "dynamics_noise": np.full(1, 0.3)}
post = inference.fit(m, y, method="nuts", seed=5, num_chains=1, num_warmup=10, num_samples=5,
                     init=start, progress_bar=False, log_likelihood=False, max_tree_depth=3)
attrs = {k: np.asarray(str(post.attrs.get(k))) for k in ("zoo_model", "zoo_model_kwargs", "data_sha256",
                                                          "project_commit", "seed")}
np.savez(sys.argv[1], **{k: np.asarray(v) for k, v in post.posterior.data_vars.items()},
         **{"attr_" + k: v for k, v in attrs.items()})
"""


def _run(path, hash_seed: str) -> dict:
    # a few hundred small compiles and 15 iterations: unoptimised compiles (the same in both
    # processes, so bit-identity is still the test)
    env = {**os.environ, **FAST_COMPILE_ENV, "PYTHONHASHSEED": hash_seed}
    subprocess.run([sys.executable, "-c", _SCRIPT, str(path)], check=True, env=env, timeout=600)
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def test_same_seed_same_posterior_across_processes(tmp_path):
    a = _run(tmp_path / "a.npz", "1")
    b = _run(tmp_path / "b.npz", "2")
    assert set(a) == set(b) and "dynamics" in a
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    # what a repeat needs is recorded: the model, a hash of the data, the seed, the commit
    assert str(a["attr_zoo_model"]) == "LDS" and "latent_dim" in str(a["attr_zoo_model_kwargs"])
    assert len(str(a["attr_data_sha256"])) == 64 and str(a["attr_seed"]) == "5"
    assert str(a["attr_project_commit"]) != "None"
