"""How occluded features are replaced: a blurred copy of the image, a baseline value, a replacement token, or
deletion of the token.

An occlusion has two steps: :meth:`~Occlusion.replacement` computes, once per batch, what occluded features become,
and :meth:`~Occlusion.apply` writes it where a feature mask says so. The mask is feature-shaped (the input without
its channel dimension); it is broadcast over channels here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def gaussian_kernel(kernel_size: int = 51, sigma: float = 20.0, dtype=torch.float64, device=None) -> torch.Tensor:
    r"""The normalised 1-D Gaussian :math:`g_i = e^{-i^2 / 2\sigma^2} / \sum_j e^{-j^2 / 2\sigma^2}`,
    :math:`i = -(k-1)/2 \dots (k-1)/2` (the kernel of torchvision's ``gaussian_blur``); it sums to 1."""
    if not (isinstance(kernel_size, int) and kernel_size > 0 and kernel_size % 2 == 1):
        raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size!r}")
    if not (isinstance(sigma, (int, float)) and sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"sigma must be a positive number, got {sigma!r}")
    half = (kernel_size - 1) / 2
    i = torch.linspace(-half, half, kernel_size, dtype=torch.float64, device=device)
    g = torch.exp(-0.5 * (i / sigma) ** 2)
    return (g / g.sum()).to(dtype)


def gaussian_blur(x: torch.Tensor, kernel_size: int = 51, sigma: float = 20.0) -> torch.Tensor:
    """Blur the last two dimensions of ``x`` (``[..., H, W]``) with a separable Gaussian.

    Borders are reflected (as torchvision does) where the image is larger than half the kernel, and replicated
    otherwise; both keep a constant image constant, since the kernel sums to 1.
    """
    if not x.is_floating_point():
        raise TypeError(f"gaussian_blur needs a floating-point image, got {x.dtype}; blur is for pixel inputs "
                        "(for token ids use TokenReplacement or TokenDeletion)")
    if x.dim() < 2:
        raise ValueError(f"gaussian_blur needs an input [..., H, W], got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    g = gaussian_kernel(kernel_size, sigma, dtype=x.dtype, device=x.device)
    pad = kernel_size // 2
    mode = "reflect" if pad < min(h, w) else "replicate"
    flat = x.reshape(-1, 1, h, w)
    flat = F.pad(flat, (pad, pad, pad, pad), mode=mode)
    flat = F.conv2d(flat, g.view(1, 1, -1, 1))
    flat = F.conv2d(flat, g.view(1, 1, 1, -1))
    return flat.reshape(x.shape)


def expand_mask(mask: torch.Tensor, x: torch.Tensor, channel_dim: int | None) -> torch.Tensor:
    """A feature mask ``[rows, *features]`` as a mask broadcastable to ``x`` (a singleton channel dimension)."""
    if channel_dim is not None:
        mask = mask.unsqueeze(channel_dim % x.dim())
    return mask


class Occlusion:
    """Base of the occlusions. ``stackable`` says whether several steps may be scored in one call (token deletion
    changes the sequence length per step, so it may not)."""

    stackable = True

    def replacement(self, x: torch.Tensor, channel_dim: int | None) -> torch.Tensor | None:
        """What occluded features become, shaped like ``x`` (or broadcastable to it)."""
        raise NotImplementedError

    def apply(self, x: torch.Tensor, replacement, mask: torch.Tensor, channel_dim: int | None) -> torch.Tensor:
        """``x`` with the features where ``mask`` (``[rows, *features]``) is true occluded."""
        return torch.where(expand_mask(mask, x, channel_dim), replacement, x)


@dataclass(frozen=True)
class BlurOcclusion(Occlusion):
    """Replace occluded pixels by the same pixels of a Gaussian-blurred copy of the image (default kernel 51,
    sigma 20, the DynamicLRP paper's protocol after Blücher et al. 2024). Blurs the last two dimensions."""

    kernel_size: int = 51
    sigma: float = 20.0

    def __post_init__(self):
        gaussian_kernel(self.kernel_size, self.sigma)  # validates

    def replacement(self, x, channel_dim):
        return gaussian_blur(x, self.kernel_size, self.sigma)


@dataclass(frozen=True)
class BaselineOcclusion(Occlusion):
    """Replace occluded features by a baseline: a number, or a tensor broadcastable to one example (e.g. a
    per-channel mean ``[C, 1, 1]``) or to the batch."""

    value: float | torch.Tensor = 0.0

    def replacement(self, x, channel_dim):
        v = self.value
        if isinstance(v, torch.Tensor):
            v = v.to(device=x.device, dtype=x.dtype)
        else:
            v = torch.tensor(v, device=x.device, dtype=x.dtype)
        try:
            return torch.broadcast_to(v, x.shape)
        except RuntimeError as err:
            raise ValueError(f"baseline of shape {tuple(v.shape)} does not broadcast to the input "
                             f"{tuple(x.shape)}") from err


@dataclass(frozen=True)
class TokenReplacement(Occlusion):
    """Replace occluded tokens by ``token_id`` (e.g. the tokenizer's mask, pad or unk token)."""

    token_id: int

    def __post_init__(self):
        if not isinstance(self.token_id, int) or self.token_id < 0:
            raise ValueError(f"token_id must be a non-negative int, got {self.token_id!r}")

    def replacement(self, x, channel_dim):
        if x.is_floating_point():
            raise TypeError(f"TokenReplacement needs integer token ids, got {x.dtype} inputs; for embeddings or "
                            "pixels use BaselineOcclusion")
        return torch.full_like(x, self.token_id)


@dataclass(frozen=True)
class TokenDeletion(Occlusion):
    """Delete occluded tokens: the sequence gets shorter, the order of the rest is kept (the score of a causal
    LM's last position stays the next-token score). Inputs ``[batch, seq]`` or ``[batch, seq, dim]``; every row of
    a batch must lose the same number of tokens per step, and at least one token must stay out of the ranking
    (``feature_mask``: e.g. BOS), since an empty sequence cannot be scored."""

    stackable = False

    def replacement(self, x, channel_dim):
        if x.dim() < 2:
            raise ValueError(f"TokenDeletion needs inputs [batch, seq, ...], got shape {tuple(x.shape)}")
        return None

    def apply(self, x, replacement, mask, channel_dim):
        if mask.dim() != 2 or mask.shape[:2] != x.shape[:2]:
            raise ValueError(f"TokenDeletion needs a sequence of features [batch, seq]; got a feature mask "
                             f"{tuple(mask.shape)} for inputs {tuple(x.shape)} (set channel_dim=None for ids, "
                             "channel_dim=-1 for embeddings)")
        deleted = mask.sum(1)
        if bool((deleted != deleted[0]).any()):
            raise ValueError("token deletion needs the same number of deleted tokens in every row of a batch; "
                             "explain such examples one at a time (batch size 1) or use TokenReplacement")
        if int(deleted[0]) == x.shape[1]:
            raise ValueError("token deletion reached an empty sequence, which a model cannot score; keep at least "
                             "one token (e.g. BOS) out of the ranking with feature_mask=..., or use TokenReplacement")
        keep = ~mask
        return x[keep].reshape(x.shape[0], x.shape[1] - int(deleted[0]), *x.shape[2:])
