"""Synthetic continuous-time systems with known drift and attractors (for the GP models).

Each function simulates a latent SDE dx = (f(x) + B u) dt + sigma dW by Euler-Maruyama on a
fine grid and emits Poisson spike counts (or Gaussian observations) from a random linear map,
and returns a dict:

- ``y`` (B, T, N) observations, ``x`` (B, T, D) true latents, ``inputs`` (B, T, I) or None
- ``dt`` the grid step (seconds), ``time`` (T,)
- ``drift`` a callable x (..., D) -> f(x) (..., D) (the true drift, jax), ``regimes`` a callable
  x -> soft partition (..., J) where the system has one
- ``params`` the true parameters; ``emission_matrix``, ``emission_bias``, ``link``
- ``fixed_points`` a list of ``(location (D,), kind)`` with kind "stable" / "unstable" /
  "saddle"; line attractors are described by ``line`` (a point and a direction)

All systems are 2-D. The GP-SLDS paper's system is :func:`two_spirals`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from zoo.kernels import partition
from zoo.sde_distributions import LINKS, euler_maruyama_simulate

__all__ = [
    "two_spirals",
    "line_attractor",
    "two_point_attractors",
    "van_der_pol",
    "double_well",
    "input_pulses",
]


def _rot(theta):
    return np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])


def _check(num_trials, duration, dt, num_neurons, emissions, link):
    if isinstance(num_trials, bool) or not isinstance(num_trials, int) or num_trials < 1:
        raise ValueError(f"num_trials must be an integer >= 1; got {num_trials!r}")
    if not dt > 0:
        raise ValueError(f"dt must be > 0; got {dt}")
    if not duration > 2 * dt:
        raise ValueError(f"duration must exceed 2 dt; got {duration}")
    if isinstance(num_neurons, bool) or not isinstance(num_neurons, int) or num_neurons < 1:
        raise ValueError(f"num_neurons must be an integer >= 1; got {num_neurons!r}")
    if emissions not in ("poisson", "gaussian"):
        raise ValueError(f"emissions must be 'poisson' or 'gaussian'; got {emissions!r}")
    if link not in LINKS:
        raise ValueError(f"link must be one of {sorted(LINKS)}; got {link!r}")


def _emit(key, x, C, d, emissions, link, dt, noise):
    eta = x @ C.T + d
    if emissions == "poisson":
        return jax.random.poisson(key, dt * LINKS[link](eta)).astype(x.dtype)
    return eta + noise * jax.random.normal(key, eta.shape, eta.dtype)


def _simulate(key, drift, x0, sigma, dt, T, num_neurons, emissions, link, rate_scale, rate_bias,
              noise, drive=None, inputs=None):
    kx, kc, ky = jax.random.split(key, 3)
    x = euler_maruyama_simulate(kx, drift, x0, jnp.asarray(sigma), dt, T, drive)
    D = x.shape[-1]
    C = rate_scale * jax.random.normal(kc, (num_neurons, D))
    d = jnp.full(num_neurons, rate_bias)
    y = _emit(ky, x, C, d, emissions, link, dt, noise)
    return {"x": x, "y": y, "emission_matrix": C, "emission_bias": d, "link": link,
            "inputs": inputs, "dt": dt, "time": np.arange(T) * dt}


def two_spirals(key, num_trials: int = 10, duration: float = 2.5, dt: float = 1e-3,
                num_neurons: int = 50, emissions: str = "poisson", link: str = "softplus",
                sigma: float = 0.5, rate_scale: float = 3.0, rate_bias: float = 5.0,
                noise: float = 1.0) -> dict:
    """The GP-SLDS paper's system: two unstable spirals split by the line x1 = 0.

    A_j = (1.003 R(theta_j) - I) / 0.01 with theta = -pi/100 on the left (x1 < 0, centre (-3, 0))
    and +pi/100 on the right (centre (+3, 0)); b_j = -A_j c_j; partition pi(x) = softmax([x1, 0]
    / 0.4), regime 0 the right half; f(x) = sum_j pi_j(x) A_j (x - c_j). Trials start
    alternately at (-7, 0) and (+7, 0); time in seconds, dt = 1 ms, 2.5 s per trial; 50 Poisson
    neurons with rates softplus(C x + d) (Hz), C ~ N(0, rate_scale^2), d = rate_bias.
    The two centres are unstable spiral fixed points.

    Returns
    -------
    dict (see the module docstring); ``params`` holds ``dynamics`` A (2, 2, 2), ``dynamics_bias``
    b (2, 2), ``centers`` (2, 2), ``boundary`` (1, 3), ``temperature``, ``diffusion``.
    """
    _check(num_trials, duration, dt, num_neurons, emissions, link)
    c = np.array([[3.0, 0.0], [-3.0, 0.0]])
    A = np.stack([(1.003 * _rot(math.pi / 100) - np.eye(2)) / 0.01,
                  (1.003 * _rot(-math.pi / 100) - np.eye(2)) / 0.01])
    b = -np.einsum("jde,je->jd", A, c)
    w = np.array([[0.0, 1.0, 0.0]])
    tau = 0.4
    Aj, bj, cj, wj = map(jnp.asarray, (A, b, c, w))

    def regimes(x):
        return partition(jnp.asarray(x), wj, tau)

    def drift(x):
        x = jnp.asarray(x)
        pi = regimes(x)
        # b_j = -A_j c_j: f = sum_j pi_j (A_j x + b_j) = sum_j pi_j A_j (x - c_j)
        lin = jnp.einsum("jde,...e->...jd", Aj, x) + bj
        return jnp.sum(pi[..., None] * lin, -2)

    T = int(round(duration / dt))
    starts = np.array([[-7.0, 0.0], [7.0, 0.0]])[np.arange(num_trials) % 2]
    out = _simulate(key, drift, jnp.asarray(starts), sigma, dt, T, num_neurons, emissions, link,
                    rate_scale, rate_bias, noise)
    out.update(drift=drift, regimes=regimes,
               params={"dynamics": A, "dynamics_bias": b, "centers": c, "boundary": w,
                       "temperature": tau, "diffusion": np.full(2, sigma)},
               fixed_points=[(c[0], "unstable"), (c[1], "unstable")])
    return out


def input_pulses(key, num_trials: int, num_steps: int, dt: float, rate: float = 1.0,
                 width: float = 0.05, amplitude: float = 10.0):
    """Random rectangular input pulses (B, T, 1): Poisson times at ``rate`` per second, each
    ``width`` seconds long with random sign and height ``amplitude``."""
    k1, k2 = jax.random.split(key)
    onset = jax.random.bernoulli(k1, rate * dt, (num_trials, num_steps))
    sign = jnp.where(jax.random.bernoulli(k2, 0.5, (num_trials, num_steps)), 1.0, -1.0)
    kick = jnp.where(onset, sign, 0.0)
    w = max(1, int(round(width / dt)))
    kernel = jnp.ones(w)
    u = jax.vmap(lambda k: jnp.convolve(k, kernel)[:num_steps])(kick)
    return (amplitude * u)[..., None]


def _driven(key, drift, B_in, num_trials, duration, dt, num_neurons, emissions, link, sigma,
            rate_scale, rate_bias, noise, x0_scale, pulse_rate, pulse_amplitude):
    T = int(round(duration / dt))
    ku, k0, ks = jax.random.split(key, 3)
    u = input_pulses(ku, num_trials, T, dt, pulse_rate, 0.05, pulse_amplitude)
    drive = u[:, :-1] @ jnp.asarray(B_in).T
    x0 = x0_scale * jax.random.normal(k0, (num_trials, 2))
    return _simulate(ks, drift, x0, sigma, dt, T, num_neurons, emissions, link, rate_scale,
                     rate_bias, noise, drive=drive, inputs=u)


def line_attractor(key, num_trials: int = 10, duration: float = 3.0, dt: float = 0.01,
                   num_neurons: int = 30, emissions: str = "poisson", link: str = "softplus",
                   sigma: float = 0.2, decay: float = 4.0, rate_scale: float = 4.0,
                   rate_bias: float = 10.0, noise: float = 1.0, pulse_rate: float = 1.5,
                   pulse_amplitude: float = 20.0) -> dict:
    """A line attractor driven by input pulses (the hypothalamic integrator of Nair et al. 2023).

    f(x) = A x with eigenvalue 0 along v1 = (cos 30deg, sin 30deg) (the line, infinite time
    constant) and -``decay`` along v2 = (-sin 75deg, cos 75deg); a one-channel input of random
    pulses enters through B = (1, 0.5): each pulse moves the state along the line (integration)
    and off it (relaxing back in 1/decay seconds).
    """
    _check(num_trials, duration, dt, num_neurons, emissions, link)
    V = np.array([[math.cos(math.pi / 6), -math.sin(5 * math.pi / 12)],
                  [math.sin(math.pi / 6), math.cos(5 * math.pi / 12)]])
    A = V @ np.diag([0.0, -decay]) @ np.linalg.inv(V)
    B_in = np.array([[1.0], [0.5]])
    Aj = jnp.asarray(A)

    def drift(x):
        return jnp.asarray(x) @ Aj.T

    out = _driven(key, drift, B_in, num_trials, duration, dt, num_neurons, emissions, link, sigma,
                  rate_scale, rate_bias, noise, 1.0, pulse_rate, pulse_amplitude)
    out.update(drift=drift, regimes=None, params={"dynamics": A, "input_matrix": B_in,
                                                   "diffusion": np.full(2, sigma)},
               fixed_points=[], line={"point": np.zeros(2), "direction": V[:, 0]},
               eigenvalues=np.array([0.0, -decay]))
    return out


def two_point_attractors(key, num_trials: int = 10, duration: float = 3.0, dt: float = 0.01,
                         num_neurons: int = 30, emissions: str = "poisson", link: str = "softplus",
                         sigma: float = 0.2, rate_scale: float = 4.0, rate_bias: float = 10.0,
                         noise: float = 1.0, pulse_rate: float = 1.5,
                         pulse_amplitude: float = 20.0) -> dict:
    """The control for :func:`line_attractor`: two point attractors and a saddle, same inputs.

    f(x) = (k (x1 - x1^3 / 4), -4 x2) in coordinates rotated like the line attractor's line, with
    k = 2: stable nodes at +-2 along v1 (eigenvalues -4 and -4: equal time constants, line
    score 0) and a saddle at the origin (eigenvalues +2, -4).
    """
    _check(num_trials, duration, dt, num_neurons, emissions, link)
    theta = math.pi / 6
    R = _rot(theta)
    Rj = jnp.asarray(R)
    k, lam, a2 = 2.0, 4.0, 4.0

    def drift(x):
        z = jnp.asarray(x) @ Rj  # coordinates along (v1, v1-perp)
        fz = jnp.stack([k * (z[..., 0] - z[..., 0] ** 3 / a2), -lam * z[..., 1]], -1)
        return fz @ Rj.T

    B_in = np.array([[1.0], [0.5]])
    out = _driven(key, drift, B_in, num_trials, duration, dt, num_neurons, emissions, link, sigma,
                  rate_scale, rate_bias, noise, 1.0, pulse_rate, pulse_amplitude)
    v1 = R[:, 0]
    out.update(drift=drift, regimes=None,
               params={"input_matrix": B_in, "diffusion": np.full(2, sigma)},
               fixed_points=[(2.0 * v1, "stable"), (-2.0 * v1, "stable"), (np.zeros(2), "saddle")])
    return out


def van_der_pol(key, num_trials: int = 5, duration: float = 10.0, dt: float = 0.01,
                num_neurons: int = 30, emissions: str = "poisson", link: str = "softplus",
                mu: float = 1.5, omega: float = 2.0, sigma: float = 0.2, rate_scale: float = 4.0,
                rate_bias: float = 10.0, noise: float = 1.0) -> dict:
    """Van der Pol oscillator: f(x) = omega (x2, mu (1 - x1^2) x2 - x1); a stable limit cycle
    (amplitude about 2 in x1) around an unstable focus/node at the origin."""
    _check(num_trials, duration, dt, num_neurons, emissions, link)

    def drift(x):
        x = jnp.asarray(x)
        return omega * jnp.stack([x[..., 1], mu * (1 - x[..., 0] ** 2) * x[..., 1] - x[..., 0]], -1)

    T = int(round(duration / dt))
    k0, ks = jax.random.split(key)
    x0 = 0.5 * jax.random.normal(k0, (num_trials, 2)) + jnp.array([2.0, 0.0])
    out = _simulate(ks, drift, x0, sigma, dt, T, num_neurons, emissions, link, rate_scale,
                    rate_bias, noise)
    out.update(drift=drift, regimes=None, params={"mu": mu, "omega": omega,
                                                   "diffusion": np.full(2, sigma)},
               fixed_points=[(np.zeros(2), "unstable")])
    return out


def double_well(key, num_trials: int = 10, duration: float = 5.0, dt: float = 0.01,
                num_neurons: int = 30, emissions: str = "poisson", link: str = "softplus",
                sigma: float = 0.8, rate_scale: float = 4.0, rate_bias: float = 10.0,
                noise: float = 1.0) -> dict:
    """Noise-driven double well: gradient flow f(x) = -grad V with V = (x1^2 - 1)^2 + x2^2 / 2,
    i.e. f = (-4 x1 (x1^2 - 1), -x2); stable nodes at (+-1, 0), a saddle at the origin; the noise
    makes the state hop between wells."""
    _check(num_trials, duration, dt, num_neurons, emissions, link)

    def drift(x):
        x = jnp.asarray(x)
        return jnp.stack([-4 * x[..., 0] * (x[..., 0] ** 2 - 1), -x[..., 1]], -1)

    T = int(round(duration / dt))
    k0, ks = jax.random.split(key)
    x0 = jnp.stack([jnp.where(jnp.arange(num_trials) % 2 == 0, 1.0, -1.0), jnp.zeros(num_trials)], -1)
    x0 = x0 + 0.1 * jax.random.normal(k0, x0.shape)
    out = _simulate(ks, drift, x0, sigma, dt, T, num_neurons, emissions, link, rate_scale,
                    rate_bias, noise)
    out.update(drift=drift, regimes=None, params={"diffusion": np.full(2, sigma)},
               fixed_points=[(np.array([1.0, 0.0]), "stable"), (np.array([-1.0, 0.0]), "stable"),
                             (np.zeros(2), "saddle")])
    return out
