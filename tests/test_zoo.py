"""The model zoo: every autograd node of real architectures (random weights, built offline) has a rule, the
explanation runs, relevance is finite, every node propagates once (the engine checks). Bias-free variants of the
families where theory says relevance is conserved keep it. Marked ``slow``; run by ``.ci/run`` like everything
else."""
import math

import pytest
import torch

from dynamiclrp import LRP, LRPConfig, coverage
from dynamiclrp.zoo import build

VISION = [
    "torchvision:vgg16", "torchvision:resnet50", "torchvision:mobilenet_v3_small", "torchvision:efficientnet_b0",
    "torchvision:densenet121", "torchvision:regnet_y_400mf", "torchvision:squeezenet1_0", "torchvision:alexnet",
    "torchvision:mobilenet_v2", "torchvision:shufflenet_v2_x0_5", "torchvision:convnext_tiny", "torchvision:swin_t",
    "timm:resnet18", "timm:efficientnet_b0", "timm:efficientnetv2_rw_t", "timm:tf_efficientnetv2_b0",
    "timm:deit_tiny_patch16_224", "timm:mobilevit_xxs", "timm:vit_tiny_patch16_224", "timm:convnext_atto",
    "timm:swin_tiny_patch4_window7_224", "timm:vit_base_patch16_siglip_224",
]
LANGUAGE = [
    "hf:gpt2", "hf:gpt2-eager", "hf:bert", "hf:roberta", "hf:distilbert", "hf:deberta-v2", "hf:llama",
    "hf:llama3.2", "hf:mistral", "hf:mixtral", "hf:mixtral-eager", "hf:qwen2", "hf:qwen3", "hf:gemma3", "hf:phi3",
    "hf:falcon", "hf:gpt-neox", "hf:bloom", "hf:mamba", "hf:t5", "hf:flan-t5", "hf:bart", "hf:bert-lora",
]
MULTIMODAL = ["hf:wav2vec2", "hf:whisper", "hf:clip", "hf:siglip", "hf:siglip2", "hf:pix2struct"]
SPECS = VISION + LANGUAGE + MULTIMODAL


@pytest.mark.slow
@pytest.mark.parametrize("spec", SPECS)
def test_zoo_model_fully_covered_and_explained(spec):
    model, inputs, kwargs = build(spec)
    report = coverage(model, inputs, forward_kwargs=kwargs, label=spec)
    assert report.complete, f"{spec}: no rule for {sorted(report.uncovered)}"
    assert report.engine_error is None, report.engine_error
    stats = report.stats
    assert stats["nodes"] == report.nodes
    assert stats["input_relevance"] is not None and math.isfinite(stats["input_relevance"])
    if abs(stats["seed_relevance"]) > 1e-3:  # random deep CNNs may output ~1e-14, all of it absorbed by epsilon
        assert stats["input_relevance"] != 0, f"{spec}: no relevance reached the inputs"


def bias_free(model):
    """Zero every bias and batch-norm running mean: the variant in which LRP's rules conserve relevance."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(getattr(module, "bias", None), torch.Tensor):
                module.bias.zero_()
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.zero_()
    return model


#: relative tolerance of conservation in float64 with epsilon=1e-40 (the stabiliser absorbs nothing measurable;
#: what is left is rounding through up to a few hundred layers)
CONSERVATION_RTOL = 1e-4

# Bias-free CNN families: convolutions and linear layers (epsilon rule without bias), batch norm at running
# statistics, ReLU/SiLU/hardswish (identity), max pooling (winner takes all), average pooling, residual additions
# and concatenation (proportional), squeeze-excitation gating (half-half product rule), ConvNeXt's layer norm
# (centring is conservative): every rule on the path conserves. Transformers do not (the softmax rule is not
# conservative by design), so they are not listed.
CONSERVATIVE = [
    "torchvision:vgg16", "torchvision:resnet50", "torchvision:densenet121", "torchvision:mobilenet_v2",
    "torchvision:mobilenet_v3_small", "torchvision:efficientnet_b0", "torchvision:regnet_y_400mf",
    "timm:convnext_atto", "timm:efficientnetv2_rw_t",
]


@pytest.mark.slow
@pytest.mark.parametrize("spec", CONSERVATIVE)
def test_bias_free_variant_conserves_relevance(spec):
    torch.manual_seed(0)
    model, inputs, _ = build(spec)
    model = bias_free(model.double())
    expl = LRP(model, LRPConfig(epsilon=1e-40)).explain(inputs[0].double())
    total, seed = float(expl.relevance[0].sum()), float(expl.seed.sum())
    assert seed != 0
    assert abs(total - seed) <= CONSERVATION_RTOL * abs(seed), (spec, total, seed)
