"""A slow, obviously correct reference propagator, for cross-checking the Promise engine.

During the forward pass a :class:`~torch.utils._python_dispatch.TorchDispatchMode` records every op's output, so
every operand of every autograd node is at hand afterwards. :func:`reference_propagate` then applies *the same
rules* node by node in topological order -- no promises, no chains, no queues. For any model the engine must give
the same relevance (the tests check 1e-6 in float64): that checks promise chains, trees, pre-promises and
aggregation all at once.
"""
from __future__ import annotations

import torch
import torch.utils._pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from . import saved
from .config import LRPConfig
from .constants import fill_constants
from .graph import Graph
from .rules import RuleContext, lookup


class ActivationRecorder(TorchDispatchMode):
    """Records the value of every operand every op consumes, keyed by the ``(grad_fn, output_nr)`` that produced
    it, *before* the op runs (so in-place ops, which re-point a tensor's ``grad_fn``, cannot hide a value)."""

    def __init__(self):
        super().__init__()
        self._values = {}
        self._outputs = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        for t in pytree.tree_leaves((args, kwargs or {})):
            if isinstance(t, torch.Tensor) and t.grad_fn is not None:
                self._values.setdefault((t.grad_fn, t.output_nr), t.detach().clone())
        out = func(*args, **(kwargs or {}))
        self._outputs.extend(t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor))
        return out

    def values(self) -> dict:
        """``(grad_fn, output_nr) -> value`` for every recorded operand and output."""
        found = dict(self._values)
        for t in self._outputs:
            if t.grad_fn is not None:
                found.setdefault((t.grad_fn, t.output_nr), t.detach())
        return found


def reference_propagate(output, inputs, values: dict, relevance=None, config: LRPConfig | None = None,
                        want_params: bool = False, constants: dict | None = None, model=None) -> tuple:
    """Relevance of ``inputs`` (tensors of ``output``'s graph) computed with every activation known.

    ``values`` comes from :meth:`ActivationRecorder.values` recorded over the forward pass that made ``output``;
    ``constants`` (operands outside the graph) from a :class:`~dynamiclrp.constants.ConstantRecorder` over it.
    """
    config = config or LRPConfig()
    graph = Graph.capture(output)
    rel = {node: [None] * (1 if saved.op_name(node) == "AccumulateGrad" else saved.num_outputs(node))
           for node in graph.order}
    rel[graph.root][output.output_nr] = output.detach() if relevance is None else relevance
    total = {}
    constants = constants or {}
    rules = {node: lookup(node, config.rule_overrides).specialize(node, constants.get(node))
             for node in graph.order if saved.op_name(node) != "AccumulateGrad"}
    # the same explained inputs as the engine: operands reaching them are activations (Graph.set_sources)
    input_nodes = [t.grad_fn if t.grad_fn is not None else _leaf_node(graph, t) for t in inputs]
    graph.declare_inputs(input_nodes, want_params, rules.get)
    if config.layer_map or config.canonize:  # the engine's per-position rules and merged batch norms
        from .layer_map import plan

        rules.update(plan(graph, config, rules.get, set(input_nodes), constants, model))

    with torch.no_grad():
        for node in graph.order:
            slots = [r if r is not None else saved.zeros(node, k) for k, r in enumerate(rel[node])]
            total[node] = slots
            if saved.op_name(node) == "AccumulateGrad":
                continue
            rule = rules[node]
            operands = list(rule.known_inputs(node))
            for i, (child, slot) in enumerate(graph.edges[node]):
                if operands[i] is None and child is not None:
                    operands[i] = (saved.leaf_variable(child) if saved.op_name(child) == "AccumulateGrad"
                                   else values.get((child, slot)))
            fill_constants(graph, node, rule, operands, constants, rules.get)
            ctx = RuleContext(node, rule, operands, slots, config, graph, want_params)
            for (child, slot), r in zip(graph.edges[node], rule.relevance(ctx)):
                if child is not None and r is not None:
                    rel[child][slot] = r if rel[child][slot] is None else rel[child][slot] + r
    out = []
    for t in inputs:
        if t.grad_fn is not None:
            r = total.get(t.grad_fn, [None] * (t.output_nr + 1))[t.output_nr]
        else:
            leaf = next((n for n in graph.order if saved.op_name(n) == "AccumulateGrad"
                         and saved.leaf_variable(n) is t), None)
            r = None if leaf is None else total[leaf][0]
        out.append(torch.zeros_like(t) if r is None else r.reshape(t.shape))
    return tuple(out)


def _leaf_node(graph: Graph, t):
    """The ``AccumulateGrad`` node of the leaf tensor ``t`` in ``graph``, or ``None``."""
    return next((n for n in graph.order if saved.op_name(n) == "AccumulateGrad" and saved.leaf_variable(n) is t),
                None)
