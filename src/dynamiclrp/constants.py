"""Operands that are not part of the autograd graph and that autograd did not save: frozen biases
(``requires_grad=False``), frozen positional tables, mask buffers.

The graph shows such an operand as a ``None`` edge and keeps no value, yet a rule may need it: a frozen bias
belongs in a linear layer's epsilon denominator and in its recomputed output. :class:`ConstantRecorder` watches
the forward pass at the ``torch`` function level and keeps, for every autograd node a call created, the tensor
arguments of that call that do not require grad -- references to tensors the model holds anyway, no copies of
activations. Rules map call arguments to their edges (:meth:`~dynamiclrp.rules.OpRule.constant_edges`).

>>> with ConstantRecorder() as rec:
...     out = model(x)
>>> Engine(Graph.capture(out), config, constants=rec.calls)
"""
from __future__ import annotations

import torch
import torch.utils._pytree as pytree
from torch.overrides import TorchFunctionMode

from . import saved

#: how many autograd nodes of one call may share its recorded constants (composite ops make a few)
_MAX_NODES_PER_CALL = 16


class ConstantRecorder(TorchFunctionMode):
    """Records the constant tensor arguments of every call whose result has a ``grad_fn``.

    Attributes
    ----------
    calls : dict
        ``grad_fn -> (func, leaves)``: the called function and its tensor and number arguments in call order
        (positional tensors and numbers, then keyword tensors), each the value itself if it is not part of the
        graph (a number, a tensor that does not require grad), else ``None``.
    """

    def __init__(self):
        super().__init__()
        self.calls: dict = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        leaves = [t for t in pytree.tree_leaves(args) if isinstance(t, (torch.Tensor, float, int))
                  and not isinstance(t, bool)]
        leaves += [t for t in pytree.tree_leaves(kwargs) if isinstance(t, torch.Tensor)]
        in_graph = [isinstance(t, torch.Tensor) and t.requires_grad for t in leaves]  # before an in-place update
        if all(in_graph):
            return func(*args, **kwargs)
        inplace = getattr(func, "__name__", "").endswith("_")
        constants = [None if g else t.clone() if inplace and t is args[0] else t for t, g in zip(leaves, in_graph)]
        arg_nodes = {t.grad_fn for t in leaves if isinstance(t, torch.Tensor) and t.grad_fn is not None}
        out = func(*args, **kwargs)
        first = out[0] if isinstance(out, (tuple, list)) and out else out
        if isinstance(first, torch.Tensor) and first.grad_fn is not None and first.grad_fn not in self.calls:
            for node in _nodes_of_call(first.grad_fn, arg_nodes):
                self.calls.setdefault(node, (func, constants))
        return out


def _nodes_of_call(root, argument_nodes, limit: int = _MAX_NODES_PER_CALL) -> list:
    """The autograd nodes one call created: from its result's ``grad_fn`` down to its arguments' nodes
    (``F.linear`` on a 3-D input makes ``view -> addmm -> view``). Stops at leaves and after ``limit`` nodes."""
    found, stack = [], [root]
    while stack and len(found) < limit:
        node = stack.pop()
        if node in found:
            continue
        found.append(node)
        for child, _slot in node.next_functions:
            if child is not None and child not in argument_nodes and type(child).__name__ != "AccumulateGrad":
                stack.append(child)
    return found


def linear_call(func) -> bool:
    """Whether ``func`` is ``F.linear`` (which autograd records as ``AddmmBackward`` on 2-D inputs)."""
    return func is torch.nn.functional.linear or getattr(func, "__name__", "") == "linear"


def feeds_softmax_only(graph, node, rule_of) -> bool:
    """Whether every path from ``node``'s output reaches a softmax-like input (a rule that absorbs additive
    constants) through value-routing ops (view, permute, masked_fill, dtype casts...) and further additions of
    constants only. Then a constant addend of ``node`` is a bias of that softmax. ``rule_of(node)`` gives rules."""
    from .rules.base import RoutingRule

    seen, todo = set(), [node]
    while todo:
        v = todo.pop()
        if not graph.consumers[v]:  # the explained output itself
            return False
        for c, _edge in graph.consumers[v]:
            if c in seen:
                continue
            seen.add(c)
            rule = rule_of(c)
            if rule is not None and rule.absorbs_input_constants:
                continue
            live = sum(child is not None for child, _ in graph.edges[c])
            if rule is None or live != 1 or not (isinstance(rule, RoutingRule) or rule.absorbable_constants(c)):
                return False
            todo.append(c)
    return True


def fill_constants(graph, node, rule, vals: list, calls: dict, rule_of) -> None:
    """Fill ``vals`` (operand values of ``node``, ``None`` where unknown) for edges outside the graph: zeros for
    an additive constant that a softmax absorbs as a bias (whether or not it was recorded, so the result does not
    depend on it), else what a :class:`ConstantRecorder` kept in ``calls`` (frozen biases and tables, masks)."""
    edges = graph.edges[node]
    absorbable = [i for i in rule.absorbable_constants(node) if edges[i][0] is None and vals[i] is None]
    if absorbable and feeds_softmax_only(graph, node, rule_of):
        for i in absorbable:
            vals[i] = saved.zeros(node, 0)
    call = calls.get(node)
    if call is None:
        return
    func, leaves = call
    for edge, k in rule.constant_edges(node, func, len(leaves)).items():
        if edges[edge][0] is None and vals[edge] is None and k < len(leaves) and leaves[k] is not None:
            value = leaves[k]
            vals[edge] = (value.detach() if isinstance(value, torch.Tensor)
                          else torch.tensor(value, dtype=saved.output_dtypes(node)[0]))
