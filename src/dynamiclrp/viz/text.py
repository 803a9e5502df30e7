"""Token heatmaps: self-contained HTML (inline styles only, no LaTeX, no external CSS/JS), coloured terminal
text (ANSI 24-bit backgrounds, plain text when not a terminal or ``NO_COLOR`` is set), and token cleaning for
display (WordPiece ``##``, byte-level BPE ``Ġ``/``Ċ``, SentencePiece ``▁``).

Each token's colour comes from its signed relevance on a symmetric scale (:func:`.colormaps.colorize`): zero is
the centre colour (white for the default ``bwr``), positive red, negative blue.
"""
from __future__ import annotations

import html
import os
import re
import sys
from pathlib import Path

import numpy as np

from .colormaps import colorize, get_cmap, readable_text_color, robust_max, to_hex
from .image import to_numpy

SCHEMES = ("auto", "wordpiece", "bytelevel", "sentencepiece", "plain")


def _byte_decoder() -> dict:
    """The inverse of byte-level BPE's byte-to-character table (Radford et al., 2019, GPT-2): printable Latin-1
    bytes stand for themselves; the other 68 bytes are shifted to code points 256, 257, ... in byte order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    table, shift = {}, 0
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(256 + shift)] = b
            shift += 1
    return table


_BYTES = _byte_decoder()
_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def _detect(tokens: list) -> str:
    if any(t.startswith("\u2581") for t in tokens):
        return "sentencepiece"
    if any(("\u0120" in t or "\u010a" in t or "\u0109" in t) for t in tokens):
        return "bytelevel"
    if any(t.startswith("##") and len(t) > 2 for t in tokens):
        return "wordpiece"
    return "plain"


def _bytelevel(token: str) -> str:
    if not all(ch in _BYTES for ch in token):  # a special token such as <|endoftext|> is kept as it is
        return token
    return bytes(_BYTES[ch] for ch in token).decode("utf-8", errors="replace")


def clean_tokens(tokens, tokenizer=None, scheme: str = "auto", strip_first: bool = True) -> list:
    """Display strings of tokens: the text each token adds, word starts with their leading space.

    Parameters
    ----------
    tokens : sequence of str, or of int token ids (with ``tokenizer``), or a tensor of ids
        Raw token strings (``tokenizer.convert_ids_to_tokens(ids)``) or ids.
    tokenizer : optional
        Anything with ``convert_ids_to_tokens`` (a Hugging Face tokenizer), used to turn ids into strings.
    scheme : {"auto", "wordpiece", "bytelevel", "sentencepiece", "plain"}
        ``wordpiece``: ``##ing`` continues a word (shown as ``ing``), other tokens start one (``" un"``);
        ``bytelevel``: each character stands for a byte (``Ġ`` space, ``Ċ`` newline), decoded as UTF-8;
        ``sentencepiece``: ``▁`` is a space, byte-fallback tokens ``<0x0A>`` are their ASCII character;
        ``auto``: the first of these whose marker occurs in ``tokens``, else ``plain`` (unchanged).
    strip_first : bool
        Drop the leading space of the first token.

    Returns
    -------
    list of str
        One display string per token (special tokens such as ``[CLS]``, ``<s>`` unchanged).
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown token scheme {scheme!r}; choose one of {SCHEMES}")
    if hasattr(tokens, "tolist"):
        tokens = tokens.tolist()
    tokens = list(tokens)
    if tokens and not all(isinstance(t, str) for t in tokens):
        if tokenizer is None:
            raise TypeError("clean_tokens() got token ids; pass tokenizer= (anything with convert_ids_to_tokens) "
                            "or the token strings")
        if not hasattr(tokenizer, "convert_ids_to_tokens"):
            raise TypeError(f"tokenizer {type(tokenizer).__name__} has no convert_ids_to_tokens()")
        tokens = list(tokenizer.convert_ids_to_tokens([int(t) for t in tokens]))
    if scheme == "auto":
        scheme = _detect(tokens)
    out = []
    for t in tokens:
        t = "" if t is None else str(t)
        if scheme == "wordpiece":
            special = t.startswith("[") and t.endswith("]")
            t = t[2:] if t.startswith("##") and len(t) > 2 and not special else " " + t
        elif scheme == "bytelevel":
            t = _bytelevel(t)
        elif scheme == "sentencepiece":
            m = _BYTE_TOKEN.match(t)
            if m and int(m.group(1), 16) < 0x80:
                t = chr(int(m.group(1), 16))
            else:
                t = t.replace("\u2581", " ")
        out.append(t)
    if strip_first and out and out[0].startswith(" "):
        out[0] = out[0][1:]
    return out


def _values(tokens, relevance) -> np.ndarray:
    r = to_numpy(relevance)
    if r.ndim == 2 and r.shape[0] == 1:
        r = r[0]
    if r.ndim != 1:
        raise ValueError(f"expected one relevance value per token (shape [seq]), got shape {r.shape}; for "
                         "embedding relevance [seq, hidden], sum over the hidden dimension first")
    if len(tokens) != r.shape[0]:
        raise ValueError(f"{len(tokens)} tokens but {r.shape[0]} relevance values")
    robust_max(r)  # rejects NaN/Inf
    return r


def _split_space(text: str) -> tuple:
    """Leading spaces (drawn uncoloured between tokens) and the rest of a display string."""
    body = text.lstrip(" ")
    return text[:len(text) - len(body)], body


def _show(body: str) -> str:
    """Whitespace a reader cannot see as a visible sign: newline ``↵``, tab ``→``; an empty token ``∅``."""
    return body.replace("\n", "\u21b5").replace("\t", "\u2192") or "\u2205"


def tokens_html(tokens, relevance, cmap="bwr", percentile: float | None = None, vmax: float | None = None,
                title: str | None = None, legend: bool = True, clean: bool = True, fmt: str = "+.4g") -> str:
    """An HTML fragment (one ``<div>``) showing each token on the colour of its relevance.

    Every token is a ``<span>`` with an inline ``background-color`` (its relevance on a symmetric scale, see
    :func:`.colormaps.colorize`), a black or white text colour (whichever reads better), and a ``title``
    tooltip ``"R = <value>"``. Token text is HTML-escaped; a newline token shows as ``↵`` followed by a line
    break. No external CSS, JavaScript or fonts.

    Parameters
    ----------
    tokens : sequence of str
        Display strings (cleaned by :func:`clean_tokens` unless ``clean=False``).
    relevance : array-like or torch.Tensor
        One value per token.
    cmap, percentile, vmax
        The colour map and its symmetric scale (see :func:`.colormaps.symmetric_positions`).
    title : str, optional
        A heading above the tokens.
    legend : bool
        Show the colour scale ``-m … 0 … +m`` below the tokens.
    fmt : str
        Format spec of the values in tooltips and legend.
    """
    tokens = clean_tokens(tokens) if clean else [str(t) for t in tokens]
    r = _values(tokens, relevance)
    m = robust_max(r, percentile) if vmax is None else float(vmax)
    colors = colorize(r, cmap, vmax=m)
    parts = ['<div style="font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 14px; '
             'line-height: 1.9; background: #ffffff; color: #000000; padding: 6px; white-space: normal">']
    if title:
        parts.append(f'<div style="font-weight: bold; margin-bottom: 4px">{html.escape(str(title))}</div>')
    for k, (tok, value, rgb) in enumerate(zip(tokens, r, colors)):
        space, body = _split_space(tok)
        text = to_hex(readable_text_color(rgb))
        tip = html.escape(f"R = {value:{fmt}} (token {k}: {body!r})", quote=True)
        parts.append(f'{"&nbsp;" * len(space)}<span style="background-color: {to_hex(rgb)}; color: {text}; '
                     f'padding: 1px 1px; border-radius: 3px; white-space: pre" title="{tip}">'
                     f'{html.escape(_show(body))}</span>')
        if "\n" in body:
            parts.append("<br>")
    if legend:
        cm = get_cmap(cmap)
        stops = ", ".join(to_hex(cm(t)) for t in np.linspace(0.0, 1.0, 11))
        parts.append(f'<div style="margin-top: 6px; font-size: 11px; display: flex; align-items: center; gap: 6px">'
                     f'<span>{-m:{fmt}}</span><span style="display: inline-block; width: 160px; height: 10px; '
                     f'background: linear-gradient(to right, {stops}); border: 1px solid #999999"></span>'
                     f'<span>{m:{fmt}}</span><span>(relevance; 0 = {to_hex(cm.center)})</span></div>')
    parts.append("</div>")
    return "".join(parts)


def html_document(body: str, title: str = "dynamiclrp relevance") -> str:
    """A complete, self-contained HTML page around ``body`` (UTF-8, no external resources)."""
    return ('<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{html.escape(title)}</title>\n</head>\n<body style=\"margin: 16px; background: #ffffff\">\n"
            f"{body}\n</body>\n</html>\n")


def save_html(path, body: str, title: str = "dynamiclrp relevance") -> Path:
    """Write ``body`` (e.g. one or more :func:`tokens_html` fragments joined) as a self-contained page."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html_document(body, title), encoding="utf-8")
    return path


def use_color(stream=None) -> bool:
    """Whether to colour terminal output: ``stream`` (default stdout) is a terminal and ``NO_COLOR`` is unset or
    empty (https://no-color.org)."""
    if os.environ.get("NO_COLOR"):
        return False
    stream = sys.stdout if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def tokens_ansi(tokens, relevance, color: bool | None = None, cmap="bwr", percentile: float | None = None,
                vmax: float | None = None, clean: bool = True, fmt: str = "+.3g", stream=None) -> str:
    """Tokens as terminal text: each on a 24-bit background colour of its relevance
    (``ESC[48;2;R;G;Bm``, with a black or white ``ESC[38;2;…m`` foreground, reset by ``ESC[0m``).

    ``color=None`` decides by :func:`use_color` on ``stream``. Without colour each token is followed by its value
    in brackets, ``token[+0.52]``, so the plain text still carries the relevance.
    """
    tokens = clean_tokens(tokens) if clean else [str(t) for t in tokens]
    r = _values(tokens, relevance)
    if color is None:
        color = use_color(stream)
    colors = colorize(r, cmap, vmax=vmax, percentile=percentile)
    out = []
    for tok, value, rgb in zip(tokens, r, colors):
        space, body = _split_space(tok)
        shown = _show(body)
        if color:
            bg = ";".join(str(int(round(c * 255))) for c in rgb)
            fg = ";".join(str(int(round(c * 255))) for c in readable_text_color(rgb))
            out.append(f"{space}\x1b[48;2;{bg}m\x1b[38;2;{fg}m{shown}\x1b[0m")
        else:
            out.append(f"{space}{shown}[{value:{fmt}}]")
        if "\n" in body:
            out.append("\n")
    return "".join(out)


def print_tokens(tokens, relevance, stream=None, **kwargs) -> None:
    """Print :func:`tokens_ansi` to ``stream`` (default stdout), coloured when it is a terminal."""
    stream = sys.stdout if stream is None else stream
    print(tokens_ansi(tokens, relevance, stream=stream, **kwargs), file=stream)


def token_html_document(rows, title: str = "dynamiclrp token relevance", **kwargs) -> str:
    """A self-contained HTML page with one token heatmap per row.

    Parameters
    ----------
    rows : sequence of (label, tokens, relevance)
        Each row's heading, its tokens (raw or cleaned strings; cleaned by :func:`clean_tokens`) and one
        relevance value per token. Each row has its own symmetric scale unless ``vmax=`` is given.
    title : str
        The page title.
    **kwargs
        ``cmap``, ``percentile``, ``vmax``, ``legend``, ``fmt`` of :func:`tokens_html`.
    """
    parts = []
    for k, row in enumerate(rows):
        try:
            label, tokens, relevance = row
        except (TypeError, ValueError):
            raise ValueError(f"row {k} must be (label, tokens, relevance), got {type(row).__name__}") from None
        parts.append(tokens_html(tokens, relevance, title=label, **kwargs))
    return html_document("\n".join(parts), title)
