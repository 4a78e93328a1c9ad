"""Switching linear dynamical system (SLDS) as a NumPyro program, states summed out exactly."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from zoo._base import (
    ModelMixin,
    check_choice,
    check_mask,
    check_positive_int,
    is_concrete,
    sequence_shape,
)
from zoo.conjugate import Delayed
from zoo.distributions import LinearGaussianEmission, SwitchingLinearDynamics, support_point
from zoo.frame import LatentFrame, default_frame, latent_frame
from zoo.handlers import marginalize
from zoo.protocol import BlockedSpec

_LINKS = {"softplus": jax.nn.softplus, "exp": jnp.exp}


@dataclass(frozen=True)
class SLDS(ModelMixin):
    """Bayesian switching linear dynamical system.

    z_1 ~ Cat(pi), z_t | z_{t-1} ~ Cat(P[z_{t-1}]);
    x_1 ~ N(0, init_scale^2 I), x_t = A_{z_t} x_{t-1} + b_{z_t} + V_{z_t} u_t + N(0, diag q_{z_t}^2);
    Gaussian emissions y_t = C x_t + d + F u_t + N(0, diag r^2), or Poisson emissions
    y_t ~ Poisson(bin_size * link(C x_t + d + F u_t)).

    The path x is a latent site sampled by NUTS; z is summed out of its density by the forward
    algorithm (:class:`zoo.handlers.marginalize`) and decoded afterwards
    (:func:`inference.decode`). Given the states, ``integrate_out(condition_states(m, states={"x":
    z}))`` integrates the path out by the Kalman filter (Gaussian emissions only) and
    :class:`zoo.handlers.decode` draws it exactly (a partially collapsed Gibbs sampler's blocks).

    Priors (for latents of order one; the prior predictive is stable dynamics with high
    probability, see the tests):

    - ``init_probs`` ~ Dirichlet(1); ``trans_probs[i]`` ~ Dirichlet(1 + kappa e_i), kappa =
      ``stickiness`` for sticky transitions, 0 otherwise
    - ``dynamics`` A_k ~ Normal(0.85 I, 0.085 / sqrt(D)) elementwise (spectral radius < 1 with
      prior probability about 0.98 per state for D = 2); ``dynamics_bias`` b_k ~
      Normal(0, 0.3); ``dynamics_noise`` q_k ~ HalfNormal(0.2)
    - emissions in the data frame (P, P_perp, s, o) of :func:`zoo.frame.latent_frame` -- see
      Identifiability: ``emission_matrix`` C = s P + P_perp G with ``emission_free`` G
      ~ Normal(0, s) (N - D, D); ``emission_bias`` d = o + P_perp h with ``emission_bias_free``
      h ~ Normal(0, 2 s) (N - D,); Gaussian ``emission_noise`` r ~ HalfNormal(1). (Normal(0, 1)
      loadings and Normal(0, 2) offsets for latents of order one, in the data's units.)
    - inputs: ``input_dynamics`` V_k, ``input_emissions`` F ~ Normal(0, 1)

    Identifiability: the likelihood identifies x only up to an affine map x -> M x + c and z up
    to a permutation. The affine map is pinned by anchoring the latent space to the data: with
    P the leading D principal directions of the (transformed) observations, s their root mean
    standard deviation and o their mean, the model constrains P^T C = s I and P^T d = P^T o
    (:mod:`zoo.frame`), so x is the principal-component scores of the noiseless emissions in
    units of s. Every affine map is fixed, so x, C, d, b_k, q_k and the dynamics are all
    identified (the frame is computed once from y, :meth:`data_frame`; without data, in the
    prior predictive, it is the first D observation axes: C = [I; G], d = [0; h]). Labels are
    aligned across chains and draws by Hungarian matching (:mod:`inference.labels`).
    Quantities invariant to the labels -- eigenvalues of A_k (:meth:`invariants`), C, denoised
    observations C x_t + d, state occupancy -- are the ones to diagnose.

    Parameters
    ----------
    num_states : int
        K >= 1.
    latent_dim : int
        D >= 1, with D <= obs_dim.
    obs_dim : int
        N >= 1.
    transitions : {"standard", "sticky"}
    emissions : {"gaussian", "poisson"}
    input_dim : int
        M >= 0 exogenous inputs u (passed as ``inputs`` (..., T, M)).
    link : {"softplus", "exp"}
        Poisson rate link.
    bin_size : float
        Poisson bin width (counts per bin = bin_size * rate).
    stickiness : float
        Sticky Dirichlet extra mass kappa.
    init_scale : float
        Prior standard deviation of x_1.
    parallel : bool
        Sum out the states with the parallel scan.
    """

    num_states: int
    latent_dim: int
    obs_dim: int
    transitions: str = "standard"
    emissions: str = "gaussian"
    input_dim: int = 0
    link: str = "softplus"
    bin_size: float = 1.0
    stickiness: float = 10.0
    init_scale: float = 2.0
    parallel: bool = False

    continuous_time = False
    sequence_sites = ("x", "y", "z")
    _transition_choices = ("standard", "sticky")
    #: the recurrent transitions' link (:class:`zoo.distributions.SwitchingLinearDynamics`)
    switching_link = "softmax"

    def __post_init__(self):
        check_positive_int(self.num_states, "num_states")
        check_positive_int(self.latent_dim, "latent_dim")
        check_positive_int(self.obs_dim, "obs_dim")
        check_positive_int(self.input_dim, "input_dim", minimum=0)
        if self.latent_dim > self.obs_dim:
            raise ValueError(
                f"latent_dim must be <= obs_dim; got latent_dim={self.latent_dim}, obs_dim={self.obs_dim}"
            )
        check_choice(self.transitions, "transitions", set(self._transition_choices))
        check_choice(self.emissions, "emissions", {"gaussian", "poisson"})
        check_choice(self.link, "link", set(_LINKS))
        for name in ("bin_size", "init_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0; got {getattr(self, name)}")
        if not self.stickiness >= 0:
            raise ValueError(f"stickiness must be >= 0; got {self.stickiness}")

    # ------------------------------------------------------------------ protocol

    @property
    def dims(self) -> dict:
        """Named dims of every site (ArviZ)."""
        return {
            "init_probs": ["state"],
            "trans_probs": ["state", "state_to"],
            "recurrence_weights": ["state_to", "latent"],
            "recurrence_bias": ["state_to"],
            "input_transitions": ["state_to", "input"],
            "dynamics": ["state", "latent", "latent_in"],
            "dynamics_bias": ["state", "latent"],
            "dynamics_bias_centred": ["state", "latent"],
            "dynamics_noise": ["state", "latent"],
            "input_dynamics": ["state", "latent", "input"],
            "emission_free": ["neuron_rest", "latent"],
            "emission_bias_free": ["neuron_rest"],
            "emission_matrix": ["neuron", "latent"],
            "emission_bias": ["neuron"],
            "emission_noise": ["neuron"],
            "input_emissions": ["neuron", "input"],
            "x": ["time", "latent"],
            "z": ["time"],
            "y": ["time", "neuron"],
        }

    def dim_sizes(self) -> dict:
        D, N = self.latent_dim, self.obs_dim
        return {
            "state": self.num_states,
            "state_to": self.num_states,
            "latent": D,
            "latent_in": D,
            "neuron": N,
            "neuron_rest": N - D,
            "input": self.input_dim,
        }

    def step(self, params, x, z):
        """Deterministic discrete-time dynamics: the next mean A_z x + b_z, x (..., D)."""
        A, b = params["dynamics"], params["dynamics_bias"]
        return jnp.einsum("...ij,...j->...i", A[z], x) + b[z]

    def regimes(self, params, x):
        """Probabilities of the discrete states at x, (..., K): the stationary distribution of
        the transition matrix (the SLDS's states do not depend on x)."""
        P = jnp.asarray(params["trans_probs"])
        K = P.shape[-1]
        # stationary distribution: solve pi (P - I) = 0 with sum(pi) = 1 (least squares)
        M = jnp.concatenate([(P - jnp.eye(K)).T, jnp.ones((1, K))], axis=0)
        rhs = jnp.concatenate([jnp.zeros(K), jnp.ones(1)])
        pi = jnp.linalg.lstsq(M, rhs)[0]
        return jnp.broadcast_to(pi, jnp.shape(x)[:-1] + (K,))

    def initial_params(self, y, key, inputs=None, mask=None, **options) -> dict:
        """A fast point estimate of every latent site to start MCMC from.

        PCA, then EM of an autoregressive HMM, then MAP refinement; see
        :func:`zoo.initialize.slds_initial_params` (``options`` go there).
        """
        from zoo.initialize import slds_initial_params

        return slds_initial_params(self, y, key, inputs=inputs, mask=mask, **options)

    def invariants(self, params) -> dict:
        """Quantities identified despite the affine and permutation symmetries (NumPy).

        Returns ``eig_modulus`` and ``eig_angle`` (..., K, D): moduli and absolute arguments of
        the eigenvalues of each A_k, each state's eigenvalues sorted by modulus. Draws whose A_k
        is not finite (a sampler that diverged to NaN) give NaN, so diagnostics report them.
        """
        A = np.asarray(params["dynamics"])
        finite = np.isfinite(A).all(axis=(-2, -1))
        ev = np.full(A.shape[:-1], np.nan, dtype=complex)
        ev[finite] = np.linalg.eigvals(A[finite])
        order = np.argsort(-np.abs(ev), axis=-1)
        ev = np.take_along_axis(ev, order, axis=-1)
        return {"eig_modulus": np.abs(ev), "eig_angle": np.abs(np.angle(ev))}

    # ------------------------------------------------------------------ the program

    def _transition_params(self, K, inputs):
        """log_P, R, r for SwitchingLinearDynamics (overridden by the recurrent model)."""
        kappa = self.stickiness if self.transitions == "sticky" else 0.0
        P = numpyro.sample(
            "trans_probs", dist.Dirichlet(jnp.ones((K, K)) + kappa * jnp.eye(K)).to_event(1)
        )
        return jnp.log(P), None, None

    def frame_emissions(self, frame: LatentFrame) -> tuple[jax.Array, jax.Array]:
        """Sample the emission parameters in the data frame (see Identifiability).

        C = s P + P_perp G and d = o + P_perp h, with the frame's scale s, basis P (N, D), offset
        o (N,) and complement P_perp (N, N - D); G and h are the sample sites
        ``emission_free`` (N - D, D) and ``emission_bias_free`` (N - D,) when N > D. Call it
        inside a NumPyro program (a model written around this one's sites, e.g. a benchmark's
        reference implementation).

        Parameters
        ----------
        frame : LatentFrame
            The model's data frame (:meth:`data_frame`).

        Returns
        -------
        C : array (N, D)
            Recorded as the deterministic site ``emission_matrix``.
        d : array (N,)
            Recorded as ``emission_bias``.
        """
        D, N = self.latent_dim, self.obs_dim
        s = frame.scale
        C, d = s * frame.basis, frame.offset
        if N > D:
            G = numpyro.sample("emission_free", dist.Normal(0.0, s).expand([N - D, D]).to_event(2))
            h = numpyro.sample("emission_bias_free", dist.Normal(0.0, 2.0 * s).expand([N - D]).to_event(1))
            C, d = C + frame.complement @ G, d + frame.complement @ h
        return numpyro.deterministic("emission_matrix", C), numpyro.deterministic("emission_bias", d)

    # the old name, which benchmarks/nascar.py still calls
    _frame_emissions = frame_emissions

    def blocked_sampler(self) -> BlockedSpec | None:
        """The exact blocked sampler (:mod:`inference.blocked`): the path integrated out given the
        states where it is linear-Gaussian (Gaussian emissions, non-recurrent transitions), else
        whitened given the states (recurrent transitions, Poisson emissions)."""
        if self.emissions == "gaussian" and self.transitions in ("standard", "sticky"):
            return BlockedSpec("x")
        return BlockedSpec("x", collapsed=False)

    def blocked_start(self, y, values, key=None, **model_kwargs) -> tuple[dict, dict]:
        """Start values and program arguments for the blocked sampler: the dynamics offsets
        centred at each state's part of the point estimate's path (``bias_centres``), which
        removes the slope-offset correlation that otherwise sets the NUTS block's step size.

        Parameters
        ----------
        y : array (T, N) or (B, T, N)
        values : mapping
            Constrained values of the latent sites of the plain program (with the path).
        key : jax.random key, optional
        **model_kwargs
            ``inputs``, ``mask``.

        Returns
        -------
        values : dict
            Start values in the program's coordinates with ``bias_centres``.
        extra_kwargs : dict
            ``{"bias_centres": (K, D) array}``.
        """
        from zoo.reparam import reference_states, state_centres

        kwargs = {k: v for k, v in model_kwargs.items() if k in ("inputs", "mask")}
        states = reference_states(self, y, values, key, **kwargs)
        c = state_centres(jnp.asarray(values["x"]), states, self.num_states, kwargs.get("mask"))
        out = dict(values)
        if "dynamics_bias" in out:
            A = jnp.asarray(out["dynamics"])
            out["dynamics_bias_centred"] = jnp.asarray(out.pop("dynamics_bias")) + jnp.einsum(
                "kij,kj->ki", A, jnp.asarray(c, A.dtype))
        return out, {"bias_centres": c}

    def prepare(self, y, model_kwargs) -> dict:
        """The data frame, computed once from the data (:meth:`zoo.protocol.Model.prepare`),
        unless the caller fixed one (``frame=`` in ``model_kwargs``, e.g. ``default_frame`` for
        simulation-based calibration, where a frame computed from y would change the model)."""
        if model_kwargs.get("frame") is not None:
            return {}
        return {"frame": self.data_frame(y, model_kwargs.get("mask"))}

    def data_frame(self, y, mask=None) -> LatentFrame:
        """The frame that anchors the latent space to the observations (:mod:`zoo.frame`).

        Parameters
        ----------
        y : array (T, N) or (B, T, N), NaN = missing
        mask : bool array (T,) or (B, T), optional

        Returns
        -------
        LatentFrame
            Pass it to the program as ``frame=`` to skip recomputing it (what
            :func:`inference.fit` does).
        """
        return latent_frame(y, self.latent_dim, mask, self.emissions, self.link, self.bin_size)

    def __call__(self, y=None, num_steps=None, num_trials=None, mask=None, inputs=None,
                 path_reference=None, frame=None, bias_centres=None):
        """The NumPyro program.

        Parameters
        ----------
        y : array (T, N) or (B, T, N), optional
            Observations, NaN = missing; None for the prior predictive.
        num_steps, num_trials : int, optional
            Sizes for the prior predictive.
        mask : bool array (T,) or (B, T), optional
            Steps that exist (trials of different lengths, padded at the end).
        inputs : array (T, M) or (B, T, M), optional
            Exogenous inputs u (required when ``input_dim > 0``).
        path_reference : dict, optional
            ``states`` (..., T) and ``path`` (..., T, D) from :meth:`path_reference`: sample the
            path non-centred, x = mu(theta) + S(theta) eps with eps the latent site
            ``x_whitened`` and x a deterministic site (same posterior, better NUTS geometry;
            see :mod:`zoo.reparam`). The emission parameters are then sampled before the path.
            With ``given_states=True`` in the dict, ``states`` are the path's own states (the
            density is log p(z, x | theta), the whitened path block of
            :mod:`inference.blocked`), and ``whiten`` (..., T, D), if given, records the eps
            of that path as the deterministic site ``x_whitened_target``.
        frame : LatentFrame, optional
            The data frame of :meth:`data_frame` (computed from y when not given; the first D
            observation axes when y is None).
        bias_centres : array (K, D), optional
            Sample the dynamics offsets through their values at these points (the site
            ``dynamics_bias_centred``, see :meth:`_centred_bias`; the same model). Implied by
            ``path_reference``; the blocked sampler passes it alone (:meth:`blocked_start`).
        """
        K, D, N, M = self.num_states, self.latent_dim, self.obs_dim, self.input_dim
        counts = self.emissions == "poisson"
        y, T, trials = sequence_shape(y, num_steps, num_trials, N, counts)
        mask = check_mask(mask, trials, T)
        inputs = self._check_inputs(inputs, trials, T)
        if frame is None:
            frame = default_frame(N, D) if y is None else self.data_frame(y, mask)

        pi = numpyro.sample("init_probs", dist.Dirichlet(jnp.ones(K)))
        log_P, R, r = self._transition_params(K, inputs)
        A = numpyro.sample(
            "dynamics", dist.Normal(0.85 * jnp.eye(D), 0.085 / np.sqrt(D)).expand([K, D, D]).to_event(3)
        )
        if path_reference is not None:
            bias_centres = path_reference.get("centres", bias_centres)
        if bias_centres is None:
            b = numpyro.sample("dynamics_bias", dist.Normal(0.0, 0.3).expand([K, D]).to_event(2))
        else:
            b = self._centred_bias(A, jnp.asarray(bias_centres, A.dtype))
        q = numpyro.sample("dynamics_noise", dist.HalfNormal(0.2).expand([K, D]).to_event(2))
        if M:
            V = numpyro.sample("input_dynamics", dist.Normal(0.0, 1.0).expand([K, D, M]).to_event(3))
            b = b + jnp.einsum("kdm,...tm->...tkd", V, inputs)
        init_L = jnp.broadcast_to(self.init_scale * jnp.eye(D), (K, D, D))
        path = SwitchingLinearDynamics(
            jnp.log(pi), A, b, jax.vmap(jnp.diag)(q), jnp.zeros((K, D)), init_L,
            log_P=log_P, R=R, r=r, num_steps=T, batch_shape=trials, mask=mask,
            link=self.switching_link,
        )
        if path_reference is None:
            with marginalize(parallel=self.parallel):
                x = numpyro.sample("x", path)
            emission = self._emissions(inputs, frame)
        else:
            # the non-centred path needs the emission parameters first (see zoo.reparam)
            emission = self._emissions(inputs, frame)
            x = self._noncentred_path(path.with_parallel(self.parallel), path_reference, emission, y, mask)
        C, d, from_eta = emission
        if isinstance(x, Delayed):
            self._observe_collapsed(x, C, d, from_eta, y, mask)
        else:
            observe_sequence("y", from_eta(x @ C.T + d), y, mask)
        return x

    def _observe_collapsed(self, x, C, d, from_eta, y, mask):
        """Observe y given a path that :class:`zoo.handlers.integrate_out` integrates out (e.g. the
        SLDS path given its states, :class:`zoo.handlers.condition_states`): the Gaussian
        emissions as one linear-Gaussian emission y_t = C x_t + d_t + N(0, diag(r^2)), which
        integrate_out turns into the Kalman marginal; padded steps become missing (NaN)."""
        if self.emissions != "gaussian":
            raise ValueError(
                "the path 'x' is integrated out (integrate_out), which needs linear-Gaussian emissions; "
                f"this model has emissions={self.emissions!r}: run it without integrate_out"
            )
        rn = from_eta(jnp.zeros(C.shape[0], C.dtype)).scale  # the emission noise scales (N,)
        if y is not None and mask is not None:
            y = jnp.where(mask[..., None], y, jnp.nan)
        # the variances of the diagonal noise: the Kalman filter then works in the latent space
        return numpyro.sample("y", LinearGaussianEmission(x, C, d, rn**2), obs=y)

    def _emissions(self, inputs, frame):
        """Sample the emission parameters: (C (N, D), offsets d (N,) or (..., T, N), eta -> the
        emission distribution of y), with eta = x C^T + d."""
        N, M = self.obs_dim, self.input_dim
        C, d = self.frame_emissions(frame)
        if M:
            Fu = numpyro.sample("input_emissions", dist.Normal(0.0, 1.0).expand([N, M]).to_event(2))
            d = d + inputs @ Fu.T
        if self.emissions == "poisson":
            link = _LINKS[self.link]
            return C, d, lambda eta: dist.Poisson(self.bin_size * link(eta))
        rn = numpyro.sample("emission_noise", dist.HalfNormal(1.0).expand([N]).to_event(1))
        return C, d, lambda eta: dist.Normal(eta, rn)

    @staticmethod
    def _centred_bias(A, c):
        """b_k through beta_k = A_k c_k + b_k, the mean of x_t given x_{t-1} = c_k, with c_k the
        centre of state k's part of the reference path.

        beta_k | A_k ~ N(A_k c_k, 0.3^2 I) is the prior b_k ~ N(0, 0.3^2 I) shifted (the map has
        unit Jacobian), so the model is unchanged. Why: far from the origin the slope A_k and the
        offset b_k are strongly correlated (the regression on uncentred covariates); measured on
        NASCAR, that direction set NUTS's step size (scaled Hessian eigenvalue 2e4).
        """
        Ac = jnp.einsum("kij,kj->ki", A, c)
        beta = numpyro.sample("dynamics_bias_centred", dist.Normal(Ac, 0.3).to_event(2))
        return numpyro.deterministic("dynamics_bias", beta - Ac)

    def _noncentred_path(self, path, reference, emission, y, mask):
        """x = mu(theta) + S(theta) eps around the reference states, with the emissions' Gaussian
        approximation at the reference path under the current emission parameters (exact for
        Gaussian emissions); see :mod:`zoo.reparam`."""
        from zoo.reparam import GaussianPathReparam, emission_information

        H, h = emission_information(*emission, reference["path"], y, mask)
        given = reference.get("given_states") is True
        reparam = GaussianPathReparam(reference["states"], H, h, given_states=given)
        if reference.get("whiten") is not None:
            # the blocked sampler's remap after a state update: the eps that gives this path
            numpyro.deterministic("x_whitened_target", reparam.whiten(path, reference["whiten"]))
        _, x = reparam("x", path, None)
        return numpyro.deterministic("x", x)

    def path_reference(self, y, values, key=None, inputs=None, mask=None) -> dict:
        """The reference a non-centred path is built around, from a point estimate.

        Parameters
        ----------
        y : array (T, N) or (B, T, N)
        values : mapping
            Constrained values of the latent sites, including the path ``x`` (e.g.
            :meth:`initial_params`).
        key : jax.random key, optional
        inputs, mask : arrays, optional
            As for the program.

        Returns
        -------
        dict
            ``states`` int (..., T): the Viterbi path of p(z | x) at the point estimate; ``path``
            (..., T, D): its x. Pass it to the program as ``path_reference=`` to sample the
            non-centred path (what :func:`inference.fit` does for NUTS and HMC).
        """
        from zoo.reparam import reference_states, state_centres

        states = reference_states(self, y, values, key, inputs=inputs, mask=mask)
        x = jnp.asarray(values["x"])
        return {"states": states, "path": x, "centres": state_centres(x, states, self.num_states, mask)}

    def reference_values(self, values, reference) -> dict:
        """Site values of the non-centred program (``path_reference=reference``) from values of
        the plain one: ``dynamics_bias_centred`` for ``dynamics_bias`` and ``x_whitened`` = 0
        (x at the Gaussian approximation's mean) for ``x``."""
        out = {k: v for k, v in values.items() if k not in ("x", "dynamics_bias")}
        if "dynamics_bias" in values:
            A = jnp.asarray(values["dynamics"])
            out["dynamics_bias_centred"] = jnp.asarray(values["dynamics_bias"]) + jnp.einsum(
                "kij,kj->ki", A, jnp.asarray(reference["centres"], A.dtype))
        if "x" in values:
            out["x_whitened"] = jnp.zeros_like(jnp.asarray(values["x"]))
        return out

    def _check_inputs(self, inputs, trials, T):
        M = self.input_dim
        if M == 0:
            if inputs is not None:
                raise ValueError("inputs were given but the model has input_dim=0")
            return None
        if inputs is None:
            raise ValueError(f"the model has input_dim={M}: pass inputs of shape {tuple(trials) + (T, M)}")
        u = jnp.asarray(inputs, dtype=float)
        if u.shape[-2:] != (T, M) or u.ndim - 2 > len(trials):
            raise ValueError(f"inputs must have shape {tuple(trials) + (T, M)} or {(T, M)}; got {u.shape}")
        # check the caller's array, not u: inside a trace (NumPyro's initialisation loop) jnp.asarray
        # of a NumPy array is a tracer, which cannot be converted back
        if is_concrete(inputs) and not np.isfinite(np.asarray(inputs, dtype=float)).all():
            raise ValueError("inputs must be finite (NaN cannot mean missing for an input)")
        return u


def observe_sequence(name: str, base: dist.Distribution, y, step_mask=None):
    """Observe a factorised (..., T, N) emission with NaN entries missing (and padded steps).

    NaN entries are replaced by a value of the support and masked out, so neither the density
    nor its gradients see them; the site's event shape stays (T, N).
    """
    if y is None:
        return numpyro.sample(name, base.to_event(2))
    obs = ~jnp.isnan(y)
    if step_mask is not None:
        obs = obs & step_mask[..., None]
    filled = jnp.where(obs, y, support_point(base))
    return numpyro.sample(name, base.mask(obs).to_event(2), obs=filled)
