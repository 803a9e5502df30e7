"""Backward-compatible names for :mod:`dynamiclrp.viz`, where the heatmap functions now live.

``heatmap(relevance, ax=None, symmetric=True, cmap="bwr")`` draws into matplotlib axes (now
:func:`dynamiclrp.viz.draw_heatmap`); ``save_heatmaps(images, relevances, path, titles=None)`` writes one row per
sample (:func:`dynamiclrp.viz.save_heatmaps`). New code should use :mod:`dynamiclrp.viz`, where ``heatmap``
returns an RGB array.
"""
from __future__ import annotations


def heatmap(relevance, ax=None, symmetric=True, cmap="bwr", **kwargs):
    """Draw a relevance map ``(H, W)`` or ``(C, H, W)`` (channels summed) into ``ax`` (default: a new figure) on
    a colour scale ``[-m, m]`` centred at zero (``symmetric=False``: ``[min, max]``); returns the ``AxesImage``.
    See :func:`dynamiclrp.viz.draw_heatmap` for ``kwargs``."""
    from .viz.figures import draw_heatmap

    return draw_heatmap(relevance, ax=ax, symmetric=symmetric, cmap=cmap, **kwargs)


def save_heatmaps(images, relevances, path, titles=None, **kwargs):
    """Write a figure with one row per sample (the input image and its relevance heatmap) to ``path``; returns
    the ``pathlib.Path``. See :func:`dynamiclrp.viz.save_heatmaps`."""
    from .viz.figures import save_heatmaps as _save

    return _save(images, relevances, path, titles=titles, **kwargs)
