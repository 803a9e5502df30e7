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

# Ops that only move, reshape or re-parametrise a tensor: walking through them from a matmul operand tells whether
# that operand is a parameter (weights seen through ``.t()``, ``.view()``, weight norm...) or an activation. (Not
# every op of parameters: an embedding lookup of a parameter table is the model's input representation.)
_PARAMETER_TRANSFORMS = frozenset({
    "TBackward", "TransposeBackward", "PermuteBackward", "ViewBackward", "ReshapeAliasBackward",
    "UnsafeViewBackward", "ExpandBackward", "UnsqueezeBackward", "SqueezeBackward", "CloneBackward",
    "ToCopyBackward", "AliasBackward", "SliceBackward", "SelectBackward", "RepeatBackward",
    "WeightNormInterfaceBackward",
})


@dataclass
class Graph:
    """The captured backward graph of one output.

    Attributes
    ----------
    root: the ``grad_fn`` of the output.
    order: every node, consumers before producers (a topological order of the backward pass).
    edges: ``edges[node]`` is ``node.next_functions`` as a list of ``(producer or None, output_slot)``.
    consumers: ``consumers[node]`` lists ``(consumer, edge_index)`` for every edge that ends at ``node``.
    """

    root: object
    order: list = field(default_factory=list)
    edges: dict = field(default_factory=dict)
    consumers: dict = field(default_factory=dict)
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

    def is_parameter_edge(self, node, edge: int) -> bool:
        """Whether input ``edge`` of ``node`` is a constant: no gradient, or an ``nn.Parameter`` seen only through
        shape operations and re-parametrisations (``.t()``, ``.view()``, weight norm). Rules use it to tell a
        linear layer (activation x parameter) from a bilinear product."""
        child, _slot = self.edges[node][edge]
        return self._is_param_node(child)

    def _is_param_node(self, node) -> bool:
        if node is None:
            return True
        if not self._param_memo:  # one pass, producers first: a node is constant if all it reads is constant
            for n in reversed(self.order):
                if saved.op_name(n) == "AccumulateGrad":
                    self._param_memo[n] = isinstance(saved.leaf_variable(n), torch.nn.Parameter)
                else:
                    self._param_memo[n] = saved.op_name(n) in _PARAMETER_TRANSFORMS and all(
                        c is None or self._param_memo[c] for c, _ in self.edges[n])
        return self._param_memo[node]

    def op_counts(self) -> dict[str, int]:
        """How many nodes of each autograd op type the graph holds."""
        counts: dict[str, int] = {}
        for node in self.order:
            name = saved.full_name(node)
            counts[name] = counts.get(name, 0) + 1
        return counts
