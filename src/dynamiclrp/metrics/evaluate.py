"""Evaluate several attribution methods over a data set with the same inputs, targets and occlusion.

>>> methods = {"dynamiclrp": lambda x, t: lrp.attribute(x, target=t), "random": RandomAttribution(0)}
>>> ev = evaluate(class_score(model), loader, methods, Perturbation.image())
>>> ev.summary()["dynamiclrp"]["abpc"], ev.plot_data("morf")

A progress bar is shown when ``tqdm`` is installed (silently none otherwise).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Iterable, Mapping

import torch

from .perturbation import Perturbation, ScoreFn, attribute, perturbation_curves
from .results import MetricResult, PerturbationCurves


class RandomAttribution:
    """A random baseline: standard-normal relevance shaped like the inputs, from its own seeded generator (no
    global random state is touched), so a run is reproducible."""

    def __init__(self, seed: int = 0):
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, inputs: torch.Tensor, target=None) -> torch.Tensor:
        r = torch.randn(inputs.shape, generator=self.generator, dtype=torch.float64)
        return r.to(inputs.device)


def _progress(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # optional dependency: no bar without it
        return iterable
    total = len(iterable) if hasattr(iterable, "__len__") else None
    return tqdm(iterable, total=total, desc=desc, leave=False)


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Evaluation:
    """Curves of every method over the data set, and the time each method spent attributing.

    Attributes
    ----------
    curves: method name -> :class:`PerturbationCurves` of all examples.
    seconds: method name -> total seconds spent in the attribution callable.
    """

    curves: Mapping[str, PerturbationCurves]
    seconds: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))

    def metrics(self, method: str) -> dict[str, MetricResult]:
        """All perturbation metrics of one method (see :meth:`PerturbationCurves.metrics`)."""
        return self.curves[method].metrics()

    def summary(self) -> dict[str, dict[str, float]]:
        """``{method: {metric: mean, metric + "_se": standard error, "n": examples, "seconds_per_example": ...}}``."""
        out = {}
        for name, c in self.curves.items():
            row: dict[str, float] = {}
            for metric, res in c.metrics().items():
                row[metric] = res.value
                row[metric + "_se"] = res.stderr
            row["n"] = c.n
            row["seconds_per_example"] = self.seconds.get(name, math.nan) / max(c.n, 1)
            out[name] = row
        return out

    def plot_data(self, order: str = "morf") -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Mean curves per method as ``{method: (x, y)}`` -- the form the curve plot takes. ``order``: ``"morf"``,
        ``"lerf"`` or ``"lerf-morf"`` (the gap per step)."""
        if order not in ("morf", "lerf", "lerf-morf"):
            raise ValueError(f"order must be 'morf', 'lerf' or 'lerf-morf', got {order!r}")
        return {name: c.plot_data()[order] for name, c in self.curves.items()}

    def to_dict(self) -> dict:
        """JSON-ready: the summary and the mean curves (lists of floats)."""
        curves = {name: {order: {"x": xy[0].tolist(), "y": xy[1].tolist()} for order, xy in c.plot_data().items()}
                  for name, c in self.curves.items()}
        return {"summary": self.summary(), "curves": curves}


def evaluate(score_fn: ScoreFn, batches: Iterable, methods: Mapping[str, Callable],
             perturbation: Perturbation | None = None, *, max_batch: int | None = None,
             progress: bool = True) -> Evaluation:
    """Perturbation curves of every method on every batch, with the same inputs, targets and occlusion.

    Parameters
    ----------
    score_fn: ``score_fn(x, target) -> [rows]`` (see :func:`class_score`, :func:`next_token_score`).
    batches: an iterable (e.g. a ``DataLoader``) of ``(inputs, target)`` or ``(inputs, target, feature_mask)``.
    methods: name -> attribution callable ``fn(inputs, target)`` returning relevance (any library: dynamiclrp,
        Captum's ``attribute``, Zennit, :class:`RandomAttribution`); each is timed.
    perturbation: the :class:`Perturbation` (shared by all methods).
    max_batch, progress: rows per score call (see :func:`perturbation_curves`); a tqdm bar if tqdm is installed.
    """
    if not methods:
        raise ValueError("evaluate needs at least one attribution method")
    parts: dict[str, list[PerturbationCurves]] = {name: [] for name in methods}
    seconds = dict.fromkeys(methods, 0.0)
    for item in _progress(batches, progress, "faithfulness"):
        if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
            raise ValueError("each batch must be (inputs, target) or (inputs, target, feature_mask)")
        inputs, target = item[0], item[1]
        fmask = item[2] if len(item) == 3 else None
        for name, method in methods.items():
            if not callable(method):
                raise TypeError(f"method {name!r} must be an attribution callable fn(inputs, target)")
            _sync(inputs.device)
            t0 = time.perf_counter()
            rel = attribute(method, inputs, target)
            _sync(inputs.device)
            seconds[name] += time.perf_counter() - t0
            parts[name].append(perturbation_curves(score_fn, inputs, rel, perturbation, target, feature_mask=fmask,
                                                   max_batch=max_batch))
    if not any(parts.values()):
        raise ValueError("batches was empty")
    curves = {name: PerturbationCurves.cat(p) for name, p in parts.items()}
    return Evaluation(MappingProxyType(curves), MappingProxyType(seconds))
