"""A minimal PNG encoder (zlib + struct; no matplotlib, no Pillow), so heatmaps can be saved and embedded in
HTML wherever numpy runs. Format: W3C *Portable Network Graphics (PNG) Specification*, 3rd ed., 8-bit RGB/RGBA,
filter type 0 on every row."""
from __future__ import annotations

import base64
import struct
import zlib
from pathlib import Path

import numpy as np


def to_uint8(rgb) -> np.ndarray:
    """Float colours in ``[0, 1]`` as ``uint8`` (rounded; ``uint8`` input is returned unchanged)."""
    a = np.asarray(rgb)
    if a.dtype == np.uint8:
        return a
    a = a.astype(float)
    if a.size and not np.isfinite(a).all():
        raise ValueError("image contains NaN or Inf")
    return np.round(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(rgb) -> bytes:
    """PNG file contents of an image ``(H, W, 3)`` (RGB) or ``(H, W, 4)`` (RGBA), float in ``[0, 1]`` or uint8."""
    a = to_uint8(rgb)
    if a.ndim != 3 or a.shape[2] not in (3, 4) or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"expected an RGB(A) image (H, W, 3|4), got shape {a.shape}")
    h, w, c = a.shape
    raw = b"".join(b"\x00" + a[i].tobytes() for i in range(h))
    header = struct.pack(">IIBBBBB", w, h, 8, 6 if c == 4 else 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, 9))
            + _chunk(b"IEND", b""))


def save_png(rgb, path) -> Path:
    """Write ``rgb`` (see :func:`png_bytes`) to ``path`` (parent folders are created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(rgb))
    return path


def png_data_uri(rgb) -> str:
    """``data:image/png;base64,...`` of ``rgb``, for an ``<img src=...>`` that needs no file."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(rgb)).decode("ascii")
