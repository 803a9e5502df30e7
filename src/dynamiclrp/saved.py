"""The one place that knows how autograd nodes expose their saved tensors (``_saved_*``) and output metadata.

Everything else in dynamiclrp asks this module, so a change of PyTorch internals is mended here only.
"""
from __future__ import annotations

import functools
import re

import torch

_VERSION_DIGIT = re.compile(r"\d+$")

_MISSING = object()


def op_name(node) -> str:
    """Autograd node name without its overload digit: ``AddmmBackward0`` -> ``AddmmBackward``."""
    return _short_name(type(node))


@functools.lru_cache(maxsize=4096)
def _short_name(node_type) -> str:
    return _VERSION_DIGIT.sub("", node_type.__name__)


def full_name(node) -> str:
    """The exact autograd node class name, e.g. ``AddmmBackward0``."""
    return type(node).__name__


def has(node, name: str) -> bool:
    """Whether the node saved an attribute called ``name`` (``self``, ``other``, ``dim`` ...)."""
    return hasattr(node, "_saved_" + name)


def get(node, name: str, default=_MISSING):
    """The saved attribute ``name`` of ``node`` (a tensor, a number, a tuple...).

    Raises ``AttributeError`` naming the node when it is missing and no default is given.
    """
    try:
        return _signed(getattr(node, "_saved_" + name))
    except AttributeError:
        if default is _MISSING:
            have = ", ".join(a[len("_saved_"):] for a in dir(node) if a.startswith("_saved_")) or "none"
            raise AttributeError(
                f"{full_name(node)} has no saved value {name!r} (it saved: {have}). A rule class written for "
                "another op reads that op's saved values: give this op a rule that reads its own (for an op that "
                "only moves values, dynamiclrp.rules.RoutingRule() needs none)") from None
        return default
    except RuntimeError as err:  # saved tensors freed by an earlier backward(retain_graph=False)
        raise RuntimeError(
            f"{full_name(node)} lost its saved tensors (was backward() already called without "
            "retain_graph=True?). Explain before calling backward, or pass retain_graph=True."
        ) from err


def _signed(value):
    """Autograd exposes some saved int64 values (negative dims) as unsigned: wrap them back."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 2**63:
        return value - 2**64
    if isinstance(value, tuple) and value and isinstance(value[0], int):
        return tuple(_signed(v) for v in value)
    return value


def leaf_variable(node):
    """The leaf tensor behind an ``AccumulateGrad`` node."""
    return node.variable


def function_saved(node) -> tuple:
    """Tensors a Python ``torch.autograd.Function`` saved with ``ctx.save_for_backward`` (its node's
    ``saved_tensors``), and the Function class (``None`` for built-in ops)."""
    return tuple(getattr(node, "saved_tensors", ())), getattr(node, "_forward_cls", None)


def output_shapes(node) -> list[torch.Size]:
    """Shapes of every output of the forward op that made ``node`` (one per output slot)."""
    return [torch.Size(m.shape) for m in node._input_metadata]


def output_dtypes(node) -> list[torch.dtype]:
    """Dtypes of every output slot of ``node``."""
    return [m.dtype for m in node._input_metadata]


def num_outputs(node) -> int:
    """How many outputs the forward op of ``node`` had."""
    return len(node._input_metadata)


def zeros(node, slot: int = 0) -> torch.Tensor:
    """Zeros shaped like output ``slot`` of ``node`` (like the leaf for ``AccumulateGrad``)."""
    if op_name(node) == "AccumulateGrad":
        return torch.zeros_like(node.variable)
    meta = node._input_metadata[slot]
    return torch.zeros(meta.shape, dtype=meta.dtype, device=meta.device)


def additive_signs(node) -> tuple:
    """``(s_0, s_1)`` with ``y = s_0 * a + s_1 * b`` for an add / sub / rsub node (``alpha`` included)."""
    alpha = get(node, "alpha", 1)
    name = op_name(node)
    if name == "SubBackward":
        return (1, -alpha)
    if name == "RsubBackward":
        return (-alpha, 1)
    return (1, alpha)
