"""Small models built offline, with random weights, from a one-word spec: what ``python -m dynamiclrp coverage``
checks. Nothing is downloaded.

Specs (see :func:`build`):

* ``torchvision:NAME`` -- ``torchvision.models.get_model(NAME, weights=None)``, input ``1x3x64x64`` where the
  model takes it, else ``224x224`` (:data:`TORCHVISION_SIZES`);
* ``timm:NAME`` -- ``timm.create_model(NAME, pretrained=False)``, input ``1x3x64x64`` where the model takes it,
  else its native size;
* ``hf:NAME`` -- a Hugging Face ``transformers`` family built from a tiny config (:data:`HF_MODELS`), token ids
  ``1x8``;
* ``package.module:factory`` or ``path/to/file.py:factory`` -- your own callable, returning a model (give the
  input shape) or ``(model, inputs)`` or ``(model, inputs, forward_kwargs)``.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

_SHIM_LIB = None


def ensure_torchvision_importable() -> None:
    """Make ``import torchvision`` (and timm/transformers model classes that import it) work on CPU-only torch.

    The PyPI torchvision wheel is built against CUDA torch; beside the CPU build its C++ ops fail to register and
    its import then fails on ``operator torchvision::nms does not exist``. This defines the two op schemas it looks
    up (the same shim as the test suite's ``conftest.py``). A no-op when torchvision is already imported, when its
    ops are registered, when its extension loads fine, or when torchvision is not installed.
    """
    global _SHIM_LIB
    if "torchvision" in sys.modules or _SHIM_LIB is not None:
        return
    try:
        torch.ops.torchvision.nms  # noqa: B018
        return
    except (AttributeError, RuntimeError):
        pass
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return
    for folder in spec.submodule_search_locations:
        for lib_path in Path(folder).glob("_C*.so"):
            try:
                torch.ops.load_library(str(lib_path))  # what torchvision itself does on import
                return
            except (ImportError, OSError):
                pass
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _SHIM_LIB = lib  # keep the library alive


# ------------------------------------------------------------------------------------------------ tables

#: native input size of torchvision models, used when 64x64 pixels do not run: name prefix -> (height, width);
#: 224x224 for the others
TORCHVISION_SIZES = {"inception_v3": (299, 299)}

#: Hugging Face families: name -> (config class, model class, config kwargs, extra forward kwargs)
HF_MODELS = {
    "gpt2": ("GPT2Config", "GPT2LMHeadModel",
             dict(n_layer=2, n_head=2, n_embd=32, vocab_size=100, n_positions=32, bos_token_id=0, eos_token_id=0),
             {"use_cache": False}),
    "bert": ("BertConfig", "BertForSequenceClassification",
             dict(num_hidden_layers=2, num_attention_heads=2, hidden_size=32, intermediate_size=64, vocab_size=100,
                  max_position_embeddings=32, num_labels=3),
             {"attention_mask": "ones"}),
    "llama": ("LlamaConfig", "LlamaForCausalLM",
              dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, vocab_size=100, max_position_embeddings=32),
              {"use_cache": False}),
    "mistral": ("MistralConfig", "MistralForCausalLM",
                dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=100, max_position_embeddings=32),
                {"use_cache": False}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM",
              dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, vocab_size=100, max_position_embeddings=32),
              {"use_cache": False}),
    "t5": ("T5Config", "T5ForConditionalGeneration",
           dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4, vocab_size=100,
                decoder_start_token_id=0),
           {"decoder_input_ids": "ids", "use_cache": False}),
}

#: forward kwargs given as a word in :data:`HF_MODELS`, made from the token ids
_HF_KWARG_MAKERS = {"ones": torch.ones_like, "ids": torch.clone}

HF_SEQ_LEN = 8
IMAGE_SHAPE = (1, 3, 64, 64)


def parse_shape(text: str | Sequence[int] | None) -> tuple[int, ...] | None:
    """``"1,3,32,32"`` (or ``"1x3x32x32"``, or a sequence of ints) -> ``(1, 3, 32, 32)``; ``None`` stays ``None``."""
    if text is None:
        return None
    if isinstance(text, str):
        parts = [p for p in text.replace("x", ",").replace(" ", "").split(",") if p]
        try:
            shape = tuple(int(p) for p in parts)
        except ValueError:
            raise ValueError(f"input shape {text!r} is not a comma-separated list of integers") from None
    else:
        shape = tuple(int(s) for s in text)
    if not shape or any(s <= 0 for s in shape):
        raise ValueError(f"input shape {text!r} must hold positive integers")
    return shape


# ------------------------------------------------------------------------------------------------ builders


def _small_or_native(model: nn.Module, channels: int, native: Sequence[int]) -> tuple:
    """A ``1xCx64x64`` input if the model runs on it, else one of its ``native`` size (height, width)."""
    x = torch.randn(1, channels, *IMAGE_SHAPE[2:])
    return (x,) if _runs(model, x) else (torch.randn(1, channels, *native),)


def _torchvision(name: str, shape):
    ensure_torchvision_importable()
    import torchvision

    model = torchvision.models.get_model(name, weights=None).eval()
    if shape is not None:
        return model, (torch.randn(shape),), {}
    native = next((hw for prefix, hw in TORCHVISION_SIZES.items() if name.startswith(prefix)), (224, 224))
    return model, _small_or_native(model, 3, native), {}


def _runs(model: nn.Module, x: torch.Tensor) -> bool:
    try:
        with torch.no_grad():
            model(x)
        return True
    except Exception:  # any failure means "not at this size"
        return False


def _timm(name: str, shape):
    ensure_torchvision_importable()
    import timm

    model = timm.create_model(name, pretrained=False).eval()
    if shape is not None:
        return model, (torch.randn(shape),), {}
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    channels, *native = cfg.get("input_size", (3, 224, 224))
    if cfg.get("fixed_input_size"):  # ViT-like: rebuild for the small size when the constructor takes img_size
        try:
            resized = timm.create_model(name, pretrained=False, img_size=IMAGE_SHAPE[2:]).eval()
        except TypeError:
            resized = None
        small = torch.randn(1, channels, *IMAGE_SHAPE[2:])
        if resized is not None and _runs(resized, small):
            return resized, (small,), {}
        return model, (torch.randn(1, channels, *native),), {}
    return model, _small_or_native(model, channels, native), {}


def _hf(name: str, shape):
    ensure_torchvision_importable()
    import transformers

    if name not in HF_MODELS:
        raise ValueError(f"unknown Hugging Face family {name!r}; known: {', '.join(sorted(HF_MODELS))}")
    config_cls, model_cls, config_kwargs, extra = HF_MODELS[name]
    config = getattr(transformers, config_cls)(**config_kwargs)
    model = getattr(transformers, model_cls)(config).eval()
    ids = torch.randint(1, config.vocab_size, shape or (1, HF_SEQ_LEN))
    kwargs = {key: _HF_KWARG_MAKERS[value](ids) if isinstance(value, str) else value for key, value in extra.items()}
    return model, (ids,), kwargs


def _user(target: str, shape):
    location, _, factory_name = target.rpartition(":")
    if not location or not factory_name:
        raise ValueError(f"spec {target!r} should read 'package.module:factory' or 'path/to/file.py:factory'")
    if location.endswith(".py") or os.sep in location or "/" in location:
        path = Path(location)
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {location}")
        mod_name = f"_dynamiclrp_user_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module  # dataclasses and pickling look modules up by name
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(mod_name, None)
            raise
    else:
        module = importlib.import_module(location)
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise AttributeError(f"{location} has no callable {factory_name!r}")
    made = factory()
    if isinstance(made, nn.Module):
        if shape is None:
            raise ValueError(f"{target} returned a model without example inputs: give the input shape "
                             "(--input-shape 1,3,32,32), or return (model, inputs) from the factory")
        return made, (torch.randn(shape),), {}
    if isinstance(made, (tuple, list)) and len(made) in (2, 3) and callable(made[0]):
        model, inputs = made[0], made[1]
        kwargs = dict(made[2]) if len(made) == 3 else {}
        if shape is not None:
            inputs = torch.randn(shape)
        inputs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
        return model, inputs, kwargs
    raise TypeError(f"{target} returned a {type(made).__name__}; expected an nn.Module, (model, inputs) or "
                    "(model, inputs, forward_kwargs)")


BUILDERS = {"torchvision": _torchvision, "timm": _timm, "hf": _hf}


def build(spec: str, input_shape: str | Sequence[int] | None = None) -> tuple[nn.Module, tuple, dict]:
    """Build a model with random weights and example inputs from a spec, offline.

    Parameters
    ----------
    spec : str
        ``torchvision:NAME``, ``timm:NAME``, ``hf:NAME`` (one of :data:`HF_MODELS`), ``package.module:factory``
        or ``path/to/file.py:factory``. A factory returns a model (then ``input_shape`` is required), a tuple
        ``(model, inputs)``, or ``(model, inputs, forward_kwargs)``.
    input_shape : str or sequence of int, optional
        Shape of the example input, e.g. ``"1,3,32,32"``; overrides the default (token ids for ``hf:``).

    Returns
    -------
    model : nn.Module
        The model, in eval mode for the built-in families.
    inputs : tuple
        Example positional inputs.
    forward_kwargs : dict
        Extra keyword arguments of the forward call (attention masks, decoder inputs...).
    """
    shape = parse_shape(input_shape)
    prefix, sep, name = spec.partition(":")
    if sep and prefix in BUILDERS:
        if not name:
            raise ValueError(f"spec {spec!r} names no model")
        model, inputs, kwargs = BUILDERS[prefix](name, shape)
        return model.eval(), inputs, kwargs
    if ":" not in spec:
        raise ValueError(f"spec {spec!r} should read 'torchvision:NAME', 'timm:NAME', 'hf:NAME', "
                         "'package.module:factory' or 'path/to/file.py:factory'")
    return _user(spec, shape)
