"""Image heatmaps as numpy RGB arrays: channel reductions, signed heatmaps on a symmetric scale, overlays on the
input, and grids for batches. Pure numpy; drawing with titles and colour bars is in :mod:`.figures`.

Arrays returned are float RGB in ``[0, 1]`` shaped ``(H, W, 3)`` (``(rows, cols, 3)`` for grids); tensors are
accepted anywhere an array is (they are detached and copied to the CPU).
"""
from __future__ import annotations

import numpy as np

from .colormaps import colorize, get_cmap, robust_max, symmetric_positions

#: Channel reductions of a ``(C, H, W)`` relevance map (Simonyan et al., 2014, use the max over channels of
#: ``|R|``; the signed sum keeps the conservation of LRP: the map sums to the total relevance).
REDUCTIONS = ("sum", "abs-sum", "max-norm")


def to_numpy(x) -> np.ndarray:
    """A float64 numpy copy of a tensor or array-like."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if hasattr(x, "is_floating_point") and not x.is_floating_point():
            x = x.double()
        x = x.double().numpy()
    return np.array(x, dtype=float)


def _channel_axis(shape: tuple, channel_axis: int | None) -> int:
    if channel_axis is not None:
        if not -3 <= channel_axis < 3:
            raise ValueError(f"channel_axis must be in [-3, 2] for a 3-D map, got {channel_axis}")
        return channel_axis % 3
    for fits in ((1, 3, 4), (2,)):  # an image's usual channel counts first: (2, 2, 3) is channels-last
        if shape[0] in fits:
            return 0
        if shape[-1] in fits:
            return 2
    raise ValueError(f"cannot tell the channel axis of a map shaped {shape} (neither the first nor the last "
                     "dimension is <= 4); pass channel_axis=")


def reduce_channels(relevance, reduce: str = "sum", channel_axis: int | None = None) -> np.ndarray:
    """A relevance map ``(H, W)``, ``(C, H, W)`` or ``(H, W, C)`` as one ``(H, W)`` array.

    Parameters
    ----------
    relevance : array-like or torch.Tensor
        The map; a leading batch dimension of 1 is dropped.
    reduce : {"sum", "abs-sum", "max-norm"}
        ``sum``: ``sum_c R_c`` (signed, conserves the total); ``abs-sum``: ``sum_c |R_c|``; ``max-norm``:
        ``max_c |R_c|`` (both unsigned: only the positive half of a diverging map is used).
    channel_axis : int, optional
        Which axis holds the channels of a 3-D map; default: the first if it has 1, 3 or 4 entries, else the
        last if it has, else the first or last with 2.
    """
    r = to_numpy(relevance)
    if r.ndim == 4 and r.shape[0] == 1:
        r = r[0]
    if reduce not in REDUCTIONS:
        raise ValueError(f"unknown channel reduction {reduce!r}; choose one of {REDUCTIONS}")
    if r.ndim == 2:
        return r if reduce == "sum" else np.abs(r)
    if r.ndim != 3:
        raise ValueError(f"expected a relevance map (H, W), (C, H, W) or (H, W, C), got shape {r.shape}; "
                         "for a batch, use heatmaps()/heatmap_grid() or index one sample")
    axis = _channel_axis(r.shape, channel_axis)
    if reduce == "sum":
        return r.sum(axis)
    if reduce == "abs-sum":
        return np.abs(r).sum(axis)
    return np.abs(r).max(axis)


def heatmap(relevance, cmap="seismic", percentile: float | None = None, vmax: float | None = None,
            reduce: str = "sum", channel_axis: int | None = None, symmetric: bool = True) -> np.ndarray:
    """A relevance map as an RGB image on a symmetric colour scale centred at zero.

    Each pixel's (channel-reduced) relevance ``r`` gets the colour at ``(clip(r / m, -1, 1) + 1) / 2`` of
    ``cmap``, where ``m = vmax``, or the ``percentile``-th percentile of ``|r|`` (robust maximum), or ``max |r|``.
    So zero is the map's centre colour (white for ``seismic``/``bwr``, black for ``coldnhot``), positive
    relevance runs toward red, negative toward blue, and ``r`` and ``-r`` are equally far from the centre.

    Parameters
    ----------
    relevance : array-like or torch.Tensor
        ``(H, W)``, ``(C, H, W)`` or ``(H, W, C)``.
    cmap : str or ColorMap
        ``seismic`` (default), ``bwr``, ``coldnhot``, another built-in, or a matplotlib name.
    percentile : float, optional
        Robust maximum: values beyond the ``percentile``-th percentile of ``|r|`` are clipped to the map's ends.
    vmax : float, optional
        An explicit scale (e.g. shared across a batch); overrides ``percentile``.
    reduce, channel_axis
        See :func:`reduce_channels`.
    symmetric : bool
        ``False`` maps ``[min r, max r]`` linearly onto the whole colour map instead (for unsigned maps).

    Returns
    -------
    numpy.ndarray
        Float RGB in ``[0, 1]``, shape ``(H, W, 3)``.
    """
    r = reduce_channels(relevance, reduce, channel_axis)
    if symmetric:
        return colorize(r, cmap, vmax=vmax, percentile=percentile)
    robust_max(r)  # rejects NaN/Inf
    lo, hi = float(r.min()), float(r.max())
    return get_cmap(cmap)((r - lo) / (hi - lo) if hi > lo else np.full(r.shape, 0.5))


def heatmaps(relevances, shared_scale: bool = False, **kwargs) -> list:
    """:func:`heatmap` of each map of a batch (a list, or an array/tensor with the batch first).

    ``shared_scale=True`` draws all of them on one scale (the robust maximum over the whole batch, after the
    channel reduction), so the colours compare across samples; otherwise each map has its own scale."""
    maps = list(relevances)
    if shared_scale and kwargs.get("vmax") is None:
        reduced = [reduce_channels(m, kwargs.get("reduce", "sum"), kwargs.get("channel_axis")) for m in maps]
        kwargs = {**kwargs, "vmax": robust_max(np.concatenate([m.ravel() for m in reduced]),
                                               kwargs.get("percentile"))}
    return [heatmap(m, **kwargs) for m in maps]


def image_rgb(image, grayscale: bool = False, channel_axis: int | None = None) -> np.ndarray:
    """An input image as float RGB in ``[0, 1]``, shape ``(H, W, 3)``, for display.

    ``uint8`` images are divided by 255; float images already in ``[0, 1]`` are kept; other float images (e.g.
    ImageNet-normalised tensors) are min-max scaled. One channel is repeated; ``grayscale`` takes the luminance
    ``0.299 R + 0.587 G + 0.114 B`` (ITU-R BT.601)."""
    is_uint8 = (hasattr(image, "dtype") and str(image.dtype) in ("uint8", "torch.uint8"))
    x = to_numpy(image)
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    if x.ndim == 2:
        x = x[:, :, None]
    elif x.ndim == 3:
        if _channel_axis(x.shape, channel_axis) == 0:
            x = np.moveaxis(x, 0, -1)
    else:
        raise ValueError(f"expected an image (H, W), (C, H, W) or (H, W, C), got shape {x.shape}")
    if x.shape[-1] == 4:
        x = x[..., :3]
    if x.shape[-1] not in (1, 3):
        raise ValueError(f"an image needs 1, 3 or 4 channels, got {x.shape[-1]}")
    if is_uint8:
        x = x / 255.0
    elif x.size and (x.min() < 0.0 or x.max() > 1.0):
        lo, hi = x.min(), x.max()
        x = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    if x.shape[-1] == 3 and grayscale:
        x = (x @ np.array([0.299, 0.587, 0.114]))[..., None]
    return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x


def overlay(relevance, image, alpha: float = 0.5, grayscale: bool = True, by_magnitude: bool = False,
            **heatmap_kwargs) -> np.ndarray:
    """A heatmap blended over its input image: ``(1 - a) * backdrop + a * heatmap`` per pixel.

    Parameters
    ----------
    relevance : array-like or torch.Tensor
        The relevance map, same height and width as ``image``.
    image : array-like or torch.Tensor
        The input (see :func:`image_rgb`).
    alpha : float
        Opacity ``a`` of the heatmap, in ``[0, 1]``.
    grayscale : bool
        Show the backdrop in grayscale, so the heatmap's colours stand out (default).
    by_magnitude : bool
        Scale the opacity per pixel by ``|t - 0.5| * 2`` (its distance from the centre of the colour scale), so
        pixels without relevance show the image unchanged.
    **heatmap_kwargs
        ``cmap``, ``percentile``, ``vmax``, ``reduce``, ``channel_axis`` of :func:`heatmap`.
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    heat = heatmap(relevance, **heatmap_kwargs)
    back = image_rgb(image, grayscale=grayscale, channel_axis=heatmap_kwargs.get("channel_axis"))
    if back.shape != heat.shape:
        raise ValueError(f"the relevance map is {heat.shape[:2]} but the image is {back.shape[:2]}; resize one "
                         "(e.g. torch.nn.functional.interpolate) so they match")
    a = np.full(heat.shape[:2] + (1,), float(alpha))
    if by_magnitude:
        r = reduce_channels(relevance, heatmap_kwargs.get("reduce", "sum"), heatmap_kwargs.get("channel_axis"))
        t = symmetric_positions(r, heatmap_kwargs.get("vmax"), heatmap_kwargs.get("percentile"))
        a = a * (np.abs(t - 0.5) * 2.0)[..., None]
    return (1.0 - a) * back + a * heat


def grid(images, ncols: int | None = None, pad: int = 2, fill: float = 1.0) -> np.ndarray:
    """Tile equally sized RGB images ``(H, W, 3)`` into one array, row by row, ``pad`` pixels of ``fill``
    between them: ``rows * H + (rows - 1) * pad`` by ``cols * W + (cols - 1) * pad``; ``cols = ncols`` (default:
    ``ceil(sqrt(n))``), ``rows = ceil(n / cols)``. Empty cells of the last row are ``fill``."""
    tiles = [np.asarray(t, dtype=float) for t in images]
    if not tiles:
        raise ValueError("grid() needs at least one image")
    shape = tiles[0].shape
    if len(shape) != 3 or any(t.shape != shape for t in tiles):
        raise ValueError(f"grid() needs images of one shape (H, W, C), got {sorted({t.shape for t in tiles})}")
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    n = len(tiles)
    cols = int(ncols) if ncols else int(np.ceil(np.sqrt(n)))
    if cols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    cols = min(cols, n)
    rows = -(-n // cols)
    h, w, c = shape
    out = np.full((rows * h + (rows - 1) * pad, cols * w + (cols - 1) * pad, c), float(fill))
    for k, t in enumerate(tiles):
        i, j = divmod(k, cols)
        out[i * (h + pad):i * (h + pad) + h, j * (w + pad):j * (w + pad) + w] = t
    return out


def heatmap_grid(relevances, images=None, ncols: int | None = None, pad: int = 2, alpha: float = 0.5,
                 grayscale: bool = True, shared_scale: bool = False, **heatmap_kwargs) -> np.ndarray:
    """A batch of heatmaps (overlaid on ``images`` when given) tiled by :func:`grid`; RGB in ``[0, 1]``."""
    maps = list(relevances)
    if images is None:
        return grid(heatmaps(maps, shared_scale=shared_scale, **heatmap_kwargs), ncols=ncols, pad=pad)
    images = list(images)
    if len(images) != len(maps):
        raise ValueError(f"{len(maps)} relevance maps but {len(images)} images")
    if shared_scale and heatmap_kwargs.get("vmax") is None:
        reduced = [reduce_channels(m, heatmap_kwargs.get("reduce", "sum"), heatmap_kwargs.get("channel_axis"))
                   for m in maps]
        heatmap_kwargs["vmax"] = robust_max(np.concatenate([m.ravel() for m in reduced]),
                                            heatmap_kwargs.get("percentile"))
    tiles = [overlay(m, x, alpha=alpha, grayscale=grayscale, **heatmap_kwargs) for m, x in zip(maps, images)]
    return grid(tiles, ncols=ncols, pad=pad)


def upscale(rgb: np.ndarray, min_size: int = 128, max_factor: int = 32) -> np.ndarray:
    """Nearest-neighbour enlargement of a small image by an integer factor, so its shorter side is at least
    ``min_size`` pixels (at most ``max_factor`` times); pixels stay sharp squares."""
    h, w = rgb.shape[:2]
    k = int(min(max_factor, max(1, -(-min_size // max(1, min(h, w))))))
    return rgb.repeat(k, axis=0).repeat(k, axis=1) if k > 1 else rgb
