"""HTML for notebooks: :func:`explanation_html` renders an :class:`~dynamiclrp.Explanation` (used by its
``_repr_html_``). Token inputs show a token heatmap, images a small PNG heatmap embedded as base64; nothing
needs matplotlib or any file."""
from __future__ import annotations

import html

import numpy as np

from .image import heatmap, to_numpy, upscale
from .png import png_data_uri
from .text import tokens_html


def _target(seed, b: int) -> str:
    s = to_numpy(seed)
    s = s[b] if s.ndim > 1 else s
    idx = np.argwhere(s != 0)
    if idx.size == 0:
        return "none (zero seed)"
    shown = ", ".join(str(tuple(int(i) for i in row)) if len(row) > 1 else str(int(row[0])) for row in idx[:4])
    return shown + (f", … ({len(idx)} entries)" if len(idx) > 4 else "")


def _sample_html(rel, emb, b: int, tokens, cmap, percentile) -> str:
    r = to_numpy(rel[b])
    if emb is not None or tokens is not None or r.ndim == 2:
        if emb is None and r.ndim == 2:  # float embeddings [seq, hidden]: per-position sums
            r = r.sum(-1)
        if r.ndim != 1:
            return f"<div>relevance of shape {tuple(r.shape)}: no token view</div>"
        if tokens is None:
            toks = [f"[{k}]" for k in range(r.shape[0])]
            return tokens_html(toks, r, cmap=cmap or "bwr", percentile=percentile, clean=False)
        return tokens_html(tokens[b] if tokens and isinstance(tokens[0], (list, tuple)) else tokens, r,
                           cmap=cmap or "bwr", percentile=percentile)
    if r.ndim == 3 and min(r.shape[0], r.shape[-1]) <= 4:
        rgb = upscale(heatmap(r, cmap=cmap or "seismic", percentile=percentile))
        h, w = rgb.shape[:2]
        return (f'<img src="{png_data_uri(rgb)}" width="{w}" height="{h}" style="image-rendering: pixelated" '
                f'alt="relevance heatmap {tuple(r.shape)}">')
    if r.ndim == 1:
        return tokens_html([f"[{k}]" for k in range(r.shape[0])], r, cmap=cmap or "bwr", percentile=percentile,
                           clean=False)
    return f"<div>relevance of shape {tuple(r.shape)}, sum {r.sum():+.6g}</div>"


def explanation_html(expl, tokens=None, index=None, cmap=None, percentile: float | None = None,
                     max_samples: int = 8) -> str:
    """An HTML view of an :class:`~dynamiclrp.Explanation`: per sample, its target, the total relevance, and
    the relevance of each input drawn as a token heatmap (token ids; float embeddings ``[seq, hidden]`` summed
    per position; vectors as numbered cells) or a heatmap image (``(C, H, W)``, C <= 4, PNG in base64).

    Parameters
    ----------
    expl : dynamiclrp.Explanation
    tokens : sequence of str, or one such sequence per sample, optional
        Token strings to label token relevance (cleaned by :func:`.text.clean_tokens`); default: positions.
    index : int, optional
        Show only this sample; default: the first ``max_samples``.
    cmap : str, optional
        Colour map (default ``bwr`` for tokens, ``seismic`` for images).
    percentile : float, optional
        Robust maximum of the colour scale.
    """
    rels = [r for r in expl.relevance]
    embs = list(expl.embedding_relevance) if expl.embedding_relevance else [None] * len(rels)
    first = next((r for r in rels if r is not None), None)
    batch = 0 if first is None or getattr(first, "dim", lambda: 1)() == 0 else int(first.shape[0])
    if index is not None and not -batch <= int(index) < batch:
        raise IndexError(f"sample {index} out of range for a batch of {batch}")
    samples = [int(index) % batch] if index is not None else list(range(min(batch, max_samples)))
    parts = ['<div style="font-family: sans-serif; font-size: 13px">',
             f"<div><b>dynamiclrp Explanation</b>: {batch} sample(s), {len(rels)} input(s)"]
    stats = getattr(expl, "stats", None) or {}
    if stats:
        parts.append(" · " + html.escape(", ".join(f"{k} {v}" for k, v in stats.items()
                                                   if k in ("nodes", "promises", "max_promise_depth"))))
    parts.append("</div>")
    for b in samples:
        total = sum(float(to_numpy(r[b]).sum()) for r in rels if r is not None)
        seed = float(to_numpy(expl.seed)[b].sum()) if to_numpy(expl.seed).ndim > 1 else float(to_numpy(expl.seed).sum())
        parts.append(f'<div style="margin-top: 8px">sample {b}: target {html.escape(_target(expl.seed, b))}, '
                     f"seed {seed:+.5g}, total input relevance {total:+.5g}</div>")
        for k, (rel, emb) in enumerate(zip(rels, embs)):
            if rel is None:
                continue
            if len(rels) > 1:
                parts.append(f"<div>input {k}:</div>")
            parts.append(_sample_html(rel, emb, b, tokens, cmap, percentile))
    if index is None and batch > max_samples:
        parts.append(f"<div>… {batch - max_samples} more; explanation_html(expl, index=i) shows sample i</div>")
    parts.append("</div>")
    return "".join(parts)
