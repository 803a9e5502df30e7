"""Elementwise ops: identity for one-input nonlinearities, and the AttnLRP rules for products and quotients.

Identity rule (AttnLRP, Achtibat et al. 2024): ``R_x = R_y`` for ``y = f(x)`` applied entrywise (ReLU, GELU, SiLU,
tanh, sigmoid, exp, log, sqrt, rsqrt, pow, neg, dropout...). Conservative by construction.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import saved
from .base import IdentityRule, OpRule, edge_shape, register, unbroadcast


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
    * both factors activations (gating, attention-style products): AttnLRP's uniform rule
      ``R_a = R_b = R_y / 2`` (summed back over broadcast dimensions).
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
            return [unbroadcast(r / 2, edge_shape(ctx, i)) for i in range(2)]
        if act[0] or act[1]:
            return [unbroadcast(r, edge_shape(ctx, i)) if act[i] else None for i in range(2)]
        # parameter * parameter: split evenly between what is in the graph
        live = [i for i in range(2) if ctx.has_edge(i)]
        return [unbroadcast(r / len(live), edge_shape(ctx, i)) if i in live else None for i in range(2)]


@register("DivBackward")
class DivRule(OpRule):
    """Quotient ``y = a / b``: the denominator acts as a (local) constant scale, so ``R_a = R_y`` and ``R_b = 0``.
    If only ``b`` is in the graph (``y = c / b``), ``R_b = R_y``."""

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
