"""Small models built offline, with random weights, from a one-word spec: what ``python -m dynamiclrp coverage``
checks. Nothing is downloaded.

Specs (see :func:`build`):

* ``torchvision:NAME`` -- ``torchvision.models.get_model(NAME, weights=None)``, input ``1x3x64x64`` where the
  model takes it, else ``224x224`` (:data:`TORCHVISION_SIZES`);
* ``timm:NAME`` -- ``timm.create_model(NAME, pretrained=False)``, input ``1x3x64x64`` where the model takes it,
  else its native size;
* ``hf:NAME`` -- a Hugging Face ``transformers`` family built from a tiny config: language models of
  :data:`HF_MODELS` (token ids ``1x8``), speech, vision and multimodal models and a LoRA-adapted BERT (``peft``)
  of :data:`HF_BUILDERS`;
* ``package.module:factory`` or ``path/to/file.py:factory`` -- your own callable, returning a model (give the
  input shape) or ``(model, inputs)`` or ``(model, inputs, forward_kwargs)``.

:func:`load` is the parser the CLI shares: the specs above, the bundled real models (``efficientnet-lite0``,
``smollm2``), local Hugging Face directories and checkpoints.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
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
    if _SHIM_LIB is not None:  # the start-up shim (scripts/setup.sh) ran this inside find_spec: done
        return
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

#: the size every tiny transformer tower shares; encoders and decoders add a vocabulary, decoders grouped KV heads
_TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
_ENC = dict(_TOWER, vocab_size=100, max_position_embeddings=64)
_DEC = dict(_ENC, num_key_value_heads=2)
_SEQ2SEQ = dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
                encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=100)
_CAUSAL = {"use_cache": False}
HF_MODELS.update({
    "gpt2-eager": ("GPT2Config", "GPT2LMHeadModel", dict(HF_MODELS["gpt2"][2], attn_implementation="eager"),
                   {"use_cache": False, "attention_mask": "ones"}),
    "roberta": ("RobertaConfig", "RobertaForSequenceClassification", dict(_ENC, num_labels=3),
                {"attention_mask": "ones"}),
    "distilbert": ("DistilBertConfig", "DistilBertForSequenceClassification",
                   dict(dim=32, hidden_dim=64, n_layers=2, n_heads=4, vocab_size=100, max_position_embeddings=64),
                   {"attention_mask": "ones"}),
    "deberta-v2": ("DebertaV2Config", "DebertaV2ForSequenceClassification", dict(_ENC, num_labels=3),
                   {"attention_mask": "ones"}),
    "bart": ("BartConfig", "BartForConditionalGeneration", dict(_SEQ2SEQ, max_position_embeddings=64),
             {"decoder_input_ids": "ids", "use_cache": False}),
    "flan-t5": ("T5Config", "T5ForConditionalGeneration",
                dict(HF_MODELS["t5"][2], feed_forward_proj="gated-gelu", tie_word_embeddings=False),
                {"decoder_input_ids": "ids", "use_cache": False}),
    "llama3.2": ("LlamaConfig", "LlamaForCausalLM",
                 dict(_DEC, tie_word_embeddings=True, rope_parameters=dict(
                     rope_type="llama3", rope_theta=500000.0, factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                     original_max_position_embeddings=8192)), _CAUSAL),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(_DEC, head_dim=8, sliding_window=4), _CAUSAL),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(_DEC, head_dim=8), _CAUSAL),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(_DEC, pad_token_id=0, bos_token_id=1, eos_token_id=2), _CAUSAL),
    "falcon": ("FalconConfig", "FalconForCausalLM",
               dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, vocab_size=100), _CAUSAL),
    "gpt-neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", dict(_ENC, bos_token_id=0, eos_token_id=0), _CAUSAL),
    "bloom": ("BloomConfig", "BloomForCausalLM", dict(hidden_size=32, n_layer=2, n_head=4, vocab_size=100), _CAUSAL),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(_DEC, num_local_experts=4, num_experts_per_tok=2),
                _CAUSAL),
    "mixtral-eager": ("MixtralConfig", "MixtralForCausalLM",
                      dict(_DEC, num_local_experts=4, num_experts_per_tok=2, experts_implementation="eager"), _CAUSAL),
    "mamba": ("MambaConfig", "MambaForCausalLM",
              dict(hidden_size=32, state_size=8, num_hidden_layers=2, vocab_size=100), _CAUSAL),
})

#: private config attributes set after construction (not constructor arguments)
_HF_PRIVATE = {"attn_implementation": "_attn_implementation", "experts_implementation": "_experts_implementation"}



def _wav2vec2(tf):
    cfg = tf.Wav2Vec2Config(**_TOWER, conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3),
                            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, num_labels=3)
    return tf.Wav2Vec2ForSequenceClassification(cfg), (torch.randn(1, 800),), {}


def _whisper(tf):
    cfg = tf.WhisperConfig(**_SEQ2SEQ, num_mel_bins=16, max_source_positions=16, max_target_positions=16,
                           decoder_start_token_id=1, pad_token_id=0, eos_token_id=2, bos_token_id=1)
    kwargs = {"decoder_input_ids": torch.randint(3, 100, (1, 6)), "use_cache": False}
    return tf.WhisperForConditionalGeneration(cfg), (torch.randn(1, 16, 32),), kwargs


def _clip(tf):
    cfg = tf.CLIPConfig(text_config=dict(_TOWER, vocab_size=100, max_position_embeddings=16),
                        vision_config=dict(_TOWER, image_size=32, patch_size=8), projection_dim=16)
    # the explained output is logits_per_image (first of the tuple): both towers are in its graph
    return tf.CLIPModel(cfg), (torch.randint(1, 100, (2, 6)),), {"pixel_values": torch.randn(1, 3, 32, 32),
                                                                 "return_dict": False}


def _siglip(tf):
    cfg = tf.SiglipVisionConfig(**_TOWER, image_size=32, patch_size=8)
    return tf.SiglipForImageClassification(tf.SiglipConfig(vision_config=cfg.to_dict(), num_labels=3)), \
        (torch.randn(1, 3, 32, 32),), {}


def _siglip2(tf):
    cfg = tf.Siglip2VisionConfig(**_TOWER, patch_size=8, num_patches=16)
    model = tf.Siglip2ForImageClassification(tf.Siglip2Config(vision_config=cfg.to_dict(), num_labels=3))
    kwargs = {"pixel_attention_mask": torch.ones(1, 16, dtype=torch.long), "spatial_shapes": torch.tensor([[4, 4]])}
    return model, (torch.randn(1, 16, 3 * 8 * 8),), kwargs


def _pix2struct(tf):
    cfg = tf.Pix2StructConfig(
        text_config=dict(hidden_size=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, vocab_size=100),
        vision_config=dict(hidden_size=32, d_kv=8, d_ff=64, num_hidden_layers=2, num_attention_heads=4,
                           patch_embed_hidden_size=16, seq_len=16, patch_size=4, num_channels=1))
    rows, cols = torch.meshgrid(torch.arange(1, 5.0), torch.arange(1, 5.0), indexing="ij")
    patches = torch.cat([rows.reshape(1, 16, 1), cols.reshape(1, 16, 1), torch.randn(1, 16, 16)], -1)
    kwargs = {"decoder_input_ids": torch.randint(1, 100, (1, 5)), "use_cache": False}
    return tf.Pix2StructForConditionalGeneration(cfg), (patches,), kwargs


def _lora(tf):
    """BERT with LoRA adapters (peft) on its attention projections: a frozen, biased base model plus adapters."""
    import peft

    cfg = tf.BertConfig(**dict(_ENC, max_position_embeddings=32), num_labels=3)
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], init_lora_weights=False)
    model = peft.get_peft_model(tf.BertForSequenceClassification(cfg), lora)
    ids = torch.randint(1, 100, (1, HF_SEQ_LEN))
    return model, (ids,), {"attention_mask": torch.ones_like(ids)}


#: Hugging Face families that need more than token ids: name -> builder(transformers) -> (model, inputs, kwargs)
HF_BUILDERS = {"wav2vec2": _wav2vec2, "whisper": _whisper, "clip": _clip, "siglip": _siglip, "siglip2": _siglip2,
               "pix2struct": _pix2struct, "bert-lora": _lora}

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

    if name in HF_BUILDERS:
        model, inputs, kwargs = HF_BUILDERS[name](transformers)
        if shape is not None:
            inputs = (torch.randn(shape) if inputs[0].is_floating_point()
                      else torch.randint(1, 100, shape),)
        return model.eval(), inputs, kwargs
    if name not in HF_MODELS:
        known = sorted([*HF_MODELS, *HF_BUILDERS])
        raise ValueError(f"unknown Hugging Face family {name!r}; known: {', '.join(known)}")
    config_cls, model_cls, config_kwargs, extra = HF_MODELS[name]
    private = {_HF_PRIVATE[k]: config_kwargs[k] for k in _HF_PRIVATE if k in config_kwargs}
    config = getattr(transformers, config_cls)(**{k: v for k, v in config_kwargs.items() if k not in _HF_PRIVATE})
    for key, value in private.items():
        setattr(config, key, value)
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


def build(spec: str, input_shape: str | Sequence[int] | None = None, seed: int | None = 0,
          ) -> tuple[nn.Module, tuple, dict]:
    """Build a model with random weights and example inputs from a spec, offline.

    Parameters
    ----------
    spec : str
        ``torchvision:NAME``, ``timm:NAME``, ``hf:NAME`` (one of :data:`HF_MODELS`), ``package.module:factory``
        or ``path/to/file.py:factory``. A factory returns a model (then ``input_shape`` is required), a tuple
        ``(model, inputs)``, or ``(model, inputs, forward_kwargs)``.
    input_shape : str or sequence of int, optional
        Shape of the example input, e.g. ``"1,3,32,32"``; overrides the default (token ids for ``hf:``).
    seed : int or None
        Seed of the random weights and inputs (the same spec and seed build the same model; the caller's random
        state is left as it was). ``None``: draw from the caller's random state.

    Returns
    -------
    model : nn.Module
        The model, in eval mode for the built-in families.
    inputs : tuple
        Example positional inputs.
    forward_kwargs : dict
        Extra keyword arguments of the forward call (attention masks, decoder inputs...).
    """
    if seed is None:
        return _build(spec, parse_shape(input_shape))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _build(spec, parse_shape(input_shape))


def _build(spec: str, shape):
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


# ------------------------------------------------------------------------------------------------ loading for explain

#: models whose real weights ship inside pip packages (see :mod:`dynamiclrp.pretrained`)
BUNDLED = ("efficientnet-lite0", "smollm2")


@dataclass
class Loaded:
    """A model ready to explain, with what is known about its inputs.

    Attributes
    ----------
    model : the model (eval mode).
    modality : ``"image"`` (takes ``[B, 3, H, W]`` images), ``"text"`` (token ids) or ``"tensor"`` (anything else).
    example : ``(inputs, forward_kwargs)`` of a random example input (from the spec's builder), or ``None``.
    tokenizer : a Hugging Face tokenizer for text models, if known.
    categories : class names of the output, if known.
    image_size, mean, std : preprocessing of image models (input size and per-channel normalisation).
    """

    model: nn.Module
    modality: str
    example: tuple | None = None
    tokenizer: object = None
    categories: list | None = None
    image_size: int = 224
    mean: tuple = (0.485, 0.456, 0.406)
    std: tuple = (0.229, 0.224, 0.225)


def load(spec: str, checkpoint: str | None = None, input_shape=None) -> Loaded:
    """The one model-spec parser of the CLI (``explain``, ``coverage``): a :class:`Loaded` model.

    ``spec``: a bundled real model (:data:`BUNDLED`: ``efficientnet-lite0``, ``smollm2``), ``timm:NAME``,
    ``torchvision:NAME`` (random weights unless ``checkpoint``), ``hf:DIR`` (a local Hugging Face model directory:
    config, weights and tokenizer or image processor) or ``hf:FAMILY`` (a tiny random model of the zoo),
    ``package.module:factory`` or ``path/to/file.py:factory``. ``checkpoint``: a local state dict
    (``torch.load(weights_only=True)``, or a ``.safetensors`` file) loaded into the model strictly.
    """
    from . import pretrained

    if spec in BUNDLED:
        if spec == "efficientnet-lite0":
            loaded = Loaded(pretrained.efficientnet_lite0(), "image", categories=pretrained.imagenet_categories())
        else:
            model, tok = pretrained.smollm2()
            loaded = Loaded(model, "text", tokenizer=tok)
    else:
        prefix, _, name = spec.partition(":")
        if prefix == "hf" and Path(name).is_dir():
            loaded = _hf_directory(Path(name))
        else:
            model, inputs, kwargs = build(spec, input_shape)
            loaded = Loaded(model, _modality(inputs), example=(inputs, kwargs))
            if loaded.modality == "image":
                _image_preprocessing(loaded, prefix)
    if checkpoint is not None:
        load_checkpoint(loaded.model, checkpoint)
    return loaded


def _modality(inputs: tuple) -> str:
    x = inputs[0] if inputs else None
    if isinstance(x, torch.Tensor) and not x.is_floating_point():
        return "text"
    if isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[1] == 3:
        return "image"
    return "tensor"


def _image_preprocessing(loaded: Loaded, prefix: str) -> None:
    cfg = getattr(loaded.model, "pretrained_cfg", None) or {}
    if cfg.get("mean"):
        loaded.mean, loaded.std = tuple(cfg["mean"]), tuple(cfg["std"])
    x = loaded.example[0][0]
    loaded.image_size = int(x.shape[-1])
    if prefix in ("timm", "torchvision") and (getattr(loaded.model, "num_classes", None) == 1000
                                             or prefix == "torchvision"):
        try:
            from .pretrained import imagenet_categories

            loaded.categories = imagenet_categories()
        except Exception:  # names are a nicety
            loaded.categories = None


def _hf_directory(path: Path) -> Loaded:
    ensure_torchvision_importable()
    import transformers

    config = transformers.AutoConfig.from_pretrained(path)
    archs = getattr(config, "architectures", None) or []
    cls = getattr(transformers, archs[0], None) if archs else None
    model = (cls or transformers.AutoModel).from_pretrained(path).eval()
    labels = getattr(config, "id2label", None)
    categories = [labels[i] for i in sorted(labels)] if labels else None
    try:
        tok = transformers.AutoTokenizer.from_pretrained(path)
        return Loaded(model, "text", tokenizer=tok, categories=categories)
    except Exception:  # no tokenizer: an image model, if it has an image processor
        pass
    loaded = Loaded(model, "image", categories=categories)
    try:
        proc = transformers.AutoImageProcessor.from_pretrained(path)
        size = getattr(proc, "size", {}) or {}
        loaded.image_size = int(size.get("height") or size.get("shortest_edge") or 224)
        loaded.mean, loaded.std = tuple(proc.image_mean), tuple(proc.image_std)
    except Exception:  # defaults: 224 px, ImageNet statistics
        pass
    return loaded


def load_checkpoint(model: nn.Module, path: str) -> None:
    """Load a local state dict into ``model`` strictly: ``.safetensors`` files, or anything ``torch.load`` reads
    with ``weights_only=True`` (a state dict, or a dict holding one under ``state_dict``/``model``)."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    if file.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ImportError("reading .safetensors needs the safetensors package: pip install safetensors") from None
        state = load_file(str(file))
    else:
        state = torch.load(file, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and not any(isinstance(v, torch.Tensor) for v in state.values()):
            state = state.get("state_dict") or state.get("model") or state
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path!r} holds a {type(state).__name__}, not a state dict")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint {path!r} does not fit the model: missing {list(missing)[:5]}, "
                         f"unexpected {list(unexpected)[:5]}")
