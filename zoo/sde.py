"""The continuous-time models' shared program: :class:`SDEModel`, mixed into
:class:`zoo.gpslds.GPSLDS` and :class:`zoo.gpsde.GPSDE`.

dx = (f(x) + B u) dt + diag(sigma) dW, discretised by Euler-Maruyama, with the drift
f(x) = Phi(x) W written in weight space and W integrated out in closed form given the path. The
pieces live with their kin: the distributions in :mod:`zoo.sde_distributions` (the weights are
integrated out and decoded by :class:`zoo.handlers.integrate_out` and :class:`zoo.handlers.decode`),
the data tools in :mod:`zoo.preprocess`.
Their public names are re-exported here, where they used to be defined (deprecated: import them
from their own modules).
"""

from __future__ import annotations

import contextlib
import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from zoo._base import check_choice, check_mask, check_positive_int, sequence_shape
from zoo.conjugate import Delayed
from zoo.handlers import integrate_out
from zoo.preprocess import bin_observations, initial_path
from zoo.protocol import BlockedSpec
from zoo.sde_distributions import (
    LINKS,
    CollapsedEulerMaruyama,
    DelayedWeights,
    DriftWeights,
    EulerMaruyama,
    SequenceEmission,
    WeightPosterior,
    euler_maruyama_simulate,
)
from zoo.sde_handlers import collapse_drift, decode_drift

__all__ = [
    "SDEModel",
    # re-exported from zoo.sde_distributions, zoo.sde_handlers and zoo.preprocess
    "WeightPosterior",
    "DriftWeights",
    "DelayedWeights",
    "EulerMaruyama",
    "CollapsedEulerMaruyama",
    "collapse_drift",
    "decode_drift",
    "SequenceEmission",
    "bin_observations",
    "initial_path",
    "euler_maruyama_simulate",
    "LINKS",
]


def _check_inputs(inputs, input_dim: int, trials, T):
    if input_dim == 0:
        if inputs is not None:
            raise ValueError("inputs were given but the model has input_dim=0")
        return None
    if inputs is None:
        raise ValueError(f"the model has input_dim={input_dim}; give inputs of shape "
                         f"{tuple(trials) + (T, input_dim)}")
    u = jnp.asarray(inputs)
    if u.shape != tuple(trials) + (T, input_dim):
        raise ValueError(f"inputs must have shape {tuple(trials) + (T, input_dim)} (trials, time, "
                         f"input); got {u.shape}")
    if not isinstance(inputs, jax.core.Tracer) and not np.all(np.isfinite(np.asarray(inputs))):
        raise ValueError("inputs must be finite (NaN cannot mean missing for inputs)")
    return u


def _factor(name: str, log_factor) -> None:
    """``numpyro.factor`` without its attribute lookup ``numpyro.distributions.distribution``,
    which fails when ``arviz`` (whose lazy loader registers ``numpyro`` half-imported) was
    imported before ``numpyro.distributions`` (measured: AttributeError inside numpyro.factor)."""
    from numpyro.distributions.distribution import Unit

    unit = Unit(log_factor)
    numpyro.sample(name, unit, obs=unit.sample(None), infer={"is_auxiliary": True})


class SDEModel:
    """Shared program of the continuous-time models (mixed into GPSLDS and GPSDE).

    Subclasses define ``_drift_prior()`` -> (features callable, prior factor L (P, P)), sampling
    the drift's hyperparameters, and ``drift_features(params, x)``.
    The dataclass fields used here: ``latent_dim``, ``obs_dim``, ``emissions``, ``link``,
    ``input_dim``, ``dt``, ``substeps``, ``init_scale``, ``diffusion_scale``.
    """

    continuous_time = True
    # The collapsed weight-space Gaussians (Gram matrices summed over thousands of Euler steps)
    # lose too much in float32: on the line-attractor test data a float32 fit gave
    # P(line) = 0.27 and the two-point control 0.98, against 0.95 and 0.00 in float64.
    # ``inference.fit`` warns when such a model runs without jax_enable_x64.
    float64_recommended = True

    # ---------------------------------------------------------------- protocol helpers
    def _common_dims(self) -> dict:
        x_time = "time" if self.substeps == 1 else "euler_step"
        dims = {
            "diffusion": ["latent"],
            "input_matrix": ["latent", "input"],
            "drift_weights": ["feature", "latent"],
            "drift_weights_mean": ["feature", "latent"],
            "drift_weights_factor": ["latent", "feature", "feature_in"],
            "emission_matrix": ["neuron", "latent"],
            "emission_bias": ["neuron"],
            "emission_noise": ["neuron"],
            "x": [x_time, "latent"],
            "y": ["time", "neuron"],
        }
        return dims

    def _common_sizes(self) -> dict:
        P = self.num_features
        sizes = {"latent": self.latent_dim, "latent_in": self.latent_dim, "neuron": self.obs_dim,
                 "feature": P, "feature_in": P}
        if self.input_dim:
            sizes["input"] = self.input_dim
        return sizes

    def _check_common(self):
        check_positive_int(self.latent_dim, "latent_dim")
        check_positive_int(self.obs_dim, "obs_dim")
        check_positive_int(self.input_dim, "input_dim", 0)
        check_positive_int(self.substeps, "substeps")
        check_choice(self.emissions, "emissions", {"gaussian", "poisson"})
        check_choice(self.link, "link", set(LINKS))
        if not (isinstance(self.dt, int | float) and self.dt > 0):
            raise ValueError(f"dt must be a positive number (the observation bin width); got {self.dt!r}")
        if not self.init_scale > 0:
            raise ValueError(f"init_scale must be > 0; got {self.init_scale}")
        if not self.diffusion_scale > 0:
            raise ValueError(f"diffusion_scale must be > 0; got {self.diffusion_scale}")

    def drift(self, params, x):
        """f(x) = Phi(x) W for one draw: ``params`` needs the hyperparameters and either
        ``drift_weights`` (P, D) or the collapsed moments (then the posterior mean is used).

        Parameters
        ----------
        params : mapping of arrays (one draw)
        x : array (..., D)

        Returns
        -------
        array (..., D)
        """
        W = params["drift_weights"] if "drift_weights" in params else params["drift_weights_mean"]
        return self.drift_features(params, x) @ W

    def drift_moments(self, params, x):
        """Posterior mean and variance of f(x) given the path (collapsed weights), per dim.

        Reads ``drift_weights_mean`` (P, D) and ``drift_weights_factor`` (D, P, P) in params
        (deterministic sites of a fitted, collapsed model). Returns (mean, var), each (..., D),
        or None when params hold no such moments (the weights were sampled).
        """
        if "drift_weights_mean" not in params:
            return None
        phi = self.drift_features(params, x)
        mean = phi @ params["drift_weights_mean"]
        proj = jnp.einsum("...p,dpq->...dq", phi, params["drift_weights_factor"])
        return mean, jnp.sum(proj**2, -1)

    def sample_drift_weights(self, params, key):
        """One exact draw of W from its conditional posterior (collapsed fits) or params' W."""
        if "drift_weights" in params:
            return params["drift_weights"]
        mean, factor = params["drift_weights_mean"], params["drift_weights_factor"]
        z = jax.random.normal(key, mean.shape, mean.dtype)
        return mean + jnp.einsum("dpq,qd->pd", factor, z)

    def dynamics_params(self, params, key) -> dict:
        """The draw with ``drift_weights`` drawn from their conditional when it was collapsed."""
        p = dict(params)
        if "drift_weights_mean" in p:
            p["drift_weights"] = self.sample_drift_weights(p, key)
        return p

    # ---------------------------------------------------------------- inference helpers
    def blocked_sampler(self) -> BlockedSpec:
        """The exact path block (:mod:`inference.blocked`): NUTS on the parameters and the path
        whitened around the Gauss-Newton mean of its conditional (:mod:`zoo.sde_laplace`), the
        drift weights integrated out (their exact conditional moments recorded, drawn per
        posterior draw by :meth:`dynamics_params`).

        Why not the weights drawn given the path and NUTS given the weights: given W, the
        partition and centres of GP-SLDS are pinned (measured on the demo's line attractor, 20
        trials: curvature 1.6e8 for the boundary, 2e6 for the temperature, 1.5e5 for the
        centres, against O(1-10) with W integrated out), so that Gibbs alternation would crawl.
        That variant stays available as ``BlockedSpec("x", False, "drift_weights")``
        (``path_reference["states"] = W``).
        """
        return BlockedSpec("x", collapsed=False, states_site=None)

    def initial_params(self, y, key, inputs=None, mask=None, num_steps: int = 1000,
                       learning_rate: float = 0.02) -> dict:
        """A MAP point estimate to start chains from (:meth:`zoo.protocol.Model.initial_params`).

        Adam on the program with the weights integrated out (``AutoDelta``), the path started at a
        smoothed PCA path of y (:func:`zoo.preprocess.initial_path`, linearly interpolated onto
        the Euler grid) and the diffusion held at its prior median: the joint MAP over a path and
        its diffusion is degenerate (sigma -> 0 makes the path density unbounded).

        Parameters
        ----------
        y : array (T, N) or (B, T, N)
        key : jax.random key
        inputs : array (..., T, I), optional
        mask : bool array (..., T), optional
        num_steps : int
            Adam steps.
        learning_rate : float

        Returns
        -------
        dict
            Constrained values of the latent sites (the path ``x`` (..., K, D) and the diffusion
            included).
        """
        import optax
        from numpyro import handlers as nh
        from numpyro.infer import SVI, Trace_ELBO, init_to_value
        from numpyro.infer.autoguide import AutoDelta

        y = jnp.asarray(y)
        dtype = jnp.asarray(0.0).dtype
        y = y.astype(dtype)
        kw = {k: jnp.asarray(v) for k, v in {"inputs": inputs, "mask": mask}.items() if v is not None}
        if "inputs" in kw:
            kw["inputs"] = kw["inputs"].astype(dtype)
        x0 = np.asarray(initial_path(np.asarray(y), self.latent_dim, counts=self.emissions == "poisson",
                                     smooth=2.0, scale=3.0))
        s = int(self.substeps)
        if s > 1:  # linear interpolation onto the Euler grid
            T = x0.shape[-2]
            t_f = np.arange((T - 1) * s + 1) / s
            flat = x0.reshape((-1,) + x0.shape[-2:])
            x0 = np.stack([np.stack([np.interp(t_f, np.arange(T), xx[:, d]) for d in range(xx.shape[-1])], -1)
                           for xx in flat]).reshape(x0.shape[:-2] + (len(t_f), -1))
        fixed = {"diffusion": jnp.full(self.latent_dim, self.diffusion_scale, dtype)}
        conditioned = nh.condition(self, data=fixed)
        guide = AutoDelta(conditioned, init_loc_fn=init_to_value(values={"x": jnp.asarray(x0, dtype)}))
        svi = SVI(conditioned, guide, optax.adam(learning_rate), Trace_ELBO())
        key = jax.random.key(0) if key is None else key
        res = svi.run(key, int(num_steps), y, progress_bar=False, **kw)
        return {k: np.asarray(v) for k, v in dict(guide.median(res.params), **fixed).items()}

    def grid_time(self, num_steps: int):
        """Times of the observation grid, (T,), in the units of ``dt``."""
        return np.arange(num_steps) * self.dt

    # ---------------------------------------------------------------- the program
    def __call__(self, y=None, num_steps=None, num_trials=None, mask=None, inputs=None,
                 collapse: bool = True, path_reference=None):
        """The NumPyro program.

        Parameters
        ----------
        y : array (T, N) or (B, T, N), optional
            Observations on a grid of spacing ``dt`` (NaN = missing: irregular observation times
            are NaN rows of a regular grid); None for the prior predictive.
        num_steps, num_trials : int, optional
            T and B when ``y`` is None.
        mask : bool array (T,) or (B, T), optional
            Steps that exist (trials of different lengths, padding at the end).
        inputs : array (T, I) or (B, T, I), optional
            External inputs u (required iff ``input_dim > 0``), held constant over each step.
        collapse : bool
            Integrate the drift weights out (only when y is observed).
        path_reference : dict, optional
            The path block of the blocked sampler (:mod:`inference.blocked`, :mod:`zoo.sde_laplace`):
            ``states`` (P, D), the drift weights W (observed: their prior term counts; None reads
            zeros, for the constrained parameters alone), ``path`` (*trials, K, D), the fixed
            first linearisation point, optional ``iterations`` (Gauss-Newton iterations, 2) and
            ``whiten`` (*trials, K, D). The path is then sampled whitened as ``x_whitened`` (eps)
            around the Gauss-Newton mean of p(x | W, theta, y), x a deterministic site, its exact
            density and log-Jacobian in the factor ``x_log_density``; ``whiten``, if given,
            records the eps of that path as ``x_whitened_target``.
        """
        D, N = self.latent_dim, self.obs_dim
        poisson = self.emissions == "poisson"
        y, T, trials = sequence_shape(y, num_steps, num_trials, N, poisson)
        mask = check_mask(mask, trials, T)
        u = _check_inputs(inputs, self.input_dim, trials, T)
        features, L = self._drift_prior()
        dtype = L.dtype
        sigma = numpyro.sample(
            "diffusion", dist.LogNormal(math.log(self.diffusion_scale), 0.5).expand([D]).to_event(1))
        s = self.substeps
        K = (T - 1) * s + 1
        dte = self.dt / s
        idx = jnp.arange(K - 1) // s  # observation interval of each Euler step
        drive = None
        if self.input_dim:
            Bm = numpyro.sample("input_matrix", dist.Normal(0.0, 1.0).expand([D, self.input_dim]).to_event(2))
            drive = u[..., idx, :] @ Bm.T
        grid_mask = None
        if mask is not None:
            grid_mask = mask[..., (jnp.arange(K) + s - 1) // s]
        init_loc, init_scale = jnp.zeros(D, dtype), jnp.full(D, self.init_scale, dtype)
        if path_reference is not None:
            if y is None:
                raise ValueError("path_reference (the blocked sampler's whitened path) needs observed y")
            emission = self._emission_params()
            W_given = path_reference.get("states")
            if W_given is None:  # the weights integrated out
                path = CollapsedEulerMaruyama(features, L, sigma, dte, init_loc, init_scale, K, trials, drive,
                                              grid_mask)
            else:
                W = numpyro.sample("drift_weights", DriftWeights(L, D), obs=jnp.asarray(W_given, dtype))
                path = EulerMaruyama(features, W, sigma, dte, init_loc, init_scale, K, trials, drive,
                                     grid_mask)
            x = self._whitened_path(path, features, emission, path_reference, y, mask, drive)
        else:
            ctx = integrate_out() if (collapse and y is not None) else contextlib.nullcontext()
            with ctx:
                W = numpyro.sample("drift_weights", DriftWeights(L, D))
                path = EulerMaruyama(features, W, sigma, dte, init_loc, init_scale, K, trials, drive,
                                     grid_mask)
                x = numpyro.sample("x", path)
            if isinstance(W, Delayed):
                post = path.collapsed(L).weight_posterior(x)
                numpyro.deterministic("drift_weights_mean", post.mean)
                numpyro.deterministic("drift_weights_factor", post.factor)
            emission = self._emission_params()
        C, d, r = emission
        xo = x[..., ::s, :]
        if poisson:
            fn = SequenceEmission(xo, C, d, "poisson", dt=self.dt, link=self.link, mask=mask)
        else:
            fn = SequenceEmission(xo, C, d, "gaussian", noise=r, mask=mask)
        return numpyro.sample("y", fn, obs=y)

    def _emission_params(self) -> tuple:
        """Sample the emission sites: (C (N, D), d (N,), noise (N,) or None)."""
        D, N = self.latent_dim, self.obs_dim
        C = numpyro.sample("emission_matrix", dist.Normal(0.0, 1.0).expand([N, D]).to_event(2))
        if self.emissions == "poisson":
            loc, scale = (0.0, 3.0) if self.link == "exp" else (0.0, 10.0)
            d = numpyro.sample("emission_bias", dist.Normal(loc, scale).expand([N]).to_event(1))
            return C, d, None
        d = numpyro.sample("emission_bias", dist.Normal(0.0, 2.0).expand([N]).to_event(1))
        r = numpyro.sample("emission_noise", dist.HalfNormal(1.0).expand([N]).to_event(1))
        return C, d, r

    def _whitened_path(self, path: EulerMaruyama, features, emission, reference, y, mask, drive):
        """x = mu + U^{-1} eps around the Gauss-Newton mean of the path's conditional
        (:mod:`zoo.sde_laplace`); the factor holds the exact path density and the log-Jacobian.

        Weights given (an :class:`EulerMaruyama` path): mu(theta, W), the mode of
        p(x | W, theta, y) approached from the reference path. Weights integrated out (a
        :class:`CollapsedEulerMaruyama` path): each Gauss-Newton step linearises the drift with
        the weights' posterior mean given the previous iterate (the first: given the reference
        path), so mu(theta) approaches the joint mode of (x, W); the density is the exact
        marginal, and the weights' conditional moments are recorded as ``drift_weights_mean`` and
        ``drift_weights_factor``."""
        from zoo.reparam import emission_information
        from zoo.sde_laplace import LaplacePath, laplace_path_factor

        C, d, r = emission
        s = self.substeps
        y = jnp.asarray(y, C.dtype)
        if self.emissions == "poisson":
            link = LINKS[self.link]

            def from_eta(eta):
                return dist.Poisson(self.dt * link(eta))
        else:
            def from_eta(eta):
                return dist.Normal(eta, r)

        def emission_info(x_bar):
            H, h = emission_information(C, d, from_eta, x_bar[..., ::s, :], y, mask)
            if s == 1:
                return H, h
            Hg = jnp.zeros(x_bar.shape + x_bar.shape[-1:], H.dtype).at[..., ::s, :, :].set(H)
            return Hg, jnp.zeros(x_bar.shape, h.dtype).at[..., ::s, :].set(h)

        x_ref = jnp.broadcast_to(jnp.asarray(reference["path"], C.dtype), path.event_shape)
        iterations = int(reference.get("iterations", 2))
        if isinstance(path, CollapsedEulerMaruyama):
            def drift_given_path(xb):
                Wb = path.weight_posterior(xb).mean
                return lambda v: features(v) @ Wb

            factor = laplace_path_factor(None, path.sigma, path.dt, path.init_loc, path.init_scale,
                                         emission_info, x_ref, iterations, drive,
                                         drift_given_path=drift_given_path)
        else:
            W = path.weights
            factor = laplace_path_factor(lambda v: features(v) @ W, path.sigma, path.dt, path.init_loc,
                                         path.init_scale, emission_info, x_ref, iterations, drive)
        lap = LaplacePath(factor)
        if reference.get("whiten") is not None:
            numpyro.deterministic("x_whitened_target", lap.whiten(jnp.asarray(reference["whiten"], C.dtype)))
        base = dist.Normal(jnp.zeros(path.event_shape, C.dtype), 1.0).to_event(len(path.event_shape))
        eps = numpyro.sample("x_whitened", base)
        x, log_det = lap.transform(eps)
        if isinstance(path, CollapsedEulerMaruyama):
            ll, mean, wfactor = path._terms(x)  # one pass for the density and the weights' moments
            path_lp = path._init_log_prob(x) + jnp.sum(ll)
            numpyro.deterministic("drift_weights_mean", mean)
            numpyro.deterministic("drift_weights_factor", wfactor)
        else:
            path_lp = path.log_prob(x)
        _factor("x_log_density", path_lp + log_det - base.log_prob(eps))
        return numpyro.deterministic("x", x)
