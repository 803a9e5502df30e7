"""Heatmaps of relevance maps with matplotlib (headless: figures are rendered with the Agg canvas)."""
from __future__ import annotations

import numpy as np


def _to_2d(array) -> np.ndarray:
    """A ``(H, W)`` or ``(C, H, W)`` tensor/array as a float ``(H, W)`` array, summed over channels."""
    if hasattr(array, "detach"):
        array = array.detach().cpu().float().numpy()
    array = np.asarray(array, dtype=float)
    if array.ndim == 3:
        array = array.sum(0)
    if array.ndim != 2:
        raise ValueError(f"expected a (H, W) or (C, H, W) map, got shape {array.shape}")
    return array


def heatmap(relevance, ax=None, symmetric=True, cmap="bwr"):
    """Draw a relevance map as an image.

    Parameters
    ----------
    relevance : torch.Tensor or numpy.ndarray
        Relevance shaped ``(H, W)`` or ``(C, H, W)``; channels are summed.
    ax : matplotlib.axes.Axes, optional
        Axes to draw into; default: the axes of a new figure.
    symmetric : bool
        Centre the colour limits on 0 (``[-m, m]`` with ``m`` the largest absolute relevance), so that
        positive and negative relevance get the two ends of a diverging colour map.
    cmap : str
        Matplotlib colour map name.

    Returns
    -------
    matplotlib.image.AxesImage
        The image drawn.
    """
    r = _to_2d(relevance)
    if ax is None:
        from matplotlib.figure import Figure  # a bare Figure renders with Agg: no pyplot, no backend change

        ax = Figure().add_subplot()
    m = float(np.abs(r).max()) or 1.0
    limits = {"vmin": -m, "vmax": m} if symmetric else {}
    image = ax.imshow(r, cmap=cmap, interpolation="nearest", **limits)
    ax.set_axis_off()
    return image


def save_heatmaps(images, relevances, path, titles=None):
    """Write a figure with one row per sample: the input image (grayscale) and its relevance heatmap.

    Parameters
    ----------
    images : sequence of torch.Tensor or numpy.ndarray
        Input images, each ``(H, W)`` or ``(C, H, W)`` (channels are summed for display).
    relevances : sequence of torch.Tensor or numpy.ndarray
        Relevance maps, one per image, shaped like it.
    path : str or os.PathLike
        Output file; the format follows its suffix (e.g. ``.png``). Parent folders are created.
    titles : sequence of str, optional
        One title per sample, shown above its heatmap.

    Returns
    -------
    pathlib.Path
        The path written.
    """
    from pathlib import Path

    from matplotlib.figure import Figure

    n = len(images)
    if len(relevances) != n or (titles is not None and len(titles) != n):
        raise ValueError("images, relevances and titles must have the same length")
    fig = Figure(figsize=(4, 2 * n), layout="constrained")
    axes = np.asarray(fig.subplots(n, 2, squeeze=False))
    for i in range(n):
        axes[i, 0].imshow(_to_2d(images[i]), cmap="gray", interpolation="nearest")
        axes[i, 0].set_axis_off()
        image = heatmap(relevances[i], ax=axes[i, 1])
        fig.colorbar(image, ax=axes[i, 1], shrink=0.8)
        if titles is not None:
            axes[i, 1].set_title(titles[i], fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
