"""Heatmaps of relevance: images, tokens, notebooks, perturbation curves.

Pure numpy (importable without matplotlib):

* :func:`heatmap`, :func:`overlay`, :func:`heatmap_grid`, :func:`grid`, :func:`reduce_channels` -- RGB arrays
  (float in ``[0, 1]``) on a symmetric colour scale centred at zero (:mod:`.colormaps`: ``seismic`` default,
  ``bwr``, ``coldnhot``, …), with percentile clipping and channel reductions;
* :func:`save_png`, :func:`png_bytes`, :func:`png_data_uri` -- write or embed such arrays;
* :func:`clean_tokens`, :func:`tokens_html`, :func:`token_html_document`, :func:`save_html`, :func:`tokens_ansi`,
  :func:`print_tokens` -- token heatmaps as self-contained HTML or coloured
  terminal text;
* :func:`explanation_html` -- an :class:`~dynamiclrp.Explanation` as HTML (its notebook view).

With matplotlib (:mod:`.figures`, imported on first use):

* :func:`plot_heatmaps` (grids with titles and colour bars), :func:`save_heatmaps`, :func:`draw_heatmap`,
  :func:`plot_curves` (MoRF/LeRF curves ``{method: (x, y)}``), :func:`figure_to_array`, :func:`save_figure`.
"""
from .colormaps import CMAPS, ColorMap, colorize, get_cmap, robust_max, symmetric_positions
from .image import REDUCTIONS, grid, heatmap, heatmap_grid, heatmaps, image_rgb, overlay, reduce_channels, upscale
from .notebook import explanation_html
from .png import png_bytes, png_data_uri, save_png
from .text import (
    clean_tokens,
    html_document,
    print_tokens,
    save_html,
    token_html_document,
    tokens_ansi,
    tokens_html,
    use_color,
)

_FIGURES = ("draw_heatmap", "plot_heatmaps", "save_heatmaps", "plot_curves", "curve_auc",
            "figure_to_array", "save_figure", "new_figure")


def __getattr__(name):
    if name in _FIGURES:  # matplotlib is needed by these only, so import them on first use
        from . import figures

        return getattr(figures, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CMAPS", "ColorMap", "colorize", "get_cmap", "robust_max", "symmetric_positions",
    "REDUCTIONS", "grid", "heatmap", "heatmap_grid", "heatmaps", "image_rgb", "overlay", "reduce_channels", "upscale",
    "explanation_html", "png_bytes", "png_data_uri", "save_png",
    "clean_tokens", "html_document", "print_tokens", "save_html", "tokens_ansi", "tokens_html", "use_color",
    "token_html_document",
    *_FIGURES,
]
