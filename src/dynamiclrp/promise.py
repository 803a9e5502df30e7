"""The Promise System's objects (paper §4.2, Definition 1, Appendices C and E).

A :class:`Promise` stands at an *origin* node whose relevance rule, or whose forward recomputation, needs operand
values that autograd did not save. It holds ``rout`` (the origin's accumulated output relevance), ``args`` (operand
values, filled in as branches retrieve them), ``rins`` (the input relevances once computed) and the readiness and
completeness flags. Each needed input edge gets a :class:`Branch`, which walks down the graph recording the nodes
it passes (:class:`ChainStep`: the node's forward and relevance closures) until it reaches a node that can give
its output value: an *Arg Node* (rebuilt from saved tensors), or a node that needs a promise of its own (a
*Promise Tree*; created before the node's inputs have all landed, that promise is a *Pre-Promise*). Several
branches arriving at one node are aggregated by that node's single promise (its ``parents``).

These objects hold no rule logic; the traversal engine drives them.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(eq=False)
class ChainStep:
    """A node a branch passed through: ``fwd`` recomputes its output ``slot`` from input ``edge``; its
    relevance closure runs when the origin's relevance is fast-forwarded back along the branch."""

    node: object
    slot: int
    edge: int
    inputs: list | None = None
    outputs: tuple | None = None


@dataclass(eq=False)
class Branch:
    """One branch of a promise, for input ``edge`` of the origin.

    ``requests_value`` is false for edges whose value the origin already has: such a branch only carries the
    edge's relevance back (it keeps every edge of a promise origin on the same deferred footing).
    """

    promise: "Promise"
    edge: int
    requests_value: bool
    chain: list = field(default_factory=list)
    terminal: object = None
    slot: int = 0
    value: object = None


@dataclass(eq=False)
class Promise:
    """Definition 1: ``(rout, ready, complete, args, rins)`` at ``origin``.

    ``kind`` is ``"strict"`` (the rule needs unsaved operands), ``"dependent"`` (a branch reached a node whose
    output must be recomputed from several inputs) or ``"pre"`` (as dependent, but created before all of the
    node's consumers had landed: the Pre-Promise that breaks promise deadlock).
    """

    origin: object
    kind: str
    args: list
    branches: dict = field(default_factory=dict)
    parents: list = field(default_factory=list)
    missing: int = 0
    rout: list | None = None
    rins: list | None = None
    complete: bool = False

    @property
    def ready(self) -> bool:
        """All requested operand values have been retrieved."""
        return self.missing == 0

    def set_arg(self, edge: int, value) -> bool:
        """Store a retrieved operand; returns True when this made the promise ready."""
        self.args[edge] = value
        self.missing -= 1
        return self.missing == 0
