"""Normalisation layers: layer norm, batch norm, group norm.

Following AttnLRP (Achtibat et al. 2024), the statistics are treated as constants (identity rule on the division by
the standard deviation) and the remaining map ``y = w * (x - mean(x)) * rstd + b`` is linear in ``x``: the
epsilon rule applies to it, ``R_x = x * J^T (R_y / stab(y))`` with ``J`` the Jacobian at constant statistics. For
layer and group norm ``J^T v = u - mean(u)`` over the normalised entries with ``u = w * rstd * v``; batch norm
has no centering term in ``x`` (running statistics), so ``R_x = x * w * rstd * R_y / stab(y)``. The bias (and, in
batch norm, the shift by the running mean) absorbs its share.
"""
from __future__ import annotations

import torch

from .. import saved
from .base import OpRule, live_edges, register, stabilize


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
        y = (x - saved.get(node, "result1")) * saved.get(node, "result2")
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
    (held constant) in training mode."""

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
        mean, rstd = saved.get(node, "result1").unsqueeze(-1), saved.get(node, "result2").unsqueeze(-1)
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
