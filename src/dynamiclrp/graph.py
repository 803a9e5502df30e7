"""Graph capture: the autograd graph behind an output, with adjacency both ways and a topological order.

This is the paper's Algorithm 1/3, written iteratively so that deep models do not hit Python's recursion limit.
Edges point from a consumer to the producer of one of its inputs, as in autograd: ``node.next_functions[i]`` is
``(producer, output_slot)`` or ``(None, 0)`` for an input that needs no gradient.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from . import saved
from .errors import NoGradGraphError

_LEAF = "AccumulateGrad"
#: an embedding lookup tapped as the input of token ids: its table is the input representation, not a stream
_LOOKUP = "EmbeddingBackward"


@dataclass
class Graph:
    """The captured backward graph of one output.

    Attributes
    ----------
    root: the ``grad_fn`` of the output.
    order: every node, consumers before producers (a topological order of the backward pass).
    edges: ``edges[node]`` is ``node.next_functions`` as a list of ``(producer or None, output_slot)``.
    consumers: ``consumers[node]`` lists ``(consumer, edge_index)`` for every edge that ends at ``node``.
    sources: the nodes whose values count as explained inputs (see :meth:`set_sources`); an operand is an
        activation when the subgraph behind it reaches one of them, a parameter or constant otherwise.
    """

    root: object
    order: list = field(default_factory=list)
    edges: dict = field(default_factory=dict)
    consumers: dict = field(default_factory=dict)
    sources: frozenset | None = field(default=None, repr=False)
    _param_memo: dict = field(default_factory=dict, repr=False)

    @classmethod
    def capture(cls, output: torch.Tensor) -> "Graph":
        root = output.grad_fn
        if root is None:
            raise NoGradGraphError(
                "the output has no grad_fn, so there is no autograd graph to explain. Run the model with grad "
                "enabled (not under torch.no_grad() or torch.inference_mode()) and with inputs or parameters "
                "that require grad."
            )
        graph = cls(root=root)
        graph.consumers[root] = []
        postorder = []
        stack = [(root, iter(root.next_functions))]
        graph.edges[root] = list(root.next_functions)
        while stack:
            node, it = stack[-1]
            advanced = False
            for child, _slot in it:
                if child is None:
                    continue
                graph.consumers.setdefault(child, [])
                if child not in graph.edges:
                    graph.edges[child] = list(child.next_functions)
                    stack.append((child, iter(child.next_functions)))
                    advanced = True
                    break
            if not advanced:
                stack.pop()
                postorder.append(node)
        for node in postorder:
            for i, (child, _slot) in enumerate(graph.edges[node]):
                if child is not None:
                    graph.consumers[child].append((node, i))
        graph.order = postorder[::-1]
        return graph

    def __len__(self):
        return len(self.order)

    def indegree(self, node) -> int:
        """Number of edges that end at ``node`` (a consumer using it twice counts twice)."""
        return len(self.consumers[node])

    def set_sources(self, taps=None, extra=()) -> frozenset:
        """Declare which values are the explained inputs; returns the resulting source set (also ``.sources``).

        Parameters
        ----------
        taps: nodes (or ``(node, slot)`` pairs) whose relevance is collected, as given to the engine:
            a leaf that is not an ``nn.Parameter`` is a source; a requested ``nn.Parameter`` is *not* one (it
            stays a parameter for the rules, which hand it relevance when parameters are wanted); an intermediate
            node is a source together with the non-Parameter leaves upstream of it, so that a residual stream
            that branched off before the kept tensor stays an activation (an embedding lookup of token ids
            brings in only itself: its table is the input representation). ``None``, or taps that name no
            source at all (only parameters): every leaf that is not an ``nn.Parameter`` is a source.
        extra: further source nodes, taken as they are (no fallback, no expansion).

        An operand is then an activation exactly when the subgraph behind it reaches a source, whatever ops it
        went through; anything else (weights behind ``prune``'s mask, a merged LoRA ``W + B @ A``, weight
        standardisation, ``W * scale``, spectral norm, plain-tensor weights of ``torch.func.functional_call``)
        is a parameter or constant for the rules.
        """
        nodes = [t[0] if isinstance(t, tuple) else t for t in (taps or ())]
        found: set = set()
        expand = []
        for n in nodes:
            if n not in self.edges:
                continue
            if saved.op_name(n) == _LEAF:
                if not isinstance(saved.leaf_variable(n), torch.nn.Parameter):
                    found.add(n)
            else:
                found.add(n)
                if saved.op_name(n) != _LOOKUP:
                    expand.append(n)
        seen = set(expand)
        while expand:  # the non-Parameter leaves upstream of intermediate taps (each node visited once)
            for child, _slot in self.edges[expand.pop()]:
                if child is None or child in seen:
                    continue
                seen.add(child)
                if saved.op_name(child) != _LEAF:
                    expand.append(child)
                elif not isinstance(saved.leaf_variable(child), torch.nn.Parameter):
                    found.add(child)
        if not found:
            found = {n for n in self.order
                     if saved.op_name(n) == _LEAF and not isinstance(saved.leaf_variable(n), torch.nn.Parameter)}
        self.sources = frozenset(found) | frozenset(extra)
        self._param_memo.clear()
        return self.sources

    def declare_inputs(self, taps=(), want_params: bool = False, rule_of=None) -> frozenset:
        """:meth:`set_sources` for a propagation that collects relevance at ``taps``, as the engine and the
        reference propagator call it. When parameters are explained and nothing in the graph is an input (the
        data did not require grad: ``propagate(model(x), [layer.weight])``), the data enters where a product
        (a rule with ``factor_edges``, looked up by ``rule_of(node)``) has a factor outside the graph: those
        products' outputs are the sources, and their in-graph factor is the parameter."""
        sources = self.set_sources(list(taps))
        if want_params and not sources and rule_of is not None:
            entries = []
            for n in self.order:
                factors = getattr(rule_of(n), "factor_edges", None)
                if factors is not None and any(self.edges[n][i][0] is None for i in factors(n)):
                    entries.append(n)
            sources = self.set_sources(extra=entries)
        return sources

    def is_constant_node(self, node) -> bool:
        """Whether ``node``'s outputs reach no source: functions of parameters and constants only."""
        return self._is_param_node(node)

    def is_parameter_edge(self, node, edge: int) -> bool:
        """Whether input ``edge`` of ``node`` is a parameter or constant: no gradient, or a subgraph that reaches
        no explained input (see :meth:`set_sources`). Rules use it to tell a linear layer (activation x
        parameter) from a bilinear product."""
        child, _slot = self.edges[node][edge]
        return self._is_param_node(child)

    def _is_param_node(self, node) -> bool:
        if node is None:
            return True
        if self.sources is None:
            self.set_sources()
        if not self._param_memo:  # one pass, producers first: a node is an activation if it reaches a source
            memo, sources, edges = self._param_memo, self.sources, self.edges
            for n in reversed(self.order):
                memo[n] = n not in sources and all(c is None or memo[c] for c, _ in edges[n])
        return self._param_memo[node]

    def op_counts(self) -> dict[str, int]:
        """How many nodes of each autograd op type the graph holds."""
        counts: dict[str, int] = {}
        for node in self.order:
            name = saved.full_name(node)
            counts[name] = counts.get(name, 0) + 1
        return counts

    # ------------------------------------------------------------------------------------- gates and statistics
    # A product ``p * q`` whose factor ``q`` is a function of the same activation as ``p`` alone is an elementwise
    # nonlinearity (``x * sigmoid(x)``, ``x * (1 + tanh(...))``) or a normalisation (``x * rsqrt(mean(x^2))``)
    # written out in primitives. AttnLRP (Achtibat et al. 2024) explains both with the identity rule / constant
    # statistics: all relevance goes to ``p``. The analysis is structural, bounded per product and memoised per node
    # (linear in the graph overall).

    def self_gated_edge(self, node) -> int | None:
        """For a product ``y = a * b`` (``MulBackward``) or quotient ``y = a / b`` (``DivBackward``) whose operands
        are both activations: the edge that carries all relevance when the other factor is a function of the same
        activation alone, else ``None`` (two different activations: a real bilinear product).

        ``p`` (tried as ``a`` then ``b``; for a quotient only the numerator) is walked back through parameter-free
        affine steps that keep it a function of one activation ``X`` (views, expand, to-dtype, clone, negation,
        scaling by a constant or parameter, adding a constant, ``x - f(x)`` such as ``x - mean(x)``); every
        ``(node, output slot)`` met is a *stop*. ``q`` is a function of ``X`` alone when a search from ``q``'s
        producer, passing over constants and parameters (``is_parameter_edge``), reaches no activation source
        (an explained input, a leaf, an embedding lookup) other than through a stop, within
        ``_GATE_BUDGET`` nodes. Output slots are told apart, so the two halves of one ``chunk`` (GLU, fused
        SwiGLU projections) or ``q, k, v = qkv.unbind()`` stay different activations.
        """
        memo = self.__dict__.setdefault("_self_gated_memo", {})
        if node not in memo:
            memo[node] = self._find_self_gated(node)
        return memo[node]

    def held_factor_edge(self, node, edges=(0, 1)) -> int | None:
        """CP-LRP (Ali et al. 2022, as LXT 2.1 implements it): of a product of two different activations, the edge
        of the factor held constant -- the attention weights (a factor produced by a softmax) over a gate (a factor
        produced by an elementwise nonlinearity: SiLU, sigmoid, GELU, ..., or one written out, see
        :meth:`self_gated_edge`) over anything else; ``None`` when both factors rank the same (no structural gate:
        the uniform rule stays). Views, casts and scalings between the op and the product are looked through.
        ``edges`` names the two factors' input edges (``(1, 2)`` for ``addmm``/``baddbmm``)."""
        memo = self.__dict__.setdefault("_held_factor_memo", {})
        key = (node, tuple(edges))
        if key not in memo:
            live = [i for i in edges if self.edges[node][i][0] is not None]
            ranks = [self._gate_rank(node, i) for i in live]
            memo[key] = None
            if len(live) == 2 and ranks[0] != ranks[1]:
                memo[key] = live[0] if ranks[0] > ranks[1] else live[1]
        return memo[key]

    def _activation_edges(self, node) -> list:
        """Indices of ``node``'s inputs that are activations (in the graph and not parameters or constants)."""
        return [i for i, (c, _) in enumerate(self.edges[node]) if c is not None and not self.is_parameter_edge(node, i)]

    def _affine_step(self, node):
        """The one activation input ``(producer, slot)`` that ``node``'s output is an affine, parameter-free
        (up to elementwise scaling) function of, or ``None``. Memoised per node."""
        memo = self.__dict__.setdefault("_affine_memo", {})
        if node not in memo:
            memo[node] = self._find_affine_step(node)
        return memo[node]

    def _find_affine_step(self, node):
        name = saved.op_name(node)
        if name not in _AFFINE_STEPS:
            return None
        act = self._activation_edges(node)
        if len(act) == 1:
            if name == "DivBackward" and act[0] != 0:  # c / x is not affine in x
                return None
            return self.edges[node][act[0]]
        if len(act) == 2 and name in ("AddBackward", "SubBackward", "RsubBackward"):  # x - mean(x)
            for i in (0, 1):
                if self._function_of(self.edges[node][1 - i], {self.edges[node][i]}, _STEP_BUDGET):
                    return self.edges[node][i]
        return None

    def _stops(self, edge) -> set:
        """``edge`` and the activations it is an affine function of (see :meth:`self_gated_edge`)."""
        stops = {edge}
        for _ in range(_CHAIN_LIMIT):
            nxt = self._affine_step(edge[0])
            if nxt is None or nxt in stops:
                break
            stops.add(nxt)
            edge = nxt
        return stops

    def _function_of(self, edge, stops: set, budget: int) -> bool:
        """Whether the value on ``edge`` (``(producer, slot)``) depends on activations only through ``stops``.

        Producers come after their consumers in :attr:`order`, so a node placed after every stop cannot reach one:
        being an activation, it reaches a source another way, and the search ends there at once."""
        if edge in stops:
            return True
        index = self.__dict__.get("_topo_index")
        if index is None:
            index = self.__dict__["_topo_index"] = {n: i for i, n in enumerate(self.order)}
        limit = max(index[n] for n, _ in stops)
        seen = {edge[0]}
        stack = [edge[0]]
        while stack:
            node = stack.pop()
            act = self._activation_edges(node)
            if not act or index[node] > limit:  # a source (explained input, leaf, embedding lookup) or behind one
                return False
            for i in act:
                child_edge = self.edges[node][i]
                if child_edge in stops or child_edge[0] in seen:
                    continue
                if len(seen) >= budget:
                    return False
                seen.add(child_edge[0])
                stack.append(child_edge[0])
        return True

    def _find_self_gated(self, node):
        name = saved.op_name(node)
        edges = self.edges[node]
        if name not in ("MulBackward", "DivBackward") or len(edges) < 2:
            return None
        if any(c is None or self.is_parameter_edge(node, i) for i, (c, _) in enumerate(edges[:2])):
            return None
        for p in ((0,) if name == "DivBackward" else (0, 1)):
            if self._function_of(edges[1 - p], self._stops(edges[p]), _GATE_BUDGET):
                return p
        return None

    def _written_out_nonlinearity(self, node) -> bool:
        """A self-gated product whose factors have one shape (``x * sigmoid(x)``): an elementwise nonlinearity, not
        a normalisation (whose statistic is reduced, ``x * rsqrt(mean(x^2))``)."""
        if self.self_gated_edge(node) is None:
            return False
        shapes = {saved.output_shapes(c)[s] for c, s in self.edges[node][:2]}
        return len(shapes) == 1

    def _gate_rank(self, node, edge: int) -> int:
        """2: the operand comes from a softmax; 1: from an elementwise nonlinearity; 0: anything else."""
        child = self.edges[node][edge][0]
        for _ in range(_CHAIN_LIMIT):
            if child is None:
                return 0
            name = saved.op_name(child)
            if name in _SOFTMAX_OPS:
                return 2
            if name in _GATE_NONLINEARITIES or self._written_out_nonlinearity(child):
                return 1
            nxt = self._affine_step(child)
            if nxt is None:
                return 0
            child = nxt[0]
        return 0


#: steps that keep a tensor an affine function of one activation (with a constant/parameter other operand)
_AFFINE_STEPS = frozenset({
    "ViewBackward", "ReshapeAliasBackward", "UnsafeViewBackward", "ExpandBackward", "UnsqueezeBackward",
    "SqueezeBackward", "CloneBackward", "ToCopyBackward", "AliasBackward", "TBackward", "TransposeBackward",
    "PermuteBackward", "NegBackward", "MulBackward", "DivBackward", "AddBackward", "SubBackward", "RsubBackward",
    "NativeDropoutBackward",
})
#: ops whose output CP-LRP holds constant as attention weights
_SOFTMAX_OPS = frozenset({"SoftmaxBackward", "SafeSoftmaxBackward"})
#: elementwise nonlinearities whose output CP-LRP holds constant as a gate
_GATE_NONLINEARITIES = frozenset({
    "SigmoidBackward", "SiluBackward", "GeluBackward", "GeLUFunctionBackward", "TanhBackward", "ReluBackward",
    "HardsigmoidBackward", "HardswishBackward", "HardtanhBackward", "SoftplusBackward", "EluBackward",
    "LeakyReluBackward", "MishBackward",
})
_GATE_BUDGET = 256  # nodes searched behind a candidate gate before giving up (then: a real bilinear product)
_STEP_BUDGET = 8  # nodes searched for ``x - f(x)`` (``x - mean(x)``; not a residual block) in an affine step
_CHAIN_LIMIT = 32  # affine steps walked back from a factor
