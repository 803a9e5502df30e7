"""Normalisation layers: layer norm, batch norm, group norm.

Following AttnLRP (Achtibat et al. 2024), the statistics are treated as constants (identity rule on the division by
the standard deviation) and the remaining map ``y = w * (x - mean(x)) * rstd + b`` is linear in ``x``: the
epsilon rule applies to it, ``R_x = x * J^T (R_y / stab(y))`` with ``J`` the Jacobian at constant statistics. For
layer and group norm ``J^T v = u - mean(u)`` over the normalised entries with ``u = w * rstd * v``; batch norm
has no centering term in ``x`` (running statistics), so ``R_x = x * w * rstd * R_y / stab(y)``. The bias (and, in
batch norm, the shift by the running mean) absorbs its share.
"""
from __future__ import annotations

import copy

import torch

from .. import saved
from .base import OpRule, live_edges, register, stabilize


def _mean(saved_mean, x, dims):
    """The mean the forward pass subtracted. Half/bfloat16 norms compute their statistics in float32 but save
    them rounded to the input's dtype; ``x - mean`` cancels where ``x`` is close to the mean, so the rounded mean
    makes the recomputed ``y`` wrong by ``~|mean| * 2^-11`` there and the ratio ``R_y / y`` explode (a tiny GPT-2
    in float16 was 19 % off float64). Recomputing the mean in the compute dtype from ``x`` gives back the
    forward's own value; ``rstd``'s rounding is only a relative error of ``y`` and stays harmless."""
    if saved_mean.dtype in (torch.float16, torch.bfloat16) and x.dtype != saved_mean.dtype:
        return x.mean(dims, keepdim=True)
    return saved_mean


class _NormRule(OpRule):
    def known_inputs(self, node):
        vals = [None] * len(node.next_functions)
        vals[0] = saved.get(node, "input")
        if len(vals) > 1:
            vals[1] = saved.get(node, "weight", None)
        if len(vals) > 2:
            vals[2] = saved.get(node, "bias", None)
        return vals

    def needs(self, node, graph):
        return live_edges(node)

    def forward_needs(self, node):
        return self.needs(node, None)

    def _params(self, inputs, idx):
        return inputs[idx] if len(inputs) > idx else None


@register("NativeLayerNormBackward")
class LayerNormRule(_NormRule):
    """``y = w * (x - mean) * rstd + b`` over the trailing ``normalized_shape`` dimensions."""

    def _dims(self, node, x):
        n = len(saved.get(node, "normalized_shape"))
        return tuple(range(x.dim() - n, x.dim()))

    def forward(self, node, inputs):
        x, w, b = inputs[0], self._params(inputs, 1), self._params(inputs, 2)
        y = (x - _mean(saved.get(node, "result1"), x, self._dims(node, x))) * saved.get(node, "result2")
        if w is not None:
            y = y * w
        if b is not None:
            y = y + b
        return (y,)

    def relevance(self, ctx):
        x, w = ctx.inputs[0], self._params(ctx.inputs, 1)
        y = self.forward(ctx.node, ctx.inputs)[0]
        u = ctx.relevance[0] / stabilize(y, ctx.config.epsilon) * saved.get(ctx.node, "result2")
        if w is not None:
            u = u * w
        u = u - u.mean(self._dims(ctx.node, x), keepdim=True)
        return [x * u] + [None] * (len(ctx.edges) - 1)


@register("NativeBatchNormBackward", "CudnnBatchNormBackward")
class BatchNormRule(_NormRule):
    """``y = w * (x - mu) * rstd + b`` per channel (dim 1) with running statistics in eval mode, batch statistics
    (held constant) in training mode.

    Under canonization (``LRPConfig(canonize=True)``), an eval-mode batch norm right after a convolution or a
    linear product is merged into that product for the purposes of its rule (Zennit's ``MergeBatchNorm``; see
    :func:`dynamiclrp.layer_map.plan`): the product sees ``W' = a * W`` and ``b' = a * (b - mu) + beta`` with
    ``a = w * rstd``, and this node passes relevance through, ``R_x = R_y`` (a :meth:`merged` copy)."""

    #: set on the per-node copy of a batch norm merged into the product before it
    is_merged = False

    def merged(self) -> "BatchNormRule":
        """A copy of this rule for a batch norm merged into its product: ``R_x = R_y``."""
        rule = copy.copy(self)
        rule.is_merged = True
        return rule

    def affine(self, node, weight=None, bias=None):
        """``(a, shift)`` with ``y = a * x + shift`` per channel, in eval mode (``weight``/``bias``: the affine
        parameters, ``None`` for absent)."""
        mean, rstd = self._stats(node)
        a = rstd if weight is None else weight * rstd
        shift = -a * mean
        return a, shift if bias is None else shift + bias

    def _stats(self, node):
        if saved.get(node, "training", False):
            return saved.get(node, "result1"), saved.get(node, "result2")
        mean = saved.get(node, "running_mean")
        return mean, (saved.get(node, "running_var") + saved.get(node, "eps")).rsqrt()

    def _chan(self, t, x):
        return t.reshape((1, -1) + (1,) * (x.dim() - 2))

    def forward(self, node, inputs):
        x, w, b = inputs[0], self._params(inputs, 1), self._params(inputs, 2)
        mean, rstd = self._stats(node)
        y = (x - self._chan(mean, x)) * self._chan(rstd, x)
        if w is not None:
            y = y * self._chan(w, x)
        if b is not None:
            y = y + self._chan(b, x)
        return (y,)

    def relevance(self, ctx):
        if self.is_merged:
            return [ctx.relevance[0]] + [None] * (len(ctx.edges) - 1)
        x, w = ctx.inputs[0], self._params(ctx.inputs, 1)
        y = self.forward(ctx.node, ctx.inputs)[0]
        scale = self._chan(self._stats(ctx.node)[1], x)
        if w is not None:
            scale = scale * self._chan(w, x)
        return [x * scale * ctx.relevance[0] / stabilize(y, ctx.config.epsilon)] + [None] * (len(ctx.edges) - 1)


@register("NativeGroupNormBackward")
class GroupNormRule(_NormRule):
    """Group norm: layer norm within each of ``group`` channel groups, then a per-channel affine map."""

    def _grouped(self, node, t):
        return t.reshape(t.shape[0], saved.get(node, "group"), -1)

    def _chan(self, t, x):
        return t.reshape((1, -1) + (1,) * (x.dim() - 2))

    def forward(self, node, inputs):
        x, w, b = inputs[0], self._params(inputs, 1), self._params(inputs, 2)
        xg = self._grouped(node, x)
        mean = _mean(saved.get(node, "result1").unsqueeze(-1), xg, (-1,))
        rstd = saved.get(node, "result2").unsqueeze(-1)
        y = ((xg - mean) * rstd).reshape(x.shape)
        if w is not None:
            y = y * self._chan(w, x)
        if b is not None:
            y = y + self._chan(b, x)
        return (y,)

    def relevance(self, ctx):
        x, w = ctx.inputs[0], self._params(ctx.inputs, 1)
        y = self.forward(ctx.node, ctx.inputs)[0]
        u = ctx.relevance[0] / stabilize(y, ctx.config.epsilon)
        if w is not None:
            u = u * self._chan(w, x)
        ug = self._grouped(ctx.node, u) * saved.get(ctx.node, "result2").unsqueeze(-1)
        ug = ug - ug.mean(-1, keepdim=True)
        return [x * ug.reshape(x.shape)] + [None] * (len(ctx.edges) - 1)


@register("WeightNormInterfaceBackward")
class WeightNormRule(OpRule):
    """Weight normalisation ``w = g * v / ||v||`` (norm over every dim but ``dim``; Wav2Vec2's positional
    convolution). The weight is a function of parameters only, so relevance reaches it only when parameter
    relevance is collected; then ``v`` gets it unchanged (``w`` is ``v`` rescaled entrywise by a positive factor
    per slice, the identity rule) and the scale ``g`` none."""

    def known_inputs(self, node):
        return [saved.get(node, "v"), saved.get(node, "g")]

    def saved_output(self, node):
        return None

    def forward(self, node, inputs):
        return tuple(torch._weight_norm_interface(inputs[0], inputs[1], saved.get(node, "dim")))

    def relevance(self, ctx):
        return [ctx.relevance[0], None]


# ------------------------------------------------ op-driven coverage (issue 11): batch norm entry points


@register("BatchNormNoUpdateBackward", "BatchNormWithUpdateBackward", "NativeBatchNormLegitBackward",
          "NativeBatchNormLegitNoTrainingBackward")
class BatchNormVariantRule(BatchNormRule):
    """The other batch norm nodes of torch 2.x (``_batch_norm_no_update`` / ``_with_update``,
    ``_native_batch_norm_legit[_no_training]``, as functionalised and exported graphs call it): the same
    ``y = w * (x - mu) * rstd + b`` and the same rule as :class:`BatchNormRule`, the statistics held constant --
    the running ones where the op normalises with them (no update, no training), else the batch ones it saved
    (``result1`` = mean, ``result2`` = ``1 / sqrt(var + eps)``)."""

    def _stats(self, node):
        name = saved.op_name(node)
        running = saved.get(node, "running_mean", None) is not None
        if name == "BatchNormWithUpdateBackward" or saved.get(node, "training", False) or not running:
            return saved.get(node, "result1"), saved.get(node, "result2")
        return super()._stats(node)
