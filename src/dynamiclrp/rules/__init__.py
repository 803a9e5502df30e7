"""Relevance rules, one module per op family, all filed in :data:`RULES` keyed by autograd node name.

To find the rule for ``MulBackward0``: ``grep -rn '"MulBackward"' src/dynamiclrp/rules``.
"""
from . import attention, elementwise, function, inplace, linear, normalization, reduction, shape  # noqa: F401
from .base import RULES, IdentityRule, OpRule, RoutingRule, RuleContext, lookup, register, stabilize

__all__ = ["RULES", "OpRule", "RoutingRule", "IdentityRule", "RuleContext", "lookup", "register", "stabilize"]
