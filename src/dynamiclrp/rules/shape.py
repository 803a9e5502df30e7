"""Shape, indexing and concatenation ops: exact routing of relevance (see :class:`RoutingRule`).

Formula for all of them: ``R_in = J^T R_out`` where ``J`` is the op's 0/1 Jacobian, so each entry's relevance
returns to the entry it came from and copies add up. Conservative exactly. ``forward`` recomputes the output from
the input so that promise branches can pass through these ops.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import saved
from .base import RoutingRule, live_edges, register

#: Value written where an op filled in a constant that autograd did not keep (masked_fill's value, padding,
#: where's scalar branch). Rules downstream only ever multiply such entries by exact zeros; anything else
#: surfaces as a NaN error naming the node, never as a silently wrong number.
UNKNOWN = float("nan")


def _out_shape(node, slot=0):
    return saved.output_shapes(node)[slot]


@register("ViewBackward", "ReshapeAliasBackward", "UnsafeViewBackward", "SqueezeBackward", "UnsqueezeBackward",
          "AliasBackward", "CloneBackward", "ViewAsRealBackward", "LiftFreshBackward", "ContiguousBackward")
class ReshapeRule(RoutingRule):
    """Reshapes and copies: ``y = x.reshape(shape_of_y)``; ``R_x = R_y.reshape(shape_of_x)``."""

    def forward(self, node, inputs):
        return (inputs[0].reshape(_out_shape(node)),)


@register("ToCopyBackward")
class ToCopyRule(RoutingRule):
    """Dtype/device copies: ``y = x.to(dtype)``; ``R_x = R_y`` (cast back to ``x``'s dtype)."""

    def forward(self, node, inputs):
        return (inputs[0].to(dtype=saved.output_dtypes(node)[0]),)


@register("TBackward")
class TRule(RoutingRule):
    """Matrix transpose ``y = x.t()``; ``R_x = R_y.t()``."""

    def forward(self, node, inputs):
        return (inputs[0].t(),)


@register("TransposeBackward")
class TransposeRule(RoutingRule):
    """``y = x.transpose(d0, d1)``; ``R_x = R_y.transpose(d0, d1)``."""

    def forward(self, node, inputs):
        return (inputs[0].transpose(saved.get(node, "dim0"), saved.get(node, "dim1")),)


@register("PermuteBackward")
class PermuteRule(RoutingRule):
    """``y = x.permute(dims)``; ``R_x = R_y`` permuted back."""

    def forward(self, node, inputs):
        return (inputs[0].permute(*saved.get(node, "dims")),)


@register("ExpandBackward")
class ExpandRule(RoutingRule):
    """Broadcast copy ``y = x.expand(shape)``; ``R_x = sum of R_y over the copies``."""

    def forward(self, node, inputs):
        return (inputs[0].expand(_out_shape(node)),)


@register("RepeatBackward")
class RepeatRule(RoutingRule):
    """Tiled copy ``y = x.repeat(r)``; ``R_x = sum of R_y over the tiles``."""

    def forward(self, node, inputs):
        return (inputs[0].repeat(*saved.get(node, "repeats")),)


@register("SliceBackward")
class SliceRule(RoutingRule):
    """``y = x[start:end:step]`` along ``dim``; ``R_x`` is ``R_y`` scattered back, zero elsewhere."""

    def forward(self, node, inputs):
        return (torch.ops.aten.slice(inputs[0], saved.get(node, "dim"), saved.get(node, "start"),
                                     saved.get(node, "end"), saved.get(node, "step")),)


@register("SelectBackward")
class SelectRule(RoutingRule):
    """``y = x.select(dim, index)``; ``R_x`` is ``R_y`` placed at ``index``, zero elsewhere."""

    def forward(self, node, inputs):
        return (inputs[0].select(saved.get(node, "dim"), saved.get(node, "index")),)


@register("IndexBackward")
class IndexRule(RoutingRule):
    """Advanced indexing ``y = x[indices]``; ``R_x`` accumulates ``R_y`` at the indexed positions."""

    def forward(self, node, inputs):
        return (torch.ops.aten.index(inputs[0], list(saved.get(node, "indices"))),)


@register("GatherBackward")
class GatherRule(RoutingRule):
    """``y = x.gather(dim, index)``; ``R_x`` scatter-adds ``R_y`` at ``index``."""

    def forward(self, node, inputs):
        return (inputs[0].gather(saved.get(node, "dim"), saved.get(node, "index")),)


@register("EmbeddingBackward")
class EmbeddingRule(RoutingRule):
    """Lookup ``y = W[ids]``; each row's relevance returns to the looked-up row of ``W`` (summed over uses).

    The relevance of ``y`` itself (summed over the hidden dimension) is the per-token relevance of ``ids``.
    """

    def forward(self, node, inputs):
        return (F.embedding(saved.get(node, "indices"), inputs[0]),)


@register("CatBackward")
class CatRule(RoutingRule):
    """``y = cat(xs, dim)``; each ``R_xi`` is its slice of ``R_y``. A constant piece (a buffer, a frozen token,
    ``torch.zeros``) is no edge of the graph; its value, which a promise passing through needs to rebuild ``y``,
    is read from the forward pass (and its slice keeps its relevance)."""

    def constant_edges(self, node, call):  # torch.cat(tensors, dim): one edge per listed tensor
        if not call.is_one_of("cat", "concat", "concatenate"):
            return {}
        pieces = call.arg(0, "tensors")
        if not isinstance(pieces, (list, tuple)) or len(pieces) != len(node.next_functions):
            return {}
        return {i: t for i, t in enumerate(pieces) if isinstance(t, torch.Tensor)}

    def forward(self, node, inputs):
        return (torch.cat(list(inputs), saved.get(node, "dim")),)


@register("StackBackward")
class StackRule(RoutingRule):
    """``y = stack(xs, dim)``; each ``R_xi`` is ``R_y.select(dim, i)``."""

    def forward(self, node, inputs):
        return (torch.stack(list(inputs), saved.get(node, "dim")),)


@register("UnbindBackward")
class UnbindRule(RoutingRule):
    """``ys = x.unbind(dim)``; ``R_x = stack(R_ys, dim)`` (outputs without relevance count as zero)."""

    def forward(self, node, inputs):
        return tuple(inputs[0].unbind(saved.get(node, "dim")))


@register("SplitBackward")
class SplitRule(RoutingRule):
    """``ys = x.split(size, dim)``; ``R_x = cat(R_ys, dim)``."""

    def forward(self, node, inputs):
        return tuple(inputs[0].split(saved.get(node, "split_size"), saved.get(node, "dim")))


@register("SplitWithSizesBackward")
class SplitWithSizesRule(RoutingRule):
    """``ys = x.split(sizes, dim)``; ``R_x = cat(R_ys, dim)``."""

    def forward(self, node, inputs):
        return tuple(inputs[0].split(list(saved.get(node, "split_sizes")), saved.get(node, "dim")))


@register("MaxBackward", "MinBackward")
class MaxRule(RoutingRule):
    """Winner-takes-all ``y = max(x, dim)`` (or the global max): the arg-max entry gets all of ``R_y`` (ties
    split evenly for the global max, as autograd does)."""

    def saved_output(self, node):
        result = saved.get(node, "result", None)
        return None if result is None else (result,)

    def known_inputs(self, node):
        return [saved.get(node, "self", None)]

    def forward(self, node, inputs):
        x = inputs[0]
        if saved.has(node, "indices"):
            dim, keep = saved.get(node, "dim"), saved.get(node, "keepdim")
            idx = saved.get(node, "indices")
            idx = idx if keep else idx.unsqueeze(dim)
            out = x.gather(dim, idx)
            return (out if keep else out.squeeze(dim),)
        return (x.amax() if "Max" in saved.full_name(node) else x.amin(),)


@register("TopkBackward", "SortBackward", "KthvalueBackward", "ModeBackward", "MedianBackward", "NanmedianBackward")
class SelectByIndexRule(RoutingRule):
    """``values, indices = topk(x, k, dim)`` (also ``sort``, ``kthvalue``, ``mode``, ``median`` along a dim): the
    values are entries of ``x`` picked by the saved ``indices``, so each gets back its own relevance (MoE routers
    pick their experts this way). The integer ``indices`` output carries no relevance."""

    def forward(self, node, inputs):
        x, idx = inputs[0], saved.get(node, "indices")
        dim = saved.get(node, "dim", -1) % max(x.dim(), 1)
        keep = saved.get(node, "keepdim", True)
        gathered = x.gather(dim, idx if keep or idx.dim() == x.dim() else idx.unsqueeze(dim))
        values = gathered if keep or gathered.shape == saved.output_shapes(node)[0] else gathered.squeeze(dim)
        return (values, idx)[: saved.num_outputs(node)]


@register("MaxPool2DWithIndicesBackward", "MaxPool3DWithIndicesBackward", "MaxPool1DWithIndicesBackward")
class MaxPoolRule(RoutingRule):
    """Max pooling: each window's relevance goes to its arg-max input (winner takes all, as Zennit)."""

    def known_inputs(self, node):
        return [saved.get(node, "self")]

    def forward(self, node, inputs):
        x = inputs[0]
        kwargs = dict(kernel_size=saved.get(node, "kernel_size"), stride=saved.get(node, "stride"),
                      padding=saved.get(node, "padding"), dilation=saved.get(node, "dilation"),
                      ceil_mode=saved.get(node, "ceil_mode"))
        name = saved.full_name(node)
        fn = F.max_pool3d if "3D" in name else F.max_pool1d if "1D" in name else F.max_pool2d
        return (fn(x, **kwargs),)


class _FillRule(RoutingRule):
    """A routing op that writes a Python scalar autograd does not keep (``fill``): read from the recorded call
    when there is one (:meth:`specialize`), else :data:`UNKNOWN`."""

    def __init__(self, fill=UNKNOWN):
        self.fill = fill

    def recorded_fill(self, call):
        """The scalar the call filled in, or ``None`` (not this op, or a tensor value, which is an edge)."""
        return None

    def specialize(self, node, call):
        value = None if call is None else self.recorded_fill(call)
        return type(self)(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else self


@register("MaskedFillBackward")
class MaskedFillRule(_FillRule):
    """``y = x.masked_fill(mask, v)``: unmasked entries keep their relevance, filled entries have none.

    Autograd keeps no scalar ``v``: it is read from the forward pass; unrecorded, forward recomputation marks
    those entries as unknown (NaN), which only exact-zero relevance paths (e.g. a softmax weight of 0) may consume.
    """

    def recorded_fill(self, call):
        return call.arg(2, "value") if call.is_one_of("masked_fill") else None

    def constant_edges(self, node, call):  # a constant 0-dim tensor value is an edge
        return {1: call.arg(2, "value")} if len(node.next_functions) == 2 and call.is_one_of("masked_fill") else {}

    def forward(self, node, inputs):
        value = inputs[1] if len(inputs) > 1 and inputs[1] is not None else self.fill
        return (inputs[0].masked_fill(saved.get(node, "mask"), value),)

    def forward_needs(self, node):
        return live_edges(node)


@register("WhereBackward")
class WhereRule(RoutingRule):
    """``y = where(cond, a, b)``: each entry's relevance goes to the operand it was taken from.

    A constant operand autograd did not save is read from the forward pass; unrecorded, it is recomputed as
    unknown (NaN), see :class:`MaskedFillRule`.
    """

    def constant_edges(self, node, call):  # torch.where(condition, input, other)
        return {0: call.arg(1, "input"), 1: call.arg(2, "other")} if call.is_one_of("where") else {}

    def forward(self, node, inputs):
        cond = saved.get(node, "condition")
        a = inputs[0] if inputs[0] is not None else torch.tensor(UNKNOWN)
        b = inputs[1] if inputs[1] is not None else torch.tensor(UNKNOWN)
        return (torch.where(cond, a, b),)

    def forward_needs(self, node):
        return live_edges(node)


@register("ConstantPadNdBackward")
class ConstantPadRule(_FillRule):
    """``y = pad(x, pad, value)``: interior entries keep their relevance; padding has none. Autograd keeps no pad
    value: it is read from the forward pass; unrecorded, recomputed padding is marked unknown (NaN)."""

    def recorded_fill(self, call):
        if call.is_one_of("pad"):  # F.pad(input, pad, mode="constant", value=None): None means 0
            value = call.arg(3, "value")
        elif call.is_one_of("constant_pad_nd"):
            value = call.arg(2, "value")
        else:
            return None
        return 0.0 if value is None else value

    def forward(self, node, inputs):
        return (F.pad(inputs[0], list(saved.get(node, "pad")), value=self.fill),)


@register("Im2ColBackward")
class UnfoldRule(RoutingRule):
    """``y = unfold(x)`` (im2col) copies each entry into several patches; ``R_x`` sums those copies."""

    def forward(self, node, inputs):
        return (F.unfold(inputs[0], saved.get(node, "kernel_size"), saved.get(node, "dilation"),
                         saved.get(node, "padding"), saved.get(node, "stride")),)


@register("RollBackward")
class RollRule(RoutingRule):
    """``y = roll(x, shifts, dims)`` (shifted windows): each entry's relevance rolls back to where it came from."""

    def forward(self, node, inputs):
        return (torch.roll(inputs[0], list(saved.get(node, "shifts")), list(saved.get(node, "dims"))),)


@register("AsStridedBackward")
class AsStridedRule(RoutingRule):
    """``y = x.as_strided(size, stride, offset)``: entries are read from ``x``'s storage; relevance returns to the
    entries read (entries read twice add up)."""

    def forward(self, node, inputs):
        x = inputs[0].contiguous()
        offset = saved.get(node, "storage_offset", None)
        return (x.as_strided(saved.get(node, "size"), saved.get(node, "stride"),
                             x.storage_offset() if offset is None else offset),)


# ------------------------------------------------------------------------------------- overwriting writes


@register("MaskedScatterBackward")
class MaskedScatterRule(RoutingRule):
    """``y = x.masked_scatter(mask, source)`` (vision-language models place image features among token
    embeddings this way): each masked entry takes the next entry of ``source`` and its relevance goes there;
    the others keep ``x``'s."""

    def constant_edges(self, node, call):  # a constant source (a buffer)
        return {1: call.arg(2, "source")} if call.is_one_of("masked_scatter") else {}

    def forward(self, node, inputs):
        return (inputs[0].masked_scatter(saved.get(node, "mask"), inputs[1]),)


@register("IndexCopyBackward")
class IndexCopyRule(RoutingRule):
    """``y = x.index_copy(dim, index, source)``: the copied slices' relevance goes to ``source``, the rest to
    ``x``."""

    def known_inputs(self, node):
        return [None, saved.get(node, "source", None)]

    def forward(self, node, inputs):
        return (inputs[0].index_copy(saved.get(node, "dim"), saved.get(node, "index"), inputs[1]),)


@register("ScatterBackward")
class ScatterRule(_FillRule):
    """``y = x.scatter(dim, index, src)`` (``ScatterBackward0``) or ``x.scatter(dim, index, value)``
    (``ScatterBackward1``, a scalar read from the forward pass): written entries take their relevance from
    ``src`` (a constant keeps it), the rest from ``x``."""

    def recorded_fill(self, call):
        return call.arg(3, "value") if call.is_one_of("scatter") else None

    def constant_edges(self, node, call):  # a constant src tensor
        if len(node.next_functions) == 2 and call.is_one_of("scatter"):
            return {1: call.arg(3, "src")}
        return {}

    def forward(self, node, inputs):
        dim, index = saved.get(node, "dim"), saved.get(node, "index")
        if len(inputs) == 2:
            return (inputs[0].scatter(dim, index, inputs[1]),)
        return (inputs[0].scatter(dim, index, self.fill),)


@register("IndexFillBackward")
class IndexFillRule(_FillRule):
    """``y = x.index_fill(dim, index, value)``: filled slices hold a constant (read from the forward pass) and
    have no relevance to pass; the rest is ``x``'s."""

    def recorded_fill(self, call):
        return call.arg(3, "value") if call.is_one_of("index_fill") else None

    def constant_edges(self, node, call):  # a 0-dim tensor value is an edge
        return {1: call.arg(3, "value")} if len(node.next_functions) == 2 and call.is_one_of("index_fill") else {}

    def forward(self, node, inputs):
        value = inputs[1] if len(inputs) == 2 and inputs[1] is not None else self.fill
        return (inputs[0].index_fill(saved.get(node, "dim"), saved.get(node, "index"), value),)

    def forward_needs(self, node):
        return live_edges(node)


@register("FillBackward", "ZeroBackward")
class FillRule(_FillRule):
    """``x.fill_(v)``, ``x.zero_()``: the output is a constant, nothing flows back (``R_x = 0``)."""

    def recorded_fill(self, call):
        if call.is_one_of("zero"):
            return 0.0
        return call.arg(1, "value") if call.is_one_of("fill") else None

    def forward(self, node, inputs):
        fill = 0.0 if saved.op_name(node) == "ZeroBackward" else self.fill
        return (torch.full_like(inputs[0], fill),)


# ------------------------------------------------------------------- op-driven coverage (issue 11): routing ops


@register("IndexSelectBackward")
class IndexSelectRule(RoutingRule):
    """``y = x.index_select(dim, index)`` (message passing gathers node features so; ``repeat_interleave`` with a
    tensor of repeats too): ``R_x = J^T R_y`` accumulates each selected slice's relevance at its index (copies add
    up)."""

    def forward(self, node, inputs):
        return (inputs[0].index_select(saved.get(node, "dim"), saved.get(node, "index")),)


@register("UnsafeSplitBackward")
class UnsafeSplitRule(SplitRule):
    """``ys = torch.unsafe_split(x, size, dim)`` (``nn.GRU`` on CPU splits its gates so): ``R_x = cat(R_ys, dim)``."""


@register("UnsafeSplitWithSizesBackward")
class UnsafeSplitWithSizesRule(SplitWithSizesRule):
    """``ys = torch.unsafe_split_with_sizes(x, sizes, dim)``: ``R_x = cat(R_ys, dim)``."""


@register("UnsafeIndexBackward")
class UnsafeIndexRule(IndexRule):
    """``y = aten._unsafe_index(x, indices)`` (decomposed interpolation): as ``x[indices]``."""


_SELECT2 = {"MaximumBackward": torch.maximum, "MinimumBackward": torch.minimum, "FmaxBackward": torch.fmax,
            "FminBackward": torch.fmin}


@register(*_SELECT2)
class MaximumRule(RoutingRule):
    """``y = maximum(a, b)`` (also ``minimum``, ``fmax``, ``fmin``; RWKV's clamps): each entry's relevance goes to
    the operand it was taken from, ``R_a = [a > b] R_y``, ``R_b = [b > a] R_y``; ties split evenly (``R_y / 2``
    each), as torch's backward does. A constant operand (``maximum(x, 0)`` with a tensor 0) keeps the relevance of
    the entries it won, like a bias."""

    def known_inputs(self, node):
        return [saved.get(node, "self", None), saved.get(node, "other", None)]

    def forward(self, node, inputs):
        return (_SELECT2[saved.op_name(node)](inputs[0], inputs[1]),)


#: routing ops recomputed by the op itself: node name -> forward from the saved arguments
_ROUTING = {
    "UnfoldBackward": lambda n, x: x.unfold(saved.get(n, "dimension"), saved.get(n, "size"), saved.get(n, "step")),
    "FlipBackward": lambda n, x: x.flip(saved.get(n, "dims")),
    "PixelShuffleBackward": lambda n, x: F.pixel_shuffle(x, saved.get(n, "upscale_factor")),
    "PixelUnshuffleBackward": lambda n, x: F.pixel_unshuffle(x, saved.get(n, "downscale_factor")),
    "ChannelShuffleBackward": lambda n, x: F.channel_shuffle(x, saved.get(n, "groups")),
    "Rot90Backward": lambda n, x: torch.rot90(x, saved.get(n, "k"), saved.get(n, "dims")),
    "DiagonalBackward": lambda n, x: x.diagonal(saved.get(n, "offset"), saved.get(n, "dim1"), saved.get(n, "dim2")),
    "DiagEmbedBackward": lambda n, x: torch.diag_embed(x, saved.get(n, "offset"), saved.get(n, "dim1"),
                                                       saved.get(n, "dim2")),
    "TrilBackward": lambda n, x: x.tril(saved.get(n, "diagonal")),
    "TriuBackward": lambda n, x: x.triu(saved.get(n, "diagonal")),
    "NarrowCopyBackward": lambda n, x: x.narrow_copy(saved.get(n, "dim"), saved.get(n, "start"),
                                                     saved.get(n, "length")),
    "MaskedSelectBackward": lambda n, x: x.masked_select(saved.get(n, "mask")),
    "TakeBackward": lambda n, x: x.take(saved.get(n, "index")),
    "ReflectionPad1DBackward": lambda n, x: F.pad(x, list(saved.get(n, "padding")), mode="reflect"),
    "ReflectionPad2DBackward": lambda n, x: F.pad(x, list(saved.get(n, "padding")), mode="reflect"),
    "ReflectionPad3DBackward": lambda n, x: F.pad(x, list(saved.get(n, "padding")), mode="reflect"),
    "ReplicationPad1DBackward": lambda n, x: F.pad(x, list(saved.get(n, "padding")), mode="replicate"),
    "ReplicationPad2DBackward": lambda n, x: F.pad(x, list(saved.get(n, "padding")), mode="replicate"),
    "ReplicationPad3DBackward": lambda n, x: F.pad(x, list(saved.get(n, "padding")), mode="replicate"),
    "AmaxBackward": lambda n, x: x.amax(saved.get(n, "dim"), saved.get(n, "keepdim")),
    "AminBackward": lambda n, x: x.amin(saved.get(n, "dim"), saved.get(n, "keepdim")),
}


@register(*_ROUTING)
class MovedValuesRule(RoutingRule):
    """Ops that move, copy or select entries, recomputed by the op itself (table ``_ROUTING``): ``Tensor.unfold``
    (PatchTST's patches), flip, pixel (un)shuffle, channel shuffle, rot90, diagonal, diag_embed, tril/triu,
    narrow_copy, masked_select, take, reflection/replication padding, amax/amin. ``R_x = J^T R_y`` with ``J`` the
    op's 0/1 Jacobian (the node's own backward): each entry's relevance returns to the entry it came from, copies
    (padding's reflections, overlapping windows) add up; zeroed entries (tril) and unselected ones get nothing;
    amax/amin ties share evenly, as autograd does."""

    def forward(self, node, inputs):
        return (_ROUTING[saved.op_name(node)](node, inputs[0]),)


#: routing ops whose output is recomputed as ``J x`` from the node's own backward (exact for routing, see
#: :func:`~dynamiclrp.rules.base.linear_forward`): their saved arguments alone do not describe the op
LINEAR_ROUTING = ("AdaptiveMaxPool2DBackward", "AdaptiveMaxPool3DBackward", "FractionalMaxPool2DBackward",
                  "FractionalMaxPool3DBackward", "MaxUnpool2DBackward", "MaxUnpool3DBackward", "CummaxBackward",
                  "CumminBackward", "AminmaxBackward", "SelectScatterBackward", "SliceScatterBackward",
                  "DiagonalScatterBackward", "BlockDiagBackward", "LazyCloneBackward",
                  "ReshapeCopyBackward", "LiftBackward", "PackPaddedSequenceBackward")


@register(*LINEAR_ROUTING)
class LinearRoutingRule(RoutingRule):
    """Selections and placements whose node does not say enough to call the op again: adaptive and fractional
    max pooling (winner takes all, by the saved indices), max unpooling, cummax/cummin, aminmax,
    select/slice/diagonal scatter (``src`` written into ``x``), block_diag, lazy clones, reshape
    copies and ``pack_padded_sequence`` (the time steps of each sequence, packed for an RNN).
    ``R_in = J^T R_out`` (the node's own backward); the output is recomputed as ``J x`` (exact: these maps are
    linear in their operands at the recorded selection). A constant operand outside the graph (a constant
    ``src``) cannot be recomputed and raises, naming the op."""


@register("ClampMaxBackward1", "ClampMinBackward1")
class ClampByTensorRule(RoutingRule):
    """``y = clamp_max(x, m)`` / ``clamp_min(x, m)`` with a tensor bound ``m``: ``min(x, m)`` / ``max(x, m)``, so
    each entry's relevance goes to the operand it was taken from (as :class:`MaximumRule`; at ties autograd gives
    it to ``x``). A constant bound keeps the relevance of the entries it clamped."""

    def known_inputs(self, node):
        bound = "max" if saved.op_name(node) == "ClampMaxBackward" else "min"
        return [saved.get(node, "self", None), saved.get(node, bound, None)]

    def forward(self, node, inputs):
        fn = torch.clamp_max if saved.op_name(node) == "ClampMaxBackward" else torch.clamp_min
        return (fn(inputs[0], inputs[1]),)
