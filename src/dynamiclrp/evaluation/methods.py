"""Attribution methods under evaluation, each through its own library and behind one signature
``fn(inputs, target) -> relevance``:

* dynamiclrp presets (:class:`LRPMethod`);
* Captum's Saliency, Input×Gradient, Integrated Gradients, GradientSHAP and SmoothGrad (:func:`captum_methods`;
  Kokhlikyan et al. 2020);
* Zennit's ``EpsilonGammaBox`` and ``EpsilonPlusFlat`` with ``SequentialMergeBatchNorm`` (:class:`ZennitMethod`;
  Anders et al. 2021), for CNNs;
* autoLRP (:class:`AutoLRPMethod`, the ``autolrp`` package), for float inputs;
* a random baseline (:class:`RandomMethod`).

For token inputs the gradient methods work on the embedding output (``task.embed``) and their relevance is summed
over the embedding dimension, as dynamiclrp's per-token relevance is. Every method sees the same inputs and the
same targets; the task adapts the target (``task.lrp_target`` for dynamiclrp, ``task.captum_forward`` /
``task.captum_target`` for the gradient libraries).
"""
from __future__ import annotations

import torch

from ..api import LRP
from ..config import LRPConfig


def ensure_vision() -> None:
    """:func:`dynamiclrp.zoo.ensure_torchvision_importable`, tolerating a re-entrant registration: the start-up
    import hook of ``scripts/setup.sh`` may register the ops from inside the call (then they exist)."""
    from ..zoo import ensure_torchvision_importable

    try:
        ensure_torchvision_importable()
    except RuntimeError as err:
        if "TORCH_LIBRARY" not in str(err):
            raise


#: noise of SmoothGrad and GradientSHAP, relative to the inputs' range / standard deviation; the number of
#: steps / samples of Integrated Gradients, GradientSHAP and SmoothGrad is the task's ``samples``
SMOOTHGRAD_NOISE = 0.15


class LRPMethod:
    """dynamiclrp with one :class:`~dynamiclrp.LRPConfig` (float inputs: relevance shaped like them; token ids:
    per-token relevance ``[B, T]``)."""

    def __init__(self, task, config: LRPConfig):
        self.task, self.config = task, config
        self.lrp = LRP(task.model, config)

    def __call__(self, inputs, target):
        expl = self.lrp.explain(inputs, target=self.task.lrp_target(inputs, target), conservation_limit=None)
        return expl.relevance[0]


class RandomMethod:
    """Standard-normal relevance from a generator seeded by ``seed`` and the chunk being explained (so a sharded
    run draws the same numbers as a single process)."""

    chunked = True

    def __init__(self, seed: int = 0):
        self.seed = seed

    def for_chunk(self, chunk: int):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + chunk)

        def fn(inputs, target):
            return torch.randn(inputs.shape, generator=g, dtype=torch.float64)

        return fn


class CaptumMethod:
    """One Captum attribution method on the task's float inputs (or its token embeddings)."""

    def __init__(self, task, name: str):
        self.task, self.name = task, name

    def _method(self, forward):
        from captum.attr import GradientShap, InputXGradient, IntegratedGradients, NoiseTunnel, Saliency

        return {"saliency": lambda: Saliency(forward), "input_x_gradient": lambda: InputXGradient(forward),
                "integrated_gradients": lambda: IntegratedGradients(forward),
                "gradient_shap": lambda: GradientShap(forward),
                "smoothgrad": lambda: NoiseTunnel(Saliency(forward))}[self.name]()

    def __call__(self, inputs, target):
        task = self.task
        x = task.embed(inputs).detach() if task.token_inputs else inputs.detach()
        forward = task.captum_forward(inputs)
        t = task.captum_target(inputs, target)
        method = self._method(forward)
        if self.name == "integrated_gradients":
            attr = method.attribute(x, baselines=torch.zeros_like(x), target=t, n_steps=task.samples,
                                    internal_batch_size=max(1, x.shape[0]) * 4)
        elif self.name == "gradient_shap":
            base = torch.zeros_like(x[:1])
            attr = method.attribute(x, baselines=base, target=t, n_samples=task.samples,
                                    stdevs=float(SMOOTHGRAD_NOISE * x.std()))
        elif self.name == "smoothgrad":
            span = float(x.max() - x.min())
            attr = method.attribute(x, nt_type="smoothgrad", nt_samples=task.samples,
                                    nt_samples_batch_size=max(1, x.shape[0]) * 4, stdevs=SMOOTHGRAD_NOISE * span,
                                    target=t)
        else:
            attr = method.attribute(x, target=t)
        attr = attr.detach()
        return attr.sum(-1) if task.token_inputs else attr


CAPTUM = ("saliency", "input_x_gradient", "integrated_gradients", "gradient_shap", "smoothgrad")


def captum_methods(task) -> dict:
    """Captum's five methods for ``task`` (names: ``captum_<method>``)."""
    return {f"captum_{name}": CaptumMethod(task, name) for name in CAPTUM}


class ZennitMethod:
    """A Zennit composite (``"epsilon_gamma_box"`` or ``"epsilon_plus_flat"``) with ``SequentialMergeBatchNorm``,
    run by Zennit's ``Gradient`` attributor (its hooks live only inside the call)."""

    def __init__(self, task, composite: str):
        self.task, self.composite = task, composite

    def __call__(self, inputs, target):
        ensure_vision()
        from zennit.attribution import Gradient
        from zennit.canonizers import SequentialMergeBatchNorm
        from zennit.composites import EpsilonGammaBox, EpsilonPlusFlat

        canon = [SequentialMergeBatchNorm()]
        if self.composite == "epsilon_gamma_box":
            low, high = self.task.input_bounds
            comp = EpsilonGammaBox(low=low.expand_as(inputs), high=high.expand_as(inputs), canonizers=canon)
        else:
            comp = EpsilonPlusFlat(canonizers=canon)
        x = inputs.detach().clone().requires_grad_(True)
        with Gradient(model=self.task.model, composite=comp) as attributor:
            out = self.task.model(x)
            seed = torch.zeros_like(out).scatter_(1, torch.as_tensor(target).view(-1, 1), 1.0)
            _, rel = attributor(x, seed)
        return rel.detach()


class AutoLRPMethod:
    """autoLRP (``pip install autolrp``): wrap the input, run the model, call ``.lrp()`` on the target logit;
    one example at a time."""

    def __init__(self, task):
        self.task = task

    def __call__(self, inputs, target):
        import autolrp

        rel = []
        for i in range(inputs.shape[0]):
            x = autolrp.tensor(inputs[i:i + 1].detach().clone())
            out = self.task.model(x)
            out[0, int(target[i])].lrp()
            rel.append(torch.as_tensor(x.relevance).detach().reshape(inputs[i:i + 1].shape))
        return torch.cat(rel)


def peer_methods(task) -> dict:
    """Baselines and peers that apply to ``task.family``: Captum for all, Zennit and autoLRP for CNNs (autoLRP
    also for the ViT), random for all."""
    methods = captum_methods(task)
    if task.family == "cnn":
        methods["zennit_epsilon_gamma_box"] = ZennitMethod(task, "epsilon_gamma_box")
        methods["zennit_epsilon_plus_flat"] = ZennitMethod(task, "epsilon_plus_flat")
    if task.family in ("cnn", "vit"):
        methods["autolrp"] = AutoLRPMethod(task)
    methods["random"] = RandomMethod(0)
    return methods
