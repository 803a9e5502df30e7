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
#: Rules found by what a node *is* rather than by its name, tried after :data:`RULES`: ``(matches(node) -> bool,
#: rule)`` pairs, filled at import time only (any Python ``torch.autograd.Function``: :mod:`.function`).
MATCHERS: list = []


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
    """The rule for an autograd node: user overrides first, exact class name, then the name without its digit,
    then the first of :data:`MATCHERS` that recognises the node (e.g. any custom ``autograd.Function``)."""
    full = saved.full_name(node)
    short = saved.op_name(node)
    for table in (overrides or {}, RULES):
        if full in table:
            return table[full]
        if short in table:
            return table[short]
    for matches, rule in MATCHERS:
        if matches(node):
            return rule
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
    """``z + epsilon * sign(z)`` with ``sign(0) = +1`` (Zennit's stabiliser): never zero, keeps the sign.

    Three passes over ``z`` (compare, select ``+-epsilon``, add in place on that temporary) instead of six, with
    bit-identical results: ``z + (+-epsilon)`` is the same float either way (issue 13)."""
    e = z.new_full((), epsilon)
    return torch.where(z >= 0, e, -e).add_(z)


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
    Subclasses recompute the output with the op itself; the default :meth:`forward` is :func:`linear_forward`
    (``y = J x``, exact for every routing op), so ``RoutingRule()`` explains any op that only moves values.
    A routing rule reused for another op (``rule_overrides={"IndexSelectBackward": IndexRule()}``) whose
    ``forward`` reads a saved value that op does not have falls back to :func:`linear_forward` as well.
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("forward")
        if own is None:
            return

        def forward(self, node, inputs):
            try:
                return own(self, node, inputs)
            except AttributeError as err:
                mine = saved.op_name(node) in self.names or saved.full_name(node) in self.names
                if mine or "has no saved value" not in str(err):
                    raise  # the op this rule was written for, or not a missing saved value: a real error
                return linear_forward(node, inputs)

        forward.__doc__ = own.__doc__
        cls.forward = forward

    def relevance(self, ctx):
        return routed(ctx)

    def forward(self, node, inputs):
        return linear_forward(node, inputs)


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
    """The loud generic rule used for ops without a rule when ``LRPConfig(unsupported="warn")``: the epsilon rule
    of the op's linearisation, built from nothing but the node's own backward (its vjp ``g -> J^T g``).

    With operands ``x_i``, Jacobians ``J_i`` at the recorded point and ``z = sum_i J_i x_i`` (:func:`linear_forward`):

    ``R_xi = x_i * J_i^T (R_y / stab(z))``

    Conservative up to epsilon (``sum_i <x_i, J_i^T s> = <z, s>``) wherever ``z`` is not close to zero (it is
    zero for degree-0 homogeneous ops such as ``atan2``: there this rule carries no meaning). For a linear op
    (``z = y``) this is the epsilon rule: exact routing for ops that move or copy values (flip, index_select...:
    gradient x input), a proportional split for sums. For an elementwise nonlinearity (``J = diag f'(x)``) it is
    the identity ``R_x = R_y`` wherever ``f'(x) x != 0``. Anything else gets a documented approximation, with a
    warning.

    Operand values come from promises (or from ``self``/``other`` when the node saved them); the output is the
    saved ``result`` when the node kept it, else ``z = J x``, exact for positively homogeneous ops (routing,
    linear maps, max-like selections; Euler's theorem), the linearisation otherwise.
    """

    def known_inputs(self, node):
        vals = [None] * len(node.next_functions)
        for i, name in enumerate(("self", "other")[: len(vals)]):
            value = saved.get(node, name, None)
            child = node.next_functions[i][0]
            if isinstance(value, torch.Tensor) and child is not None and (
                    saved.op_name(child) == "AccumulateGrad" or value.shape == saved.output_shapes(child)[
                        node.next_functions[i][1]]):
                vals[i] = value
        return vals

    def needs(self, node, graph):
        return live_edges(node)

    def forward_needs(self, node):
        return live_edges(node)

    def saved_output(self, node):
        shapes = saved.output_shapes(node)
        names = ("result",) if len(shapes) == 1 else tuple(f"result{k}" for k in range(len(shapes)))
        values = [saved.get(node, n, None) for n in names]
        if all(isinstance(v, torch.Tensor) and v.shape == s for v, s in zip(values, shapes)):
            return tuple(values)
        return None

    def forward(self, node, inputs):
        return self.saved_output(node) or linear_forward(node, inputs)

    def relevance(self, ctx):
        x = [ctx.inputs[i] if ctx.has_edge(i) else None for i in range(len(ctx.edges))]
        try:
            z = linear_forward(ctx.node, x)
        except NotImplementedError:  # no double backward: the saved output stands in for ``J x``
            z = self.saved_output(ctx.node)
            if z is None:
                raise
        s = [r / stabilize(zk.to(r.dtype), ctx.config.epsilon) for r, zk in zip(ctx.relevance, z)]
        dtypes = saved.output_dtypes(ctx.node)
        grads = _call_backward(ctx.node, [g.to(d) for g, d in zip(s, dtypes)])
        grads = [None if g is None else g.to(s[0].dtype) for g in grads]
        return [None if xi is None or g is None else (xi.to(g.dtype) * g).reshape(edge_shape(ctx, i))
                for i, (xi, g) in enumerate(zip(x, grads))]


def linear_forward(node, inputs) -> tuple:
    """``z_k = sum_i J_ki x_i``: the node's Jacobians at the recorded point applied to ``inputs`` (``None``
    entries count as zero), one tensor per output slot, from nothing but the node's own backward ``g -> J^T g``
    (``z`` is the gradient of ``<J^T g, x>`` with respect to ``g``). For a positively homogeneous op (anything
    that only moves, copies, sums or selects values: ``f(x) = J(x) x`` by Euler's theorem) this is the op's
    output, computed without knowing what the op is.
    """
    metas = node._input_metadata
    with torch.enable_grad():
        gs = [torch.zeros(m.shape, dtype=m.dtype, device=m.device, requires_grad=True) for m in metas]
        try:
            outs = _call_backward(node, gs)
            terms = [(o * x.to(o.dtype)).sum() for o, x in zip(outs, inputs)
                     if o is not None and x is not None and o.requires_grad]
            grads = torch.autograd.grad(sum(terms), gs, allow_unused=True) if terms else [None] * len(gs)
        except (RuntimeError, NotImplementedError, TypeError) as err:
            raise NotImplementedError(
                f"{saved.full_name(node)}: its output cannot be recomputed from its backward ({err}); give it a "
                "rule with a forward (a dynamiclrp.rules.OpRule in LRPConfig(rule_overrides=...))") from err
    return tuple(torch.zeros(m.shape, dtype=m.dtype, device=m.device) if g is None else g.detach()
                 for g, m in zip(grads, metas))


def _call_backward(node, grads) -> tuple:
    """The node's backward applied to ``grads`` (one per output slot): built-in nodes are called, the nodes of
    Python ``autograd.Function`` s are applied. Returns one gradient (or ``None``) per input edge."""
    out = node(*grads) if callable(node) else node.apply(*grads)
    return (out,) if isinstance(out, torch.Tensor) or out is None else tuple(out)
