"""Per-position product rules (``LRPConfig.layer_map``) and canonization (``LRPConfig(canonize=True)``).

A layer map is a small declarative mapping from a *position* to a rule spec of :mod:`dynamiclrp.rules.specs`::

    {"first": ZBox(low, high), "conv": Gamma(0.25), "linear": Epsilon(1e-6), "module:features.0": Flat()}

Keys (the most specific one that applies to a product wins):

1. ``"module:<glob>"`` -- products whose weight is a parameter of a module whose path (``model.named_modules()``)
   matches the glob (``fnmatch``; the first matching key in the map's order). Needs the model (``LRP``).
2. ``"first"`` -- products that consume an explained input (directly or through reshapes, slices...).
3. ``"conv"`` -- convolutions; ``"linear"`` -- matrix products with a parameter factor (``nn.Linear``, ``mm``...).
4. otherwise the global fields of the config (``epsilon``, ``gamma_linear``/``gamma_conv``, ``zplus``).

Only products with exactly one activation factor use a spec; products of two activations keep their rule.

Canonization merges an eval-mode batch norm into the product right before it, for the purposes of the rules, as
Zennit's ``SequentialMergeBatchNorm`` does to the model (Montavon et al. 2019, Sec. 10.3.1; Guillemot et al. 2020):
the product sees ``W' = a * W`` and ``b' = a * b + shift`` (``y = a * x + shift`` being the batch norm, per
channel) and the batch norm passes relevance through. The model is never modified: the plan only binds per-node
copies of the rules (:meth:`~dynamiclrp.rules.linear._ProductRule.bound`). A batch norm is merged when its input is
the output of a convolution or a linear product whose only consumer it is (ResNet's ``conv -> bn -> add``,
EfficientNet's ``conv -> bn -> relu6``, ``Sequential(conv, bn)`` downsampling paths included).
"""
from __future__ import annotations

import fnmatch
from typing import Mapping

import torch

from . import saved

_MODULE = "module:"
_KEYS = ("first", "conv", "linear")


def validate(layer_map: Mapping) -> dict:
    """Check a layer map: keys among ``first``/``conv``/``linear``/``module:<glob>``, values rule specs.

    Raises ``ValueError``/``TypeError`` listing the valid choices."""
    from .rules.specs import SPECS, ProductSpec

    if not isinstance(layer_map, Mapping):
        raise TypeError(f"layer_map must be a mapping from position to rule spec, got {type(layer_map).__name__}")
    out = {}
    for key, spec in layer_map.items():
        if not isinstance(key, str) or not (key in _KEYS or (key.startswith(_MODULE) and len(key) > len(_MODULE))):
            raise ValueError(f"layer_map key {key!r} is not a position; valid keys: {', '.join(map(repr, _KEYS))} "
                             "or 'module:<path glob>' (e.g. 'module:features.0', 'module:layer4.*')")
        if not isinstance(spec, ProductSpec):
            raise TypeError(f"layer_map[{key!r}] must be a rule spec from dynamiclrp.rules.specs "
                            f"({', '.join(f'{n}()' for n in SPECS)}), got {spec!r}")
        out[key] = spec
    return out


def plan(graph, config, rule_of, inputs, constants=None, model=None) -> dict:
    """Per-node rules for the layer map and canonization of ``config``: ``{node: rule}`` to use instead of
    ``rule_of(node)``.

    ``inputs``: the nodes of the explained inputs (their ``AccumulateGrad``); ``constants``: the recorded calls of
    the forward pass (a frozen batch-norm bias is read from them); ``model``: needed for ``module:`` keys."""
    from .rules.linear import _ProductRule
    from .rules.normalization import BatchNormRule

    constants = constants or {}
    fuse, replaced = {}, {}
    if config.canonize:
        for node in graph.order:
            rule = rule_of(node)
            if isinstance(rule, BatchNormRule) and not saved.get(node, "training", True):
                found = _mergeable(graph, node, rule_of, _ProductRule)
                affine = None if found is None else _bn_affine(graph, node, rule, constants.get(node))
                if affine is not None:
                    fuse[found] = affine
                    replaced[node] = rule.merged()
    layer_map = dict(config.layer_map)
    wants_modules = any(k.startswith(_MODULE) for k in layer_map)
    if wants_modules and model is None:
        raise ValueError("layer_map keys 'module:...' need the model: use LRP(model, config), or "
                         "propagate(..., model=model)")
    modules = _module_names(model) if wants_modules else None
    for node in graph.order:
        rule = rule_of(node)
        if not isinstance(rule, _ProductRule):
            continue
        spec, embed = _spec_for(graph, node, rule, layer_map, inputs, modules, rule_of) if layer_map else (None, None)
        if spec is not None or node in fuse:
            replaced[node] = rule.bound(spec, fuse.get(node), embed)
    return replaced


def _factors(graph, node, rule):
    """``(activation edge, weight edge)`` of a product with one activation factor, else ``None``."""
    act = [graph.edges[node][i][0] is not None and not graph.is_parameter_edge(node, i)
           for i in (rule.a_edge, rule.b_edge)]
    if act[0] == act[1]:
        return None
    return (rule.a_edge, rule.b_edge) if act[0] else (rule.b_edge, rule.a_edge)


def _mergeable(graph, bn, rule_of, product_cls):
    """The product node whose output only this batch norm consumes, if it can take the merge, else ``None``."""
    producer, slot = graph.edges[bn][0]
    rule = rule_of(producer) if producer is not None else None
    if not isinstance(rule, product_cls) or slot != 0 or len(graph.consumers[producer]) != 1:
        return None
    factors = _factors(graph, producer, rule)
    if factors is None or rule.weight_channel_dim(producer, factors[1]) is None:
        return None
    return producer


_MISSING = object()


def _bn_operand(graph, bn, edge, call, name):
    """A batch norm's affine ``weight``/``bias`` (edge 1/2): from its leaf, or from the recorded call when it is
    frozen (``F.batch_norm(x, mean, var, weight, bias, ...)`` or ``torch.batch_norm(x, weight, bias, ...)``).
    ``None`` when absent, :data:`_MISSING` when unknown (computed by other ops, or not recorded)."""
    child = graph.edges[bn][edge][0] if len(graph.edges[bn]) > edge else None
    if child is not None:
        return saved.leaf_variable(child).detach() if saved.op_name(child) == "AccumulateGrad" else _MISSING
    if call is None or not call.is_one_of("batch_norm"):
        return _MISSING
    position = {"weight": 1, "bias": 2}[name] if call.func is torch.batch_norm else {"weight": 3, "bias": 4}[name]
    value = call.arg(position, name)
    return value.detach() if isinstance(value, torch.Tensor) else None


def _bn_affine(graph, bn, rule, call):
    """``(a, shift)`` of the eval-mode batch norm ``bn`` (``y = a * x + shift`` per channel), ``None`` (not merged)
    when its weight is computed by other ops; raises when its bias is unknown."""
    weight = saved.get(bn, "weight", None)
    if weight is None and len(graph.edges[bn]) > 1 and graph.edges[bn][1][0] is not None:
        return None
    bias = _bn_operand(graph, bn, 2, call, "bias") if weight is not None else None
    if bias is _MISSING:
        raise ValueError("canonize=True: the bias of a batch norm is neither a parameter nor recorded (a frozen "
                         "bias under propagate() without constants, or one computed by other ops). Explain with "
                         "LRP(model, config), pass constants=rec.calls of a ConstantRecorder, or canonize=False")
    return rule.affine(bn, None if weight is None else weight.detach(), bias)


def _module_names(model) -> dict:
    """``data_ptr`` of each parameter -> path of the module that owns it (the first, for tied weights)."""
    names = {}
    for path, module in model.named_modules():
        for p in module.parameters(recurse=False):
            names.setdefault(p.data_ptr(), path)
    return names


def _spec_for(graph, node, rule, layer_map, inputs, modules, rule_of):
    """``(spec, embed)`` of a product: its position's spec (``None``: the global fields) and, for a product that
    consumes an explained input, ``embed`` (see :func:`_consumes_input`)."""
    factors = _factors(graph, node, rule)
    if factors is None:
        return None, None
    x_edge, w_edge = factors
    embed = _consumes_input(graph, node, x_edge, inputs, rule_of)
    if modules is not None:
        path = _module_of(graph, node, rule, w_edge, modules)
        for key, spec in layer_map.items():
            if key.startswith(_MODULE) and path is not None and fnmatch.fnmatchcase(path, key[len(_MODULE):]):
                return spec, embed
    if "first" in layer_map and embed is not None:
        return layer_map["first"], embed
    return layer_map.get("conv" if rule.conv else "linear"), embed


def _module_of(graph, node, rule, w_edge, modules):
    """The module path of the product's weight: its storage identifies the parameter (through ``.t()``, views)."""
    weight = rule.known_inputs(node)[w_edge]
    if weight is None:
        child = graph.edges[node][w_edge][0]
        while child is not None and saved.op_name(child) != "AccumulateGrad":
            live = [c for c, _ in graph.edges[child] if c is not None]
            child = live[0] if len(live) == 1 else None
        weight = saved.leaf_variable(child) if child is not None else None
    return None if weight is None else modules.get(weight.data_ptr())


def _consumes_input(graph, node, x_edge, inputs, rule_of):
    """Whether the activation factor is an explained input, directly or through routing ops (views, pads,
    slices): then ``(input shape, embed)`` with ``embed`` mapping a tensor shaped like the input to the factor
    through those ops (so that a first-layer rule's bounds or ones are padded like the input was: Zennit applies
    them to the module input, before a ``Conv2dSame``'s padding), else ``None``."""
    from .rules.base import RoutingRule

    chain, (child, slot) = [], graph.edges[node][x_edge]
    while child is not None and child not in inputs:
        live = [(i, c, k) for i, (c, k) in enumerate(graph.edges[child]) if c is not None]
        if len(live) != 1 or not isinstance(rule_of(child), RoutingRule):
            return None
        chain.append((child, slot, live[0][0], rule_of(child)))
        _, child, slot = live[0]
    if child is None:
        return None
    shape = (saved.leaf_variable(child).shape if saved.op_name(child) == "AccumulateGrad"
             else saved.output_shapes(child)[slot])

    def embed(t):
        for step, out_slot, edge, rule in reversed(chain):
            vals = list(rule.known_inputs(step))
            vals[edge] = t
            t = rule.forward(step, vals)[out_slot]
        return t

    return tuple(shape), embed
