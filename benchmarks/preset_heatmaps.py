"""EfficientNet-Lite0 (real ImageNet weights) explained under each preset, side by side: docs/images/presets.png.

    .venv/bin/python benchmarks/preset_heatmaps.py [--out docs/images/presets.png] [--photos chelsea,coffee,rocket]
"""
import argparse
import warnings

import torch

from dynamiclrp import LRP, LRPConfig, pretrained, viz


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/images/presets.png")
    parser.add_argument("--photos", default="chelsea,coffee,rocket")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model = pretrained.efficientnet_lite0()
    photos = pretrained.photos(args.photos.split(","))
    x = torch.cat([pretrained.preprocess_image(p) for p in photos.values()])
    low, high = pretrained.input_bounds()
    configs = {"LRPConfig() (epsilon)": LRPConfig(), "gamma(0.25)": LRPConfig.gamma(0.25),
               "epsilon_plus": LRPConfig.epsilon_plus(), "epsilon_plus_flat": LRPConfig.epsilon_plus_flat(),
               "epsilon_gamma_box": LRPConfig.epsilon_gamma_box(low, high),
               "epsilon_alpha2_beta1": LRPConfig.epsilon_alpha2_beta1()}
    maps = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, config in configs.items():
            expl = LRP(model, config).explain(x, conservation_limit=None)
            maps[name] = expl.relevance[0]
            print(f"{name:24s} sum R / logit: " + ", ".join(f"{c:.3g}" for c in expl.conservation.tolist()))
    names = ["photo", *configs]
    relevances = [maps[n][i] if n in maps else torch.zeros(x.shape[1:]) for i in range(len(photos)) for n in names]
    images = [pretrained.unnormalize(x[i]) if n == "photo" else None for i in range(len(photos)) for n in names]
    fig = viz.plot_heatmaps(relevances, titles=names * len(photos), ncols=len(names), percentile=99.5,
                            colorbar=False, dpi=60)
    for ax, image in zip(fig.axes, images):  # the first column shows the photo itself
        if image is not None:
            ax.images[0].set_data(viz.image_rgb(image))
    viz.save_figure(fig, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
