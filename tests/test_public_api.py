"""The public import surface of ``zoo`` and ``inference`` is pinned here.

A name added to or removed from a package's or a public module's ``__all__``, or a public module
added or removed, fails these tests until the tables below say so: the surface changes only on
purpose. Modules whose names start with an underscore are internal to their package.
"""

from __future__ import annotations

import importlib
import pkgutil

import pytest

PACKAGES = {
    "zoo": ["GPSDE", "GPSLDS", "HMM", "LDS", "RSLDS", "SLDS", "datasets", "distributions",
            "handlers", "kernels", "scans", "systems"],
    "inference": ["METHODS", "add_predictive", "align_labels", "attractors", "compare", "decode",
                  "diagnose", "fit", "loo_pit", "plot_attractors", "plot_rootogram",
                  "posterior_predictive", "prior_predictive", "psis_lfo", "rootogram",
                  "structured_guide", "to_datatree"],
}

MODULES = {
    "zoo.conjugate": ["ConjugatePrior", "ConsumesDelayed", "Decodable", "Delayed", "IntegratedOut"],
    "zoo.collapsed_states": ["augmented_sweep_states", "boundary_shift", "candidate_transition_information",
                             "emission_information", "single_move_states", "sweep_states",
                             "window_move_states", "window_sweep_states"],
    "zoo.datasets": ["double_well", "line_attractor", "nascar", "nascar_params",
                     "two_point_attractors", "two_spirals", "van_der_pol"],
    "zoo.deterministic": ["elk", "rnn", "s5"],
    "zoo.deterministic.elk": ["ELKResult", "ELKTrace", "METHODS", "evaluate", "linearized_step",
                              "parallel_default", "residual", "sequential", "trace"],
    "zoo.deterministic.parallel": ["parallel_default", "resolve_parallel"],
    "zoo.deterministic.rnn": ["GRUParams", "TanhRNNParams", "gru_cell", "init_gru", "init_tanh_rnn",
                              "largest_lyapunov_exponent", "lyapunov_spectrum", "sequential",
                              "tanh_rnn_cell"],
    "zoo.deterministic.s5": ["S5Layer", "S5Model", "discretize", "fit", "hippo_n",
                             "hippo_n_diagonal", "make_irregular_task"],
    "zoo.distributions": ["AugmentedStatePath", "DelayedPath", "GaussMarkov", "HMMEmissions", "LinearGaussianEmission",
                          "LinearGaussianSSM", "PathPosterior", "StateConditionedPath",
                          "StateConditionedSwitchingPath", "StatePosterior",
                          "SwitchingLinearDynamics", "SwitchingSequence", "masked_log_prob",
                          "pointwise_log_prob", "stick_breaking_log_probs", "support_point"],
    "zoo.frame": ["LatentFrame", "default_frame", "frame_observations", "latent_frame"],
    "zoo.gpsde": ["GPSDE"],
    "zoo.gpslds": ["GPSLDS"],
    "zoo.gaussian_paths": ["GaussMarkov", "LinearGaussianEmission", "LinearGaussianSSM", "PathPosterior"],
    "zoo.handlers": ["collapse", "condition_states", "decode", "integrate_out", "marginalize", "pointwise",
                     "temper"],
    "zoo.hmm": ["HMM"],
    "zoo.initialize": ["fit_arhmm", "map_refine", "pca_latents", "slds_initial_params"],
    "zoo.kernels": ["grid_points", "hsgp_features", "inducing_features", "matern52_kernel",
                    "num_partition_features", "partition", "partition_features", "rbf_kernel",
                    "ssl_features", "ssl_kernel", "ssl_weight_scale_tril", "stationary_kernel"],
    "zoo.lds": ["LDS"],
    "zoo.polya_gamma": ["pg1_mean", "sample_pg1", "stick_breaking_factor"],
    "zoo.preprocess": ["bin_observations", "fill_missing", "initial_path", "smooth_time"],
    "zoo.protocol": ["BlockedSpec", "Model", "Program", "as_model"],
    "zoo.reparam": ["GaussianPathReparam", "emission_information", "gauss_markov_factor",
                    "path_from_whitened", "reference_states", "state_centres", "whitened_from_path"],
    "zoo.rslds": None,
    "zoo.scans": ["BlockTridiagonalCholesky", "HMMFiltered", "HMMPosterior", "KalmanFiltered",
                  "KalmanSmoothed", "block_bidiagonal_multiply", "block_bidiagonal_solve", "block_tridiagonal_cholesky",
                  "cho_solve_lower", "cholesky", "hmm_filter", "hmm_log_normalizer",
                  "hmm_pointwise_log_normalizer", "hmm_sample", "hmm_smoother", "hmm_viterbi",
                  "kalman_filter", "kalman_sample", "kalman_smoother", "linear_recurrence", "solve",
                  "solve_lower", "solve_lower_broadcast", "solve_lower_transposed"],
    "zoo.scans.block_tridiagonal": ["BlockTridiagonalCholesky", "block_bidiagonal_multiply",
                                    "block_bidiagonal_solve", "block_tridiagonal_cholesky"],
    "zoo.scans.hmm": ["HMMFiltered", "HMMPosterior", "SCALED_FLOOR", "hmm_filter", "hmm_log_normalizer",
                      "hmm_pointwise_log_normalizer", "hmm_sample", "hmm_smoother", "hmm_viterbi",
                      "scaled_path_ok"],
    "zoo.scans.kalman": ["KalmanFiltered", "KalmanSmoothed", "LGSSM", "canonical_lgssm", "kalman_filter",
                         "kalman_sample", "kalman_smoother", "mask_missing"],
    "zoo.scans.linalg": ["SMALL_PRODUCT_MAX_DIM", "UNROLL_MAX_DIM", "UNROLL_MAX_DIM_BATCHED",
                         "cho_solve_lower", "cholesky", "matmul", "matvec", "solve", "solve_lower",
                         "solve_lower_broadcast", "solve_lower_transposed", "transpose"],
    "zoo.scans.recurrence": ["linear_recurrence"],
    "zoo.sde": ["CollapsedEulerMaruyama", "DelayedWeights", "DriftWeights", "EulerMaruyama",
                "LINKS", "SDEModel", "SequenceEmission", "WeightPosterior", "bin_observations",
                "collapse_drift", "decode_drift", "euler_maruyama_simulate", "initial_path"],
    "zoo.sde_distributions": ["CollapsedEulerMaruyama", "CollapsedWeights", "DelayedWeights",
                              "DriftWeights", "EulerMaruyama", "LINKS", "SequenceEmission",
                              "WeightPosterior", "euler_maruyama_simulate"],
    "zoo.sde_handlers": ["collapse_drift", "decode_drift"],
    "zoo.sde_laplace": ["LaplacePath", "laplace_path_factor", "linearised_transitions"],
    "zoo.slds": None,
    "zoo.systems": ["double_well", "input_pulses", "line_attractor", "two_point_attractors",
                    "two_spirals", "van_der_pol"],
    "inference.align": ["align_labels", "state_features"],
    "inference.attractors": ["KINDS", "MCSE_METHOD", "POOLED_WEIGHTING", "attractor_probabilities",
                             "attractor_summary", "attractors", "by_chain", "indicator_mcse",
                             "lm_solve", "plot_attractors"],
    "inference.attractor_probabilities": ["MCSE_METHOD", "POOLED_WEIGHTING", "attractor_probabilities",
                                          "attractor_summary", "by_chain", "draws_with_chains",
                                          "indicator_mcse", "indicator_probability", "modes_of",
                                          "thin_by_chain"],
    "inference.backends": ["Backend", "COMMON_OPTIONS", "Problem", "RunResult", "Settings",
                           "backend", "method_names"],
    "inference.blackjax_backend": ["BACKENDS", "BLACKJAX_OPTIONS", "log_density_fns", "run_blackjax"],
    "inference.blocked_augmented": ["augmented_blocks", "stick_regressions_step"],
    "inference.blocked": ["BACKENDS", "BLOCKED_OPTIONS", "Blocks", "SweepState", "build_blocks",
                          "chain_starts", "chunk_lengths", "chunk_size", "curvature_at_window_end",
                          "initial_inverse_mass", "parameter_mask", "pooled_curvature", "start_state", "sweep"],
    "inference.blocked_parts": ["collapsed_path_draw", "linear_gaussian_parts", "shift_boundaries"],
    "inference.blocked_warmup": ["Adaptation", "adaptation_init", "adaptation_update",
                                 "curvature_inverse_mass", "curvature_mass", "final_step_size",
                                 "warmup_schedule"],
    "inference.blocked_kernel": ["BlockedKernel", "BlockedKernelState", "adapt_after_sweep", "blocked_algorithm"],
    "inference.calibration": ["SBCResult", "rank_statistics", "rank_uniformity", "sbc_blocked_ranks",
                              "sbc_ranks"],
    "inference.cli": ["MODELS", "SYSTEMS", "build_parser", "load_data", "load_posterior", "main",
                      "make_model", "map_start"],
    "inference.compare": ["compare", "one_step_kind", "one_step_log_likelihood",
                          "particle_filter_log_likelihood", "psis_lfo"],
    "inference.convert": ["array_kwargs", "draws_group", "package_versions", "pointwise_log_likelihood",
                          "to_datatree"],
    "inference.decode": ["decode", "posterior_draws"],
    "inference.devices": ["chain_mesh", "per_device", "shard_chains", "use_cpu_devices"],
    "inference.diagnose": ["Diagnostics", "diagnose", "identified_convergence", "identified_diagnostics"],
    "inference.fit": ["METHODS", "allowed_options", "fit", "prepare_problem", "provenance", "resolve_method",
                      "shard_trials", "warn_if_float32"],
    "inference.program": ["ProgramInfo", "abstract_trace", "check_y", "inspect_program"],
    "inference.guides": ["MarkovGaussian", "MarkovGaussianGuide", "path_sites", "structured_guide"],
    "inference.io": ["OutputError", "atomic_write", "check_outputs", "load_data", "load_posterior"],
    "inference.labels": ["match_labels", "match_soft", "overlap_matrix", "state_accuracy"],
    "inference.modes": ["ChainModes", "MODE_RHAT", "MODE_Z", "chain_modes", "group_chains",
                        "identified_quantities"],
    "inference.numpyro_backend": ["BACKENDS", "NUMPYRO_OPTIONS", "cached_samplers", "run_numpyro"],
    "inference.plots": ["attractor_figure", "latents_figure", "plot_attractors"],
    "inference.predictive": ["add_predictive", "fit_model_kwargs", "loo_pit", "observed_array",
                             "plot_rootogram", "posterior_predictive", "prior_predictive",
                             "rootogram"],
    "inference.registry": ["DYNAMICS_MODELS", "MODELS", "MODEL_CLASSES", "SYSTEMS", "make_model",
                           "model_class", "model_from_attrs", "record_model", "simulate_system"],
    "inference.smc": ["SMC_OPTIONS", "run_smc"],
    "inference.starts": ["INIT_CHOICES", "initial_positions", "latent_sites", "map_start",
                         "mcmc_backends", "mcmc_start", "path_reference"],
    "inference.svi": ["GUIDES", "SVIResult", "run_svi"],
    "inference.svi_method": ["BACKENDS", "fit_svi"],
}

# old homes of moved names, importable for a release: module -> {name: new home}
MOVED = {
    "zoo.distributions": {name: "zoo.gaussian_paths" for name in
                          ("GaussMarkov", "LinearGaussianEmission", "LinearGaussianSSM", "PathPosterior")},
    "zoo.sde": {"WeightPosterior": "zoo.sde_distributions", "DriftWeights": "zoo.sde_distributions",
                "DelayedWeights": "zoo.sde_distributions", "EulerMaruyama": "zoo.sde_distributions",
                "CollapsedEulerMaruyama": "zoo.sde_distributions",
                "SequenceEmission": "zoo.sde_distributions", "LINKS": "zoo.sde_distributions",
                "euler_maruyama_simulate": "zoo.sde_distributions",
                "collapse_drift": "zoo.sde_handlers", "decode_drift": "zoo.sde_handlers",
                "bin_observations": "zoo.preprocess", "initial_path": "zoo.preprocess"},
    "inference.cli": {"load_data": "inference.io", "load_posterior": "inference.io",
                      "make_model": "inference.registry", "map_start": "inference.starts",
                      "SYSTEMS": "inference.registry", "MODELS": "inference.registry"},
    "inference.attractors": {"plot_attractors": "inference.plots",
                             **{name: "inference.attractor_probabilities" for name in
                                ("MCSE_METHOD", "POOLED_WEIGHTING", "attractor_probabilities",
                                 "attractor_summary", "by_chain", "indicator_mcse")}},
}


def _public_modules(package: str) -> list[str]:
    pkg = importlib.import_module(package)
    return sorted(m.name for m in pkgutil.walk_packages(pkg.__path__, package + ".")
                  if not any(part.startswith("_") for part in m.name.split(".")))


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_package_all_is_pinned(package):
    mod = importlib.import_module(package)
    assert sorted(mod.__all__) == PACKAGES[package]
    for name in mod.__all__:
        assert hasattr(mod, name), f"{package}.__all__ names {name!r}, which it does not define"


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_every_public_module_is_pinned(package):
    found = set(_public_modules(package))
    pinned = {m for m in MODULES if m.split(".")[0] == package}
    assert not found - pinned, f"new public module(s) {sorted(found - pinned)}: add their __all__ to MODULES"
    assert not pinned - found, f"module(s) {sorted(pinned - found)} are gone: remove them from MODULES"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_all_is_pinned(module):
    mod = importlib.import_module(module)
    names = getattr(mod, "__all__", None)
    assert (sorted(names) if names is not None else None) == MODULES[module]
    for name in names or ():
        assert hasattr(mod, name), f"{module}.__all__ names {name!r}, which it does not define"


@pytest.mark.parametrize("module", sorted(MOVED))
def test_moved_names_still_import_from_their_old_module(module):
    old = importlib.import_module(module)
    for name, home in MOVED[module].items():
        assert getattr(old, name) is getattr(importlib.import_module(home), name), (module, name)
