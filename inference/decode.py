"""Discrete-state (and collapsed-path) posteriors from posterior draws of the continuous sites."""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from numpyro import handlers

from inference.labels import match_labels, match_soft
from zoo.distributions import StatePosterior
from zoo.handlers import decode as decode_handler

__all__ = ["decode", "posterior_draws"]


def posterior_draws(post) -> tuple[dict, tuple[int, ...]]:
    """Arrays of a posterior as a dict with leading sample dims, and those dims' sizes.

    ``post`` is an ``xarray.DataTree`` from :func:`inference.fit` (its ``posterior`` group, dims
    chain and draw), an ``xarray.Dataset`` with chain/draw dims, or a dict of arrays whose
    leading axes are (chain, draw) -- or a single draw (no leading axes: pass
    ``{"x": x, ...}`` wrapped by the caller in a length-1 axis).
    """
    if isinstance(post, xr.DataTree):
        post = post["posterior"].to_dataset()
    if isinstance(post, xr.Dataset):
        lead = (post.sizes["chain"], post.sizes["draw"])
        arrays = {k: np.asarray(v.transpose("chain", "draw", ...).values) for k, v in post.data_vars.items()}
        return arrays, lead
    if isinstance(post, Mapping):
        arrays = {k: np.asarray(v) for k, v in post.items()}
        return arrays, None
    raise ValueError(f"post must be a DataTree, Dataset or dict of draws; got {type(post).__name__}")


def decode(model, post, y, *, reference=None, num_draws: int | None = None, seed: int = 0,
           site: str | None = None, model_kwargs: Mapping | None = None) -> xr.Dataset:
    """Posterior of the discrete states, exactly given each posterior draw, labels aligned.

    For every draw of the continuous sites, the :class:`zoo.handlers.decode` handler computes
    the exact conditional posterior of the states (smoothed marginals, Viterbi path, one FFBS
    draw). Labels are aligned across draws (and chains) by Hungarian matching of the marginals
    to a reference: ``reference`` when given (e.g. true states), else the first draw refined by
    the aligned mean.

    Parameters
    ----------
    model : zoo model
    post : DataTree, Dataset or dict
        Posterior draws (see :func:`posterior_draws`); for a dict give the leading
        (chain, draw) axes explicitly.
    y : array (T, N) or (B, T, N)
        The data the posterior was fitted to.
    reference : int array (T,) or (B, T), optional
        Reference labels (e.g. the simulated truth); the result then includes ``accuracy``.
    num_draws : int, optional
        Use only this many draws per chain (evenly thinned); the result's ``draw`` coordinate
        holds the posterior's labels of the draws used, so ``post["posterior"].sel(draw=...)``
        matches them.
    seed : int
        Randomness of the FFBS draws.
    site : str, optional
        The switching site to decode (default: the only one, e.g. "x" for SLDS, "y" for HMM).
    model_kwargs : mapping, optional
        Further model arguments (inputs, mask).

    Returns
    -------
    xarray.Dataset
        ``marginals`` ([trial,] time, state), ``map_states`` ([trial,] time),
        ``samples`` and ``viterbi`` (chain, draw, [trial,] time), ``permutation``
        (chain, draw, state), and ``accuracy`` (scalar) when a reference is given.
    """
    arrays, lead = posterior_draws(post)
    if lead is None:
        first = next(iter(arrays.values()))
        if first.ndim < 2:
            raise ValueError("a dict of draws needs leading (chain, draw) axes")
        lead = first.shape[:2]
    C, S = lead
    # the posterior's own draw labels, kept for the decoded subset so it can be matched back
    draw_labels = np.arange(S)
    if isinstance(post, xr.DataTree) and "posterior" in post.children and "draw" in post["posterior"].coords:
        draw_labels = np.asarray(post["posterior"]["draw"].values)
    if num_draws is not None and num_draws < S:
        idx = np.linspace(0, S - 1, num_draws).round().astype(int)
        arrays = {k: v[:, idx] for k, v in arrays.items()}
        draw_labels = draw_labels[idx]
        S = len(idx)
    kwargs = dict(model_kwargs or {})
    y_arr = jnp.asarray(y, dtype=float)

    # only values of sample sites are substituted (deterministic ones are recomputed)
    tr = handlers.trace(handlers.seed(model, 0)).get_trace(y_arr, **kwargs)
    names = [n for n, s in tr.items() if s["type"] == "sample" and not s["is_observed"] and n in arrays]

    def one(values, key):
        with decode_handler(rng_key=key) as dec:
            handlers.substitute(model, values)(y_arr, **kwargs)
        if site is None:
            found = [k for k, v in dec.posteriors.items() if isinstance(v, StatePosterior)]
            if len(found) != 1:
                raise ValueError(f"pass site=...: the model has switching sites {found}")
            post_ = dec.posteriors[found[0]]
        else:
            post_ = dec.posteriors[site]
        return post_.marginals, post_.viterbi, post_.sample

    flat = {n: jnp.asarray(arrays[n].reshape((C * S,) + arrays[n].shape[2:])) for n in names}
    keys = jax.random.split(jax.random.key(seed), C * S)
    marg, vit, samp = jax.lax.map(lambda a: one(*a), (flat, keys), batch_size=min(C * S, 16))
    marg, vit, samp = np.asarray(marg), np.asarray(vit), np.asarray(samp)
    K = marg.shape[-1]

    if reference is not None:
        ref = np.asarray(reference)
        ref_probs = np.eye(K)[ref]
    else:
        ref_probs = marg[0]
    perms = np.stack([match_soft(ref_probs, m) for m in marg])
    if reference is None:  # refine against the aligned mean
        aligned = np.stack([m[..., np.argsort(p)] for m, p in zip(marg, perms, strict=True)])
        ref_probs = aligned.mean(0)
        perms = np.stack([match_soft(ref_probs, m) for m in marg])
    inv = np.argsort(perms, axis=-1)
    aligned = np.stack([m[..., iv] for m, iv in zip(marg, inv, strict=True)])
    vit = np.stack([p[v] for p, v in zip(perms, vit, strict=True)])
    samp = np.stack([p[s] for p, s in zip(perms, samp, strict=True)])
    mean = aligned.mean(0)

    seq_dims = (["trial"] if mean.ndim == 3 else []) + ["time"]
    ds = xr.Dataset(
        {
            "marginals": (seq_dims + ["state"], mean),
            "map_states": (seq_dims, mean.argmax(-1)),
            "samples": (["chain", "draw"] + seq_dims, samp.reshape((C, S) + samp.shape[1:])),
            "viterbi": (["chain", "draw"] + seq_dims, vit.reshape((C, S) + vit.shape[1:])),
            "permutation": (["chain", "draw", "state"], perms.reshape(C, S, K)),
        },
        coords={"chain": np.arange(C), "draw": draw_labels, "state": np.arange(K)},
    )
    if reference is not None:
        est = mean.argmax(-1)
        # the aligned estimate is compared to the reference after one more global matching
        perm = match_labels(ref, est, K)
        ds["accuracy"] = float(np.mean(perm[est] == ref))
        ds.attrs["accuracy_note"] = "fraction of steps whose posterior-mode state equals the reference"
    return ds
