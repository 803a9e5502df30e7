"""The public API: :func:`propagate` (functional core) and :class:`LRP` (explain a model's output in one call)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from . import saved
from .config import LRPConfig
from .constants import ConstantRecorder
from .diagnostics import (
    CONSERVATION_LIMIT,
    ConservationReport,
    check_conservation,
    check_seed,
    check_training,
    conservation,
    is_lost_graph,
    stale_graph_error,
)
from .engine import Engine, EngineResult
from .errors import DynamicLRPError, NoGradGraphError, TargetError, UnrecoverableValueError, UnsupportedOperationError
from .graph import Graph


def _root_value(output: torch.Tensor):
    """The explained tensor as the value of its node's only output (``None`` for multi-output nodes)."""
    root = output.grad_fn
    return output.detach() if root is not None and saved.num_outputs(root) == 1 else None


def locate_unrecoverable(err: UnrecoverableValueError, model, inputs: tuple, forward_kwargs: dict):
    """``err`` with the module path of its node, found by one extra forward pass with hooks (best effort)."""
    from .coverage import _node_paths

    if err.op is None or err.rank is None or not isinstance(model, torch.nn.Module):
        return err
    try:
        paths = _node_paths(model, inputs, forward_kwargs, {err.op}).get(err.op, [])
    except Exception:  # locating is best effort; the original error stays accurate
        return err
    if err.rank < len(paths) and paths[err.rank] is not None:
        return err.located(paths[err.rank] or "<model>")
    return err

# ------------------------------------------------------------------------------------------------ targets


def seed_relevance(output: torch.Tensor, target=None) -> torch.Tensor:
    """The starting relevance: ``output`` masked to ``target`` (zero everywhere else).

    ``target`` may be ``None`` (arg-max of the last dimension, per sample, at the last position of a sequence),
    an int class index, a per-sample list/tensor of class indices, a ``(position, token)`` tuple for sequence
    outputs ``[batch, seq, vocab]`` (or a per-sample list of such tuples), or a boolean/float mask shaped like
    ``output``.
    """
    out = output.detach()
    if out.dim() == 0:
        if target is not None:
            raise TargetError("a scalar output takes no target")
        return out.clone()
    if isinstance(target, torch.Tensor) and target.shape == out.shape and target.dtype in (
            torch.bool, torch.float16, torch.bfloat16, torch.float32, torch.float64):
        return out * target.to(out.dtype)
    mask = torch.zeros_like(out, dtype=torch.bool)
    batch = out.shape[0] if out.dim() > 1 else 1
    view = mask if out.dim() > 1 else mask.unsqueeze(0)
    outv = out if out.dim() > 1 else out.unsqueeze(0)
    seq = outv.dim() == 3
    if target is None:
        last = outv[:, -1] if seq else outv.reshape(batch, -1)
        idx = last.argmax(-1)
        for b in range(batch):
            if seq:
                view[b, -1, idx[b]] = True
            else:
                view.reshape(batch, -1)[b, idx[b]] = True
        return out * mask
    if isinstance(target, tuple) and seq and len(target) == 2 and all(isinstance(t, int) for t in target):
        target = [target] * batch
    if isinstance(target, int):
        target = [target] * batch
    if isinstance(target, torch.Tensor):
        target = target.tolist() if target.dim() else [int(target)] * batch
    target = list(target)
    if len(target) != batch:
        raise TargetError(f"target has {len(target)} entries but the output has batch size {batch}")
    for b, t in enumerate(target):
        if seq:
            if not (isinstance(t, (tuple, list)) and len(t) == 2):
                raise TargetError(f"sequence output {tuple(out.shape)} needs (position, token) targets, got {t!r}")
            pos, tok = int(t[0]), int(t[1])
            if not (-outv.shape[1] <= pos < outv.shape[1] and 0 <= tok < outv.shape[2]):
                raise TargetError(f"target {t!r} out of range for output of shape {tuple(out.shape)}")
            view[b, pos, tok] = True
        else:
            flat = view.reshape(batch, -1)
            t = int(t)
            if not 0 <= t < flat.shape[1]:
                raise TargetError(f"target {t} out of range for {flat.shape[1]} outputs per sample")
            flat[b, t] = True
    return out * mask


# ------------------------------------------------------------------------------------------------ core


def _tap_for(graph: Graph, tensor: torch.Tensor):
    """The ``(node, slot)`` whose total relevance is the relevance of ``tensor``, or ``None``."""
    if tensor.grad_fn is not None:
        node = tensor.grad_fn
        return (node, tensor.output_nr) if node in graph.edges else None
    for node in graph.order:
        if saved.op_name(node) == "AccumulateGrad" and saved.leaf_variable(node) is tensor:
            return (node, 0)
    return None


def propagate(output: torch.Tensor, inputs: Sequence[torch.Tensor], relevance: torch.Tensor | None = None,
              config: LRPConfig | None = None, target=None, constants: dict | None = None,
              model: torch.nn.Module | None = None) -> tuple:
    """Propagate relevance from ``output`` back to ``inputs`` through ``output``'s autograd graph.

    Parameters
    ----------
    output: any tensor with a ``grad_fn``.
    inputs: tensors to collect relevance for: leaf inputs, parameters, or intermediate tensors kept from the
        forward pass. A tensor that requires grad but did not contribute to ``output`` gets zeros; one that does
        not require grad (so the graph cannot reach it) raises. They also say what is an activation: an operand
        whose subgraph reaches none of them (nor a non-parameter leaf upstream of an intermediate one) is a
        parameter or constant for the rules (see :meth:`~dynamiclrp.graph.Graph.set_sources`); with only
        ``nn.Parameter`` inputs, every leaf that is not a parameter is an input, and failing that, the data
        outside the graph.
    relevance: starting relevance shaped like ``output``; default: ``output`` masked to ``target``
        (see :func:`seed_relevance`).
    config: rules and hyper-parameters (default :class:`LRPConfig()`).
    constants: ``ConstantRecorder.calls`` of the forward pass that made ``output``: values of operands outside
        the graph (frozen biases, buffers) that some rules need. Without it, such values are recovered from the
        graph where that is exact (the constant addend of a sum a consumer saved is ``sum - other``); a value
        nothing recovers that a rule uses on non-zero relevance raises :class:`~dynamiclrp.UnrecoverableValueError`
        naming the op::

            with dynamiclrp.ConstantRecorder() as rec:
                out = model(x)
            propagate(out, [x], constants=rec.calls)

    model: the module that made ``output``, needed only for ``module:...`` keys of ``config.layer_map`` (its
        parameters name the module of each product).

    Returns
    -------
    A tuple with one relevance tensor per entry of ``inputs``.
    """
    config = config or LRPConfig()
    if not isinstance(output, torch.Tensor):
        raise TypeError(f"output must be a tensor, got {type(output).__name__}")
    graph = Graph.capture(output)  # raises NoGradGraphError when there is no graph
    if relevance is None:
        relevance = seed_relevance(output, target)
    if relevance.shape != output.shape:
        raise TargetError(f"relevance shape {tuple(relevance.shape)} differs from output shape {tuple(output.shape)}")
    graph_taps = []
    for k, t in enumerate(inputs):
        tap = _tap_for(graph, t)
        if tap is None and not t.requires_grad:
            raise DynamicLRPError(
                f"inputs[{k}] (shape {tuple(t.shape)}) does not require grad, so the autograd graph never reaches it "
                "and its relevance is unknown. Call .requires_grad_() on it before the forward pass."
            )
        graph_taps.append(tap)
    want_params = any(isinstance(t, torch.nn.Parameter) for t in inputs)
    engine = Engine(graph, config, taps=[t for t in graph_taps if t is not None], want_params=want_params,
                    constants=constants, model=model)
    engine.root_output = _root_value(output)
    result = engine.run(relevance.detach(), slot=output.output_nr)
    out = []
    for t, tap in zip(inputs, graph_taps):
        r = None if tap is None else result.taps.get(tap)
        out.append(torch.zeros_like(t, dtype=relevance.dtype) if r is None else r.reshape(t.shape))
    result.release()  # memory: no reference cycle may keep the autograd graph alive (EngineResult.release)
    return tuple(out)


# ------------------------------------------------------------------------------------------------ LRP


@dataclass
class Explanation:
    """Everything one explanation produced.

    Attributes
    ----------
    relevance: one tensor per input, shaped like it (integer token inputs: per-token relevance ``[batch, seq]``;
        a list, tuple or dict of tensors -- torchvision detection models take a list of images -- gets a list,
        tuple or dict of relevances; ``None`` only for arguments that hold no tensor).
    embedding_relevance: for integer token inputs, the full relevance at the embedding output
        ``[batch, seq, hidden]`` (``None`` for float inputs).
    output: the model output that was explained (detached).
    seed: the starting relevance (output masked to the target).
    stats: node count, promise counts, chain nodes, maximum promise depth.
    conservation: ``sum(input relevance) / sum(seed)`` per sample (float64; NaN for a zero seed), see
        :mod:`dynamiclrp.diagnostics`: of order one on healthy models; :meth:`LRP.explain` warns when it is far
        outside.
    trace: with ``explain(..., trace=True)``: relevance in and out of every node (:meth:`conservation_report`).
    config: the :class:`LRPConfig` the explanation used (chosen per graph when ``LRP`` was given none).
    """

    relevance: tuple
    embedding_relevance: tuple
    output: torch.Tensor
    seed: torch.Tensor
    stats: dict = field(default_factory=dict)
    conservation: torch.Tensor | None = None
    trace: list | None = None
    config: LRPConfig | None = None

    def conservation_report(self, tolerance: float = 1e-3):
        """Per-op ✓/✗ conservation and the first node where relevance was created
        (:class:`~dynamiclrp.diagnostics.ConservationReport`); needs ``explain(..., trace=True)``."""
        if self.trace is None:
            raise DynamicLRPError("no trace: explain with LRP(...).explain(inputs, trace=True) to get the per-op "
                                  "conservation report")
        return ConservationReport(self.trace, tolerance)

    def _repr_html_(self) -> str:
        """Notebook view: token heatmaps for token inputs, small PNG heatmaps for images
        (:func:`dynamiclrp.viz.explanation_html`; pass ``tokens=`` there to label tokens)."""
        from .viz import explanation_html

        return explanation_html(self)


def select_output(out: Any, selector=None) -> torch.Tensor:
    """Pick the tensor to explain from what a model returned: a tensor, ``.logits`` of an HF ``ModelOutput``
    or dict, or the first element of a tuple. ``selector`` (a callable or a key) overrides."""
    if selector is not None:
        return selector(out) if callable(selector) else out[selector]
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits") and isinstance(out.logits, torch.Tensor):
        return out.logits
    if isinstance(out, dict):
        if "logits" in out:
            return out["logits"]
        raise DynamicLRPError(f"the model returned a dict with keys {list(out)}; pass output_selector=KEY")
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise DynamicLRPError(f"cannot tell which output to explain in a {type(out).__name__}; pass output_selector")


class LRP:
    """Explain any PyTorch model with operation-level LRP, without modifying it.

    >>> lrp = LRP(model, LRPConfig(epsilon=1e-6))
    >>> relevance = lrp.attribute(x, target=3)

    Parameters
    ----------
    model: any callable ``nn.Module``; it is run, never changed (no hooks, no parameter edits).
    config: :class:`LRPConfig`; default ``None``: chosen per explained graph by
        :func:`dynamiclrp.presets.for_graph` -- ``attnlrp()`` where there is softmax attention, ``epsilon_plus()``
        for convolutional networks (the most faithful presets measured, see the README); the one used is
        :attr:`Explanation.config`.
    output_selector: for models returning tuples/dicts: a key or a callable picking the tensor to explain.
    """

    def __init__(self, model, config: LRPConfig | None = None, output_selector=None):
        self.model = model
        self.config = config
        self.output_selector = output_selector

    def attribute(self, inputs, target=None, **forward_kwargs):
        """Relevance of each input, shaped like it (a tuple if ``inputs`` is a tuple). See :meth:`explain`."""
        expl = self.explain(inputs, target=target, **forward_kwargs)
        return expl.relevance if isinstance(inputs, (tuple, list)) else expl.relevance[0]

    def explain(self, inputs, target=None, conservation_limit: float | None = CONSERVATION_LIMIT,
                trace: bool = False, **forward_kwargs) -> Explanation:
        """Run the model on ``inputs`` and explain ``target``; returns an :class:`Explanation`.

        Float inputs are explained directly. Integer inputs (token ids of language models) are explained where
        relevance reaches the embedding lookup that consumed them: per-token relevance (summed over the hidden
        dimension) in ``relevance``, the full ``[batch, seq, hidden]`` relevance in ``embedding_relevance``.
        An argument that is a list, tuple or dict of tensors (a detection model's list of images: pass
        ``([img1, img2],)``) gets one relevance per tensor, in the same container.

        Degenerate results warn (:class:`~dynamiclrp.errors.DynamicLRPWarning` subclasses, see
        :mod:`dynamiclrp.diagnostics`): an explained output that is exactly zero, a model with dropout or batch
        norm in training mode, and ``|Explanation.conservation| > conservation_limit`` for some sample
        (``None``: no check). A graph that reaches freed tensors of an earlier forward pass (a cache inside the
        model) raises :class:`~dynamiclrp.errors.StaleGraphError` saying how to reset it.

        ``trace=True`` keeps the relevance arriving at and leaving every node (:attr:`Explanation.trace`), for
        :meth:`Explanation.conservation_report`: which ops conserve, absorb or create relevance.
        """
        return self.explain_targets(inputs, [target], conservation_limit, trace=trace, **forward_kwargs)[0]

    def explain_targets(self, inputs, targets, conservation_limit: float | None = CONSERVATION_LIMIT,
                        trace: bool = False, **forward_kwargs) -> list:
        """Explain several targets of one forward pass: a list of :class:`Explanation`, one per target.

        The model runs once; the recorded constants, the captured graph and the input taps are shared, and each
        target's seed is propagated through that same graph. Results are bit-identical to one :meth:`explain`
        call per target, at the cost of one forward pass instead of ``K``.

        Parameters
        ----------
        targets: a list of anything :meth:`explain` takes as ``target`` (class indices for top-k or every class,
            ``(position, token)`` tuples for several tokens of a sequence, per-sample lists, masks), or a 1-D
            integer tensor of class indices (``logits.topk(k).indices[0]``). A tuple is not accepted, as a single
            ``(position, token)`` target is one: wrap it in a list.

        Example
        -------
        >>> top = lrp.explain_targets(x, logits.topk(3).indices[0])  # three explanations, one forward pass
        """
        targets = _target_list(targets)
        prepared = prepare_inputs(inputs)
        raw, recorder = run_recorded(self.model, prepared, forward_kwargs)
        output = select_output(raw, self.output_selector)
        if not isinstance(output, torch.Tensor) or output.grad_fn is None:
            raise NoGradGraphError(
                "the model output has no grad_fn: did the model run under torch.no_grad()/inference_mode, "
                "or does it detach its output? dynamiclrp enables grad for the forward pass it runs, so a model "
                "that disables it internally cannot be explained."
            )
        seeds = [seed_relevance(output, target) for target in targets]  # bad targets fail before any propagation
        graph = Graph.capture(output)
        config = self.config
        if config is None:
            from .presets import for_graph

            config = for_graph(graph)
        explanations = []
        for seed in seeds:
            try:
                taps = [[input_taps(graph, t, recorder) for t in _elements(x)] for x in prepared]
                engine = Engine(graph, config,
                                taps=[t for arg in taps for ts in arg for t in ts if t is not None],
                                constants=recorder.calls, model=self.model, trace=trace)
                engine.root_output = _root_value(output)
                result = engine.run(seed, slot=output.output_nr)
            except UnsupportedOperationError as err:
                raise self._located(err, prepared, forward_kwargs) from None
            except UnrecoverableValueError as err:
                raise locate_unrecoverable(err, self.model, prepared, forward_kwargs) from None
            except RuntimeError as err:
                if is_lost_graph(err):
                    raise stale_graph_error(err) from err
                raise
            relevance, emb = [], []
            for x, arg_taps in zip(prepared, taps):
                pairs = [_tensor_relevance(t, ts, result, strict=isinstance(x, torch.Tensor))
                         for t, ts in zip(_elements(x), arg_taps)]
                relevance.append(_repack(x, [r for r, _ in pairs]))
                emb.append(_repack(x, [e for _, e in pairs]))
            stats = summarize(result)
            result_trace = result.trace
            result.release()  # memory: no reference cycle may keep the autograd graph alive (EngineResult.release)
            del engine, result
            flat = [r for x in relevance for r in _elements(x)]
            check_seed(seed)
            check_training(self.model, graph)
            check_conservation(flat, seed, output, conservation_limit)
            ratio = conservation(flat, seed)
            explanations.append(Explanation(tuple(relevance), tuple(emb), output.detach(), seed, stats, ratio,
                                            result_trace, config))
        return explanations


    def _located(self, err: UnsupportedOperationError, inputs, forward_kwargs) -> UnsupportedOperationError:
        """The same error, with the module path of each unsupported node (found by one extra forward pass)."""
        from .coverage import _module_paths

        try:
            places = _module_paths(self.model, inputs, forward_kwargs, set(err.ops))
        except Exception:  # locating is best effort; the original error stays accurate
            return err
        ops = {}
        for name, where in err.ops.items():
            paths = [p or "<model>" for p, n in places.get(name, {}).items() for _ in range(n)]
            ops[name] = paths + [None] * (len(where) - len(paths))
        return UnsupportedOperationError(ops)


def _target_list(targets) -> list:
    """The targets of :meth:`LRP.explain_targets` as a list (see there)."""
    if isinstance(targets, torch.Tensor) and targets.dim() == 1 and not targets.is_floating_point():
        return [int(t) for t in targets]
    if not isinstance(targets, list):
        raise TargetError(f"targets must be a list of targets (or a 1-D tensor of class indices), got "
                          f"{type(targets).__name__}; for one target call explain(), and wrap a (position, token) "
                          "tuple in a list")
    if not targets:
        raise TargetError("targets is empty: give at least one target")
    return targets


def run_recorded(model, prepared: tuple, forward_kwargs: dict):
    """Run ``model`` with grad enabled under a :class:`ConstantRecorder` that knows the integer inputs; returns
    what the model returned and the recorder."""
    token_ids = [x for x in prepared if isinstance(x, torch.Tensor) and not x.is_floating_point()]
    with torch.enable_grad(), ConstantRecorder(token_ids) as recorder:
        raw = model(*prepared, **forward_kwargs)
    return raw, recorder


def prepare_inputs(inputs) -> tuple:
    """Inputs as a tuple; float tensors become fresh leaves that require grad (the caller's tensors untouched),
    also inside an argument that is a list, tuple or dict of tensors (one level: a detection model's images)."""
    if inputs is None:
        return ()
    inputs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    return tuple(_repack(x, [_fresh_leaf(t) for t in _elements(x)], keep=True) if _elements(x) and not isinstance(
        x, torch.Tensor) else _fresh_leaf(x) for x in inputs)


def _fresh_leaf(x):
    return x.detach().requires_grad_(True) if isinstance(x, torch.Tensor) and x.is_floating_point() else x


def _elements(x) -> list:
    """The tensors of one model argument: the argument itself, or the tensors of a list, tuple or dict."""
    if isinstance(x, torch.Tensor):
        return [x]
    values = x.values() if isinstance(x, dict) else x if isinstance(x, (list, tuple)) else ()
    return [v for v in values if isinstance(v, torch.Tensor)]


def _repack(x, values: list, keep: bool = False):
    """``values`` (one per tensor of ``x``, see :func:`_elements`) in ``x``'s place: ``values[0]`` for a tensor,
    the same container for a list, tuple or dict (entries that are not tensors become ``None``, or stay as they
    are with ``keep``), else ``None``."""
    if isinstance(x, torch.Tensor):
        return values[0]
    if not values:
        return None
    it = iter(values)
    if isinstance(x, dict):
        return {k: next(it) if isinstance(v, torch.Tensor) else v if keep else None for k, v in x.items()}
    items = [next(it) if isinstance(v, torch.Tensor) else v if keep else None for v in x]
    return type(x)(*items) if hasattr(x, "_fields") else type(x)(items)


def _tensor_relevance(x: torch.Tensor, taps: list, result: EngineResult, strict: bool = True) -> tuple:
    """``(relevance, embedding relevance)`` of one input tensor from the engine's taps (see :meth:`LRP.explain`).
    An integer tensor that reaches no embedding lookup raises when ``strict`` (a model argument), else has none
    (an index tensor inside a list)."""
    if x.is_floating_point():
        r = result.taps.get(taps[0]) if taps and taps[0] is not None else None
        return (torch.zeros_like(x) if r is None else r.reshape(x.shape)), None
    found = [result.taps[t] for t in taps if result.taps.get(t) is not None]
    if not found:
        if not strict:
            return None, None
        raise DynamicLRPError(
            f"integer input of shape {tuple(x.shape)} reaches no embedding lookup in the graph; "
            "explain the embeddings instead (pass inputs_embeds)"
        )
    full = sum(f.reshape(*x.shape, -1) for f in found)
    return full.sum(-1), full


def input_taps(graph: Graph, x, recorder: ConstantRecorder | None = None) -> list:
    """Where one model input's relevance lands: the leaf of a float tensor, the embedding lookups of integer
    ids (see :func:`_embedding_taps`), those of each tensor of a list, tuple or dict argument, nothing for other
    arguments."""
    if not isinstance(x, torch.Tensor):
        return [t for e in _elements(x) for t in input_taps(graph, e, recorder)]
    if x.is_floating_point():
        return [_tap_for(graph, x)]
    return _embedding_taps(graph, x, recorder.lifted_for(x) if recorder is not None else ())


def _embedding_taps(graph: Graph, ids: torch.Tensor, lifted=()) -> list:
    """Embedding lookups whose indices are ``ids``: those sharing its storage; failing that, those with the same
    values (so position ids that happen to equal the token ids are not mistaken for them when storage tells);
    failing that, the lookups in frozen tables that :class:`ConstantRecorder` made leaves (``lifted``)."""
    same_storage, same_values = [], []
    for node in graph.order:
        if saved.op_name(node) != "EmbeddingBackward":
            continue
        idx = saved.get(node, "indices")
        if idx.numel() != ids.numel():
            continue
        if idx.data_ptr() == ids.data_ptr():
            same_storage.append((node, 0))
        elif torch.equal(idx.reshape(-1), ids.reshape(-1).to(idx.dtype)):
            same_values.append((node, 0))
    if same_storage or same_values:
        return same_storage or same_values
    return [tap for tap in (_tap_for(graph, out) for out in lifted) if tap is not None]


def summarize(result: EngineResult) -> dict:
    """Node and promise statistics of one run (paper Table 2): nodes, promise-generating nodes, promises by
    kind, internal chain nodes, maximum promise depth, density ``rho = |V_P| / |V|``."""
    kinds: dict[str, int] = {}
    for p in result.promises:
        kinds[p.kind] = kinds.get(p.kind, 0) + 1
    origins = {p.origin for p in result.promises}
    memo: dict = {}
    depth = max((result.promise_depth(p, memo) for p in result.promises), default=0)
    n = len(result.graph)
    return {
        "nodes": n,
        "promise_nodes": len(origins),
        "promises": len(result.promises),
        "promises_by_kind": kinds,
        "chain_nodes": result.chain_nodes,
        "max_promise_depth": depth,
        "density": len(origins) / n if n else 0.0,
    }
