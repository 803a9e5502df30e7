"""Rule coverage of a model: which autograd operations of its graph have an LRP rule, where the ones without
live in the model, and -- when everything is covered -- the promise statistics of one explanation (paper
Table 2).

>>> from dynamiclrp import coverage
>>> report = coverage(model, torch.randn(1, 3, 64, 64))
>>> print(report)                 # op types with their counts, then the summary
>>> report.to_json()
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from . import saved
from .api import input_taps, prepare_inputs, run_recorded, seed_relevance, select_output, summarize
from .config import LRPConfig
from .engine import Engine
from .errors import NoGradGraphError, UnrecoverableValueError
from .graph import Graph
from .rules import lookup

_LEAF = "AccumulateGrad"
_ROOT = "<root>"  # how the model itself (module path "") is shown


@dataclass
class OpCoverage:
    """One autograd op type of the graph.

    Attributes
    ----------
    name : str
        Exact autograd node class name, e.g. ``"AddmmBackward0"``.
    count : int
        Nodes of this type in the graph.
    covered : bool
        Whether the type has a rule (or is a leaf, ``AccumulateGrad``).
    rule : str or None
        Class name of the rule that explains it (``None`` for leaves and uncovered ops).
    modules : dict
        For uncovered ops whose place could be recovered: module path -> nodes there (``""`` is the model itself).
    """

    name: str
    count: int
    covered: bool
    rule: str | None = None
    modules: dict[str, int] = field(default_factory=dict)


@dataclass
class CoverageReport:
    """What :func:`coverage` found.

    Attributes
    ----------
    label : str
        What was checked (a zoo spec, a model class name, or ``"output"``).
    nodes : int
        Nodes of the autograd graph, leaves (``AccumulateGrad``) included: ``|V|``.
    covered_nodes : int
        Nodes with a rule, plus leaves.
    ops : list of OpCoverage
        One entry per op type, uncovered first, then by decreasing count.
    stats : dict or None
        Promise statistics of one engine run (only when every node is covered and ``run=True``):
        ``promise_nodes`` (``|V_P|``), ``promises``, ``promises_by_kind``, ``chain_nodes``,
        ``max_promise_depth`` (``delta``), ``density`` (``rho = |V_P| / |V|``), ``seed_relevance`` and
        ``input_relevance`` (sums; ``None`` if not finite), ``relevance_ratio`` (input / seed; ``None`` for a zero
        seed). Input relevance is what reached the float inputs' leaves and the embedding lookups of integer
        inputs; for a bare ``output``, every leaf that is not an ``nn.Parameter``.
    engine_error : str or None
        Why the engine run failed, if it did (e.g. an unrecoverable operand value); ``stats`` is then ``None``.
    blocking : list of dict
        Nodes that have a rule but cannot be explained: ``{"op", "inputs", "module"}`` for each node whose rule
        needs a constant operand nothing can recover (the engine's dry-run planning, :meth:`Engine.plan`;
        confirmed by the engine run when ``run=True``, which drops nodes whose relevance is exactly zero).
    """

    label: str
    nodes: int
    covered_nodes: int
    ops: list[OpCoverage]
    stats: dict | None = None
    engine_error: str | None = None
    blocking: list = field(default_factory=list)

    # -------------------------------------------------------------------------------------------- summary
    @property
    def op_types(self) -> int:
        """Unique op types in the graph."""
        return len(self.ops)

    @property
    def covered_op_types(self) -> int:
        """Unique op types with a rule (leaves count as covered)."""
        return sum(op.covered for op in self.ops)

    @property
    def fraction(self) -> float:
        """Covered nodes / nodes (1.0 for an empty graph)."""
        return self.covered_nodes / self.nodes if self.nodes else 1.0

    @property
    def complete(self) -> bool:
        """Whether the model can be explained: every node has a rule, no node is :attr:`blocking` and the engine
        run (if any) succeeded."""
        return self.covered_nodes == self.nodes and not self.blocking and self.engine_error is None

    @property
    def uncovered(self) -> dict[str, dict]:
        """Uncovered op name -> ``{"count": nodes, "modules": {module path: nodes}}``."""
        return {op.name: {"count": op.count, "modules": dict(op.modules)} for op in self.ops if not op.covered}

    # -------------------------------------------------------------------------------------------- output
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of the whole report (summary fields included)."""
        return {
            "label": self.label,
            "nodes": self.nodes,
            "covered_nodes": self.covered_nodes,
            "coverage": self.fraction,
            "op_types": self.op_types,
            "covered_op_types": self.covered_op_types,
            "complete": self.complete,
            "uncovered": self.uncovered,
            "ops": [asdict(op) for op in self.ops],
            "stats": None if self.stats is None else dict(self.stats),
            "engine_error": self.engine_error,
            "blocking": [dict(b) for b in self.blocking],
        }

    def to_json(self, indent: int | None = 2) -> str:
        """:meth:`to_dict` as a JSON string."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CoverageReport":
        """Rebuild a report from :meth:`to_dict` (or parsed :meth:`to_json`) output."""
        return cls(label=data["label"], nodes=data["nodes"], covered_nodes=data["covered_nodes"],
                   ops=[OpCoverage(**op) for op in data["ops"]], stats=data.get("stats"),
                   engine_error=data.get("engine_error"), blocking=list(data.get("blocking", [])))

    def __str__(self) -> str:
        width = max([len(op.name) for op in self.ops] + [len("op type")])
        lines = [f"dynamiclrp coverage: {self.label}", "",
                 f"  {'op type':<{width}}  {'nodes':>6}  rule"]
        for op in self.ops:
            mark = "✓" if op.covered else "✗"
            if op.covered:
                what = op.rule or "(leaf)"
            else:
                where = ", ".join(f"{path or _ROOT} x{n}" for path, n in op.modules.items())
                what = "NO RULE" + (f" -- in {where}" if where else "")
            lines.append(f"{mark} {op.name:<{width}}  {op.count:>6}  {what}")
        lines += [
            "",
            f"nodes covered:    {self.covered_nodes} / {self.nodes} ({100 * self.fraction:.1f}%)",
            f"op types covered: {self.covered_op_types} / {self.op_types}",
        ]
        for b in self.blocking:
            where = "?" if b["module"] is None else b["module"] or _ROOT
            lines.append(f"✗ not explainable: {b['op']} (in {where}) needs constant input(s) {b['inputs']} "
                         "that nothing recovers; run the forward pass under "
                         "dynamiclrp.ConstantRecorder or use LRP(model).explain")
        if self.stats is not None:
            s = self.stats
            kinds = ", ".join(f"{k} {v}" for k, v in sorted(s["promises_by_kind"].items())) or "none"
            lines += [
                f"promise nodes |V_P|: {s['promise_nodes']}",
                f"promises:            {s['promises']} ({kinds})",
                f"chain nodes:         {s['chain_nodes']}",
                f"max depth delta:     {s['max_promise_depth']}",
                f"density rho:         {s['density']:.4f}",
                f"relevance:           seed {_fmt(s['seed_relevance'], '.6g')} -> inputs "
                f"{_fmt(s['input_relevance'], '.6g')} (ratio {_fmt(s['relevance_ratio'], '.4f')})",
            ]
        elif self.engine_error is not None:
            lines.append(f"engine run failed: {self.engine_error}")
        elif self.covered_nodes != self.nodes:
            lines.append("not every op has a rule: no explanation was run (see NO RULE above)")
        return "\n".join(lines)


def _fmt(x, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


# ------------------------------------------------------------------------------------------------ coverage


def coverage(model=None, inputs=None, *, output=None, config: LRPConfig | None = None, target=None,
             forward_kwargs: dict | None = None, run: bool = True, label: str | None = None,
             output_selector=None) -> CoverageReport:
    """Check which autograd operations of a model have an LRP rule, and measure its promises.

    Parameters
    ----------
    model : callable, optional
        The model; it is run once with grad enabled on ``inputs`` (float tensors get ``requires_grad``, integer
        tensors such as token ids are passed as they are) and the output is picked as :class:`LRP` does
        (``.logits``, or the first tensor). If some ops are uncovered and the model is an ``nn.Module``, it is
        run once more with temporary forward hooks to find the module path of each uncovered node.
    inputs : tensor or tuple of tensors, optional
        Example positional inputs of ``model``.
    output : torch.Tensor, optional
        Instead of ``model``: an output tensor whose graph is checked (no module paths then).
    config : LRPConfig, optional
        Its ``rule_overrides`` count as rules; also used for the engine run.
    target : optional
        What to explain in the engine run (see :func:`dynamiclrp.seed_relevance`); default: the arg-max.
    forward_kwargs : dict, optional
        Keyword arguments of the forward call (attention masks...).
    run : bool
        Run the engine once when every node is covered, to fill :attr:`CoverageReport.stats`.
    label : str, optional
        Name shown in the report (default: the model's class name, or ``"output"``).
    output_selector : optional
        For models returning tuples/dicts: a key or a callable picking the tensor to check (as in :class:`LRP`).

    Returns
    -------
    CoverageReport
        Node and op-type coverage, uncovered ops with module paths, promise statistics.
    """
    config = config or LRPConfig()
    forward_kwargs = dict(forward_kwargs or {})
    if (model is None) == (output is None):
        raise TypeError("pass either a model (with its inputs) or an output tensor")
    prepared: tuple = ()
    recorder = None
    if model is not None:
        prepared = prepare_inputs(inputs)
        raw, recorder = run_recorded(model, prepared, forward_kwargs)
        output = select_output(raw, output_selector)
        label = label or type(model).__name__
    label = label or "output"
    if not isinstance(output, torch.Tensor):
        raise TypeError(f"output must be a tensor, got {type(output).__name__}")
    if output.grad_fn is None:
        raise NoGradGraphError("the output has no grad_fn: the model ran without an autograd graph (no_grad, "
                               "inference_mode, or a detached output)")
    graph = Graph.capture(output)

    ops: dict[str, OpCoverage] = {}
    covered_nodes = 0
    for node in graph.order:
        name = saved.full_name(node)
        op = ops.get(name)
        if op is None:
            rule = None if saved.op_name(node) == _LEAF else lookup(node, config.rule_overrides)
            op = ops[name] = OpCoverage(name, 0, saved.op_name(node) == _LEAF or rule is not None,
                                        None if rule is None else type(rule).__name__)
        op.count += 1
        covered_nodes += op.covered
    uncovered = {name for name, op in ops.items() if not op.covered}
    if uncovered and isinstance(model, nn.Module):
        for name, places in _module_paths(model, prepared, forward_kwargs, uncovered, output_selector).items():
            ops[name].modules = places

    report = CoverageReport(label, len(graph), covered_nodes,
                            sorted(ops.values(), key=lambda o: (o.covered, -o.count, o.name)))
    if report.covered_nodes == report.nodes:
        try:  # the same engine (and value planning) that explain runs
            engine = Engine(graph, config, taps=_input_taps(graph, prepared, recorder),
                            constants=recorder.calls if recorder is not None else None)
            engine.root_output = output.detach() if saved.num_outputs(graph.root) == 1 else None
            blockers = [(saved.full_name(u), engine.rank(u), edges) for u, edges in engine.plan()]
        except UnrecoverableValueError as err:  # a rule refused its node before any propagation (CopySlices)
            report.engine_error = f"{type(err).__name__}: {err}"
            engine, blockers, run = None, [(err.op or "?", err.rank or 0, [])], False
        if run:
            try:
                report.stats = _promise_stats(engine, output, target)
                blockers = []  # planned blockers the run met with exactly zero relevance: harmless
            except UnrecoverableValueError as err:
                report.engine_error = f"{type(err).__name__}: {err}"
                planned = [b for b in blockers if (b[0], b[1]) == (err.op, err.rank)]
                blockers = planned or ([(err.op, err.rank, [])] if err.op is not None else blockers)
            except RuntimeError as err:  # DynamicLRPError or an engine failure
                report.engine_error = f"{type(err).__name__}: {err}"
        report.blocking = _locate(blockers, model, prepared, forward_kwargs, output_selector)
    return report


def _locate(blockers: list, model, inputs: tuple, forward_kwargs: dict, output_selector=None) -> list:
    """``{"op", "inputs", "module"}`` per blocking node; module paths by one hooked forward pass of ``model``."""
    paths: dict = {}
    if blockers and isinstance(model, nn.Module):
        try:
            paths = _node_paths(model, inputs, forward_kwargs, {op for op, _, _ in blockers}, output_selector)
        except Exception:  # locating is best effort
            paths = {}
    found = []
    for op, rank, edges in blockers:
        where = paths.get(op, [])
        found.append({"op": op, "inputs": list(edges), "module": where[rank] if rank < len(where) else None})
    return found


# ------------------------------------------------------------------------------------------------ statistics


def _input_taps(graph: Graph, inputs: tuple, recorder=None) -> list:
    """``(node, slot)`` pairs whose relevance is the input relevance: the leaf of each float input, the
    embedding lookups indexed by each integer input; without inputs, every leaf that is not an ``nn.Parameter``."""
    tensors = [x for x in inputs if isinstance(x, torch.Tensor)]
    if not tensors:
        return [(node, 0) for node in graph.order if saved.op_name(node) == _LEAF
                and not isinstance(saved.leaf_variable(node), nn.Parameter)]
    taps = [t for x in tensors for t in input_taps(graph, x, recorder)]
    return list(dict.fromkeys(t for t in taps if t is not None))


def _promise_stats(engine: Engine, output: torch.Tensor, target) -> dict:
    """Run ``engine`` (built on the input taps) once; the paper's Table 2 columns plus the relevance that reached
    the inputs."""
    seed = seed_relevance(output, target)
    result = engine.run(seed, slot=output.output_nr)
    seed_total = float(seed.sum())
    input_total = sum(float(r.sum()) for r in result.taps.values() if r is not None)
    return {
        **summarize(result),
        "seed_relevance": _number(seed_total),
        "input_relevance": _number(input_total),
        "relevance_ratio": _number(input_total / seed_total) if seed_total else None,
    }


def _number(x: float) -> float | None:
    """``x``, or ``None`` where it is NaN/Inf (strict JSON has neither)."""
    return x if math.isfinite(x) else None


# ------------------------------------------------------------------------------------------------ module paths


def _tensors(obj):
    """Every tensor in a (nested) tuple, list, dict or ``ModelOutput``."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (tuple, list)):
        for v in obj:
            yield from _tensors(v)




def _clock() -> int:
    """The autograd sequence number the next node created on this thread will get (nodes are numbered in
    creation order)."""
    with torch.enable_grad():
        return torch.zeros(1, requires_grad=True).view(1).grad_fn._sequence_nr() + 1


def _module_paths(model: nn.Module, inputs: tuple, forward_kwargs: dict, names: set,
                  output_selector=None) -> dict[str, dict[str, int]]:
    """Module path -> nodes there, for each node type in ``names`` (see :func:`_node_paths`)."""
    places: dict[str, dict[str, int]] = {}
    for name, paths in _node_paths(model, inputs, forward_kwargs, names, output_selector).items():
        for path in paths:
            if path is not None:
                where = places.setdefault(name, {})
                where[path] = where.get(path, 0) + 1
    return {name: dict(sorted(where.items())) for name, where in places.items()}


def _node_paths(model: nn.Module, inputs: tuple, forward_kwargs: dict, names: set,
                output_selector=None) -> dict[str, list]:
    """Run ``model`` again with temporary forward hooks and find, for each node of the new graph whose type is in
    ``names``, the innermost module that created it: ``{name: [path or None, one per node in topological order]}``
    (the ``k``-th entry is the ``k``-th node of that type, as an engine run over the same forward numbers them).

    Each module's hook walks from the ``grad_fn`` of its outputs down to the ``grad_fn`` of its inputs (as they
    were when the module was entered), through nodes created while the module ran only, and claims the nodes of
    the uncovered types it meets. Hooks fire innermost first, so the first claim wins. Buffers (batch-norm
    statistics) are restored afterwards and the hooks removed, whatever happens.
    """
    owner: dict = {}
    entered: dict[int, list] = {}

    def pre_hook(module, args, kwargs):
        stop = {t.grad_fn for t in _tensors((args, kwargs)) if t.grad_fn is not None}
        entered.setdefault(id(module), []).append((_clock(), stop))

    def make_hook(path):
        def hook(module, args, kwargs, out):
            start, stop = entered[id(module)].pop()
            end = _clock()
            seen = set()
            todo = [t.grad_fn for t in _tensors(out) if t.grad_fn is not None]
            while todo:
                node = todo.pop()
                if node in seen or node in stop or not start <= node._sequence_nr() < end:
                    continue
                seen.add(node)
                if saved.full_name(node) in names:
                    owner.setdefault(node, path)
                todo.extend(child for child, _ in node.next_functions if child is not None)
        return hook

    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    handles = []
    try:
        for path, module in model.named_modules():
            handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
            handles.append(module.register_forward_hook(make_hook(path), with_kwargs=True))
        with torch.enable_grad():
            output = select_output(model(*inputs, **forward_kwargs), output_selector)
        found: dict[str, list] = {}
        for node in Graph.capture(output).order:
            name = saved.full_name(node)
            if name in names:
                found.setdefault(name, []).append(owner.get(node))
        return found
    finally:
        for handle in handles:
            handle.remove()
        with torch.no_grad():
            for name, b in model.named_buffers():
                if name in buffers and b.shape == buffers[name].shape:
                    b.copy_(buffers[name])


# ------------------------------------------------------------------------------------ op-type coverage

#: families of autograd node types, matched in order by a substring of the node name (first match wins); used
#: to group the node types without a rule in :func:`op_coverage`
OP_FAMILIES = (
    ("sparse / nested layouts", ("Sparse", "Nested", "ToDense", "ToPadded", "Coalesce", "ValuesBackward",
                                 "SegmentReduce", "PinMemory")),
    ("quantisation", ("FakeQuantize", "FusedMovingAvgObs")),
    ("backend kernels (cuDNN, MIOpen, MPS, oneDNN, NNPACK, slow conv)", (
        "Cudnn", "Miopen", "Mps", "Mkldnn", "Nnpack", "Slow", "Overrideable", "ThnnFused", "ConvTbc",
        "ConvDepthwise", "LstmMps")),
    ("complex numbers and FFTs", ("Fft", "Complex", "Conj", "Angle", "Polar", "NegView")),
    ("linear algebra", ("Linalg", "Cholesky", "TriangularSolve", "LuUnpack", "Geqrf", "Ormqr", "Householder")),
    ("losses", ("Loss", "Nll", "CrossEntropy", "BinaryCrossEntropy")),
    ("random sampling", ("Bernoulli", "Normal", "Uniform", "Cauchy", "Exponential", "Geometric", "RandomBackward",
                         "Poisson", "StandardGamma", "FusedDropout", "RreluWithNoiseFunctional")),
    ("comparisons", ("EqBackward", "NeBackward", "GeBackward", "GtBackward", "LeBackward", "LtBackward")),
    ("foreach (multi-tensor) ops", ("Foreach",)),
    ("attention kernels", ("Attention", "MaskedSoftmax", "BackwardData")),
    ("recurrent cells and scans", ("Rnn", "Lstm", "Gru")),
    ("products and distances", ("Addbmm", "Addmv", "Addr", "Trilinear", "Cdist", "Dist", "Matmul", "Kron",
                                "EmbeddingBag")),
    ("normalisation", ("Norm", "Renorm")),
    ("test and internal nodes", ("Test", "SendRpc", "UndefinedGrad")),
)


def op_types() -> list[str]:
    """Every first-order autograd node type of this torch build: the ``...BackwardN`` classes of
    ``torch._C._functions`` that are not double-backward nodes (``...BackwardBackwardN``), sorted."""
    import re

    pattern = re.compile(r"Backward\d*$")
    return sorted(n for n in dir(torch._C._functions) if pattern.search(n) and "BackwardBackward" not in n)


def op_family(name: str) -> str:
    """The family of an autograd node type name (see :data:`OP_FAMILIES`), ``"other"`` if none matches."""
    for family, keys in OP_FAMILIES:
        if any(k in name for k in keys):
            return family
    return "other"


@dataclass
class OpTypeCoverage:
    """Which autograd node types of this torch build have a rule (:func:`op_coverage`).

    Attributes
    ----------
    total : int
        First-order node types torch defines.
    covered : dict
        Node type -> class name of its rule.
    missing : dict
        Family (:func:`op_family`) -> node types without a rule, sorted.
    """

    total: int
    covered: dict[str, str]
    missing: dict[str, list[str]]

    @property
    def fraction(self) -> float:
        return len(self.covered) / self.total if self.total else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"torch": torch.__version__, "total": self.total, "covered": len(self.covered),
                "fraction": self.fraction, "rules": self.covered, "missing": self.missing}

    def __str__(self) -> str:
        lines = [f"torch {torch.__version__}: {len(self.covered)} of {self.total} first-order autograd node types "
                 f"have a rule ({100 * self.fraction:.1f} %)"]
        if self.missing:
            lines.append(f"without a rule ({self.total - len(self.covered)}), by family:")
            for family, names in self.missing.items():
                lines.append(f"  {family} ({len(names)}): {', '.join(names)}")
        return "\n".join(lines)


def op_coverage(config: LRPConfig | None = None) -> OpTypeCoverage:
    """Rule coverage of torch's first-order autograd node types (:func:`op_types`), independent of any model:
    which have a rule (``config.rule_overrides`` count) and which do not, grouped by family."""
    from .rules import RULES

    overrides = dict(config.rule_overrides) if config is not None else {}
    covered, missing = {}, {}
    for name in op_types():
        short = saved._VERSION_DIGIT.sub("", name)
        rule = next((t[k] for t in (overrides, RULES) for k in (name, short) if k in t), None)
        if rule is not None:
            covered[name] = type(rule).__name__
        else:
            missing.setdefault(op_family(name), []).append(name)
    order = [f for f, _ in OP_FAMILIES] + ["other"]
    return OpTypeCoverage(len(covered) + sum(map(len, missing.values())), covered,
                          {f: missing[f] for f in order if f in missing})
