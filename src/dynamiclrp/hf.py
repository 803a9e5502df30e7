"""Hugging Face helpers: explain what language models are used for, in one call each.

* :func:`explain_next_token` -- the next-token logit of a causal LM (or any token, or a contrast of two tokens);
* :func:`explain_generation` -- every token of a greedy ``generate()``: one explanation per generated token;
* :func:`explain_classification` -- a sequence-classification logit;
* :func:`explain_qa` -- the start and end logits of extractive question answering;
* :func:`contrastive_mask` -- the seed mask of "logit A minus logit B".

Each returns :class:`TokenRelevance` objects holding tokens cleaned for display (word pieces, byte-level ``Ġ``,
SentencePiece ``▁``), their relevance, and what was explained. Nothing here is model-specific: the model is run and
explained by :class:`dynamiclrp.LRP` like any other.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .api import LRP, Explanation
from .config import LRPConfig
from .errors import TargetError


@dataclass
class TokenRelevance:
    """Per-token relevance of one explained output.

    Attributes
    ----------
    tokens : the input tokens, cleaned for display.
    ids : the input token ids ``[seq]``.
    relevance : relevance per input token ``[seq]`` (summed over the embedding dimension).
    label : what was explained, in words.
    score : the explained output value (the seed's sum).
    explanation : the full :class:`~dynamiclrp.Explanation`.
    """

    tokens: list
    ids: torch.Tensor
    relevance: torch.Tensor
    label: str
    score: float
    explanation: Explanation = field(repr=False)

    def html(self, **kwargs) -> str:
        """An HTML token heatmap fragment (see :func:`dynamiclrp.viz.tokens_html`)."""
        from .viz import tokens_html

        return tokens_html(self.tokens, self.relevance.tolist(), **kwargs)

    def _repr_html_(self) -> str:
        return f"<div><b>{self.label}</b></div>" + self.html()


def _ids(tokenizer, text_or_ids) -> torch.Tensor:
    if isinstance(text_or_ids, torch.Tensor):
        return text_or_ids.reshape(1, -1) if text_or_ids.dim() == 1 else text_or_ids
    if tokenizer is None:
        raise TypeError("pass token ids (a tensor) or a tokenizer to encode the text")
    return tokenizer(text_or_ids, return_tensors="pt").input_ids


def _tokens(tokenizer, ids: torch.Tensor) -> list:
    from .viz import clean_tokens

    if tokenizer is None:
        return [str(i) for i in ids.tolist()]
    return clean_tokens(tokenizer.convert_ids_to_tokens(ids.tolist()))


def token_id(tokenizer, token) -> int:
    """The id of ``token`` (an id already, or text that is one token by itself or after a leading space, as
    byte-level and SentencePiece vocabularies store word starts); :class:`TargetError` otherwise."""
    if isinstance(token, int):
        return token
    if tokenizer is None:
        raise TargetError(f"target {token!r} is text: pass a tokenizer, or give the token id")
    for text in (token, " " + token):
        ids = tokenizer.encode(text, add_special_tokens=False)
        if len(ids) == 1:
            return ids[0]
    raise TargetError(f"target {token!r} is not a single token for this tokenizer; give one token or its id")


def _describe(tokenizer, tid: int) -> str:
    return repr(tokenizer.decode([tid])) if tokenizer is not None else str(tid)


def contrastive_mask(output: torch.Tensor, a: int, b: int, position: int | None = None) -> torch.Tensor:
    """Seed mask for "logit ``a`` minus logit ``b``": ``+1`` at ``a``, ``-1`` at ``b`` (at sequence ``position`` of a
    ``[batch, seq, vocab]`` output; default the last). The seed is the output times this mask."""
    mask = torch.zeros_like(output)
    if output.dim() == 3:
        pos = output.shape[1] - 1 if position is None else position
        mask[:, pos, a], mask[:, pos, b] = 1, -1
    else:
        mask.reshape(output.shape[0], -1)[:, a] = 1
        mask.reshape(output.shape[0], -1)[:, b] = -1
    return mask


def explain_next_token(model, tokenizer, prompt, target=None, contrast=None, config: LRPConfig | None = None,
                       position: int = -1, lrp: LRP | None = None, **forward_kwargs) -> TokenRelevance:
    """Explain a causal LM's logit at ``position`` (default the last) for ``target`` (a token string or id; default
    the arg-max), or the difference of ``target`` and ``contrast`` when ``contrast`` is given.

    Parameters
    ----------
    model : a ``...ForCausalLM`` model (anything returning ``[batch, seq, vocab]`` logits).
    tokenizer : its tokenizer (or ``None`` when ``prompt`` is already token ids).
    prompt : text or token ids ``[seq]`` / ``[1, seq]``.
    config : default :meth:`LRPConfig.attnlrp`.
    """
    lrp = lrp or LRP(model, config or LRPConfig.attnlrp())
    ids = _ids(tokenizer, prompt)
    with torch.no_grad():
        logits = _logits(model(ids, **forward_kwargs))
    pos = position % ids.shape[1]
    tok = int(logits[0, pos].argmax()) if target is None else token_id(tokenizer, target)
    if contrast is None:
        expl = lrp.explain(ids, target=(pos, tok), **forward_kwargs)
        label = f"next token {_describe(tokenizer, tok)} at position {pos}"
    else:
        other = token_id(tokenizer, contrast)
        expl = lrp.explain(ids, target=contrastive_mask(logits, tok, other, pos), **forward_kwargs)
        label = f"{_describe(tokenizer, tok)} rather than {_describe(tokenizer, other)} at position {pos}"
    return TokenRelevance(_tokens(tokenizer, ids[0]), ids[0], expl.relevance[0][0].detach(), label,
                          float(expl.seed.sum()), expl)


def explain_generation(model, tokenizer, prompt, max_new_tokens: int = 8, config: LRPConfig | None = None,
                       **generate_kwargs) -> list[TokenRelevance]:
    """Greedy ``model.generate`` from ``prompt``, then one explanation per generated token: the logit of token
    ``t`` at the position before it, over the prompt and the tokens generated before ``t`` (later tokens get no
    relevance in a causal model).

    Returns one :class:`TokenRelevance` per generated token (its ``ids``/``tokens`` are the context it was
    generated from).

    One forward pass over the whole generated sequence explains every token (:meth:`LRP.explain_targets`: one
    seed per generated token, at the position before it). In a causal model the logits at position ``p - 1``
    depend on tokens ``< p`` only, so this equals explaining each prefix separately (up to float rounding);
    the relevance is cut to the prefix (later tokens get none)."""
    ids = _ids(tokenizer, prompt)
    with torch.no_grad():
        full = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, **generate_kwargs)
    lrp = LRP(model, config or LRPConfig.attnlrp())
    positions = range(ids.shape[1], full.shape[1])
    if not positions:
        return []
    expls = lrp.explain_targets(full, [(p - 1, int(full[0, p])) for p in positions])
    out = []
    for p, expl in zip(positions, expls):
        tok = int(full[0, p])
        out.append(TokenRelevance(_tokens(tokenizer, full[0, :p]), full[0, :p],
                                  expl.relevance[0][0, :p].detach(), f"next token {_describe(tokenizer, tok)} at "
                                  f"position {p - 1}", float(expl.seed.sum()), expl))
    return out


def explain_classification(model, tokenizer, text, target=None, config: LRPConfig | None = None,
                           **forward_kwargs) -> TokenRelevance:
    """Explain a sequence-classification logit (``target``: class index or label name; default the arg-max)."""
    ids = _ids(tokenizer, text)
    lrp = LRP(model, config or LRPConfig.attnlrp())
    with torch.no_grad():
        logits = _logits(model(ids, **forward_kwargs))
    if isinstance(target, str):
        labels = {v: k for k, v in (getattr(model.config, "id2label", None) or {}).items()}
        if target not in labels:
            raise TargetError(f"no label {target!r}; labels: {sorted(labels)}")
        target = int(labels[target])
    cls = int(logits[0].argmax()) if target is None else int(target)
    expl = lrp.explain(ids, target=cls, **forward_kwargs)
    names = getattr(getattr(model, "config", None), "id2label", None) or {}
    label = f"class {cls}" + (f" ({names[cls]})" if cls in names else "")
    return TokenRelevance(_tokens(tokenizer, ids[0]), ids[0], expl.relevance[0][0].detach(), label,
                          float(expl.seed.sum()), expl)


@dataclass
class QARelevance:
    """Extractive QA: the predicted answer span and the explanations of its start and end logits."""

    answer: str
    span: tuple
    start: TokenRelevance
    end: TokenRelevance


def explain_qa(model, tokenizer, question: str, context: str, config: LRPConfig | None = None) -> QARelevance:
    """Explain the start and the end logit of the predicted answer of a ``...ForQuestionAnswering`` model (outputs
    ``start_logits`` and ``end_logits``). The answer is the best span with ``start <= end``."""
    enc = tokenizer(question, context, return_tensors="pt")
    ids = enc.input_ids
    kwargs = {k: v for k, v in enc.items() if k != "input_ids"}
    config = config or LRPConfig.attnlrp()
    with torch.no_grad():
        out = model(ids, **kwargs)
    s, e = out.start_logits[0], out.end_logits[0]
    scores = s[:, None] + e[None, :]
    scores = scores.masked_fill(torch.ones_like(scores, dtype=torch.bool).tril(-1), float("-inf"))
    flat = int(scores.reshape(-1).argmax())
    i, j = divmod(flat, scores.shape[1])
    tokens = _tokens(tokenizer, ids[0])
    results = []
    for key, k in (("start_logits", i), ("end_logits", j)):
        lrp = LRP(model, config, output_selector=key)
        expl = lrp.explain(ids, target=k, **kwargs)
        results.append(TokenRelevance(tokens, ids[0], expl.relevance[0][0].detach(), f"{key[:-7]} of the answer "
                                      f"at token {k}", float(expl.seed.sum()), expl))
    answer = tokenizer.decode(ids[0, i:j + 1])
    return QARelevance(answer, (i, j), results[0], results[1])


def _logits(raw) -> torch.Tensor:
    from .api import select_output

    return select_output(raw).detach()
