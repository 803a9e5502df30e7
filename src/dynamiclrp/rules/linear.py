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
  ``R_a = 1/2 * a * df/da^T s`` and ``R_b = 1/2 * b * df/db^T s`` (conservative up to bias and epsilon); with
  ``LRPConfig(bilinear="cp")`` CP-LRP (Ali et al. 2022): a factor made by a softmax (the attention weights) or a
  gate nonlinearity is held constant and the other gets ``R = other * df/d(other)^T s``
  (:func:`held_product_relevance`); the uniform rule stays where neither factor is structurally such.

The bias absorbs its share ``b * s`` (as in Zennit). Parameters get relevance ``W * df/dW^T s`` only when the
caller asked to collect relevance for parameters.
"""
from __future__ import annotations

import copy

import torch

from .. import saved
from ..errors import DynamicLRPError
from .base import OpRule, edge_shape, register, stabilize, unbroadcast
from .specs import Epsilon, Gamma, ZPlus, ratio


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


def product_relevance(f, a, b, bias, r, cfg, gamma, act_a: bool, act_b: bool, want_params: bool, spec=None,
                      embed=None, z=None):
    """Relevance of ``a``, ``b`` and ``bias`` for ``z = f(a, b) + bias``; see the module doc for the rules.

    ``bias`` must already broadcast against ``z`` (or be ``None``). Returns ``(R_a, R_b, R_bias)``. With one
    parameter factor, ``spec`` (a :mod:`~dynamiclrp.rules.specs` rule, e.g. from ``layer_map``) decides; by
    default the global fields ``epsilon``/``gamma``/``zplus`` of ``cfg`` do. ``embed``: see ``_ProductRule.bound``.
    ``z``: the value of ``f(a, b) + bias`` when it is already known (the forward pass or a promise produced it,
    see :func:`known_output`): it is then not recomputed (no recomputation, issue 13).
    """
    eps = cfg.epsilon
    if act_a and act_b:  # bilinear: uniform rule
        if z is None:
            z = f(a, b) if bias is None else f(a, b) + bias
        s = ratio(r, z, eps)
        return 0.5 * a * _vjp(f, a, b, s, 0), 0.5 * b * _vjp(f, a, b, s, 1), None if bias is None else bias * s
    if not act_a and not act_b:
        return None, None, None
    if act_b:  # make the activation the first operand
        rx, rw, rb = product_relevance(_Swapped(f), b, a, bias, r, cfg, gamma, True, False, want_params, spec, embed,
                                       z)
        return rw, rx, rb
    if spec is None:  # the global fields: z+ over gamma over epsilon
        spec = ZPlus(cfg.epsilon) if cfg.zplus else Gamma(gamma, cfg.epsilon) if gamma > 0 else Epsilon(cfg.epsilon)
    return spec(_Op(f, embed, z), a, b, bias, r, want_params)


def known_output(ctx):
    """``z`` of a product as the forward pass or a promise already produced it, or ``None``: the outputs the
    engine rebuilt or retrieved (``ctx._outputs``: an Arg Node's value, a promise's forward, a consumer's saved
    input -- e.g. the GELU after a linear layer saved exactly this ``z``). Exact: ``z`` includes the bias. Not
    used under a merged batch norm (``fuse``), where the rule's ``z`` differs from the op's output."""
    outputs = ctx._outputs
    if not outputs or not isinstance(outputs[0], torch.Tensor):
        return None
    z = outputs[0]
    a = ctx.inputs[ctx.rule.a_edge] if ctx.rule is not None and hasattr(ctx.rule, "a_edge") else None
    if a is not None and (z.dtype != a.dtype or z.device != a.device):
        return None
    return z


class _Op:
    """``f`` with its transpose as a method, the interface the specs of :mod:`.specs` call (``embed``: see
    ``_ProductRule.bound``; ``z``: the known value of ``f(x, w) + bias`` for the operands the spec was called
    with, or ``None``, read by :func:`~dynamiclrp.rules.specs.output_of`)."""

    def __init__(self, f, embed=None, z=None):
        self.f, self.embed, self.z = f, embed, z

    def __call__(self, x, w):
        return self.f(x, w)

    def vjp(self, x, w, s, wrt):
        return _vjp(self.f, x, w, s, wrt)


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
    #: the engine hands this rule its output ``z`` where the forward pass kept it (see :func:`known_output`)
    reuses_output = True
    #: set on per-node copies by :func:`dynamiclrp.layer_map.plan`: the rule spec of this position (``None``: the
    #: config's global fields) and the ``(scale, shift)`` of a batch norm merged into this product (canonization)
    spec = None
    fuse = None
    embed = None

    def bound(self, spec=None, fuse=None, embed=None) -> "_ProductRule":
        """A copy of this rule for one node, with a position's ``spec`` and a merged batch norm's
        ``fuse = (scale, shift)``: the rule then sees ``W' = scale * W`` (per output channel) and
        ``b' = scale * b + shift`` in place of ``W`` and ``b`` (the forward recomputation is unchanged).
        ``embed = (input shape, fn)`` for a product that consumes the explained input through reshapes or pads:
        ``fn`` maps a tensor shaped like the input to the operand (used by ZBox, Flat, WSquare)."""
        rule = copy.copy(self)
        rule.spec, rule.fuse, rule.embed = spec, fuse, embed
        return rule

    def weight_channel_dim(self, node, weight_edge: int) -> int | None:
        """The dimension of the weight operand that indexes output channels (where a following batch norm's
        per-channel scale merges in), or ``None`` if this product cannot take one."""
        return -1 if weight_edge == self.b_edge else None

    def _fused(self, node, x_edge, a, b, bias):
        """Operands ``a``, ``b`` and bias with the merged batch norm folded in (see :meth:`bound`)."""
        scale, shift = self.fuse
        w_edge = self.b_edge if x_edge == self.a_edge else self.a_edge
        w = b if w_edge == self.b_edge else a
        dim = self.weight_channel_dim(node, w_edge) % w.dim()
        w = w * scale.to(w.dtype).reshape((-1,) + (1,) * (w.dim() - 1 - dim))
        z_dim = (a if x_edge == self.a_edge else b).dim()
        b0 = torch.zeros((), dtype=w.dtype) if bias is None else bias
        bias = self.bias_view(node, scale.to(w.dtype), z_dim) * b0 + self.bias_view(node, shift.to(w.dtype), z_dim)
        return (a, w, bias) if w_edge == self.b_edge else (w, b, bias)

    def known_inputs(self, node):
        vals = [None] * len(node.next_functions)
        vals[self.a_edge] = saved.get(node, self.a_name, None)
        vals[self.b_edge] = saved.get(node, self.b_name, None)
        return vals

    def needs(self, node, graph):
        return range(len(node.next_functions))

    def forward_needs(self, node):
        return self.needs(node, None)

    def factor_edges(self, node) -> tuple:
        """The edges of the two factors of the product (the engine reads where data enters from them)."""
        return (self.a_edge, self.b_edge)

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
        if ctx.want_params and not any(act):  # relevance for parameters: data outside the graph x parameter
            # (the constant plays the input), or parameter x parameter (LoRA's B @ A: the uniform rule)
            live = [ctx.has_edge(i) for i in (self.a_edge, self.b_edge)]
            act = [True, True] if all(live) else [not e for e in live] if any(live) else act
        gamma = cfg.gamma_conv if self.conv else cfg.gamma_linear
        if self.fuse is not None and act[0] != act[1]:
            a, b, bias = self._fused(node, self.a_edge if act[0] else self.b_edge, a, b, bias)
        z = known_output(ctx) if self.fuse is None else None  # no recomputation of f(a, b) where z is known
        if z is not None and z.shape != ctx.relevance[0].shape:
            z = None
        held = None
        if act[0] and act[1] and cfg.bilinear == "cp":  # CP-LRP: attention weights / a gate factor are constant
            held = ctx.graph.held_factor_edge(node, (self.a_edge, self.b_edge))
        if held is not None:
            ra, rb, rbias = held_product_relevance(f, a, b, bias, ctx.relevance[0], cfg.epsilon,
                                                   held=0 if held == self.a_edge else 1, z=z)
        else:
            ra, rb, rbias = product_relevance(f, a, b, bias, ctx.relevance[0], cfg, gamma, act[0], act[1],
                                              ctx.want_params, self.spec, self.embed, z)
        if self.fuse is not None:
            rbias = None  # the merged bias also holds the batch norm's shift: no share for the product's own bias
        out = [None] * len(ctx.edges)
        out[self.a_edge], out[self.b_edge] = ra, rb
        if self.bias_edge is not None and rbias is not None and ctx.has_edge(self.bias_edge) and (
                ctx.want_params or not ctx.is_param(self.bias_edge)):
            out[self.bias_edge] = unbroadcast(rbias, edge_shape(ctx, self.bias_edge))
        return out


def held_product_relevance(f, a, b, bias, r, epsilon: float, held: int, z=None):
    """CP-LRP (Ali et al., ICML 2022, as LXT 2.1's ``stop_gradient``) for ``z = f(a, b) + bias`` with both operands
    activations: factor ``held`` (0: ``a``, 1: ``b``; the attention weights or a gate) is a constant, so ``z`` is
    linear in the other factor and the epsilon rule gives it everything: with ``s = R_z / stab(z)``,
    ``R_other = other * df/d(other)^T s``, ``R_held = 0`` (``None``) and the bias keeps ``bias * s``.
    Returns ``(R_a, R_b, R_bias)``; ``z``: its value when already known (not recomputed)."""
    if z is None:
        z = f(a, b) if bias is None else f(a, b) + bias
    s = ratio(r, z, epsilon)
    other = (a, b)[1 - held]
    rel = other * _vjp(f, a, b, s, 1 - held)
    rbias = None if bias is None else bias * s
    return (None, rel, rbias) if held == 0 else (rel, None, rbias)


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


class Dot:
    """``f(a, b) = sum_i a_i b_i`` (``torch.dot``; ``torch.vdot`` of real vectors) with closed-form transposes."""

    def __call__(self, a, b):
        return torch.dot(a, b)

    def vjp(self, a, b, s, wrt):
        return s * (b if wrt == 0 else a)


@register("DotBackward", "VdotBackward")
class DotRule(_ProductRule):
    """``z = sum_i a_i b_i`` (``torch.dot``, ``torch.vdot``; real vectors): a product like :class:`MatmulRule`.
    With one factor a parameter or constant it is a linear map of the other, explained by the epsilon / gamma /
    z+ rule (epsilon: ``R_{x_i} = x_i w_i R_z / stab(z)``, Bach et al. 2015); with both factors activations the
    uniform bilinear rule ``R_{a_i} = R_{b_i} = a_i b_i R_z / (2 stab(z))`` (Achtibat et al. 2024).
    (``spectral_norm``'s ``sigma = vdot(u, W v)`` is a function of the weight only: no relevance reaches it
    unless parameters are explained.)"""

    def known_inputs(self, node):
        b_name = "other" if saved.op_name(node) == "VdotBackward" else "tensor"
        return [saved.get(node, "self", None), saved.get(node, b_name, None)]

    def f(self, node):
        return Dot()

    def relevance(self, ctx):
        if any(x is not None and x.is_complex() for x in ctx.inputs):
            raise DynamicLRPError(f"{saved.full_name(ctx.node)}: LRP of complex vectors is not defined; explain "
                                  "the real and imaginary parts as separate real products")
        return super().relevance(ctx)


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

    def weight_channel_dim(self, node, weight_edge):
        return 0 if weight_edge == self.b_edge else None


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

    def weight_channel_dim(self, node, weight_edge):  # W: [out, in / groups, *k]; transposed convs are not merged
        return 0 if weight_edge == self.b_edge and not saved.get(node, "transposed") else None

    def _add_bias(self, node, out, bias):
        return out + self.bias_view(node, bias, out.dim()) if bias is not None else out


@register("AffineGridGeneratorBackward")
class AffineGridRule(OpRule):
    """``grid = affine_grid(theta, size)`` (spatial transformers): ``grid = base @ theta^T``, linear in ``theta``
    with the constant pixel coordinates ``base``: the epsilon rule of a bias-free linear map,
    ``R_theta = theta * J^T (R_grid / stab(grid))`` (gradient x input when epsilon -> 0). A grid feeding
    ``grid_sample`` receives no relevance (:class:`~dynamiclrp.rules.reduction.GridSampleRule`), so in a spatial
    transformer ``theta`` gets none either."""

    def needs(self, node, graph):
        return (0,)

    def forward(self, node, inputs):
        return (torch.nn.functional.affine_grid(inputs[0], list(saved.get(node, "size")),
                                                align_corners=saved.get(node, "align_corners")),)

    def relevance(self, ctx):
        theta, r = ctx.inputs[0], ctx.relevance[0]
        grid = self.forward(ctx.node, [theta])[0]
        return [theta * ctx.vjp(r / stabilize(grid, ctx.config.epsilon))[0]]


class _ScaledProduct:
    """``f(a, b) = alpha * g(a, b)`` for a bilinear ``g`` (transposes through autograd)."""

    def __init__(self, g, alpha=1):
        self.g, self.alpha = g, alpha

    def __call__(self, a, b):
        out = self.g(a, b)
        return out if self.alpha == 1 else self.alpha * out


def _batch_sum_mm(a, b):
    return torch.matmul(a, b).sum(0)


@register("AddmvBackward", "AddrBackward", "AddbmmBackward")
class AddmvRule(AddmmRule):
    """``z = beta * s + alpha * f(a, b)`` with ``f`` the matrix-vector product (``addmv``), the outer product
    (``addr``) or the batch-summed matrix product ``sum_i a_i @ b_i`` (``addbmm``): bilinear products with a bias,
    explained as :class:`AddmmRule` (epsilon / gamma / z+ beside a parameter, the uniform rule between two
    activations; the bias keeps its share ``beta * s * R_z / stab(z)``)."""

    _NAMES = {"AddmvBackward": ("mat", "vec", torch.mv), "AddrBackward": ("vec1", "vec2", torch.outer),
              "AddbmmBackward": ("batch1", "batch2", _batch_sum_mm)}

    def known_inputs(self, node):
        a, b, _g = self._NAMES[saved.op_name(node)]
        return [None, saved.get(node, a, None), saved.get(node, b, None)]

    def f(self, node):
        return _ScaledProduct(self._NAMES[saved.op_name(node)][2], saved.get(node, "alpha", 1))

    def weight_channel_dim(self, node, weight_edge: int):
        return None

    def constant_edges(self, node, call):  # torch.addmv(input, mat, vec), torch.addr(input, vec1, vec2), ...
        return {0: call.arg(0, "input")} if call.is_one_of("addmv", "addr", "addbmm") else {}


@register("SlowConv2DBackward", "SlowConv3DBackward", "SlowConvDilated2DBackward", "SlowConvDilated3DBackward",
          "SlowConvTranspose2DBackward", "SlowConvTranspose3DBackward", "MkldnnConvolutionBackward")
class BackendConvolutionRule(ConvolutionRule):
    """Convolutions called through a backend's own op (``thnn_conv2d``, ``slow_conv3d``, ``slow_conv_dilated2d``,
    ``slow_conv_transpose2d``/``3d``, ``mkldnn_convolution``) rather than ``aten.convolution``: the same
    ``z = conv(x, W) + b`` and the same rule as :class:`ConvolutionRule`, with the arguments the node saved
    (dilation 1, no output padding, one group where it saved none)."""

    def known_inputs(self, node):
        return [saved.get(node, "self", None), saved.get(node, "weight", None), None]

    def _transposed(self, node):
        return "Transpose" in saved.op_name(node)

    def f(self, node):
        nd = len(saved.get(node, "stride"))
        return Convolution(saved.get(node, "stride"), saved.get(node, "padding"),
                           saved.get(node, "dilation", (1,) * nd), self._transposed(node),
                           saved.get(node, "output_padding", (0,) * nd), saved.get(node, "groups", 1))

    def weight_channel_dim(self, node, weight_edge):
        return 0 if weight_edge == self.b_edge and not self._transposed(node) else None


@register("TrilinearBackward")
class TrilinearRule(OpRule):
    """``z = _trilinear(i1, i2, i3)`` (``nn.Bilinear``: ``z_o = sum_jk x1_j W_ojk x2_k``, its bias added after): a
    product of three operands. The parameters among them (``W``) are held as weights and the ``k`` activations
    share by the uniform rule (AttnLRP's for ``k = 2``; the epsilon rule for ``k = 1``):
    ``R_a = (1 / k) * a * J_a^T (R_z / stab(z))`` for each activation ``a`` -- conservative up to epsilon, as
    ``sum_a <a, J_a^T s> = <z, s>`` per operand (``z`` is linear in each)."""

    def known_inputs(self, node):
        return [saved.get(node, name, None) for name in ("i1", "i2", "i3")]

    def forward(self, node, inputs):
        args = [list(saved.get(node, k)) for k in ("expand1", "expand2", "expand3", "sumdim")]
        return (torch._trilinear(*inputs, *args),)

    def relevance(self, ctx):
        z = self.forward(ctx.node, ctx.inputs)[0]
        grads = ctx.vjp(ctx.relevance[0] / stabilize(z, ctx.config.epsilon))
        act = [i for i in range(3) if ctx.has_edge(i) and not ctx.is_param(i)]
        return [ctx.inputs[i] * grads[i] / len(act) if i in act else None for i in range(3)]


class _ConvTbc:
    """``f(x, w) = conv_tbc(x, w, 0, pad)``: a 1-D convolution of ``x`` [time, batch, in] with ``w``
    [kernel, in, out] (transposes through autograd)."""

    def __init__(self, pad):
        self.pad = pad

    def __call__(self, x, w):
        return torch.conv_tbc(x, w, torch.zeros(w.shape[-1], dtype=x.dtype, device=x.device), self.pad)


@register("ConvTbcBackward")
class ConvTbcRule(ConvolutionRule):
    """``z = conv_tbc(x, W, b, pad)`` (fairseq's time-batch-channel convolution): ``conv1d`` in another layout,
    explained as :class:`ConvolutionRule` (epsilon / gamma / z+, the bias keeping its share)."""

    def known_inputs(self, node):
        return [saved.get(node, "self", None), saved.get(node, "weight", None), saved.get(node, "bias", None)]

    def f(self, node):
        return _ConvTbc(saved.get(node, "pad"))

    def bias_view(self, node, bias, z_dim):
        return bias

    def weight_channel_dim(self, node, weight_edge):
        return None  # channels last: no batch norm merging
