"""Nodes that hide the ops they ran: custom ``torch.autograd.Function`` s (user code, reentrant
``torch.utils.checkpoint``) and the fused CPU LSTM layer (``MkldnnRnnLayerBackward0``).

One answer for all of them: **re-run the forward under grad** from the node's operand values (saved tensors,
leaves, or promises of the engine: the rules ``need`` every live edge) to expose an inner graph of primitive ops,
and propagate the node's output relevance through it with a nested :class:`~dynamiclrp.engine.Engine` (same
config, constants recorded by a :class:`~dynamiclrp.constants.ConstantRecorder` around the re-run, taps at the
inner inputs). The inner inputs are fresh leaves: those whose outer edge is an activation are explained inputs
(sources), those whose outer edge is a parameter or constant (``is_param``) are made ``nn.Parameter`` s, so that a
custom linear layer ``x @ W.T`` in one Function is a product with a parameter inside as it is outside. Relevance
is therefore exactly what the same ops, written plainly, would get.

* :class:`FunctionRule` -- any Python Function (found by :data:`~dynamiclrp.rules.base.MATCHERS`, after the
  rules filed by name): ``cls.forward(stub_ctx, *tensors)`` (or ``cls.forward(*tensors)`` for Functions with a
  ``setup_context``), where the stub ctx accepts ``save_for_backward``, ``mark_dirty``,
  ``mark_non_differentiable``, ``set_materialize_grads`` and attribute writes, and does nothing with them.
* :class:`CheckpointRule` -- reentrant checkpoint (``CheckpointFunctionBackward``): ``run_function(*args)``
  with the arguments rebuilt from ``ctx.inputs``/``ctx.tensor_indices`` and the saved tensors, under the RNG state
  and autocast settings of the original forward (as the checkpoint's own backward does). Parameters used inside
  ``run_function`` are leaves of the inner graph and parameters for the rules; they are no edges of the outer
  node, so ``propagate(..., [param])`` cannot collect their relevance (use ``use_reentrant=False``, which records
  the ops themselves and needs nothing from here).
* :class:`CompiledFunctionRule` -- ``torch.compile`` d regions (``CompiledFunctionBackward``) run generated
  kernels that autograd cannot record: refused with an error saying what to do.
* :class:`LstmLayerRule` -- ``MkldnnRnnLayerBackward0``, one node per layer and direction of every CPU
  ``nn.LSTM``: the layer is recomputed step by step with the ops of ``nn.LSTMCell`` (see :func:`lstm_layer`).
  ``nn.GRU`` needs nothing from here: on CPU it records its primitive ops itself (``UnsafeSplitBackward0``...).

A Function called with non-tensor arguments (autograd keeps none of them) is not claimed: it stays an op without
a rule (:class:`~dynamiclrp.errors.UnsupportedOperationError` names it and its module before anything runs,
``coverage()`` lists it). A claimed Function whose forward still cannot be re-run -- it needs a real ctx, returns
tensors without a graph, or takes a tensor that needs no grad and that it did not save -- raises
:class:`FunctionReplayError` naming the Function and the way out: ``use_reentrant=False`` for checkpoints, a rule
of one's own via ``LRPConfig(rule_overrides=...)`` (``docs/adding-a-rule.md``).

Limits: the inner graph exists only once propagation reaches the node, so an op without a rule *inside* a
Function is named then (not before propagation, and not by ``coverage()`` without its dry run); position keys of
``LRPConfig.layer_map`` (the first layer...) are read in the inner graph; transformers' Reformer
(``_ReversibleFunction``) passes modules and flags as arguments, so it is not claimed (an op without a rule).

LSTM gates (Arras et al. 2017, "Explaining recurrent neural network predictions in sentiment analysis"; Arras et
al. 2019, "Explaining and interpreting LSTMs"). The fused layer is explained exactly like the same LSTM without a
fused kernel -- a float64 ``nn.LSTM`` (PyTorch records its primitive ops then), ``nn.LSTMCell`` unrolled, an LSTM
written by hand: one explanation for every way of writing an LSTM, whatever dtype or kernel PyTorch picks. The
products in ``c_t = f * c_{t-1} + i * g`` and ``h_t = o * tanh(c_t)`` therefore get the library's product rule
(:class:`~dynamiclrp.rules.elementwise.MulRule`): with ``bilinear="uniform"`` (default) AttnLRP's uniform rule,
half to the gate (which flows on through the sigmoid, an identity, into the pre-activations), half to the signal;
with ``bilinear="cp"`` CP-LRP holds constant the factor it recognises as a gate: the forget gate in
``f * c_{t-1}`` (``c_{t-1}`` is a sum), while in ``i * g`` and ``o * tanh(c_t)`` both factors are outputs of
elementwise nonlinearities, :meth:`~dynamiclrp.graph.Graph.held_factor_edge` sees no structural gate and the
uniform rule stays. Arras et al.'s *signal-take-all* (gates get nothing; ``g``, ``c_{t-1}`` and ``tanh(c_t)`` get
everything) is what ``cp`` would give if ``held_factor_edge`` ranked sigmoid gates above ``tanh`` outputs, a
change of the graph's ranking for every model, not of this rule. Detaching the gates here instead would make a
float32 LSTM (fused) explain differently from a float64 one (unfused), so it is not done.

GPU plan (not implemented, no GPU here): ``CudnnRnnBackward0`` (cuDNN/MIOpen) is one node for all layers and
directions; it saves ``input``, ``weight`` (the flat list ``[w_ih, w_hh, (b_ih, b_hh)]`` per layer and direction,
in ``nn.LSTM._flat_weights`` order), ``hx``, ``cx``, ``mode``, ``num_layers``, ``bidirectional``, ``batch_first``,
``dropout``/``dropout_state``: the same :func:`lstm_layer` applied layer by layer (concatenating directions) gives
its inner graph (GRU: the ``gru_cell`` ops). ``ThnnFusedLstmCellBackward0``/``ThnnFusedGruCellBackward0`` (the
fused CUDA cells of ``nn.LSTMCell``/``nn.GRUCell``) take the pre-activations ``input_gates``, ``hidden_gates`` and
biases as operands: re-run the cell's elementwise part from them as an inner graph, in the same way.
"""
from __future__ import annotations

import contextlib

import torch

from .. import saved
from ..constants import ConstantRecorder
from ..errors import DynamicLRPError
from ..graph import Graph
from .base import MATCHERS, OpRule, RuleContext, edge_shape, live_edges, register

_HELP = ("Ways out: for torch.utils.checkpoint pass use_reentrant=False (it records the ops themselves); "
         "explain a torch.compile'd model through its uncompiled module (compiled._orig_mod) or wrap the region "
         "in torch.compiler.disable; or give the node a rule of your own with "
         "LRPConfig(rule_overrides={name: rule}) (see docs/adding-a-rule.md).")


class FunctionReplayError(DynamicLRPError):
    """The forward of a custom ``autograd.Function`` cannot be re-run to expose the ops it hides."""

    def __init__(self, node, why: str):
        self.op = saved.full_name(node)
        super().__init__(f"{self.op}: dynamiclrp explains a custom autograd.Function by re-running its forward "
                         f"under grad, but {why}. {_HELP}")


# ---------------------------------------------------------------------------------------------- nested runs


def explain_inner(ctx: RuleContext, values: list, run) -> list:
    """Relevance of ``ctx.node``'s operands by propagating ``ctx.relevance`` through the graph that ``run``
    records.

    Parameters
    ----------
    ctx: the outer node's context (config, relevance per output slot, which edges are parameters).
    values: one value per edge of the node (``None`` where unknown; every live edge must be known).
    run: ``run(operands) -> tuple`` of the node's outputs (one per output slot), called under grad with fresh
        leaves in place of the live operands (``nn.Parameter`` for parameter edges) and the plain values elsewhere.

    The outputs that carry relevance become the root of the inner graph (flattened and concatenated, a routing
    step, when there are several); a nested :class:`~dynamiclrp.engine.Engine` with the same config propagates
    the relevance to taps at the leaves. An output that *is* an operand passes its relevance to it unchanged.
    """
    from ..engine import Engine  # late: the engine imports the rules

    node = ctx.node
    leaves = []
    for i, v in enumerate(values):
        if not ctx.has_edge(i) or not isinstance(v, torch.Tensor):
            leaves.append(v.detach() if isinstance(v, torch.Tensor) else v)
        elif not v.is_floating_point() and not v.is_complex():
            leaves.append(v.detach())
        elif ctx.is_param(i):
            leaves.append(torch.nn.Parameter(v.detach()))
        else:
            leaves.append(v.detach().requires_grad_(True))
    with torch.enable_grad(), ConstantRecorder() as recorder:
        outs = run(leaves)
    if len(outs) != len(ctx.relevance):
        raise FunctionReplayError(node, f"its re-run returned {len(outs)} tensors where the node has "
                                        f"{len(ctx.relevance)} outputs")
    direct = [None] * len(values)
    roots, seeds = [], []
    for k, (out, r) in enumerate(zip(outs, ctx.relevance)):
        if r is None or not bool(r.any()):
            continue
        same = [i for i, leaf in enumerate(leaves) if leaf is out and ctx.has_edge(i)]
        if same:  # returned an input as it is
            i = same[0]
            direct[i] = r if direct[i] is None else direct[i] + r
        elif not isinstance(out, torch.Tensor) or out.grad_fn is None:
            raise FunctionReplayError(node, f"its re-run under grad recorded no graph for output {k} (the forward "
                                            "detaches, runs compiled kernels, or disables grad itself)")
        else:
            roots.append(out)
            seeds.append(r)
    result = [None] * len(values)
    if roots:
        if len(roots) == 1:
            root, seed = roots[0], seeds[0].reshape(roots[0].shape)
        else:
            with torch.enable_grad():  # rules run under no_grad
                root = torch.cat([o.reshape(-1) for o in roots])
            seed = torch.cat([s.reshape(-1).to(root.dtype) for s in seeds])
        graph = Graph.capture(root)
        taps = {}
        for node_ in graph.order:
            if saved.op_name(node_) == "AccumulateGrad":
                var = saved.leaf_variable(node_)
                for i, leaf in enumerate(leaves):
                    if leaf is var and ctx.has_edge(i):
                        taps[i] = (node_, 0)
        engine = Engine(graph, ctx.config, taps=list(taps.values()), want_params=ctx.want_params,
                        constants=recorder.calls)
        found = engine.run(seed.detach(), slot=root.output_nr).taps
        for i, tap in taps.items():
            result[i] = found.get(tap)
    rel = []
    for i in range(len(values)):
        r = result[i]
        if direct[i] is not None:
            r = direct[i] if r is None else r + direct[i]
        rel.append(None if r is None else r.reshape(edge_shape(ctx, i)))
    return rel


def _tensors_of(out) -> tuple:
    """The tensor outputs of a forward, in order (one per output slot of its node)."""
    if isinstance(out, torch.Tensor):
        return (out,)
    if isinstance(out, (tuple, list)):
        return tuple(o for o in out if isinstance(o, torch.Tensor))
    return ()


class _StubCtx:
    """A stand-in for the ctx of a Function's forward: keeps attributes, ignores the bookkeeping calls."""

    def __init__(self, needs_input_grad):
        self.needs_input_grad = needs_input_grad
        self.saved_tensors = ()
        self.materialize_grads = True

    def save_for_backward(self, *tensors):
        self.saved_tensors = tensors

    def save_for_forward(self, *tensors):
        pass

    def mark_dirty(self, *tensors):
        pass

    def mark_non_differentiable(self, *tensors):
        pass

    def set_materialize_grads(self, value):
        self.materialize_grads = value


class _ReplayRule(OpRule):
    """Shared machinery: every live edge is needed (the promise engine delivers what autograd did not save),
    the output is recomputed by the re-run under ``no_grad``, relevance by :func:`explain_inner`."""

    def needs(self, node, graph):
        return live_edges(node)

    def forward_needs(self, node):
        return live_edges(node)

    def replay(self, node, operands) -> tuple:
        """The node's outputs from its operands (one per edge), as the forward computed them."""
        raise NotImplementedError

    def _operands(self, node, inputs) -> list:
        missing = [i for i, v in enumerate(inputs) if v is None]
        if missing:
            raise FunctionReplayError(node, f"the value of its input(s) {missing} is unknown (a tensor that "
                                            "needs no grad and that the Function did not save)")
        return list(inputs)

    def forward(self, node, inputs):
        with torch.no_grad():
            return self.replay(node, self._operands(node, inputs))

    def relevance(self, ctx):
        operands = self._operands(ctx.node, ctx.inputs)
        return explain_inner(ctx, operands, lambda leaves: self.replay(ctx.node, leaves))


class FunctionRule(_ReplayRule):
    """Any Python ``torch.autograd.Function``: relevance through its forward, re-run under grad (module docs).

    Operand values: a saved tensor whose ``grad_fn`` and output slot are those of an edge is that edge's value;
    leaves come from the engine, anything else from a promise. The forward must take tensors only (autograd keeps
    nothing of other arguments) and must not need more of its ctx than the stub offers."""

    def known_inputs(self, node):
        vals = [None] * len(node.next_functions)
        try:
            tensors, _cls = saved.function_saved(node)
        except RuntimeError:  # freed or modified in place: the engine's promises deliver the values instead
            return vals
        for t in tensors:
            if not isinstance(t, torch.Tensor) or t.grad_fn is None:
                continue
            for i, (child, slot) in enumerate(node.next_functions):
                if vals[i] is None and child is t.grad_fn and slot == t.output_nr:
                    vals[i] = t.detach()
        return vals

    def specialize(self, node, call):
        """Refuse before propagation (and in a dry run) a Function called with non-tensor arguments."""
        self._check_arguments(node, len(node.next_functions))
        return self

    @staticmethod
    def _check_arguments(node, n_tensors):
        needs = tuple(getattr(node, "needs_input_grad", ()) or ())
        if len(needs) != n_tensors:
            cls = saved.function_saved(node)[1]
            raise FunctionReplayError(node, f"{cls.__name__}.forward was called with {len(needs)} arguments of "
                                            f"which only {n_tensors} are tensors; autograd keeps no other "
                                            "argument, so the call cannot be repeated")
        return needs

    def replay(self, node, operands):
        _tensors, cls = saved.function_saved(node)
        needs = self._check_arguments(node, len(operands))
        setup = torch.autograd.function._is_setup_context_defined(getattr(cls, "setup_context", None))
        try:
            out = cls.forward(*operands) if setup else cls.forward(_StubCtx(needs), *operands)
        except Exception as err:  # any failure of user code in a stub ctx: say what happened and what to do
            raise FunctionReplayError(node, f"{cls.__name__}.forward failed when re-run with a stub ctx "
                                            f"({type(err).__name__}: {err})") from err
        return _tensors_of(out)


def _is_replayable_function(node) -> bool:
    """A Python Function node whose call had tensor arguments only (one per edge), so that it can be repeated.
    Others are not claimed: they stay ops without a rule (named by :class:`UnsupportedOperationError` with their
    module, listed by ``coverage()``, explained by the fallback under ``unsupported="warn"``)."""
    if not hasattr(node, "_forward_cls"):  # built-in ops: cheap, and no saved tensor is unpacked
        return False
    try:
        if saved.function_saved(node)[1] is None:
            return False
    except RuntimeError:  # saved tensors freed: still a Function; the error comes when its values are read
        pass
    return len(tuple(getattr(node, "needs_input_grad", ()) or ())) == len(node.next_functions)


MATCHERS.append((_is_replayable_function, FunctionRule()))


@register("CheckpointFunctionBackward")
class CheckpointRule(_ReplayRule):
    """Reentrant ``torch.utils.checkpoint.checkpoint(f, *args, use_reentrant=True)``: ``f(*args)`` re-run under
    grad with the forward's RNG state and autocast settings (module docs). The tensor arguments are the saved
    tensors, one per edge, in order."""

    def known_inputs(self, node):
        tensors = node.saved_tensors
        if len(tensors) != len(node.next_functions):
            return [None] * len(node.next_functions)
        return [t.detach() for t in tensors]

    def replay(self, node, operands):
        args = list(node.inputs)
        for idx, t in zip(node.tensor_indices, operands):
            args[idx] = t
        with _forward_state(node):
            out = node.run_function(*args)
        return _tensors_of(out)


@contextlib.contextmanager
def _forward_state(node):
    """The RNG state and autocast settings the checkpointed forward ran with (as checkpoint's backward)."""
    from torch.utils.checkpoint import set_device_states

    preserve = bool(node.preserve_rng_state)
    devices = list(node.fwd_devices) if preserve and node.had_device_in_fwd else []
    amp = torch.amp.is_autocast_available(node.device_type)
    with torch.random.fork_rng(devices=devices, enabled=preserve, device_type=node.device_type):
        if preserve:
            torch.set_rng_state(node.fwd_cpu_state)
            if node.had_device_in_fwd:
                set_device_states(node.fwd_devices, node.fwd_device_states, device_type=node.device_type)
        device_amp = torch.amp.autocast(node.device_type, **node.device_autocast_kwargs) if amp else (
            contextlib.nullcontext())
        with device_amp, torch.amp.autocast("cpu", **node.cpu_autocast_kwargs):
            yield


@register("CompiledFunctionBackward")
class CompiledFunctionRule(OpRule):
    """A ``torch.compile`` d region: its forward runs generated kernels that autograd does not record, so there
    is no inner graph to explain. Refused before propagation (in :meth:`specialize`), with the way out."""

    def specialize(self, node, call):
        raise FunctionReplayError(node, "it is a torch.compile'd region, whose forward runs generated kernels "
                                        "that autograd cannot record")


# ---------------------------------------------------------------------------------------------- LSTM


def lstm_layer(x, w_ih, w_hh, b_ih, b_hh, h, c, reverse: bool = False, batch_first: bool = False) -> tuple:
    """One LSTM layer in one direction, op for op as PyTorch computes it where no fused kernel runs (a float64
    ``nn.LSTM`` on CPU, ``aten/src/ATen/native/RNN.cpp``: the input projection for all steps at once, then
    ``nn.LSTMCell``'s ops per step):

    ``X = linear(x, W_ih, b_ih)``; per step ``gates = linear(h_{t-1}, W_hh, b_hh) + X_t``,
    ``i, f, g, o = chunk(gates, 4)``, ``c_t = sigma(f) * c_{t-1} + sigma(i) * tanh(g)``,
    ``h_t = sigma(o) * tanh(c_t)`` (Hochreiter & Schmidhuber 1997, PyTorch's gate order).

    So a fused layer is explained exactly like the unfused one and like ``nn.LSTMCell`` unrolled.
    Returns ``(output [T, B, H] or [B, T, H], h_T, c_T)``.
    """
    if batch_first:
        x = x.transpose(0, 1)
    xw = torch.nn.functional.linear(x, w_ih, b_ih).unbind(0)
    steps = range(len(xw) - 1, -1, -1) if reverse else range(len(xw))
    outs = []
    for t in steps:
        gates = torch.nn.functional.linear(h, w_hh, b_hh) + xw[t]
        i, f, g, o = gates.unsafe_chunk(4, 1)
        i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
        c = f * c + i * g
        h = o * c.tanh()
        outs.append(h)
    if reverse:
        outs.reverse()
    out = torch.stack(outs)
    return (out.transpose(0, 1) if batch_first else out), h, c


@register("MkldnnRnnLayerBackward")
class LstmLayerRule(_ReplayRule):
    """``MkldnnRnnLayerBackward0``: one layer and direction of a CPU ``nn.LSTM``, explained through
    :func:`lstm_layer` (gates: module docs). Edges ``(input, w_ih, w_hh, b_ih, b_hh, hx, cx)``, all saved; outputs
    ``(output, h_n, c_n)``. Packed sequences (``batch_sizes``) are refused."""

    _EDGES = ("input", "weight0", "weight1", "weight2", "weight3", "hx_", "cx_")

    def known_inputs(self, node):
        return [saved.get(node, name, None) for name in self._EDGES]

    def saved_output(self, node):
        outs = tuple(saved.get(node, f"result{k}", None) for k in range(3))
        return outs if all(isinstance(o, torch.Tensor) for o in outs) else None

    def specialize(self, node, call):
        if saved.get(node, "mode") != 2 or saved.get(node, "batch_sizes", ()):
            raise FunctionReplayError(node, "only plain LSTM layers on padded (not packed) sequences are "
                                            "recomputed; pad the sequences instead of packing them")
        return self

    def replay(self, node, operands):
        x, w_ih, w_hh, b_ih, b_hh, h, c = operands
        if not saved.get(node, "has_biases"):
            b_ih = b_hh = None
        # the layer always runs time-major (nn.LSTM transposes a batch_first input around it; the saved flag is
        # the module's, not the layer's)
        return lstm_layer(x, w_ih, w_hh, b_ih, b_hh, h, c, reverse=bool(saved.get(node, "reverse")))


__all__ = ["FunctionRule", "CheckpointRule", "CompiledFunctionRule", "LstmLayerRule", "FunctionReplayError",
           "explain_inner", "lstm_layer"]
