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
    A Python scalar addend (``x + 1``) is a bias too (read from the recorded call, or solved from the graph as
    ``y - x`` where a consumer saved ``y``). Inside an elementwise nonlinearity or a normalisation written out in
    primitives (``x * (1 + tanh(...))``), the branch holding such a constant gets no relevance at all
    (:meth:`~dynamiclrp.graph.Graph.self_gated_edge`).
    """

    def _signs(self, node):
        return saved.additive_signs(node)

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


# ------------------------------------------------------------- op-driven coverage (issue 11): sums and reductions

_GRID_SAMPLERS = {"GridSampler2DBackward": torch.grid_sampler_2d, "GridSampler3DBackward": torch.grid_sampler_3d,
                  "GridSampler2DCpuFallbackBackward": torch._grid_sampler_2d_cpu_fallback}


@register(*_GRID_SAMPLERS)
class GridSampleRule(LinearSumRule):
    """``y = grid_sample(x, grid)`` (spatial transformers, RAFT's correlation lookup, deformable attention). For the
    recorded grid each output is a fixed weighted sum of the sampled input pixels, ``y = L_grid x`` (bilinear
    weights; nearest: one pixel; bicubic: small negative lobes), so as for the interpolation rules
    (:class:`InterpolateRule`) ``R_x = c * L^T(R_y / L(c))`` with ``c = |x|`` (or ``x`` and a stabilised
    denominator with the z rule). The grid says *where* to read, not *what*: it gets no relevance (``R_grid = 0``).
    """

    def known_inputs(self, node):
        return [saved.get(node, "input", None), saved.get(node, "grid", None)]

    def forward_needs(self, node):
        return (0,)

    def forward(self, node, inputs):
        grid = inputs[1] if len(inputs) > 1 and inputs[1] is not None else saved.get(node, "grid")
        return (_GRID_SAMPLERS[saved.op_name(node)](inputs[0], grid, saved.get(node, "interpolation_mode"),
                                                    saved.get(node, "padding_mode"),
                                                    saved.get(node, "align_corners")),)

    def relevance(self, ctx):
        return super().relevance(ctx) + [None]


@register("UpsampleLanczos2DAaBackward")
class LanczosInterpolateRule(LinearSumRule):
    """Antialiased Lanczos interpolation ``y = L x``: as :class:`InterpolateRule` (``R_x = c * L^T(R_y / L(c))``)."""

    def forward(self, node, inputs):
        return (torch.ops.aten._upsample_lanczos2d_aa(
            inputs[0], list(saved.get(node, "output_size")), saved.get(node, "align_corners"),
            saved.get(node, "scales_h", None), saved.get(node, "scales_w", None)),)


@register("TraceBackward")
class TraceRule(LinearSumRule):
    """``y = trace(x) = sum_i x_ii``: the sum's relevance split among the diagonal entries (as :class:`SumRule`)."""

    def forward(self, node, inputs):
        return (inputs[0].trace(),)


@register("NansumBackward")
class NansumRule(LinearSumRule):
    """``y = nansum(x, dims)``: as :class:`SumRule` with NaN entries counted as zero addends (they get nothing)."""

    def forward(self, node, inputs):
        dim = saved.get(node, "dim", None)
        return (inputs[0].nansum(list(dim) if dim else None, keepdim=saved.get(node, "keepdim", False)),)

    def relevance(self, ctx):
        x = ctx.inputs[0]
        ctx.inputs = [torch.where(torch.isnan(x), 0.0, x)]
        return super().relevance(ctx)


def _reduced_dims(x, dim) -> list:
    """The dimensions a reduction with saved ``dim`` (``None`` or empty: all) ran over, non-negative."""
    return list(range(x.dim())) if not dim else sorted(d % max(x.dim(), 1) for d in dim)


def _share(w, r, dims, keepdim):
    """``R_i = w_i / sum_j w_j * R`` over the reduced ``dims`` (an even split where every weight is zero), with
    ``r`` the relevance of the reduction's output (``keepdim`` or not)."""
    den = w.sum(dims, keepdim=True) if dims else w
    empty = den == 0
    if bool(empty.any()):
        w = w + empty
        den = w.sum(dims, keepdim=True) if dims else w
    if not keepdim:
        for d in dims:
            r = r.unsqueeze(d)
    return w * (r.reshape(den.shape) / den)


@register("LinalgVectorNormBackward", "NormBackward")
class VectorNormRule(OpRule):
    """``y = ||x||_p`` over ``dims`` (``torch.linalg.vector_norm``, ``torch.norm``; EdgeNeXt's XCA normalises by
    it). A norm is a sum of ``|x_i|^p`` seen through the monotone ``t -> t^(1/p)`` (identity rule), so each entry
    gets the proportional share of its addend:

    ``R_i = |x_i|^p / sum_j |x_j|^p * R_y``

    (``p = inf``: the maximal ``|x_i|`` share evenly, the limit of the formula; ``p = 0``: the non-zero entries
    share evenly). Conservative; an all-zero ``x`` splits evenly. The choice follows the paper's proportional rule
    for sums; used as a normaliser (``x / ||x||``), the division sends the numerator all relevance anyway."""

    def known_inputs(self, node):
        return [saved.get(node, "self", None)]

    def needs(self, node, graph):
        return (0,)

    def saved_output(self, node):
        result = saved.get(node, "result", None)
        return None if result is None else (result,)

    def _p(self, node):
        return float(saved.get(node, "ord", None) if saved.has(node, "ord") else saved.get(node, "p", 2.0))

    def forward(self, node, inputs):
        dim = saved.get(node, "dim", None)
        return (torch.linalg.vector_norm(inputs[0], self._p(node), list(dim) if dim else None,
                                         saved.get(node, "keepdim", False)),)

    def relevance(self, ctx):
        x, p = ctx.inputs[0].to(ctx.relevance[0].dtype), self._p(ctx.node)
        dims = _reduced_dims(x, saved.get(ctx.node, "dim", None))
        a = x.abs()
        if p == float("inf") or p == float("-inf"):
            ref = a.amax(dims, keepdim=True) if p > 0 else a.amin(dims, keepdim=True)
            w = (a == ref).to(x.dtype)
        elif p == 0:
            w = (x != 0).to(x.dtype)
        else:
            w = a ** p
        return [_share(w, ctx.relevance[0], dims, saved.get(ctx.node, "keepdim", False))]


@register("VarBackward", "StdBackward", "VarMeanBackward", "StdMeanBackward")
class VarianceRule(OpRule):
    """``y = var(x, dims)`` (and ``std = sqrt(var)``, identity through the square root): a sum of squared
    deviations ``(x_i - mean)^2`` (the mean held constant, as normalisation rules hold their statistics), so

    ``R_i = (x_i - mean)^2 / sum_j (x_j - mean)^2 * R_y``

    (the correction's ``1/(N - c)`` cancels). ``var_mean``/``std_mean``: the mean output's relevance is split as
    :class:`MeanRule`'s (``|x_i| / sum_j |x_j|``, or the z rule) and added."""

    def known_inputs(self, node):
        return [saved.get(node, "self", None)]

    def needs(self, node, graph):
        return (0,)

    def forward(self, node, inputs):
        dim = saved.get(node, "dim", None)
        kw = dict(dim=list(dim) if dim else None, correction=saved.get(node, "correction", 1),
                  keepdim=saved.get(node, "keepdim", False))
        name = saved.op_name(node)
        fn = {"VarBackward": torch.var, "StdBackward": torch.std, "VarMeanBackward": torch.var_mean,
              "StdMeanBackward": torch.std_mean}[name]
        out = fn(inputs[0], **kw)
        return tuple(out) if isinstance(out, tuple) else (out,)

    def relevance(self, ctx):
        x = ctx.inputs[0].to(ctx.relevance[0].dtype)
        dims = _reduced_dims(x, saved.get(ctx.node, "dim", None))
        keep = saved.get(ctx.node, "keepdim", False)
        rel = _share((x - x.mean(dims, keepdim=True)) ** 2, ctx.relevance[0], dims, keep)
        if len(ctx.relevance) > 1:  # the mean output
            r = ctx.relevance[1]
            if ctx.config.add_rule == "z":
                for d in ([] if keep else dims):
                    r = r.unsqueeze(d)
                rel = rel + x * (r / stabilize(x.sum(dims, keepdim=True), ctx.config.epsilon))
            else:
                rel = rel + _share(x.abs(), r, dims, keep)
        return [rel]


_SOFT_SELECT = {
    "LogsumexpBackward": lambda n, x: (x[0].logsumexp(saved.get(n, "dim"), saved.get(n, "keepdim")),),
    "LogcumsumexpBackward": lambda n, x: (x[0].logcumsumexp(saved.get(n, "dim")),),
    "LogaddexpBackward": lambda n, x: (torch.logaddexp(x[0], x[1]),),
    "Logaddexp2Backward": lambda n, x: (torch.logaddexp2(x[0], x[1]),),
}


@register(*_SOFT_SELECT)
class SoftSelectionRule(RoutingRule):
    """Smooth maxima: ``y = log sum_i exp(x_i)`` (``logsumexp``, ``logcumsumexp`` per prefix, ``logaddexp`` of two
    operands; base 2 for ``logaddexp2``). Their Jacobian rows are the softmax weights ``p_i = exp(x_i - y)``, which
    sum to one, so routing by the node's own backward, ``R_i = p_i R_y``, is conservative: a soft version of
    max's winner-takes-all (:class:`~dynamiclrp.rules.shape.MaxRule`)."""

    def known_inputs(self, node):
        vals = [saved.get(node, "self", None), saved.get(node, "other", None)]
        return vals[: len(node.next_functions)]

    def saved_output(self, node):
        result = saved.get(node, "result", None)
        return None if result is None else (result,)

    def forward(self, node, inputs):
        return _SOFT_SELECT[saved.op_name(node)](node, inputs)


@register("ProdBackward", "CumprodBackward")
class ProdRule(OpRule):
    """``y = prod_i x_i`` over a dim (or all entries), ``cumprod`` per prefix: a product of ``N`` activations,
    explained by the uniform rule (AttnLRP's for ``N = 2``, Achtibat et al. 2024): ``R_i = R_y / N``; for the prefix
    products ``y_k`` (``k + 1`` factors), ``R_i = sum_{k >= i} R_k / (k + 1)``. Needs no operand values."""

    def known_inputs(self, node):
        return [saved.get(node, "self", None)]

    def saved_output(self, node):
        result = saved.get(node, "result", None)
        return None if result is None else (result,)

    def forward(self, node, inputs):
        x = inputs[0]
        if saved.op_name(node) == "CumprodBackward":
            return (x.cumprod(saved.get(node, "dim")),)
        if saved.has(node, "dim"):
            return (x.prod(saved.get(node, "dim"), saved.get(node, "keepdim")),)
        return (x.prod(),)

    def relevance(self, ctx):
        node, r = ctx.node, ctx.relevance[0]
        shape = edge_shape(ctx, 0)
        if saved.op_name(node) == "CumprodBackward":
            dim = saved.get(node, "dim") % max(len(shape), 1)
            count = torch.arange(1, shape[dim] + 1 if shape else 2, dtype=r.dtype)
            count = count.reshape([-1] + [1] * (len(shape) - dim - 1)) if shape else count[:1].reshape(())
            return [(r / count).flip(dim).cumsum(dim).flip(dim) if shape else r]
        if not saved.has(node, "dim"):
            return [(r / max(shape.numel(), 1)).expand(shape).clone()]
        dim = saved.get(node, "dim") % max(len(shape), 1)
        if not saved.get(node, "keepdim"):
            r = r.unsqueeze(dim)
        return [(r / shape[dim]).expand(shape).clone()]


@register("PutBackward")
class PutRule(OpRule):
    """``y = x.put(index, source, accumulate)`` (entries of the flattened ``x``): an overwrite
    (``accumulate=False``) routes exactly, ``R_source`` is ``R_y`` at the written entries and ``R_x`` the rest; with
    ``accumulate=True`` every written entry is a sum ``x_i + sum of the sources sent to i``, shared proportionally as
    :class:`IndexAddRule`."""

    def known_inputs(self, node):
        return [None, saved.get(node, "source", None)]

    def needs(self, node, graph):
        return (0, 1) if saved.get(node, "accumulate") else ()

    def forward(self, node, inputs):
        return (inputs[0].put(saved.get(node, "index"), inputs[1], saved.get(node, "accumulate")),)

    def relevance(self, ctx):
        if not saved.get(ctx.node, "accumulate"):
            return routed(ctx)
        (x, src), index = ctx.inputs, saved.get(ctx.node, "index")
        return placed_sum_relevance(ctx, x, src.to(x.dtype), put=lambda base, s: base.put(index, s, True),
                                    take=lambda t: t.take(index))


@register("UnsafeIndexPutBackward", "IndexPutImplBackward")
class UnsafeIndexPutRule(IndexPutRule):
    """``aten._unsafe_index_put`` / ``aten._index_put_impl_`` (what decomposed ``x[idx] = v`` and
    ``index_put_`` lower to): the same op as :class:`IndexPutRule` -- routing for an overwrite, a proportional sum
    with ``accumulate=True``."""

    def constant_edges(self, node, call):  # aten._unsafe_index_put(self, indices, values, accumulate)
        return {0: call.arg(0, "self"), 1: call.arg(2, "values")} if call.is_one_of(
            "_unsafe_index_put", "_index_put_impl") else {}


#: elementwise losses: node -> per-element loss ``l(x, t)`` from the node's saved arguments (``reduction="none"``)
_ELEMENTWISE_LOSSES = {
    "MseLossBackward": lambda n, x, t: F.mse_loss(x, t, reduction="none"),
    "HuberLossBackward": lambda n, x, t: F.huber_loss(x, t, reduction="none", delta=saved.get(n, "delta")),
    "SmoothL1LossBackward": lambda n, x, t: F.smooth_l1_loss(x, t, reduction="none", beta=saved.get(n, "beta")),
    "SoftMarginLossBackward": lambda n, x, t: F.soft_margin_loss(x, t, reduction="none"),
    "BinaryCrossEntropyBackward": lambda n, x, t: F.binary_cross_entropy(
        x, t, saved.get(n, "weight", None), reduction="none"),
    "BinaryCrossEntropyWithLogitsBackward": lambda n, x, t: F.binary_cross_entropy_with_logits(
        x, t, saved.get(n, "weight", None), reduction="none", pos_weight=saved.get(n, "pos_weight", None)),
}
_REDUCTIONS = {0: "none", 1: "mean", 2: "sum"}


@register(*_ELEMENTWISE_LOSSES, "NllLossBackward", "NllLoss2DBackward")
class LossRule(OpRule):
    """Losses ``L = reduce_i l_i(x_i, t_i)`` (MSE, Huber, smooth L1, soft margin, binary cross-entropy with or
    without logits; negative log-likelihood ``l_i = -w_{t_i} x_{i, t_i}``), explained with respect to the
    prediction ``x``: the per-element function passes relevance by the identity rule and the reduction (sum, or
    mean: the ``1/N`` cancels) splits it as :class:`SumRule`,

    ``R_{x_i} = |l_i| / sum_j |l_j| * R_L``

    (the z rule: ``l_i / stab(sum_j l_j)``; ``reduction="none"``: ``R_{x_i} = R_{l_i}``). For the NLL each sample's
    share goes to the logit of its target class, ignored samples get none. The target (and class weights) are
    labels, not evidence: they get no relevance."""

    def known_inputs(self, node):
        vals = [saved.get(node, "self", None), saved.get(node, "target", None)]
        return vals + [None] * (len(node.next_functions) - 2)

    def needs(self, node, graph):
        return (0, 1)

    def forward_needs(self, node):
        return (0, 1)

    def _per_element(self, node, x, t):
        name = saved.op_name(node)
        if name in _ELEMENTWISE_LOSSES:
            return _ELEMENTWISE_LOSSES[name](node, x, t)
        return F.nll_loss(x, t, saved.get(node, "weight", None), reduction="none",
                          ignore_index=saved.get(node, "ignore_index"))

    def forward(self, node, inputs):
        x, t = inputs[0], inputs[1]
        name = saved.op_name(node)
        reduction = _REDUCTIONS[saved.get(node, "reduction")]
        if name in _ELEMENTWISE_LOSSES:
            return (_ELEMENTWISE_LOSSES[name](node, x, t).sum() if reduction == "sum" else
                    _ELEMENTWISE_LOSSES[name](node, x, t).mean() if reduction == "mean" else
                    _ELEMENTWISE_LOSSES[name](node, x, t),)
        return (F.nll_loss(x, t, saved.get(node, "weight", None), reduction=reduction,
                           ignore_index=saved.get(node, "ignore_index")),)

    def relevance(self, ctx):
        node, r = ctx.node, ctx.relevance[0]
        x, t = ctx.inputs[0], ctx.inputs[1]
        losses = self._per_element(node, x, t).to(r.dtype)
        if _REDUCTIONS[saved.get(node, "reduction")] == "none":
            rel = r
        elif ctx.config.add_rule == "z":
            rel = losses * (r / stabilize(losses.sum(), ctx.config.epsilon))
        else:
            rel = _share(losses.abs(), r, list(range(losses.dim())), False)
        if saved.op_name(node) in _ELEMENTWISE_LOSSES:
            out = rel.sum_to_size(x.shape) if rel.shape != x.shape else rel
        else:  # NLL: each sample's relevance to the logit of its class (dim 1, or the only dim)
            keep = t != saved.get(node, "ignore_index")
            cls = torch.where(keep, t, 0)
            rel = torch.where(keep, rel, 0.0)
            if x.dim() == 1:
                out = torch.zeros_like(x, dtype=r.dtype).scatter(0, cls.reshape(1), rel.reshape(1))
            else:
                out = torch.zeros_like(x, dtype=r.dtype).scatter(1, cls.unsqueeze(1), rel.unsqueeze(1))
        return [out] + [None] * (len(ctx.edges) - 1)


def _norm_weights(d, p: float, dim: int):
    """``|d|^p`` along ``dim`` (``p = inf``: the maximal ``|d|``; ``p = 0``: the non-zero entries), the weights of
    :class:`VectorNormRule`."""
    a = d.abs()
    if p in (float("inf"), float("-inf")):
        return (a == (a.amax(dim, keepdim=True) if p > 0 else a.amin(dim, keepdim=True))).to(d.dtype)
    return (d != 0).to(d.dtype) if p == 0 else a ** p


def difference_norm_relevance(ctx, a, b, r, p: float):
    """Relevance of ``y = ||a - b||_p`` over the last dim (``a``, ``b`` broadcast against each other and ``r``
    has their shape without the last dim): each coordinate of the difference gets its norm share
    ``|d_k|^p / sum_j |d_j|^p`` (:class:`VectorNormRule`), which the subtraction splits between ``a`` and ``b`` as
    :class:`AddRule` (``|a_k| / (|a_k| + |b_k|)``, or the z rule). Returns the two shares, summed back to the
    shapes of ``a`` and ``b``."""
    d = a - b
    rd = _share(_norm_weights(d, p, -1), r, [d.dim() - 1], False)
    return proportional([a.expand_as(d), -b.expand_as(d)], rd, ctx.config.add_rule == "z", ctx.config.epsilon,
                        [a.shape, b.shape])


@register("CdistBackward", "EuclideanDistBackward", "DistBackward", "PdistBackward")
class DistanceRule(OpRule):
    """Distances ``y = ||a - b||_p``: ``cdist`` (every row of ``x1`` against every row of ``x2``; the Euclidean
    ``_euclidean_dist`` it may call), ``dist`` (one distance between two tensors) and ``pdist`` (all pairs of rows
    of one tensor). A norm of a difference: the norm's rule (:class:`VectorNormRule`, ``|d_k|^p / sum |d_j|^p``)
    then the subtraction's (:class:`AddRule`), see :func:`difference_norm_relevance`. Conservative."""

    def known_inputs(self, node):
        name = saved.op_name(node)
        if name == "PdistBackward":
            return [saved.get(node, "self", None)]
        if name == "DistBackward":
            return [saved.get(node, "self", None), saved.get(node, "other", None)]
        return [saved.get(node, "x1", None), saved.get(node, "x2", None)]

    def saved_output(self, node):
        return (saved.get(node, "result"),)

    def _p(self, node):
        return float(saved.get(node, "p", 2.0))

    def forward(self, node, inputs):
        name, p = saved.op_name(node), self._p(node)
        if name == "PdistBackward":
            return (torch.pdist(inputs[0], p),)
        if name == "DistBackward":
            return (torch.dist(inputs[0], inputs[1], p),)
        if name == "EuclideanDistBackward":
            return (torch._euclidean_dist(inputs[0], inputs[1]),)
        return (torch.cdist(inputs[0], inputs[1], p),)

    def relevance(self, ctx):
        node, r = ctx.node, ctx.relevance[0]
        name, p = saved.op_name(node), self._p(node)
        if name == "PdistBackward":
            x = ctx.inputs[0].to(r.dtype)
            i, j = torch.triu_indices(x.shape[0], x.shape[0], 1)
            ra, rb = difference_norm_relevance(ctx, x[i], x[j], r, p)
            return [torch.zeros_like(x).index_add(0, i, ra).index_add(0, j, rb)]
        a, b = (t.to(r.dtype) for t in ctx.inputs)
        if name == "DistBackward":
            shape = torch.broadcast_shapes(a.shape, b.shape)
            ra, rb = difference_norm_relevance(ctx, a.expand(shape).reshape(1, -1), b.expand(shape).reshape(1, -1),
                                               r.reshape(1), p)
            out = [ra.reshape(shape).sum_to_size(a.shape), rb.reshape(shape).sum_to_size(b.shape)]
        else:
            ra, rb = difference_norm_relevance(ctx, a.unsqueeze(-2), b.unsqueeze(-3), r, p)
            out = [ra.squeeze(-2), rb.squeeze(-3)]
        return [o if ctx.has_edge(k) else None for k, o in enumerate(out)]


@register("IndexReduceBackward")
class IndexReduceRule(OpRule):
    """``y = x.index_reduce(dim, index, source, reduce, include_self)``: at each indexed position ``y`` reduces the
    rows of ``source`` sent there (and ``x``'s own entry with ``include_self``); other positions keep ``x``.
    ``"mean"`` shares proportionally as :class:`IndexAddRule` (the ``1/n`` cancels); ``"amax"``/``"amin"`` route to
    the entries that attain the extremum (the op's own backward: ties share evenly); ``"prod"``, a product of the
    ``n`` entries, splits uniformly, ``R / n`` each (:class:`ProdRule`)."""

    def known_inputs(self, node):
        return [saved.get(node, "self", None), saved.get(node, "source", None)]

    def saved_output(self, node):
        return (saved.get(node, "result"),)

    def forward(self, node, inputs):
        return (inputs[0].index_reduce(saved.get(node, "dim"), saved.get(node, "index"), inputs[1],
                                       saved.get(node, "reduce"), include_self=saved.get(node, "include_self")),)

    def needs(self, node, graph):
        return (0, 1)

    def relevance(self, ctx):
        node, r = ctx.node, ctx.relevance[0]
        reduce, dim, index = saved.get(node, "reduce"), saved.get(node, "dim"), saved.get(node, "index")
        if reduce in ("amax", "amin"):
            return routed(ctx)
        x, src = (t.to(r.dtype) for t in ctx.inputs)
        written = torch.zeros_like(x, dtype=torch.bool).index_fill(dim, index, True)
        own = None if saved.get(node, "include_self") else ~written
        if reduce == "mean":
            out = placed_sum_relevance(ctx, x, src, put=lambda base, s: base.index_add(dim, index, s),
                                       take=lambda t: t.index_select(dim, index), x_addend=own)
            return [o if ctx.has_edge(i) else None for i, o in enumerate(out)]
        counts = torch.zeros_like(x).index_add(dim, index, torch.ones_like(src))
        counts = counts + (1.0 if own is None else (~written).to(x.dtype))
        share = r / counts
        out = [share if own is None else torch.where(own, share, 0.0), share.index_select(dim, index)]
        return [o if ctx.has_edge(i) else None for i, o in enumerate(out)]
