"""In-place writes into part of a tensor: ``x[:, 0] = v``, ``x[2:].mul_(s)``, ``x[i] += v`` (``CopySlices``).

Autograd files such a write as one ``CopySlices`` node with edges ``(base, *operands)``: the tensor written
into, and the write's other graph operands. It keeps neither *which* op wrote nor *where*, so both are read from
the forward pass (:class:`~dynamiclrp.ConstantRecorder` records the call and the view's geometry) and
:meth:`CopySlicesRule.specialize` binds a rule to them:

* **overwrites** (``x[idx] = v``, ``copy_``, ``fill_``, ``zero_``, ``masked_fill_``, ``index_copy_``,
  ``index_put_`` without accumulation...): routing. The written region's relevance goes to the values written
  there, copies adding up; the rest stays with ``base``: ``R_base = R * (1 - M)``, ``R_v = P^T (R * M)`` with
  ``M`` the region's 0/1 mask and ``P`` the placement of ``v`` -- the node's own backward. A constant written
  there (``x[:, 0] = 0``) absorbs that region's relevance like a bias.
* **updates** (``add_``, ``mul_``, ``div_``, ``+=`` ... on a view): ``y = base`` outside the region and
  ``y[region] = f(base[region], *operands)`` inside. Outside, ``R_base = R``; inside, the rule of the
  out-of-place op ``f`` (whatever this library uses for it) splits ``R[region]`` between ``base[region]`` and
  the operands, so ``x[:, :2] += v`` is explained exactly as ``x[:, :2] + v`` is.
"""
from __future__ import annotations

import torch

from .. import saved
from ..constants import IN_GRAPH
from ..errors import UnrecoverableValueError
from .base import OpRule, RoutingRule, register

#: in-place calls that replace the region's values (name without underscores, as in ``Call.is_one_of``)
_OVERWRITES = ("setitem", "copy", "fill", "zero", "masked_fill", "index_fill", "index_copy", "masked_scatter")


@register("CopySlices")
class CopySlicesRule(OpRule):
    """An in-place write through a view. Only a dispatcher: :meth:`specialize` returns :class:`SliceOverwrite`
    or :class:`SliceUpdate` bound to the recorded call (see the module doc for both formulas)."""

    def specialize(self, node, call):
        if call is None:
            raise UnrecoverableValueError(
                "CopySlices: the model writes into part of a tensor in place (x[i] = v, x[:, :k].add_(v)); which "
                "op wrote where is known only from the forward pass, and it was not recorded. LRP.explain records "
                "it; with propagate(), run the forward pass inside `with dynamiclrp.ConstantRecorder() as rec:` "
                "and pass constants=rec.calls. (A write inside a composite torch function cannot be recorded.)"
            )
        if _overwrites(call):
            return SliceOverwrite(call)
        return SliceUpdate(call)


def _overwrites(call) -> bool:
    if call.is_one_of(*_OVERWRITES):
        return True
    if call.is_one_of("index_put"):
        return not call.arg(3, "accumulate")
    if call.is_one_of("scatter"):
        return call.arg(4, "reduce") is None
    return False


class _BoundWrite(OpRule):
    """A ``CopySlices`` node bound to its recorded call (a :class:`~dynamiclrp.constants.Call` whose ``view`` is
    ``(base size, base stride, view size, view stride, view offset)``, or ``None`` when the call wrote into the
    base itself, as ``x[idx] = v`` does). Holds no traversal state."""

    names = CopySlicesRule.names

    def __init__(self, call):
        self.call = call

    def constant_edges(self, node, call):
        return {0: self.call.arg(0, "input")}  # the base, when it did not require grad (torch.empty, zeros)

    def forward(self, node, inputs):
        out = self._layout(inputs[0])
        args, kwargs = self._operands(node, inputs[1:])
        self.call.func(self._region(out), *args, **kwargs)
        return (out,)

    # ---------------------------------------------------------------------------------------------- helpers
    def _layout(self, base):
        """A fresh copy of ``base`` with the storage layout the forward pass had (the view's strides refer to
        it)."""
        if self.call.view is None:
            return base.clone()
        size, stride = self.call.view[:2]
        out = torch.empty_strided(size, stride, dtype=base.dtype, device=base.device)
        return out.copy_(base)

    def _region(self, t):
        """The tensor the call wrote through: ``t`` itself, or its view."""
        if self.call.view is None:
            return t
        _size, _stride, vsize, vstride, offset = self.call.view
        return t.as_strided(vsize, vstride, t.storage_offset() + offset)

    def _operands(self, node, values) -> tuple:
        """The call's arguments after ``self`` and its keyword arguments, its graph tensors replaced by ``values``
        (one per edge after the base; the edges that are part of the graph follow the call's graph tensors in
        order, positional ones first)."""
        live = [v for (child, _), v in zip(node.next_functions[1:], values) if child is not None]
        args, kwargs = list(self.call.args[1:]), dict(self.call.kwargs)
        slots = [(args, k) for k, a in enumerate(args) if a is IN_GRAPH]
        slots += [(kwargs, k) for k, a in kwargs.items() if a is IN_GRAPH]
        if len(slots) != len(live):
            raise UnrecoverableValueError(
                f"CopySlices: the recorded {_name(self.call)} has {len(slots)} graph operands, the node "
                f"{len(live)} graph edges")
        for (where, k), v in zip(slots, live):
            where[k] = v
        return args, kwargs


class SliceOverwrite(_BoundWrite, RoutingRule):
    """``x[region] = v`` and other overwrites: the node's own backward routes relevance (module doc)."""


class SliceUpdate(_BoundWrite):
    """``f_(x[region], *operands)`` for an arithmetic in-place ``f_``: the out-of-place ``f``'s rule inside the
    region, identity outside (module doc)."""

    def needs(self, node, graph):
        return range(len(node.next_functions))

    def relevance(self, ctx):
        from ..api import propagate  # the sub-explanation of f; a local import (api imports the rules)
        from ..constants import ConstantRecorder

        if self.call.view is None:
            raise UnrecoverableValueError(f"CopySlices: {_name(self.call)} did not write through a view")
        r = self._layout(ctx.relevance[0])
        region = self._region(r)
        old = self._region(self._layout(ctx.inputs[0])).clone().requires_grad_(True)
        live = [i for i in range(1, len(ctx.edges)) if ctx.has_edge(i)]
        leaves = {i: _leaf(ctx.inputs[i], ctx.is_param(i)) for i in live}
        args, kwargs = self._operands(ctx.node, [leaves.get(i) for i in range(1, len(ctx.edges))])
        with torch.enable_grad(), ConstantRecorder() as rec:
            y = _out_of_place(self.call)(old, *args, **kwargs)
        rel = propagate(y, [old, *leaves.values()], relevance=region.clone(), config=ctx.config,
                        constants=rec.calls)
        region.copy_(rel[0])
        out = [r.reshape(saved.output_shapes(ctx.node)[0]).contiguous()] + [None] * (len(ctx.edges) - 1)
        for i, ri in zip(leaves, rel[1:]):
            out[i] = ri
        return out


def _leaf(value, is_param: bool):
    """A fresh leaf holding ``value`` for the sub-explanation (a Parameter where the operand was one, so that
    rules tell weights from activations as they do in the model)."""
    t = value.detach().clone()
    return torch.nn.Parameter(t) if is_param else t.requires_grad_(True)


def _name(call) -> str:
    return getattr(call.func, "__name__", repr(call.func))


def _out_of_place(call):
    """``Tensor.add`` for ``add_``, ``Tensor.__add__`` for ``__iadd__``."""
    name = _name(call)
    plain = "__" + name[3:] if name.startswith("__i") else name[:-1]
    func = getattr(torch.Tensor, plain, None)
    if func is None:
        raise UnrecoverableValueError(f"CopySlices: no out-of-place version of the in-place {name} is known")
    return func
