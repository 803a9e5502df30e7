"""Named presets: rule maps with citations. A preset is data (an :class:`~dynamiclrp.LRPConfig`), never code in the
engine; each is also reachable as a classmethod (``LRPConfig.attnlrp()``).

Transformers
------------
* :func:`attnlrp` -- AttnLRP (Achtibat et al., "AttnLRP: Attention-Aware Layer-Wise Relevance Propagation for
  Transformers", ICML 2024): identity through elementwise nonlinearities and normalisation statistics, the
  softmax rule, the uniform rule for products of two activations, the z-rule for sums, epsilon on linear layers.
* :func:`cp_lrp` -- CP-LRP (Ali et al., "XAI for Transformers: Better Explanations through Conservative
  Propagation", ICML 2022): as AttnLRP, but attention weights and gates are held constant.
"""
from __future__ import annotations

from .config import LRPConfig


def attnlrp(epsilon: float = 1e-6) -> LRPConfig:
    """AttnLRP (Achtibat et al. 2024), as LXT implements it; see the module doc."""
    return LRPConfig(epsilon=epsilon, add_rule="z", bilinear="uniform")


def cp_lrp(epsilon: float = 1e-6) -> LRPConfig:
    """CP-LRP (Ali et al. 2022), as LXT implements it; see the module doc."""
    return LRPConfig(epsilon=epsilon, add_rule="z", bilinear="cp")


PRESETS = {"attnlrp": attnlrp, "cp_lrp": cp_lrp}
