"""Elementwise ops: identity for one-input nonlinearities, and the AttnLRP rules for products and quotients.

Identity rule (AttnLRP, Achtibat et al. 2024): ``R_x = R_y`` for ``y = f(x)`` applied entrywise (ReLU, GELU, SiLU,
tanh, sigmoid, exp, log, sqrt, rsqrt, pow, neg, dropout...). Conservative by construction.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import saved
from .base import IdentityRule, OpRule, edge_shape, live_edges, proportional, register, unbroadcast


def _identity(name, result=None, inp=None, fwd=None, doc=""):
    cls = type(name, (IdentityRule,), {"result_name": result, "input_name": inp,
                                       "__doc__": f"Identity rule ``R_x = R_y`` for {doc}."})
    if fwd is not None:
        cls.forward = lambda self, node, inputs: (fwd(node, inputs[0]),)
    return cls


register("ReluBackward")(_identity("ReluRule", result="result", fwd=lambda n, x: torch.relu(x), doc="ReLU"))
register("GeluBackward")(_identity(
    "GeluRule", inp="self", doc="GELU",
    fwd=lambda n, x: F.gelu(x, approximate=saved.get(n, "approximate", "none"))))
register("SiluBackward")(_identity("SiluRule", inp="self", fwd=lambda n, x: F.silu(x), doc="SiLU"))
register("TanhBackward")(_identity("TanhRule", result="result", fwd=lambda n, x: torch.tanh(x), doc="tanh"))
register("SigmoidBackward")(_identity("SigmoidRule", result="result", fwd=lambda n, x: torch.sigmoid(x),
                                      doc="sigmoid"))
register("ExpBackward")(_identity("ExpRule", result="result", fwd=lambda n, x: torch.exp(x), doc="exp"))
register("LogBackward")(_identity("LogRule", inp="self", fwd=lambda n, x: torch.log(x), doc="log"))
register("SqrtBackward")(_identity("SqrtRule", result="result", fwd=lambda n, x: torch.sqrt(x), doc="sqrt"))
register("RsqrtBackward")(_identity("RsqrtRule", result="result", fwd=lambda n, x: torch.rsqrt(x), doc="rsqrt"))
register("ReciprocalBackward")(_identity("ReciprocalRule", result="result", fwd=lambda n, x: 1 / x,
                                         doc="reciprocal"))
register("NegBackward")(_identity("NegRule", fwd=lambda n, x: -x, doc="negation"))
register("AbsBackward")(_identity("AbsRule", inp="self", fwd=lambda n, x: x.abs(), doc="abs"))
register("SinBackward")(_identity("SinRule", inp="self", fwd=lambda n, x: x.sin(), doc="sin"))
register("CosBackward")(_identity("CosRule", inp="self", fwd=lambda n, x: x.cos(), doc="cos"))
register("ErfBackward")(_identity("ErfRule", inp="self", fwd=lambda n, x: torch.erf(x), doc="erf"))
register("LogSoftmaxBackward")(_identity(
    "LogSoftmaxRule", result="result", fwd=lambda n, x: torch.log_softmax(x, saved.get(n, "dim")),
    doc="log-softmax (treated entrywise, as is usual for the explained log-probability)"))
register("LeakyReluBackward")(_identity(
    "LeakyReluRule", inp="self", fwd=lambda n, x: F.leaky_relu(x, saved.get(n, "negative_slope")),
    doc="leaky ReLU"))
register("EluBackward")(_identity(
    "EluRule", inp="self", doc="ELU",
    fwd=lambda n, x: torch.ops.aten.elu(x, saved.get(n, "alpha"), saved.get(n, "scale"),
                                        saved.get(n, "input_scale"))))
register("SoftplusBackward")(_identity(
    "SoftplusRule", inp="self", doc="softplus",
    fwd=lambda n, x: F.softplus(x, saved.get(n, "beta"), saved.get(n, "threshold"))))
register("HardswishBackward")(_identity("HardswishRule", inp="self", fwd=lambda n, x: F.hardswish(x),
                                        doc="hard-swish"))
register("HardsigmoidBackward")(_identity("HardsigmoidRule", inp="self", fwd=lambda n, x: F.hardsigmoid(x),
                                          doc="hard-sigmoid"))
register("HardtanhBackward")(_identity(
    "HardtanhRule", inp="self", doc="hard-tanh / ReLU6",
    fwd=lambda n, x: F.hardtanh(x, saved.get(n, "min_val"), saved.get(n, "max_val"))))
register("ClampMinBackward")(_identity("ClampMinRule", inp="self", doc="clamp(min)",
                                       fwd=lambda n, x: x.clamp(min=saved.get(n, "min"))))
register("ClampBackward")(_identity("ClampRule", inp="self", doc="clamp",
                                    fwd=lambda n, x: x.clamp(saved.get(n, "min", None), saved.get(n, "max", None))))
register("NativeDropoutBackward")(_identity(
    "DropoutRule", doc="dropout (training mode)",
    fwd=lambda n, x: x * saved.get(n, "result1") * saved.get(n, "scale")))


@register("GeLUFunctionBackward")
class GeluFunctionRule(IdentityRule):
    """Identity rule ``R_x = R_y`` for BLOOM's GeLU, written as an ``autograd.Function`` (``GeLUFunction``) that
    saves its input. The forward is the Function's own; the rule refuses a node of that name that does not look
    elementwise (one saved tensor shaped like the output)."""

    def _input(self, node):
        tensors, _cls = saved.function_saved(node)
        shape = saved.output_shapes(node)[0]
        if len(tensors) != 1 or tensors[0].shape != shape or len(node.next_functions) != 1:
            raise NotImplementedError(f"{saved.full_name(node)} is not the elementwise GeLU this rule knows")
        return tensors[0]

    def known_inputs(self, node):
        return [self._input(node)]

    def forward(self, node, inputs):
        _tensors, cls = saved.function_saved(node)
        return (cls.apply(inputs[0]),)


@register("PowBackward")
class PowRule(IdentityRule):
    """Identity rule ``R_x = R_y`` for ``y = x ** p`` (``PowBackward0``: scalar exponent; ``PowBackward1``:
    tensor exponent, which gets no relevance)."""

    input_name = "self"

    def forward(self, node, inputs):
        exp = saved.get(node, "exponent")
        return (inputs[0] ** (inputs[1] if inputs[1:] and inputs[1] is not None else exp),)

    def known_inputs(self, node):
        vals = super().known_inputs(node)
        if len(vals) > 1:
            vals[1] = saved.get(node, "exponent", None)
        return vals

    def saved_output(self, node):
        result = saved.get(node, "result", None)
        return None if result is None else (result,)


@register("MulBackward")
class MulRule(OpRule):
    """Elementwise product ``y = a * b``.

    * one factor a constant or parameter (scaling, gating by a weight): ``R_a = R_y`` (all relevance to the
      activation);
    * one factor a function of the same activation as the other alone (an elementwise nonlinearity or a
      normalisation written out: ``x * sigmoid(x)``, HF's ``gelu_new`` ``0.5 x (1 + tanh(...))``, hard-swish
      ``x * relu6(x + 3) / 6``, RMSNorm ``x * rsqrt(mean(x^2) + eps)``, ``(x - mu) * rsqrt(var + eps)``):
      identity / constant statistics (AttnLRP, Achtibat et al. 2024: identity rule Eq. 9, normalisation statistics
      held constant; for gates the signal-take-all rule of Arras et al. 2017): ``R_p = R_y`` to the value factor
      and exactly 0 to the other, so constants inside it absorb nothing. A squeeze-excitation block
      ``x * sigmoid(W mean(x))`` is such a product too. See :meth:`dynamiclrp.graph.Graph.self_gated_edge`;
    * two different activations (SwiGLU's ``silu(W_g x) * W_u x``, Mamba's gates): AttnLRP's uniform rule
      ``R_a = R_b = R_y / 2`` (Achtibat et al. 2024, Eq. 7), or with ``LRPConfig(bilinear="cp")`` CP-LRP (Ali et
      al. 2022, as LXT 2.1): the gate (the factor made by a softmax or an elementwise nonlinearity, see
      :meth:`dynamiclrp.graph.Graph.held_factor_edge`) is held constant, ``R_value = R_y``, ``R_gate = 0``;
      uniform where no factor is structurally a gate.

    Relevance is summed back over broadcast dimensions.
    """

    def known_inputs(self, node):
        if len(node.next_functions) == 1:  # MulBackward1: scalar other
            return [saved.get(node, "self", None)]
        return [saved.get(node, "self", None), saved.get(node, "other", None)]

    def forward_needs(self, node):
        return range(len(node.next_functions))

    def forward(self, node, inputs):
        if len(inputs) == 1:
            return (inputs[0] * saved.get(node, "other"),)
        return (inputs[0] * inputs[1],)

    def relevance(self, ctx):
        r = ctx.relevance[0]
        n = len(ctx.edges)
        if n == 1:
            return [unbroadcast(r, edge_shape(ctx, 0))]
        act = [ctx.has_edge(i) and not ctx.is_param(i) for i in range(2)]
        if act[0] and act[1]:
            keep = ctx.graph.self_gated_edge(ctx.node)
            if keep is None and ctx.config.bilinear == "cp":
                held = ctx.graph.held_factor_edge(ctx.node)
                keep = None if held is None else 1 - held
            if keep is not None:
                return [unbroadcast(r, edge_shape(ctx, i)) if i == keep else None for i in range(2)]
            return [unbroadcast(r / 2, edge_shape(ctx, i)) for i in range(2)]
        if act[0] or act[1]:
            return [unbroadcast(r, edge_shape(ctx, i)) if act[i] else None for i in range(2)]
        # parameter * parameter: split evenly between what is in the graph
        live = [i for i in range(2) if ctx.has_edge(i)]
        return [unbroadcast(r / len(live), edge_shape(ctx, i)) if i in live else None for i in range(2)]


@register("DivBackward")
class DivRule(OpRule):
    """Quotient ``y = a / b``: the denominator acts as a (local) constant scale, so ``R_a = R_y`` and ``R_b = 0``
    -- for a normalisation written out (``x / ||x||``, ``(x - mu) / sqrt(var + eps)``) this is AttnLRP's constant
    statistics (Achtibat et al. 2024), whatever the denominator depends on. If only ``b`` is in the graph
    (``y = c / b``), ``R_b = R_y``."""

    def known_inputs(self, node):
        if len(node.next_functions) == 1:
            return [saved.get(node, "self", None)]
        return [saved.get(node, "self", None), saved.get(node, "other", None)]

    def forward(self, node, inputs):
        if len(inputs) == 1:
            return (inputs[0] / saved.get(node, "other"),)
        return (inputs[0] / inputs[1],)

    def relevance(self, ctx):
        r = ctx.relevance[0]
        if len(ctx.edges) == 1 or ctx.has_edge(0):
            return [unbroadcast(r, edge_shape(ctx, 0))] + [None] * (len(ctx.edges) - 1)
        return [None, unbroadcast(r, edge_shape(ctx, 1))]


# ------------------------------------------------------- op-driven coverage (issue 11): more elementwise ops

#: one-input elementwise functions explained by the identity rule: node name -> (saved input, saved result,
#: forward from the saved arguments, what it is). One implementation (:func:`_identity`), one parametrised test.
IDENTITY_OPS = {
    "AcosBackward": ("self", None, lambda n, x: torch.acos(x), "arccos"),
    "AcoshBackward": ("self", None, lambda n, x: torch.acosh(x), "arcosh"),
    "AsinBackward": ("self", None, lambda n, x: torch.asin(x), "arcsin"),
    "AsinhBackward": ("self", None, lambda n, x: torch.asinh(x), "arsinh"),
    "AtanBackward": ("self", None, lambda n, x: torch.atan(x), "arctan"),
    "AtanhBackward": ("self", None, lambda n, x: torch.atanh(x), "artanh"),
    "CoshBackward": ("self", None, lambda n, x: torch.cosh(x), "cosh"),
    "SinhBackward": ("self", None, lambda n, x: torch.sinh(x), "sinh"),
    "TanBackward": (None, "result", lambda n, x: torch.tan(x), "tan"),
    "CeilBackward": (None, None, lambda n, x: torch.ceil(x), "ceil (a step function)"),
    "FloorBackward": (None, None, lambda n, x: torch.floor(x), "floor (a step function)"),
    "RoundBackward0": (None, None, lambda n, x: torch.round(x), "round (a step function)"),
    "TruncBackward": (None, None, lambda n, x: torch.trunc(x), "trunc (a step function)"),
    "FracBackward": (None, None, lambda n, x: torch.frac(x), "frac"),
    "SignBackward": (None, None, lambda n, x: torch.sign(x), "sign (a step function)"),
    "SgnBackward": ("self", "result", lambda n, x: torch.sgn(x), "sgn of real tensors"),
    "Deg2RadBackward": (None, None, lambda n, x: torch.deg2rad(x), "deg2rad (a positive scale)"),
    "Rad2DegBackward": (None, None, lambda n, x: torch.rad2deg(x), "rad2deg (a positive scale)"),
    "DigammaBackward": ("self", None, lambda n, x: torch.digamma(x), "digamma"),
    "LgammaBackward": ("self", None, lambda n, x: torch.lgamma(x), "lgamma"),
    "PolygammaBackward": ("self", None, lambda n, x: torch.polygamma(saved.get(n, "n"), x), "polygamma"),
    "MvlgammaBackward": ("self", None, lambda n, x: torch.mvlgamma(x, saved.get(n, "p")), "mvlgamma"),
    "ErfcBackward": ("self", None, lambda n, x: torch.erfc(x), "erfc"),
    "ErfinvBackward": ("self", None, lambda n, x: torch.erfinv(x), "erfinv"),
    "Exp2Backward": (None, "result", lambda n, x: torch.exp2(x), "exp2"),
    "Expm1Backward": (None, "result", lambda n, x: torch.expm1(x), "expm1"),
    "Log10Backward": ("self", None, lambda n, x: torch.log10(x), "log10"),
    "Log1PBackward": ("self", None, lambda n, x: torch.log1p(x), "log1p"),
    "Log2Backward": ("self", None, lambda n, x: torch.log2(x), "log2"),
    "LogitBackward": ("self", None, lambda n, x: torch.logit(x, saved.get(n, "eps", None)), "logit"),
    "SincBackward": ("self", None, lambda n, x: torch.sinc(x), "sinc"),
    "I0Backward": ("self", None, lambda n, x: torch.i0(x), "Bessel i0"),
    "SpecialI0EBackward": ("self", "result", lambda n, x: torch.special.i0e(x), "Bessel i0e"),
    "SpecialI1Backward": ("self", "result", lambda n, x: torch.special.i1(x), "Bessel i1"),
    "SpecialI1EBackward": ("self", "result", lambda n, x: torch.special.i1e(x), "Bessel i1e"),
    "SpecialErfcxBackward": ("self", "result", lambda n, x: torch.special.erfcx(x), "erfcx"),
    "SpecialLogNdtrBackward": ("self", "result", lambda n, x: torch.special.log_ndtr(x), "log_ndtr"),
    "SpecialNdtriBackward": (None, "result", lambda n, x: torch.special.ndtri(x), "ndtri"),
    "SpecialEntrBackward": ("self", None, lambda n, x: torch.special.entr(x), "entr (-x log x)"),
    "LogSigmoidBackward": ("self", None, lambda n, x: F.logsigmoid(x), "log-sigmoid"),
    "MishBackward": ("self", None, lambda n, x: F.mish(x), "Mish"),
    "CeluBackward": ("self", None, lambda n, x: F.celu(x, saved.get(n, "alpha")), "CELU"),
    "HardshrinkBackward": ("self", None, lambda n, x: F.hardshrink(x, saved.get(n, "lambd")), "hard shrinkage"),
    "SoftshrinkBackward": ("self", None, lambda n, x: F.softshrink(x, saved.get(n, "lambd")), "soft shrinkage"),
    "ClampMaxBackward0": ("self", None, lambda n, x: x.clamp(max=saved.get(n, "max")), "clamp(max) by a scalar"),
    "RreluWithNoiseBackward": ("self", None, lambda n, x: x * saved.get(n, "noise"),
                               "randomized leaky ReLU (training mode: the recorded slopes)"),
    "FrexpBackward": (None, None, lambda n, x: torch.frexp(x).mantissa,
                      "frexp's mantissa (x over a power of two: a positive scale)"),
}

for _name, (_inp, _result, _fwd, _doc) in IDENTITY_OPS.items():
    register(_name)(_identity(_name.replace("Backward", "Rule").rstrip("0"), result=_result, inp=_inp, fwd=_fwd,
                              doc=_doc))


@register("GluBackward")
class GluRule(OpRule):
    """Gated linear unit ``y = a * sigmoid(b)`` with ``x = cat(a, b, dim)``: a product of two activations (the
    sigmoid passes relevance by the identity rule), explained by AttnLRP's uniform rule: ``R_a = R_b = R_y / 2``,
    so ``R_x = cat(R_y / 2, R_y / 2, dim)``."""

    def known_inputs(self, node):
        return [saved.get(node, "self", None)]

    def forward(self, node, inputs):
        return (F.glu(inputs[0], saved.get(node, "dim")),)

    def relevance(self, ctx):
        half = ctx.relevance[0] / 2
        return [torch.cat([half, half], saved.get(ctx.node, "dim"))]


@register("PreluKernelBackward")
class PreluRule(OpRule):
    """PReLU ``y = x if x > 0 else w * x`` with a learned slope ``w``: a leaky ReLU whose slope is a parameter
    (a product with a parameter, :class:`MulRule`'s case): ``R_x = R_y``, the slope gets none."""

    def known_inputs(self, node):
        return [saved.get(node, "self", None), saved.get(node, "weight", None)]

    def forward(self, node, inputs):
        return (torch.ops.aten._prelu_kernel(inputs[0], inputs[1]),)

    def relevance(self, ctx):
        return [ctx.relevance[0], None]


def _product_shares(ctx, r, edges, divide=False) -> dict:
    """``R`` of a product part ``t1 * t2`` (``t1 / t2`` with ``divide``) split as :class:`MulRule` (uniform between
    two activations, all to the activation beside a constant) or :class:`DivRule` (all to the numerator)."""
    live = [i for i in edges if ctx.has_edge(i)]
    if divide:
        to = [edges[0]] if ctx.has_edge(edges[0]) else live[:1]
    else:
        act = [i for i in live if not ctx.is_param(i)]
        to = act or live
    return {i: unbroadcast(r / len(to), edge_shape(ctx, i)) for i in to}


@register("AddcmulBackward", "AddcdivBackward")
class AddcmulRule(OpRule):
    """``y = s + v * t1 * t2`` (``addcmul``; timm ResMLP's ``Affine`` is ``addcmul(beta, alpha, x)``) and
    ``y = s + v * t1 / t2`` (``addcdiv``). A sum of ``c_s = s`` and ``c_p = v * t1 * t2`` split as :class:`AddRule`
    (``|c| / sum |c|``, or the signed z rule with ``add_rule="z"``); the product's share then follows
    :class:`MulRule` (all to the activation when the other factor is a parameter or constant, ``1/2`` each between
    two activations) or, for ``addcdiv``, :class:`DivRule` (all to the numerator). A constant ``s`` (a parameter,
    a buffer) is a bias and keeps its share."""

    def known_inputs(self, node):
        return [None, saved.get(node, "tensor1", None), saved.get(node, "tensor2", None)]

    def needs(self, node, graph):
        return (0, 1, 2)

    def constant_edges(self, node, call):  # torch.addcmul(input, tensor1, tensor2, value=...)
        return {0: call.arg(0, "input")} if call.is_one_of("addcmul", "addcdiv") else {}

    def _fn(self, node):
        return torch.addcdiv if saved.op_name(node) == "AddcdivBackward" else torch.addcmul

    def forward(self, node, inputs):
        return (self._fn(node)(inputs[0], inputs[1], inputs[2], value=saved.get(node, "value", 1)),)

    def relevance(self, ctx):
        s, t1, t2 = ctx.inputs
        r = ctx.relevance[0]
        part = self._fn(ctx.node)(torch.zeros((), dtype=t1.dtype), t1, t2, value=saved.get(ctx.node, "value", 1))
        r_s, r_p = proportional([s, part], r, ctx.config.add_rule == "z", ctx.config.epsilon,
                                [edge_shape(ctx, 0), r.shape])
        out = [r_s if ctx.has_edge(0) else None, None, None]
        divide = saved.op_name(ctx.node) == "AddcdivBackward"
        for i, share in _product_shares(ctx, r_p, (1, 2), divide).items():
            out[i] = share
        return out


@register("LerpBackward")
class LerpRule(OpRule):
    """``y = lerp(a, b, w) = (1 - w) * a + w * b``: a sum of ``c_a = (1 - w) a`` and ``c_b = w b`` split as
    :class:`AddRule` (``|c| / sum |c|``, or the z rule). A tensor weight ``w`` (``LerpBackward1``) is a mixing
    coefficient held constant, like a gate in CP-LRP: it gets no relevance."""

    def known_inputs(self, node):
        vals = [saved.get(node, "self", None), saved.get(node, "end", None)]
        return vals + [saved.get(node, "weight", None)] if len(node.next_functions) == 3 else vals

    def needs(self, node, graph):
        return range(len(node.next_functions))

    def _weight(self, node, inputs):
        return inputs[2] if len(inputs) == 3 and inputs[2] is not None else saved.get(node, "weight")

    def forward(self, node, inputs):
        return (torch.lerp(inputs[0], inputs[1], self._weight(node, inputs)),)

    def relevance(self, ctx):
        a, b = ctx.inputs[0], ctx.inputs[1]
        w = self._weight(ctx.node, ctx.inputs)
        shares = proportional([(1 - w) * a, w * b], ctx.relevance[0], ctx.config.add_rule == "z",
                              ctx.config.epsilon, [edge_shape(ctx, 0), edge_shape(ctx, 1)])
        return [sh if ctx.has_edge(i) else None for i, sh in enumerate(shares)] + [None] * (len(ctx.edges) - 2)


@register("HypotBackward")
class HypotRule(OpRule):
    """``y = hypot(a, b) = sqrt(a^2 + b^2)``: a 2-norm (see :class:`~dynamiclrp.rules.reduction.VectorNormRule`),
    ``R_a = a^2 / (a^2 + b^2) * R_y`` (an even split where both are zero)."""

    def known_inputs(self, node):
        return [saved.get(node, "self", None), saved.get(node, "other", None)]

    def needs(self, node, graph):
        return (0, 1)

    def saved_output(self, node):
        return (saved.get(node, "result"),)

    def forward(self, node, inputs):
        return (torch.hypot(inputs[0], inputs[1]),)

    def relevance(self, ctx):
        a, b = ctx.inputs
        shares = proportional([a * a, b * b], ctx.relevance[0], False, ctx.config.epsilon,
                              [edge_shape(ctx, 0), edge_shape(ctx, 1)])
        return [sh if ctx.has_edge(i) else None for i, sh in enumerate(shares)]


_SCALED = {"CopysignBackward": torch.copysign, "FmodBackward1": torch.fmod, "RemainderBackward1": torch.remainder,
           "LdexpBackward": torch.ldexp, "NextafterBackward": torch.nextafter}


@register(*_SCALED)
class FirstOperandRule(OpRule):
    """``y = f(x, o)`` where ``o`` only modifies ``x`` entrywise without contributing content: ``copysign`` (``o``
    picks a sign), ``fmod``/``remainder`` by a tensor (``o`` is a modulus), ``ldexp`` (``x * 2^o``: a scale),
    ``nextafter``. As :class:`DivRule`'s denominator, ``o`` acts as a local constant: ``R_x = R_y``,
    ``R_o = 0``."""

    def known_inputs(self, node):
        return [saved.get(node, "self", None), saved.get(node, "other", None)][: len(node.next_functions)]

    def saved_output(self, node):
        result = saved.get(node, "result", None)
        return None if result is None else (result,)

    def forward(self, node, inputs):
        if len(inputs) == 1:  # CopysignBackward1: the scalar sign is not saved, the result is (for this input)
            return (saved.get(node, "result"),)
        name = saved.full_name(node) if saved.full_name(node) in _SCALED else saved.op_name(node)
        return (_SCALED[name](inputs[0], inputs[1]),)

    def relevance(self, ctx):
        return [unbroadcast(ctx.relevance[0], edge_shape(ctx, 0)) if ctx.has_edge(0) else None] + [None] * (
            len(ctx.edges) - 1)


@register("XlogyBackward", "SpecialXlog1PyBackward")
class XlogyRule(OpRule):
    """``y = x * log(o)`` (``xlogy``; ``log1p`` for ``special.xlog1py``): a product of ``x`` and ``log(o)`` (the log
    passes relevance by the identity rule), explained as :class:`MulRule`: uniform ``R_y / 2`` each between two
    activations, all to the one in the graph beside a constant or parameter. (Overloads 1 and 2 have a scalar
    operand: all relevance to the tensor one.)"""

    def known_inputs(self, node):
        if saved.full_name(node).endswith("1"):  # scalar self: the one edge is other
            return [saved.get(node, "other", None)]
        return [saved.get(node, "self", None), saved.get(node, "other", None)][: len(node.next_functions)]

    def forward(self, node, inputs):
        fn = torch.special.xlog1py if saved.op_name(node) == "SpecialXlog1PyBackward" else torch.xlogy
        full = saved.full_name(node)
        if full.endswith("1"):  # scalar self
            return (fn(saved.get(node, "self"), inputs[0]),)
        if full.endswith("2"):  # scalar other
            return (fn(inputs[0], saved.get(node, "other")),)
        return (fn(inputs[0], inputs[1]),)

    def relevance(self, ctx):
        r = ctx.relevance[0]
        if len(ctx.edges) == 1:
            return [unbroadcast(r, edge_shape(ctx, 0))]
        out = [None, None]
        for i, share in _product_shares(ctx, r, (0, 1)).items():
            out[i] = share
        return out


@register("ThresholdBackward0")
class ThresholdRule(IdentityRule):
    """``y = x if x > t else v`` (``F.threshold``, ``nn.Threshold``; ReLU is ``t = v = 0``): identity rule
    ``R_x = R_y``. Autograd keeps ``t`` but not ``v``: ``v`` is read from the recorded forward call; unrecorded,
    recomputed entries at or below the threshold are unknown (NaN), see
    :class:`~dynamiclrp.rules.shape.MaskedFillRule`."""

    input_name = "self"

    def __init__(self, value=float("nan")):
        self.value = value

    def specialize(self, node, call):
        value = call.arg(2, "value") if call is not None and call.is_one_of("threshold") else None
        return type(self)(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else self

    def forward(self, node, inputs):
        x = inputs[0]
        return (torch.where(x > saved.get(node, "threshold"), x, torch.tensor(self.value, dtype=x.dtype)),)


#: one-input elementwise ops whose Python scalar argument autograd does not keep: node -> (names of the call that
#: makes it, (position, keyword) of each scalar argument, forward from the input and the recorded scalars)
SCALAR_ARG_OPS = {
    "FmodBackward0": (("fmod",), ((1, "other"),), lambda x, v: torch.fmod(x, *v)),
    "RemainderBackward0": (("remainder", "mod"), ((1, "other"),), lambda x, v: torch.remainder(x, *v)),
    "RoundBackward1": (("round",), ((1, "decimals"),), lambda x, v: torch.round(x, decimals=v[0])),
    "NanToNumBackward0": (("nan_to_num",), ((1, "nan"), (2, "posinf"), (3, "neginf")),
                          lambda x, v: torch.nan_to_num(x, *v)),
}


@register(*SCALAR_ARG_OPS)
class ScalarArgumentRule(IdentityRule):
    """Identity rule ``R_x = R_y`` for ``fmod``/``remainder`` by a Python scalar (a modulus, as
    :class:`FirstOperandRule`), ``round(x, decimals)`` and ``nan_to_num(x, nan, posinf, neginf)``. Autograd keeps
    none of their scalars: they are read from the recorded forward call (:meth:`specialize`); unrecorded, the
    recomputed output is unknown (NaN, see :class:`~dynamiclrp.rules.shape.MaskedFillRule`) -- except
    ``nan_to_num``'s, which is ``x`` itself wherever ``x`` is finite."""

    input_name = "self"

    def __init__(self, values=None):
        self.values = values

    def specialize(self, node, call):
        names, args, _fn = SCALAR_ARG_OPS[saved.full_name(node)]
        if call is None or not call.is_one_of(*names):
            return self
        values = tuple(call.arg(pos, kw) for pos, kw in args)
        if all(v is None or isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            return type(self)(values)
        return self

    def forward(self, node, inputs):
        x = inputs[0]
        name = saved.full_name(node)
        if self.values is not None:
            return (SCALAR_ARG_OPS[name][2](x, self.values),)
        unknown = torch.full_like(x, float("nan"))
        if name == "NanToNumBackward0":
            return (torch.where(torch.isfinite(x), x, unknown),)
        return (unknown,)


register("RenormBackward")(_identity(
    "RenormRule", inp="self", doc="renorm (sub-tensors rescaled by a positive factor: a local constant scale)",
    fwd=lambda n, x: torch.renorm(x, saved.get(n, "p"), saved.get(n, "dim"), saved.get(n, "maxnorm"))))


class _RandomRule(OpRule):
    """Random draws: their value is neither kept by autograd nor reproducible, so a promise that needs it fails,
    naming the op (draw it outside the explained graph, e.g. as a buffer, or under ``torch.no_grad()``)."""

    def forward_needs(self, node):
        return (0,)

    def forward(self, node, inputs):
        raise NotImplementedError(f"{saved.full_name(node)}: a random draw cannot be recomputed and autograd did "
                                  "not keep it; draw it outside the explained graph (e.g. under torch.no_grad())")


@register("UniformBackward", "NormalBackward0", "CauchyBackward", "ExponentialBackward", "GeometricBackward",
          "LogNormalBackward", "RandomBackward", "BernoulliBackward1", "BernoulliBackward2")
class RandomFillRule(_RandomRule):
    """In-place random fills (``x.uniform_()``, ``normal_``, ``cauchy_``, ``exponential_``, ``geometric_``,
    ``log_normal_``, ``random_``, ``bernoulli_(p)``): the output does not depend on ``x``'s values (nor on a
    tensor ``p``'s, only its distribution does), so no relevance flows back: ``R_x = 0`` (as for ``fill_``)."""

    def relevance(self, ctx):
        return [None] * len(ctx.edges)


@register("BernoulliBackward0", "NormalBackward1", "NormalBackward2", "NormalBackward3", "PoissonBackward",
          "StandardGammaBackward")
class SampleRule(_RandomRule):
    """Samples drawn from a distribution parametrised by a tensor: ``bernoulli(p)`` (a dropout-style mask),
    ``normal(mean, std)``, ``poisson(rate)``, ``_standard_gamma(alpha)``. Identity on the sampled entries: each
    sample's relevance goes to the parameter it was drawn with, ``R_p = R_y`` (the mean for ``normal(mean, std)``
    with both tensors; the std only scales the noise)."""

    def saved_output(self, node):
        result = saved.get(node, "result", None)
        return None if result is None else (result,)

    def relevance(self, ctx):
        r = ctx.relevance[0]
        return [unbroadcast(r, edge_shape(ctx, 0)) if ctx.has_edge(0) else None] + [None] * (len(ctx.edges) - 1)


_COMPARE = {"EqBackward": torch.eq, "NeBackward": torch.ne, "GeBackward": torch.ge, "GtBackward": torch.gt,
            "LeBackward": torch.le, "LtBackward": torch.lt}


@register(*_COMPARE)
class ComparisonRule(OpRule):
    """In-place comparisons ``x.gt_(o)`` (also ``eq_``, ``ne_``, ``ge_``, ``le_``, ``lt_``): ``y = step(x - o)``, a
    step function of the difference. As for ``sign`` (identity rule), the relevance passes to the difference, which
    splits it as :class:`~dynamiclrp.rules.reduction.AddRule` does: ``R_x = R_y`` against a Python scalar
    (``...Backward0``; the scalar is read from the recorded call, unknown otherwise), ``|x| / (|x| + |o|)`` (or the
    z rule) against a tensor ``o`` (``...Backward1``)."""

    def __init__(self, other=float("nan")):
        self.other = other

    def specialize(self, node, call):
        name = saved.op_name(node)[: -len("Backward")].lower()
        value = call.arg(1, "other") if call is not None and call.is_one_of(name) else None
        return type(self)(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else self

    def needs(self, node, graph):
        return live_edges(node) if len(node.next_functions) == 2 else ()

    def forward(self, node, inputs):
        other = inputs[1] if len(inputs) == 2 else self.other
        out = _COMPARE[saved.op_name(node)](inputs[0], other).to(inputs[0].dtype)
        if len(inputs) == 1 and other != other:  # the scalar was not recorded: the output is unknown
            out = torch.full_like(out, float("nan"))
        return (out,)

    def relevance(self, ctx):
        r = ctx.relevance[0]
        if len(ctx.edges) == 1:
            return [r]
        x, o = ctx.inputs
        shares = proportional([x, -o], r, ctx.config.add_rule == "z", ctx.config.epsilon,
                              [edge_shape(ctx, 0), edge_shape(ctx, 1)])
        return [sh if ctx.has_edge(i) else None for i, sh in enumerate(shares)]


@register("ThresholdBackward1")
class ThresholdInplaceRule(ThresholdRule):
    """In-place ``F.threshold(x, t, v, inplace=True)``: as :class:`ThresholdRule` (its saved ``self`` is the
    output, so it is not taken for the input)."""

    input_name = None
