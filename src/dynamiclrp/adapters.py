"""dynamiclrp in the shape other libraries expect.

* :class:`CaptumLRP` -- a Captum-style attribution object: ``CaptumLRP(model, config).attribute(inputs,
  target=..., additional_forward_args=...)`` returns tensors shaped like the inputs, usable with
  ``captum.attr.visualization`` and Captum's metrics (``captum.metrics.infidelity``...);
* :func:`quantus_explain_func` -- an ``explain_func`` for Quantus metrics (numpy in, numpy out).

Neither imports Captum or Quantus: they only follow their calling conventions.
"""
from __future__ import annotations

import numpy as np
import torch

from .api import LRP
from .config import LRPConfig
from .errors import TargetError


class CaptumLRP:
    """Captum's attribution interface over :class:`dynamiclrp.LRP`.

    Parameters
    ----------
    forward_func : callable
        The model (any callable; Captum's name for it).
    config : LRPConfig, optional
        Rules (default ``LRPConfig()``).
    output_selector : optional
        See :class:`dynamiclrp.LRP`.

    Notes
    -----
    ``target`` follows Captum: ``None`` (the output must hold one value per sample; otherwise the arg-max),
    an int, a tuple indexing the dimensions after the batch (``(position, token)`` of a language model), or a
    list/tensor of those, one per sample.
    """

    multiplies_by_inputs = True

    def __init__(self, forward_func, config: LRPConfig | None = None, output_selector=None):
        self.forward_func = forward_func
        self.config = config or LRPConfig()
        self.output_selector = output_selector

    def has_convergence_delta(self) -> bool:
        """LRP returns no convergence delta (Captum's interface asks)."""
        return False

    def attribute(self, inputs, target=None, additional_forward_args=None):
        """Relevance of ``inputs`` (a tensor or a tuple of tensors; returned the same way).

        ``additional_forward_args`` are passed after the inputs, as Captum does, and receive no relevance."""
        extra = additional_forward_args
        if extra is None:
            extra = ()
        elif not isinstance(extra, tuple):
            extra = (extra,)
        model = self.forward_func if not extra else _WithExtra(self.forward_func, extra)
        lrp = LRP(model, self.config, output_selector=self.output_selector)
        is_tuple = isinstance(inputs, tuple)
        expl = lrp.explain(inputs, target=_captum_target(target))
        return tuple(expl.relevance) if is_tuple else expl.relevance[0]


class _WithExtra:
    """``model(*inputs, *extra)``: the inputs are explained, the extra arguments are not."""

    def __init__(self, model, extra: tuple):
        self.model = model
        self.extra = extra

    def __call__(self, *inputs, **kwargs):
        return self.model(*inputs, *self.extra, **kwargs)


def _captum_target(target):
    """Captum's target forms as :func:`dynamiclrp.seed_relevance` targets."""
    if target is None or isinstance(target, int):
        return target
    if isinstance(target, tuple):
        if not all(isinstance(t, int) for t in target):
            raise TargetError(f"a tuple target indexes the output's dimensions after the batch: ints, got {target!r}")
        return target
    if isinstance(target, torch.Tensor):
        return target.reshape(-1).tolist() if target.dim() <= 1 else [tuple(t) for t in target.tolist()]
    return [tuple(t) if isinstance(t, (list, tuple)) else int(t) for t in target]


def quantus_explain_func(model, inputs, targets, config: LRPConfig | None = None, reduce_channels: bool = False,
                         device=None, **_kwargs) -> np.ndarray:
    """An ``explain_func`` for Quantus: ``metric(model=model, x_batch=x, y_batch=y, explain_func=quantus_explain_func,
    explain_func_kwargs={"config": LRPConfig(...)})``.

    Parameters
    ----------
    model : torch.nn.Module
    inputs : numpy array or tensor, the batch Quantus perturbs.
    targets : numpy array, tensor or int, one class per sample.
    config : LRPConfig, optional
    reduce_channels : bool
        Sum relevance over the channel axis (keeping it, size 1), as some Quantus metrics expect.

    Returns
    -------
    numpy.ndarray of float32 shaped like ``inputs`` (channel axis of size 1 when ``reduce_channels``).
    """
    param = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    dev = device if device is not None else (param.device if param is not None else "cpu")
    x = torch.as_tensor(np.asarray(inputs) if not isinstance(inputs, torch.Tensor) else inputs).to(dev, dtype)
    if isinstance(targets, (int, np.integer)):
        targets = [int(targets)] * x.shape[0]
    t = torch.as_tensor(np.asarray(targets) if not isinstance(targets, torch.Tensor) else targets).reshape(-1)
    rel = LRP(model, config or LRPConfig()).attribute(x, target=[int(v) for v in t.tolist()])
    if reduce_channels:
        rel = rel.sum(1, keepdim=True)
    return rel.detach().float().cpu().numpy()
