"""From relevance to a ranking of features: channel reduction, patch pooling, stable ranking, step schedules.

A *feature* is one element of the input without its batch and channel dimensions (a pixel, a token); with patch
pooling, a *group* is a p×p patch of features, ranked by the sum or the max of its relevance.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

REDUCTIONS = ("sum", "abs", "max", "norm")


def reduce_channels(r: torch.Tensor, dim: int, how: str) -> torch.Tensor:
    """Reduce ``r`` over ``dim``: ``"sum"`` (signed), ``"abs"`` (sum of magnitudes), ``"max"``, ``"norm"`` (L2)."""
    if how == "sum":
        return r.sum(dim)
    if how == "abs":
        return r.abs().sum(dim)
    if how == "max":
        return r.amax(dim)
    if how == "norm":
        return r.norm(dim=dim)
    raise ValueError(f"channel_reduction must be one of {REDUCTIONS}, got {how!r}")


def feature_shape(input_shape, channel_dim: int | None) -> tuple[int, ...]:
    """The input's shape without batch and channel dimensions."""
    shape = list(input_shape[1:])
    if channel_dim is not None:
        d = channel_dim % len(input_shape)
        if d == 0:
            raise ValueError("channel_dim cannot be the batch dimension 0")
        del shape[d - 1]
        if not shape:
            raise ValueError(f"inputs of shape {tuple(input_shape)} have no feature left after removing channel_dim="
                             f"{channel_dim}; for [batch, features] inputs (token ids, tabular) use channel_dim=None")
    return tuple(shape)


def reduce_relevance(relevance: torch.Tensor, input_shape, channel_dim: int | None = 1,
                     reduction: str = "sum") -> torch.Tensor:
    """Relevance as one value per feature, ``[batch, *features]``.

    Accepts relevance shaped like the input (the channel dimension is reduced with ``reduction``: ``"sum"``
    (default, keeps the sign), ``"abs"``, ``"max"`` or ``"norm"``), already feature-shaped, or -- for token-id
    inputs -- shaped ``[*input, dim]`` (embedding relevance; its last dimension is reduced).
    """
    if not isinstance(relevance, torch.Tensor):
        raise TypeError(f"relevance must be a tensor (or an attribution callable), got {type(relevance).__name__}")
    input_shape = tuple(input_shape)
    feats = feature_shape(input_shape, channel_dim)
    shape = tuple(relevance.shape)
    r = relevance.detach()
    if not r.is_floating_point():
        r = r.double()
    if shape == input_shape:
        out = reduce_channels(r, channel_dim % len(shape), reduction) if channel_dim is not None else r
    elif shape == (input_shape[0], *feats):
        out = r
    elif channel_dim is None and len(shape) == len(input_shape) + 1 and shape[:-1] == input_shape:
        out = reduce_channels(r, -1, reduction)
    else:
        raise ValueError(f"relevance of shape {shape} does not fit inputs of shape {input_shape} (channel_dim="
                         f"{channel_dim}): pass relevance shaped like the inputs, like one channel "
                         f"{(input_shape[0], *feats)}, or for token ids [*inputs, dim]")
    if not bool(torch.isfinite(out).all()):
        raise ValueError("relevance contains NaN or Inf; a ranking of such relevance would be meaningless")
    return out


def patch_tuple(patch_size, ndim: int) -> tuple[int, ...]:
    """``patch_size`` (an int, or one int per feature dimension) as a tuple of length ``ndim``."""
    if isinstance(patch_size, int):
        patch = (patch_size,) * ndim
    else:
        patch = tuple(patch_size)
    if len(patch) != ndim or not all(isinstance(p, int) and p > 0 for p in patch):
        raise ValueError(f"patch_size must be a positive int or {ndim} positive ints (one per feature dimension), "
                         f"got {patch_size!r}")
    return patch


def pool_patches(r: torch.Tensor, patch: tuple[int, ...], how: str = "sum") -> torch.Tensor:
    """Pool ``r`` (``[batch, *features]``) over non-overlapping patches: ``[batch, *grid]`` with
    ``grid[i] = ceil(features[i] / patch[i])``. Border patches that do not fill a whole patch are pooled over the
    features they hold (``how="sum"`` or ``"max"``)."""
    if how not in ("sum", "max"):
        raise ValueError(f"patch_pool must be 'sum' or 'max', got {how!r}")
    if all(p == 1 for p in patch):
        return r
    feats = r.shape[1:]
    grid = [math.ceil(f / p) for f, p in zip(feats, patch)]
    pads = []
    for f, p, g in zip(reversed(feats), reversed(patch), reversed(grid)):
        pads += [0, g * p - f]
    fill = 0.0 if how == "sum" else -math.inf
    r = F.pad(r, pads, value=fill) if any(pads) else r
    split = [r.shape[0]]
    for g, p in zip(grid, patch):
        split += [g, p]
    r = r.reshape(split)
    inner = tuple(range(2, len(split), 2))
    return r.sum(inner) if how == "sum" else r.amax(inner)


def expand_patches(mask: torch.Tensor, patch: tuple[int, ...], feats: tuple[int, ...]) -> torch.Tensor:
    """A group mask ``[rows, *grid]`` as a feature mask ``[rows, *features]`` (each group covers its patch)."""
    for d, p in enumerate(patch):
        if p > 1:
            mask = mask.repeat_interleave(p, dim=d + 1)
    index = (slice(None),) + tuple(slice(0, f) for f in feats)
    return mask[index]


def ranks(key: torch.Tensor, descending: bool) -> torch.Tensor:
    """Rank of each group ``[batch, groups]`` (0 = occluded first). The sort is stable: ties keep index order in
    both directions, so a constant relevance gives identical MoRF and LeRF curves."""
    order = torch.sort(key, dim=1, descending=descending, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(key.shape[1], device=key.device).expand_as(order))
    return rank


def schedule(n: torch.Tensor, per_step: int | None, steps: int | None) -> torch.Tensor:
    """How many groups are occluded at each step, ``[steps + 1, batch]``, starting at 0 and ending at ``n``.

    ``per_step=k``: ``min(s·k, n)`` (steps = ceil(max n / k); examples with fewer groups stay fully occluded);
    ``steps=S``: ``round(s·n / S)``; neither: one group per step.
    """
    if steps is None:
        k = per_step or 1
        total = math.ceil(int(n.max()) / k)
        s = torch.arange(total + 1, device=n.device).unsqueeze(1)
        return torch.minimum(s * k, n.unsqueeze(0))
    s = torch.arange(steps + 1, device=n.device).unsqueeze(1)
    return (2 * s * n.unsqueeze(0) + steps) // (2 * steps)
