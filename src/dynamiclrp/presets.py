"""Named presets: rule maps with citations. A preset is data (an :class:`~dynamiclrp.LRPConfig`), never code in the
engine; each is also reachable as a classmethod (``LRPConfig.attnlrp()``).

Transformers
------------
* :func:`attnlrp` -- AttnLRP (Achtibat et al., "AttnLRP: Attention-Aware Layer-Wise Relevance Propagation for
  Transformers", ICML 2024): identity through elementwise nonlinearities and normalisation statistics, the
  softmax rule, the uniform rule for products of two activations, the z-rule for sums, epsilon on linear layers.
* :func:`cp_lrp` -- CP-LRP (Ali et al., "XAI for Transformers: Better Explanations through Conservative
  Propagation", ICML 2022): as AttnLRP, but attention weights and gates are held constant.

Vision (Zennit's composites)
----------------------------
The composites of Zennit 0.5.1 (Anders et al., "Software for dataset-wide XAI: from local explanations to global
insights with Zennit, CoRelAy, and ViRelAy", 2021), after the recommendations of Montavon et al. ("Layer-wise
relevance propagation: an overview", 2019) and Kohlbrenner et al. ("Towards best practice in explaining neural
network decisions with LRP", IJCNN 2020). All four share Zennit's base map: ``Pass`` on activations (our identity
rule), ``Norm`` on sums and average pools (the signed z-rule, ``add_rule="z"``, stabiliser ``stabilizer``), ``Pass``
on batch norms, which are merged into the convolution or linear layer before them (``canonize=True``, as Zennit's
``SequentialMergeBatchNorm``/``VGGCanonizer``/``ResNetCanonizer``), and ``Epsilon(epsilon)`` on linear layers:

==========================  ===============================  ====================================
preset                      convolutions                     first layer (consumes the input)
==========================  ===============================  ====================================
``epsilon_plus``            ``ZPlus()``                      (as the others)
``epsilon_gamma_box``       ``Gamma(0.25)``                  ``ZBox(low, high)``
``epsilon_plus_flat``       ``ZPlus()``                      ``Flat()``
``epsilon_alpha2_beta1``    ``AlphaBeta(2, 1)``              (as the others)
==========================  ===============================  ====================================

Parity with Zennit (its composite with its canonizers, float64, random weights and batch-norm statistics) is tested
in ``tests/test_composites.py``. One difference: Zennit's first-layer map only applies to a convolution
(``epsilon_gamma_box``) or a linear/convolution module (``epsilon_plus_flat``) that comes first in module order;
``"first"`` here is every product that consumes the explained input.
"""
from __future__ import annotations

from .config import LRPConfig
from .rules.specs import AlphaBeta, Epsilon, Flat, Gamma, ZBox, ZPlus

#: LXT's efficient mode is gradient x input: its linear layers and sums have no stabiliser (epsilon 0). Ours only
#: guards exact zeros; parity with LXT 2.1 to 1e-6 (tests/test_lxt_parity.py) needs epsilon <= ~1e-10: measured
#: max relative error over eight tiny float64 transformers up to 3.4e-3 at 1e-6, 3.5e-6 at 1e-9, 2.1e-7 at 1e-12.
TRANSFORMER_EPSILON = 1e-12


def attnlrp(epsilon: float = TRANSFORMER_EPSILON) -> LRPConfig:
    """AttnLRP (Achtibat et al. 2024), as LXT implements it; see the module doc. ``epsilon`` defaults to
    :data:`TRANSFORMER_EPSILON` (LXT's linear layers have none)."""
    return LRPConfig(epsilon=epsilon, add_rule="z", bilinear="uniform")


def cp_lrp(epsilon: float = TRANSFORMER_EPSILON) -> LRPConfig:
    """CP-LRP (Ali et al. 2022), as LXT implements it; see the module doc. ``epsilon`` as in :func:`attnlrp`."""
    return LRPConfig(epsilon=epsilon, add_rule="z", bilinear="cp")


def _vision(conv, first=None, epsilon: float = 1e-6, stabilizer: float = 1e-6) -> LRPConfig:
    layer_map = {"conv": conv, "linear": Epsilon(epsilon)}
    if first is not None:
        layer_map["first"] = first
    return LRPConfig(epsilon=stabilizer, add_rule="z", canonize=True, layer_map=layer_map)


def epsilon_plus(epsilon: float = 1e-6, stabilizer: float = 1e-6) -> LRPConfig:
    """Zennit's ``EpsilonPlus``: z+ on convolutions, epsilon on linear layers (Montavon et al. 2019, Sec. 10.2;
    Kohlbrenner et al. 2020); see the module doc for the shared base."""
    return _vision(ZPlus(stabilizer), None, epsilon, stabilizer)


def epsilon_gamma_box(low, high, epsilon: float = 1e-6, gamma: float = 0.25,
                      stabilizer: float = 1e-6) -> LRPConfig:
    """Zennit's ``EpsilonGammaBox``: z^B with the input bounds ``low``/``high`` (scalars or tensors broadcasting to
    the input, e.g. per channel ``(1, 3, 1, 1)``) on the first layer, gamma on the other convolutions, epsilon on
    linear layers (Montavon et al. 2019, Sec. 10.2; Kohlbrenner et al. 2020); see the module doc."""
    return _vision(Gamma(gamma, stabilizer), ZBox(low, high, stabilizer), epsilon, stabilizer)


def epsilon_plus_flat(epsilon: float = 1e-6, stabilizer: float = 1e-6) -> LRPConfig:
    """Zennit's ``EpsilonPlusFlat``: the flat rule on the first layer (Lapuschkin et al. 2019), z+ on the other
    convolutions, epsilon on linear layers (Kohlbrenner et al. 2020); see the module doc."""
    return _vision(ZPlus(stabilizer), Flat(stabilizer), epsilon, stabilizer)


def epsilon_alpha2_beta1(epsilon: float = 1e-6, stabilizer: float = 1e-6) -> LRPConfig:
    """Zennit's ``EpsilonAlpha2Beta1``: alpha=2, beta=1 on convolutions (Bach et al. 2015), epsilon on linear
    layers (Montavon et al. 2019); see the module doc."""
    return _vision(AlphaBeta(2.0, 1.0, stabilizer), None, epsilon, stabilizer)


#: ops that make a graph a transformer for :func:`for_graph` (softmax attention, fused or not)
_ATTENTION_OPS = ("SoftmaxBackward", "SafeSoftmaxBackward", "ScaledDotProduct")


def for_graph(graph) -> LRPConfig:
    """The default of ``LRP(model)`` without a config, chosen from the operations of the explained graph (never
    from the model's class), after the faithfulness measured in the README: a graph with softmax attention gets
    :func:`attnlrp` (the most faithful on SmolLM2 and the pattern ViT, and LXT's AttnLRP exactly); one with
    convolutions and no attention gets :func:`epsilon_plus` (the most faithful on ImageNet EfficientNet-Lite0);
    anything else :func:`attnlrp` (its rules reduce to epsilon -> 0 with the z-rule for sums: gradient x input on
    ReLU networks)."""
    from . import saved

    names = {saved.op_name(n) for n in graph.order}
    if any(n.startswith(_ATTENTION_OPS) for n in names):
        return attnlrp()
    if "ConvolutionBackward" in names:
        return epsilon_plus()
    return attnlrp()


PRESETS = {"attnlrp": attnlrp, "cp_lrp": cp_lrp, "epsilon_plus": epsilon_plus,
           "epsilon_gamma_box": epsilon_gamma_box, "epsilon_plus_flat": epsilon_plus_flat,
           "epsilon_alpha2_beta1": epsilon_alpha2_beta1}
