"""Score functions: from a model and targets to one score per (perturbed) input row.

A score function is called as ``score(x, target)`` with ``x`` a batch of perturbed inputs and ``target`` the
per-row targets; it returns ``[rows]``. The helpers here run the model without gradients and pick the target's
logit, probability or log-probability. Per-example keyword arguments (``attention_mask``...) are tiled when the
metric stacks several perturbation steps into one call.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

KINDS = ("logit", "probability", "log_probability")


def model_output(out: Any, selector: Callable | str | int | None = None) -> torch.Tensor:
    """The tensor to score from what a model returned: the tensor itself, ``.logits`` of a Hugging Face
    ``ModelOutput`` or dict, or the first tensor of a tuple; ``selector`` (a callable or a key) overrides."""
    if selector is not None:
        return selector(out) if callable(selector) else out[selector]
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, dict):
        if "logits" in out:
            return out["logits"]
        raise TypeError(f"the model returned a dict with keys {list(out)}; pass output_selector=KEY")
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"cannot tell which output to score in a {type(out).__name__}; pass output_selector")


def _normalise(logits: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "logit":
        return logits
    if kind == "probability":
        return logits.softmax(-1)
    return logits.log_softmax(-1)


def _tiled_kwargs(kwargs: dict, rows: int) -> dict:
    out = {}
    for k, v in kwargs.items():
        if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] != rows:
            if rows % v.shape[0]:
                raise ValueError(f"forward argument {k!r} has {v.shape[0]} rows, which does not divide the "
                                 f"{rows} rows being scored")
            v = v.repeat(rows // v.shape[0], *([1] * (v.dim() - 1)))
        out[k] = v
    return out


def _check_kind(kind: str):
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


@dataclass(frozen=True, eq=False)
class ClassScore:
    """Score of a class: ``model(x)[i, target[i]]`` as a logit, probability or log-probability.

    Build it with :func:`class_score`."""

    model: Callable
    kind: str = "logit"
    output_selector: Any = None
    forward_kwargs: dict = field(default_factory=dict)

    def __post_init__(self):
        _check_kind(self.kind)

    def __call__(self, x: torch.Tensor, target) -> torch.Tensor:
        with torch.no_grad():
            out = model_output(self.model(x, **_tiled_kwargs(self.forward_kwargs, x.shape[0])), self.output_selector)
        if out.dim() != 2:
            raise ValueError(f"class_score needs outputs [batch, classes], got {tuple(out.shape)}; for language "
                             "models use next_token_score")
        return _pick(_normalise(out, self.kind), target)


@dataclass(frozen=True, eq=False)
class NextTokenScore:
    """Score of a token at one position of a language model's ``[batch, seq, vocab]`` logits (default: the last
    position, i.e. the next-token prediction). Build it with :func:`next_token_score`."""

    model: Callable
    position: int = -1
    kind: str = "logit"
    output_selector: Any = None
    forward_kwargs: dict = field(default_factory=dict)

    def __post_init__(self):
        _check_kind(self.kind)

    def __call__(self, x: torch.Tensor, target) -> torch.Tensor:
        with torch.no_grad():
            out = model_output(self.model(x, **_tiled_kwargs(self.forward_kwargs, x.shape[0])), self.output_selector)
        if out.dim() != 3:
            raise ValueError(f"next_token_score needs logits [batch, seq, vocab], got {tuple(out.shape)}; for "
                             "classifiers use class_score")
        return _pick(_normalise(out[:, self.position], self.kind), target)


def _pick(scores: torch.Tensor, target) -> torch.Tensor:
    """``scores[i, target[i]]`` for ``[batch, classes]`` scores; one target serves every row."""
    t = torch.as_tensor(target, device=scores.device).long().reshape(-1)
    if t.numel() == 1:
        t = t.expand(scores.shape[0])
    if t.numel() != scores.shape[0]:
        raise ValueError(f"{t.numel()} targets for {scores.shape[0]} output rows")
    return scores.gather(1, t.unsqueeze(1)).squeeze(1)


def class_score(model: Callable, kind: str = "logit", output_selector=None, **forward_kwargs) -> ClassScore:
    """A score function ``(x, target) -> [rows]`` giving the target class's logit (``kind="logit"``),
    softmax probability (``"probability"``) or log-probability (``"log_probability"``).

    >>> score = class_score(model, "probability")
    >>> abpc(score, images, relevance, Perturbation.image(), target=labels)
    """
    return ClassScore(model, kind, output_selector, dict(forward_kwargs))


def next_token_score(model: Callable, kind: str = "logit", position: int = -1, output_selector=None,
                     **forward_kwargs) -> NextTokenScore:
    """A score function ``(ids, token) -> [rows]`` giving a language model's score for ``token`` at ``position``
    (default: the last, i.e. the next-token prediction; it stays the last after token deletion)."""
    return NextTokenScore(model, position, kind, output_selector, dict(forward_kwargs))


def predicted_class(model: Callable, inputs: torch.Tensor, output_selector=None, **forward_kwargs) -> torch.Tensor:
    """The model's arg-max class per example, ``[B]`` (for ``[B, seq, vocab]`` logits: the predicted next token at
    the last position), as targets for explaining the prediction."""
    with torch.no_grad():
        out = model_output(model(inputs, **forward_kwargs), output_selector)
    if out.dim() == 3:
        out = out[:, -1]
    return out.reshape(out.shape[0], -1).argmax(-1)
