"""Additive ops: sums of tensors (add/sub), reductions (sum/mean/cumsum) and averaging pools.

All share one rule, proportional to each addend's share. With ``y = sum_i c_i`` (the ``c_i`` being the addends,
after any fixed positive weights such as a mean's ``1/N``):

* ``add_rule="abs"`` (default, the paper's): ``R_i = |c_i| / sum_j |c_j| * R_y``, always conservative;
* ``add_rule="z"``: ``R_i = c_i / stab(sum_j c_j) * R_y`` (the z-rule).

Autograd does not save the operands of these ops, so they are the strict promise-generating operations.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import saved
from .base import OpRule, RoutingRule, edge_shape, proportional, register, routed, stabilize


@register("AddBackward", "SubBackward", "RsubBackward")
class AddRule(OpRule):
    """``y = a + alpha * b`` (``SubBackward``: ``a - alpha * b``; ``RsubBackward``: ``b - alpha * a``).

    Addends ``c_a = a`` and ``c_b = ±alpha * b`` share ``R_y`` proportionally (see module doc). A tensor addend
    outside the graph (a buffer, a frozen parameter) is a bias: it takes its share and keeps it, as a trainable
    parameter would (its value comes from the forward pass, see :mod:`dynamiclrp.constants`). A constant added
    right before a softmax is that softmax's bias instead (:class:`~dynamiclrp.rules.attention.SoftmaxRule`).
    A Python scalar addend (``x + 1``), which autograd does not keep, absorbs nothing: ``R_x = R_y``.
    """

    def _signs(self, node):
        alpha = saved.get(node, "alpha", 1)
        name = saved.op_name(node)
        if name == "SubBackward":
            return (1, -alpha)
        if name == "RsubBackward":
            return (-alpha, 1)
        return (1, alpha)

    def needs(self, node, graph):
        return range(len(node.next_functions)) if len(node.next_functions) == 2 else ()

    def absorbable_constants(self, node):
        return [i for i, (c, _) in enumerate(node.next_functions) if c is None]

    def constant_edges(self, node, call):  # a + b, torch.add(input, other), a.__radd__(b)
        if len(node.next_functions) != 2 or not call.is_one_of("add", "sub", "subtract", "rsub"):
            return {}
        return {0: call.arg(0, "input"), 1: call.arg(1, "other")}

    def forward(self, node, inputs):
        if len(inputs) == 1:  # scalar overload: the scalar is saved as 'other' only sometimes
            other = saved.get(node, "other", None)
            if other is None:
                raise NotImplementedError("scalar operand not saved")
            s = self._signs(node)
            return (s[0] * inputs[0] + s[1] * other,)
        s = self._signs(node)
        return (s[0] * inputs[0] + s[1] * inputs[1],)

    def relevance(self, ctx):
        r = ctx.relevance[0]
        if len(ctx.edges) == 1:
            return [r.sum_to_size(edge_shape(ctx, 0)) if ctx.has_edge(0) else None]
        signs = self._signs(ctx.node)
        contribs = [s * x for s, x in zip(signs, ctx.inputs)]
        shares = proportional(contribs, r, ctx.config.add_rule == "z", ctx.config.epsilon,
                              [edge_shape(ctx, i) for i in range(len(ctx.edges))])
        return [share if ctx.has_edge(i) else None for i, share in enumerate(shares)]


@register("IndexAddBackward")
class IndexAddRule(OpRule):
    """``y = x.index_add(dim, index, s, alpha)``: ``y = x + sum`` of the rows of ``alpha * s`` sent to each
    position (MoE layers gather expert outputs this way). Every addend shares ``R_y`` proportionally, as
    :class:`AddRule`: with weights ``c = |x|`` and ``|alpha * s|`` (abs rule) or ``x`` and ``alpha * s`` over
    ``stab(y)`` (z rule), ``R_x = c_x * R_y / den`` and ``R_s = c_s * (R_y / den)[index]``. A constant ``x`` (the
    zeros an MoE layer starts from) is read from the forward pass and keeps its share."""

    def known_inputs(self, node):
        return [None, saved.get(node, "source", None)]

    def needs(self, node, graph):
        return (0, 1)

    def constant_edges(self, node, call):  # x.index_add(dim, index, source)
        return {0: call.arg(0, "input")} if call.is_one_of("index_add") else {}

    def forward(self, node, inputs):
        return (inputs[0].index_add(saved.get(node, "dim"), saved.get(node, "index"), inputs[1],
                                    alpha=saved.get(node, "alpha", 1)),)

    def relevance(self, ctx):
        node, (x, src) = ctx.node, ctx.inputs
        dim, index = saved.get(node, "dim"), saved.get(node, "index")
        return placed_sum_relevance(ctx, x, saved.get(node, "alpha", 1) * src,
                                    put=lambda base, s: base.index_add(dim, index, s),
                                    take=lambda t: t.index_select(dim, index))


@register("IndexPutBackward")
class IndexPutRule(OpRule):
    """``y = x.index_put(indices, v, accumulate)`` (``x[idx] = v`` with tensor indices, boolean masks).

    * ``accumulate=False`` (an overwrite): routing. ``R_v`` is ``R_y`` at the written positions (summed where
      ``v`` was broadcast), ``R_x`` is ``R_y`` elsewhere; a constant written absorbs its positions' relevance.
    * ``accumulate=True``: ``y[idx] = x[idx] + sum of the v written there``, shared proportionally as
      :class:`IndexAddRule`: weights ``|x|``, ``|v|`` (abs rule) or ``x``, ``v`` over ``stab(y)`` (z rule).
    """

    def _indices(self, node) -> list:
        return list(saved.get(node, "indices"))

    def needs(self, node, graph):
        return (0, 1) if saved.get(node, "accumulate") else ()

    def constant_edges(self, node, call):  # x[idx] = v, x.index_put_(indices, values, accumulate)
        if call.is_one_of("setitem"):
            return {0: call.arg(0, "input"), 1: call.arg(2, "value")}
        if call.is_one_of("index_put"):
            return {0: call.arg(0, "input"), 1: call.arg(2, "values")}
        return {}

    def forward(self, node, inputs):
        x, v = inputs
        return (torch.ops.aten.index_put(x, self._indices(node), v.to(x.dtype), saved.get(node, "accumulate")),)

    def relevance(self, ctx):
        node, r = ctx.node, ctx.relevance[0]
        if not saved.get(node, "accumulate"):
            return routed(ctx)
        x, v = ctx.inputs
        indices = self._indices(node)

        def take(t):
            return torch.ops.aten.index.Tensor(t, indices)

        rx, rv = placed_sum_relevance(ctx, x, v.to(r.dtype).expand(take(x).shape), take=take,
                                      put=lambda base, s: torch.ops.aten.index_put(base, indices, s, True))
        return [rx, None if rv is None else rv.sum_to_size(edge_shape(ctx, 1))]


@register("ScatterAddBackward")
class ScatterAddRule(OpRule):
    """``y = x.scatter_add(dim, index, src)``: ``y = x`` plus every entry of ``src`` sent to a position; all
    addends share ``R_y`` proportionally, as :class:`IndexAddRule` (``R_src = w_src * (R_y / den).gather(index)``).
    """

    def needs(self, node, graph):
        return (0, 1)

    def constant_edges(self, node, call):  # zeros(...).scatter_add(dim, index, src)
        return {0: call.arg(0, "input")} if call.is_one_of("scatter_add") else {}

    def forward(self, node, inputs):
        return (inputs[0].scatter_add(saved.get(node, "dim"), saved.get(node, "index"), inputs[1]),)

    def relevance(self, ctx):
        return scatter_sum_relevance(ctx, *ctx.inputs, saved.get(ctx.node, "dim"), saved.get(ctx.node, "index"))


def scatter_sum_relevance(ctx, x, src, dim, index, include_self=True):
    """:func:`placed_sum_relevance` of ``y = x.scatter_add(dim, index, src)``; with ``include_self=False`` the
    entries of ``x`` at written positions are not addends (``scatter_reduce``)."""
    own = None if include_self else ~torch.zeros_like(x, dtype=torch.bool).scatter(dim, index, True)
    return placed_sum_relevance(ctx, x, src, put=lambda base, s: base.scatter_add(dim, index, s),
                                take=lambda t: t.gather(dim, index), x_addend=own)


def placed_sum_relevance(ctx, x, src, put, take, x_addend=None) -> list:
    """Proportional relevance of ``y = put(x, src)``: ``x`` plus each entry of ``src`` added at a position
    (``index_add``, ``index_put(accumulate=True)``, ``scatter_add``); ``take(t)`` reads an output-shaped ``t`` at
    the position of each entry of ``src``. As :class:`AddRule`: weights ``|x|``, ``|src|`` over their placed sum
    (abs rule; an even split where all addends are zero) or ``x``, ``src`` over ``stab(y)`` (z rule), and
    ``R_x = w_x * R_y / den``, ``R_src = w_src * take(R_y / den)``. ``x_addend``: where ``x`` is an addend at
    all (default everywhere). Returns ``[R_x, R_src]``, ``None`` for edges outside the graph."""
    if x_addend is not None:
        x = torch.where(x_addend, x, 0.0)
    if ctx.config.add_rule == "z":
        wx, ws = x, src
        den = stabilize(put(x, src), ctx.config.epsilon)
    else:
        wx, ws = x.abs(), src.abs()
        den = put(wx, ws)
        empty = den == 0
        if bool(empty.any()):  # all addends zero: weight 1 each, an even split
            wx = wx + (empty if x_addend is None else empty & x_addend)
            ws = ws + take(empty)
            den = put(wx, ws)
    ratio = ctx.relevance[0] / den
    out = [wx * ratio, ws * take(ratio)]
    return [o if ctx.has_edge(i) else None for i, o in enumerate(out)]


@register("ScatterReduceBackward")
class ScatterReduceRule(OpRule):
    """``y = x.scatter_reduce(dim, index, src, reduce, include_self)``: ``"sum"`` and ``"mean"`` share
    proportionally as :class:`ScatterAddRule` (the mean's ``1/n`` cancels); ``"amax"``/``"amin"`` route each
    position's relevance to the entries that attain it (the op's own backward: ties share evenly).
    ``"prod"`` has no LRP rule here and raises."""

    def known_inputs(self, node):
        return [saved.get(node, "self", None), saved.get(node, "src", None)]

    def saved_output(self, node):
        return (saved.get(node, "result"),)

    def forward(self, node, inputs):
        return (inputs[0].scatter_reduce(saved.get(node, "dim"), saved.get(node, "index"), inputs[1],
                                         saved.get(node, "reduce"), include_self=saved.get(node, "include_self")),)

    def relevance(self, ctx):
        node = ctx.node
        reduce = saved.get(node, "reduce")
        if reduce in ("amax", "amin"):
            return routed(ctx)
        if reduce not in ("sum", "mean"):
            raise NotImplementedError(f"{saved.full_name(node)}: no LRP rule for scatter_reduce(reduce={reduce!r})")
        return scatter_sum_relevance(ctx, *ctx.inputs, saved.get(node, "dim"), saved.get(node, "index"),
                                     include_self=saved.get(node, "include_self"))


class LinearSumRule(OpRule):
    """Base of one-input sums ``y = L(x)`` with ``L`` linear and positive (sum, mean, average pooling...):
    ``R_x = c * L^T(R_y / L(c))`` with ``c = |x|`` (abs rule) or ``c = x`` and a stabilised denominator (z rule);
    ``L^T`` is the node's own backward, so any positive scaling inside ``L`` cancels. With the abs rule, an output
    whose addends are all zero splits its relevance evenly among them: ``L^T(R_y / L(1))``."""

    def needs(self, node, graph):
        return (0,)

    def relevance(self, ctx):
        x, r = ctx.inputs[0], ctx.relevance[0]
        if ctx.config.add_rule == "z":
            c, den = x, stabilize(self.forward(ctx.node, [x])[0], ctx.config.epsilon)
            return [c * ctx.vjp(r / den)[0]]
        c = x.abs()
        den = self.forward(ctx.node, [c])[0]
        empty = den == 0
        if not bool(empty.any()):
            return [c * ctx.vjp(r / den)[0]]
        # outputs whose addends are all zero: their relevance is split evenly (``L(1)`` counts the weights)
        rel = c * ctx.vjp(torch.where(empty, 0, r / torch.where(empty, 1, den)))[0]
        rest = torch.where(empty, r, 0)
        if bool(rest.any()):
            count = self.forward(ctx.node, [torch.ones_like(c)])[0]
            rel = rel + (c == 0) * ctx.vjp(rest / torch.where(empty, count, 1))[0]
        return [rel]


@register("SumBackward")
class SumRule(LinearSumRule):
    """``y = x.sum(dims)``: proportional split of each sum's relevance among its addends."""

    def forward(self, node, inputs):
        if saved.has(node, "dim"):
            return (inputs[0].sum(list(saved.get(node, "dim")), keepdim=saved.get(node, "keepdim")),)
        return (inputs[0].sum(),)


@register("MeanBackward")
class MeanRule(LinearSumRule):
    """``y = x.mean(dims)``: as for sum (the ``1/N`` cancels)."""

    def forward(self, node, inputs):
        if saved.has(node, "dim"):
            return (inputs[0].mean(list(saved.get(node, "dim")), keepdim=saved.get(node, "keepdim")),)
        return (inputs[0].mean(),)


@register("CumsumBackward")
class CumsumRule(LinearSumRule):
    """``y_k = sum_{i<=k} x_i``: each prefix sum's relevance split among its addends."""

    def forward(self, node, inputs):
        return (inputs[0].cumsum(saved.get(node, "dim")),)


@register("AvgPool2DBackward", "AvgPool3DBackward")
class AvgPoolRule(LinearSumRule):
    """Average pooling: each window's relevance split among its inputs (Zennit's ``Norm`` rule for the z case)."""

    def known_inputs(self, node):
        return [saved.get(node, "self")]

    def forward(self, node, inputs):
        fn = F.avg_pool3d if "3D" in saved.full_name(node) else F.avg_pool2d
        return (fn(inputs[0], saved.get(node, "kernel_size"), saved.get(node, "stride"),
                   saved.get(node, "padding"), saved.get(node, "ceil_mode"), saved.get(node, "count_include_pad"),
                   saved.get(node, "divisor_override")),)


@register("AdaptiveAvgPool2DBackward", "AdaptiveAvgPool3DBackward", "AdaptiveAvgPool1DBackward")
class AdaptiveAvgPoolRule(LinearSumRule):
    """Adaptive average pooling: as for average pooling."""

    def known_inputs(self, node):
        return [saved.get(node, "self")]

    def forward(self, node, inputs):
        size = saved.output_shapes(node)[0]
        name = saved.full_name(node)
        fn = F.adaptive_avg_pool3d if "3D" in name else F.adaptive_avg_pool1d if "1D" in name else F.adaptive_avg_pool2d
        nd = 3 if "3D" in name else 1 if "1D" in name else 2
        return (fn(inputs[0], tuple(size[-nd:])),)


@register("Col2ImBackward")
class FoldRule(LinearSumRule):
    """``y = fold(x)`` (col2im) adds overlapping patches: each output entry's relevance split among its addends."""

    def forward(self, node, inputs):
        size = saved.output_shapes(node)[0][-2:]
        return (F.fold(inputs[0], tuple(size), saved.get(node, "kernel_size"), saved.get(node, "dilation"),
                       saved.get(node, "padding"), saved.get(node, "stride")),)


#: interpolation nodes -> the aten op that recomputes them from the saved sizes, scales and corner flag
_UPSAMPLE = {
    "UpsampleLinear1DBackward": "upsample_linear1d", "UpsampleBilinear2DBackward": "upsample_bilinear2d",
    "UpsampleBicubic2DBackward": "upsample_bicubic2d", "UpsampleTrilinear3DBackward": "upsample_trilinear3d",
    "UpsampleBilinear2DAaBackward": "_upsample_bilinear2d_aa", "UpsampleBicubic2DAaBackward": "_upsample_bicubic2d_aa",
    "UpsampleNearest1DBackward": "upsample_nearest1d", "UpsampleNearest2DBackward": "upsample_nearest2d",
    "UpsampleNearest3DBackward": "upsample_nearest3d", "UpsampleNearestExact1DBackward": "_upsample_nearest_exact1d",
    "UpsampleNearestExact2DBackward": "_upsample_nearest_exact2d",
    "UpsampleNearestExact3DBackward": "_upsample_nearest_exact3d",
}


def upsample(node, x):
    """Recompute the interpolation of ``node`` on ``x`` (``F.interpolate`` with the saved size and scales)."""
    fn = getattr(torch.ops.aten, _UPSAMPLE[saved.op_name(node)])
    args = [x, list(saved.get(node, "output_size"))]
    if saved.has(node, "align_corners"):
        args.append(saved.get(node, "align_corners"))
    scales = [saved.get(node, k) for k in ("scales", "scales_d", "scales_h", "scales_w") if saved.has(node, k)]
    return fn(*args, *scales)


@register(*[name for name in _UPSAMPLE if "Nearest" not in name])
class InterpolateRule(LinearSumRule):
    """Linear, bilinear, bicubic and trilinear interpolation (also antialiased): each output is a weighted sum
    ``y = L x`` of nearby inputs, so ``R_x = c * L^T(R_y / L(c))`` as for the other linear sums (``c = |x|``, or
    ``x`` with the z rule). Bicubic weights have small negative lobes: there the abs rule spreads by magnitude."""

    def forward(self, node, inputs):
        return (upsample(node, inputs[0]),)


@register(*[name for name in _UPSAMPLE if "Nearest" in name])
class NearestInterpolateRule(RoutingRule):
    """Nearest-neighbour interpolation copies inputs: each copy's relevance goes back to its source."""

    def forward(self, node, inputs):
        return (upsample(node, inputs[0]),)
