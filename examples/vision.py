"""Explain an ImageNet classifier on a photo: EfficientNet-Lite0 (real weights, offline) on scikit-image's cat.

    python examples/vision.py            # writes outputs/examples/vision.png
"""
import os

import torch

from dynamiclrp import LRP, LRPConfig, pretrained, viz

model = pretrained.efficientnet_lite0()                       # eval mode; the model is never modified
image = pretrained.photos(["chelsea"])["chelsea"]
x = pretrained.preprocess_image(image)                        # [1, 3, 224, 224], ImageNet-normalised
low, high = pretrained.input_bounds()                          # bounds of the normalised pixels, for ZBox

config = LRPConfig.epsilon_gamma_box(low=low, high=high)      # Zennit-style composite, BatchNorm canonized
expl = LRP(model, config).explain(x)                           # target=None: the top class
cls = int(expl.output.argmax())
print(f"class {cls} ({pretrained.imagenet_categories()[cls]}), logit {expl.output[0, cls]:.2f}, "
      f"sum of relevance {expl.relevance[0].sum():.2f}")

out = os.environ.get("DYNAMICLRP_EXAMPLES_OUT", "outputs/examples")
os.makedirs(out, exist_ok=True)
viz.save_heatmaps([pretrained.unnormalize(x[0])], [expl.relevance[0][0]], f"{out}/vision.png",
                  titles=[pretrained.imagenet_categories()[cls]])
assert torch.isfinite(expl.relevance[0]).all()
print(f"wrote {out}/vision.png")
