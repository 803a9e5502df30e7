"""Checks that turn degenerate explanations into warnings or errors a user can act on.

An explanation can be computed and still be meaningless: the explained output is exactly zero (a zero-initialised
classifier head), the model ran with dropout active (every call explains a different network), or the rules
created relevance out of nothing (sums of input relevance hundreds of times the explained logit). :class:`LRP`
runs these checks after each explanation and warns with a :class:`~dynamiclrp.errors.DynamicLRPWarning`
subclass; a healthy model in eval mode never warns.

Conservation
------------
``conservation = sum(input relevance) / sum(seed)``, per sample (:attr:`Explanation.conservation`). LRP rules
conserve relevance up to what biases, stabilisers and the softmax rule absorb, so on a healthy model the ratio is
of order one (near 1 for bias-free ReLU nets; smaller, or negative, where biases and signed shares absorb a large
part, as in transformers with random weights). :meth:`LRP.explain` warns when ``|conservation| > limit`` *and*
the input relevance sum is also beyond ``limit`` times the largest output of the sample in magnitude (a logit near
zero because its bias cancels the rest is no alarm). ``limit`` is :data:`CONSERVATION_LIMIT` (10) unless the
``conservation_limit`` argument of :meth:`LRP.explain` says otherwise (``None`` turns the check off). Beyond it,
relevance was *created* by an ill-conditioned division -- typically the epsilon rule at a batch norm whose two
terms cancel on real weights (DeepLabV3, MaxViT: -213 and -422 for outputs of 1.9 and 0.79) -- and the heatmap is
noise: use a composite (``LRPConfig(canonize=True, gamma_conv=0.25)``) or a larger epsilon.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

from . import saved
from .errors import ConservationWarning, StaleGraphError, TrainingModeWarning, ZeroSeedWarning

#: warn when ``|sum of input relevance / sum of seed| > CONSERVATION_LIMIT`` for some sample (see module doc)
CONSERVATION_LIMIT = 10.0

#: class-name fragments of modules that act randomly in training mode (torch, timm, torchvision)
_STOCHASTIC = ("Dropout", "DropPath", "DropBlock", "StochasticDepth")
#: autograd nodes that only a random op in training mode creates
_RANDOM_NODES = ("NativeDropoutBackward", "FusedDropoutBackward", "BernoulliBackward")


def _batch(seed: torch.Tensor) -> int:
    return seed.shape[0] if seed.dim() > 1 else 1


def _per_sample(relevances, seed: torch.Tensor) -> tuple:
    """``(input relevance sums, batch)``: per sample when every relevance tensor has the output's batch size as
    its first dimension, else one sum for the whole batch (``batch = 1``)."""
    batch = _batch(seed)
    rels = [r.detach().double() for r in relevances if isinstance(r, torch.Tensor)]
    if not (batch > 1 and all(r.dim() >= 1 and r.shape[0] == batch for r in rels)):
        batch = 1
    return sum((r.reshape(batch, -1).sum(1) for r in rels), torch.zeros(batch, dtype=torch.float64)), batch


def conservation(relevances, seed: torch.Tensor) -> torch.Tensor:
    """``sum(input relevance) / sum(seed)`` per sample (float64, NaN where the seed sums to 0).

    ``relevances``: relevance tensors of all explained inputs (per-token relevance for token ids). Per sample when
    every one of them has the output's batch size as its first dimension; otherwise one ratio for the whole batch
    (a list of images of different sizes, an unbatched input)."""
    num, batch = _per_sample(relevances, seed)
    den = seed.detach().double().reshape(batch, -1).sum(1)
    safe = torch.where(den != 0, den, torch.ones_like(den))
    return torch.where(den != 0, num / safe, torch.full_like(den, float("nan")))


def check_seed(seed: torch.Tensor, stacklevel: int = 3) -> None:
    """Warn (:class:`ZeroSeedWarning`) when the explained output is exactly zero for some sample."""
    batch = _batch(seed)
    zero = (seed.detach().reshape(batch, -1) == 0).all(1)
    if bool(zero.any()):
        which = zero.nonzero().flatten().tolist()
        warnings.warn(
            f"the explained output is exactly 0 for sample(s) {which[:10]}{' ...' if len(which) > 10 else ''}, so "
            "their relevance is all zero. A zero-initialised classifier head (timm, torchvision) does this: load "
            "trained weights, or explain another target.", ZeroSeedWarning, stacklevel=stacklevel)


def stochastic_parts(model, graph=None) -> list:
    """Names of what makes a forward pass random or batch-dependent: modules in training mode that drop out
    (dropout, drop-path, stochastic depth with a non-zero rate) or normalise with batch statistics (batch norm),
    and random autograd nodes in ``graph`` (functional dropout with ``training=True``)."""
    found = []
    if isinstance(model, nn.Module):
        for name, m in model.named_modules():
            if not m.training:
                continue
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                found.append(f"{name or '<model>'} ({type(m).__name__}: batch statistics)")
            elif any(k in type(m).__name__ for k in _STOCHASTIC):
                rate = getattr(m, "p", getattr(m, "drop_prob", None))
                if not (isinstance(rate, (int, float)) and rate == 0):
                    found.append(f"{name or '<model>'} ({type(m).__name__})")
    if graph is not None and not found:
        for node in graph.order:
            if saved.op_name(node) in _RANDOM_NODES and saved.get(node, "scale", None) != 1.0:
                found.append(f"a {saved.full_name(node)} node (functional dropout)")
                break
    return found


def check_training(model, graph=None, stacklevel: int = 3) -> None:
    """Warn (:class:`TrainingModeWarning`) when the forward pass was random or batch-dependent."""
    found = stochastic_parts(model, graph)
    if found:
        warnings.warn(
            f"the model ran in training mode with {', '.join(found[:5])}{', ...' if len(found) > 5 else ''}: "
            "each call explains a different random network (and batch norm uses and updates batch statistics). "
            "Call model.eval() before explaining.", TrainingModeWarning, stacklevel=stacklevel)


def check_conservation(relevances, seed: torch.Tensor, output: torch.Tensor,
                       limit: float | None = CONSERVATION_LIMIT, stacklevel: int = 3) -> None:
    """Warn (:class:`ConservationWarning`) when, for some sample, the input relevance sums to more than ``limit``
    times the explained output *and* more than ``limit`` times the sample's largest output in magnitude.

    The second condition spares a logit near zero because its bias cancels the rest (``z = w x + b`` with
    ``w x = 0.5, b = -0.45``: the inputs rightly get ``w x``, ten times ``z``); relevance created by the rules
    exceeds every output of the sample.

    Also warns when no relevance at all reached the inputs of a sample whose explained output is not zero (dead
    ReLUs, an output that does not depend on the inputs): an all-zero heatmap that would otherwise pass silently."""
    if limit is None:
        return
    num, batch = _per_sample(relevances, seed)
    mass, _ = _per_sample([r.abs() for r in relevances if isinstance(r, torch.Tensor)], seed)
    lost = (mass == 0) & (seed.detach().reshape(batch, -1) != 0).any(1)
    if any(isinstance(r, torch.Tensor) for r in relevances) and bool(lost.any()):
        which = lost.nonzero().flatten().tolist()
        warnings.warn(
            f"no relevance reached the inputs for sample(s) {which[:10]}{' ...' if len(which) > 10 else ''} although "
            "the explained output is not zero: every path to them was cut (dead ReLUs, a zero weight) or the output "
            "does not depend on them, and biases kept all of it.", ConservationWarning, stacklevel=stacklevel)
    ratio = conservation(relevances, seed)
    scale = output.detach().double().reshape(batch, -1).abs().amax(1)
    bad = torch.isfinite(ratio) & (ratio.abs() > limit) & (num.abs() > limit * scale)
    if bool(bad.any()):
        which = bad.nonzero().flatten().tolist()
        values = ", ".join(f"{float(ratio[i]):.3g}" for i in which[:5])
        warnings.warn(
            f"relevance is not conserved: sum of input relevance / explained output = {values} for sample(s) "
            f"{which[:5]}{' ...' if len(which) > 5 else ''}, beyond {limit:g} times every output of the sample. The "
            "rules created relevance in an ill-conditioned division (typically the epsilon rule at a batch norm on "
            "real weights), so the heatmap is noise: try LRPConfig(canonize=True, gamma_conv=0.25) or a larger "
            "epsilon, and see where it grows with propagate() to intermediate tensors. Pass "
            "conservation_limit=None to silence this check.", ConservationWarning, stacklevel=stacklevel)


def is_lost_graph(err: BaseException) -> bool:
    """Whether ``err`` says autograd freed saved tensors that the explanation needed."""
    text = str(err)
    return "lost its saved tensors" in text or "backward through the graph a second time" in text or (
        "saved tensors after they have already been freed" in text)


def stale_graph_error(err: BaseException) -> StaleGraphError:
    """The error to raise instead of a 'saved tensors were freed' failure inside one fresh forward pass."""
    return StaleGraphError(
        f"{err}\nThis forward pass reused a tensor that an earlier forward pass computed from the model's "
        "parameters and the model cached (timm's eval-mode attention_bias_cache in LeViT and EfficientFormer, a "
        "precomputed positional table...): its autograd graph belongs to that earlier pass, and a backward() since "
        "has freed it. Clear the cache before explaining -- for timm models model.train(); model.eval() -- or "
        "avoid calling backward() on outputs of the cached model between explanations.")


# ------------------------------------------------------------------------------------------------ per-op report


class ConservationReport:
    """Where relevance is created or absorbed, op by op (LXT-style ✓/✗), from a traced explanation
    (``LRP.explain(..., trace=True)``; :attr:`Explanation.trace`).

    A node *conserves* when the relevance it passed on to its inputs equals what arrived at its outputs within
    ``tolerance`` (relative). Biases, constants and the softmax rule legitimately *absorb* (ratio < 1); a ratio
    above 1, or of the other sign, means the rule *created* relevance there -- the first such node in traversal
    order (:attr:`first_created`) is where to look.

    Attributes
    ----------
    by_op : ``{op name: (nodes, conserving nodes, lowest ratio, highest ratio)}``.
    first_created : the first :class:`~dynamiclrp.engine.NodeTrace` that created relevance, or ``None``.
    """

    def __init__(self, trace, tolerance: float = 1e-3):
        self.tolerance = tolerance
        self.trace = list(trace)
        self.by_op: dict = {}
        self.first_created = None
        for t in self.trace:
            if not t.relevance_in:
                continue
            ok = abs(t.relevance_out - t.relevance_in) <= tolerance * abs(t.relevance_in)
            created = not ok and (t.ratio > 1 or t.ratio < 0)
            if created and self.first_created is None:
                self.first_created = t
            n, good, lo, hi = self.by_op.get(t.op, (0, 0, float("inf"), float("-inf")))
            self.by_op[t.op] = (n + 1, good + ok, min(lo, t.ratio), max(hi, t.ratio))

    @property
    def conserving(self) -> bool:
        """Whether every node conserved relevance within the tolerance."""
        return all(n == good for n, good, _, _ in self.by_op.values())

    def __str__(self) -> str:
        lines = [f"relevance conservation per op (out / in per node, tolerance {self.tolerance:g}):"]
        for op, (n, good, lo, hi) in sorted(self.by_op.items()):
            mark = "✓" if n == good else "✗"
            span = f"{lo:.4g}" if lo == hi else f"{lo:.4g} .. {hi:.4g}"
            lines.append(f"  {mark} {op:<32} {good}/{n} conserve   ratio {span}")
        if self.first_created is not None:
            t = self.first_created
            lines.append(f"relevance first created at {t.op} (step {t.step}): in {t.relevance_in:.4g}, "
                         f"out {t.relevance_out:.4g}")
        return "\n".join(lines)
