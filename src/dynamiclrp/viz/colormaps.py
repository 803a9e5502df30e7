"""Diverging colour maps and the symmetric normalisation that puts zero relevance at their centre.

Pure numpy (no matplotlib): a colour map is a list of ``(position, (r, g, b))`` anchors in ``[0, 1]`` joined by
linear interpolation, the way Zennit's colour-map codes are (Anders et al., 2021, *Software for Dataset-wide XAI:
From Local Explanations to Global Insights with Zennit, CoRelAy, and ViRelAy*, arXiv:2106.13200). A signed value
``v`` is drawn with the colour at ``t = (v / m + 1) / 2`` where ``m`` is the (robust) maximum of ``|v|``, so the
scale is symmetric: ``0`` is the centre colour, ``+m`` the last anchor, ``-m`` the first.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ColorMap:
    """A colour map given by anchors, evaluated by linear interpolation.

    Parameters
    ----------
    name : str
        Shown in errors and legends.
    anchors : tuple of (float, (float, float, float))
        Increasing positions in ``[0, 1]`` (the first 0, the last 1) with an RGB colour in ``[0, 1]`` each.
    """

    name: str
    anchors: tuple

    def __post_init__(self):
        pos = [float(p) for p, _ in self.anchors]
        if len(pos) < 2 or pos[0] != 0.0 or pos[-1] != 1.0 or any(b < a for a, b in zip(pos, pos[1:])):
            raise ValueError(f"colour map {self.name!r}: anchor positions must rise from 0 to 1, got {pos}")
        for _, rgb in self.anchors:
            if len(rgb) != 3 or not all(0.0 <= c <= 1.0 for c in rgb):
                raise ValueError(f"colour map {self.name!r}: colours must be RGB triples in [0, 1], got {rgb}")

    def __call__(self, t) -> np.ndarray:
        """RGB colours (float in ``[0, 1]``, shape ``t.shape + (3,)``) at positions ``t`` (clipped to ``[0, 1]``)."""
        t = np.clip(np.asarray(t, dtype=float), 0.0, 1.0)
        pos = np.array([p for p, _ in self.anchors], dtype=float)
        rgb = np.array([c for _, c in self.anchors], dtype=float)
        return np.stack([np.interp(t, pos, rgb[:, k]) for k in range(3)], axis=-1)

    @property
    def center(self) -> np.ndarray:
        """The colour of zero relevance (position 0.5)."""
        return self(0.5)

    def to_matplotlib(self, n: int = 256):
        """The same map as a ``matplotlib.colors.ListedColormap`` with ``n`` entries (for colour bars)."""
        from matplotlib.colors import ListedColormap

        return ListedColormap(self(np.linspace(0.0, 1.0, n)), name=self.name)


def _hex(code: str) -> tuple:
    return tuple(int(code[i:i + 2], 16) / 255.0 for i in (0, 2, 4))


def _even(name: str, *codes: str) -> ColorMap:
    """A map with the colours ``codes`` (hex ``rrggbb``) at evenly spaced positions."""
    n = len(codes) - 1
    return ColorMap(name, tuple((i / n, _hex(c)) for i, c in enumerate(codes)))


#: Built-in maps. ``seismic`` (the default) runs dark blue, blue, white, red, dark red: white at zero, and the
#: darker ends keep the strongest relevance apart from merely strong relevance. ``bwr``: blue, white, red (the
#: default for text, where a saturated background would hide the token). ``coldnhot``: cyan, blue, *black*,
#: red, yellow, white (Zennit's map for dark backgrounds; zero is black). ``gray``/``hot``/``wred`` suit
#: unsigned maps (abs-sum, max-norm reductions).
CMAPS = {
    "seismic": _even("seismic", "00004d", "0000ff", "ffffff", "ff0000", "800000"),
    "bwr": _even("bwr", "0000ff", "ffffff", "ff0000"),
    "coldnhot": ColorMap("coldnhot", ((0.0, _hex("00ffff")), (0.25, _hex("0000ff")), (0.5, _hex("000000")),
                                      (2 / 3, _hex("ff0000")), (5 / 6, _hex("ffff00")), (1.0, _hex("ffffff")))),
    "gray": _even("gray", "000000", "ffffff"),
    "wred": _even("wred", "ffffff", "ff0000"),
    "hot": _even("hot", "000000", "ff0000", "ffff00", "ffffff"),
}


def get_cmap(cmap="seismic") -> ColorMap:
    """A :class:`ColorMap` from a built-in name (:data:`CMAPS`), a matplotlib colour-map name (sampled at 256
    points; needs matplotlib), or a :class:`ColorMap` (returned as is)."""
    if isinstance(cmap, ColorMap):
        return cmap
    if not isinstance(cmap, str):
        raise TypeError(f"cmap must be a name or a ColorMap, got {type(cmap).__name__}")
    if cmap in CMAPS:
        return CMAPS[cmap]
    try:
        import matplotlib
    except ImportError:
        raise ValueError(f"unknown colour map {cmap!r}; built-in: {sorted(CMAPS)} (matplotlib names need "
                         "matplotlib: pip install matplotlib)") from None
    try:
        mpl = matplotlib.colormaps[cmap]
    except KeyError:
        raise ValueError(f"unknown colour map {cmap!r}; built-in: {sorted(CMAPS)}, or any matplotlib "
                         "colour-map name") from None
    t = np.linspace(0.0, 1.0, 256)
    rgb = mpl(t)[:, :3]
    return ColorMap(cmap, tuple((float(p), tuple(float(c) for c in col)) for p, col in zip(t, rgb)))


def robust_max(values, percentile: float | None = None) -> float:
    """The scale ``m`` of a symmetric colour scale: ``max |v|``, or the ``percentile``-th percentile of ``|v|``
    (e.g. 99.5, so a few extreme values do not wash out the rest; they are clipped to the ends of the map).

    Non-finite values raise (a NaN relevance is a bug to report, not a colour).
    """
    a = np.abs(np.asarray(values, dtype=float))
    if a.size and not np.isfinite(a).all():
        raise ValueError("relevance contains NaN or Inf; check the explanation (LRPConfig(check_finite=True) "
                         "names the node that produced it)")
    if percentile is not None and not 0.0 < float(percentile) <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    if a.size == 0:
        return 0.0
    return float(a.max() if percentile is None else np.percentile(a, float(percentile)))


def symmetric_positions(values, vmax: float | None = None, percentile: float | None = None) -> np.ndarray:
    """Colour-map positions ``t = (clip(v / m, -1, 1) + 1) / 2`` of signed values, with ``m = vmax`` or
    :func:`robust_max`. Zero always maps to 0.5; an all-zero map (``m = 0``) maps entirely to 0.5."""
    v = np.asarray(values, dtype=float)
    m = robust_max(v, percentile) if vmax is None else float(vmax)
    if not np.isfinite(m) or m < 0:
        raise ValueError(f"vmax must be a finite number >= 0, got {vmax}")
    if m == 0.0:
        return np.full(v.shape, 0.5)
    return (np.clip(v / m, -1.0, 1.0) + 1.0) / 2.0


def colorize(values, cmap="seismic", vmax: float | None = None, percentile: float | None = None) -> np.ndarray:
    """RGB colours (float in ``[0, 1]``, shape ``values.shape + (3,)``) of signed values on a symmetric scale."""
    return get_cmap(cmap)(symmetric_positions(values, vmax=vmax, percentile=percentile))


def to_hex(rgb) -> str:
    """``#rrggbb`` of one RGB colour in ``[0, 1]``."""
    r, g, b = (int(round(float(c) * 255)) for c in rgb)
    return f"#{r:02x}{g:02x}{b:02x}"


def readable_text_color(rgb) -> tuple:
    """Black or white, whichever reads better on background ``rgb`` (relative luminance, ITU-R BT.709)."""
    r, g, b = (float(c) for c in rgb)
    return (0.0, 0.0, 0.0) if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.45 else (1.0, 1.0, 1.0)
