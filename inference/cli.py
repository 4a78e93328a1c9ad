"""The ``zoo`` command line: simulate data, fit a model, analyse attractors, diagnose, demo.

::

    zoo simulate SYSTEM --out data.nc [--num-steps T --num-trials B --seed S --overwrite ...]
    zoo fit MODEL data.nc --out posterior.nc [--method auto ... model and sampler options]
    zoo attractors posterior.nc --out figure.png [--num-draws --grid-size --out-nc]
    zoo diagnose posterior.nc [--no-strict]
    zoo demo [--out-dir DIR --quick --quiet --overwrite]

Data files
    NetCDF (xarray) with a variable ``y`` with dims ``(time, neuron)`` or ``(trial, time,
    neuron)``, optionally ``inputs`` with dims ``(time, input)`` / ``(trial, time, input)``, and
    attributes such as ``dt``. Plain NumPy files are accepted too: ``.npy`` holds y alone,
    ``.npz`` holds ``y`` and optionally ``inputs``; their axis order must be ``(time, neuron)``
    or ``(trial, time, neuron)`` (inputs ``(time, input)`` or ``(trial, time, input)``).

Posterior files
    The ``xarray.DataTree`` of :func:`inference.fit` written with ``to_netcdf``; its root
    attributes ``zoo_model`` (class name) and ``zoo_model_kwargs`` (constructor arguments as JSON)
    let ``zoo attractors`` and ``zoo diagnose`` rebuild the model.

Output files
    Checked before any simulation or sampling (:mod:`inference.io`): an existing file is never
    replaced without ``--overwrite``, a command never writes over its own input (not even with
    ``--overwrite``), and the folder must be creatable. Each file is written under a temporary
    name in its folder and renamed into place, so an interrupted run leaves the old file intact.

Usage errors (unknown subcommand, model, system or option; missing or unreadable file; data of the
wrong shape; bad option values; an output that exists or is an input) print one line to stderr and
exit with status 2. ``zoo diagnose`` exits with status 1 when the verdict is "fail" (``--no-strict``:
0). ``--quiet`` silences progress bars and chatter, never warnings.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from inference.attractors import attractor_summary
from inference.devices import use_cpu_devices
from inference.diagnose import identified_convergence
from inference.io import OutputError, atomic_write, check_outputs, load_data, load_posterior
from inference.plots import attractor_figure, latents_figure
from inference.registry import (
    DYNAMICS_MODELS,
    MODEL_CLASSES,
    MODELS,
    SYSTEMS,
    make_model,
    record_model,
    simulate_system,
)
from inference.starts import map_start
from zoo.protocol import as_model

# load_data, load_posterior, make_model and map_start live in library modules (inference.io,
# inference.registry, inference.starts); the names stay importable from here for a release
__all__ = ["main", "build_parser", "load_data", "load_posterior", "make_model", "map_start",
           "SYSTEMS", "MODELS"]


class UsageError(ValueError):
    """A problem with the command line or the files it names (exit status 2)."""


def _say(args, *text) -> None:
    if not args.quiet:
        print(*text, flush=True)


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------


def _model_kwargs_from_args(model: str, args, y: np.ndarray, inputs, attrs: Mapping) -> dict:
    """Constructor arguments for MODEL from the command-line options and the data."""
    N = int(y.shape[-1])
    emissions = choose_emissions(y, args.emissions, attrs, check=False)
    I = 0 if inputs is None else int(inputs.shape[-1])
    K = args.num_states
    D = args.latent_dim
    if args.transition_link and model != "rslds":
        raise UsageError(f"--transition-link applies to rslds only, not {model}")
    if model == "hmm":
        kw = {"num_states": K or 3, "obs_dim": N, "emissions": emissions,
              "transitions": args.transitions or "standard"}
        if I:
            raise UsageError("the hmm model takes no inputs; remove 'inputs' from the data file")
    elif model == "lds":
        if emissions != "gaussian":
            raise UsageError("the lds model has Gaussian emissions only (use --emissions gaussian)")
        if I:
            raise UsageError("the lds model takes no inputs; remove 'inputs' from the data file")
        kw = {"latent_dim": D or 2, "obs_dim": N}
    elif model in ("slds", "rslds"):
        default_tr = "standard" if model == "slds" else "recurrent_only"
        kw = {"num_states": K or 4, "latent_dim": D or 2, "obs_dim": N, "emissions": emissions,
              "transitions": args.transitions or default_tr, "input_dim": I}
        if args.transition_link:
            kw["transition_link"] = args.transition_link
    else:
        dt = args.dt if args.dt is not None else float(attrs.get("dt", 0.01))
        if args.transitions:
            raise UsageError(f"--transitions does not apply to {model}")
        kw = {"latent_dim": D or 2, "obs_dim": N, "emissions": emissions, "input_dim": I, "dt": dt}
        if model == "gpslds":
            kw = {"num_regimes": K or 2, **kw}
        else:
            if K:
                raise UsageError("--num-states does not apply to gpsde")
            kw.update(kernel=args.kernel, approx=args.approx)
    for opt in ("kernel", "approx"):
        # options of the argparse namespace against their defaults
        if model != "gpsde" and getattr(args, opt) != getattr(_DEFAULTS, opt):
            raise UsageError(f"--{opt} applies to gpsde only")
    if kw.get("emissions") == "poisson":
        check_counts(y)
    return kw


COUNT_LIKE = 0.9  # auto emissions: this fraction of non-negative integers makes y look like counts


def _bad_count_report(y: np.ndarray) -> str:
    """Where y fails to be non-negative integer counts (for messages)."""
    obs = ~np.isnan(y)
    neg = obs & (y < 0)
    frac = obs & (y != np.round(y))
    parts = []
    for label, mask in (("negative", neg), ("non-integer", frac)):
        n = int(mask.sum())
        if n:
            idx = tuple(int(i) for i in np.argwhere(mask)[0])
            parts.append(f"{n} {label} value(s) (first y[{', '.join(map(str, idx))}] = {y[idx]:g})")
    return " and ".join(parts)


def check_counts(y: np.ndarray) -> None:
    """Refuse y for a Poisson (count) model unless every observed value is a non-negative integer.

    Raises
    ------
    UsageError
        Naming ``y``, how many values are negative or non-integer, and the first of each.
    """
    report = _bad_count_report(np.asarray(y, float))
    if report:
        raise UsageError(f"y holds counts for a Poisson model, which must be non-negative integers; "
                         f"found {report}")


def choose_emissions(y: np.ndarray, emissions: str, attrs: Mapping, check: bool = True) -> str:
    """The emission family for ``--emissions`` (``"auto"``, ``"gaussian"`` or ``"poisson"``).

    ``auto`` takes the data file's ``emissions`` attribute; without one, Poisson when every
    observed value is a non-negative integer and Gaussian when y is clearly not count data. Data
    that are mostly counts (at least ``COUNT_LIKE`` of the values non-negative integers) with some
    negative or non-integer values are refused rather than silently fitted with Gaussian
    emissions: the choice must then be made explicitly. Poisson emissions (chosen either way)
    require valid counts (:func:`check_counts`; skipped with ``check=False``).
    """
    if emissions not in ("auto", "gaussian", "poisson"):
        raise UsageError(f"--emissions must be auto, gaussian or poisson; got {emissions!r}")
    if emissions == "auto":
        declared = attrs.get("emissions")
        if declared in ("gaussian", "poisson"):
            emissions = declared
        else:
            seen = y[~np.isnan(y)]
            countlike = (seen >= 0) & (seen == np.round(seen))
            if seen.size and countlike.all():
                emissions = "poisson"
            elif seen.size and countlike.mean() >= COUNT_LIKE:
                raise UsageError(
                    f"y looks like counts ({100 * countlike.mean():.1f} % non-negative integers) but has "
                    f"{_bad_count_report(y)}: fix the data for a Poisson model, or pass --emissions "
                    "gaussian if y is not count data")
            else:
                emissions = "gaussian"
    if check and emissions == "poisson":
        check_counts(y)
    return emissions


class _DEFAULTS:
    kernel = "rbf"
    approx = "inducing"


def _is_int(v, low: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _is_num(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _is_site_groups(v) -> bool:
    return isinstance(v, list) and all(isinstance(g, list) and g and all(isinstance(n, str) for n in g)
                                       for g in v)


# the value type of each inference.fit option (-o KEY=VALUE), checked before any work is done
OPTION_TYPES: dict = {
    **{k: ("an integer >= 1", lambda v: _is_int(v, 1))
       for k in ("max_tree_depth", "num_steps", "thinning", "max_leapfrog_steps", "num_mcmc_steps",
                 "max_iterations", "num_particles", "init_svi_steps")},
    **{k: ("a number in (0, 1)", lambda v: _is_num(v) and 0 < v < 1)
       for k in ("target_accept_prob", "target_ess")},
    **{k: ("a positive number", lambda v: _is_num(v) and v > 0)
       for k in ("trajectory_length", "learning_rate", "initial_step_size", "init_svi_learning_rate",
                 "num_integration_steps")},
    "tol": ("a positive number or null", lambda v: v is None or (_is_num(v) and v > 0)),
    **{k: ("true or false", lambda v: isinstance(v, bool)) for k in ("log_likelihood", "shard_trials")},
    "dense_mass": ("true, false or a JSON list of lists of site names (e.g. [[\"a\",\"b\"]])",
                   lambda v: isinstance(v, bool) or _is_site_groups(v)),
    "path_reparam": ("auto, true or false", lambda v: isinstance(v, bool) or v == "auto"),
    **{k: ("a name", lambda v: isinstance(v, str) and v != "") for k in ("guide", "init_guide")},
}


def _parse_options(items: Sequence[str]) -> dict:
    """``-o KEY=VALUE`` options: values parsed as JSON (else kept as text) and checked against
    :data:`OPTION_TYPES`, so a bad value is refused before any work with a message naming the
    option and the expected type."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise UsageError(f"--option expects KEY=VALUE; got {item!r}")
        k, v = item.split("=", 1)
        k = k.strip()
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    for k, v in out.items():
        if k in OPTION_TYPES:
            expected, ok = OPTION_TYPES[k]
            if not ok(v):
                raise UsageError(f"-o {k}: expected {expected}; got {json.dumps(v)}")
    return out


def _check_option_names(model, method: str, options: Mapping) -> None:
    """Refuse options the method (``"auto"`` resolved for this model) does not take, before any
    work (``inference.fit`` checks again; this only moves the message ahead of MAP starts)."""
    if not options:
        return
    try:
        from inference.fit import allowed_options, resolve_method
        from zoo.protocol import as_model

        resolved = resolve_method(as_model(model), method)
        allowed = set(allowed_options(resolved))
    except (ImportError, AttributeError, TypeError, ValueError):  # pragma: no cover - fit checks
        return
    unknown = sorted(set(options) - allowed)
    if unknown:
        via = f" ('{method}' is '{resolved}' for this model)" if resolved != method else ""
        raise UsageError(f"unknown option(s) {', '.join(unknown)} for method '{resolved}'{via}; allowed: "
                         f"{', '.join(sorted(allowed))}")


def _fit_model(model, y, inputs, args, *, method: str, num_chains: int, num_warmup: int, num_samples: int,
               init: str, options: Mapping, seed: int, map_steps: int):
    """inference.fit with a MAP start for the GP models (``init="auto"``)."""
    import inference

    kwargs = {} if inputs is None else {"inputs": inputs}
    init_value = init
    name = type(model).__name__
    text = None
    # the blocked sampler ("auto") starts from the model's own MAP (initial_params), inside fit's
    # float64 context; the CLI's MAP start is for the other MCMC methods
    own_start = method in ("auto", "blocked") and init == "auto"
    if init in ("auto", "map") and name in ("GPSLDS", "GPSDE") and method not in ("svi", "smc") \
            and not own_start:
        _say(args, f"MAP point estimate ({map_steps} Adam steps) to start the chains ...")
        t0 = time.perf_counter()
        init_value = map_start(model, y, inputs, num_steps=map_steps, seed=seed,
                               progress_bar=not args.quiet)
        text = f"MAP point estimate ({map_steps} Adam steps from a smoothed PCA path, diffusion at " \
               f"its prior median) in {time.perf_counter() - t0:.1f} s"
    elif init == "map":
        raise UsageError("--init map applies to gpslds and gpsde with an MCMC method")
    post = inference.fit(model, y, method, seed=seed, num_chains=num_chains, num_warmup=num_warmup,
                         num_samples=num_samples, init=init_value, progress_bar=not args.quiet,
                         model_kwargs=kwargs, **options)
    if text:
        post.attrs["initialization"] = f"{text}; {post.attrs.get('initialization', '')}"
    return post


# ----------------------------------------------------------------------------------------------
# Attractors
# ----------------------------------------------------------------------------------------------


def _require_dynamics(model) -> None:
    if type(model).__name__ not in DYNAMICS_MODELS:
        raise UsageError(f"attractor analysis needs a model with latent dynamics "
                         f"({', '.join(m.lower() for m in DYNAMICS_MODELS)}); this posterior is "
                         f"from {type(model).__name__}")


def _run_attractors(model, post, num_draws: int, grid_size: int, seed: int):
    import inference

    _require_dynamics(model)
    return inference.attractors(model, post, num_draws=num_draws, grid_size=grid_size, seed=seed)


# ----------------------------------------------------------------------------------------------
# Subcommands
# ----------------------------------------------------------------------------------------------


def _set_x64(flag: bool | None, default: bool) -> None:
    """Double precision on request, by default for the GP models (their collapsed Gaussians are
    better conditioned in float64); the switching models run in float32 by default."""
    import jax

    if flag if flag is not None else default:
        jax.config.update("jax_enable_x64", True)


def _outputs_ok(args, outputs, inputs=()) -> list[Path]:
    """Check the command's output paths before any work (see :mod:`inference.io`)."""
    try:
        # args is the argparse namespace; subcommands that write nothing have no --overwrite
        return check_outputs(outputs, inputs=inputs, overwrite=getattr(args, "overwrite", False))
    except OutputError as err:
        raise UsageError(str(err)) from None


def cmd_simulate(args) -> int:
    out = Path(args.out)
    if out.suffix.lower() != ".nc":
        raise UsageError(f"--out must name a .nc file; got {args.out}")
    _outputs_ok(args, [("--out", out)])
    ds = simulate_system(args.system, seed=args.seed, num_steps=args.num_steps, num_trials=args.num_trials,
                         num_neurons=args.num_neurons, emissions=args.emissions, bin_size=args.bin_size)
    atomic_write(out, ds.to_netcdf)
    _say(args, f"wrote {out}: " + ", ".join(f"{k} {dict(v.sizes)}" for k, v in ds.data_vars.items()))
    return 0


def cmd_fit(args) -> int:
    y, inputs, attrs = load_data(args.data)
    out = Path(args.out)
    if out.suffix.lower() != ".nc":
        raise UsageError(f"--out must name a .nc file; got {args.out}")
    _outputs_ok(args, [("--out", out)], inputs=[args.data])
    options = _parse_options(args.option)
    _set_x64(args.jax_x64, args.model in ("gpslds", "gpsde"))
    kw = _model_kwargs_from_args(args.model, args, y, inputs, attrs)
    model = make_model(MODEL_CLASSES[args.model], kw)
    _check_option_names(model, args.method, options)
    _say(args, f"model: {type(model).__name__}({', '.join(f'{k}={v!r}' for k, v in kw.items())})")
    _say(args, f"data: y {y.shape}" + (f", inputs {inputs.shape}" if inputs is not None else ""))
    t0 = time.perf_counter()
    post = _fit_model(model, y, inputs, args, method=args.method, num_chains=args.num_chains,
                      num_warmup=args.num_warmup, num_samples=args.num_samples, init=args.init,
                      options=options, seed=args.seed, map_steps=args.map_steps)
    record_model(post, model)
    post.attrs["zoo_data"] = str(args.data)
    atomic_write(out, post.to_netcdf)
    _say(args, f"fitted in {time.perf_counter() - t0:.1f} s; wrote {out}")
    _say(args, f"next: zoo diagnose {out}" + (f"; zoo attractors {out} --out figure.png"
                                              if type(model).__name__ in DYNAMICS_MODELS else ""))
    return 0


def cmd_diagnose(args) -> int:
    import inference

    post, _ = load_posterior(args.posterior)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dg = inference.diagnose(post, emit=False)
    sizes = post["posterior"].sizes
    print(f"{args.posterior}: method {post.attrs.get('method', '?')}, "
          f"{sizes.get('chain', '?')} chain(s) x {sizes.get('draw', '?')} draws")
    print(dg)
    if dg.verdict == "fail" and args.strict:
        print("exit status 1: the verdict is 'fail' (--no-strict exits 0)", file=sys.stderr)
        return 1
    return 0


def cmd_attractors(args) -> int:
    post, model = load_posterior(args.posterior)
    if model is None:
        raise UsageError(f"{args.posterior}: no zoo_model attribute; was it written by 'zoo fit'?")
    out = Path(args.out)
    if out.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise UsageError(f"--out must name a .png, .pdf or .svg figure; got {args.out}")
    outputs = [("--out", out)]
    if args.out_nc:
        if Path(args.out_nc).suffix.lower() != ".nc":
            raise UsageError(f"--out-nc must name a .nc file; got {args.out_nc}")
        outputs.append(("--out-nc", Path(args.out_nc)))
    _outputs_ok(args, outputs, inputs=[args.posterior])
    _set_x64(args.jax_x64, type(model).__name__ in ("GPSLDS", "GPSDE"))
    _require_dynamics(model)
    latent_dim = as_model(model).dim_sizes().get("latent")
    if latent_dim != 2:
        raise UsageError(f"the attractor figure needs a 2-D latent space; this model has latent_dim="
                         f"{latent_dim}")
    res = _run_attractors(model, post, args.num_draws, args.grid_size, args.seed)
    print(attractor_summary(res))
    atomic_write(out, lambda p: attractor_figure(res, p, title=f"{type(model).__name__}: {args.posterior}"))
    _say(args, f"wrote {out}")
    if args.out_nc:
        atomic_write(args.out_nc, res.to_netcdf)
        _say(args, f"wrote {args.out_nc}")
    return 0


DEMO_SIZES = {
    # trials, duration (s), bin, MAP steps, warmup, samples, chains, attractor draws, grid
    # 20 trials: with 6 (the old default) the slow direction is not pinned down and P(line) stays
    # well below 1 even for converged chains (tests/test_gpslds.py measured 10 vs 20 trials)
    "full": dict(num_trials=20, duration=3.0, bin_size=5, map_steps=1000, num_warmup=200, num_samples=200,
                 num_chains=4, num_draws=100, grid_size=20, max_tree_depth=8),
    "quick": dict(num_trials=2, duration=0.6, bin_size=4, map_steps=50, num_warmup=8, num_samples=8,
                  num_chains=2, num_draws=3, grid_size=6, max_tree_depth=5),
}


DEMO_OUTPUTS = ("data.nc", "posterior.nc", "attractors.nc", "attractors.png", "latents.png", "summary.json")


def cmd_demo(args) -> int:
    """Line-attractor analysis of a synthetic hypothalamus-like recording with a GP-SLDS."""
    import jax

    import inference

    t_start = time.perf_counter()
    sz = DEMO_SIZES["quick" if args.quick else "full"]
    out_dir = Path(args.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out-dir {out_dir} exists and is not a directory")
    _outputs_ok(args, [("--out-dir", out_dir / name) for name in DEMO_OUTPUTS])
    _say(args, "zoo demo: is there a line attractor in this population recording, and how sure are we?")
    _say(args, f"1/4 simulating {sz['num_trials']} trials x {sz['duration']} s of a line attractor driven by "
               "input pulses (zoo.systems.line_attractor, 30 Poisson neurons) ...")
    steps = int(round(sz["duration"] / 0.01)) // sz["bin_size"]
    data = simulate_system("line_attractor", seed=args.seed, num_steps=steps, num_trials=sz["num_trials"],
                           bin_size=sz["bin_size"])
    atomic_write(out_dir / "data.nc", data.to_netcdf)
    y, inputs = data["y"].values, data["inputs"].values
    model = make_model("GPSLDS", {"num_regimes": 2, "latent_dim": 2, "obs_dim": int(y.shape[-1]),
                                  "emissions": "poisson", "input_dim": 1, "dt": float(data.attrs["dt"]),
                                  "init_scale": 3.0})
    _say(args, f"2/4 fitting a GP-SLDS (2 regimes, 2-D latent, Poisson) to y {y.shape} with its blocked "
               f"sampler: NUTS on the parameters and the path whitened around its Gauss-Newton mean, the "
               f"drift weights integrated out ({sz['num_chains']} chains x {sz['num_warmup']} warmup + "
               f"{sz['num_samples']} draws, float64) ...")
    t0 = time.perf_counter()
    post = _fit_model(model, y, inputs, args, method="auto", num_chains=sz["num_chains"],
                      num_warmup=sz["num_warmup"], num_samples=sz["num_samples"], init="auto",
                      options={"max_tree_depth": sz["max_tree_depth"],
                               **({"log_likelihood": False} if args.quick else {})},
                      seed=args.seed, map_steps=sz["map_steps"])
    t_fit = time.perf_counter() - t0
    record_model(post, model)
    post.attrs["zoo_data"] = str(out_dir / "data.nc")
    atomic_write(out_dir / "posterior.nc", post.to_netcdf)
    print(f"fit: {t_fit:.0f} s ({post.attrs['initialization']})")
    print("3/4 diagnostics (inference.diagnose):")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dg = inference.diagnose(post, emit=False)
    print(f"verdict: {dg.verdict}")
    for w in dg.warnings:
        print(f"  - {w}")
    if not args.quiet:
        print(dg.table.to_string(float_format=lambda v: f"{v:.3g}"))
    if args.quick:
        print("  (--quick: tiny sizes, so the diagnostics are expected to complain)")
    print("4/4 attractor posterior (inference.attractors):")
    with jax.enable_x64(True):  # the GP drift's collapsed moments, as in the fit
        res = _run_attractors(model, post, sz["num_draws"], sz["grid_size"], args.seed)
    print(attractor_summary(res))
    print("truth: a line attractor (eigenvalues 0 and -4 1/s), no isolated stable fixed point")
    ident_check = identified_convergence(post, res)
    print(ident_check["text"])
    atomic_write(out_dir / "attractors.nc", res.to_netcdf)
    atomic_write(out_dir / "attractors.png", lambda p: attractor_figure(
        res, p, title="GP-SLDS on zoo.systems.line_attractor: flow field and attractor posterior"))
    atomic_write(out_dir / "latents.png", lambda p: latents_figure(post, data, p))
    from inference.attractors import attractor_probabilities

    probs = attractor_probabilities(res)
    summary = {"p_line_attractor": float(res["p_line_attractor"]),
               "p_num_stable": dict(zip(res["num_stable_value"].values.tolist(),
                                        res["p_num_stable"].values.tolist(), strict=True)),
               "probabilities": probs.to_dict(orient="records"),
               "verdict": dg.verdict, "warnings": dg.warnings, "fit_seconds": t_fit,
               "identified": {k: v for k, v in ident_check.items() if k != "text"},
               "total_seconds": time.perf_counter() - t_start, "quick": bool(args.quick), "sizes": sz}
    atomic_write(out_dir / "summary.json",
                 lambda p: Path(p).write_text(json.dumps(summary, indent=2, default=float)))
    print(f"wrote {out_dir}/: data.nc, posterior.nc, attractors.nc, attractors.png, latents.png, "
          "summary.json")
    print(f"done in {time.perf_counter() - t_start:.0f} s")
    return 0


# ----------------------------------------------------------------------------------------------
# Parser
# ----------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def _int_at_least(low: int):
    """An argparse type: an integer >= low."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer; got {text!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}; got {v}")
        return v

    return parse


_positive_int = _int_at_least(1)
_nonneg_int = _int_at_least(0)


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number; got {text!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"expected a positive number; got {text}")
    return v


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none (None) or the help text already
    explains it."""

    def _get_help_string(self, action):
        text = action.help or ""
        empty = action.default is None or action.default is False or action.default == []
        if empty or "default" in text.lower():
            return text
        return super()._get_help_string(action)


def fit_defaults() -> dict:
    """``inference.fit``'s defaults for method, num_chains, num_warmup and num_samples: the CLI
    uses the same ones."""
    import inspect

    from inference.fit import fit

    params = inspect.signature(fit).parameters
    return {k: params[k].default for k in ("method", "num_chains", "num_warmup", "num_samples")}


def build_parser() -> argparse.ArgumentParser:
    """The ``zoo`` argument parser."""
    from inference.fit import METHODS

    fd = fit_defaults()
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", "-q", action="store_true",
                        help="no progress bars or chatter (warnings are still shown)")
    writes = argparse.ArgumentParser(add_help=False)
    writes.add_argument("--overwrite", action="store_true",
                        help="replace existing output files (never the input files)")
    p = _Parser(prog="zoo", description="Bayesian state-space models of latent dynamics: simulate, fit, "
                "diagnose and find attractors. Usage errors exit with status 2. Output files are "
                "never overwritten without --overwrite, and are written to a temporary name first.",
                formatter_class=_HelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    s = sub.add_parser("simulate", parents=[common, writes],
                       formatter_class=_HelpFormatter, help="simulate a built-in system into a NetCDF file",
                       description="Simulate a built-in system; writes y (trial, time, neuron) or (time, "
                       "neuron), x, z and inputs where they exist, with attrs naming the system.")
    s.add_argument("system", choices=SYSTEMS, metavar="SYSTEM", help=f"one of {', '.join(SYSTEMS)}")
    s.add_argument("--out", required=True, help="output .nc file")
    s.add_argument("--num-steps", type=_positive_int, default=None,
                   help="time steps per trial (after binning); default: the system's own length")
    s.add_argument("--num-trials", type=_positive_int, default=1, help="trials")
    s.add_argument("--num-neurons", type=_positive_int, default=None,
                   help="observed dimension (default: the system's own, 10 for nascar)")
    s.add_argument("--emissions", choices=("gaussian", "poisson"), default=None,
                   help="default: gaussian for nascar, poisson otherwise")
    s.add_argument("--bin-size", type=_positive_int, default=1,
                   help="continuous-time systems: sum counts over this many simulation steps")
    s.add_argument("--seed", type=_nonneg_int, default=0, help="random seed")
    s.set_defaults(func=cmd_simulate)

    f = sub.add_parser("fit", parents=[common, writes],
                       formatter_class=_HelpFormatter, help="fit a model to a data file",
                       description="Fit MODEL to y (and inputs) read from a .nc, .npy or .npz file; .npy/"
                       ".npz arrays must be ordered (time, neuron) or (trial, time, neuron). Writes the "
                       "posterior DataTree (ArviZ groups) to a NetCDF file.")
    f.add_argument("model", choices=MODELS, metavar="MODEL", help=f"one of {', '.join(MODELS)}")
    f.add_argument("data", help="data file (.nc, .npy, .npz)")
    f.add_argument("--out", required=True, help="output posterior .nc file")
    f.add_argument("--method", choices=METHODS, default=fd["method"], help="sampler (as inference.fit)")
    f.add_argument("--num-chains", type=_positive_int, default=fd["num_chains"],
                   help="chains (as inference.fit)")
    f.add_argument("--num-warmup", type=_nonneg_int, default=fd["num_warmup"],
                   help="warmup steps per chain (as inference.fit)")
    f.add_argument("--num-samples", type=_positive_int, default=fd["num_samples"],
                   help="draws per chain (as inference.fit)")
    f.add_argument("--seed", type=_nonneg_int, default=0, help="random seed")
    f.add_argument("--init", choices=("auto", "map", "prior", "median", "svi", "pca"), default="auto",
                   help="chain starts; auto = the model's PCA start (switching models) or a MAP "
                        "estimate (GP models)")
    f.add_argument("--map-steps", type=_positive_int, default=1000, help="Adam steps of the MAP start")
    f.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                   help="a method option for inference.fit, e.g. -o max_tree_depth=6 -o num_steps=2000")
    g = f.add_argument_group("model options")
    g.add_argument("--num-states", type=_positive_int, default=None,
                   help="discrete states (hmm 3, slds/rslds 4) or GP-SLDS regimes (2)")
    g.add_argument("--latent-dim", type=_positive_int, default=None, help="latent dimension (2)")
    g.add_argument("--emissions", choices=("auto", "gaussian", "poisson"), default="auto",
                   help="auto: the data file's 'emissions' attribute, else poisson when every value of y is "
                        "a non-negative integer; y that is mostly counts with some negative or "
                        "non-integer values is refused (choose explicitly)")
    g.add_argument("--transitions", choices=("standard", "sticky", "recurrent", "recurrent_only"),
                   default=None, help="hmm/slds: standard|sticky; rslds: recurrent|recurrent_only")
    g.add_argument("--transition-link", choices=("softmax", "stick_breaking"), default=None,
                   help="rslds: softmax (default) or stick_breaking (recurrent_only; with Gaussian "
                        "emissions the path is integrated out given Polya-gamma variables)")
    g.add_argument("--dt", type=_positive_float, default=None,
                   help="gpslds/gpsde bin width (default: the data file's dt, else 0.01)")
    g.add_argument("--kernel", choices=("rbf", "matern52"), default="rbf", help="gpsde kernel")
    g.add_argument("--approx", choices=("inducing", "hsgp"), default="inducing", help="gpsde approximation")
    g.add_argument("--jax-x64", action=argparse.BooleanOptionalAction, default=None,
                   help="double precision (default: on for gpslds/gpsde, off otherwise)")
    f.set_defaults(func=cmd_fit)

    a = sub.add_parser("attractors", parents=[common, writes],
                       formatter_class=_HelpFormatter, help="posterior probability of attractors + figure",
                       description="Fixed points, line attractors and slow-point maps for each posterior "
                       "draw; prints P(line attractor) and P(number of stable fixed points = n) and draws "
                       "the maps over the posterior-mean flow field.")
    a.add_argument("posterior", help="posterior .nc file written by 'zoo fit'")
    a.add_argument("--out", required=True, help="figure (.png, .pdf, .svg)")
    a.add_argument("--out-nc", default=None, help="also write the attractor Dataset to this .nc file")
    a.add_argument("--num-draws", type=_positive_int, default=100, help="posterior draws analysed")
    a.add_argument("--grid-size", type=_positive_int, default=20, help="cells per latent dimension")
    a.add_argument("--seed", type=_nonneg_int, default=0, help="random seed")
    a.add_argument("--jax-x64", action=argparse.BooleanOptionalAction, default=None,
                   help="double precision (default: on for gpslds/gpsde, off otherwise)")
    a.set_defaults(func=cmd_attractors)

    d = sub.add_parser("diagnose", parents=[common],
                       formatter_class=_HelpFormatter, help="R-hat, ESS, divergences, E-BFMI with a verdict",
                       description="Label-aligned convergence diagnostics of a posterior file.")
    d.add_argument("posterior", help="posterior .nc file")
    d.add_argument("--strict", action=argparse.BooleanOptionalAction, default=True,
                   help="exit with status 1 when the verdict is 'fail' (--no-strict: exit 0 whatever "
                        "the verdict)")
    d.set_defaults(func=cmd_diagnose)

    m = sub.add_parser("demo", parents=[common, writes],
                       formatter_class=_HelpFormatter,
                       help="the main job: a line-attractor analysis end to end",
                       description="Simulate a line attractor driven by input pulses, fit a GP-SLDS with "
                       "NUTS, print diagnostics and the attractor posterior, write the posterior (NetCDF) "
                       "and figures.")
    m.add_argument("--out-dir", default="zoo-demo-output",
                   help="output directory; its files " + ", ".join(DEMO_OUTPUTS) + " must not exist yet "
                        "(or pass --overwrite)")
    m.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test; results not meaningful)")
    m.add_argument("--seed", type=_nonneg_int, default=0, help="random seed")
    m.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``zoo`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # one host device per chain on a CPU (inference.devices.chain_mesh), before JAX starts
    use_cpu_devices(getattr(args, "num_chains", None) or 4)
    # --quiet silences progress bars and chatter only: warnings (NaN draws, float32, ...) still show
    try:
        return int(args.func(args) or 0)
    except (UsageError, FileNotFoundError, ValueError) as err:
        msg = " ".join(str(err).split())
        print(f"zoo {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except ImportError as err:  # e.g. no HDF5 backend for NetCDF-4 files
        msg = " ".join(str(err).split())
        print(f"zoo {args.command}: error: a package is missing: {msg}", file=sys.stderr)
        return 1
    except OSError as err:  # a write that failed (disk full, permissions): the old file is intact
        msg = " ".join(str(err).split())
        print(f"zoo {args.command}: error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
