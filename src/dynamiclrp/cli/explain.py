"""``dynamiclrp explain MODEL INPUT``: explain one prediction of any model from the command line.

MODEL is any spec of :func:`dynamiclrp.zoo.load`; INPUT is an image file, a text prompt or a tensor file
(``.pt``/``.npy``). Writes the raw relevance (``relevance.pt``, ``relevance.npy``) and a picture of it (``heatmap.png``
for images, ``tokens.html`` for text) into ``--out``, and prints the top predictions and the conservation ratio.
"""
from __future__ import annotations

import argparse
import inspect
from dataclasses import dataclass
from pathlib import Path

import torch

from ..api import LRP
from ..config import LRPConfig
from ..errors import DynamicLRPError, TargetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
TENSOR_SUFFIXES = (".pt", ".pth", ".npy")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="efficientnet-lite0, smollm2, timm:NAME, torchvision:NAME, hf:DIR_OR_FAMILY, "
                                      "package.module:factory or path/to/file.py:factory")
    parser.add_argument("input", help="an image file, a text prompt, or a tensor file (.pt/.npy)")
    parser.add_argument("--target", default="top",
                        help="class index or name, 'top' (default), 'top-K', or 'A-B' (logit A minus logit B); "
                             "for language models a next token (text or id), 'POS:TOKEN', 'top', 'top-K' or 'A-B'")
    parser.add_argument("--preset", default=None, help="a preset of dynamiclrp.presets.PRESETS (default: attnlrp for "
                                                       "text, the vision composite for images)")
    parser.add_argument("--checkpoint", default=None, help="a local state dict (.pt/.pth, or .safetensors)")
    parser.add_argument("--out", default="outputs/explain", help="folder for the files written (default "
                                                                 "outputs/explain)")
    parser.add_argument("--input-shape", default=None, help="shape of a factory model's example input (1,3,32,32)")


@dataclass
class Target:
    """A parsed target: ``mask`` is the seed mask over the output (``+1`` at A, ``-1`` at B for contrastive
    targets) and ``label`` says in words what is explained."""

    mask: torch.Tensor
    label: str


def run(args: argparse.Namespace) -> int:
    from ..zoo import load

    loaded = load(args.model, checkpoint=args.checkpoint, input_shape=args.input_shape)
    inputs, kwargs, shown = read_input(args.input, loaded)
    config = preset_config(args.preset, loaded)
    with torch.no_grad():
        output = _logits(loaded.model(*inputs, **kwargs))
    targets = parse_target(args.target, output, loaded)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    lrp = LRP(loaded.model, config)
    print(f"{args.model}: {_top_line(output, loaded)}")
    relevances = []
    for t in targets:
        expl = lrp.explain(inputs, target=t.mask, **kwargs)
        rel = expl.relevance[0].detach()
        relevances.append(rel)
        seed = float(expl.seed.sum())
        total = float(rel.sum())
        ratio = total / seed if seed else float("nan")
        print(f"  explained {t.label}: seed {seed:.4g}, sum of input relevance {total:.4g} (ratio {ratio:.3f})")
    stacked = torch.stack(relevances) if len(relevances) > 1 else relevances[0]
    torch.save(stacked, out_dir / "relevance.pt")
    import numpy as np

    np.save(out_dir / "relevance.npy", stacked.float().numpy())
    written = [out_dir / "relevance.pt", out_dir / "relevance.npy"]
    written += _render(loaded, shown, relevances, [t.label for t in targets], out_dir)
    for path in written:
        print(f"  wrote {path}")
    return 0


# ------------------------------------------------------------------------------------------------ inputs


def read_input(text: str, loaded) -> tuple:
    """``(inputs, forward_kwargs, shown)`` for INPUT: ``shown`` is what a picture of the relevance is drawn over
    (an image in [0, 1], or the token strings)."""
    path = Path(text)
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES or suffix in TENSOR_SUFFIXES:
        if not path.is_file():
            raise FileNotFoundError(f"input file {text!r} does not exist")
    if suffix in TENSOR_SUFFIXES:
        if suffix == ".npy":
            import numpy as np

            x = torch.from_numpy(np.load(path))
        else:
            x = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(x, torch.Tensor):
            raise DynamicLRPError(f"{text} holds a {type(x).__name__}, not a tensor")
        shown = x[0] if loaded.modality == "image" and x.dim() == 4 else None
        return (x,), {}, shown
    if suffix in IMAGE_SUFFIXES:
        if loaded.modality != "image":
            raise DynamicLRPError(f"{text} is an image but the model takes {loaded.modality} inputs")
        from PIL import Image

        from ..pretrained import preprocess_image, unnormalize

        image = Image.open(path).convert("RGB")
        x = preprocess_image(image, loaded.image_size, loaded.mean, loaded.std)
        return (x,), {}, unnormalize(x[0], loaded.mean, loaded.std)
    if loaded.modality != "text" or loaded.tokenizer is None:
        raise DynamicLRPError(f"input {text!r} is neither an existing image/tensor file nor usable as a prompt: "
                              f"the model takes {loaded.modality} inputs" + (" and has no tokenizer"
                                                                            if loaded.modality == "text" else ""))
    ids = loaded.tokenizer(text, return_tensors="pt").input_ids
    tokens = loaded.tokenizer.convert_ids_to_tokens(ids[0].tolist())
    return (ids,), {}, tokens


def _logits(raw) -> torch.Tensor:
    from ..api import select_output

    return select_output(raw).detach()


# ------------------------------------------------------------------------------------------------ targets


def parse_target(text: str, output: torch.Tensor, loaded) -> list[Target]:
    """The targets of ``--target``: see :func:`add_arguments`. Raises :class:`TargetError` with the valid forms."""
    seq = output.dim() == 3
    scores = output[0, -1] if seq else output.reshape(output.shape[0], -1)[0]
    position = output.shape[1] - 1 if seq else None
    text = str(text).strip()
    if seq and ":" in text and text.split(":", 1)[0].lstrip("-").isdigit():
        pos, _, rest = text.partition(":")
        position = int(pos)
        if not -output.shape[1] <= position < output.shape[1]:
            raise TargetError(f"position {position} is outside the {output.shape[1]} positions of the output")
        scores = output[0, position]
        text = rest
    if text == "top" or text.startswith("top-"):
        k = 1 if text == "top" else _positive_int(text[4:], text)
        idx = scores.topk(min(k, scores.numel())).indices.tolist()
        return [Target(_mask(output, position, i), _name(i, loaded)) for i in idx]
    if "-" in text.strip("-") and not text.lstrip("-").isdigit():
        a, _, b = text.partition("-") if not text.startswith("-") else ("", "", "")
        ia, ib = _index(a, scores, loaded), _index(b, scores, loaded)
        mask = _mask(output, position, ia) - _mask(output, position, ib)
        return [Target(mask, f"{_name(ia, loaded)} minus {_name(ib, loaded)}")]
    i = _index(text, scores, loaded)
    return [Target(_mask(output, position, i), _name(i, loaded))]


def _positive_int(text: str, whole: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise TargetError(f"target {whole!r}: write top-K with a positive K, e.g. top-3")
    return int(text)


def _index(text: str, scores: torch.Tensor, loaded) -> int:
    n = scores.numel()
    if text.isdigit():
        i = int(text)
        if i >= n:
            raise TargetError(f"target {i} is out of range: the output has {n} entries")
        return i
    if loaded.tokenizer is not None:
        from ..hf import token_id

        return token_id(loaded.tokenizer, text)
    if loaded.categories:
        lowered = [c.lower() for c in loaded.categories]
        if text.lower() in lowered:
            return lowered.index(text.lower())
        close = [c for c in loaded.categories if text.lower() in c.lower()][:5]
        raise TargetError(f"no class named {text!r}" + (f"; did you mean {close}?" if close else ""))
    raise TargetError(f"target {text!r} is not a class index, 'top', 'top-K' or 'A-B' (the model has no class names)")


def _mask(output: torch.Tensor, position, index: int) -> torch.Tensor:
    mask = torch.zeros_like(output)
    if position is None:
        mask.reshape(output.shape[0], -1)[:, index] = 1
    else:
        mask[:, position, index] = 1
    return mask


def _name(i: int, loaded) -> str:
    if loaded.tokenizer is not None:
        return f"token {loaded.tokenizer.decode([i])!r} ({i})"
    if loaded.categories and i < len(loaded.categories):
        return f"class {i} ({loaded.categories[i]})"
    return f"class {i}"


def _top_line(output: torch.Tensor, loaded, k: int = 5) -> str:
    scores = output[0, -1] if output.dim() == 3 else output.reshape(output.shape[0], -1)[0]
    p = scores.float().softmax(-1)
    top = p.topk(min(k, p.numel()))
    return "top " + ", ".join(f"{_name(i, loaded)} {v:.3f}" for v, i in zip(top.values.tolist(),
                                                                         top.indices.tolist()))


# ------------------------------------------------------------------------------------------------ config


def preset_config(name: str | None, loaded) -> LRPConfig:
    """The :class:`LRPConfig` of preset ``name`` (default: per modality); image presets that take the input's
    bounds (``low``/``high``) get them from the model's normalisation."""
    from .. import presets
    from ..pretrained import input_bounds

    if name is None:
        name = "attnlrp" if loaded.modality == "text" else DEFAULT_IMAGE_PRESET
        if name not in presets.PRESETS:  # the vision composite is optional
            return LRPConfig.gamma(0.25)
    if name not in presets.PRESETS:
        raise DynamicLRPError(f"unknown preset {name!r}; choose one of {sorted(presets.PRESETS)}")
    factory = presets.PRESETS[name]
    params = inspect.signature(factory).parameters
    kwargs = {}
    if "low" in params and "high" in params:
        low, high = input_bounds(loaded.mean, loaded.std)
        kwargs = {"low": low, "high": high}
    return factory(**kwargs)


#: the vision preset measured most faithful on ImageNet (README, Results)
DEFAULT_IMAGE_PRESET = "epsilon_plus"


# ------------------------------------------------------------------------------------------------ pictures


def _render(loaded, shown, relevances, labels, out_dir: Path) -> list:
    from .. import viz

    if loaded.modality == "text" and shown is not None:
        tokens = viz.clean_tokens(shown)
        rows = [(label, tokens, rel[0].tolist()) for label, rel in zip(labels, relevances)]
        print(viz.tokens_ansi(tokens, rows[0][2]))
        path = out_dir / "tokens.html"
        path.write_text(viz.token_html_document(rows), encoding="utf-8")
        return [path]
    if shown is not None:
        path = out_dir / "heatmap.png"
        viz.save_heatmaps([shown] * len(relevances), [r[0] for r in relevances], path, titles=labels)
        return [path]
    return []
