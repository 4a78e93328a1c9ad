"""Scale-out on two forced host devices: chains in parallel, the trial axis sharded."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np

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


BLOCKED_SCRIPT = textwrap.dedent("""
    import os
    import sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=" + sys.argv[2]
    import jax
    import numpy as np
    import inference
    from zoo import SLDS

    assert jax.local_device_count() == int(sys.argv[2]), jax.devices()
    model = SLDS(2, 1, 2, transitions="standard")
    y = np.asarray(model.simulate(jax.random.key(1), num_steps=40)["y"])
    post = inference.fit(model, y, num_chains=2, num_warmup=20, num_samples=10, seed=3,
                         progress_bar=False, log_likelihood=False, max_tree_depth=4)
    np.savez(sys.argv[1], **{k: np.asarray(v) for k, v in post.posterior.data_vars.items()},
             diverging=post.sample_stats["diverging"].values)
""")


def _draws_by_device_count(script: str, tmp_path, runs) -> dict:
    """Run ``script`` (argv: output path, device count, extra arguments) once per entry of
    ``runs`` ((device count, *extra arguments)), each in its own process; its saved arrays by
    device count."""
    out = {}
    for n, *extra in runs:
        path = tmp_path / f"d{n}.npz"
        proc = subprocess.run([sys.executable, "-c", script, str(path), n, *extra], capture_output=True,
                              text=True, env={**os.environ, **FAST_COMPILE_ENV}, timeout=900,
                              cwd=os.path.dirname(os.path.dirname(__file__)))
        assert proc.returncode == 0, proc.stderr[-3000:]
        with np.load(path) as f:
            out[n] = {k: f[k] for k in f.files}
    return out


def _assert_same_draws(one: dict, two: dict, exact: tuple) -> None:
    """The same draws up to rounding: ``exact`` sites equal, the others within 1e-6 of their
    scale. Rounding differs with the vectorised batch (one chain per device against two: up to
    2e-8 of a site's scale after 30 blocked sweeps, measured); a chain given another's key or
    state would differ at O(1)."""
    assert set(one) == set(two)
    for name in exact:
        np.testing.assert_array_equal(two[name], one[name], err_msg=name)
    for name, a in one.items():
        scale = float(np.abs(a).max())
        np.testing.assert_allclose(two[name], a, rtol=1e-6, atol=1e-6 * scale, err_msg=name)


def test_blocked_chains_on_two_devices_match_one_device(tmp_path):
    """The blocked sampler runs each device's chains on their own (shard_map): the draws of two
    chains split over two host devices are those of the same chains on one device."""
    out = _draws_by_device_count(BLOCKED_SCRIPT, tmp_path, [("1",), ("2",)])
    assert {"z", "dynamics"} <= set(out["1"])
    _assert_same_draws(out["1"], out["2"], exact=("z", "diverging"))


BLACKJAX_SCRIPT = textwrap.dedent("""
    import os
    import sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=" + sys.argv[2]
    import jax
    import numpy as np
    import inference
    from zoo import HMM

    assert jax.local_device_count() == int(sys.argv[2]), jax.devices()
    model = HMM(num_states=2, obs_dim=1)
    y = np.asarray(model.simulate(jax.random.key(0), num_steps=15)["y"])
    post = inference.fit(model, y, "blackjax_nuts", num_chains=2, num_warmup=20, num_samples=10, seed=3,
                         chain_method=sys.argv[3], progress_bar=False, log_likelihood=False,
                         max_tree_depth=4, precision="float64")
    assert post.attrs["chain_method"] == sys.argv[3], post.attrs["chain_method"]
    np.savez(sys.argv[1], **{k: np.asarray(v) for k, v in post.posterior.data_vars.items()},
             diverging=post.sample_stats["diverging"].values)
""")


def test_blackjax_chains_on_two_devices_match_one_device(tmp_path):
    """BlackJAX NUTS with ``chain_method="parallel"`` runs each device's chains on their own
    (shard_map, warmup and draws): two chains over two host devices give the draws of the same
    two chains vectorised on one device (on one device "parallel" has nothing to split)."""
    out = _draws_by_device_count(BLACKJAX_SCRIPT, tmp_path, [("1", "vectorized"), ("2", "parallel")])
    assert "means" in out["1"]
    _assert_same_draws(out["1"], out["2"], exact=("diverging",))


MESH_SCRIPT = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import json
    import jax
    import jax.numpy as jnp
    from inference.devices import chain_mesh, per_device, shard_chains

    sizes = {}
    for c in (1, 2, 3, 4, 6, 8):
        mesh = chain_mesh(c)
        sizes[c] = 0 if mesh is None else int(mesh.devices.size)
    x = shard_chains(jnp.arange(6.0), 6)  # three devices, two chains each
    doubled = per_device(lambda v: 2 * v, 6)(x)
    print("RESULT" + json.dumps({"sizes": sizes, "placed_on": len(x.sharding.device_set),
                                 "doubled": doubled.tolist()}))
""")


def test_chains_use_the_most_devices_that_divide_them():
    """With four host devices: a mesh of the most devices that divide the chains evenly (none
    for one chain or a prime above four), and a function run per device on such a mesh."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    proc = subprocess.run([sys.executable, "-c", MESH_SCRIPT], capture_output=True, text=True, env=env,
                          timeout=300, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))[len("RESULT"):])
    assert out["sizes"] == {"1": 0, "2": 2, "3": 3, "4": 4, "6": 3, "8": 4}
    assert out["placed_on"] == 3 and out["doubled"] == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]


def test_cpu_devices_are_requested_before_jax_starts_only():
    """use_cpu_devices gives a fresh process its host devices (what the zoo command does before
    any fit), defers to XLA_FLAGS, and is refused once JAX has run."""
    import jax.numpy as jnp

    from inference.devices import use_cpu_devices

    script = ("import jax, inference\nfrom inference.devices import use_cpu_devices\n"
              "ok = use_cpu_devices(3)\nprint('RESULT', ok, jax.local_device_count())")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    fresh = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300,
                           cwd=os.path.dirname(os.path.dirname(__file__)))
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert fresh.stdout.split("RESULT")[1].split() == ["True", "3"]
    flagged = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                             env={**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
                             cwd=os.path.dirname(os.path.dirname(__file__)))
    assert flagged.stdout.split("RESULT")[1].split() == ["False", "2"]
    jnp.ones(1).block_until_ready()  # JAX has run in this process
    assert use_cpu_devices(7) is False
