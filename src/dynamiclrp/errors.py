"""Exceptions raised by dynamiclrp. Every message names the operation and says what the user can do."""


class DynamicLRPError(RuntimeError):
    """Base class of all dynamiclrp errors."""


class UnsupportedOperationError(DynamicLRPError):
    """The autograd graph holds operations that have no relevance rule.

    ``ops`` maps each unsupported node name to the number of nodes of that type (and, where known, module paths).
    """

    def __init__(self, ops: dict[str, list[str]]):
        self.ops = ops
        lines = []
        for name, where in sorted(ops.items()):
            places = sorted({w for w in where if w})
            loc = f" (in {', '.join(places[:5])}{', ...' if len(places) > 5 else ''})" if places else ""
            lines.append(f"  {name} x{len(where)}{loc}")
        super().__init__(
            "no LRP rule for these autograd operations:\n" + "\n".join(lines)
            + "\nRegister a rule with LRPConfig(rule_overrides={name: rule}) or open an issue naming the op."
        )


class NoGradGraphError(DynamicLRPError):
    """The output to explain has no autograd graph (no ``grad_fn``)."""


class UnrecoverableValueError(DynamicLRPError):
    """A promise needed an operand value that autograd neither saved nor can rebuild."""


class NonFiniteRelevanceError(DynamicLRPError):
    """NaN or Inf appeared in relevance; the message names the first node where it appeared."""


class TargetError(DynamicLRPError, ValueError):
    """The ``target`` does not fit the model output."""
