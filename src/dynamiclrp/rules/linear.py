"""Products with weights or between activations: mm, addmm, bmm, baddbmm, convolution, linear.

With ``z = f(x, W) + b`` (``f`` bilinear: matrix product or convolution) and ``s = R_z / stab(z)``:

* epsilon rule (Bach et al. 2015): ``R_x = x * df/dx^T s`` -- computed with the op's transpose;
* generalised gamma rule (Montavon et al. 2019; Zennit's ``Gamma``): with ``W+ = W + g*max(W,0)`` and
  ``W- = W + g*min(W,0)``, outputs ``z > 0`` use ``z_p = f(x+, W+) + f(x-, W-) + b + g*max(b,0)`` and give
  ``R_x = x+ * f^T_{W+}(s_p) + x- * f^T_{W-}(s_p)``; outputs ``z < 0`` swap ``W+``/``W-`` (and use
  ``b + g*min(b,0)``). ``gamma_linear`` applies to matrix products, ``gamma_conv`` to convolutions;
* z+ rule (``zplus=True``): ``z = f(x+, max(W,0)) + f(x-, min(W,0)) + max(b,0)``,
  ``R_x = x+ * f^T_{W>0}(s) + x- * f^T_{W<0}(s)``;
* both operands activations (attention's ``Q K^T`` and ``A V``): AttnLRP's uniform rule for bilinear products,
  ``R_a = 1/2 * a * df/da^T s`` and ``R_b = 1/2 * b * df/db^T s`` (conservative up to bias and epsilon).

The bias absorbs its share ``b * s`` (as in Zennit). Parameters get relevance ``W * df/dW^T s`` only when the
caller asked to collect relevance for parameters.
"""
from __future__ import annotations

import torch

from .. import saved
from .base import OpRule, edge_shape, register, stabilize, unbroadcast


class Matmul:
    """``f(a, b) = alpha * (a @ b)`` with closed-form transposes (no autograd round trip)."""

    def __init__(self, alpha=1):
        self.alpha = alpha

    def __call__(self, a, b):
        out = torch.matmul(a, b)
        return out if self.alpha == 1 else self.alpha * out

    def vjp(self, a, b, s, wrt):
        s = s if self.alpha == 1 else self.alpha * s
        if a.dim() == 1 or b.dim() == 1:  # matrix-vector: let autograd handle the shapes
            return _autograd_vjp(torch.matmul, a, b, s, wrt)
        if wrt == 0:
            return (s @ b.mT).sum_to_size(a.shape)
        return (a.mT @ s).sum_to_size(b.shape)


class Convolution:
    """``f(x, w) = conv(x, w)`` with the transposes from ``aten.convolution_backward``."""

    def __init__(self, stride, padding, dilation, transposed, output_padding, groups):
        self.args = (stride, padding, dilation, transposed, output_padding, groups)

    def __call__(self, x, w):
        return torch.convolution(x, w, None, *self.args)

    def vjp(self, x, w, s, wrt):
        mask = [wrt == 0, wrt == 1, False]
        grads = torch.ops.aten.convolution_backward(s, x, w, None, *self.args, mask)
        return grads[wrt]


def _vjp(f, a, b, s, wrt: int):
    """Transpose of the bilinear map ``f`` in operand ``wrt`` applied to ``s``."""
    if hasattr(f, "vjp"):
        return f.vjp(a, b, s, wrt)
    return _autograd_vjp(f, a, b, s, wrt)


def _autograd_vjp(f, a, b, s, wrt: int):
    with torch.enable_grad():
        a_ = a.detach().requires_grad_(wrt == 0)
        b_ = b.detach().requires_grad_(wrt == 1)
        out = f(a_, b_)
        return torch.autograd.grad(out, a_ if wrt == 0 else b_, s)[0]


def product_relevance(f, a, b, bias, r, cfg, gamma, act_a: bool, act_b: bool, want_params: bool):
    """Relevance of ``a``, ``b`` and ``bias`` for ``z = f(a, b) + bias``; see the module doc for the rules.

    ``bias`` must already broadcast against ``z`` (or be ``None``). Returns ``(R_a, R_b, R_bias)``.
    """
    eps = cfg.epsilon
    if act_a and act_b:  # bilinear: uniform rule
        z = f(a, b) if bias is None else f(a, b) + bias
        s = r / stabilize(z, eps)
        return 0.5 * a * _vjp(f, a, b, s, 0), 0.5 * b * _vjp(f, a, b, s, 1), None if bias is None else bias * s
    if not act_a and not act_b:
        return None, None, None
    if act_b:  # make the activation the first operand
        rx, rw, rb = product_relevance(_Swapped(f), b, a, bias, r, cfg, gamma, True, False, want_params)
        return rw, rx, rb
    x, w = a, b
    zero = torch.zeros((), dtype=x.dtype)
    b0 = zero if bias is None else bias
    if cfg.zplus:
        wp, wn = w.clamp(min=0), w.clamp(max=0)
        xp, xn = x.clamp(min=0), x.clamp(max=0)
        s = r / stabilize(f(xp, wp) + f(xn, wn) + b0.clamp(min=0), eps)
        rx = xp * _vjp(f, xp, wp, s, 0) + xn * _vjp(f, xn, wn, s, 0)
        rw = wp * _vjp(f, xp, wp, s, 1) + wn * _vjp(f, xn, wn, s, 1) if want_params else None
        return rx, rw, None
    if gamma > 0:
        wp, wn = w + gamma * w.clamp(min=0), w + gamma * w.clamp(max=0)
        xp, xn = x.clamp(min=0), x.clamp(max=0)
        z = f(x, w) + b0
        zp = f(xp, wp) + f(xn, wn) + b0 + gamma * b0.clamp(min=0)
        zn = f(xp, wn) + f(xn, wp) + b0 + gamma * b0.clamp(max=0)
        sp = r * (z > 0) / stabilize(zp, eps)
        sn = r * (z < 0) / stabilize(zn, eps)
        rx = xp * (_vjp(f, xp, wp, sp, 0) + _vjp(f, xp, wn, sn, 0)) + \
            xn * (_vjp(f, xn, wn, sp, 0) + _vjp(f, xn, wp, sn, 0))
        rw = None
        if want_params:
            rw = wp * (_vjp(f, xp, wp, sp, 1) + _vjp(f, xn, wp, sn, 1)) + \
                wn * (_vjp(f, xn, wn, sp, 1) + _vjp(f, xp, wn, sn, 1))
        return rx, rw, None
    z = f(x, w) + b0
    s = r / stabilize(z, eps)
    rx = x * _vjp(f, x, w, s, 0)
    rw = w * _vjp(f, x, w, s, 1) if want_params else None
    return rx, rw, None if bias is None else bias * s


class _Swapped:
    """``g(x, w) = f(w, x)``, keeping ``f``'s closed-form transposes."""

    def __init__(self, f):
        self.f = f

    def __call__(self, x, w):
        return self.f(w, x)

    def vjp(self, x, w, s, wrt):
        return _vjp(self.f, w, x, s, 1 - wrt)


class _ProductRule(OpRule):
    """Shared plumbing: which edges are the two factors and the bias, and how to call ``f``."""

    a_edge, b_edge, bias_edge = 0, 1, None
    a_name, b_name = "self", "mat2"
    conv = False

    def known_inputs(self, node):
        vals = [None] * len(node.next_functions)
        vals[self.a_edge] = saved.get(node, self.a_name, None)
        vals[self.b_edge] = saved.get(node, self.b_name, None)
        return vals

    def needs(self, node, graph):
        return range(len(node.next_functions))

    def forward_needs(self, node):
        return self.needs(node, None)

    def f(self, node):
        raise NotImplementedError

    def bias_view(self, node, bias, z_dim):
        return bias

    def constant_edges(self, node, call):
        # F.linear(x, W, b) / F.conv*(x, W, b): a frozen bias is the third argument
        known = call.is_one_of("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                               "conv_transpose3d")
        return {self.bias_edge: call.arg(2, "bias")} if self.bias_edge == 2 and known else {}

    def forward(self, node, inputs):
        out = self.f(node)(inputs[self.a_edge], inputs[self.b_edge])
        if self.bias_edge is not None:
            out = self._add_bias(node, out, inputs[self.bias_edge])
        return (out,)

    def _add_bias(self, node, out, bias):
        return out + saved.get(node, "beta", 1) * self.bias_view(node, bias, out.dim()) if bias is not None else out

    def relevance(self, ctx):
        node, cfg = ctx.node, ctx.config
        a, b = ctx.inputs[self.a_edge], ctx.inputs[self.b_edge]
        f = self.f(node)
        bias = None
        if self.bias_edge is not None and ctx.inputs[self.bias_edge] is not None:
            bias = saved.get(node, "beta", 1) * self.bias_view(node, ctx.inputs[self.bias_edge], a.dim())
        act = [ctx.has_edge(i) and not ctx.is_param(i) for i in (self.a_edge, self.b_edge)]
        gamma = cfg.gamma_conv if self.conv else cfg.gamma_linear
        ra, rb, rbias = product_relevance(f, a, b, bias, ctx.relevance[0], cfg, gamma, act[0], act[1],
                                          ctx.want_params)
        out = [None] * len(ctx.edges)
        out[self.a_edge], out[self.b_edge] = ra, rb
        if self.bias_edge is not None and rbias is not None and ctx.has_edge(self.bias_edge) and (
                ctx.want_params or not ctx.is_param(self.bias_edge)):
            out[self.bias_edge] = unbroadcast(rbias, edge_shape(ctx, self.bias_edge))
        return out


def _scaled_matmul(node):
    return Matmul(saved.get(node, "alpha", 1))


@register("MmBackward", "BmmBackward", "MvBackward")
class MatmulRule(_ProductRule):
    """``z = a @ b`` (``torch.mm``/``bmm``/``mv``): epsilon/gamma/z+ when one factor is a parameter, uniform
    bilinear rule when both are activations (see module doc)."""

    def known_inputs(self, node):
        b_name = "vec" if saved.op_name(node) == "MvBackward" else "mat2"
        return [saved.get(node, "self", None), saved.get(node, b_name, None)]

    def f(self, node):
        return Matmul()


@register("AddmmBackward", "BaddbmmBackward")
class AddmmRule(_ProductRule):
    """``z = beta * bias + alpha * (a @ b)`` (``nn.Linear`` on 2-D inputs, GPT-2's Conv1D): as ``MatmulRule``
    with the bias absorbing its share. The bias value is read from its leaf, not through a promise."""

    a_edge, b_edge, bias_edge = 1, 2, 0

    def known_inputs(self, node):
        names = ("batch1", "batch2") if saved.op_name(node) == "BaddbmmBackward" else ("mat1", "mat2")
        return [None, saved.get(node, names[0], None), saved.get(node, names[1], None)]

    def f(self, node):
        return _scaled_matmul(node)

    def absorbable_constants(self, node):
        return (0,) if node.next_functions[0][0] is None else ()

    def constant_edges(self, node, call):  # F.linear(x, W, b) on 2-D inputs, or addmm(b, m1, m2)
        if call.is_one_of("linear"):
            return {0: call.arg(2, "bias")}
        return {0: call.arg(0, "input")} if call.is_one_of("addmm", "baddbmm") else {}


class GroupedMatmul:
    """``f(a, b) = grouped_mm(a, b, offs)``: rows ``offs[g-1]:offs[g]`` of ``a`` times ``b[g]`` (mixture-of-experts
    layers run every expert in one call this way)."""

    def __init__(self, offs):
        self.offs = offs

    def __call__(self, a, b):
        return torch._grouped_mm(a, b, offs=self.offs)


@register("GroupedMmBackward")
class GroupedMmRule(_ProductRule):
    """``z = grouped_mm(x, W, offs)`` (MoE experts, e.g. Mixtral): per expert ``g`` an ordinary product
    ``z_g = x_g @ W_g``, explained like :class:`MatmulRule` (epsilon/gamma/z+ with ``gamma_linear``; uniform
    bilinear rule if both operands are activations)."""

    def known_inputs(self, node):
        return [saved.get(node, "self", None), saved.get(node, "mat2", None)]

    def f(self, node):
        return GroupedMatmul(saved.get(node, "offs", None))


@register("LinearBackward")
class LinearRule(_ProductRule):
    """``z = x @ W^T + b`` (fused ``F.linear``): as ``MatmulRule`` with ``W^T``."""

    a_edge, b_edge, bias_edge = 0, 1, 2

    def known_inputs(self, node):
        return [saved.get(node, "self", saved.get(node, "input", None)), saved.get(node, "weight", None), None]

    def needs(self, node, graph):
        return [i for i in range(3) if i < 2 or node.next_functions[2][0] is not None]

    def f(self, node):
        return lambda x, w: torch.nn.functional.linear(x, w)


@register("ConvolutionBackward")
class ConvolutionRule(_ProductRule):
    """``z = conv(x, W) + b`` for any dimension, stride, padding, groups and transposed convolutions:
    epsilon / gamma (``gamma_conv``) / z+ with the convolution's own transpose."""

    a_edge, b_edge, bias_edge = 0, 1, 2
    conv = True

    def known_inputs(self, node):
        return [saved.get(node, "input", None), saved.get(node, "weight", None), None]

    def needs(self, node, graph):
        return [i for i in range(3) if i < 2 or node.next_functions[2][0] is not None]

    def f(self, node):
        return Convolution(saved.get(node, "stride"), saved.get(node, "padding"), saved.get(node, "dilation"),
                           saved.get(node, "transposed"), saved.get(node, "output_padding"),
                           saved.get(node, "groups"))

    def bias_view(self, node, bias, z_dim):
        return bias.reshape((1, -1) + (1,) * (z_dim - 2))

    def _add_bias(self, node, out, bias):
        return out + self.bias_view(node, bias, out.dim()) if bias is not None else out
