"""The model zoo: every autograd node of real architectures (random weights, built offline) has a rule, the
explanation runs, relevance is finite, every node propagates once (the engine checks). Marked ``slow``; run by
``.ci/run`` like everything else."""
import math

import pytest

from dynamiclrp import coverage
from dynamiclrp.zoo import build

SPECS = [
    "torchvision:vgg16", "torchvision:resnet50", "torchvision:mobilenet_v3_small", "torchvision:efficientnet_b0",
    "torchvision:densenet121", "torchvision:regnet_y_400mf", "torchvision:squeezenet1_0", "torchvision:alexnet",
    "torchvision:mobilenet_v2", "torchvision:shufflenet_v2_x0_5", "torchvision:convnext_tiny",
    "timm:resnet18", "timm:efficientnet_b0", "timm:deit_tiny_patch16_224", "timm:mobilevit_xxs",
    "timm:vit_tiny_patch16_224", "timm:convnext_atto",
    "hf:gpt2", "hf:bert", "hf:llama", "hf:mistral", "hf:qwen2", "hf:t5",
]


@pytest.mark.slow
@pytest.mark.parametrize("spec", SPECS)
def test_zoo_model_fully_covered_and_explained(spec):
    model, inputs, kwargs = build(spec)
    report = coverage(model, inputs, forward_kwargs=kwargs, label=spec)
    assert report.complete, f"{spec}: no rule for {sorted(report.uncovered)}"
    assert report.engine_error is None, report.engine_error
    stats = report.stats
    assert stats["nodes"] == report.nodes
    ratio = stats.get("relevance_ratio")
    assert ratio is None or math.isfinite(ratio)


# Shifted-window attention adds a constant buffer mask to the scores before the softmax; autograd keeps neither
# the mask nor the sum, so the softmax input cannot be rebuilt. Fully covered, but the engine refuses loudly
# (UnrecoverableValueError) instead of guessing. Strict xfail: this test flags the day it works.
@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="constant additive attention mask is not recoverable from the graph")
@pytest.mark.parametrize("spec", ["torchvision:swin_t", "timm:swin_tiny_patch4_window7_224"])
def test_swin_is_covered_but_its_mask_is_unrecoverable(spec):
    model, inputs, kwargs = build(spec)
    report = coverage(model, inputs, forward_kwargs=kwargs, label=spec)
    assert report.complete
    assert report.engine_error is None, report.engine_error
