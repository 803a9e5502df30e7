r"""Perturbation curves: occlude features most-relevant-first (MoRF) or least-relevant-first (LeRF) and record the
model's score for the explained target after each step.

Protocol (Blücher et al. 2024; the DynamicLRP paper, Sec. 5): features are ranked by their signed relevance
(channels summed by default); at step :math:`s` the first :math:`c_s` features of the ranking are occluded, with
:math:`c_0 = 0` (the unperturbed input) up to all of them; the x axis is the occluded fraction :math:`c_s / n` in
[0, 1], so the area under a curve (trapezoidal rule) is in the units of the score. Then

.. math::
    \mathrm{ABPC} = \mathrm{AUC}(\mathrm{LeRF}) - \mathrm{AUC}(\mathrm{MoRF}), \quad
    \mathrm{comp} = f(x) - \mathrm{AUC}(\mathrm{MoRF}), \quad \mathrm{suff} = f(x) - \mathrm{AUC}(\mathrm{LeRF}).

The paper's settings: :meth:`Perturbation.image` (blur, kernel 51, sigma 20, 1024 pixels per step),
:meth:`Perturbation.patches` (ViT: 16×16 patches pooled by max relevance, 4 per step) and
:meth:`Perturbation.tokens` (one token per step).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .features import REDUCTIONS, expand_patches, patch_tuple, pool_patches, ranks, reduce_relevance
from .features import schedule as step_schedule
from .occlusion import BlurOcclusion, Occlusion, TokenDeletion, TokenReplacement
from .results import MetricResult, PerturbationCurve, PerturbationCurves

ScoreFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class Perturbation:
    """How features are ranked and occluded (frozen; validated when built).

    Parameters
    ----------
    occlusion: what occluded features become (:class:`BlurOcclusion` by default).
    per_step: groups (pixels, tokens or patches) occluded per step; or
    steps: the number of equal steps from 0 to all features. Give at most one; neither = one group per step.
    patch_size: rank and occlude p×p patches (an int, or one per feature dimension); 1 = single features.
    patch_pool: a patch's relevance: ``"sum"`` or ``"max"`` of its features' relevance.
    channel_dim: the inputs' channel dimension (1 for ``[B, C, H, W]``), reduced away; ``None`` when every
        element is a feature (token ids ``[B, T]``, tabular ``[B, F]``).
    channel_reduction: how relevance is reduced over channels (or the embedding dimension of token-id
        relevance ``[B, T, D]``): ``"sum"`` (default), ``"abs"``, ``"max"``, ``"norm"``.
    """

    occlusion: Occlusion = field(default_factory=BlurOcclusion)
    per_step: int | None = None
    steps: int | None = None
    patch_size: int | tuple[int, ...] = 1
    patch_pool: str = "sum"
    channel_dim: int | None = 1
    channel_reduction: str = "sum"

    def __post_init__(self):
        if not isinstance(self.occlusion, Occlusion):
            raise TypeError(f"occlusion must be an Occlusion (BlurOcclusion, BaselineOcclusion, TokenReplacement, "
                            f"TokenDeletion), got {type(self.occlusion).__name__}")
        if self.per_step is not None and self.steps is not None:
            raise ValueError("give per_step or steps, not both")
        for name in ("per_step", "steps"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, int) and v > 0):
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if self.patch_pool not in ("sum", "max"):
            raise ValueError(f"patch_pool must be 'sum' or 'max', got {self.patch_pool!r}")
        if self.channel_reduction not in REDUCTIONS:
            raise ValueError(f"channel_reduction must be one of {REDUCTIONS}, got {self.channel_reduction!r}")
        if self.channel_dim is not None and not isinstance(self.channel_dim, int):
            raise ValueError(f"channel_dim must be an int or None, got {self.channel_dim!r}")
        if isinstance(self.patch_size, int):
            patch_tuple(self.patch_size, 1)
        else:
            patch_tuple(self.patch_size, len(tuple(self.patch_size)))

    @classmethod
    def image(cls, per_step: int = 1024, kernel_size: int = 51, sigma: float = 20.0, **kw) -> Perturbation:
        """The paper's CNN protocol: pixels replaced by a Gaussian-blurred image (kernel 51, sigma 20), 1024 pixels
        per step, channels summed."""
        return cls(occlusion=BlurOcclusion(kernel_size, sigma), per_step=per_step, **kw)

    @classmethod
    def patches(cls, patch_size: int = 16, per_step: int = 4, pool: str = "max", kernel_size: int = 51,
                sigma: float = 20.0, **kw) -> Perturbation:
        """The paper's ViT protocol: 16×16 patches ranked by their max relevance, 4 patches per step, replaced by
        the blurred image."""
        return cls(occlusion=BlurOcclusion(kernel_size, sigma), per_step=per_step, patch_size=patch_size,
                   patch_pool=pool, **kw)

    @classmethod
    def tokens(cls, token_id: int | None = None, per_step: int = 1, **kw) -> Perturbation:
        """Token inputs ``[B, T]``: replace by ``token_id``, or delete the token when ``token_id`` is None; one
        token per step (the paper's text protocol)."""
        occ = TokenDeletion() if token_id is None else TokenReplacement(token_id)
        return cls(occlusion=occ, per_step=per_step, channel_dim=None, **kw)


def _tile(t, index: torch.Tensor):
    """Rows ``index`` of a per-example tensor (``None`` and scalars pass through)."""
    if t is None or not isinstance(t, torch.Tensor) or t.dim() == 0:
        return t
    return t.index_select(0, index.to(t.device))


def _as_target(target, batch: int, device):
    if target is None:
        return None
    t = target if isinstance(target, torch.Tensor) else torch.as_tensor(target, device=device)
    if t.dim() == 0:
        t = t.expand(batch)
    return t


def _call_score(score_fn: ScoreFn, x: torch.Tensor, target) -> torch.Tensor:
    out = score_fn(x) if target is None else score_fn(x, target)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the score function must return a tensor of one score per input row, got "
                        f"{type(out).__name__}")
    if out.numel() != x.shape[0]:
        raise ValueError(f"the score function returned {tuple(out.shape)} for {x.shape[0]} inputs; it must return "
                         "one score per row (e.g. the target logit; see class_score / next_token_score)")
    return out.detach().reshape(-1).double()


def attribute(relevance, inputs: torch.Tensor, target=None) -> torch.Tensor:
    """Relevance given as a tensor, or computed by an attribution callable ``fn(inputs, target)`` (``fn(inputs)``
    when ``target`` is None) -- any method: dynamiclrp, Captum, Zennit, random."""
    if callable(relevance) and not isinstance(relevance, torch.Tensor):
        relevance = relevance(inputs) if target is None else relevance(inputs, target)
    if not isinstance(relevance, torch.Tensor):
        raise TypeError(f"relevance must be a tensor or an attribution callable returning one, got "
                        f"{type(relevance).__name__}")
    return relevance.detach()


def perturbation_curves(score_fn: ScoreFn, inputs: torch.Tensor, relevance, perturbation: Perturbation | None = None,
                        target=None, *, feature_mask: torch.Tensor | None = None,
                        max_batch: int | None = None) -> PerturbationCurves:
    """MoRF and LeRF perturbation curves of a batch.

    Parameters
    ----------
    score_fn: maps a batch of (perturbed) inputs to one score per row for the explained target. Called as
        ``score_fn(x)`` when ``target`` is None, else ``score_fn(x, target_rows)`` (see :func:`class_score`,
        :func:`next_token_score`).
    inputs: the batch ``[B, ...]``.
    relevance: a tensor (shaped like ``inputs``, feature-shaped, or ``[B, T, D]`` for token ids) or an attribution
        callable ``fn(inputs, target)``.
    perturbation: a :class:`Perturbation` (default: blur, one feature per step, channels summed).
    target: per-example targets (an int, a list or a tensor with a leading batch dimension), passed on to
        ``score_fn`` row by row.
    feature_mask: boolean ``[B, *features]``: only these features are ranked and occluded (e.g. not the BOS or
        special tokens); the x axis is the occluded fraction of them.
    max_batch: rows per ``score_fn`` call. By default one step of the batch per call (``B`` rows). A larger
        value stacks steps (step-major copies of the batch, with ``target`` tiled alike) -- with ``target=None``
        the score function must then handle such stacked batches itself.

    Returns
    -------
    :class:`PerturbationCurves` (``.abpc()``, ``.comprehensiveness()``, ``.sufficiency()``, ``.plot_data()``).
    """
    p = perturbation if perturbation is not None else Perturbation()
    if not isinstance(p, Perturbation):
        raise TypeError(f"perturbation must be a Perturbation, got {type(p).__name__}")
    if not isinstance(inputs, torch.Tensor) or inputs.dim() < 2:
        raise ValueError("inputs must be a batched tensor [B, ...]")
    b = inputs.shape[0]
    device = inputs.device
    target = _as_target(target, b, device)
    if target is not None and target.shape[0] != b:
        raise ValueError(f"target has {target.shape[0]} entries for a batch of {b}")
    rel = reduce_relevance(attribute(relevance, inputs, target), inputs.shape, p.channel_dim,
                           p.channel_reduction).to(device)
    feats = tuple(rel.shape[1:])
    patch = patch_tuple(p.patch_size, len(feats))
    groups = pool_patches(rel, patch, p.patch_pool)
    grid = tuple(groups.shape[1:])
    key = groups.reshape(b, -1)
    if feature_mask is not None:
        fm = feature_mask.to(device)
        if fm.dtype != torch.bool or tuple(fm.shape) != (b, *feats):
            raise ValueError(f"feature_mask must be a bool tensor {(b, *feats)}, got {fm.dtype} {tuple(fm.shape)}")
        eligible = pool_patches(fm.double(), patch, "max").reshape(b, -1) > 0
    else:
        eligible = torch.ones_like(key, dtype=torch.bool)
    n = eligible.sum(1)
    if bool((n == 0).any()):
        raise ValueError("an example has no feature to occlude (empty feature_mask)")
    counts = step_schedule(n, p.per_step, p.steps)  # [S + 1, B]
    rank = {"morf": ranks(key.masked_fill(~eligible, -torch.inf), descending=True),
            "lerf": ranks(key.masked_fill(~eligible, torch.inf), descending=False)}
    replacement = p.occlusion.replacement(inputs, p.channel_dim)

    # every (order, step) job after the shared unperturbed step 0; stacked into calls of up to max_batch rows
    jobs = [(order, s) for order in ("morf", "lerf") for s in range(1, counts.shape[0])]
    per_call = 1 if not p.occlusion.stackable else max(1, (max_batch or b) // b)
    ys = {order: [None] * counts.shape[0] for order in ("morf", "lerf")}
    arange = torch.arange(b, device=device)
    with torch.no_grad():
        y0 = _call_score(score_fn, inputs, target)
        ys["morf"][0] = ys["lerf"][0] = y0
        for start in range(0, len(jobs), per_call):
            chunk = jobs[start:start + per_call]
            masks = torch.cat([rank[order] < counts[s].unsqueeze(1) for order, s in chunk])
            masks = expand_patches(masks.reshape(-1, *grid), patch, feats)
            index = arange.repeat(len(chunk))
            if feature_mask is not None:  # a patch straddling excluded features occludes only the others
                masks = masks & fm.index_select(0, index)
            if len(chunk) == 1:
                x, rep, t = inputs, replacement, target
            else:
                x, rep, t = (_tile(v, index) for v in (inputs, replacement, target))
            x = p.occlusion.apply(x, rep, masks, p.channel_dim)
            y = _call_score(score_fn, x, t).reshape(len(chunk), b)
            for (order, s), row in zip(chunk, y):
                ys[order][s] = row
    x = (counts.double() / n.double()).T.contiguous()
    return PerturbationCurves(PerturbationCurve("morf", x, torch.stack(ys["morf"], 1)),
                              PerturbationCurve("lerf", x.clone(), torch.stack(ys["lerf"], 1)))


def abpc(score_fn: ScoreFn, inputs, relevance, perturbation: Perturbation | None = None, target=None,
         **kw) -> MetricResult:
    """Area between the perturbation curves, AUC(LeRF) - AUC(MoRF), per example (higher is better); the result
    holds both curves. Arguments as :func:`perturbation_curves`."""
    return perturbation_curves(score_fn, inputs, relevance, perturbation, target, **kw).abpc()


def comprehensiveness(score_fn: ScoreFn, inputs, relevance, perturbation: Perturbation | None = None, target=None,
                      **kw) -> MetricResult:
    """f(x) - AUC(MoRF), per example (higher is better). Arguments as :func:`perturbation_curves`."""
    return perturbation_curves(score_fn, inputs, relevance, perturbation, target, **kw).comprehensiveness()


def sufficiency(score_fn: ScoreFn, inputs, relevance, perturbation: Perturbation | None = None, target=None,
                **kw) -> MetricResult:
    """f(x) - AUC(LeRF), per example (lower is better). Arguments as :func:`perturbation_curves`."""
    return perturbation_curves(score_fn, inputs, relevance, perturbation, target, **kw).sufficiency()
