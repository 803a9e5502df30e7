"""The rule interface every operation family implements, the registry keyed by autograd node name, and helpers
shared by many rules (the Zennit-style stabiliser, un-broadcasting, vector-Jacobian products through the node).

A rule never holds traversal state: it maps (node, operand values, output relevance) to input relevance, so a
compiled plan can replay it.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from .. import saved

Tensor = torch.Tensor

#: The registry: autograd node name without overload digit (``"AddmmBackward"``) or with it
#: (``"MeanBackward1"``, exact names win) -> rule instance. Filled by :func:`register` at import time only.
RULES: dict[str, "OpRule"] = {}


def register(*names: str) -> Callable[[type], type]:
    """Class decorator: instantiate the rule once and file it under each autograd node name given."""

    def deco(cls):
        inst = cls()
        for name in names:
            if name in RULES:
                raise KeyError(f"two rules registered for {name}")
            RULES[name] = inst
        cls.names = names
        return cls

    return deco


def lookup(node, overrides=None) -> "OpRule | None":
    """The rule for an autograd node: user overrides first, exact class name, then the name without its digit."""
    full = saved.full_name(node)
    short = saved.op_name(node)
    for table in (overrides or {}, RULES):
        if full in table:
            return table[full]
        if short in table:
            return table[short]
    return None


class RuleContext:
    """What a rule sees when it distributes relevance at one node.

    Attributes
    ----------
    node: the autograd node.
    inputs: operand values, one per edge of ``node.next_functions`` (``None`` where unknown and unneeded).
    relevance: relevance of every output slot of the forward op (zeros where no relevance arrived).
    config: the :class:`~dynamiclrp.LRPConfig`.
    want_params: whether relevance for parameter operands is wanted (someone asked to collect it).
    """

    __slots__ = ("node", "inputs", "relevance", "config", "graph", "want_params", "_outputs", "rule")

    def __init__(self, node, rule, inputs, relevance, config, graph, want_params=False, outputs=None):
        self.node = node
        self.rule = rule
        self.inputs = inputs
        self.relevance = relevance
        self.config = config
        self.graph = graph
        self.want_params = want_params
        self._outputs = outputs

    @property
    def outputs(self) -> tuple:
        """The forward outputs of the op, rebuilt from ``inputs`` when not already known."""
        if self._outputs is None:
            self._outputs = tuple(self.rule.forward(self.node, self.inputs))
        return self._outputs

    @property
    def edges(self):
        return self.graph.edges[self.node]

    def has_edge(self, i: int) -> bool:
        """Whether input ``i`` is part of the graph (needs relevance at all)."""
        return self.edges[i][0] is not None

    def is_param(self, i: int) -> bool:
        """Whether input ``i`` is a constant or a parameter (seen through shape ops only)."""
        return self.graph.is_parameter_edge(self.node, i)

    def vjp(self, *grads) -> tuple:
        """The node's own backward function applied to ``grads`` (one per output slot): the exact transpose of
        the op's linearisation. Routing rules use it directly; proportional rules use it to spread a ratio."""
        dtypes = saved.output_dtypes(self.node)
        cast = [g.to(d) if g is not None and g.dtype != d else g for g, d in zip(grads, dtypes)]
        out = self.node(*cast)
        out = (out,) if isinstance(out, torch.Tensor) or out is None else tuple(out)
        dtype = grads[0].dtype if grads and grads[0] is not None else None
        return tuple(o.to(dtype) if o is not None and dtype is not None and o.dtype != dtype else o for o in out)


class OpRule:
    """How one family of autograd nodes is explained. Subclasses override what they need.

    The engine calls, per node:

    * :meth:`known_inputs` -- operand values available from saved tensors (one per edge, ``None`` if unknown);
      leaf values behind ``AccumulateGrad`` edges are filled in by the engine;
    * :meth:`needs` -- edges whose values the relevance rule cannot do without (missing ones create a Promise);
    * :meth:`forward_needs` -- edges whose values :meth:`forward` needs;
    * :meth:`saved_output` -- the outputs straight from saved tensors, if the op saved its result;
    * :meth:`forward` -- recompute the outputs from operand values (forward chaining of promises);
    * :meth:`relevance` -- distribute relevance (the LRP rule itself).
    """

    names: Sequence[str] = ()
    #: the rule treats a constant added to its input as a bias that absorbs relevance (the softmax)
    absorbs_input_constants: bool = False

    def known_inputs(self, node) -> list:
        return [None] * len(node.next_functions)

    def needs(self, node, graph) -> Sequence[int]:
        return ()

    def forward_needs(self, node) -> Sequence[int]:
        return range(len(node.next_functions))

    def specialize(self, node, call) -> "OpRule":
        """The rule for this very node, given the forward call that made it (a
        :class:`~dynamiclrp.constants.Call`, ``None`` if none was recorded). Most ops are fully described by their
        node, so this is ``self``; an op whose node does not say what it computed (``CopySlices``: which in-place
        op wrote into a view) returns a rule bound to the call. Called once per node, before propagation."""
        return self

    def absorbable_constants(self, node) -> Sequence[int]:
        """Edges that are *additive* constants (attention masks, ALiBi biases) which the engine may treat as a
        bias absorbed by a softmax downstream when autograd kept neither them nor the sum (see
        :mod:`dynamiclrp.rules.attention`). The rule then sees zeros in their place."""
        return ()

    def constant_edges(self, node, call) -> dict:
        """Values of edges outside the graph (frozen parameters, buffers, wrapped scalars), read from the
        recorded call that made ``node`` (a :class:`~dynamiclrp.constants.Call`): ``{edge: value or None}``.
        Empty by default: the rule needs no such value."""
        return {}

    def saved_output(self, node):
        return None

    def forward(self, node, inputs) -> tuple:
        raise NotImplementedError(f"{saved.full_name(node)}: forward recomputation is not implemented")

    def relevance(self, ctx: RuleContext) -> list:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------- helpers


def all_finite(t: Tensor) -> bool:
    """Whether every entry of ``t`` is finite. A finite sum proves it (NaN and Inf poison a sum) at a fraction of
    the cost of an elementwise test, which only a sum that overflowed needs."""
    return math.isfinite(float(t.sum())) or bool(torch.isfinite(t).all())


def stabilize(z: Tensor, epsilon: float) -> Tensor:
    """``z + epsilon * sign(z)`` with ``sign(0) = +1`` (Zennit's stabiliser): never zero, keeps the sign."""
    return z + epsilon * ((z >= 0).to(z.dtype) * 2 - 1)


def unbroadcast(t: Tensor | None, shape) -> Tensor | None:
    """Sum a broadcast relevance back to an operand's ``shape`` (relevance of copies adds up)."""
    if t is None:
        return None
    shape = torch.Size(shape)
    if t.shape == shape:
        return t
    return t.sum_to_size(shape)


def proportional(contributions: Sequence[Tensor | None], out_relevance: Tensor, signed: bool, epsilon: float,
                 shapes: Sequence) -> list:
    """Split ``out_relevance`` among additive contributions ``c_i`` (each broadcasting to the output shape).

    ``signed=False``: ``R_i = |c_i| / sum_j |c_j| * R`` (the paper's rule; where every addend is zero, the
    relevance is split evenly). ``signed=True``: ``R_i = c_i / stab(sum_j c_j) * R`` (the z-rule).
    Results are summed back to each operand's shape.
    """
    present = [c for c in contributions if c is not None]
    if signed:
        den = stabilize(sum(present), epsilon)
        weights = contributions
    else:
        weights = [None if c is None else c.abs() for c in contributions]
        den = sum(w for w in weights if w is not None)
        empty = den == 0
        if bool(empty.any()):  # all addends zero: weight 1 each (an exact even split, no tiny numbers)
            weights = [None if w is None else w + empty for w in weights]
            den = den + len(present) * empty
    ratio = out_relevance / den
    shares = [None if w is None else w * ratio for w in weights]
    if not all(all_finite(t) for t in shares if t is not None):
        # entries recomputed as unknown (see rules.shape.UNKNOWN) may only meet exactly zero relevance
        zero = out_relevance == 0
        shares = [None if t is None else torch.where(zero, torch.zeros((), dtype=t.dtype), t) for t in shares]
    return [None if t is None else unbroadcast(t, s) for t, s in zip(shares, shapes)]


def edge_shape(ctx: RuleContext, i: int):
    """The shape of operand ``i`` (from its value, or from the producer's metadata)."""
    if ctx.inputs[i] is not None:
        return ctx.inputs[i].shape
    child, slot = ctx.edges[i]
    return saved.output_shapes(child)[slot]


class RoutingRule(OpRule):
    """Ops that only move, copy, select or reshape entries (view, permute, slice, index, cat, max...).

    ``R_in = J^T R_out`` with ``J`` the op's 0/1 Jacobian: each output entry's relevance goes back to the input
    entry it was taken from (copies add up). Exactly what the node's own backward computes, so we call it.
    """

    def relevance(self, ctx):
        return routed(ctx)


def live_edges(node) -> list:
    """Indices of the node's inputs that are part of the graph (the others are constants autograd did not keep)."""
    return [i for i, (c, _) in enumerate(node.next_functions) if c is not None]


def routed(ctx: RuleContext) -> list:
    """``R_in = J^T R_out`` through the node's own backward, for the edges that are part of the graph."""
    grads = ctx.vjp(*ctx.relevance)
    return [g if ctx.has_edge(i) else None for i, g in enumerate(grads)]


class IdentityRule(OpRule):
    """Elementwise one-to-one ops whose relevance passes unchanged: ``R_in = R_out`` (AttnLRP's identity rule for
    nonlinearities such as ReLU, GELU, SiLU, tanh, exp...). Conservative by construction."""

    #: name of the saved tensor holding the op's result, if any (makes the node an Arg Node)
    result_name: str | None = None
    #: name of the saved tensor holding the op's input, if any
    input_name: str | None = None

    def known_inputs(self, node):
        vals = [None] * len(node.next_functions)
        if self.input_name is not None:
            vals[0] = saved.get(node, self.input_name, None)
        return vals

    def forward_needs(self, node):
        return (0,)

    def saved_output(self, node):
        if self.result_name is not None:
            out = saved.get(node, self.result_name, None)
            if out is not None:
                return (out,)
        return None

    def relevance(self, ctx):
        r = ctx.relevance[0]
        shape = edge_shape(ctx, 0)
        return [r.reshape(shape) if r.shape != shape else r] + [None] * (len(ctx.edges) - 1)


class FallbackRule(OpRule):
    """The loud generic rule used for ops without a rule when ``LRPConfig(unsupported="warn")``.

    One input with as many entries as the output: identity ``R_x = R_y`` (reshaped). Otherwise the op's own
    backward applied to the relevance, ``R_x = J^T R_y`` (exact for routing ops, an approximation otherwise).
    """

    def relevance(self, ctx):
        live = [i for i in range(len(ctx.edges)) if ctx.has_edge(i)]
        r = ctx.relevance[0]
        if len(live) == 1 and len(ctx.relevance) == 1:
            shape = edge_shape(ctx, live[0])
            if shape.numel() == r.numel():
                out = [None] * len(ctx.edges)
                out[live[0]] = r.reshape(shape)
                return out
        return routed(ctx)
