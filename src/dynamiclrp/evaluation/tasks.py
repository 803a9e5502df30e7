"""Evaluation tasks: a model, its examples and targets, how to perturb and score them, and which dynamiclrp
presets apply (those measured on the test split, and the candidates one is chosen from on the held-out split).

=================  ======================================  ==============================  ====================
task               model (weights)                         examples                        metrics
=================  ======================================  ==============================  ====================
``imagenet``       EfficientNet-Lite0 (ImageNet, pip pkg)  112 views of 7 bundled photos   ABPC (blur 51 / 20)
``smollm2``        SmolLM2-135M (pip pkg)                  64-token Python-manual prose    ABPC (token deletion)
``pattern_cnn``    small CNN trained here (seeded)         pattern images (GT mask)        ABPC, pointing game
``pattern_vit``    small ViT trained here (seeded)         pattern images (GT mask)        ABPC, pointing game
``qa``             small encoder trained here (seeded)     key-value extractive QA         TPS, TGS
=================  ======================================  ==============================  ====================

Targets are the model's own predictions (the predicted class, next token or answer span), as the paper explains
predictions. Sizes come from :data:`SIZES` (``"quick"`` for CI, ``"full"`` for the published table), and can be
overridden per call.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .. import presets
from ..metrics import BlurOcclusion, Perturbation, TokenDeletion, class_score, next_token_score
from . import data, models

#: per task and mode: number of examples, held-out examples (rule selection), perturbation steps per order,
#: examples per batch, steps / samples of the sampling baselines (IG, GradientSHAP, SmoothGrad), and for trained
#: tasks training set size / epochs
SIZES = {
    "quick": {
        "imagenet": dict(n=6, heldout=2, steps=4, batch=2, samples=4),
        "smollm2": dict(n=4, heldout=2, steps=4, batch=2, length=64, samples=4),
        "pattern_cnn": dict(n=8, heldout=4, steps=4, batch=4, train=600, epochs=2, samples=4),
        "pattern_vit": dict(n=8, heldout=4, steps=4, batch=4, train=600, epochs=2, samples=4),
        "qa": dict(n=16, heldout=8, batch=8, train=600, epochs=2, samples=4),
    },
    "full": {
        "imagenet": dict(n=112, heldout=16, steps=8, batch=4, samples=8),
        "smollm2": dict(n=60, heldout=8, steps=8, batch=4, length=64, samples=8),
        "pattern_cnn": dict(n=160, heldout=32, steps=16, batch=16, train=3000, epochs=6, samples=16),
        "pattern_vit": dict(n=160, heldout=32, steps=16, batch=16, train=3000, epochs=12, samples=16),
        "qa": dict(n=300, heldout=60, batch=30, train=4000, epochs=20, samples=16),
    },
}
#: targets of the ground-truth tasks (issue 9)
ACCURACY_TARGETS = {"pattern_cnn": 0.9, "pattern_vit": 0.9, "qa": 0.9}


@dataclass(frozen=True, eq=False)
class Task:
    """One evaluation task (see the module doc).

    Attributes
    ----------
    name, family: the task's name; ``"cnn"``, ``"vit"``, ``"lm"`` or ``"qa"`` (which presets and peers apply).
    model: the model, in eval mode; never modified.
    inputs, targets: all examples ``[N, ...]`` and their targets (``[N]`` classes / tokens, ``[N, 2]`` spans).
    heldout: the first ``heldout`` examples choose the rule settings; the others are reported.
    batch: examples per chunk (the unit of work, also of sharding).
    perturbation, score: the perturbation protocol and score function, or ``None`` (no perturbation metric).
    presets: dynamiclrp configurations measured on the test split, by name.
    candidates: configurations the held-out split chooses from (``selection_metric``, higher is better).
    extras: per-example tensors ``[N, ...]`` for the other metrics (``masks``; ``spans``, ``gold``, ``question``).
    info: facts for the report (accuracy, data source).
    """

    name: str
    family: str
    model: torch.nn.Module
    inputs: torch.Tensor
    targets: torch.Tensor
    heldout: int
    batch: int
    perturbation: Perturbation | None
    score: Callable | None
    presets: dict
    candidates: dict
    selection_metric: str = "abpc"
    extras: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    input_bounds: Any = None
    embed: Callable | None = None
    samples: int = 8

    @property
    def token_inputs(self) -> bool:
        return not self.inputs.is_floating_point()

    @property
    def n(self) -> int:
        return int(self.inputs.shape[0])

    def lrp_target(self, inputs, target):
        """The target in :meth:`dynamiclrp.LRP.explain`'s terms."""
        if self.family == "lm":
            return [(-1, int(t)) for t in target]
        if self.family == "qa":
            mask = torch.zeros(*inputs.shape, 2)
            rows = torch.arange(inputs.shape[0])
            mask[rows, target[:, 0], 0] = 1.0
            mask[rows, target[:, 1], 1] = 1.0
            return mask
        return target

    def captum_forward(self, inputs) -> Callable:
        """A forward of the (embedded) inputs returning ``[B, K]`` from which :meth:`captum_target` picks."""
        model = self.model
        if self.family == "lm":
            return lambda emb: model(inputs_embeds=emb, use_cache=False).logits[:, -1]
        if self.family == "qa":
            def span_scores(emb):  # start logit + end logit of every (start, end) pair
                out = model(inputs_embeds=emb)
                return (out[..., 0].unsqueeze(2) + out[..., 1].unsqueeze(1)).flatten(1)
            return span_scores
        return model

    def captum_target(self, inputs, target):
        if self.family == "qa":
            return target[:, 0] * inputs.shape[1] + target[:, 1]
        return target


def _sizes(name: str, mode: str, overrides: dict) -> dict:
    if mode not in SIZES:
        raise ValueError(f"mode must be one of {sorted(SIZES)}, got {mode!r}")
    s = dict(SIZES[mode][name])
    unknown = set(overrides) - set(s)
    if unknown:
        raise ValueError(f"unknown size overrides for task {name!r}: {sorted(unknown)}; valid: {sorted(s)}")
    s.update(overrides)
    if not 0 < s["heldout"] < s["n"]:
        raise ValueError(f"task {name!r}: need 0 < heldout < n, got heldout={s['heldout']}, n={s['n']}")
    return s


def vision_presets(low, high) -> dict:
    """The four Zennit-style composites of :mod:`dynamiclrp.presets` at their defaults."""
    return {"epsilon_plus": presets.epsilon_plus(), "epsilon_gamma_box": presets.epsilon_gamma_box(low, high),
            "epsilon_plus_flat": presets.epsilon_plus_flat(), "epsilon_alpha2_beta1": presets.epsilon_alpha2_beta1()}


def vision_candidates(low, high) -> dict:
    """The presets and the gamma of ``epsilon_gamma_box`` on a small grid."""
    c = vision_presets(low, high)
    for gamma in (0.1, 0.5, 1.0):
        c[f"epsilon_gamma_box(gamma={gamma})"] = presets.epsilon_gamma_box(low, high, gamma=gamma)
    return c


def transformer_presets() -> dict:
    return {"attnlrp": presets.attnlrp(), "cp_lrp": presets.cp_lrp()}


def transformer_candidates() -> dict:
    """AttnLRP and CP-LRP, and AttnLRP with the gamma rule on linear layers (AttnLRP paper's ViT setting)."""
    c = transformer_presets()
    for gamma in (0.25,):
        c[f"attnlrp(gamma_linear={gamma})"] = dataclasses.replace(presets.attnlrp(), gamma_linear=gamma)
    return c


def _predicted(model, inputs, batch: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(inputs[i:i + batch]).argmax(-1) for i in range(0, inputs.shape[0], batch)])


def imagenet(mode: str = "full", **overrides) -> Task:
    """EfficientNet-Lite0 on views of the bundled photographs; blur occlusion (kernel 51, sigma 20)."""
    from .. import pretrained

    s = _sizes("imagenet", mode, overrides)
    model = pretrained.efficientnet_lite0()
    x, names = data.photo_views(s["n"])
    low, high = pretrained.input_bounds()
    return Task("imagenet", "cnn", model, x, _predicted(model, x, 8), s["heldout"], s["batch"],
                Perturbation(occlusion=BlurOcclusion(51, 20.0), steps=s["steps"]), class_score(model),
                vision_presets(low, high), vision_candidates(low, high), input_bounds=(low, high), samples=s["samples"],
                info={"views": names[:4] + ["..."], "source": "skimage astronaut/chelsea/coffee/rocket, sklearn "
                      "china/flower, matplotlib grace_hopper; 16 crops/flips each"})


def smollm2(mode: str = "full", **overrides) -> Task:
    """SmolLM2-135M on prose passages of the Python language reference (``pydoc_data``); its predicted next
    token is explained; tokens are deleted."""
    from .. import pretrained

    s = _sizes("smollm2", mode, overrides)
    model, tok = pretrained.smollm2()
    passages = data.prose_passages(tok, s["n"], s["length"])
    ids = torch.tensor([p for _, p in passages])
    with torch.no_grad():
        target = torch.cat([model(ids[i:i + 4], use_cache=False).logits[:, -1].argmax(-1)
                            for i in range(0, len(ids), 4)])
    emb = model.get_input_embeddings()
    keep = torch.ones(ids.shape, dtype=torch.bool)
    keep[:, -1] = False  # the position that predicts stays: deletion never empties the sequence
    return Task("smollm2", "lm", model, ids, target, s["heldout"], s["batch"],
                Perturbation(occlusion=TokenDeletion(), steps=s["steps"], channel_dim=None),
                next_token_score(model, use_cache=False), transformer_presets(), transformer_candidates(),
                embed=lambda ids: emb(ids), samples=s["samples"], extras={"feature_mask": keep},
                info={"source": "pydoc_data.topics (CPython's language reference prose)",
                      "topics": sorted({t for t, _ in passages})[:6] + ["..."], "tokens": s["length"]})


def pattern(kind: str, mode: str = "full", **overrides) -> Task:
    """The ground-truth image task with a small CNN (``kind="cnn"``) or ViT (``"vit"``) trained here."""
    name = f"pattern_{kind}"
    s = _sizes(name, mode, overrides)
    xtr, ytr, _ = data.pattern_images(s["train"], seed=0)
    model = models.train_pattern_model(kind, xtr, ytr, s["epochs"], seed=0)
    x, y, masks = data.pattern_images(s["n"], seed=1)
    pred = _predicted(model, x, 256)
    low = x.amin((0, 2, 3)).view(1, 3, 1, 1)
    high = x.amax((0, 2, 3)).view(1, 3, 1, 1)
    if kind == "cnn":
        pres, cands = vision_presets(low, high), vision_candidates(low, high)
    else:
        pres, cands = transformer_presets(), transformer_candidates()
    return Task(name, kind, model, x, pred, s["heldout"], s["batch"],
                Perturbation(occlusion=BlurOcclusion(51, 20.0), steps=s["steps"]), class_score(model), pres, cands,
                extras={"masks": masks}, input_bounds=(low, high), samples=s["samples"],
                info={"accuracy": float((pred == y).double().mean()), "train_examples": s["train"],
                      "epochs": s["epochs"]})


def qa(mode: str = "full", **overrides) -> Task:
    """The synthetic extractive-QA task with a small encoder trained here; examples whose predicted span is
    invalid (start > end) are dropped, as the paper does."""
    s = _sizes("qa", mode, overrides)
    train = data.qa_examples(s["train"], seed=0)
    model = models.train_qa_model(train["ids"], train["spans"], data.QA_VOCAB, s["epochs"], seed=0)
    ev = data.qa_examples(s["n"], seed=1)
    with torch.no_grad():
        out = model(ev["ids"])
    pred = torch.stack([out[..., 0].argmax(-1), out[..., 1].argmax(-1)], 1)
    valid = pred[:, 0] <= pred[:, 1]
    exact = float((pred == ev["spans"]).all(1).double().mean())
    keep = valid.nonzero().squeeze(1)
    heldout = min(s["heldout"], int(valid[:s["heldout"]].sum()))
    return Task("qa", "qa", model, ev["ids"][keep], pred[keep], heldout, s["batch"], None, None,
                transformer_presets(), transformer_candidates(), selection_metric="tps",
                extras={"gold": ev["spans"][keep], "question": ev["question"][keep]},
                embed=lambda ids: model.tok(ids), samples=s["samples"],
                info={"accuracy": exact, "dropped_invalid_spans": int((~valid).sum()), "train_examples": s["train"],
                      "epochs": s["epochs"]})


TASKS = {"imagenet": imagenet, "smollm2": smollm2, "pattern_cnn": lambda mode="full", **kw: pattern("cnn", mode, **kw),
         "pattern_vit": lambda mode="full", **kw: pattern("vit", mode, **kw), "qa": qa}


def build(name: str, mode: str = "full", **overrides) -> Task:
    """The task ``name`` (one of :data:`TASKS`) at the sizes of ``mode``."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {sorted(TASKS)}")
    return TASKS[name](mode, **overrides)
