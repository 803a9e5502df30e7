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
    """A promise needed an operand value that autograd neither saved nor can rebuild.

    ``op`` is the autograd node name, ``rank`` its index among the nodes of that name in topological order (what
    locates it in a re-run of the model), ``module`` the module path once known, ``recorded`` whether the
    forward pass ran under a :class:`~dynamiclrp.ConstantRecorder`. The message ends with what to do."""

    def __init__(self, message: str, op: str | None = None, rank: int | None = None, module: str | None = None,
                 recorded: bool = False):
        self.reason, self.op, self.rank, self.module, self.recorded = message, op, rank, module, recorded
        where = f" (in module {module!r})" if module is not None else ""
        if op is None or "ConstantRecorder" in message:  # no node, or the message already says what to do
            fix = ""
        elif recorded:
            fix = (" The forward pass was recorded, so the constant was made inside a torch op where the recorder "
                   "cannot see it: pass it in as a tensor argument or buffer, or give the op a rule with "
                   "LRPConfig(rule_overrides={...}), and please open an issue naming the op.")
        else:
            fix = (" Fix: record the forward pass -- `with dynamiclrp.ConstantRecorder() as rec: out = model(x)`, "
                   "then `propagate(out, [x], constants=rec.calls)` -- or use `LRP(model).explain(x)`, which does.")
        super().__init__(f"{message.rstrip('.')}{where}.{fix}")

    def located(self, module: str) -> "UnrecoverableValueError":
        """The same error with the module path that made the node."""
        return UnrecoverableValueError(self.reason, self.op, self.rank, module, self.recorded)


class NonFiniteRelevanceError(DynamicLRPError):
    """NaN or Inf appeared in relevance; the message names the first node where it appeared."""


class TargetError(DynamicLRPError, ValueError):
    """The ``target`` does not fit the model output."""


class DynamicLRPWarning(UserWarning):
    """Base class of dynamiclrp warnings: an explanation was computed, but it may not mean what you expect
    (filter them all with ``warnings.simplefilter("error", dynamiclrp.DynamicLRPWarning)``)."""


class ZeroSeedWarning(DynamicLRPWarning):
    """The explained output is exactly zero for some sample, so its relevance is all zero."""


class TrainingModeWarning(DynamicLRPWarning):
    """The model ran with stochastic or batch-dependent modules in training mode (dropout, batch norm)."""


class ConservationWarning(DynamicLRPWarning):
    """The input relevance sums to far more (or far less, with the opposite sign) than the explained output."""


class StaleGraphError(DynamicLRPError):
    """The explained graph reaches autograd nodes of an earlier forward pass whose saved tensors were freed
    (a model that caches a tensor computed from its parameters across calls, then ``backward()`` ran)."""
