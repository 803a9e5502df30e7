"""Matplotlib figures (headless: bare ``Figure`` objects rendered by the Agg canvas; pyplot and the global
backend are never touched): heatmap grids with titles and colour bars, and perturbation curves.

matplotlib is imported inside the functions, so ``import dynamiclrp.viz`` works without it. Every function
returns the ``Figure``; :func:`figure_to_array` renders one to an RGBA array.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .colormaps import get_cmap, robust_max
from .image import heatmap, image_rgb, overlay, reduce_channels


def _matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError("dynamiclrp.viz figures need matplotlib: pip install 'dynamiclrp[demo]' "
                          "(or pip install matplotlib)") from None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    return Figure, FigureCanvasAgg


def new_figure(**kwargs):
    """A ``matplotlib.figure.Figure`` attached to an Agg canvas (no pyplot, no backend change)."""
    Figure, FigureCanvasAgg = _matplotlib()
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def figure_to_array(fig) -> np.ndarray:
    """The rendered figure as ``uint8`` RGBA, shape ``(height, width, 4)`` (``figsize * dpi`` pixels)."""
    _, FigureCanvasAgg = _matplotlib()
    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba()).copy()


def save_figure(fig, path, dpi: int | None = None) -> Path:
    """Save ``fig`` (format from the suffix, e.g. ``.png``), creating parent folders; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi if dpi is not None else fig.dpi)
    return path


def draw_heatmap(relevance, ax=None, cmap="seismic", percentile: float | None = None, vmax: float | None = None,
                 reduce: str = "sum", channel_axis: int | None = None, symmetric: bool = True,
                 image=None, alpha: float = 0.5, grayscale: bool = True, colorbar: bool = False):
    """Draw :func:`.image.heatmap` (or :func:`.image.overlay` on ``image``) into ``ax`` (default: a new figure).

    Returns the ``AxesImage``; its ``cmap``/``norm`` describe the relevance scale (``[-m, m]``), so
    ``fig.colorbar(im)`` labels real relevance values. The RGB array drawn is ``im.get_array()``.
    """
    if ax is None:
        ax = new_figure(figsize=(3, 3), layout="constrained").add_subplot()
    r = reduce_channels(relevance, reduce, channel_axis)
    if symmetric:
        m = robust_max(r, percentile) if vmax is None else float(vmax)
        lo, hi = -m, m
    else:
        lo, hi = float(r.min()), float(r.max())
    kwargs = {"cmap": cmap, "percentile": percentile, "vmax": vmax, "reduce": reduce,
              "channel_axis": channel_axis}
    if image is None:
        rgb = heatmap(relevance, symmetric=symmetric, **kwargs)
    else:
        if not symmetric:
            raise ValueError("an overlay uses the symmetric scale; drop symmetric=False or image=")
        rgb = overlay(relevance, image, alpha=alpha, grayscale=grayscale, **kwargs)
    im = ax.imshow(rgb, interpolation="nearest")
    from matplotlib.colors import Normalize

    im.set_cmap(get_cmap(cmap).to_matplotlib())
    im.set_norm(Normalize(lo, hi if hi > lo else lo + 1.0))
    ax.set_axis_off()
    if colorbar:
        ax.figure.colorbar(im, ax=ax, shrink=0.8)
    return im


def plot_heatmaps(relevances, images=None, titles=None, ncols: int | None = None, overlay_alpha: float | None = None,
                  shared_scale: bool = False, colorbar: bool = True, cmap="seismic",
                  percentile: float | None = None, reduce: str = "sum", channel_axis: int | None = None,
                  panel_size: float = 2.2, dpi: int = 100, path=None):
    """A grid of heatmaps for a batch, with titles and colour bars; optionally saved to ``path`` (PNG, …).

    Parameters
    ----------
    relevances : sequence of maps, or an array/tensor with the batch first
        Each ``(H, W)``, ``(C, H, W)`` or ``(H, W, C)``.
    images : sequence, optional
        The inputs. Shown beside each heatmap, or under it when ``overlay_alpha`` is given.
    titles : sequence of str, optional
        One per sample, above its heatmap.
    ncols : int, optional
        Samples per row (default: 1 when images are shown beside the heatmaps, else ``min(n, 6)``).
    shared_scale : bool
        One relevance scale for the whole batch (colours comparable across samples).
    colorbar : bool
        A colour bar in relevance units beside each heatmap.
    cmap, percentile, reduce, channel_axis
        See :func:`.image.heatmap`.

    Returns
    -------
    matplotlib.figure.Figure
    """
    maps = list(relevances)
    n = len(maps)
    if n == 0:
        raise ValueError("plot_heatmaps() needs at least one relevance map")
    images = None if images is None else list(images)
    if images is not None and len(images) != n:
        raise ValueError(f"{n} relevance maps but {len(images)} images")
    if titles is not None and len(titles) != n:
        raise ValueError(f"{n} relevance maps but {len(titles)} titles")
    beside = images is not None and overlay_alpha is None
    per = 2 if beside else 1
    ncols = int(ncols) if ncols else (1 if beside else min(n, 6))
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    vmax = None
    if shared_scale:
        vmax = robust_max(np.concatenate([reduce_channels(m, reduce, channel_axis).ravel() for m in maps]),
                          percentile)
    fig = new_figure(figsize=(panel_size * per * ncols * (1.15 if colorbar else 1.0), panel_size * nrows),
                     dpi=dpi, layout="constrained")
    axes = np.asarray(fig.subplots(nrows, ncols * per, squeeze=False))
    for ax in axes.ravel():
        ax.set_axis_off()
    for k in range(n):
        i, j = divmod(k, ncols)
        if beside:
            axes[i, j * per].imshow(image_rgb(images[k], channel_axis=channel_axis), interpolation="nearest")
        ax = axes[i, j * per + per - 1]
        draw_heatmap(maps[k], ax=ax, cmap=cmap, percentile=percentile, vmax=vmax, reduce=reduce,
                     channel_axis=channel_axis, image=None if beside or images is None else images[k],
                     alpha=overlay_alpha if overlay_alpha is not None else 0.5, colorbar=colorbar)
        if titles is not None:
            ax.set_title(str(titles[k]), fontsize=8)
    if path is not None:
        save_figure(fig, path, dpi=dpi)
    return fig


def save_heatmaps(images, relevances, path, titles=None, **kwargs) -> Path:
    """Write one row per sample (the input, its relevance heatmap with a colour bar) to ``path``; returns it.
    ``kwargs`` go to :func:`plot_heatmaps`."""
    images, relevances = list(images), list(relevances)
    if len(relevances) != len(images) or (titles is not None and len(titles) != len(images)):
        raise ValueError("images, relevances and titles must have the same length")
    fig = plot_heatmaps(relevances, images=images, titles=titles, **kwargs)
    return save_figure(fig, path)


def _curve(name: str, xy) -> tuple:
    try:
        x, y = xy
    except (TypeError, ValueError):
        raise ValueError(f"curve {name!r} must be a pair (x, y), got {type(xy).__name__}") from None
    from .image import to_numpy

    x, y = to_numpy(x).ravel(), to_numpy(y).ravel()
    if x.shape != y.shape or x.size < 2:
        raise ValueError(f"curve {name!r}: x and y need the same length >= 2, got {x.size} and {y.size}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError(f"curve {name!r} contains NaN or Inf")
    if x.min() < -1e-9 or x.max() > 1 + 1e-9 or np.any(np.diff(x) < 0):
        raise ValueError(f"curve {name!r}: x must be the fraction perturbed, rising within [0, 1] "
                         f"(got {x.min():.3g} … {x.max():.3g}); divide step counts by the total")
    return x, y


def curve_auc(x, y) -> float:
    """Area under a curve by the trapezoidal rule, ``sum_i (x_{i+1} - x_i) (y_i + y_{i+1}) / 2``."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def plot_curves(curves: dict, title: str | None = None, xlabel: str = "fraction perturbed",
                ylabel: str = "model output", panel_size: float = 3.5, dpi: int = 100, path=None):
    """Perturbation curves (MoRF / LeRF) per method, x in ``[0, 1]``, each labelled with its AUC.

    Parameters
    ----------
    curves : dict
        ``{method: (x, y)}`` for one panel, or ``{panel: {method: (x, y)}}`` (e.g. ``{"MoRF": {...},
        "LeRF": {...}}``) for panels side by side; a method keeps its colour across panels. ``x`` is the fraction
        of the input perturbed (rising within ``[0, 1]``), ``y`` the model output (or its change).
    title : str, optional
        The figure's title.
    path : str or os.PathLike, optional
        Save the figure there.

    Returns
    -------
    matplotlib.figure.Figure
        Legend entries read ``"<method> (AUC <value>)"`` with :func:`curve_auc`.
    """
    if not isinstance(curves, dict) or not curves:
        raise ValueError("plot_curves() needs a non-empty dict {method: (x, y)} or {panel: {method: (x, y)}}")
    nested = all(isinstance(v, dict) for v in curves.values())
    if not nested and any(isinstance(v, dict) for v in curves.values()):
        raise ValueError("plot_curves(): mix of panels ({name: {method: (x, y)}}) and curves ({method: (x, y)})")
    panels = curves if nested else {None: curves}
    methods = list(dict.fromkeys(m for p in panels.values() for m in p))
    fig = new_figure(figsize=(panel_size * len(panels), panel_size * 0.85), dpi=dpi, layout="constrained")
    axes = np.asarray(fig.subplots(1, len(panels), squeeze=False)).ravel()
    colors = [f"C{i % 10}" for i in range(len(methods))]
    for ax, (panel, group) in zip(axes, panels.items()):
        if not isinstance(group, dict) or not group:
            raise ValueError(f"panel {panel!r} needs a non-empty dict {{method: (x, y)}}")
        for method, xy in group.items():
            x, y = _curve(str(method), xy)
            ax.plot(x, y, color=colors[methods.index(method)], label=f"{method} (AUC {curve_auc(x, y):.3f})")
        ax.set_xlim(0.0, 1.0)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if panel is not None:
            ax.set_title(str(panel))
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    if path is not None:
        save_figure(fig, path, dpi=dpi)
    return fig
