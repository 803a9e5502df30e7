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

Without a recording, :func:`consumer_saved_output` and :func:`invert` recover what the graph determines: the
output of an add is often saved by the op that reads it (a matmul, a norm, a product), and then its constant
addend is ``b = (y - s_0 a) / s_1`` once the other operand ``a`` is known (a promise retrieves it).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch.overrides import TorchFunctionMode

from . import saved


class _InGraph:
    """Placeholder for an argument that was part of the graph (its value is not kept)."""

    def __repr__(self):
        return "IN_GRAPH"


IN_GRAPH = _InGraph()


class Call(NamedTuple):
    """One recorded call: ``func(*args, **kwargs)`` with graph tensors replaced by :data:`IN_GRAPH`.

    ``view`` is set for in-place writes through a view (``x[:, :2].add_(v)``, a ``CopySlices`` node):
    ``(base size, base stride, view size, view stride, view offset from the base's)``; ``args[0]`` is then the
    base as it was before the write (if it was not part of the graph)."""

    func: object
    args: tuple
    kwargs: dict
    view: tuple | None = None

    def is_one_of(self, *names: str) -> bool:
        """Whether the call was to one of ``names`` (``"add"`` also matches ``add_``, ``__add__``, ``__radd__``,
        ``__iadd__``): rules read arguments only from calls they understand, never from a composite whose
        internals happen to contain their op."""
        raw = getattr(self.func, "__name__", "")
        name = raw.strip("_")
        reflected = raw.startswith("__") and name[:1] in ("r", "i") and name[1:] in names
        return reflected or name in names

    def arg(self, position: int, name: str):
        """The argument at ``position`` or keyword ``name`` (``None`` if absent or part of the graph)."""
        value = self.args[position] if position < len(self.args) else self.kwargs.get(name)
        return None if value is IN_GRAPH else value


def _constant(a, copy: bool = False):
    """``a`` with graph tensors replaced by :data:`IN_GRAPH` (one level into lists and tuples)."""
    if isinstance(a, torch.Tensor):
        return IN_GRAPH if a.requires_grad else a.clone() if copy else a
    if isinstance(a, (list, tuple)):
        return type(a)(IN_GRAPH if isinstance(t, torch.Tensor) and t.requires_grad else t for t in a)
    return a


_DICT_VALUES = type({}.values())


def _tensors(tree, found=None) -> list:
    """The tensors in nested tuples, lists and dict values (what torch functions take), in order."""
    found = [] if found is None else found
    for a in tree:
        if isinstance(a, torch.Tensor):
            found.append(a)
        elif isinstance(a, (list, tuple, _DICT_VALUES)):
            _tensors(a, found)
        elif isinstance(a, dict):
            _tensors(a.values(), found)
    return found


def _writes_in_place(name: str) -> bool:
    """``add_``, ``__iadd__``, ``__setitem__``: calls that change their first argument."""
    if name.startswith("__"):
        return name == "__setitem__" or (name.startswith("__i") and name not in ("__init__", "__index__"))
    return name.endswith("_")


#: how many autograd nodes of one call may share its recorded constants (composite ops make a few)
_MAX_NODES_PER_CALL = 16


class ConstantRecorder(TorchFunctionMode):
    """Records the constant tensor arguments of every call whose result has a ``grad_fn``.

    Parameters
    ----------
    token_ids : tensors, optional
        Integer inputs being explained. Their lookups in frozen embedding tables are made leaves that require
        grad (listed in ``lifted``), so that models with frozen embeddings can be explained per token.

    Attributes
    ----------
    calls : dict
        ``grad_fn -> Call``: the called function and its arguments, where every tensor that is part of the graph
        (requires grad) is replaced by :data:`IN_GRAPH` -- activations are never kept. In-place writes through a
        view (``CopySlices``) also keep the view's geometry and a copy of a base that was not in the graph.
    """

    def __init__(self, token_ids=()):
        super().__init__()
        self.calls: dict = {}
        self.token_ids = tuple(token_ids)
        self.lifted: list = []  # (index into token_ids, embedding output made a leaf that requires grad)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        func_name = getattr(func, "__name__", "")
        tensors = _tensors((args, kwargs.values()))
        grads = [t.requires_grad for t in tensors]
        inplace = _writes_in_place(func_name) and bool(args) and isinstance(args[0], torch.Tensor)
        if not any(grads) and not (self.token_ids and func_name == "embedding"):
            return func(*args, **kwargs)  # makes no graph node
        if not inplace and all(isinstance(a, torch.Tensor) and a.requires_grad or a is None
                               for a in (*args, *kwargs.values())):
            return func(*args, **kwargs)  # every argument is in the graph: nothing to record
        # read before the call: an in-place op turns its constant ``self`` into a graph tensor (and changes it)
        call = Call(func, tuple(_constant(a, copy=inplace and k == 0) for k, a in enumerate(args)),
                    {key: _constant(v) for key, v in kwargs.items()})
        written = args[0] if inplace else None
        if inplace and written._is_view():
            call, written = self._through_view(call, written)
        before = written.grad_fn if inplace else None
        arg_nodes = {t.grad_fn for t in tensors if t.grad_fn is not None}
        result = made = func(*args, **kwargs)
        if self.token_ids and func_name == "embedding" and not result.requires_grad:
            self._lift(args[0], result)
        if inplace:  # the node is on the tensor written into (``x[i] = v`` returns nothing)
            if written.grad_fn is not before and saved.op_name(written.grad_fn) == "CopySlices":
                self.calls.setdefault(written.grad_fn, call)
                return result
            made = written
        first = made[0] if isinstance(made, (tuple, list)) and made else made
        if isinstance(first, torch.Tensor) and first.grad_fn is not None and first.grad_fn not in self.calls:
            for node in _nodes_of_call(first.grad_fn, arg_nodes):
                self.calls.setdefault(node, call)
        return result

    @staticmethod
    def _through_view(call, target):
        """``call`` writing into the view ``target``: keep its base (a copy, unless the base is in the graph)
        and the view's geometry, for ``CopySlices``."""
        base = target._base
        view = (tuple(base.shape), base.stride(), tuple(target.shape), target.stride(),
                target.storage_offset() - base.storage_offset())
        return call._replace(args=(_constant(base, copy=True),) + call.args[1:], view=view), base

    def lifted_for(self, ids) -> list:
        """The lifted embedding outputs of the integer input ``ids``."""
        return [out for k, out in self.lifted if self.token_ids[k] is ids]

    def _lift(self, indices, out):
        """A frozen embedding table (``requires_grad=False``, e.g. a LoRA base model) puts no lookup in the graph:
        make the lookup of the explained token ids a leaf that requires grad, so relevance has a place to land.
        The model and its table are untouched; only this fresh output tensor changes."""
        for k, ids in enumerate(self.token_ids):
            if indices.data_ptr() == ids.data_ptr() and indices.shape == ids.shape:
                out.requires_grad_(True)
                self.lifted.append((k, out))
                return


_OWN_CALLS = ("AccumulateGrad", "CopySlices")


def _nodes_of_call(root, argument_nodes, limit: int = _MAX_NODES_PER_CALL) -> list:
    """The autograd nodes one call created: from its result's ``grad_fn`` down to its arguments' nodes
    (``F.linear`` on a 3-D input makes ``view -> addmm -> view``). Stops at leaves and after ``limit`` nodes."""
    found, stack = [], [root]
    while stack and len(found) < limit:
        node = stack.pop()
        if node in found or saved.op_name(node) in _OWN_CALLS:
            continue
        found.append(node)
        for child, _slot in node.next_functions:
            # CopySlices: an in-place write inside the call, recorded by itself or not at all
            if child is not None and child not in argument_nodes and saved.op_name(child) not in _OWN_CALLS:
                stack.append(child)
    return found


def feeds_softmax_only(graph, node, rule_of, memo: dict | None = None) -> bool:
    """Whether every path from ``node``'s output reaches a softmax-like input (a rule that absorbs additive
    constants) through value-routing ops (view, permute, masked_fill, dtype casts...) and further additions of
    constants only. Then a constant addend of ``node`` is a bias of that softmax. ``rule_of(node)`` gives rules.

    ``memo`` (node -> verdict), shared by the calls of one propagation, makes the calls for all nodes of a graph
    linear in its size together: each node's consumers are examined once (a chain of ``n`` constant additions
    asks about every link; without it, that is ``n^2 / 2`` visits). Iterative, so chains of any length work."""
    from .rules.base import RoutingRule

    memo = {} if memo is None else memo

    def passes(c) -> bool | None:
        """``True``: ``c`` absorbs constants; ``None``: ``c`` passes values on (ask its consumers); ``False``."""
        rule = rule_of(c)
        if rule is not None and rule.absorbs_input_constants:
            return True
        live = sum(child is not None for child, _ in graph.edges[c])
        if rule is None or live != 1 or not (isinstance(rule, RoutingRule) or rule.absorbable_constants(c)
                                             or _scales_by_constant(graph, c)):
            return False
        return None

    stack = [node]
    while stack:
        v = stack[-1]
        if v in memo:
            stack.pop()
            continue
        verdict, todo = bool(graph.consumers[v]), []  # no consumer: the explained output itself
        for c, _edge in graph.consumers[v]:
            ok = passes(c)
            if ok is None and c in memo:
                ok = memo[c]
            if ok is False:
                verdict = False
                break
            if ok is None:
                todo.append(c)
        if verdict and todo:
            stack.extend(todo)  # decide the consumers first, then come back to v
            continue
        memo[v] = verdict
        stack.pop()
    return memo[node]


def fill_constants(graph, node, rule, vals: list, calls: dict, rule_of, memo: dict | None = None) -> None:
    """Fill ``vals`` (operand values of ``node``, ``None`` where unknown) for edges outside the graph: zeros for
    an additive constant that a softmax absorbs as a bias (whether or not it was recorded, so the result does not
    depend on it), else what a :class:`ConstantRecorder` kept in ``calls`` (frozen biases and tables, masks).
    ``memo``: the :func:`feeds_softmax_only` verdicts of this propagation (pass the same dict for every node)."""
    edges = graph.edges[node]
    absorbable = [i for i in rule.absorbable_constants(node) if edges[i][0] is None and vals[i] is None]
    if absorbable and feeds_softmax_only(graph, node, rule_of, memo):
        for i in absorbable:
            vals[i] = saved.zeros(node, 0)
    call = calls.get(node)
    if call is None:
        return
    for edge, value in rule.constant_edges(node, call).items():
        if edges[edge][0] is None and vals[edge] is None and value is not None:
            vals[edge] = (value.detach() if isinstance(value, torch.Tensor)
                          else torch.tensor(value, dtype=saved.output_dtypes(node)[0]))


# ------------------------------------------------------------------------------------- recovery from the graph

#: ops that only reshape (same entries, same order): a value saved after one of them is the value before it
_RESHAPES = ("ViewBackward", "UnsafeViewBackward", "ReshapeAliasBackward", "SqueezeBackward", "UnsqueezeBackward",
             "CloneBackward", "AliasBackward")
#: how far :func:`consumer_saved_output` looks through reshapes for a consumer that saved the value
_RESHAPE_DEPTH = 4


def consumer_saved_output(graph, node, rule_of, slot: int = 0):
    """The value of ``node``'s output ``slot`` as a *consumer* saved it, or ``None``.

    Autograd keeps what a backward needs, which is often the input of the next op: a matrix product saves its
    input, a layer norm saves its input, a product saves the other factor. So the output of an op whose own node
    saved nothing (an addition) is frequently kept by the op that reads it. Consumers are searched through
    reshapes (``view``, ``unsqueeze``...; up to :data:`_RESHAPE_DEPTH` of them); a value is accepted only if its
    shape and dtype are those of the output. ``rule_of(node)`` gives the rules, whose
    :meth:`~dynamiclrp.rules.OpRule.known_inputs` say which saved tensor is which operand."""
    shape = saved.output_shapes(node)[slot]
    dtype = saved.output_dtypes(node)[slot]
    frontier = [(node, slot)]
    for _depth in range(_RESHAPE_DEPTH + 1):
        ahead = []
        for producer, pslot in frontier:
            for consumer, edge in graph.consumers.get(producer, ()):
                if graph.edges[consumer][edge] != (producer, pslot):
                    continue
                rule = rule_of(consumer)
                if rule is None:
                    continue
                try:
                    value = rule.known_inputs(consumer)[edge]
                except (AttributeError, RuntimeError, IndexError):  # a rule reused for an op it does not know
                    value = None
                if (isinstance(value, torch.Tensor) and value.dtype == dtype
                        and value.shape == saved.output_shapes(producer)[pslot]):
                    return value.detach().reshape(shape)  # reshapes keep the order of entries
                if saved.op_name(consumer) in _RESHAPES and saved.num_outputs(consumer) == 1:
                    ahead.append((consumer, 0))
        frontier = ahead
        if not frontier:
            break
    return None


def invertible_edges(node) -> tuple:
    """Edges outside the graph whose value :func:`invert` can compute from the output and the other operands:
    the constant addend of a two-operand add / sub / rsub (``y = s_0 a + s_1 b`` is solved exactly for the
    constant). Empty for every other op (a product ``y = a b`` is not invertible where the other factor is 0)."""
    if saved.op_name(node) not in ("AddBackward", "SubBackward", "RsubBackward") or len(node.next_functions) != 2:
        return ()
    signs = saved.additive_signs(node)
    return tuple(i for i, (child, _slot) in enumerate(node.next_functions) if child is None and signs[i] != 0)


def invert(node, vals: list, output) -> None:
    """Fill the :func:`invertible_edges` of ``node`` that are ``None`` in ``vals`` from its ``output`` and the
    other operand: ``b = (y - s_0 a) / s_1``. The result has the output's shape (a broadcast constant is
    returned broadcast), which is all the add rule and its forward need. Needs the other operand known."""
    signs = saved.additive_signs(node)
    for i in invertible_edges(node):
        other = vals[1 - i]
        if vals[i] is None and other is not None and output is not None:
            rest = output - signs[1 - i] * other.to(output.dtype)
            vals[i] = rest if signs[i] == 1 else rest / signs[i]


def _scales_by_constant(graph, node) -> bool:
    """``z * c`` or ``z / c`` with ``c`` outside the graph (attention scores scaled after the mask was added, as
    CodeGen does): linear in ``z``, so a constant added to ``z`` stays an additive constant (``c * m``)."""
    name = saved.op_name(node)
    edges = graph.edges[node]
    if name == "MulBackward" and len(edges) == 2:
        return True
    return name == "DivBackward" and len(edges) == 2 and edges[0][0] is not None
