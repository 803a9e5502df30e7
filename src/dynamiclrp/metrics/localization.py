"""Metrics against known locations: top attributed tokens inside an answer span (extractive QA: TPS and TGS, as in
the DynamicLRP paper, Sec. 5.2) and the pointing game for ground-truth masks (Zhang et al. 2018)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .features import REDUCTIONS, reduce_channels
from .results import METRICS, MetricResult


def _spans(spans, batch: int, length: int, device) -> torch.Tensor:
    s = torch.as_tensor(spans, device=device).long()
    if s.dim() == 1 and s.numel() == 2 and batch == 1:
        s = s.unsqueeze(0)
    if tuple(s.shape) != (batch, 2):
        raise ValueError(f"spans must be [batch, 2] (start, end; end inclusive), got {tuple(s.shape)} for a batch "
                         f"of {batch}")
    if bool((s[:, 0] > s[:, 1]).any()):
        raise ValueError("a span has start > end (an invalid predicted span); the paper skips such examples -- "
                         "filter them out before scoring")
    if bool((s < 0).any()) or bool((s >= length).any()):
        raise ValueError(f"a span lies outside the {length} tokens")
    return s


def token_in_span(relevance: torch.Tensor, spans, exclude: torch.Tensor | None = None, k: int = 1,
                  strict: bool = False, name: str = "tps") -> MetricResult:
    """Whether the top-``k`` attributed tokens lie inside a span, per example (1.0 hit, 0.0 miss).

    Parameters
    ----------
    relevance: per-token relevance ``[B, T]`` (or ``[B, T, D]``, summed over ``D``).
    spans: ``[B, 2]`` start and end token indices, end inclusive (the predicted span for TPS, the gold span
        for TGS).
    exclude: boolean ``[B, T]``, tokens never counted (the question, as the paper masks it; special tokens,
        padding).
    k: how many top tokens; a hit needs all of the top ``min(k, span length)`` inside the span (so top-2 on a
        one-token span asks only for the top-1).
    strict: count only the span's start and end tokens as inside (the paper's parenthesised top-2 numbers).
    name: ``"tps"`` or ``"tgs"`` (the metadata of the result).
    """
    if name not in ("tps", "tgs"):
        raise ValueError(f"name must be 'tps' or 'tgs', got {name!r}")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    r = relevance.detach()
    if r.dim() == 3:
        r = r.sum(-1)
    if r.dim() != 2:
        raise ValueError(f"relevance must be [batch, tokens] or [batch, tokens, dim], got {tuple(relevance.shape)}")
    r = r.double()
    if not bool(torch.isfinite(r).all()):
        raise ValueError("relevance contains NaN or Inf")
    b, t = r.shape
    s = _spans(spans, b, t, r.device)
    if exclude is not None:
        ex = exclude.to(r.device)
        if ex.dtype != torch.bool or tuple(ex.shape) != (b, t):
            raise ValueError(f"exclude must be a bool tensor {(b, t)}, got {ex.dtype} {tuple(ex.shape)}")
        if bool(((~ex).sum(1) < k).any()):
            raise ValueError(f"an example has fewer than k={k} tokens left after exclusion")
        r = r.masked_fill(ex, -torch.inf)
    elif t < k:
        raise ValueError(f"k={k} exceeds the {t} tokens")
    top = r.topk(k, dim=1).indices
    start, end = s[:, :1], s[:, 1:]
    if strict:
        inside = (top == start) | (top == end)
        width = torch.where(s[:, 0] == s[:, 1], 1, 2)
    else:
        inside = (top >= start) & (top <= end)
        width = s[:, 1] - s[:, 0] + 1
    needed = torch.arange(k, device=r.device).unsqueeze(0) < width.clamp(max=k).unsqueeze(1)
    hit = (inside | ~needed).all(1)
    return MetricResult(METRICS[name], hit.double())


def tps(relevance, predicted_spans, question_mask=None, k: int = 1, strict: bool = False) -> MetricResult:
    """Top-``k`` token in the model's **predicted** span (question tokens masked), per example; higher is better.
    See :func:`token_in_span`."""
    return token_in_span(relevance, predicted_spans, question_mask, k, strict, name="tps")


def tgs(relevance, gold_spans, question_mask=None, k: int = 1, strict: bool = False) -> MetricResult:
    """Top-``k`` token in the **gold** span (question tokens masked), per example; higher is better. Confounded
    with the model's accuracy (the paper's caveat): read it beside :func:`tps`."""
    return token_in_span(relevance, gold_spans, question_mask, k, strict, name="tgs")


def _dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Grow a ``[B, H, W]`` mask by a disk of ``radius`` pixels."""
    if radius == 0:
        return mask
    i = torch.arange(-radius, radius + 1, device=mask.device, dtype=torch.float32)
    disk = ((i.view(-1, 1) ** 2 + i.view(1, -1) ** 2) <= radius ** 2).float()
    grown = F.conv2d(mask.float().unsqueeze(1), disk.view(1, 1, *disk.shape), padding=radius)
    return grown.squeeze(1) > 0


def pointing_game(relevance: torch.Tensor, masks: torch.Tensor, tolerance: int = 0, channel_dim: int | None = 1,
                  channel_reduction: str = "sum") -> MetricResult:
    """Pointing game (Zhang et al. 2018): a hit when the maximum of the relevance map lies inside the ground-truth
    mask (grown by ``tolerance`` pixels; Zhang et al. use 15). Ties count only if *every* maximal pixel is inside,
    so a constant map never scores. Per example 1.0 (hit) or 0.0 (miss); higher is better.

    Parameters
    ----------
    relevance: ``[B, C, H, W]`` (channels reduced with ``channel_reduction`` over ``channel_dim``) or ``[B, H, W]``.
    masks: boolean ``[B, H, W]``, each with at least one true pixel.
    """
    if channel_reduction not in REDUCTIONS:
        raise ValueError(f"channel_reduction must be one of {REDUCTIONS}, got {channel_reduction!r}")
    if not isinstance(tolerance, int) or tolerance < 0:
        raise ValueError(f"tolerance must be a non-negative int (pixels), got {tolerance!r}")
    if masks.dtype != torch.bool or masks.dim() != 3:
        raise ValueError(f"masks must be a bool tensor [B, H, W], got {masks.dtype} {tuple(masks.shape)}")
    r = relevance.detach().double()
    if r.dim() == 4:
        if channel_dim is None:
            raise ValueError("relevance [B, C, H, W] needs a channel_dim to reduce")
        r = reduce_channels(r, channel_dim, channel_reduction)
    if r.shape != masks.shape:
        raise ValueError(f"relevance {tuple(relevance.shape)} does not fit masks {tuple(masks.shape)}")
    if not bool(torch.isfinite(r).all()):
        raise ValueError("relevance contains NaN or Inf")
    m = masks.to(r.device)
    if bool((m.flatten(1).sum(1) == 0).any()):
        raise ValueError("a ground-truth mask is empty; the pointing game is undefined for it -- drop the example")
    m = _dilate(m, tolerance)
    flat = r.flatten(1)
    is_max = flat == flat.amax(1, keepdim=True)
    hit = ~(is_max & ~m.flatten(1)).any(1)
    return MetricResult(METRICS["pointing_game"], hit.double())
