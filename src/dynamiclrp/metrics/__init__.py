"""Faithfulness metrics for any attribution method (torch-native, batched, device-agnostic).

Nothing here imports the LRP engine: relevance comes as tensors or from any attribution callable, so dynamiclrp,
Captum, Zennit, LXT and a random baseline are measured the same way.

* perturbation curves, most-relevant-first and least-relevant-first: :func:`perturbation_curves`, configured by a
  :class:`Perturbation` (blur / baseline / token replacement / token deletion; patch pooling; channel reduction),
  with the paper's protocols as :meth:`Perturbation.image`, :meth:`Perturbation.patches`,
  :meth:`Perturbation.tokens`;
* scores from the curves: :func:`abpc` (AUC(LeRF) - AUC(MoRF)), :func:`comprehensiveness`, :func:`sufficiency`;
* extractive QA: :func:`tps` / :func:`tgs` (top-k attributed token in the predicted / gold span);
* ground-truth masks: :func:`pointing_game`;
* a data set: :func:`evaluate` -> :class:`Evaluation` (summary with standard errors, curves ready to plot);
* score functions: :func:`class_score`, :func:`next_token_score`, :func:`predicted_class`.

Every metric's direction and description is in :data:`METRICS`; results are :class:`MetricResult` (per-example
scores, mean, standard error, the curves).
"""
from .evaluate import Evaluation, RandomAttribution, evaluate
from .features import pool_patches, reduce_relevance
from .localization import pointing_game, tgs, token_in_span, tps
from .occlusion import (
    BaselineOcclusion,
    BlurOcclusion,
    Occlusion,
    TokenDeletion,
    TokenReplacement,
    gaussian_blur,
    gaussian_kernel,
)
from .perturbation import Perturbation, abpc, comprehensiveness, perturbation_curves, sufficiency
from .results import METRICS, MetricInfo, MetricResult, PerturbationCurve, PerturbationCurves, trapezoid
from .scores import ClassScore, NextTokenScore, class_score, model_output, next_token_score, predicted_class

__all__ = [
    "Perturbation", "perturbation_curves", "abpc", "comprehensiveness", "sufficiency",
    "Occlusion", "BlurOcclusion", "BaselineOcclusion", "TokenReplacement", "TokenDeletion",
    "gaussian_blur", "gaussian_kernel", "reduce_relevance", "pool_patches",
    "token_in_span", "tps", "tgs", "pointing_game",
    "evaluate", "Evaluation", "RandomAttribution",
    "class_score", "next_token_score", "predicted_class", "model_output", "ClassScore", "NextTokenScore",
    "METRICS", "MetricInfo", "MetricResult", "PerturbationCurve", "PerturbationCurves", "trapezoid",
]
