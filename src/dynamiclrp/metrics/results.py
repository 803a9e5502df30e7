"""Result types of the metrics: what a metric measures (:class:`MetricInfo`), one metric's per-example scores
(:class:`MetricResult`), and perturbation curves (:class:`PerturbationCurve`, :class:`PerturbationCurves`).

All results are frozen dataclasses holding tensors (one entry per example), so results of several batches can be
joined with :meth:`PerturbationCurves.cat` and summarised once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

import torch


@dataclass(frozen=True)
class MetricInfo:
    """What a metric measures (Quantus-style metadata).

    Attributes
    ----------
    name: short identifier (``"abpc"``, ``"tps"``...).
    higher_is_better: whether a larger value means a better (more faithful) attribution.
    description: one line saying what is measured.
    """

    name: str
    higher_is_better: bool
    description: str


#: Every metric of :mod:`dynamiclrp.metrics`, by name.
METRICS: Mapping[str, MetricInfo] = MappingProxyType({info.name: info for info in (
    MetricInfo("auc_morf", False, "area under the most-relevant-first perturbation curve (x in [0, 1]); "
               "a faithful attribution makes the score fall fast"),
    MetricInfo("auc_lerf", True, "area under the least-relevant-first perturbation curve (x in [0, 1]); "
               "a faithful attribution keeps the score up"),
    MetricInfo("abpc", True, "area between the perturbation curves, AUC(LeRF) - AUC(MoRF)"),
    MetricInfo("comprehensiveness", True, "AUC(unperturbed) - AUC(MoRF): how much the score drops when the most "
               "relevant features are removed"),
    MetricInfo("sufficiency", False, "AUC(unperturbed) - AUC(LeRF): how much the score drops when the least "
               "relevant features are removed"),
    MetricInfo("tps", True, "top-k attributed tokens (question masked) inside the model's predicted answer span"),
    MetricInfo("tgs", True, "top-k attributed tokens (question masked) inside the gold answer span"),
    MetricInfo("pointing_game", True, "the maximum of the relevance map lies inside the ground-truth mask"),
)})


@dataclass(frozen=True)
class MetricResult:
    """One metric evaluated on a batch (or a data set).

    Attributes
    ----------
    info: the :class:`MetricInfo` (name, direction, description).
    scores: per-example values, shape ``[n]``.
    curves: the curves the scores were computed from (``{"morf": ..., "lerf": ...}``), empty for metrics that
        have none.
    """

    info: MetricInfo
    scores: torch.Tensor
    curves: Mapping[str, PerturbationCurve] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def higher_is_better(self) -> bool:
        return self.info.higher_is_better

    @property
    def description(self) -> str:
        return self.info.description

    @property
    def n(self) -> int:
        return int(self.scores.numel())

    @property
    def value(self) -> float:
        """Mean over examples."""
        return float(self.scores.double().mean()) if self.n else math.nan

    @property
    def stderr(self) -> float:
        """Standard error of the mean, ``std / sqrt(n)`` (``ddof=1``); NaN for fewer than two examples."""
        if self.n < 2:
            return math.nan
        return float(self.scores.double().std() / math.sqrt(self.n))

    def __repr__(self) -> str:
        arrow = "higher" if self.higher_is_better else "lower"
        return f"MetricResult({self.name}={self.value:.4g} ± {self.stderr:.2g}, n={self.n}, {arrow} is better)"


def trapezoid(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r"""Area under ``y(x)`` per row by the trapezoidal rule, :math:`\sum_s (x_{s+1}-x_s)(y_{s+1}+y_s)/2`."""
    return ((x[..., 1:] - x[..., :-1]) * (y[..., 1:] + y[..., :-1])).sum(-1) / 2


@dataclass(frozen=True)
class PerturbationCurve:
    """The model's score as features are occluded in one order.

    Attributes
    ----------
    order: ``"morf"`` (most relevant first) or ``"lerf"`` (least relevant first).
    x: occluded fraction of the ranked features (of the patches, with patch pooling), ``[n, steps + 1]``, from 0
        (unperturbed) to 1.
    y: the score at each step, ``[n, steps + 1]``.
    """

    order: str
    x: torch.Tensor
    y: torch.Tensor

    def auc(self) -> torch.Tensor:
        """Normalised area under the curve per example (x spans [0, 1], so it is in the units of the score)."""
        return trapezoid(self.x.double(), self.y.double())

    def mean(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` averaged over examples, for plotting."""
        return self.x.double().mean(0), self.y.double().mean(0)


def _pad_steps(t: torch.Tensor, steps: int) -> torch.Tensor:
    """Repeat the last point: a flat tail at x = 1 adds no area, so AUCs are unchanged."""
    if t.shape[1] == steps:
        return t
    return torch.cat([t, t[:, -1:].expand(-1, steps - t.shape[1])], 1)


@dataclass(frozen=True)
class PerturbationCurves:
    """MoRF and LeRF curves of the same examples; the faithfulness metrics derive from them.

    Both curves start at the unperturbed score, so the area under the unperturbed "baseline" curve
    (x in [0, 1]) is that score itself.
    """

    morf: PerturbationCurve
    lerf: PerturbationCurve

    @property
    def unperturbed(self) -> torch.Tensor:
        """The score of the unperturbed input, ``[n]``."""
        return self.morf.y[:, 0]

    @property
    def n(self) -> int:
        return int(self.morf.y.shape[0])

    def _result(self, name: str, scores: torch.Tensor) -> MetricResult:
        return MetricResult(METRICS[name], scores, MappingProxyType({"morf": self.morf, "lerf": self.lerf}))

    def abpc(self) -> MetricResult:
        r"""Area between the perturbation curves, :math:`\mathrm{AUC}(\mathrm{LeRF}) - \mathrm{AUC}(\mathrm{MoRF})`
        (Blücher et al. 2024; the DynamicLRP and AttnLRP papers' faithfulness score). Higher is better."""
        return self._result("abpc", self.lerf.auc() - self.morf.auc())

    def comprehensiveness(self) -> MetricResult:
        r""":math:`\mathrm{AUC}(\text{unperturbed}) - \mathrm{AUC}(\mathrm{MoRF})` (DeYoung et al. 2020, in the
        area form the DynamicLRP paper uses). Higher is better."""
        return self._result("comprehensiveness", self.unperturbed.double() - self.morf.auc())

    def sufficiency(self) -> MetricResult:
        r""":math:`\mathrm{AUC}(\text{unperturbed}) - \mathrm{AUC}(\mathrm{LeRF})`. Lower is better.
        Note ``abpc = comprehensiveness - sufficiency``."""
        return self._result("sufficiency", self.unperturbed.double() - self.lerf.auc())

    def auc_morf(self) -> MetricResult:
        return self._result("auc_morf", self.morf.auc())

    def auc_lerf(self) -> MetricResult:
        return self._result("auc_lerf", self.lerf.auc())

    def metrics(self) -> dict[str, MetricResult]:
        """All perturbation metrics: ``abpc``, ``comprehensiveness``, ``sufficiency``, ``auc_morf``, ``auc_lerf``."""
        return {"abpc": self.abpc(), "comprehensiveness": self.comprehensiveness(),
                "sufficiency": self.sufficiency(), "auc_morf": self.auc_morf(), "auc_lerf": self.auc_lerf()}

    def plot_data(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Mean curves in a plot-friendly form: ``{"morf": (x, y), "lerf": (x, y), "lerf-morf": (x, y)}``
        (the last is the LeRF - MoRF gap per step, the DynamicLRP paper's Fig. A.2)."""
        xm, ym = self.morf.mean()
        xl, yl = self.lerf.mean()
        return {"morf": (xm, ym), "lerf": (xl, yl), "lerf-morf": (xm, yl - ym)}

    @staticmethod
    def cat(parts: list[PerturbationCurves]) -> PerturbationCurves:
        """Join the curves of several batches (different step counts are padded with their last point, which
        changes no area)."""
        if not parts:
            raise ValueError("PerturbationCurves.cat needs at least one part")
        steps = max(p.morf.x.shape[1] for p in parts)

        def join(order: str) -> PerturbationCurve:
            curves = [getattr(p, order) for p in parts]
            return PerturbationCurve(order, torch.cat([_pad_steps(c.x.cpu(), steps) for c in curves]),
                                     torch.cat([_pad_steps(c.y.cpu(), steps) for c in curves]))

        return PerturbationCurves(join("morf"), join("lerf"))
