"""dynamiclrp: Layer-wise Relevance Propagation for any PyTorch model, at the level of autograd operations.

The public API is small:

* :class:`LRP` -- ``LRP(model, config).attribute(inputs, target)`` explains a model output;
* :func:`propagate` -- the functional core, from any output tensor to any tensors of its graph;
* :class:`LRPConfig` -- rules and hyper-parameters;
* :func:`coverage` -- which operations of a model have a rule, and its promise statistics;
* :class:`ConstantRecorder` -- keeps operands outside the graph (frozen biases, masks) for :func:`propagate`.
"""
from .api import LRP, Explanation, propagate, seed_relevance
from .config import LRPConfig
from .constants import ConstantRecorder
from .coverage import CoverageReport, coverage
from .errors import (
    ConservationWarning,
    DynamicLRPError,
    DynamicLRPWarning,
    NoGradGraphError,
    NonFiniteRelevanceError,
    StaleGraphError,
    TargetError,
    TrainingModeWarning,
    UnrecoverableValueError,
    UnsupportedOperationError,
    ZeroSeedWarning,
)

__version__ = "0.1.0"

__all__ = [
    "LRP",
    "LRPConfig",
    "propagate",
    "ConstantRecorder",
    "seed_relevance",
    "Explanation",
    "coverage",
    "CoverageReport",
    "DynamicLRPError",
    "UnsupportedOperationError",
    "NoGradGraphError",
    "UnrecoverableValueError",
    "NonFiniteRelevanceError",
    "TargetError",
    "StaleGraphError",
    "DynamicLRPWarning",
    "ZeroSeedWarning",
    "TrainingModeWarning",
    "ConservationWarning",
]
