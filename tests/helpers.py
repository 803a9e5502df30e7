"""Shared test helpers: run the engine and expose its statistics."""
import torch

from dynamiclrp import LRPConfig
from dynamiclrp.api import _tap_for, summarize
from dynamiclrp.engine import Engine
from dynamiclrp.graph import Graph


def run(output, tensors, relevance=None, config=None):
    """Propagate ``relevance`` (default: ``output`` itself) from ``output`` to ``tensors``.

    Returns ``(relevances, stats, result)``; asserts every node of the graph propagated exactly once.
    """
    graph = Graph.capture(output)
    taps = [_tap_for(graph, t) for t in tensors]
    engine = Engine(graph, config or LRPConfig(epsilon=1e-12), taps=[t for t in taps if t is not None])
    seed = output.detach() if relevance is None else relevance
    result = engine.run(seed, slot=output.output_nr)
    assert set(result.propagations.values()) == {1}, result.propagations
    rels = [result.taps[t].reshape(x.shape) if t is not None else torch.zeros_like(x) for x, t in zip(tensors, taps)]
    return rels, summarize(result), result


def param(*shape):
    return torch.nn.Parameter(torch.randn(*shape, dtype=torch.float64))


def leaf(*shape):
    return torch.randn(*shape, dtype=torch.float64, requires_grad=True)
