"""The traversal engine: operation-level relevance propagation with promises (paper Algorithm 2, App. B/C/E).

Nodes are visited in topological order (a node is popped once every consumer edge has landed relevance or a
promise branch on it). A node whose rule or forward recomputation lacks operand values creates a
:class:`~dynamiclrp.promise.Promise`; its branches land on the producers like relevance does. A branch arriving
at a node that is still waiting for other consumers puts that node on the *heuristic-break queue*, served first,
so that the branch can reach an Arg Node (or spawn a Pre-Promise) instead of dead-locking (Fig. 2).

Every node's rule is applied exactly once: directly, when its promise completes, or as a step of a branch's
backward chain. ``EngineResult.propagations`` counts it, and the engine raises if any node is left over.
"""
from __future__ import annotations

import warnings
from collections import deque
from dataclasses import dataclass

import torch

from . import saved
from .constants import consumer_saved_output, fill_constants, invert, invertible_edges
from .errors import NonFiniteRelevanceError, UnrecoverableValueError, UnsupportedOperationError
from .graph import Graph
from .promise import Branch, ChainStep, Promise
from .rules import RuleContext, lookup
from .rules.base import FallbackRule, all_finite

_LEAF = "AccumulateGrad"
_VIEWS = ("ViewBackward", "UnsafeViewBackward", "ReshapeAliasBackward")  # output = input, reshaped


@dataclass(frozen=True)
class NodeTrace:
    """Relevance at one node of a traced run (``Engine(trace=True)``): ``relevance_in`` arrived at its outputs,
    ``relevance_out`` went on to its inputs in the graph (what parameters, biases and constants absorbed is the
    difference). ``step`` is the node's place in the traversal."""

    op: str
    step: int
    relevance_in: float
    relevance_out: float

    @property
    def ratio(self) -> float:
        """``relevance_out / relevance_in`` (1: conserved; NaN when nothing arrived)."""
        return self.relevance_out / self.relevance_in if self.relevance_in else float("nan")


@dataclass
class EngineResult:
    """What a run produced: the relevance at each tapped ``(node, slot)`` and statistics."""

    taps: dict
    propagations: dict
    promises: list
    chain_nodes: int
    graph: Graph
    #: with ``Engine(trace=True)``: one :class:`NodeTrace` per node that distributed relevance, in traversal order
    trace: list | None = None

    def release(self) -> None:
        """Break the ``Promise <-> Branch`` reference cycles and drop the graph. Call it once the statistics are
        read: otherwise the promises are cyclic garbage that only Python's cyclic collector frees, and through
        their origin nodes they keep the whole autograd graph -- every activation autograd saved -- alive across
        explanations (repeated GPT-2 explanations grew by a forward pass's memory per call, issue 13)."""
        for promise in self.promises:
            for branch in promise.branches.values():
                branch.promise = None
            promise.parents = []
        self.promises = []
        self.graph = None

    def promise_depth(self, promise: Promise, _memo=None) -> int:
        """Longest distance from the origin's producers to an Arg Node over the promise's branches (nested
        promises included): the paper's ``d(v_p)``.

        Iterative (an explicit stack, children before parents), so thousands of nested promises -- a deep residual
        stack -- need no Python recursion; ``_memo`` shares results between calls for several promises."""
        memo = {} if _memo is None else _memo
        if "origins" not in memo:
            memo["origins"] = {p.origin: p for p in self.promises}
        origins = memo["origins"]

        def children(p):
            for b in p.branches.values():
                if b.requests_value:
                    child = origins.get(b.terminal)
                    yield b, (child if child is not None and child is not p else None)

        stack = [promise]
        while stack:
            p = stack[-1]
            if id(p) in memo:
                stack.pop()
                continue
            todo = [c for _, c in children(p) if c is not None and id(c) not in memo]
            if todo:
                stack.extend(todo)
                continue
            memo[id(p)] = max((len(b.chain) + (0 if c is None else 1 + memo[id(c)]) for b, c in children(p)),
                              default=0)
            stack.pop()
        return memo[id(promise)]


class _State:
    __slots__ = ("rule", "pending", "awaiting", "rel", "requests", "served", "value", "promise", "mode", "done",
                 "known", "derive", "unknown", "output")

    def __init__(self, rule, pending, nslots):
        self.rule = rule
        self.pending = pending
        self.awaiting = 0
        self.rel = [None] * nslots
        self.requests = []  # unserved (branch, slot)
        self.served = 0
        self.value = None
        self.promise = None
        self.mode = None  # None | "chain" | "promise" | "plain"
        self.done = False
        self.known = None
        self.derive = None  # (constant edges, output value): solved from the output once the operands are known
        self.unknown = ()  # constant edges nothing can recover: an error if a rule or a forward uses them
        self.output = None  # the outputs as a consumer saved them (a node with constant operands only)


class Engine:
    """One relevance propagation over a captured graph. Holds all traversal state; rules hold none."""

    #: the value of the root's output (the explained tensor, when its node has one output), set by the caller
    #: before :meth:`run`: lets a constant added last (a logits bias) be solved as ``output - other``
    root_output = None

    def __init__(self, graph: Graph, config, taps=(), want_params=False, constants=None, model=None,
                 trace: bool = False):
        self.graph = graph
        self.trace = [] if trace else None  # per-node relevance in / out (NodeTrace), for conservation reports
        self.constants = constants or {}  # grad_fn -> constants.Call of the forward pass
        self.recorded = constants is not None  # the forward pass ran under a ConstantRecorder
        self.config = config
        self.taps = {t: None for t in taps}
        self.tap_nodes = {n for n, _ in self.taps}
        self.want_params = want_params
        # operands that reach an explained input are activations, anything else parameters/constants (graph.py)
        sources = graph.set_sources(list(self.taps))
        self.state = {}
        unsupported: dict[str, list] = {}
        for node in graph.order:
            name = saved.op_name(node)
            rule = None if name == _LEAF else lookup(node, config.rule_overrides)
            if rule is not None:
                try:
                    rule = rule.specialize(node, self.constants.get(node))
                except UnrecoverableValueError as err:
                    raise self._named(err, node) from None
            if rule is None and name != _LEAF and not want_params and graph.is_constant_node(node):
                rule = _CONSTANT  # a function of parameters only: no relevance it gets can reach an input
            if rule is None and name != _LEAF:
                unsupported.setdefault(saved.full_name(node), []).append(None)
            nslots = 1 if name == _LEAF else saved.num_outputs(node)
            self.state[node] = _State(rule, graph.indegree(node), nslots)
        if unsupported:
            if config.unsupported == "raise":
                raise UnsupportedOperationError(unsupported)
            warnings.warn(f"dynamiclrp: no rule for {sorted(unsupported)}; using the generic FallbackRule "
                          "(epsilon on the op's linearisation, from its own backward; exact for routing and linear "
                          "ops). Results for the other ops are approximate.",
                          stacklevel=3)
            fallback = FallbackRule()
            for node in graph.order:
                if self.state[node].rule is None and saved.op_name(node) != _LEAF:
                    self.state[node].rule = fallback
        if want_params and not sources:  # parameters explained on data outside the graph (no input needs grad)
            graph.declare_inputs(self.taps, want_params, self._rule_of)
        if config.layer_map or config.canonize:  # per-position product rules, batch norms merged (layer_map.py)
            from .layer_map import plan

            for node, rule in plan(graph, config, self._rule_of, self.tap_nodes, self.constants, model).items():
                self.state[node].rule = rule
        self.stack: list = []
        self.breakq: deque = deque()
        self.readyq: deque = deque()
        self.promises: list[Promise] = []
        self.chain_nodes = 0
        self.propagations = {node: 0 for node in graph.order}
        self.compute_dtype = None
        self._softmax_fed: dict = {}  # constants.feeds_softmax_only verdicts, one pass over the graph

    # ------------------------------------------------------------------------------------------- driver
    def run(self, seed, slot: int = 0) -> EngineResult:
        """Propagate ``seed`` (relevance of output ``slot`` of the root) through the whole graph.

        Half and bfloat16 graphs are explained in float32 (relevances accumulate in float32; operands are cast
        where rules use them), so results stay close to a float32 run on the same weights."""
        if not all_finite(seed):
            raise NonFiniteRelevanceError("the starting relevance (the model output at the target) is not finite")
        if seed.dtype in (torch.float16, torch.bfloat16):
            self.compute_dtype = torch.float32
            seed = seed.float()
        root = self.graph.root
        self.state[root].rel[slot] = seed
        self.stack.append(root)
        with torch.no_grad():
            while self.stack or self.breakq:
                node = self.breakq.popleft() if self.breakq else self.stack.pop()
                self._visit(node)
                self._drain()
        left = [n for n in self.graph.order if self.propagations[n] != 1]
        if left:
            names = sorted({saved.full_name(n) for n in left})
            raise RuntimeError(f"internal error: {len(left)} nodes were not propagated exactly once ({names}); "
                               "please report this graph")
        self._release()
        return EngineResult(self.taps, self.propagations, self.promises, self.chain_nodes, self.graph, self.trace)

    def _release(self):
        """Drop every tensor the traversal held (relevances, rebuilt values, promise operands). The promise
        structure stays for :func:`~dynamiclrp.api.summarize` and :meth:`EngineResult.promise_depth`; its
        ``Promise <-> Branch`` reference cycles are broken by :meth:`EngineResult.release`."""
        for promise in self.promises:
            promise.args = promise.rout = promise.rins = None
            for branch in promise.branches.values():
                branch.value = None
                for step in branch.chain:
                    step.inputs = step.outputs = None
        for s in self.state.values():
            s.rel = s.value = s.known = s.derive = s.promise = None
            s.requests = []
        self.root_output = None

    def _drain(self):
        while self.readyq:
            self._on_ready(self.readyq.popleft())

    # ------------------------------------------------------------------------------------------- visiting
    def _visit(self, u):
        s = self.state[u]
        if s.done or s.mode == "chain":
            return
        if s.requests:
            if s.value is None:
                s.value = self._rebuild(u)
            if s.value is not None:
                self._serve(u)
            elif s.promise is None:
                if self._can_chain(u):
                    self._extend_chain(u)
                    return
                self._make_promise(u, "pre" if s.pending > 0 else "dependent", with_forward=True)
        if s.pending == 0 and s.awaiting == 0:
            if s.promise is not None:
                self._try_complete(s.promise)
            elif s.rule is not None and self._missing_for_rule(u):
                self._make_promise(u, "strict", with_forward=False)
            else:
                self._propagate(u)

    def _known(self, u) -> list:
        """Operand values of ``u`` available without a promise: saved tensors, and leaves behind its edges."""
        s = self.state[u]
        if s.known is None:
            vals = [] if s.rule is None else list(s.rule.known_inputs(u))
            for i, (child, _slot) in enumerate(self.graph.edges[u]):
                if vals[i] is None and child is not None and saved.op_name(child) == _LEAF:
                    vals[i] = saved.leaf_variable(child)
            if s.rule is not None and any(v is None for v in vals):
                fill_constants(self.graph, u, s.rule, vals, self.constants, self._rule_of, self._softmax_fed)
                self._plan_recovery(u, vals)
            s.known = vals
        return s.known

    def _plan_recovery(self, u, vals):
        """Constant operands (``None`` edges) that neither autograd, the recorder nor a softmax accounts for:
        solve them from ``u``'s output where a consumer saved it (``b = y - a`` for an add whose sum the next
        matmul or norm kept; see :func:`~dynamiclrp.constants.consumer_saved_output`) -- now if the other
        operands are known, else once the promise has retrieved them (:meth:`_derive`). What stays unknown is
        reported only if a rule or a forward recomputation actually uses it (relevance that is exactly zero needs
        no operand values). The saved output also makes ``u`` an Arg Node (:meth:`_rebuild`): its forward, which
        would need the constants, never has to run."""
        s = self.state[u]
        holes = [i for i, (c, _) in enumerate(self.graph.edges[u]) if c is None and vals[i] is None]
        if not holes or saved.num_outputs(u) != 1:
            return
        y = consumer_saved_output(self.graph, u, self._rule_of)
        if y is None and u is self.graph.root and self.root_output is not None:
            y = self.root_output  # the explained output itself (a bias added to the logits)
        if y is not None:
            s.output = (y,)
            solvable = [i for i in invertible_edges(u) if i in holes]
            invert(u, vals, y)
            left = tuple(i for i in solvable if vals[i] is None)
            if left:
                s.derive = (left, y)
        s.unknown = tuple(i for i in holes if vals[i] is None and not (s.derive and i in s.derive[0]))

    def plan(self) -> list:
        """Dry run of the value planning (no relevance computed): ``(node, edges)`` for every node whose relevance
        rule needs constant operands that neither autograd, the recorder, a softmax nor the graph
        (:meth:`_plan_recovery`) provides. An explanation raises :class:`UnrecoverableValueError` at such a node
        unless the relevance reaching it is exactly zero. Uses the same ``_known`` as :meth:`run` (and fills its
        cache), so the engine can run afterwards."""
        blocking = []
        for u in self.graph.order:
            s = self.state[u]
            if s.rule is None or s.rule is _CONSTANT or all(c is not None for c, _ in self.graph.edges[u]):
                continue
            self._known(u)
            missing = [i for i in s.unknown if i in set(s.rule.needs(u, self.graph))]
            if missing:
                blocking.append((u, missing))
        return blocking

    def rank(self, u) -> int:
        """``u``'s index among the nodes of its type in topological order (locates it in a re-run forward)."""
        name = saved.full_name(u)
        return sum(1 for n in self.graph.order[: self.graph.order.index(u)] if saved.full_name(n) == name)

    def _derive(self, u, args):
        """Fill the constants planned by :meth:`_plan_recovery` into ``args`` (the operand values a promise
        retrieved)."""
        s = self.state[u]
        if s.derive is not None:
            invert(u, args, s.derive[1])

    def _named(self, err: UnrecoverableValueError, u) -> UnrecoverableValueError:
        """``err`` (raised by a rule) naming its node, so that callers can add the module path."""
        if err.op is not None:
            return err
        return UnrecoverableValueError(err.reason, op=saved.full_name(u), rank=self.rank(u),
                                       recorded=self.recorded)

    def _unrecoverable(self, u, edges, use: str):
        """The error for constants of ``u`` that nothing could recover but ``use`` needs."""
        name, rank = saved.full_name(u), self.rank(u)
        return UnrecoverableValueError(
            f"{name} needs the value of its input {', '.join(map(str, edges))} to {use}: a constant that autograd "
            "did not save, that is not part of the graph (a buffer, a frozen parameter, a mask or a Python "
            "number), that no consumer saved, and that the forward pass did not record.",
            op=name, rank=rank, recorded=self.recorded)

    def _rule_of(self, node):
        return self.state[node].rule

    def _kept_output(self, u):
        """``u``'s (single) output as the forward pass kept it, or ``None``: saved by ``u`` itself, saved by a
        consumer as its input (:func:`~dynamiclrp.constants.consumer_saved_output`), or the explained output.
        Lets product rules skip recomputing ``z = f(x, W) + b`` (issue 13)."""
        if saved.num_outputs(u) != 1:
            return None
        out = self.state[u].rule.saved_output(u)
        if out is not None:
            return tuple(out)
        y = consumer_saved_output(self.graph, u, self._rule_of)
        root = self.graph.root
        if y is None and self.root_output is not None:
            if u is root:
                y = self.root_output
            elif saved.op_name(root) in _VIEWS and self.graph.edges[root][0] == (u, 0):
                # an LM head: logits = view(x @ W); z is the explained output (the largest product of the model)
                shape = saved.output_shapes(u)[0]
                if self.root_output.numel() == shape.numel() and self.root_output.dtype == saved.output_dtypes(u)[0]:
                    y = self.root_output.reshape(shape)
        return None if y is None else (y,)

    def _rebuild(self, u):
        """``u``'s outputs from saved tensors alone, or ``None``: non-``None`` makes ``u`` an Arg Node."""
        s = self.state[u]
        if s.rule is None:  # AccumulateGrad
            return (saved.leaf_variable(u),)
        out = s.rule.saved_output(u)
        if out is not None:
            return tuple(out)
        known = self._known(u)
        if s.output is not None:  # a consumer saved the output of a node with constant operands
            return s.output
        if all(known[i] is not None for i in s.rule.forward_needs(u)):
            try:
                return self._forward(u, known)
            except NotImplementedError:
                return None
        return None

    def _forward(self, u, inputs) -> tuple:
        """``u``'s rule recomputing its outputs; a rule's :class:`UnrecoverableValueError` gets the node's name."""
        try:
            return tuple(self.state[u].rule.forward(u, inputs))
        except UnrecoverableValueError as err:
            raise self._named(err, u) from None

    def _needed(self, u, with_forward: bool) -> set:
        rule = self.state[u].rule
        needed = set(rule.needs(u, self.graph))
        if with_forward:
            needed |= set(rule.forward_needs(u))
        s = self.state[u]
        self._known(u)
        if s.derive is not None and needed & set(s.derive[0]):  # solving a constant takes the other operands
            needed |= {i for i, (c, _) in enumerate(self.graph.edges[u]) if c is not None}
        return needed - set(s.unknown)  # no branch can fetch these: reported where they are used (_apply)

    def _missing_for_rule(self, u) -> bool:
        known = self._known(u)
        return any(known[i] is None for i in self._needed(u, with_forward=False))

    def _can_chain(self, u) -> bool:
        """A branch may pass through ``u`` (record it as a chain step) when ``u`` has a single consumer edge,
        a single producer edge, and every other value its forward and rule need is saved."""
        s = self.state[u]
        if s.rule is None or len(s.requests) != 1 or self.graph.indegree(u) != 1:
            return False
        live = [i for i, (c, _) in enumerate(self.graph.edges[u]) if c is not None]
        if len(live) != 1:
            return False
        known = self._known(u)
        if s.unknown and set(s.unknown) & set(s.rule.forward_needs(u)):
            return False  # its forward cannot run: a promise here reports the missing constant if it is used
        return all(known[i] is not None for i in self._needed(u, with_forward=True) if i != live[0])

    # ------------------------------------------------------------------------------------------- landing
    def _arrive(self, c):
        s = self.state[c]
        s.pending -= 1
        if s.pending == 0:
            self.stack.append(c)
        elif s.requests:
            self.breakq.append(c)

    def _land_tensor(self, c, slot, r):
        s = self.state[c]
        if r is not None:
            s.rel[slot] = r if s.rel[slot] is None else s.rel[slot] + r
        self._arrive(c)

    def _land_branch(self, c, slot, branch: Branch):
        s = self.state[c]
        branch.terminal, branch.slot = c, slot
        s.awaiting += 1
        if branch.requests_value:
            s.requests.append((branch, slot))
            if s.promise is not None:  # input aggregation: a later branch joins the node's existing promise
                s.promise.parents.append(branch)

    def _deliver(self, c, slot, r):
        s = self.state[c]
        if r is not None:
            s.rel[slot] = r if s.rel[slot] is None else s.rel[slot] + r
        s.awaiting -= 1
        if s.awaiting == 0 and s.pending == 0:
            self.stack.append(c)

    # ------------------------------------------------------------------------------------------- promises
    def _extend_chain(self, u):
        s = self.state[u]
        branch, slot = s.requests.pop()
        s.awaiting -= 1
        s.mode = "chain"
        self.chain_nodes += 1
        edge = next(i for i, (c, _) in enumerate(self.graph.edges[u]) if c is not None)
        branch.chain.append(ChainStep(u, slot, edge))
        child, cslot = self.graph.edges[u][edge]
        self._land_branch(child, cslot, branch)
        self._arrive(child)

    def _make_promise(self, u, kind: str, with_forward: bool):
        s = self.state[u]
        needed = self._needed(u, with_forward)
        promise = Promise(origin=u, kind=kind, args=list(self._known(u)))
        promise.parents = [b for b, _ in s.requests]
        s.promise, s.mode = promise, "promise"
        self.promises.append(promise)
        for i, (child, cslot) in enumerate(self.graph.edges[u]):
            if child is None:
                continue
            branch = Branch(promise, i, requests_value=i in needed and promise.args[i] is None)
            promise.branches[i] = branch
            promise.missing += branch.requests_value
            self._land_branch(child, cslot, branch)
        for i in range(len(self.graph.edges[u])):  # decrement after all branches landed (same-child edges)
            if self.graph.edges[u][i][0] is not None:
                self._arrive(self.graph.edges[u][i][0])
        if promise.ready:
            self.readyq.append(promise)

    def _serve(self, u):
        """Forward chaining: hand ``u``'s output to every branch waiting on it, through each branch's chain."""
        s = self.state[u]
        requests, s.requests = s.requests, []
        for branch, slot in requests:
            s.served += 1
            v = s.value[slot]
            for step in reversed(branch.chain):
                inputs = list(self._known(step.node))
                inputs[step.edge] = v
                step.inputs = inputs
                step.outputs = self._forward(step.node, inputs)
                v = step.outputs[step.slot]
            branch.value = v
            if branch.promise.set_arg(branch.edge, v):
                self.readyq.append(branch.promise)

    def _on_ready(self, promise: Promise):
        u = promise.origin
        s = self.state[u]
        self._derive(u, promise.args)
        if s.requests or s.served:
            missing = [i for i in s.unknown if i in s.rule.forward_needs(u)]
            if s.output is not None:
                s.value = s.output
            elif missing:
                raise self._unrecoverable(u, missing, "recompute its output for a consumer")
            else:
                s.value = self._forward(u, promise.args)
            if s.requests:
                self._serve(u)
        self._try_complete(promise)

    def _try_complete(self, promise: Promise):
        u = promise.origin
        s = self.state[u]
        if promise.complete or not promise.ready or s.pending or s.awaiting:
            return
        promise.rout = s.rel
        self._derive(u, promise.args)
        promise.rins = self._apply(u, s.rel, promise.args, s.value)
        promise.complete = True
        s.rel = s.value = promise.rout = None  # memory: the origin is done, nothing reads them again
        for i, branch in promise.branches.items():
            r = promise.rins[i]
            for step in branch.chain:  # backward fast-forwarding
                rel = [None] * saved.num_outputs(step.node)
                rel[step.slot] = r
                r = self._apply(step.node, rel, step.inputs or list(self._known(step.node)), step.outputs)[step.edge]
                step.inputs = step.outputs = None
            branch.value = None
            self._deliver(branch.terminal, branch.slot, r)
        promise.rins = promise.args = None

    # ------------------------------------------------------------------------------------------- rules
    def _propagate(self, u):
        s = self.state[u]
        s.mode = s.mode or "plain"
        rins = self._apply(u, s.rel, self._known(u), s.value)
        s.rel = s.value = None  # memory: u is done, its relevance and rebuilt outputs are not read again
        for i, (child, cslot) in enumerate(self.graph.edges[u]):
            if child is not None:
                self._land_tensor(child, cslot, rins[i] if rins else None)

    def _record(self, u, rel):
        if u in self.tap_nodes:
            for k, r in enumerate(rel):
                if (u, k) in self.taps:
                    self.taps[(u, k)] = r

    def _apply(self, u, rel, inputs, outputs):
        s = self.state[u]
        s.done = True
        self.propagations[u] += 1
        if all(r is None for r in rel):  # nothing arrived (e.g. a weight's transpose): nothing to distribute
            if u in self.tap_nodes:
                self._record(u, [saved.zeros(u, k) for k in range(len(rel))])
            return [None] * len(self.graph.edges[u])
        if s.unknown and s.rule is not None:
            missing = [i for i in s.unknown if i in set(s.rule.needs(u, self.graph))]
            if missing:
                if not any(bool(r.any()) for r in rel if r is not None):  # exactly zero: nothing to distribute
                    if u in self.tap_nodes:
                        self._record(u, [saved.zeros(u, k) for k in range(len(rel))])
                    return [None] * len(self.graph.edges[u])
                raise self._unrecoverable(u, missing, "distribute its relevance")
        rel = [r if r is not None else saved.zeros(u, k) for k, r in enumerate(rel)]
        if self.compute_dtype is not None:
            rel = [_up(r, self.compute_dtype) for r in rel]
            inputs = [_up(x, self.compute_dtype) for x in inputs]
            outputs = None if outputs is None else tuple(_up(o, self.compute_dtype) for o in outputs)
        self._record(u, rel)
        if s.rule is None:
            return []
        if getattr(s.rule, "reuses_output", False):  # products: z as the forward pass kept it, not recomputed
            outputs = None if self.compute_dtype is not None else outputs or self._kept_output(u)
        ctx = RuleContext(u, s.rule, inputs, rel, self.config, self.graph, self.want_params, outputs)
        try:
            rins = list(s.rule.relevance(ctx))
        except UnrecoverableValueError as err:
            raise self._named(err, u) from None
        if self.config.check_finite:
            for i, r in enumerate(rins):
                if r is not None and not all_finite(r):
                    raise NonFiniteRelevanceError(
                        f"relevance became NaN/Inf at {saved.full_name(u)} (input {i}); its output relevance was "
                        f"{'finite' if all(all_finite(x) for x in rel) else 'already non-finite'}"
                    )
        if self.trace is not None:
            self.trace.append(NodeTrace(saved.full_name(u), len(self.trace), float(sum(r.sum() for r in rel)),
                                        float(sum(r.sum() for r in rins if r is not None))))
        return rins


def _up(t, dtype):
    if isinstance(t, torch.Tensor) and t.dtype in (torch.float16, torch.bfloat16):
        return t.to(dtype)
    return t


class _ConstantSubgraphRule(FallbackRule):
    """For an op without a rule whose output reaches no explained input (weight standardisation written with
    ``torch.var``...): relevance arriving there cannot reach an input, so it is not distributed; the value is
    recomputed as :class:`FallbackRule` does, should a consumer need it."""

    def needs(self, node, graph):
        return ()

    def relevance(self, ctx):
        return [None] * len(ctx.edges)


_CONSTANT = _ConstantSubgraphRule()
