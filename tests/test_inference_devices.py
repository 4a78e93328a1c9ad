"""Scale-out on two forced host devices: chains in parallel, the trial axis sharded."""

import json
import os
import subprocess
import sys
import textwrap

from .conftest import FAST_COMPILE_ENV

SCRIPT = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    import json
    import jax
    import numpy as np
    import inference
    from inference.fit import shard_trials
    from zoo import HMM

    assert jax.local_device_count() == 2, jax.devices()
    model = HMM(num_states=2, obs_dim=1)
    y = np.asarray(model.simulate(jax.random.key(0), num_steps=15, num_trials=4)["y"])
    ys, _ = shard_trials(y, {})
    out = {"y_devices": len(ys.sharding.device_set), "y_shard_shape": list(ys.addressable_shards[0].data.shape)}
    for method in ("nuts",):
        post = inference.fit(model, y, method, num_chains=2, num_warmup=40, num_samples=30,
                             chain_method="parallel", shard_trials=True, progress_bar=False)
        out[method] = {"chains": post.posterior.sizes["chain"], "chain_method": post.attrs["chain_method"],
                       "finite": bool(np.isfinite(post.posterior["means"].values).all()),
                       "ll_dims": list(post.log_likelihood["y"].dims)}
    print("RESULT" + json.dumps(out))
""")


def test_two_host_devices_parallel_chains_and_sharded_trials():
    # compile-bound (70 NUTS iterations on a 15-step HMM): unoptimised compiles
    env = {**os.environ, **FAST_COMPILE_ENV, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=900,
                          cwd=os.path.dirname(os.path.dirname(__file__)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
    out = json.loads(line[len("RESULT"):])
    assert out["y_devices"] == 2 and out["y_shard_shape"] == [2, 15, 1]
    for method in ("nuts",):
        assert out[method]["chains"] == 2 and out[method]["chain_method"] == "parallel"
        assert out[method]["finite"]
        assert out[method]["ll_dims"] == ["chain", "draw", "trial", "time"]
